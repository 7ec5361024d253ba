"""loop(): the generator sees its draft and feedback; the cap always holds."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.models.base import ModelRequest


class Spec(BaseModel):
    spec: str
    previous_draft: Draft | None = None
    feedback: str | None = None


class Draft(BaseModel):
    code: str


Spec.model_rebuild()


class Review(BaseModel):
    draft: Draft
    task: Spec
    round: int
    intent: tm.Intent | None = None


def writer(model: tm.Model) -> tm.Agent[Spec, Draft]:
    return tm.Agent("writer", input=Spec, output=Draft, model=model)


def strict_reviewer(passing_round: int, seen: list[Review]) -> tm.Step[Review, tm.Evaluation]:
    @tm.step(name="reviewer")
    def review(r: Review) -> tm.Evaluation:
        seen.append(r)
        ok = r.round >= passing_round
        return tm.Evaluation(
            passed=ok,
            score=1.0 if ok else 0.3,
            feedback="" if ok else f"add a docstring (round {r.round})",
        )

    return review


def drafts(request: ModelRequest) -> dict[str, str]:
    revising = "previous draft" in request.messages[0].content
    return {"code": "def f():\n    '''doc'''" if revising else "def f(): pass"}


def test_loop_passes_after_feedback_and_generator_sees_it() -> None:
    model = tm.ScriptedModel(drafts)
    seen: list[Review] = []
    flow = tm.loop(writer(model), strict_reviewer(2, seen), max_rounds=3)
    intent = tm.Intent(goal="readable code")
    result = tm.run(flow, {"spec": "f"}, intent=intent)
    assert result.output.passed and result.output.rounds == 2
    assert result.output.output.code.endswith("'''doc'''")
    assert [e.passed for e in result.output.evaluations] == [False, True]
    second = model.calls[1]
    assert "add a docstring (round 1)" in second.messages[0].content
    assert '"code":"def f(): pass"' in second.messages[0].content
    # typed channel too: the generator input carries the previous draft and feedback
    assert '"previous_draft":{"code":"def f(): pass"}' in second.messages[1].content
    assert seen[0].task.spec == "f" and seen[0].intent == intent and seen[1].round == 2


def test_loop_reports_the_cap_when_never_passing() -> None:
    model = tm.ScriptedModel(drafts)
    flow = tm.loop(writer(model), strict_reviewer(99, []), max_rounds=2)
    result = tm.run(flow, {"spec": "f"})
    assert result.output.passed is False and result.output.rounds == 2
    assert len(model.calls) == 2
    assert any(e["event"] == "loop.capped" for e in result.trace.events)
    assert [n.name for n in result.trace.children] == [
        "writer[1]",
        "reviewer[1]",
        "writer[2]",
        "reviewer[2]",
    ]


def test_agent_evaluator_sees_the_intent() -> None:
    class Plain(BaseModel):
        draft: Draft

    judge = tm.ScriptedModel(['{"passed": true, "score": 0.9, "feedback": "fine"}'])
    evaluator = tm.Agent("judge", input=Plain, output=tm.Evaluation, model=judge)
    flow = tm.loop(writer(tm.ScriptedModel(drafts)), evaluator, max_rounds=1)
    tm.run(flow, {"spec": "f"}, intent=tm.Intent(goal="GOAL-XYZ"))
    assert "GOAL-XYZ" in judge.calls[0].messages[0].content


@pytest.mark.parametrize("rounds", [0, -1])
def test_max_rounds_must_be_positive(rounds: int) -> None:
    with pytest.raises(tm.ConfigurationError, match="unbounded"):
        tm.loop(writer(tm.SchemaModel()), strict_reviewer(1, []), max_rounds=rounds)


def test_max_rounds_is_required() -> None:
    with pytest.raises(TypeError):
        tm.loop(writer(tm.SchemaModel()), strict_reviewer(1, []))  # type: ignore[call-arg]


def test_evaluator_contract_is_checked() -> None:
    class NoDraft(BaseModel):
        text: str

    bad = tm.Agent("bad", input=NoDraft, output=tm.Evaluation, model=tm.SchemaModel())
    with pytest.raises(tm.ContractError) as info:
        tm.loop(writer(tm.SchemaModel()), bad, max_rounds=2)
    assert any("'draft'" in p for p in info.value.problems)
    assert any("'text'" in p for p in info.value.problems)
