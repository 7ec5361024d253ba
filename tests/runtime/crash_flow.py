"""A flow with side effects, run in a subprocess that the crash tests SIGKILL.

Set SIDE_EFFECT_FILE to where tools append their side effects, and PAUSE_AT
to ``TOOL:before`` / ``TOOL:after`` (around the side effect) or
``model:NAME`` (inside that agent's model call) to make the process print
``PAUSED`` and wait there to be killed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from pydantic import BaseModel

import typedmesh as tm
from typedmesh.models.base import ModelRequest


def pause(point: str) -> None:
    if os.environ.get("PAUSE_AT") == point:
        print("PAUSED", point, flush=True)
        time.sleep(120)


def side_effect(line: str, key: str | None) -> bool:
    """Append a side effect once per idempotency key, as a real payment API would."""
    path = Path(os.environ["SIDE_EFFECT_FILE"])
    if key is not None and path.exists() and f" key={key}" in path.read_text():
        return False
    with path.open("a") as f:
        f.write(f"{line} key={key}\n")
        f.flush()
        os.fsync(f.fileno())
    return True


@tm.tool(requires={"payments:charge"})
def charge(order_id: str, cents: int, ctx: tm.RunContext) -> str:
    """Charge an order (idempotent through ctx.idempotency_key)."""
    pause("charge:before")
    side_effect(f"charge {order_id} {cents}", ctx.idempotency_key)
    pause("charge:after")
    return f"charged {cents}"


@tm.tool
def ship(order_id: str, ctx: tm.RunContext) -> str:
    """Ship an order (idempotent)."""
    pause("ship:before")
    side_effect(f"ship {order_id}", ctx.idempotency_key)
    pause("ship:after")
    return "shipped"


@tm.tool(idempotent=False)
def notify(order_id: str, text: str) -> str:
    """Email the customer: not idempotent, so a crash mid-call leaves it in doubt."""
    pause("notify:before")
    side_effect(f"notify {order_id} {text}", None)
    pause("notify:after")
    return "sent"


class Order(BaseModel):
    order_id: str
    cents: int


class Charged(BaseModel):
    order_id: str
    receipt: str


class Shipped(BaseModel):
    order_id: str
    receipt: str
    shipment: str


class Done(BaseModel):
    order_id: str
    message: str


def biller(request: ModelRequest) -> object:
    if not any(m.role == "tool" for m in request.messages):
        return {"tool_calls": [{"name": "charge", "arguments": {"order_id": "A7", "cents": 1299}}]}
    return {"order_id": "A7", "receipt": request.messages[-1].content}


def closer(request: ModelRequest) -> object:
    pause("model:closer")
    if not any(m.role == "tool" for m in request.messages):
        return {
            "tool_calls": [
                {"name": "notify", "arguments": {"order_id": "A7", "text": "on its way"}}
            ]
        }
    return {"order_id": "A7", "message": "charged, shipped and notified"}


bill = tm.Agent(
    "biller",
    version="1.0.0",
    input=Order,
    output=Charged,
    tools=[charge],
    scopes={"payments:charge"},
    model=tm.ScriptedModel(biller, name="gpt-4o-mini"),
)


@tm.step(name="shipper")
async def shipper(c: Charged, ctx: tm.RunContext) -> Shipped:
    shipment = await ctx.call_tool(ship, order_id=c.order_id)
    return Shipped(order_id=c.order_id, receipt=c.receipt, shipment=shipment)


close = tm.Agent(
    "closer",
    version="2.1.0",
    input=Shipped,
    output=Done,
    tools=[notify],
    model=tm.ScriptedModel(closer, name="gpt-4o-mini"),
)

flow = tm.sequential(bill, shipper, close, name="order")
ORDER = Order(order_id="A7", cents=1299)

if __name__ == "__main__":
    journal, run_id = sys.argv[1], sys.argv[2]
    result = tm.run(flow, ORDER, journal=journal, run_id=run_id)
    print("DONE", result.output.model_dump_json(), flush=True)
