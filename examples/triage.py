"""Support triage, the way a new user builds it: routing, approval, deps and a session.

A customer talks to the support desk over two turns of one session:

1. a FAQ question: the ``triage`` classifier routes it to the ``faq`` agent;
2. a refund of a $329 order: routed to the ``refunds`` agent, which looks the
   order up and calls ``issue_refund``. Refunds over $100 need a person
   (``requires_approval``), so the run **waits**: the script shows the pending
   call, approves it as ``ops@acme`` (``tm.approve``) and resumes the run; the
   refund then runs, once.

The orders "database" is an ``OrdersDB`` object given to each run as
``deps=``; the tools reach it as ``ctx.deps_as(OrdersDB)``, not as module
globals. (No agent declares ``deps=OrdersDB``: a declared type would make
every run of ``flow`` need deps, and the FAQ route needs none, so ``typedmesh
run`` can run a FAQ ticket. A refund needs the database: run it from Python.)

    python examples/triage.py
    python examples/triage.py --no-approve       # prints the `typedmesh approve` command
    python examples/triage.py --resume RUN_ID    # after approving: resume with the deps
    typedmesh run examples/triage.py:flow \\
        -i '{"customer_id": "C-311", "text": "How long does shipping take?"}'
    TYPEDMESH_MODEL=openai:gpt-4o-mini python examples/triage.py
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

import typedmesh as tm
from typedmesh.models import model_from_env

# -- contracts ------------------------------------------------------------------------


class Ticket(BaseModel):
    customer_id: str
    order_id: str | None = None
    text: str


class Triage(tm.Route):
    """The classifier's decision: ``route`` names the agent that takes the ticket."""

    route: Literal["refund", "faq"]
    reason: str


class RefundCase(BaseModel):
    """The refund agent's input: the ticket's ids and the triage reason."""

    customer_id: str
    order_id: str | None
    reason: str


class RefundOutcome(BaseModel):
    message: str
    refund_id: str | None
    amount: float


class Question(BaseModel):
    """The FAQ agent's input: the ticket's text only."""

    text: str


class FaqAnswer(BaseModel):
    message: str
    article: str


class Order(BaseModel):
    order_id: str
    customer_id: str
    total: float
    status: Literal["processing", "delivered", "refunded"]


class Receipt(BaseModel):
    refund_id: str
    order_id: str
    amount: float


# -- the orders "database", given to each run as deps ---------------------------------


@dataclass
class OrdersDB:
    """What the tools need from outside: here dicts, in production a connection pool."""

    orders: dict[str, Order]
    refunds: dict[str, Receipt] = field(default_factory=dict)
    """Issued refunds by idempotency key: a retried call never pays twice."""

    def refund(self, order_id: str, amount: float, key: str) -> Receipt:
        if key not in self.refunds:
            number = len(self.refunds) + 1
            self.refunds[key] = Receipt(
                refund_id=f"RF-{number:04d}", order_id=order_id, amount=amount
            )
            self.orders[order_id] = self.orders[order_id].model_copy(update={"status": "refunded"})
        return self.refunds[key]


def demo_db() -> OrdersDB:
    return OrdersDB(
        orders={
            "ORD-1042": Order(
                order_id="ORD-1042", customer_id="C-311", total=329.0, status="delivered"
            ),
            "ORD-1077": Order(
                order_id="ORD-1077", customer_id="C-311", total=59.5, status="delivered"
            ),
        }
    )


@tm.tool(requires={"orders:read"})
def lookup_order(order_id: str, ctx: tm.RunContext) -> Order | None:
    """Fetch an order by id (None when there is no such order)."""
    return ctx.deps_as(OrdersDB).orders.get(order_id)


@tm.tool(
    requires={"orders:refund"},
    idempotent=False,
    requires_approval=lambda args: args["amount"] > 100,  # over $100: a person decides
)
def issue_refund(order_id: str, amount: float, ctx: tm.RunContext) -> Receipt:
    """Refund an order to the card it was paid with. Moves money: not idempotent."""
    return ctx.deps_as(OrdersDB).refund(order_id, amount, ctx.idempotency_key or order_id)


# -- models: offline by default, live when TYPEDMESH_MODEL is set --------------------
# Each offline model answers from the request's structured data: its input
# (``request.input_data()``) and the tool results, never the prompt's prose.

REFUND_WORDS = ("refund", "money back", "broken", "cracked", "damaged")


def offline_triage(request: tm.ModelRequest) -> dict[str, Any]:
    ticket = request.input_data()
    lower = ticket["text"].lower()
    if ticket.get("order_id") and any(w in lower for w in REFUND_WORDS):
        word = next(w for w in REFUND_WORDS if w in lower)
        return {"route": "refund", "reason": f"asks for a refund ({word!r}) on an order"}
    return {"route": "faq", "reason": "a general question"}


def tool_answers(request: tm.ModelRequest) -> list[Any]:
    """Each tool result as JSON; a refusal (a denial, a missing scope) as its text."""
    answers: list[Any] = []
    for m in request.messages:
        if m.role == "tool":
            try:
                answers.append(json.loads(m.content or "null"))
            except json.JSONDecodeError:
                answers.append(m.content)
    return answers


def offline_refunds(request: tm.ModelRequest) -> dict[str, Any]:
    case = request.input_data()
    answers = tool_answers(request)
    if not answers and case["order_id"]:
        return {
            "tool_calls": [{"name": "lookup_order", "arguments": {"order_id": case["order_id"]}}]
        }
    order = answers[0] if answers else None
    if not isinstance(order, dict) or order["customer_id"] != case["customer_id"]:
        return {
            "message": "We could not find that order on your account.",
            "refund_id": None,
            "amount": 0,
        }
    if order["status"] != "delivered":
        return {
            "message": f"Order {order['order_id']} is {order['status']}: it cannot be refunded.",
            "refund_id": None,
            "amount": 0,
        }
    if len(answers) == 1:
        arguments = {"order_id": order["order_id"], "amount": order["total"]}
        return {"tool_calls": [{"name": "issue_refund", "arguments": arguments}]}
    receipt = answers[1]
    if not isinstance(receipt, dict):  # the refund was denied: say so, move no money
        return {
            "message": f"Your refund was not approved: {receipt}",
            "refund_id": None,
            "amount": 0,
        }
    return {
        "message": f"Refunded ${receipt['amount']:.2f} for order {receipt['order_id']} "
        f"(refund {receipt['refund_id']}).",
        "refund_id": receipt["refund_id"],
        "amount": receipt["amount"],
    }


ARTICLES = {
    "shipping": ("ship", "deliver", "arrive"),
    "returns": ("return", "exchange"),
    "account": ("password", "login", "account"),
}


def offline_faq(request: tm.ModelRequest) -> dict[str, Any]:
    lower = request.input_data()["text"].lower()
    article = next(
        (a for a, words in ARTICLES.items() if any(w in lower for w in words)), "contact"
    )
    return {"message": f"See our help article on {article}.", "article": f"help/{article}"}


# -- the flow -------------------------------------------------------------------------

triage = tm.Agent(
    "triage",
    version="1.4.0",
    input=Ticket,
    output=Triage,
    model=model_from_env(tm.ScriptedModel(offline_triage, name="gpt-4o-mini")),
    instructions="Decide who handles the ticket: a refund of an order, or a general question.",
)

refunds = tm.Agent(
    "refunds",
    version="2.0.0",
    deployment="payments",
    input=RefundCase,
    output=RefundOutcome,
    model=model_from_env(tm.ScriptedModel(offline_refunds, name="gpt-4o-mini")),
    instructions=(
        "Look the order up. Refund its full total with issue_refund only when it belongs "
        "to the customer and was delivered; otherwise explain why not."
    ),
    tools=[lookup_order, issue_refund],
    scopes={"orders:read", "orders:refund"},  # the only agent that may move money
)

faq = tm.Agent(
    "faq",
    version="0.9.0",
    input=Question,
    output=FaqAnswer,
    model=model_from_env(tm.ScriptedModel(offline_faq, name="gpt-4o-mini")),
    instructions="Answer the question with the help article that covers it.",
)

flow = tm.route(
    triage,
    {"refund": refunds, "faq": faq},
    input={"refund": "both", "faq": "request"},
    name="triage_desk",
)

example_input = Ticket(customer_id="C-311", text="How long does shipping to Austin take?")
"""One turn, the FAQ route (needs no deps): what ``typedmesh run`` and the tests run."""

refund_input = Ticket(
    customer_id="C-311",
    order_id="ORD-1042",
    text="My monitor arrived with a cracked screen, I'd like my money back.",
)

JOURNAL = "triage-demo.db"
SESSION = "C-311"
APPROVER = "ops@acme"


# -- the walk-through -----------------------------------------------------------------


def route_taken(result: tm.RunResult[Any]) -> str:
    decided = next(e for e in result.trace.events if e["event"] == "route.decided")
    agent = decided["agent"]
    return f"{decided['key']!r} -> {agent['name']}@{agent['version']}"


def show_turn(result: tm.RunResult[Any]) -> None:
    print(f"  routed {route_taken(result)}")
    print(f"  reply: {result.output.output.message}")


def resume_refund(run_id: str, db: OrdersDB, journal: str) -> tm.RunResult[Any]:
    """Continue the waiting turn: the deps are not journaled, so give them again."""
    return tm.resume(run_id, flow, journal=journal, deps=db)


def summary(results: list[tm.RunResult[Any]], db: OrdersDB, journal: str) -> None:
    print(f"refunds issued: {len(db.refunds)} {[r.refund_id for r in db.refunds.values()]}")
    session = tm.Session(SESSION, journal=journal)
    print(f"session {SESSION}: {session.count()} turns")
    for turn in session.turns():
        print(f"  turn {turn.turn}  {turn.status:<8} {turn.run_id}: {turn.input['text']}")
        if turn.output is not None:
            print(f"    {turn.output['route']}: {turn.output['output']['message']}")
    calls = sum(r.usage.model_calls for r in results)
    tools = sum(r.usage.tool_calls for r in results)
    print(f"usage: {calls} model calls, {tools} tool calls over {len(results)} turns")
    print(f"cost: ${sum(r.cost_usd for r in results):.6f}")


def main(approve: bool = True, journal: str = JOURNAL) -> None:
    Path(journal).unlink(missing_ok=True)  # the walk-through starts a fresh demo journal
    db = demo_db()
    session = tm.Session(SESSION, journal=journal)

    print(f"turn 1: {example_input.text}")
    first = session.run(flow, example_input, deps=db)
    show_turn(first)

    print(f"turn 2: {refund_input.text}")
    try:
        second = session.run(flow, refund_input, deps=db)
    except tm.RunWaiting as waiting:
        run_id = session.run_id(2)
        print(f"  waiting: {waiting.waiting}")
        [pending] = tm.pending_approvals(run_id, journal=journal)
        print(f"  pending approval: {pending.tool} {json.dumps(pending.arguments)}")
        print(f"    call {pending.call_id}, asked by {pending.agent}")
        if not approve:
            print(
                f"  approve with: typedmesh approve {run_id} '{pending.call_id}' "
                f"--by {APPROVER} --journal {journal}"
            )
            print(f"  then resume:  python examples/triage.py --resume {run_id}")
            summary([first], db, journal)
            return
        decision = tm.approve(
            run_id,
            pending.call_id,
            by=APPROVER,
            reason="photo of the damage checked",
            journal=journal,
        )
        print(f"  approved by {decision.by} ({decision.reason}); resuming")
        second = resume_refund(run_id, db, journal)
    show_turn(second)
    summary([first, second], db, journal)


def resume_main(run_id: str, journal: str = JOURNAL) -> None:
    """The second half of ``--no-approve``: after ``typedmesh approve``, resume with deps."""
    db = demo_db()
    result = resume_refund(run_id, db, journal)
    show_turn(result)
    summary([result], db, journal)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--resume"] and len(args) == 2:
        resume_main(args[1])
    else:
        main(approve="--no-approve" not in args)
