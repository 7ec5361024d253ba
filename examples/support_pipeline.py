"""Support ticket pipeline: intake -> enrich -> reply, a sequential flow.

- ``intake`` (an agent) turns free text into a typed ``Classified`` ticket;
- ``enrich`` (plain deterministic code) looks the order and customer up
  through tools, so the lookups are scope-checked and traced;
- ``reply`` (an agent) gets a *narrower* input than ``enrich`` returns: a
  summary-only handoff, so the customer's address, card and lifetime value
  never reach its prompt. It alone holds the ``orders:refund`` scope its
  refund tool requires (least privilege: enrich can read orders, not refund).

    python examples/support_pipeline.py
    TYPEDMESH_MODEL=openai:gpt-4o-mini python examples/support_pipeline.py
    typedmesh run examples/support_pipeline.py:flow --input '{"customer_id": "C-311",
        "text": "Order ORD-1042 arrived broken, I want a refund"}'
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel

import typedmesh as tm
from typedmesh.models import model_from_env

# -- contracts ------------------------------------------------------------------------

Category = Literal["refund", "shipping", "technical", "billing", "other"]
Priority = Literal["low", "normal", "high", "urgent"]


class Ticket(BaseModel):
    customer_id: str
    text: str


class Classified(BaseModel):
    category: Category
    priority: Priority
    customer_id: str
    order_id: str | None = None
    summary: str


class OrderRecord(BaseModel):
    order_id: str
    customer_id: str
    item: str
    total: float
    currency: str
    status: Literal["processing", "shipped", "delivered", "refunded"]
    card_last4: str


class CustomerRecord(BaseModel):
    customer_id: str
    name: str
    email: str
    shipping_address: str
    lifetime_value_usd: float


class Enriched(BaseModel):
    """Everything ``enrich`` knows: the ticket, the order and the customer."""

    category: Category
    priority: Priority
    customer_id: str
    order_id: str | None
    summary: str
    customer_name: str
    email: str
    shipping_address: str
    lifetime_value_usd: float
    item: str | None = None
    order_status: str | None = None
    order_total: float | None = None
    currency: str | None = None
    card_last4: str | None = None
    ownership_verified: bool = False


class ReplyBrief(BaseModel):
    """The reply agent's input: a summary-only handoff from ``Enriched``.

    Only these fields pass on. Dropped on purpose: customer_id, email,
    shipping_address, lifetime_value_usd and card_last4 (personal data the
    reply does not need, and tokens it should not pay for).
    """

    category: Category
    priority: Priority
    order_id: str | None
    summary: str
    customer_name: str
    item: str | None = None
    order_status: str | None = None
    order_total: float | None = None
    currency: str | None = None
    ownership_verified: bool = False


class RefundReceipt(BaseModel):
    refund_id: str
    order_id: str
    amount: float
    currency: str
    status: Literal["issued"]


class Reply(BaseModel):
    message: str
    actions: list[str]
    refund_id: str | None = None
    escalated: bool = False


# -- the back office (in-memory stand-ins for the order and CRM services) -------------

ORDERS: dict[str, OrderRecord] = {
    "ORD-1042": OrderRecord(
        order_id="ORD-1042",
        customer_id="C-311",
        item='Aurora 27" monitor',
        total=329.00,
        currency="USD",
        status="delivered",
        card_last4="4242",
    ),
    "ORD-1077": OrderRecord(
        order_id="ORD-1077",
        customer_id="C-502",
        item="Trailhead 40L backpack",
        total=89.50,
        currency="USD",
        status="shipped",
        card_last4="1881",
    ),
}
CUSTOMERS: dict[str, CustomerRecord] = {
    "C-311": CustomerRecord(
        customer_id="C-311",
        name="Dana Whitfield",
        email="dana.whitfield@example.com",
        shipping_address="14 Harbour Lane, Portsmouth PO1 3AX",
        lifetime_value_usd=2140.0,
    ),
    "C-502": CustomerRecord(
        customer_id="C-502",
        name="Ravi Menon",
        email="ravi.menon@example.com",
        shipping_address="88 Cedar Street, Austin TX 78701",
        lifetime_value_usd=310.0,
    ),
}
REFUNDS: dict[str, RefundReceipt] = {}
"""Issued refunds by idempotency key: a retried call never pays twice."""


# -- tools ----------------------------------------------------------------------------


@tm.tool(requires={"orders:read"})
def lookup_order(order_id: str) -> OrderRecord | None:
    """Fetch an order by id (None when there is no such order)."""
    return ORDERS.get(order_id)


@tm.tool(requires={"crm:read"})
def lookup_customer(customer_id: str) -> CustomerRecord:
    """Fetch a customer's CRM record."""
    return CUSTOMERS[customer_id]


@tm.tool(requires={"orders:refund"}, idempotent=False)
def issue_refund(order_id: str, amount: float, reason: str, ctx: tm.RunContext) -> RefundReceipt:
    """Refund an order to the card it was paid with. Moves money: not idempotent."""
    key = ctx.idempotency_key or order_id
    if key in REFUNDS:  # the same call retried after a crash: no second payout
        return REFUNDS[key]
    order = ORDERS[order_id]
    if amount <= 0 or amount > order.total:
        raise ValueError(f"refund of {amount} is outside 0..{order.total}")
    receipt = RefundReceipt(
        refund_id=f"RF-{key[:8].upper()}",
        order_id=order_id,
        amount=amount,
        currency=order.currency,
        status="issued",
    )
    REFUNDS[key] = receipt
    ORDERS[order_id] = order.model_copy(update={"status": "refunded"})
    return receipt


# -- models: offline by default, live when TYPEDMESH_MODEL is set --------------------


_CATEGORY_WORDS: list[tuple[Category, tuple[str, ...]]] = [
    ("refund", ("refund", "money back", "broken", "cracked", "damaged", "return")),
    ("shipping", ("where is", "tracking", "not arrived", "late", "delivery")),
    ("billing", ("charged", "invoice", "payment", "billing")),
    ("technical", ("error", "crash", "login", "password", "bug")),
]


def offline_intake(request: tm.ModelRequest) -> dict[str, Any]:
    ticket = request.input_data()
    text: str = ticket["text"]
    lower = text.lower()
    category: Category = next(
        (c for c, words in _CATEGORY_WORDS if any(w in lower for w in words)), "other"
    )
    if any(w in lower for w in ("urgent", "asap", "immediately")):
        priority: Priority = "urgent"
    elif any(w in lower for w in ("broken", "cracked", "damaged", "charged twice")):
        priority = "high"
    else:
        priority = "normal"
    order = re.search(r"\bORD-\d+\b", text, re.IGNORECASE)
    first_sentence = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]
    return {
        "category": category,
        "priority": priority,
        "customer_id": ticket["customer_id"],
        "order_id": order.group(0).upper() if order else None,
        "summary": f"{category} request: {first_sentence}",
    }


def offline_reply(request: tm.ModelRequest) -> dict[str, Any]:
    brief = request.input_data()
    name = brief["customer_name"].split()[0]
    tool_answers = [m.content for m in request.messages if m.role == "tool"]
    order = brief.get("order_id")
    refundable = (
        brief["category"] == "refund"
        and brief["ownership_verified"]
        and brief.get("order_status") == "delivered"
    )
    if refundable and not tool_answers:
        # first turn: ask for the refund; the framework checks scopes and runs it
        return {
            "tool_calls": [
                {
                    "id": f"call_refund_{order}",
                    "name": "issue_refund",
                    "arguments": {
                        "order_id": order,
                        "amount": brief["order_total"],
                        "reason": brief["summary"][:200],
                    },
                }
            ]
        }
    if refundable and tool_answers and not tool_answers[-1].startswith("Error"):
        receipt = json.loads(tool_answers[-1])
        return {
            "message": (
                f"Hi {name}, I'm sorry your {brief['item']} arrived damaged. I've issued a "
                f"full refund of {receipt['amount']:.2f} {receipt['currency']} for order "
                f"{order} (refund {receipt['refund_id']}); it will reach your card in 3-5 "
                "business days. There is no need to send the item back."
            ),
            "actions": [f"refund {receipt['refund_id']} issued for {order}"],
            "refund_id": receipt["refund_id"],
            "escalated": False,
        }
    reason = (
        tool_answers[-1]
        if tool_answers
        else "it needs a person to review it"
        if brief["category"] == "refund"
        else f"it is a {brief['category']} request"
    )
    return {
        "message": (
            f"Hi {name}, thanks for reaching out about "
            f"{'order ' + order if order else 'your account'}. I've passed your request to "
            "a member of our team, who will get back to you within one business day."
        ),
        "actions": [f"escalated to a human agent: {reason}"],
        "refund_id": None,
        "escalated": True,
    }


# -- the flow -------------------------------------------------------------------------

intake = tm.Agent(
    "intake",
    version="1.1.0",
    input=Ticket,
    output=Classified,
    model=model_from_env(tm.ScriptedModel(offline_intake, name="gpt-4o-mini")),
    instructions=(
        "Classify the support ticket: category, priority, the order id it mentions (if "
        "any) and a one-line summary. Keep the customer_id as given."
    ),
)


@tm.step(name="enrich", version="1.0.0", scopes={"orders:read", "crm:read"})
async def enrich(ticket: Classified, ctx: tm.RunContext) -> Enriched:
    """Attach the order and customer records; verify the order belongs to the customer."""
    customer: CustomerRecord = await ctx.call_tool(lookup_customer, customer_id=ticket.customer_id)
    order: OrderRecord | None = None
    if ticket.order_id:
        order = await ctx.call_tool(lookup_order, order_id=ticket.order_id)
    return Enriched(
        **ticket.model_dump(),
        customer_name=customer.name,
        email=customer.email,
        shipping_address=customer.shipping_address,
        lifetime_value_usd=customer.lifetime_value_usd,
        item=order.item if order else None,
        order_status=order.status if order else None,
        order_total=order.total if order else None,
        currency=order.currency if order else None,
        card_last4=order.card_last4 if order else None,
        ownership_verified=order is not None and order.customer_id == ticket.customer_id,
    )


reply = tm.Agent(
    "reply",
    version="2.3.0",
    input=ReplyBrief,  # narrower than Enriched: a summary-only handoff (see ReplyBrief)
    output=Reply,
    model=model_from_env(tm.ScriptedModel(offline_reply, name="gpt-4o-mini")),
    instructions=(
        "Write the reply to the customer. For a refund request on a delivered order whose "
        "ownership is verified, issue the refund with the issue_refund tool (full order "
        "total) before replying, and quote the refund id. Otherwise escalate to a human."
    ),
    tools=[issue_refund],
    scopes={"orders:refund"},  # the only step allowed to move money
)

flow = tm.sequential(intake, enrich, reply, name="support")

example_input = Ticket(
    customer_id="C-311",
    text=(
        "Order ORD-1042 arrived today with a cracked screen. I'd like my money back, "
        "please - I don't want a replacement."
    ),
)

intent = tm.Intent(
    goal="Resolve the customer's ticket in one reply",
    constraints=["refund only verified, delivered orders", "never reveal payment details"],
    success_criteria=["the customer knows what was done and when to expect it"],
    audience="the customer",
)


def main() -> None:
    result = tm.run(flow, example_input, intent=intent)
    answer: Reply = result.output
    print(answer.message)
    for action in answer.actions:
        print(f"  action: {action}")
    for node in result.trace.walk():
        u = node.usage
        if u.model_calls or u.tool_calls:
            models = ",".join(node.models) or "-"
            print(
                f"  {node.name:<8} {models:<12} {u.model_calls} model / {u.tool_calls} tool "
                f"calls  {u.input_tokens:>5} in {u.output_tokens:>4} out  ${u.cost_usd:.6f}"
            )
    u = result.usage
    print(
        f"usage: {u.model_calls} model calls, {u.tool_calls} tool calls, "
        f"{u.input_tokens} in + {u.output_tokens} out"
    )
    print(f"cost: ${result.cost_usd:.6f}  (run {result.run_id})")


if __name__ == "__main__":
    main()
