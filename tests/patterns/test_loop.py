"""loop(): the generator sees its draft and feedback; the cap always holds."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, field_validator

import typedmesh as tm
from typedmesh.errors import HandoffError
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


class WrongDraftSpec(BaseModel):
    spec: str
    previous_draft: str | None = None  # the draft is a Draft, not a str
    feedback: int | None = None  # feedback is text


class SummaryDraft(BaseModel):  # narrower than Draft: a compatible model
    code: str


class NarrowSpec(BaseModel):
    spec: str
    previous_draft: SummaryDraft | None = None
    feedback: str | None = None


def test_generator_previous_draft_and_feedback_types_are_checked_when_built() -> None:
    class DraftOnly(BaseModel):
        draft: Draft

    gen = tm.Agent("writer", input=WrongDraftSpec, output=Draft, model=tm.SchemaModel())
    judge = tm.Agent("judge", input=DraftOnly, output=tm.Evaluation, model=tm.SchemaModel())
    with pytest.raises(tm.ContractError) as info:
        tm.loop(gen, judge, max_rounds=2)
    assert info.value.problems == [
        "generator input field 'previous_draft': Draft is not one of str | None",
        "generator input field 'feedback': str is not one of int | None",
    ]


def test_evaluator_field_types_are_checked_when_built() -> None:
    class BadReview(BaseModel):
        draft: Draft
        round: str  # the loop fills an int

    bad = tm.Agent("bad", input=BadReview, output=tm.Evaluation, model=tm.SchemaModel())
    with pytest.raises(tm.ContractError) as info:
        tm.loop(writer(tm.SchemaModel()), bad, max_rounds=2)
    assert info.value.problems == ["evaluator input field 'round': gives int, wants str"]


def test_a_compatible_draft_model_reaches_the_generator_as_its_declared_type() -> None:
    inputs: list[NarrowSpec] = []

    @tm.step(name="writer")
    def write(spec: NarrowSpec) -> Draft:
        inputs.append(spec)
        return Draft(code=f"v{len(inputs)}")

    flow = tm.loop(write, strict_reviewer(2, []), max_rounds=3)
    result = tm.run(flow, {"spec": "f"})
    assert result.output.passed and result.output.rounds == 2
    assert inputs[1].previous_draft == SummaryDraft(code="v1")
    assert inputs[1].feedback == "add a docstring (round 1)"


def test_an_evaluator_validator_failing_at_run_time_is_a_handoff_error() -> None:
    class PickyReview(BaseModel):
        draft: Draft

        @field_validator("draft")
        @classmethod
        def not_empty(cls, draft: Draft) -> Draft:
            if not draft.code:
                raise ValueError("empty draft")
            return draft

    @tm.step(name="writer")
    def write(spec: Spec) -> Draft:
        return Draft(code="")

    @tm.step(name="picky")
    def picky(review: PickyReview) -> tm.Evaluation:
        return tm.Evaluation(passed=True, score=1.0, feedback="")

    with pytest.raises(HandoffError) as info:
        tm.run(tm.loop(write, picky, max_rounds=2, name="refine"), {"spec": "f"}, run_id="l-1")
    err = info.value
    assert err.source == "writer" and err.target == "picky"
    assert err.problems == ["draft: Value error, empty draft"]
    assert err.run_id == "l-1"
    written = err.partial.find("refine/writer[1]")
    assert written is not None and written.output == Draft(code="")
