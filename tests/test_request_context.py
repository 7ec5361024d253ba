"""ModelRequest.context: what the framework tells a model, as data, not in its identity."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

import typedmesh as tm
from typedmesh.models.base import ModelRequest, RequestContext, WorkerInfo


class Task(BaseModel):
    ticker: str


class Verdict(BaseModel):
    position: Literal["bull", "bear"]
    price: float


class Debate(BaseModel):
    bull: Verdict
    bear: Verdict


def test_a_merge_agent_gets_the_detected_conflicts() -> None:
    seen: list[RequestContext | None] = []

    def judge(request: ModelRequest) -> dict[str, object]:
        seen.append(request.context)
        assert request.context is not None
        fields = [c.field for c in request.context.conflicts]
        return {"summary": "split", "conflict_notes": {f: f"open on {f}" for f in fields}}

    bull = tm.Agent(
        "bull",
        input=Task,
        output=Verdict,
        model=tm.ScriptedModel([{"position": "bull", "price": 2}]),
    )
    bear = tm.Agent(
        "bear",
        input=Task,
        output=Verdict,
        model=tm.ScriptedModel([{"position": "bear", "price": 1}]),
    )
    merge = tm.Agent(
        "judge", input=Debate, output=tm.SynthesizedReport, model=tm.ScriptedModel(judge)
    )
    result = tm.run(tm.parallel(bull=bull, bear=bear, merge=merge), {"ticker": "A"})
    context = seen[0]
    assert context is not None
    assert [(c.field, c.values) for c in context.conflicts] == [
        ("position", {"bull": "bull", "bear": "bear"}),
        ("price", {"bull": 2.0, "bear": 1.0}),
    ]
    assert [c.note for c in result.output.conflicts] == ["open on position", "open on price"]
    assert bull.model.calls[0].context is None  # type: ignore[attr-defined]


class Spec(BaseModel):
    spec: str


class Draft(BaseModel):
    code: str


class Review(BaseModel):
    draft: Draft


def test_a_loop_generator_gets_feedback_and_its_previous_draft() -> None:
    seen: list[RequestContext | None] = []

    def write(request: ModelRequest) -> dict[str, str]:
        seen.append(request.context)
        return {"code": "v2" if request.context and request.context.feedback else "v1"}

    @tm.step(name="reviewer")
    def review(r: Review) -> tm.Evaluation:
        ok = r.draft.code == "v2"
        return tm.Evaluation(passed=ok, score=1.0 if ok else 0.25, feedback="" if ok else "more")

    writer = tm.Agent("writer", input=Spec, output=Draft, model=tm.ScriptedModel(write))
    result = tm.run(tm.loop(writer, review, max_rounds=3), {"spec": "s"})
    assert result.output.output.code == "v2"
    assert seen[0] is None
    assert seen[1] == RequestContext(
        round=2, feedback="more", score=0.25, previous_draft={"code": "v1"}
    )


class Query(BaseModel):
    query: str


class Found(BaseModel):
    hits: list[str]


class Answer(BaseModel):
    text: str


def test_a_planner_gets_the_worker_catalog() -> None:
    seen: list[list[WorkerInfo]] = []

    def plan(request: ModelRequest) -> dict[str, object]:
        assert request.context is not None
        seen.append(request.context.workers)
        name = request.context.workers[0].name
        return {"goal": "g", "steps": [{"id": "s1", "worker": name, "input": {"query": "q"}}]}

    search = tm.Agent(
        "search",
        input=Query,
        output=Found,
        model=tm.ScriptedModel([{"hits": ["a"]}]),
        instructions="Finds things.",
    )
    planner = tm.Agent("planner", input=Query, output=tm.Plan, model=tm.ScriptedModel(plan))
    synth = tm.Agent(
        "synth", input=tm.PlanExecution, output=Answer, model=tm.ScriptedModel([{"text": "t"}])
    )
    tm.run(tm.orchestrate(planner, workers=[search], synthesizer=synth), {"query": "x"})
    [worker] = seen[0]
    assert worker.name == "search"
    assert worker.description == "Finds things."
    assert worker.output_fields == ["hits"]
    assert "query" in worker.input_schema["properties"]


def test_the_context_is_not_in_the_requests_identity() -> None:
    plain = ModelRequest(messages=[tm.Message(role="user", content="{}")])
    told = plain.model_copy(update={"context": RequestContext(feedback="x")})
    assert told.model_dump_json() == plain.model_dump_json()
    assert "context" not in plain.model_dump()


def test_a_denied_tool_call_is_in_the_context_of_the_next_request() -> None:
    @tm.tool(requires={"orders:refund"})
    def refund(order_id: str) -> str:
        """Refund an order."""
        return "done"

    model = tm.ScriptedModel(
        [{"tool_calls": [{"name": "refund", "arguments": {"order_id": "o1"}}]}, {"code": "x"}]
    )
    agent = tm.Agent(
        "clerk", input=Spec, output=Draft, model=model, tools=[refund], scopes={"orders:refund"}
    )
    tm.run(agent, {"spec": "s"}, grant={"orders:read"})
    assert model.calls[0].context is None
    context = model.calls[1].context
    assert context is not None
    assert [(d.tool, d.missing) for d in context.denials] == [("refund", ["orders:refund"])]
