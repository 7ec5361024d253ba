"""orchestrate(): typed plans, re-planning on errors, parallel execution, audit trail."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.models.base import ModelRequest


class Question(BaseModel):
    topic: str


class Query(BaseModel):
    query: str
    limit: int = 3


class Findings(BaseModel):
    facts: list[str]


class Digest(BaseModel):
    facts: list[str]
    title: str


class Report(BaseModel):
    text: str
    steps: int


@tm.step(name="search")
async def search(q: Query) -> Findings:
    """Search the archive."""
    await asyncio.sleep(0.03)
    return Findings(facts=[f"{q.query}-{i}" for i in range(q.limit)])


@tm.step(name="digest")
def digest(f: Findings) -> Digest:
    """Condense findings."""
    return Digest(facts=f.facts[:2], title="digest")


@tm.step(name="write")
def write(run: tm.PlanExecution) -> Report:
    return Report(text=" | ".join(r.worker for r in run.results), steps=len(run.plan.steps))


GOOD = {
    "goal": "cover",
    "steps": [
        {"id": "a", "worker": "search", "input": {"query": "x", "limit": 2}},
        {"id": "b", "worker": "search", "input": {"query": "y"}},
        {
            "id": "c",
            "worker": "digest",
            "input": {"facts": {"$ref": "a.facts"}},
            "depends_on": ["a", "b"],
        },
    ],
}


def planner(*answers: dict[str, Any]) -> tuple[tm.Agent[Question, tm.Plan], tm.ScriptedModel]:
    model = tm.ScriptedModel(list(answers), name="gpt-4o")
    return tm.Agent("planner", input=Question, output=tm.Plan, model=model), model


def test_plan_runs_independent_steps_in_parallel_and_dependents_after() -> None:
    agent, model = planner(GOOD)
    flow = tm.orchestrate(agent, workers=[search, digest], synthesizer=write)
    result = tm.run(flow, {"topic": "t"})
    out = result.output
    assert out.plan == tm.Plan.model_validate(GOOD) and out.plan_attempts == 1
    assert out.output == Report(text="search | search | digest", steps=3)
    assert out.results[2].output == {"facts": ["x-0", "x-1"], "title": "digest"}
    root = result.trace
    a, b, c = (root.find(f"orchestrate/{n}") for n in ("search[a]", "search[b]", "digest[c]"))
    assert a and b and c and a.ended and b.ended
    assert max(a.started, b.started) < min(a.ended, b.ended)  # overlap
    assert c.started >= max(a.ended, b.ended)  # dependency order
    plan_event = next(e for e in root.events if e["event"] == "plan")
    assert plan_event["plan"]["steps"][2]["depends_on"] == ["a", "b"]
    briefing = model.calls[0].messages[0].content
    assert "search: Search the archive." in briefing and '"query"' in briefing


def test_invalid_plans_are_sent_back_with_every_problem() -> None:
    bad = {
        "goal": "g",
        "steps": [
            {"id": "a", "worker": "browse", "input": {}},
            {"id": "b", "worker": "search", "input": {"query": 5, "limit": "many"}},
            {
                "id": "c",
                "worker": "digest",
                "input": {"facts": {"$ref": "b.facts"}},
                "depends_on": ["d"],
            },
            {"id": "d", "worker": "digest", "input": {"facts": []}, "depends_on": ["c"]},
        ],
    }
    agent, model = planner(bad, GOOD)
    result = tm.run(
        tm.orchestrate(agent, workers=[search, digest], synthesizer=write), {"topic": "t"}
    )
    assert result.output.plan_attempts == 2
    feedback = model.calls[1].messages[-1].content
    assert "unknown worker 'browse'" in feedback
    assert "query: Input should be a valid string" in feedback
    assert "limit: Input should be a valid integer" in feedback
    assert "refers to 'b', which is not in its depends_on" in feedback
    assert "cycle: c -> d -> c" in feedback


def test_plan_rejected_after_the_cap() -> None:
    bad = {"goal": "g", "steps": [{"id": "a", "worker": "nobody", "input": {}}]}
    agent, model = planner(bad, bad)
    flow = tm.orchestrate(agent, workers=[search], synthesizer=write, max_plan_attempts=2)
    with pytest.raises(tm.PlanRejected) as info:
        tm.run(flow, {"topic": "t"})
    assert len(model.calls) == 2 and "unknown worker 'nobody'" in info.value.problems[0]


def test_planner_must_return_a_plan() -> None:
    wrong = tm.Agent("p", input=Question, output=Query, model=tm.SchemaModel())
    with pytest.raises(tm.ContractError, match="must return a Plan"):
        tm.orchestrate(wrong, workers=[search], synthesizer=write)


def test_synthesizer_must_accept_plan_execution() -> None:
    agent, _ = planner(GOOD)
    with pytest.raises(tm.ContractError, match="PlanExecution"):
        tm.orchestrate(agent, workers=[search], synthesizer=digest)


def test_patterns_nest() -> None:
    agent, _ = planner(GOOD)
    inner = tm.orchestrate(agent, workers=[search, digest], synthesizer=write)

    class Summary(BaseModel):
        plan: tm.Plan

    @tm.step
    def audit(s: Summary) -> Report:
        return Report(text=s.plan.goal, steps=len(s.plan.steps))

    result = tm.run(tm.sequential(inner, audit), {"topic": "t"})
    assert result.output == Report(text="cover", steps=3)
    assert result.trace.find("sequential/orchestrate/search[a]") is not None


def test_planner_sees_worker_catalog_request() -> None:
    def answer(request: ModelRequest) -> dict[str, Any]:
        assert "digest" in request.messages[0].content
        return GOOD

    model = tm.ScriptedModel(answer)
    agent = tm.Agent("planner", input=Question, output=tm.Plan, model=model)
    tm.run(tm.orchestrate(agent, workers=[search, digest], synthesizer=write), {"topic": "t"})
