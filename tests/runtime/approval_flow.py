"""A refund desk whose refunds over $100 wait for a person, driven by separate processes.

    python approval_flow.py run JOURNAL RUN_ID ORDER AMOUNT [AMOUNT ...]
        runs the flow; exits 4 printing ``WAITING <keys>`` when it waits for approval
    python approval_flow.py approve JOURNAL RUN_ID CALL_ID BY [--deny REASON]
        records the decision (``typedmesh.runtime.approval.approve``)
    python approval_flow.py resume JOURNAL RUN_ID
        resumes it; prints ``DONE <output JSON>``

Each refund appends one line to ``SIDE_EFFECT_FILE``: the tests count them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pydantic import BaseModel

import typedmesh as tm
from typedmesh.models.base import ModelRequest
from typedmesh.runtime.approval import approve


class Claim(BaseModel):
    order_id: str
    amounts: list[float]


class Outcome(BaseModel):
    status: str
    notes: list[str]


@tm.tool(
    requires={"payments:refund"},
    idempotent=False,
    requires_approval=lambda args: args["amount"] > 100,
)
def refund(order_id: str, amount: float, ctx: tm.RunContext) -> str:
    """Refund part of an order. Refunds over $100 need a person's approval."""
    path = Path(os.environ["SIDE_EFFECT_FILE"])
    with path.open("a") as f:
        f.write(f"refund {order_id} {amount:.2f} key={ctx.idempotency_key}\n")
        f.flush()
        os.fsync(f.fileno())
    return f"refunded ${amount:.2f} on {order_id}"


def desk(request: ModelRequest) -> object:
    """Ask for one refund per amount; then report what the tools said."""
    answers = [m.content for m in request.messages if m.role == "tool"]
    if not answers:
        claim = Claim.model_validate_json(request.messages[1].content)
        return {
            "tool_calls": [
                {"name": "refund", "arguments": {"order_id": claim.order_id, "amount": amount}}
                for amount in claim.amounts
            ]
        }
    denied = any(a.startswith("Error:") for a in answers)
    return {"status": "partly refunded" if denied else "refunded", "notes": answers}


support = tm.Agent(
    "support",
    version="1.2.0",
    input=Claim,
    output=Outcome,
    tools=[refund],
    scopes={"payments:refund"},
    model=tm.ScriptedModel(desk, name="gpt-4o-mini"),
)
flow = tm.sequential(support, name="refunds")


def main(argv: list[str]) -> int:
    mode, journal, run_id = argv[0], argv[1], argv[2]
    if mode == "run":
        claim = Claim(order_id=argv[3], amounts=[float(a) for a in argv[4:]])
        try:
            result = tm.run(flow, claim, journal=journal, run_id=run_id)
        except tm.RunWaiting as waiting:
            print("WAITING", " ".join(waiting.waiting), flush=True)
            return 4
    elif mode == "approve":
        call_id, by = argv[3], argv[4]
        deny = argv[5:6] == ["--deny"]
        reason = argv[6] if deny else None
        decision = approve(
            run_id, call_id, approved=not deny, by=by, reason=reason, journal=journal
        )
        print("DECIDED", json.dumps(decision.to_dict()), flush=True)
        return 0
    else:
        result = tm.resume(run_id, flow, journal=journal)
    print("DONE", result.output.model_dump_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
