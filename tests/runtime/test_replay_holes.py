"""Replay holes found when the runtime was attacked; each test failed before its fix."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.models.base import ModelRequest, ModelResponse, Usage
from typedmesh.testing import crashed_copy


class Order(BaseModel):
    order_id: str


class Done(BaseModel):
    note: str


def test_strict_replay_fails_when_a_recorded_refund_is_never_made() -> None:
    refunds: list[str] = []

    @tm.tool(idempotent=False)
    def refund(order_id: str) -> str:
        """Refund an order."""
        refunds.append(order_id)
        return "refunded"

    @tm.step(name="handle")
    async def refunding(order: Order, ctx: tm.RunContext) -> Done:
        await ctx.call_tool(refund, order_id=order.order_id)
        return Done(note="ok")

    @tm.step(name="handle")
    async def forgetful(order: Order, ctx: tm.RunContext) -> Done:
        return Done(note="ok")  # same output, but the refund is gone

    journal = tm.MemoryJournal()
    tm.run(refunding, {"order_id": "42"}, journal=journal, run_id="r")
    assert tm.replay("r", refunding, journal=journal).identical
    with pytest.raises(tm.NonDeterminismError) as caught:
        tm.replay("r", forgetful, journal=journal)
    assert caught.value.effect_key == "handle/tool#0"
    assert refunds == ["42"]


class Flaky:
    """Fails the first call after ``fail_after`` seconds, then answers."""

    provider = "offline"

    def __init__(self, name: str, fail_after: float) -> None:
        self.name = name
        self.fail_after = fail_after
        self.calls = 0

    async def generate(self, request: ModelRequest) -> ModelResponse:
        self.calls += 1
        if self.calls == 1:
            await asyncio.sleep(self.fail_after)
            raise tm.TransientModelError(f"{self.name} overloaded")
        return ModelResponse(content=f'"{self.name}"', usage=Usage(input_tokens=1))


def test_retry_keys_follow_the_code_not_the_order_failures_arrive() -> None:
    slow, fast = Flaky("slow", 0.05), Flaky("fast", 0.0)
    retry = tm.RetryPolicy(max_attempts=2, backoff=0.01)

    @tm.step(name="both")
    async def both(order: Order, ctx: tm.RunContext) -> Done:
        request = ModelRequest(messages=[tm.Message(role="user", content=order.order_id)])
        a, b = await asyncio.gather(
            ctx.call_model(slow, request, retry=retry), ctx.call_model(fast, request, retry=retry)
        )
        return Done(note=f"{a.content}{b.content}")

    journal = tm.MemoryJournal()
    tm.run(both, {"order_id": "1"}, journal=journal, run_id="r")
    keys = [e.key for e in journal.read("r") if e.type == "model.request"]
    # each retry derives its key from its call's, whichever failed first
    assert sorted(k for k in keys if k) == [
        "both/model#0",
        "both/model#0.2",
        "both/model#1",
        "both/model#1.2",
    ]
    assert tm.replay("r", both, journal=journal).identical


def test_replay_does_not_sleep_the_retry_backoff() -> None:
    model = tm.ScriptedModel([tm.TransientModelError("busy"), '{"note": "ok"}'])
    agent = tm.Agent(
        "a",
        input=Order,
        output=Done,
        model=model,
        retry=tm.RetryPolicy(max_attempts=2, backoff=1.0),
    )
    journal = tm.MemoryJournal()
    started = time.perf_counter()
    tm.run(agent, {"order_id": "1"}, journal=journal, run_id="r")
    assert time.perf_counter() - started >= 1.0
    types = [e.type for e in journal.read("r")]
    assert "timer.started" in types and "timer.fired" in types
    started = time.perf_counter()
    assert tm.replay("r", agent, journal=journal).identical
    assert time.perf_counter() - started < 0.5  # the timer is served, not slept


def test_what_if_swaps_the_root_step_itself() -> None:
    @tm.step(name="answer")
    def old(order: Order) -> Done:
        return Done(note="old")

    @tm.step(name="answer")
    def new(order: Order) -> Done:
        return Done(note="new")

    journal = tm.MemoryJournal()
    tm.run(old, {"order_id": "1"}, journal=journal, run_id="r")
    result = tm.replay("r", old, journal=journal, swap={"answer": new})
    assert result.output == Done(note="new")
    assert result.swapped == ["answer"] and not result.identical
    assert [(c.path, c.before, c.after) for c in result.changes] == [("note", "old", "new")]


@tm.tool(idempotent=False)
def notify(order_id: str) -> str:
    """Email the customer (not idempotent)."""
    return "sent"


def notifier() -> tm.Agent[Order, Done]:
    def respond(request: ModelRequest) -> Any:
        if not any(m.role == "tool" for m in request.messages):
            return {"tool_calls": [{"name": "notify", "arguments": {"order_id": "1"}}]}
        last = [m for m in request.messages if m.role == "tool"][-1]
        return {"note": last.content[:60]}

    return tm.Agent(
        "notifier", input=Order, output=Done, model=tm.ScriptedModel(respond), tools=[notify]
    )


def test_a_run_resumed_with_skip_in_doubt_replays() -> None:
    journal = tm.MemoryJournal()
    tm.run(notifier(), {"order_id": "1"}, journal=journal, run_id="r")
    started = next(e.seq for e in journal.read("r") if e.type == "tool.started")
    crashed = crashed_copy(journal, "r", started)
    with pytest.raises(tm.InDoubtError):
        tm.resume("r", notifier(), journal=crashed)
    resumed = tm.resume("r", notifier(), journal=crashed, in_doubt="skip")
    assert "skipped" in resumed.output.note
    types = [e.type for e in crashed.read("r")]
    assert types.count("tool.error") == 1  # the operator's decision is the call's outcome
    assert tm.replay("r", notifier(), journal=crashed).identical


def test_resumed_orchestration_gives_the_same_answer_as_the_uninterrupted_one() -> None:
    class Task(BaseModel):
        topic: str

    class Note(BaseModel):
        text: str

    class Report(BaseModel):
        summary: str

    @tm.step
    def research(note: Note) -> Note:
        return Note(text=note.text.upper())

    plans = iter(
        [
            {"goal": "g", "steps": [{"id": "s1", "worker": "nobody", "input": {"text": "a"}}]},
            {"goal": "g", "steps": [{"id": "s1", "worker": "research", "input": {"text": "a"}}]},
        ]
    )

    def plan(request: ModelRequest) -> Any:
        return next(plans)

    def synthesize(request: ModelRequest) -> Any:
        return {"summary": "done"}

    def flow() -> tm.Step[Any, Any]:
        planner = tm.Agent("planner", input=Task, output=tm.Plan, model=tm.ScriptedModel(plan))
        synth = tm.Agent(
            "synth", input=tm.PlanExecution, output=Report, model=tm.ScriptedModel(synthesize)
        )
        return tm.orchestrate(planner, workers=[research], synthesizer=synth)

    journal = tm.MemoryJournal()
    whole = tm.run(flow(), {"topic": "t"}, journal=journal, run_id="r")
    assert whole.output.plan_attempts == 2
    planned = next(
        e.seq
        for e in journal.read("r")
        if e.type == "step.completed" and e.path == "orchestrate/planner"
    )
    crashed = crashed_copy(journal, "r", planned)
    resumed = tm.resume("r", flow(), journal=crashed)
    assert resumed.output.plan_attempts == 2  # read from the journal, not from memory
    assert tm.replay("r", flow(), journal=crashed).identical
