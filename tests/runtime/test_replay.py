"""Strict replay, what-if replay and effect keys, on the examples and small flows."""

from __future__ import annotations

import asyncio
import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.journal import import_jsonl
from typedmesh.models.base import ModelRequest, ModelResponse

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ["bull_bear", "support_pipeline", "code_review_loop", "research_plan"]


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"replay_{name}", ROOT / "examples" / f"{name}.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "examples"))
    return module


class ExplodingModel:
    """Fails on any call: proof that a replay made no live model call."""

    name = "exploding"
    provider = "offline"

    async def generate(self, request: ModelRequest) -> ModelResponse:
        raise AssertionError("a replay called a model")


def explode_models(flow: tm.Step[object, object]) -> None:  # type: ignore[type-var]
    for step in flow.walk():
        if isinstance(step, tm.Agent):
            step._model = ExplodingModel()


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_replays_from_its_journal_alone(name: str) -> None:
    module = load_example(name)
    journal = tm.MemoryJournal()
    result = tm.run(
        module.flow, module.example_input, intent=getattr(module, "intent", None), journal=journal
    )
    explode_models(module.flow)
    replayed = tm.replay(result.run_id, module.flow, journal=journal)
    assert replayed.identical and replayed.executed == 0 and replayed.served > 0
    assert replayed.output.model_dump() == result.output.model_dump()


@pytest.mark.parametrize("name", EXAMPLES)
def test_golden_journals_replay_offline(name: str) -> None:
    journal, run_id = import_jsonl(ROOT / "tests" / "journals" / f"{name}.jsonl")
    assert tm.verify_run(journal, run_id).ok
    module = load_example(name)
    explode_models(module.flow)
    replayed = tm.replay(run_id, module.flow, journal=journal)
    assert replayed.identical, replayed.changes


@pytest.mark.parametrize("name", EXAMPLES)
def test_format_one_journals_still_read_verify_and_replay(name: str) -> None:
    """Journals written before format 2 (blob markers in payloads, no stored head)."""
    journal, run_id = import_jsonl(ROOT / "tests" / "journals" / "v1" / f"{name}.jsonl")
    events = journal.read(run_id)
    assert {e.schema_version for e in events} == {1}
    assert tm.verify_run(journal, run_id).ok  # anchored at the last event on import
    module = load_example(name)
    explode_models(module.flow)
    replayed = tm.replay(run_id, module.flow, journal=journal)
    assert replayed.identical, replayed.changes


def test_altered_flow_raises_non_determinism_naming_the_effect() -> None:
    module = load_example("bull_bear")
    journal, run_id = import_jsonl(ROOT / "tests" / "journals" / "bull_bear.jsonl")
    bear = next(s for s in module.flow.walk() if s.name == "bear")
    bear.instructions = "Argue the bear case, but be brief."
    explode_models(module.flow)
    with pytest.raises(tm.NonDeterminismError) as info:
        tm.replay(run_id, module.flow, journal=journal)
    err = info.value
    assert err.effect_key == "debate/bear/model#0" or err.effect_key.endswith("/bear/model#0")
    assert "be brief" in err.actual and "be brief" not in str(err.expected)


class Task(BaseModel):
    topic: str


class Note(BaseModel):
    text: str
    stamp: str
    draw: float


def branch(i: int, delays: dict[int, float]) -> tm.Step[Task, Note]:
    async def slow(request: ModelRequest) -> dict[str, str]:
        await asyncio.sleep(delays[i])
        return {"text": f"branch {i}"}

    class Text(BaseModel):
        text: str

    agent = tm.Agent(f"b{i}", input=Task, output=Text, model=tm.ScriptedModel(slow))

    @tm.step(name=f"stamp{i}")
    def stamp(t: Text, ctx: tm.RunContext) -> Note:
        return Note(text=t.text, stamp=ctx.now().isoformat(), draw=ctx.random())

    return tm.sequential(agent, stamp, name=f"s{i}")


def fan_out(delays: dict[int, float]) -> tm.Step[Task, tm.SynthesizedReport]:
    fields = {f"s{i}": (Note, ...) for i in range(5)}
    from pydantic import create_model

    merge_input = create_model("Notes", **fields)  # type: ignore[call-overload]

    @tm.step(name="merge")
    def merge(notes: merge_input) -> tm.SynthesizedReport:  # type: ignore[valid-type]
        conflicts = tm.detect_conflicts(dict(notes))  # type: ignore[arg-type]
        return tm.SynthesizedReport(summary="notes", conflicts=conflicts)

    return tm.parallel(merge=merge, **{f"s{i}": branch(i, delays) for i in range(5)})


@pytest.mark.parametrize("seed", range(4))
def test_parallel_branches_journal_the_same_keys_whatever_the_finish_order(seed: int) -> None:
    rng = random.Random(seed)
    delays = {i: rng.uniform(0, 0.03) for i in range(5)}
    journal = tm.MemoryJournal()
    result = tm.run(fan_out(delays), {"topic": "t"}, journal=journal, run_id="r")
    events = journal.read("r")
    keyed = sorted((e.key, e.type, e.path) for e in events if e.key)
    assert ("parallel/s3/b3/model#0", "model.request", "parallel/s3/b3") in keyed
    assert ("parallel/s3/stamp3/clock#0", "clock", "parallel/s3/stamp3") in keyed
    assert ("parallel/s3/stamp3/random#0", "random", "parallel/s3/stamp3") in keyed
    # the keys are a function of the flow, not of the order branches finished in
    reference = tm.MemoryJournal()
    tm.run(fan_out({i: 0.0 for i in range(5)}), {"topic": "t"}, journal=reference, run_id="r")
    assert keyed == sorted((e.key, e.type, e.path) for e in reference.read("r") if e.key)
    # and a replay in another finish order serves the same clock and random values
    replayed = tm.replay("r", fan_out({i: 0.03 - d for i, d in delays.items()}), journal=journal)
    assert replayed.identical and replayed.executed == 0
    assert replayed.output == result.output


def test_what_if_swap_runs_the_new_version_live_and_reports_changes() -> None:
    module = load_example("bull_bear")
    journal = tm.MemoryJournal()
    result = tm.run(module.flow, module.example_input, intent=module.intent, journal=journal)
    old_bear = next(s for s in module.flow.walk() if s.name == "bear")
    assert isinstance(old_bear, tm.Agent)

    def gloomier(request: ModelRequest) -> dict[str, object]:
        return {
            "position": "bear",
            "claims": [{"statement": "Debt doubles by 2027.", "evidence": ["10-K"]}],
            "risks": ["refinancing"],
            "confidence": 0.99,
        }

    new_bear = tm.Agent(
        "bear",
        version="9.9.9",
        input=old_bear.input_type,
        output=old_bear.output_type,
        instructions=old_bear.instructions,
        model=tm.ScriptedModel(gloomier, name="gpt-4o-mini"),
    )
    what_if = tm.replay(result.run_id, module.flow, journal=journal, swap={"bear": new_bear})
    assert what_if.swapped == ["bear"] and not what_if.identical
    assert what_if.served >= 1  # the bull branch came from the journal
    assert what_if.executed >= 2  # the new bear, and the judge that saw its new output
    assert what_if.changes and all(c.before != c.after for c in what_if.changes)
    bull = what_if.trace.find(f"{module.flow.name}/bull")
    assert bull is not None and bull.output is not None


def test_swap_must_keep_the_contract() -> None:
    module = load_example("bull_bear")
    journal = tm.MemoryJournal()
    result = tm.run(module.flow, module.example_input, journal=journal)

    class Other(BaseModel):
        x: int

    wrong = tm.Agent("bear", input=Other, output=Other, model=tm.SchemaModel())
    with pytest.raises(tm.ContractError):
        tm.replay(result.run_id, module.flow, journal=journal, swap={"bear": wrong})
    with pytest.raises(tm.ConfigurationError, match="no step named"):
        tm.replay(result.run_id, module.flow, journal=journal, swap={"nobody": wrong})


def test_replay_of_a_run_that_failed_needs_no_live_call() -> None:
    class Q(BaseModel):
        q: str

    agent = tm.Agent("a", input=Q, output=Note, model=tm.ScriptedModel(["bad", "bad", "bad"]))
    journal = tm.MemoryJournal()
    with pytest.raises(tm.OutputValidationError) as info:
        tm.run(agent, {"q": "x"}, journal=journal)
    run_id = info.value.run_id
    assert run_id is not None
    assert [r.status for r in journal.runs()] == ["failed"]
    explode_models(agent)
    with pytest.raises(tm.OutputValidationError):
        tm.replay(run_id, agent, journal=journal)


def test_resume_of_a_finished_run_returns_it_without_running() -> None:
    module = load_example("code_review_loop")
    journal = tm.MemoryJournal()
    result = tm.run(module.flow, module.example_input, journal=journal)
    count = len(journal.read(result.run_id))
    explode_models(module.flow)
    again = tm.resume(result.run_id, module.flow, journal=journal)
    assert again.output.model_dump() == result.output.model_dump()
    assert again.usage.model_calls == result.usage.model_calls
    assert len(journal.read(result.run_id)) == count


def test_resume_with_another_flow_is_refused() -> None:
    module = load_example("code_review_loop")
    journal = tm.MemoryJournal()
    result = tm.run(module.flow, module.example_input, journal=journal)
    other = load_example("bull_bear")
    with pytest.raises(tm.ConfigurationError, match="was made by flow"):
        tm.resume(result.run_id, other.flow, journal=journal)


def test_resume_after_a_failed_model_call_tries_it_again() -> None:
    class Q(BaseModel):
        q: str

    class A(BaseModel):
        a: str

    @tm.step
    def first(q: Q, ctx: tm.RunContext) -> Q:
        return Q(q=q.q + "!")

    outage = tm.Agent(
        "answer",
        input=Q,
        output=A,
        model=tm.ScriptedModel([tm.ModelError("down")]),
        retry=tm.RetryPolicy(max_attempts=1),
    )
    journal = tm.MemoryJournal()
    with pytest.raises(tm.ModelError):
        tm.run(tm.sequential(first, outage, name="f"), {"q": "x"}, journal=journal, run_id="r")
    request = next(e for e in journal.read("r") if e.type == "model.request")
    assert request.payload["model"] == "scripted" and request.payload["provider"] == "offline"
    fixed = tm.Agent(
        "answer",
        input=Q,
        output=A,
        model=tm.ScriptedModel(['{"a": "ok"}']),
        retry=tm.RetryPolicy(max_attempts=1),
    )
    result = tm.resume("r", tm.sequential(first, fixed, name="f"), journal=journal)
    assert result.output == A(a="ok")
    assert result.trace.find("f/first").events == [{"event": "step.restored"}]
    # replay of the resumed run serves the recorded failure and then the success
    response = next(e for e in journal.read("r") if e.type == "model.response")
    assert response.payload["response"]["usage"]["model_calls"] == 1
    assert tm.replay("r", tm.sequential(first, fixed, name="f"), journal=journal).identical
