"""The one reducer: attempts and calls, folded the same live and from a journal."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.journal import Event
from typedmesh.journal.base import Lease
from typedmesh.journal.verify import blob_refs
from typedmesh.models.base import ModelRequest, Usage
from typedmesh.runtime import reducer as reducer_module
from typedmesh.runtime.reducer import TraceReducer, reduce_events
from typedmesh.runtime.trace import EffectCall, TraceNode


class Order(BaseModel):
    order_id: str


class Done(BaseModel):
    note: str


class Tapped(tm.MemoryJournal):
    """A journal that keeps the very events the run made (live, resolved) as they arrive."""

    def __init__(self) -> None:
        super().__init__()
        self.tapped: list[Event] = []

    def append(
        self,
        lease: Lease,
        events: Sequence[Event],
        blobs: Mapping[str, bytes],
        **options: Any,
    ) -> Lease:
        self.tapped.extend(events)
        return super().append(lease, events, blobs, **options)


def crashed_into(journal: tm.Journal, run_id: str, upto: int, into: tm.Journal) -> None:
    events = journal.read(run_id)[: upto + 1]
    refs = {d for e in events for digests in blob_refs(e).values() for d in digests}
    into.import_run(events, {ref: journal.blob(ref) for ref in refs})
    if isinstance(into, Tapped):
        into.tapped.clear()  # the journaled part: not what the resumed run makes


@tm.tool
def lookup(order_id: str) -> str:
    """Look an order up."""
    return f"order {order_id} shipped"


@tm.tool(idempotent=False)
def notify(order_id: str) -> str:
    """Email the customer (not idempotent)."""
    return "sent"


def agent(*tools: tm.Tool) -> tm.Agent[Order, Done]:
    def respond(request: ModelRequest) -> Any:
        if not any(m.role == "tool" for m in request.messages):
            return {"tool_calls": [{"name": t.name, "arguments": {"order_id": "1"}} for t in tools]}
        return {"note": "done"}

    model = tm.ScriptedModel(respond, name="gpt-4o-mini")
    return tm.Agent("support", input=Order, output=Done, model=model, tools=list(tools))


def attempts(root: TraceNode) -> list[tuple[str, int, str, str, str | None]]:
    return [
        (node.path, a.parent, a.status, a.started, a.ended)
        for node in root.walk()
        for a in node.attempts
    ]


def calls(reducer: TraceReducer) -> list[tuple[Any, ...]]:
    def one(call: EffectCall) -> tuple[Any, ...]:
        node = call.node.path if call.node is not None else None
        return (
            call.kind,
            call.key,
            call.number,
            node,
            call.attempt,
            call.started,
            call.ended,
            call.status,
            call.error,
            call.model,
            call.served_model,
            call.usage,
            call.tool,
            call.in_doubt,
        )

    return [one(call) for call in reducer.calls]


def test_a_resumed_step_has_two_attempts_and_its_calls_stay_with_the_first() -> None:
    journal = tm.MemoryJournal()
    tm.run(agent(lookup), {"order_id": "1"}, journal=journal, run_id="r")
    done = next(e.seq for e in journal.read("r") if e.type == "tool.result")
    crashed = Tapped()
    crashed_into(journal, "r", done, crashed)
    cut = crashed.read("r")[-1]
    result = tm.resume("r", agent(lookup), journal=crashed)

    events = crashed.read("r")
    reducer = reduce_events(events, crashed)
    root = reducer.finish(events[-1])
    resumed = next(e for e in events if e.type == "run.resumed")
    first, second = root.attempts
    assert (first.status, first.ended, first.parent) == ("incomplete", cut.ts, -1)
    assert (second.status, second.started) == ("ok", events[resumed.seq + 1].ts)
    assert root.status == "ok" and reducer.notes == [resumed] and reducer.terminal == events[-1]
    # model#0 and the tool ran under the first attempt; model#1 under the second
    assert [(c.key, c.attempt, c.status) for c in reducer.calls] == [
        ("support/model#0", 0, "ok"),
        ("support/tool#0", 0, "ok"),
        ("support/model#1", 1, "ok"),
    ]
    model0 = reducer.calls[0]
    served = ("gpt-4o-mini", "offline", "gpt-4o-mini")
    assert (model0.model, model0.provider, model0.served_model) == served
    assert model0.usage is not None and model0.usage.model_calls == 1
    assert reducer.calls[1].tool == "lookup" and reducer.calls[1].idempotent is True
    # cost as recorded: the calls' usage adds up to the run's
    total = Usage()
    for call in reducer.calls:
        total = total + (call.usage or Usage())
    assert total.cost_usd == pytest.approx(result.usage.cost_usd)
    assert total.input_tokens == result.usage.input_tokens

    # the same fold as the run itself made it: journaled events first, then its own
    live = TraceReducer(crashed)
    for event in events[: resumed.seq]:
        live.add(event)
    for event in crashed.tapped:
        assert event.resolved
        live.add(event)
    live_root = live.finish()
    assert attempts(live_root) == attempts(root)
    assert calls(live) == calls(reducer)
    assert [e.seq for e in live.notes] == [e.seq for e in reducer.notes] == [resumed.seq]
    assert live.last_ts == reducer.last_ts


def test_a_live_fold_equals_the_journal_fold_and_decodes_nothing() -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the live fold decoded a payload")

    journal = tm.MemoryJournal()
    live = TraceReducer()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reducer_module, "load_payload", fail)
        result = tm.run(agent(lookup), {"order_id": "1"}, journal=journal, subscribers=[live])
    events = journal.read(result.run_id)
    offline = reduce_events(events, journal)
    assert attempts(live.finish()) == attempts(offline.finish(events[-1]))
    assert calls(live) == calls(offline)
    assert live.usage == offline.usage == result.usage
    assert live.run_id == result.run_id and live.first is not None
    assert live.first.type == "run.started"


def test_an_in_doubt_call_skipped_on_resume() -> None:
    journal = tm.MemoryJournal()
    tm.run(agent(notify), {"order_id": "1"}, journal=journal, run_id="r")
    started = next(e.seq for e in journal.read("r") if e.type == "tool.started")
    crashed = Tapped()
    crashed_into(journal, "r", started, crashed)
    tm.resume("r", agent(notify), journal=crashed, in_doubt="skip")
    events = crashed.read("r")
    reducer = reduce_events(events, crashed)
    reducer.finish()
    tool = next(c for c in reducer.calls if c.kind == "tool")
    assert (tool.status, tool.in_doubt, tool.attempt) == ("incomplete", "skipped", 0)
    # the operator's decision is an event on the second attempt, not a second call
    assert [c.key for c in reducer.calls].count("support/tool#0") == 1
    second = reducer.root.attempts[1] if reducer.root is not None else None
    assert second is not None
    assert [e.type for e in second.notes] == ["tool.in_doubt", "tool.error"]


def test_a_billed_failure_keeps_its_usage_on_the_call() -> None:
    refused = tm.TransientModelError("refused", usage=Usage(input_tokens=40, output_tokens=4))
    model = tm.ScriptedModel([refused, {"note": "ok"}], name="gpt-4o")
    flaky = tm.Agent(
        "a", input=Order, output=Done, model=model, retry=tm.RetryPolicy(max_attempts=2, backoff=0)
    )
    journal = tm.MemoryJournal()
    result = tm.run(flaky, {"order_id": "1"}, journal=journal)
    reducer = reduce_events(journal.read(result.run_id), journal)
    failed, answered = reducer.calls
    assert (failed.key, failed.status, failed.transient) == ("a/model#0", "failed", True)
    assert failed.error == ("TransientModelError", "refused")
    assert failed.usage is not None and failed.usage.input_tokens == 40
    assert answered.key == "a/model#0.2" and answered.status == "ok"
    assert reducer.usage == result.usage


def test_a_cancelled_step_ends_its_attempt_where_it_was_cancelled() -> None:
    import asyncio

    @tm.step(name="fails")
    async def fails(order: Order) -> Done:
        await asyncio.sleep(0.01)
        raise tm.ToolError("no", tool="x")

    @tm.step(name="slow")
    async def slow(order: Order) -> Done:
        await asyncio.sleep(5)
        return Done(note="late")

    class Both(BaseModel):
        fails: Done
        slow: Done

    class Merged(BaseModel):
        conflicts: list[tm.Conflict] = []

    def merge(both: Both) -> Merged:
        return Merged()

    flow = tm.parallel(fails=fails, slow=slow, merge=tm.step(name="merge")(merge))
    journal = tm.MemoryJournal()
    with pytest.raises(tm.ToolError) as caught:
        tm.run(flow, {"order_id": "1"}, journal=journal)
    events = journal.read(caught.value.run_id or "")
    reducer = reduce_events(events, journal)
    root = reducer.finish()
    cancelled = next(e for e in events if e.type == "step.cancelled")
    slow_node = root.find("parallel/slow")
    assert slow_node is not None and slow_node.status == "cancelled"
    assert [(a.status, a.ended) for a in slow_node.attempts] == [("cancelled", cancelled.ts)]
    assert reducer.terminal is not None and reducer.terminal.type == "run.failed"
