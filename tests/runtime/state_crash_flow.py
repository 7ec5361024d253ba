"""A flow whose state writes the crash tests SIGKILL around, run in a subprocess.

``STATE_STORE`` is the store's URL. ``KILL_AFTER_WRITE=KEY`` kills the process
(SIGKILL, no cleanup) right after the store has committed a write of KEY and
before the run has journaled it: the write is in the store, the journal has
only its start.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from pydantic import BaseModel

import typedmesh as tm
from typedmesh.models.base import ModelRequest
from typedmesh.state import StateStore, Writer, open_store


class Order(BaseModel):
    id: str
    total: float
    refunded: float = 0.0


class Ticket(BaseModel):
    order_id: str
    sku: str


class Reserved(BaseModel):
    order_id: str
    left: int


class Done(BaseModel):
    order_id: str
    note: str


@tm.step(name="reserve")
async def reserve(ticket: Ticket, ctx: tm.RunContext) -> Reserved:
    stock = await ctx.state.update(f"stock:{ticket.sku}", lambda n: n - 1)
    return Reserved(order_id=ticket.order_id, left=stock.value)


@tm.tool(requires={"orders:refund"})
async def refund(order_id: str, amount: float, ctx: tm.RunContext) -> str:
    """Refund part of an order: claim it, then record the refund."""
    await ctx.state.claim(f"order:{order_id}", action="refund")
    orders = ctx.state.namespace("order", Order)
    done = await orders.update(
        order_id, lambda o: o.model_copy(update={"refunded": o.refunded + amount})
    )
    return f"refunded {amount}, order at version {done.version}"


def refunder(request: ModelRequest) -> Any:
    if not any(m.role == "tool" for m in request.messages):
        order_id = request.input_data().get("order_id", "7")
        return {
            "tool_calls": [{"name": "refund", "arguments": {"order_id": order_id, "amount": 5}}]
        }
    return {"order_id": "7", "note": request.messages[-1].content}


agent = tm.Agent(
    "refunder",
    version="1.2.0",
    input=Reserved,
    output=Done,
    tools=[refund],
    scopes={"orders:refund"},
    model=tm.ScriptedModel(refunder, name="gpt-4o-mini"),
)
flow = tm.sequential(reserve, agent, name="support")


def seed(store: StateStore) -> None:
    if store.get("stock:A1") is None:
        store.create("stock:A1", 3, writer=Writer(by="seed"))
        store.create("order:7", {"id": "7", "total": 20.0}, writer=Writer(by="seed"))


def killing_store(url: str) -> StateStore:
    store = open_store(url)
    inner = store._write
    kill_after = os.environ.get("KILL_AFTER_WRITE")

    def write(key: str, text: str | None, expected: int | None, writer: Writer, now: float):  # type: ignore[no-untyped-def]
        out = inner(key, text, expected, writer, now)
        if key == kill_after and writer.run_id:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    store._write = write  # type: ignore[method-assign]
    return store


if __name__ == "__main__":
    journal, run_id, url = sys.argv[1], sys.argv[2], sys.argv[3]
    store = killing_store(url)
    seed(store)
    result = tm.run(
        flow, {"order_id": "7", "sku": "A1"}, journal=journal, run_id=run_id, state=store
    )
    print("DONE", result.output.model_dump_json(), flush=True)
