"""Passing ships: two agents act on one order at once, and what stops it.

A customer's monitor arrived broken. Two agents take the case in parallel:
``refunder`` refunds the order, ``warehouse`` checks stock and ships a
replacement. Both saw the order untouched when they started, so without
coordination both act: a refund *and* a replacement (the seed's failure,
"passing ships"). Here each tool first claims the order in shared state
(``ctx.state.claim``): of the two, exactly one wins; the other is told who
holds the order (agent, run, step) as a tool error and reports that it did
not act. Then ``tm.reconcile`` checks two invariants over what the run wrote
("at most one of refund / replacement per order", "total refunded <= order
total"); with the claims off it catches the double action and names both
writers, stamped by the framework from the store.

    python examples/passing_ships.py               # claims on: one agent acts
    python examples/passing_ships.py --no-claims   # both act; reconcile flags it
    python examples/passing_ships.py --store memory: --order 7
    TYPEDMESH_MODEL=openai:gpt-4o-mini python examples/passing_ships.py
    typedmesh run examples/passing_ships.py:flow -i '{"order_id": "42", "claims": false}'
    typedmesh state history order:42

Offline, the warehouse agent checks stock first (~200 ms), so the refund
claims the order first; on a real model either may win, and exactly one acts.

The order is seeded by the flow itself (created if the store has none), in
the store the run uses: by default the SQLite file ``.typedmesh/runs.db``,
the journal's file, which ``typedmesh state`` reads by default too. A claim
is held after the run: a later run on the same order finds it taken and does
not act again (use another ``--order`` for a fresh one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

import typedmesh as tm
from typedmesh.journal import DEFAULT_JOURNAL
from typedmesh.models import model_from_env
from typedmesh.state import StateRecord

# -- contracts ------------------------------------------------------------------------


class Ticket(BaseModel):
    """The run input: which order, and whether the agents claim it before acting."""

    order_id: str = Field(min_length=1, max_length=64)
    complaint: str = "My Aurora 27-inch monitor arrived with a cracked screen."
    claims: bool = True
    total: float = Field(default=329.0, gt=0)
    """The order's total, used only when this run seeds the order."""


class Order(BaseModel):
    """An order as shared state holds it (``order:<id>``)."""

    id: str
    item: str
    sku: str
    total: float
    refunded: float = 0.0
    replaced: bool = False


class Case(BaseModel):
    """What both agents are handed: the order as it was when the case was opened."""

    order_id: str
    item: str
    sku: str
    total: float
    order_version: int
    complaint: str


class Receipt(BaseModel):
    order_id: str
    action: Literal["refund", "replacement"]
    amount: float = 0.0
    order_version: int
    """The order's version after this action."""


class Stock(BaseModel):
    sku: str
    available: int


class Outcome(BaseModel):
    """An agent's report: did it act, and what its tool said."""

    acted: bool
    note: str


class Handled(BaseModel):
    """The two agents' reports, one per parallel branch."""

    refund: Outcome
    replacement: Outcome
    conflicts: list[tm.Conflict] = []


# -- tools: each claims the order before acting on it ---------------------------------

WAREHOUSE = {"AUR-27": 3}
"""Units in stock by SKU (an in-memory stand-in for the warehouse service)."""


async def claims_on(ctx: tm.RunContext) -> bool:
    """Whether this run's agents claim before acting (the case record says)."""
    case = await ctx.state.get(f"case:{ctx.run_id}")
    return case is None or bool(case.value.get("claims", True))


@tm.tool(requires={"orders:refund"})
async def issue_refund(order_id: str, amount: float, ctx: tm.RunContext) -> Receipt:
    """Refund ``amount`` of an order to the card it was paid with."""
    if await claims_on(ctx):
        # exactly one claimant wins; a loser gets AlreadyClaimed naming the holder,
        # which the framework hands the model as this tool's error
        await ctx.state.claim(f"order:{order_id}", action="refund")
    orders = ctx.state.namespace("order", Order)
    done = await orders.update(
        order_id, lambda o: o.model_copy(update={"refunded": o.refunded + amount})
    )
    return Receipt(order_id=order_id, action="refund", amount=amount, order_version=done.version)


@tm.tool(requires={"warehouse:read"})
async def check_stock(sku: str) -> Stock:
    """How many units of ``sku`` the warehouse has."""
    await asyncio.sleep(0.2)  # the warehouse API answers in ~200 ms
    return Stock(sku=sku, available=WAREHOUSE.get(sku, 0))


@tm.tool(requires={"orders:replace"})
async def send_replacement(order_id: str, ctx: tm.RunContext) -> Receipt:
    """Ship a replacement unit for an order."""
    if await claims_on(ctx):
        await ctx.state.claim(f"order:{order_id}", action="replacement")
    orders = ctx.state.namespace("order", Order)
    done = await orders.update(order_id, lambda o: o.model_copy(update={"replaced": True}))
    return Receipt(order_id=order_id, action="replacement", order_version=done.version)


# -- models: offline by default, live when TYPEDMESH_MODEL is set --------------------
# They answer from structured data only: the case (the input) and the tool results.


def _tool_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"tool_calls": [{"id": f"call_{name}", "name": name, "arguments": arguments}]}


def _report(answer: str) -> dict[str, Any]:
    """The agent's final report from its acting tool's answer (a receipt, or an error)."""
    try:
        receipt = Receipt.model_validate_json(answer)
    except ValueError:
        return {"acted": False, "note": answer}
    return {"acted": True, "note": f"{receipt.action} done: order at v{receipt.order_version}"}


def offline_refunder(request: tm.ModelRequest) -> dict[str, Any]:
    case = request.input_data()
    answers = [m.content for m in request.messages if m.role == "tool"]
    if not answers:
        return _tool_call("issue_refund", {"order_id": case["order_id"], "amount": case["total"]})
    return _report(answers[-1])


def offline_warehouse(request: tm.ModelRequest) -> dict[str, Any]:
    case = request.input_data()
    answers = [m.content for m in request.messages if m.role == "tool"]
    if not answers:
        return _tool_call("check_stock", {"sku": case["sku"]})
    if len(answers) == 1:
        try:
            stock = Stock.model_validate_json(answers[0])
        except ValueError:
            return {"acted": False, "note": answers[0]}
        if stock.available < 1:
            return {"acted": False, "note": f"{stock.sku} is out of stock"}
        return _tool_call("send_replacement", {"order_id": case["order_id"]})
    return _report(answers[-1])


# -- the flow -------------------------------------------------------------------------


@tm.step(name="open_case", version="1.0.0")
async def open_case(ticket: Ticket, ctx: tm.RunContext) -> Case:
    """Seed the order if the store has none (idempotent), record the case, hand it on."""
    orders = ctx.state.namespace("order", Order)
    found = await orders.get(ticket.order_id)
    if found is None:
        seed = Order(
            id=ticket.order_id, item='Aurora 27" monitor', sku="AUR-27", total=ticket.total
        )
        try:
            found = await orders.create(ticket.order_id, seed)
        except tm.StaleVersion:  # another run seeded it first: use theirs
            found = await orders.get(ticket.order_id)
            assert found is not None
    await ctx.state.create(
        f"case:{ctx.run_id}", {"order_id": ticket.order_id, "claims": ticket.claims}
    )
    order = found.value
    return Case(
        order_id=order.id,
        item=order.item,
        sku=order.sku,
        total=order.total,
        order_version=found.version,
        complaint=ticket.complaint,
    )


refunder = tm.Agent(
    "refunder",
    version="1.0.0",
    input=Case,
    output=Outcome,
    model=model_from_env(tm.ScriptedModel(offline_refunder, name="gpt-4o-mini")),
    instructions=(
        "The customer's item arrived broken. Refund the full order total with the "
        "issue_refund tool. Then report: acted=true if the tool returned a receipt, "
        "acted=false if it returned an error; note: what the tool said."
    ),
    tools=[issue_refund],
    scopes={"orders:refund"},
)

warehouse = tm.Agent(
    "warehouse",
    version="1.0.0",
    input=Case,
    output=Outcome,
    model=model_from_env(tm.ScriptedModel(offline_warehouse, name="gpt-4o-mini")),
    instructions=(
        "The customer's item arrived broken. Check stock of the order's sku with "
        "check_stock; if a unit is available, ship one with send_replacement. Then "
        "report: acted=true if send_replacement returned a receipt, else acted=false; "
        "note: what the tool said."
    ),
    tools=[check_stock, send_replacement],
    scopes={"warehouse:read", "orders:replace"},
)


@tm.step(name="merge", version="1.0.0")
def merge(both: Handled) -> Handled:
    return both


# the two reports differ by design (different jobs): what matters is what the agents
# did to the order, which reconcile checks from the store, so no field is compared here
ships = tm.parallel(
    merge=merge,
    refund=refunder,
    replacement=warehouse,
    name="ships",
    compare=tm.Compare(ignore=True),
)


def changed(records: Sequence[StateRecord], *fields: str) -> list[StateRecord]:
    """The versions that changed any of ``fields`` (who refunded, who replaced)."""
    found, before = [], {f: None for f in fields}
    for record in records:
        value = record.value or {}
        now = {f: value.get(f) for f in fields}
        if now != before and record.version > 1 and not record.deleted:
            found.append(record)
        before = now
    return found


@tm.invariant("at most one of refund / replacement per order")
def one_action(changes: tm.Changes) -> Iterator[tm.Violation]:
    for key, records in changes.by_key("order:").items():
        final = records[-1].value or {}
        if final.get("refunded") and final.get("replaced"):
            acted = changed(records, "refunded", "replaced")
            yield tm.Violation(key, "the order was both refunded and replaced", acted)


@tm.invariant("total refunded <= order total")
def refund_cap(changes: tm.Changes) -> Iterator[tm.Violation]:
    for key, records in changes.by_key("order:").items():
        final = records[-1].value or {}
        refunded, total = final.get("refunded", 0.0), final.get("total", 0.0)
        if refunded > total:
            yield tm.Violation(key, f"refunded {refunded} of {total}", changed(records, "refunded"))


flow = tm.sequential(
    open_case, ships, tm.reconcile(one_action, refund_cap, prefix="order:"), name="passing_ships"
)

example_input = Ticket(order_id="42")


# -- main -----------------------------------------------------------------------------


def describe(result: tm.RunResult[tm.ReconcileReport]) -> list[str]:
    """Who acted, and who was refused by whose claim: from what the run journaled (its
    state writes and conflicts), not from what the agents say they did."""
    acted: dict[str, bool] = {}
    refused: dict[str, str] = {}
    for node in result.trace.walk():
        branch = node.path.rsplit("/", 1)[-1]
        for event in node.events:
            if event["event"] == "state.written" and str(event.get("key")).startswith("order:"):
                acted[branch] = acted.get(branch, False) or event.get("op") == "put"
            elif event["event"] == "state.conflict" and str(event.get("error")).startswith(
                "Already"
            ):
                refused[branch] = str(event["error"])
    handled = Handled.model_validate(result.output.input)
    lines = []
    for branch, agent, outcome in (
        ("refund", refunder.name, handled.refund),
        ("replacement", warehouse.name, handled.replacement),
    ):
        did = acted.get(branch, False)
        line = (
            f"{agent:<9} {'acted' if did else 'did not act'}: {refused.get(branch, outcome.note)}"
        )
        if outcome.acted != did:  # a model's report that the journal contradicts
            line += f"  (the agent reported acted={outcome.acted}; the journal says otherwise)"
        lines.append(line)
    return lines


def show(value: object) -> str:
    if isinstance(value, dict):
        value = {k: value.get(k) for k in ("refunded", "replaced", "total") if k in value}
    return json.dumps(value)


def main(argv: Sequence[str] = ()) -> None:
    parser = argparse.ArgumentParser(description="two agents, one order, claims and reconcile")
    parser.add_argument("--no-claims", action="store_true", help="act without claiming")
    parser.add_argument("--order", default=example_input.order_id, help="the order id")
    parser.add_argument(
        "--store",
        default=DEFAULT_JOURNAL,
        help=f"the state store URL or SQLite file (default: {DEFAULT_JOURNAL})",
    )
    args = parser.parse_args(list(argv))
    ticket = example_input.model_copy(update={"order_id": args.order, "claims": not args.no_claims})
    # the run is journaled beside its state (same SQLite file or PostgreSQL database),
    # so `typedmesh trace RUN_ID` and `typedmesh state history order:ID` both find it
    in_memory = args.store.startswith(("memory:", "redis://", "rediss://", "unix://"))
    journal = None if in_memory else args.store
    target = f"{Path(__file__).resolve()}:flow"
    result = tm.run(flow, ticket, state=args.store, journal=journal, target=target)
    report = result.output

    print(f"== order {ticket.order_id}, claims {'on' if ticket.claims else 'off'}")
    for line in describe(result):
        print(f"  {line}")
    print(f"reconcile: {'ok' if report.ok else 'CONFLICT'}  (checked: {'; '.join(report.checked)})")
    for conflict in report.conflicts:
        print(f"  {conflict.field}: {conflict.note}")
        for writer, value in conflict.values.items():
            print(f"    {writer}: {show(value)}")
    for change in report.changes:
        print(f"  wrote {change.key} v{change.version} ({change.agent}, {change.step_path})")
    print("trace:")
    for node in result.trace.walk():
        depth = node.path.count("/")
        u = node.usage
        print(
            f"  {'  ' * depth}{node.name:<{24 - 2 * depth}} {node.kind:<10} {node.status:<6}"
            f" {u.model_calls} model / {u.tool_calls} tool calls  ${u.cost_usd:.6f}"
        )
    u = result.usage
    print(
        f"usage: {u.model_calls} model calls, {u.tool_calls} tool calls, "
        f"{u.input_tokens} in + {u.output_tokens} out"
    )
    print(f"cost: ${result.cost_usd:.6f}  (run {result.run_id})")
    store = "" if args.store == DEFAULT_JOURNAL else f" --store {args.store}"
    print(f"who wrote what: typedmesh state history order:{ticket.order_id}{store}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
