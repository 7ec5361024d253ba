"""The runtime's seams: waiting effect kinds, event sinks, one reducer, the executor,
leases against zombies and twins, and a journal that grows linearly."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.journal import Event
from typedmesh.models.base import ModelRequest
from typedmesh.runtime.reducer import trace_from_events


class Q(BaseModel):
    q: str


class A(BaseModel):
    a: str


class SignalKind(tm.EffectKind):
    """A test-only kind that waits: its live execution has no result yet."""

    name: ClassVar[str] = "test_signal"
    may_wait: ClassVar[bool] = True
    commit_result: ClassVar[bool] = True


SIGNAL = tm.register_kind(SignalKind())
signal_asked: list[str] = []


@tm.step(name="gate")
async def wait_for_signal(q: Q, ctx: tm.RunContext) -> A:
    async def ask() -> Any:
        signal_asked.append(q.q)
        return tm.PENDING

    answer = await ctx.perform(SIGNAL, {"question": q.q}, ask)
    return A(a=f"{q.q}:{answer}")


def test_a_waiting_kind_suspends_the_run_and_resume_continues_after_a_result(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "runs.db"
    signal_asked.clear()
    with pytest.raises(tm.RunWaiting) as waiting:
        tm.run(wait_for_signal, {"q": "ship?"}, journal=journal, run_id="w")
    assert waiting.value.waiting == ["gate/test_signal#0"] and waiting.value.run_id == "w"
    with tm.SQLiteJournal(journal) as store:
        [info] = store.runs()
        assert info.status == "waiting"
        before = len(store.read("w"))
    # nothing recorded yet: resume suspends again, without asking again
    with pytest.raises(tm.RunWaiting):
        tm.resume("w", wait_for_signal, journal=journal)
    assert signal_asked == ["ship?"]
    assert tm.waiting_effects("w", journal=journal) == ["gate/test_signal#0"]
    tm.record_result("w", "gate/test_signal#0", "yes", journal=journal, recorded_by="ops@acme")
    with pytest.raises(tm.ConfigurationError, match="not waiting"):
        tm.record_result("w", "gate/test_signal#0", "no", journal=journal)
    result = tm.resume("w", wait_for_signal, journal=journal)
    assert result.output == A(a="ship?:yes") and signal_asked == ["ship?"]
    with tm.SQLiteJournal(journal) as store:
        events = store.read("w")
        assert len(events) > before and tm.verify_run(store, "w").ok
        done = next(e for e in events if e.type == "test_signal.completed")
        assert done.payload["recorded_by"] == "ops@acme"
    assert tm.replay("w", wait_for_signal, journal=journal).identical


def test_a_run_without_a_journal_still_produces_its_events() -> None:
    seen: list[Event] = []

    class Collect:
        def accept(self, event: Event, blobs: object) -> None:
            seen.append(event)

    agent = tm.Agent("a", input=Q, output=A, model=tm.ScriptedModel(['{"a": "x"}']))
    tm.run(agent, {"q": "x"}, subscribers=[Collect()])
    assert [e.type for e in seen] == [
        "run.started",
        "step.started",
        "model.request",
        "model.response",
        "step.completed",
        "run.finished",
    ]
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(seen))


def _shape(node: tm.TraceNode) -> Any:
    return (
        node.path,
        node.status,
        node.usage.model_dump(),
        node.models,
        [e["event"] for e in node.events],
        [_shape(c) for c in node.children],
    )


def test_the_live_trace_and_the_journal_trace_are_one_reduction() -> None:
    @tm.tool
    def lookup(order_id: str) -> str:
        """Look an order up."""
        return "found"

    def respond(request: ModelRequest) -> Any:
        if not any(m.role == "tool" for m in request.messages):
            return {"tool_calls": [{"name": "lookup", "arguments": {"order_id": "1"}}]}
        return {"a": "done"}

    agent = tm.Agent(
        "a", input=Q, output=A, model=tm.ScriptedModel(respond, name="gpt-4o"), tools=[lookup]
    )
    journal = tm.MemoryJournal()
    result = tm.run(tm.sequential(agent, name="flow"), {"q": "x"}, journal=journal)
    events = journal.read(result.run_id)
    assert _shape(result.trace) == _shape(trace_from_events(events, journal))
    assert result.trace.total_usage() == result.usage


def test_a_failing_branch_cancels_its_siblings() -> None:
    @tm.step(name="fails")
    async def fails(q: Q) -> A:
        raise tm.ToolError("no", tool="x")

    @tm.step(name="slow")
    async def slow(q: Q) -> A:
        await asyncio.sleep(5)
        return A(a="late")

    merge = tm.step(name="merge")(_merge)
    flow = tm.parallel(fails=fails, slow=slow, merge=merge)
    started = time.perf_counter()
    with pytest.raises(tm.ToolError) as caught:
        tm.run(flow, {"q": "x"})
    assert time.perf_counter() - started < 2
    slow_node = caught.value.partial.find("parallel/slow")
    assert slow_node is not None and slow_node.status == "cancelled"


class _Both(BaseModel):
    fails: A
    slow: A


class _Merged(BaseModel):
    conflicts: list[tm.Conflict] = []


def _merge(both: _Both) -> _Merged:
    return _Merged()


def test_a_second_process_starting_the_same_run_id_is_refused(tmp_path: Path) -> None:
    journal = tmp_path / "runs.db"
    agent = tm.Agent("a", input=Q, output=A, model=tm.ScriptedModel(['{"a": "x"}']))
    tm.run(agent, {"q": "x"}, journal=journal, run_id="same")
    twin = tm.ScriptedModel(['{"a": "y"}'])
    with pytest.raises(tm.RunExists):
        tm.run(
            tm.Agent("a", input=Q, output=A, model=twin), {"q": "y"}, journal=journal, run_id="same"
        )
    assert twin.calls == []  # refused before it executed anything


def test_a_paused_zombie_is_fenced_before_its_side_effect(tmp_path: Path) -> None:
    journal = tmp_path / "runs.db"
    effects: list[str] = []

    @tm.tool(idempotent=False)
    def refund(order_id: str) -> str:
        """Refund."""
        effects.append(order_id)
        return "ok"

    @tm.step(name="slowpoke")
    async def slowpoke(q: Q, ctx: tm.RunContext) -> A:
        time.sleep(0.6)  # noqa: ASYNC251 - paused: the loop (and its heartbeat) stands still
        await ctx.call_tool(refund, order_id=q.q)
        return A(a="refunded")

    def take_over() -> None:
        time.sleep(0.35)  # after the zombie's lease (0.2 s) expired
        store = tm.SQLiteJournal(journal)
        store.acquire("z", "other-host:1:x", ttl=30)
        store.close()

    thief = threading.Thread(target=take_over)
    thief.start()
    with pytest.raises(tm.LeaseLost):
        asyncio.run(tm.arun(slowpoke, {"q": "42"}, journal=journal, run_id="z", lease_ttl=0.2))
    thief.join()
    assert effects == []  # refused before the refund ran


def test_the_journal_grows_linearly_with_a_conversation(tmp_path: Path) -> None:
    @tm.tool
    def step_once(n: int) -> str:
        """One more round."""
        return f"round {n} done"

    def sizes(rounds: int) -> int:
        def respond(request: ModelRequest) -> Any:
            done = sum(m.role == "tool" for m in request.messages)
            if done < rounds:
                return {"tool_calls": [{"name": "step_once", "arguments": {"n": done}}]}
            return {"a": "finished"}

        agent = tm.Agent(
            "a",
            input=Q,
            output=A,
            model=tm.ScriptedModel(respond),
            tools=[step_once],
            max_tool_rounds=rounds + 1,
            max_tool_calls=rounds + 1,
        )
        path = tmp_path / f"{rounds}.db"
        tm.run(agent, {"q": "x"}, journal=path)
        store = tm.SQLiteJournal(path)
        db = store._db
        total = sum(
            db.execute(q).fetchone()[0] or 0
            for q in (
                "SELECT SUM(LENGTH(payload)) FROM events",
                "SELECT SUM(LENGTH(data)) FROM blobs",
            )
        )
        store.close()
        return int(total)

    small, large = sizes(100), sizes(200)
    assert large < 2.3 * small  # stored once per message: linear, not quadratic
    assert large < 1_000_000


def test_a_refused_resume_keeps_the_runs_status_and_an_emptied_run_is_corrupt() -> None:
    failing = tm.Agent("a", input=Q, output=A, model=tm.ScriptedModel([tm.ModelError("down")]))
    journal = tm.MemoryJournal()
    with pytest.raises(tm.ModelError):
        tm.run(failing, {"q": "x"}, journal=journal, run_id="r")
    journal.tamper_drop_tail("r", 1)
    with pytest.raises(tm.JournalCorrupt):
        tm.resume("r", failing, journal=journal)
    assert journal.head("r").status == "failed"  # not overwritten by the refusal
    journal.tamper_drop_tail("r", len(journal.read("r")))
    with pytest.raises(tm.JournalCorrupt, match="deleted"):
        tm.resume("r", failing, journal=journal)


def test_the_first_event_is_on_disk_before_anything_runs(tmp_path: Path) -> None:
    journal = tmp_path / "runs.db"
    seen: list[int] = []

    @tm.step(name="peek")
    def peek(q: Q) -> A:
        with tm.SQLiteJournal(journal) as other:  # another connection, as after a kill -9
            seen.append(len(other.read("p")))
        return A(a="x")

    tm.run(peek, {"q": "x"}, journal=journal, run_id="p")
    assert seen == [1]
