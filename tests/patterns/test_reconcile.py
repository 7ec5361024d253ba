"""reconcile(): invariants over what runs changed, conflicts stamped from the store,
compensation, and the passing ships caught when claims are off."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.state import MemoryStateStore, StateRecord


class Ticket(BaseModel):
    order_id: str
    claims: bool = True


class Acted(BaseModel):
    acted: bool


class Both(BaseModel):
    refund: Acted
    replacement: Acted


class Merged(Both):
    conflicts: list[tm.Conflict] = []


async def act(ticket: Ticket, ctx: tm.RunContext, action: str, change: dict[str, object]) -> Acted:
    await asyncio.sleep(random.random() * 0.002)
    if ticket.claims:
        try:
            await ctx.state.claim(f"order:{ticket.order_id}", action=action)
        except tm.AlreadyClaimed:
            return Acted(acted=False)
    await ctx.state.update(f"order:{ticket.order_id}", lambda o: {**o, **change})
    return Acted(acted=True)


@tm.step(name="refund")
async def refund(ticket: Ticket, ctx: tm.RunContext) -> Acted:
    return await act(ticket, ctx, "refund", {"refunded": 30.0})


@tm.step(name="replacement")
async def replacement(ticket: Ticket, ctx: tm.RunContext) -> Acted:
    return await act(ticket, ctx, "replacement", {"replaced": True})


@tm.step(name="merge")
def merge(both: Both) -> Merged:
    return Merged(refund=both.refund, replacement=both.replacement)


@tm.invariant("at most one of refund / replacement per order")
def one_action(changes: tm.Changes) -> Iterator[tm.Violation]:
    for key, records in changes.by_key("order:").items():
        final = records[-1].value or {}
        if final.get("refunded") and final.get("replaced"):
            yield tm.Violation(key, "the order was both refunded and replaced", records)


@tm.invariant("total refunded <= order total")
def refund_cap(changes: tm.Changes) -> Iterator[tm.Violation]:
    for key, records in changes.by_key("order:").items():
        final = records[-1].value or {}
        if final.get("refunded", 0) > final.get("total", 0):
            yield tm.Violation(key, f"refunded {final['refunded']} of {final['total']}")


def flow(compensate: tm.Step[tm.ReconcileReport, BaseModel] | None = None) -> tm.Step:  # type: ignore[type-arg]
    ships = tm.parallel(merge=merge, refund=refund, replacement=replacement, name="ships")
    return tm.sequential(
        ships, tm.reconcile(one_action, refund_cap, compensate=compensate), name="support"
    )


def fresh_store(total: float = 50.0) -> MemoryStateStore:
    store = MemoryStateStore()
    store.create("order:42", {"id": "42", "total": total})
    return store


@pytest.mark.parametrize("trial", range(20))
def test_with_claims_exactly_one_acts_and_reconcile_confirms(trial: int) -> None:
    store = fresh_store()
    result = tm.run(flow(), {"order_id": "42"}, state=store)
    report = result.output
    assert report.ok and report.conflicts == []
    assert report.checked == [one_action.name, refund_cap.name]
    acted = [report.input["refund"]["acted"], report.input["replacement"]["acted"]]  # type: ignore[index]
    assert acted.count(True) == 1


@pytest.mark.parametrize("trial", range(20))
def test_with_claims_off_reconcile_flags_every_double_action(trial: int) -> None:
    store = fresh_store()
    journal = tm.MemoryJournal()
    result = tm.run(
        flow(), {"order_id": "42", "claims": False}, state=store, journal=journal, run_id="r"
    )
    report = result.output
    assert not report.ok
    [conflict] = report.conflicts
    assert conflict.field == "order:42" and conflict.note.startswith("at most one of")
    # who wrote what is stamped from the store: both steps, each with its version
    labels = " ".join(conflict.values)
    assert "support/ships/refund" in labels and "support/ships/replacement" in labels
    assert any(e.type == "reconcile.conflict" for e in journal.read("r"))
    assert tm.replay("r", flow(), journal=journal).identical


def test_a_compensating_step_runs_and_the_invariants_are_checked_again() -> None:
    @tm.step(name="undo")
    async def undo(report: tm.ReconcileReport, ctx: tm.RunContext) -> Acted:
        for conflict in report.conflicts:
            await ctx.state.update(conflict.field, lambda o: {**o, "replaced": False})
        return Acted(acted=True)

    store = fresh_store()
    result = tm.run(flow(undo), {"order_id": "42", "claims": False}, state=store)
    report = result.output
    assert not report.ok and report.compensated and report.remaining == []
    assert report.compensation == {"acted": True}
    order = store.get("order:42")
    assert order is not None and order.value["replaced"] is False


def test_reconcile_over_other_runs_and_the_refund_cap() -> None:
    store = fresh_store(total=20.0)  # a 30.0 refund breaks the cap
    first = tm.run(refund, {"order_id": "42", "claims": False}, state=store, run_id="a")
    assert first.output.acted
    check = tm.reconcile(one_action, refund_cap, runs=["a"], prefix="order:")
    report = tm.run(check, {}, state=store).output
    [conflict] = report.conflicts
    assert conflict.note == "total refunded <= order total: refunded 30.0 of 20.0"
    [(label, value)] = conflict.values.items()
    assert "run a" in label and value["refunded"] == 30.0
    assert [c.key for c in report.changes] == ["order:42"]


def test_bad_reconcile_declarations_are_refused_when_built() -> None:
    with pytest.raises(tm.ConfigurationError, match="at least one invariant"):
        tm.reconcile()
    with pytest.raises(tm.ConfigurationError, match="not an Invariant"):
        tm.reconcile(lambda c: [])  # type: ignore[arg-type]
    with pytest.raises(tm.ContractError, match="must accept a ReconcileReport"):
        tm.reconcile(one_action, compensate=refund)


def test_changes_helpers() -> None:
    records = [
        StateRecord("order:1", 1, {"a": 1}, False, 0.0),
        StateRecord("__claim__:order:1", 1, {"action": "x"}, False, 0.0),
        StateRecord("order:1", 2, None, True, 0.0),
    ]
    changes = tm.Changes(records)
    assert list(changes.by_key()) == ["order:1"] and len(changes.claims()) == 1
    latest = changes.latest("order:1")
    assert latest is not None and latest.deleted
