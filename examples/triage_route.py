"""Support triage with routing: a classifier picks the agent, each agent acts as itself.

- ``triage`` (an agent, no scopes) reads the ticket and returns a typed
  ``Triage`` decision; its ``route`` field is a ``Literal`` of the routes, so
  the flow is checked against the routes when it is built;
- ``refunds`` (an agent holding ``orders:read`` and ``orders:refund``) gets the
  ticket's ids and the triage reason, looks the order up and refunds it;
- ``faq`` (an agent, no scopes) gets only the ticket's text and answers it.

The decision is journaled (``route.decided``); the chosen agent runs under its
own identity and scopes, so the refund is made, and traced, by ``refunds@2.0.0``,
never by the classifier.

    python examples/triage_route.py
    TYPEDMESH_MODEL=openai:gpt-4o-mini python examples/triage_route.py
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel

import typedmesh as tm
from typedmesh.models import model_from_env
from typedmesh.patterns import Route, route

# -- contracts ------------------------------------------------------------------------


class Ticket(BaseModel):
    customer_id: str
    order_id: str | None = None
    text: str


class Triage(Route):
    """The classifier's decision: ``route`` names the agent that takes the ticket."""

    route: Literal["refund", "faq"]
    reason: str


class RefundCase(BaseModel):
    """The refund agent's input: the ticket's ids (from the request) and the reason
    (from the decision); the ticket's free text does not reach it."""

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


# -- the back office ------------------------------------------------------------------

ORDERS = {
    "ORD-1042": Order(order_id="ORD-1042", customer_id="C-311", total=329.0, status="delivered"),
    "ORD-1077": Order(order_id="ORD-1077", customer_id="C-502", total=89.5, status="processing"),
}
REFUNDS: dict[str, Receipt] = {}
"""Issued refunds by idempotency key: a retried call never pays twice."""


@tm.tool(requires={"orders:read"})
def lookup_order(order_id: str) -> Order | None:
    """Fetch an order by id (None when there is no such order)."""
    return ORDERS.get(order_id)


@tm.tool(requires={"orders:refund"}, idempotent=False)
def issue_refund(order_id: str, amount: float, ctx: tm.RunContext) -> Receipt:
    """Refund an order to the card it was paid with. Moves money: not idempotent."""
    key = ctx.idempotency_key or order_id
    if key not in REFUNDS:
        number = len(REFUNDS) + 1
        REFUNDS[key] = Receipt(refund_id=f"RF-{number:04d}", order_id=order_id, amount=amount)
    return REFUNDS[key]


# -- models: offline by default, live when TYPEDMESH_MODEL is set --------------------

REFUND_WORDS = ("refund", "money back", "broken", "cracked", "damaged")


def offline_triage(request: tm.ModelRequest) -> dict[str, Any]:
    ticket = request.input_data()
    lower = ticket["text"].lower()
    if ticket.get("order_id") and any(w in lower for w in REFUND_WORDS):
        word = next(w for w in REFUND_WORDS if w in lower)
        return {"route": "refund", "reason": f"asks for a refund ({word!r}) on an order"}
    return {"route": "faq", "reason": "a general question"}


def tool_answers(request: tm.ModelRequest) -> list[dict[str, Any] | None]:
    return [json.loads(m.content) for m in request.messages if m.role == "tool"]


def offline_refunds(request: tm.ModelRequest) -> dict[str, Any]:
    case = request.input_data()
    answers = tool_answers(request)
    if not answers and case["order_id"]:
        return {
            "tool_calls": [{"name": "lookup_order", "arguments": {"order_id": case["order_id"]}}]
        }
    order = answers[0] if answers else None
    if order is None or order["customer_id"] != case["customer_id"]:
        return {
            "message": "We could not find that order on your account.",
            "refund_id": None,
            "amount": 0,
        }
    if order["status"] != "delivered":
        return {
            "message": f"Order {order['order_id']} is still {order['status']}: "
            "it can be cancelled, not refunded.",
            "refund_id": None,
            "amount": 0,
        }
    if len(answers) == 1:
        arguments = {"order_id": order["order_id"], "amount": order["total"]}
        return {"tool_calls": [{"name": "issue_refund", "arguments": arguments}]}
    receipt = answers[1]
    assert receipt is not None
    return {
        "message": f"Refunded {receipt['amount']:.2f} for order {receipt['order_id']} "
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

flow = route(
    triage,
    {"refund": refunds, "faq": faq},
    input={"refund": "both", "faq": "request"},
    name="triage_desk",
)

example_input = Ticket(
    customer_id="C-311",
    order_id="ORD-1042",
    text="My monitor arrived with a cracked screen, I'd like my money back.",
)

other_input = Ticket(customer_id="C-502", text="How long does shipping to Austin take?")


def main() -> None:
    total = 0.0
    calls = 0
    for ticket in (example_input, other_input):
        result = tm.run(flow, ticket)
        decided = next(e for e in result.trace.events if e["event"] == "route.decided")
        agent = decided["agent"]
        print(f"{ticket.text}")
        print(f"  routed to {decided['key']!r}: {agent['name']}@{agent['version']}")
        print(f"  {result.output.output.message}")
        for node in result.trace.walk()[1:]:
            identity = node.identity
            assert identity is not None
            u = node.usage
            who = f"{identity.name}@{identity.version}"
            print(
                f"    {node.path:<20} {who:<14} "
                f"{u.model_calls} model / {u.tool_calls} tool calls  ${u.cost_usd:.6f}"
            )
        total += result.cost_usd
        calls += result.usage.model_calls
    print(f"usage: {calls} model calls over two tickets")
    print(f"cost: ${total:.6f}")


if __name__ == "__main__":
    main()
