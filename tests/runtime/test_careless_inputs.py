"""What a careless user or a buggy tool does to a run: typed errors, nothing lost."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.models.base import ModelRequest


class Q(BaseModel):
    q: str


class A(BaseModel):
    a: str


class Both(BaseModel):
    bull: A
    bear: A


class Merged(BaseModel):
    conflicts: list[tm.Conflict] = []


def test_a_lone_surrogate_in_the_run_input_is_a_typed_error() -> None:
    agent = tm.Agent("a", input=Q, output=A, model=tm.ScriptedModel(['{"a": "x"}']))
    with pytest.raises(tm.InputValidationError, match="not valid Unicode"):
        tm.run(agent, {"q": "bad \ud800 text"}, journal=tm.MemoryJournal())


def asks_for(arguments: dict[str, Any]) -> tm.ScriptedModel:
    def respond(request: ModelRequest) -> Any:
        tool_messages = [m for m in request.messages if m.role == "tool"]
        if not tool_messages:
            return {"tool_calls": [{"name": "lookup", "arguments": arguments}]}
        return {"a": tool_messages[-1].content[:80]}

    return tm.ScriptedModel(respond)


def test_a_lone_surrogate_in_tool_arguments_is_told_to_the_model() -> None:
    seen: list[str] = []

    @tm.tool
    def lookup(order_id: str) -> str:
        """Look an order up."""
        seen.append(order_id)
        return "found"

    agent = tm.Agent(
        "a", input=Q, output=A, model=asks_for({"order_id": "x\udc00"}), tools=[lookup]
    )
    journal = tm.MemoryJournal()
    result = tm.run(agent, {"q": "x"}, journal=journal)
    assert "not valid Unicode" in result.output.a and seen == []  # told, nothing ran
    assert tm.verify_run(journal, result.run_id).ok


def test_a_bug_in_a_tool_fails_the_step_but_a_tool_error_is_told_to_the_model() -> None:
    @tm.tool
    def lookup(order_id: str) -> str:
        """Look an order up."""
        return {"42": "found"}[order_id]  # a KeyError for any other order: a bug

    agent = tm.Agent("a", input=Q, output=A, model=asks_for({"order_id": "7"}), tools=[lookup])
    with pytest.raises(tm.StepFailed) as failed:
        tm.run(agent, {"q": "x"})
    assert failed.value.error_type == "KeyError" and isinstance(failed.value.__cause__, KeyError)
    assert failed.value.run_id and failed.value.partial is not None

    @tm.tool(retry_on=(KeyError,))
    def lookup_declared(order_id: str) -> str:
        """Look an order up; an unknown order is the model's to fix."""
        return {"42": "found"}[order_id]

    lookup_declared.name = "lookup"
    told = tm.Agent(
        "a", input=Q, output=A, model=asks_for({"order_id": "7"}), tools=[lookup_declared]
    )
    assert "KeyError" in tm.run(told, {"q": "x"}).output.a

    @tm.tool
    def lookup_on_purpose(order_id: str) -> str:
        """Look an order up."""
        raise tm.ToolError(f"no order {order_id}", tool="lookup")

    lookup_on_purpose.name = "lookup"
    purposeful = tm.Agent(
        "a", input=Q, output=A, model=asks_for({"order_id": "7"}), tools=[lookup_on_purpose]
    )
    assert "no order 7" in tm.run(purposeful, {"q": "x"}).output.a


def test_a_bug_in_a_tool_replays_as_the_same_failure() -> None:
    @tm.tool
    def lookup(order_id: str) -> str:
        """Look an order up."""
        raise ZeroDivisionError("oops")

    agent = tm.Agent("a", input=Q, output=A, model=asks_for({"order_id": "7"}), tools=[lookup])
    journal = tm.MemoryJournal()
    with pytest.raises(tm.StepFailed):
        tm.run(agent, {"q": "x"}, journal=journal, run_id="r")
    with pytest.raises(tm.StepFailed):
        tm.replay("r", agent, journal=journal)


def test_resuming_with_a_flow_whose_output_type_changed_names_the_step() -> None:
    class Old(BaseModel):
        a: str

    class New(BaseModel):
        a: int

    @tm.step(name="first")
    def first(q: Q) -> Old:
        return Old(a="text")

    @tm.step(name="first")
    def first_v2(q: Q) -> New:
        return New(a=1)

    @tm.step(name="second")
    def second(o: Old) -> A:
        raise tm.ToolError("crash", tool="x")

    @tm.step(name="second")
    def second_v2(o: New) -> A:
        return A(a=str(o.a))

    journal = tm.MemoryJournal()
    with pytest.raises(tm.ToolError):
        tm.run(tm.sequential(first, second, name="f"), {"q": "x"}, journal=journal, run_id="r")
    with pytest.raises(tm.ContractError) as caught:
        tm.resume("r", tm.sequential(first_v2, second_v2, name="f"), journal=journal)
    assert caught.value.source == "f/first" and "no longer fits New" in str(caught.value)


def test_a_flow_with_provider_models_pickles_for_another_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    bull = tm.Agent("bull", input=Q, output=A, model="openai:gpt-4o-mini")
    bear = tm.Agent("bear", input=Q, output=A, model="anthropic:claude-haiku-4-5")
    judge = tm.Agent("judge", input=Both, output=Merged, model="openai:gpt-4o")
    flow = tm.parallel(bull=bull, bear=bear, merge=judge)
    for agent in (bull, bear, judge):
        assert agent.model is not None  # resolved, as after a run
    copy = pickle.loads(pickle.dumps(flow))
    assert [s.name for s in copy.walk()] == [s.name for s in flow.walk()]


def test_a_run_deadline_stops_a_slow_run_and_journals_why() -> None:
    import asyncio
    import time

    @tm.step(name="slow")
    async def slow(q: Q) -> A:
        await asyncio.sleep(5)
        return A(a="late")

    journal = tm.MemoryJournal()
    started = time.perf_counter()
    with pytest.raises(tm.DeadlineExceeded) as caught:
        tm.run(slow, {"q": "x"}, journal=journal, run_id="d", deadline=0.2)
    assert time.perf_counter() - started < 2
    assert caught.value.run_id == "d"
    last = journal.read("d")[-1]
    assert last.type == "run.failed" and last.payload["type"] == "DeadlineExceeded"
    with pytest.raises(tm.ConfigurationError):
        tm.run(slow, {"q": "x"}, deadline=0)
