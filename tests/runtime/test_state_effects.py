"""Shared state inside runs: journaled reads and writes, stamped writers, claims that
let exactly one of two racing agents act, replay without the store, resume
without a second write, and a store that is down."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.models.base import ModelRequest
from typedmesh.state import MemoryStateStore, Writer


class Item(BaseModel):
    sku: str


class Stock(BaseModel):
    sku: str
    left: int


class Order(BaseModel):
    id: str
    total: float
    refunded: float = 0.0
    replaced: bool = False


class CountingStore(MemoryStateStore):
    """A memory store that counts the writes and reads that reach it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes_seen = 0
        self.reads_seen = 0

    def _write(self, *args: Any, **kwargs: Any) -> tuple[int, bool]:
        self.writes_seen += 1
        return super()._write(*args, **kwargs)

    def _read(self, key: str) -> tuple[int, str] | None:
        self.reads_seen += 1
        return super()._read(key)


@tm.step(name="take")
async def take(item: Item, ctx: tm.RunContext) -> Stock:
    stock = ctx.state.namespace("stock", Stock)
    written = await stock.update(item.sku, lambda s: Stock(sku=s.sku, left=s.left - 1))
    return written.value


def test_a_state_update_is_journaled_with_its_writer_stamped() -> None:
    store = MemoryStateStore()
    store.create("stock:A1", {"sku": "A1", "left": 3})
    journal = tm.MemoryJournal()
    result = tm.run(take, {"sku": "A1"}, journal=journal, run_id="r1", state=store)
    assert result.output == Stock(sku="A1", left=2)
    types = [e.type for e in journal.read("r1")]
    assert [t for t in types if t.startswith("state.")] == [
        "state.read",
        "state.value",
        "state.write",
        "state.written",
    ]
    last = store.history("stock:A1")[-1]
    assert last.version == 2 and last.value == {"sku": "A1", "left": 2}
    assert last.writer.run_id == "r1" and last.writer.step_path == "take"
    assert last.writer.agent is not None and last.writer.agent["name"] == "take"
    assert last.writer.write_id == "r1:take/state.write#0"
    started = next(e for e in journal.read("r1") if e.type == "state.write")
    assert started.payload["op"] == "put" and started.payload["expected_version"] == 1


def test_replay_serves_state_from_the_journal_without_a_store() -> None:
    store = CountingStore()
    store.create("stock:A1", {"sku": "A1", "left": 3})
    journal = tm.MemoryJournal()
    tm.run(take, {"sku": "A1"}, journal=journal, run_id="r1", state=store)
    store.create("stock:A1x", 1)  # the store moves on; the replay must not see it
    reads, writes = store.reads_seen, store.writes_seen
    replayed = tm.replay("r1", take, journal=journal)
    assert replayed.identical and replayed.executed == 0
    assert (store.reads_seen, store.writes_seen) == (reads, writes)


def test_a_lost_race_is_journaled_and_replayed_as_the_same_conflict() -> None:
    store = MemoryStateStore()
    store.create("order:1", {"id": "1", "total": 10})
    raced: list[bool] = []

    @tm.step(name="stale")
    async def stale(item: Item, ctx: tm.RunContext) -> Item:
        seen = await ctx.state.get("order:1")
        assert seen is not None
        if not raced:  # another writer gets in between (once: a replay re-runs this code)
            raced.append(True)
            store.put("order:1", {"id": "1", "total": 11}, expected_version=seen.version)
        try:
            await ctx.state.put("order:1", {"id": "1", "total": 12}, expected_version=1)
        except tm.StaleVersion as exc:
            return Item(sku=f"lost:{exc.actual}:{exc.current['total']}")
        return Item(sku="won")

    journal = tm.MemoryJournal()
    result = tm.run(stale, {"sku": "x"}, journal=journal, run_id="r", state=store)
    assert result.output.sku == "lost:2:11"
    conflict = next(e for e in journal.read("r") if e.type == "state.conflict")
    assert conflict.payload["type"] == "StaleVersion" and conflict.payload["actual"] == 2
    assert tm.replay("r", stale, journal=journal).output.sku == "lost:2:11"


def test_a_value_that_fails_its_model_is_refused_before_anything_is_journaled() -> None:
    @tm.step(name="bad")
    async def bad(item: Item, ctx: tm.RunContext) -> Item:
        await ctx.state.namespace("stock", Stock).put("x", {"sku": 1}, expected_version=None)
        return item

    journal = tm.MemoryJournal()
    with pytest.raises(tm.InvalidStateValue, match="does not fit Stock"):
        tm.run(bad, {"sku": "x"}, journal=journal, run_id="r", state=MemoryStateStore())
    assert not any(e.type.startswith("state.write") for e in journal.read("r"))
    assert tm.verify_run(journal, "r").ok


def test_a_run_without_a_store_says_how_to_give_one() -> None:
    with pytest.raises(tm.ConfigurationError, match="pass state="):
        tm.run(take, {"sku": "A1"})


def test_a_store_that_is_down_is_a_typed_error_and_the_journal_stays_consistent() -> None:
    class DownStore(MemoryStateStore):
        def __init__(self) -> None:
            super().__init__()
            self.url = "redis://10.0.0.9:6379/0"

        def _read(self, key: str) -> tuple[int, str] | None:
            raise ConnectionRefusedError(111, "Connection refused")

    journal = tm.MemoryJournal()
    with pytest.raises(tm.StateUnavailable, match=r"10\.0\.0\.9:6379.*refused") as caught:
        tm.run(take, {"sku": "A1"}, journal=journal, run_id="r", state=DownStore())
    assert caught.value.store == "redis://10.0.0.9:6379/0"
    assert tm.verify_run(journal, "r").ok
    assert journal.head("r").status == "failed"


# -- claims: the passing ships ----------------------------------------------------------


CLAIMS = {"on": True}


@tm.tool(requires={"orders:refund"})
async def issue_refund(order_id: str, amount: float, ctx: tm.RunContext) -> str:
    """Refund an order."""
    await asyncio.sleep(random.random() * 0.003)
    if CLAIMS["on"]:
        await ctx.state.claim(f"order:{order_id}", action="refund")
    orders = ctx.state.namespace("order", Order)
    await orders.update(order_id, lambda o: o.model_copy(update={"refunded": amount}))
    return "refunded"


@tm.tool(requires={"orders:replace"})
async def send_replacement(order_id: str, ctx: tm.RunContext) -> str:
    """Ship a replacement."""
    await asyncio.sleep(random.random() * 0.003)
    if CLAIMS["on"]:
        await ctx.state.claim(f"order:{order_id}", action="replacement")
    orders = ctx.state.namespace("order", Order)
    await orders.update(order_id, lambda o: o.model_copy(update={"replaced": True}))
    return "replacement sent"


class Ticket(BaseModel):
    order_id: str


class Outcome(BaseModel):
    acted: bool
    note: str


class Both(BaseModel):
    refund: Outcome
    replacement: Outcome


class Merged(Both):
    conflicts: list[tm.Conflict] = []


def actor(tool: str, arguments: dict[str, Any]) -> Any:
    def respond(request: ModelRequest) -> Any:
        answers = [m for m in request.messages if m.role == "tool"]
        if not answers:
            order_id = request.input_data().get("order_id", "42")
            return {
                "tool_calls": [{"name": tool, "arguments": {**arguments, "order_id": order_id}}]
            }
        said = answers[-1].content
        return {"acted": not said.startswith("Error"), "note": said}

    return respond


def ships_flow() -> tm.Step[Ticket, Merged]:
    refund = tm.Agent(
        "refunder",
        input=Ticket,
        output=Outcome,
        tools=[issue_refund],
        scopes={"orders:refund"},
        model=tm.ScriptedModel(actor("issue_refund", {"order_id": "42", "amount": 10.0})),
    )
    replace = tm.Agent(
        "replacer",
        input=Ticket,
        output=Outcome,
        tools=[send_replacement],
        scopes={"orders:replace"},
        model=tm.ScriptedModel(actor("send_replacement", {"order_id": "42"})),
    )

    @tm.step(name="merge")
    def merge(both: Both) -> Merged:
        return Merged(refund=both.refund, replacement=both.replacement)

    return tm.parallel(merge=merge, refund=refund, replacement=replace, name="ships")


@pytest.mark.parametrize("trial", range(10))
def test_two_agents_racing_on_one_order_exactly_one_acts(trial: int) -> None:
    store = MemoryStateStore()
    store.create("order:42", {"id": "42", "total": 10.0})
    journal = tm.MemoryJournal()
    result = tm.run(ships_flow(), {"order_id": "42"}, journal=journal, run_id="r", state=store)
    acted = [result.output.refund.acted, result.output.replacement.acted]
    assert acted.count(True) == 1
    loser = result.output.refund if not acted[0] else result.output.replacement
    assert "already claimed" in loser.note and "run r" in loser.note
    order = store.get("order:42")
    assert order is not None
    assert (order.value["refunded"] > 0) != order.value["replaced"]
    assert tm.verify_run(journal, "r").ok
    # the losing claim is journaled with its holder; the replay needs no store
    lost = next(e for e in journal.read("r") if e.type == "state.conflict")
    assert lost.payload["type"] == "AlreadyClaimed" and lost.payload["holder"]["run_id"] == "r"
    assert tm.replay("r", ships_flow(), journal=journal).identical


def test_a_claim_expires_and_can_be_released() -> None:
    store = MemoryStateStore()

    @tm.step(name="holder")
    async def holder(t: Ticket, ctx: tm.RunContext) -> Ticket:
        claim = await ctx.state.claim("order:1", action="refund", ttl=60)
        assert claim.expires_at is not None and claim.holder.step_path == "holder"
        assert await ctx.state.release("order:1")
        assert not await ctx.state.release("order:1")
        return t

    tm.run(holder, {"order_id": "1"}, state=store)
    assert store.claim_of("order:1") is None
    other = Writer(by="ops")
    store.claim("order:1", action="refund", writer=other, ttl=0.01)
    import time

    time.sleep(0.02)
    journal = tm.MemoryJournal()
    tm.run(holder, {"order_id": "1"}, state=store, journal=journal, run_id="r")


def test_a_what_if_runs_the_swapped_steps_state_on_the_store_it_is_given() -> None:
    store = MemoryStateStore()
    store.create("stock:A1", {"sku": "A1", "left": 3})
    journal = tm.MemoryJournal()
    tm.run(take, {"sku": "A1"}, journal=journal, run_id="r1", state=store)

    @tm.step(name="take")
    async def take_two(item: Item, ctx: tm.RunContext) -> Stock:
        stock = ctx.state.namespace("stock", Stock)
        written = await stock.update(item.sku, lambda s: Stock(sku=s.sku, left=s.left - 2))
        return written.value

    with pytest.raises(tm.ConfigurationError, match="no state store"):
        tm.replay("r1", take, journal=journal, swap={"take": take_two})
    scratch = MemoryStateStore()
    scratch.create("stock:A1", {"sku": "A1", "left": 3})
    whatif = tm.replay("r1", take, journal=journal, swap={"take": take_two}, state=scratch)
    assert whatif.output == Stock(sku="A1", left=1) and not whatif.identical
    current = store.get("stock:A1")
    assert current is not None and current.value["left"] == 2  # production untouched


@tm.invariant("at most one of refund / replacement per order")
def one_action(changes: tm.Changes) -> Any:
    for key, records in changes.by_key("order:").items():
        final = records[-1].value or {}
        if final.get("refunded") and final.get("replaced"):
            yield tm.Violation(key, "both refunded and replaced", records)


def test_passing_ships_100_trials_on_sqlite(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two agents race on one order 100 times with random delays: with claims exactly one
    acts every time; with claims off, reconcile flags every double action."""
    from typedmesh.state.sqlite import SQLiteStateStore

    store = SQLiteStateStore(tmp_path / "state.db")
    flow = tm.sequential(ships_flow(), tm.reconcile(one_action, prefix="order:"), name="support")
    doubles = flagged = 0
    for claims in (True, False):
        monkeypatch.setitem(CLAIMS, "on", claims)
        for trial in range(100):
            order = f"{int(claims)}-{trial}"
            store.create(f"order:{order}", {"id": order, "total": 10.0})
            report = tm.run(flow, {"order_id": order}, state=store).output
            acted = [report.input["refund"]["acted"], report.input["replacement"]["acted"]]  # type: ignore[index]
            value = store.get(f"order:{order}")
            assert value is not None
            both = bool(value.value.get("refunded")) and bool(value.value.get("replaced"))
            if claims:
                assert acted.count(True) == 1 and not both and report.ok, trial
            else:
                doubles += both
                flagged += not report.ok
                assert report.ok != both, trial  # flagged exactly when both acted
    assert doubles == flagged and doubles > 0
