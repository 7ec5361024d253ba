"""parallel(): concurrency, conflict detection, the conflict gate, contracts."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import pytest
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.models.base import ModelRequest


class Task(BaseModel):
    ticker: str


class Verdict(BaseModel):
    position: Literal["bull", "bear"]
    target_price: float
    risks: list[str]
    sector: str


class Debate(BaseModel):
    bull: Verdict
    bear: Verdict


def verdict_model(position: str, price: float) -> tm.ScriptedModel:
    return tm.ScriptedModel(
        lambda r: Verdict(
            position=position,
            target_price=price,  # type: ignore[arg-type]
            risks=["rates"],
            sector="tech",
        )
    )


def conflict_fields(request: ModelRequest) -> list[str]:
    """The conflicting fields, from the merge's output schema (structured, not prose)."""
    assert request.output_schema is not None
    notes = request.output_schema["properties"].get("conflict_notes", {})
    return list(notes.get("required", []))


def honest_judge(request: ModelRequest) -> dict[str, object]:
    fields = conflict_fields(request)
    return {"summary": "split", "conflict_notes": {f: f"open on {f}" for f in fields}}


def debate(judge: tm.Model, **options: object) -> tm.Step[Task, tm.SynthesizedReport]:
    bull = tm.Agent("bull", input=Task, output=Verdict, model=verdict_model("bull", 120))
    bear = tm.Agent("bear", input=Task, output=Verdict, model=verdict_model("bear", 80))
    merge = tm.Agent("judge", input=Debate, output=tm.SynthesizedReport, model=judge)
    return tm.parallel(bull=bull, bear=bear, merge=merge, **options)  # type: ignore[arg-type]


def test_conflicts_are_detected_and_stamped_with_the_models_notes() -> None:
    result = tm.run(debate(tm.ScriptedModel(honest_judge)), {"ticker": "ACME"})
    conflicts = result.output.conflicts
    assert [c.field for c in conflicts] == ["position", "target_price"]
    assert [c.values for c in conflicts] == [
        {"bull": "bull", "bear": "bear"},
        {"bull": 120.0, "bear": 80.0},
    ]
    assert [c.note for c in conflicts] == ["open on position", "open on target_price"]
    detected = next(e for e in result.trace.events if e["event"] == "conflicts.detected")
    assert detected["conflicts"][0]["values"] == {"bull": "bull", "bear": "bear"}
    # the agreed fields (risks, sector) are not conflicts
    assert {"risks", "sector"}.isdisjoint(c["field"] for c in detected["conflicts"])


def test_merge_model_is_asked_for_notes_only() -> None:
    judge = tm.ScriptedModel(honest_judge)
    tm.run(debate(judge), {"ticker": "ACME"})
    schema = judge.calls[0].output_schema
    assert schema is not None
    assert "conflicts" not in schema["properties"]
    assert "Conflict" not in schema.get("$defs", {})
    notes = schema["properties"]["conflict_notes"]
    assert notes["required"] == ["position", "target_price"]
    assert set(notes["properties"]) == {"position", "target_price"}
    assert notes["additionalProperties"] is False
    assert "conflict_notes" in schema["required"]
    # the branches' values are not repeated in the prompt: the model never re-types them
    assert "120" not in judge.calls[0].system


def test_a_merge_cannot_carry_altered_dropped_or_invented_conflicts() -> None:
    def sloppy_judge(request: ModelRequest) -> dict[str, object]:
        return {
            "summary": "split",
            "conflict_notes": {"position": "opposed", "target_price": "far apart"},
            "conflicts": [
                {"field": "target_price", "values": {}, "note": "mangled"},
                {"field": "sector", "values": {"bull": "made up"}, "note": "invented"},
            ],
        }

    report = tm.run(debate(tm.ScriptedModel(sloppy_judge)), {"ticker": "ACME"}).output
    assert [(c.field, c.values, c.note) for c in report.conflicts] == [
        ("position", {"bull": "bull", "bear": "bear"}, "opposed"),
        ("target_price", {"bull": 120.0, "bear": 80.0}, "far apart"),
    ]


def test_a_merge_reporting_empty_values_gets_the_branches_values() -> None:
    """Before stamping, ``{"field": "target_price", "values": {}}`` passed the gate."""
    hollow = tm.ScriptedModel(
        lambda r: {
            "summary": "s",
            "conflicts": [
                {"field": f, "values": {}, "note": f"on {f}"} for f in ("position", "target_price")
            ],
        }
    )
    report = tm.run(debate(hollow), {"ticker": "ACME"}).output
    assert [c.values for c in report.conflicts] == [
        {"bull": "bull", "bear": "bear"},
        {"bull": 120.0, "bear": 80.0},
    ]
    assert [c.note for c in report.conflicts] == ["on position", "on target_price"]


def test_merge_that_leaves_a_note_out_is_reasked_then_fails() -> None:
    lazy = tm.ScriptedModel(lambda r: {"summary": "bull wins", "conflict_notes": {}})
    with pytest.raises(tm.ConflictsDropped) as info:
        tm.run(debate(lazy), {"ticker": "ACME"})
    assert len(lazy.calls) == 3  # output_retries=2 -> three tries
    assert any("'position'" in p for p in info.value.problems)
    assert "no note on the conflict over 'position'" in lazy.calls[1].messages[-1].content
    # the output that failed still carries every conflict, values verbatim
    assert [c.field for c in info.value.output.conflicts] == ["position", "target_price"]
    # partial results survive: both branch outputs are in the trace
    partial = info.value.partial
    assert partial.find("parallel/bull").output.position == "bull"
    assert partial.find("parallel/bear").output.position == "bear"


def test_merge_that_recovers_after_feedback_passes() -> None:
    answers: list[dict[str, object]] = [{"summary": "average: hold"}]
    judge = tm.ScriptedModel(lambda r: answers.pop() if answers else honest_judge(r))
    result = tm.run(debate(judge), {"ticker": "ACME"})
    assert len(judge.calls) == 2
    assert all(c.note for c in result.output.conflicts) and len(result.output.conflicts) == 2


def test_notes_written_in_a_conflicts_list_are_taken() -> None:
    def old_style(request: ModelRequest) -> dict[str, object]:
        notes = [{"field": f, "values": {}, "note": "n"} for f in conflict_fields(request)]
        return {"summary": "s", "conflicts": notes}

    report = tm.run(debate(tm.ScriptedModel(old_style)), {"ticker": "ACME"}).output
    assert [c.note for c in report.conflicts] == ["n", "n"]
    assert report.conflicts[1].values == {"bull": 120.0, "bear": 80.0}


def test_when_branches_agree_no_conflict_can_be_invented() -> None:
    judge = tm.ScriptedModel(
        lambda r: {"summary": "agree", "conflicts": [{"field": "x", "values": {"a": 1}}]}
    )
    bull = tm.Agent("bull", input=Task, output=Verdict, model=verdict_model("bull", 1))
    twin = tm.Agent("bear", input=Task, output=Verdict, model=verdict_model("bull", 1))
    merge = tm.Agent("judge", input=Debate, output=tm.SynthesizedReport, model=judge)
    result = tm.run(tm.parallel(bull=bull, bear=twin, merge=merge), {"ticker": "A"})
    assert result.output.conflicts == []
    schema = judge.calls[0].output_schema
    assert schema is not None
    assert not {"conflicts", "conflict_notes"} & set(schema["properties"])


def test_schema_model_merge_passes() -> None:
    result = tm.run(debate(tm.SchemaModel(seed=3)), {"ticker": "ACME"})
    assert [c.field for c in result.output.conflicts] == ["position", "target_price"]
    assert all(c.note for c in result.output.conflicts)


def test_plain_code_merge_gets_the_conflicts_stamped() -> None:
    @tm.step
    def terse(d: Debate) -> tm.SynthesizedReport:
        return tm.SynthesizedReport(
            summary="s",
            conflicts=[tm.Conflict(field="target_price", values={}, note="40 apart")],
        )

    bull = tm.Agent("bull", input=Task, output=Verdict, model=verdict_model("bull", 120))
    bear = tm.Agent("bear", input=Task, output=Verdict, model=verdict_model("bear", 80))
    result = tm.run(tm.parallel(bull=bull, bear=bear, merge=terse), {"ticker": "A"})
    assert [(c.field, c.values, c.note) for c in result.output.conflicts] == [
        ("position", {"bull": "bull", "bear": "bear"}, ""),
        ("target_price", {"bull": 120.0, "bear": 80.0}, "40 apart"),
    ]
    assert result.trace.find("parallel/terse").output.conflicts == result.output.conflicts


def test_compare_options_per_field() -> None:
    def verdicts(risks: list[str], price: float) -> tm.ScriptedModel:
        return tm.ScriptedModel(
            lambda r: Verdict(position="bull", target_price=price, risks=risks, sector="tech")
        )

    bull = tm.Agent("bull", input=Task, output=Verdict, model=verdicts(["a", "b"], 100.0))
    bear = tm.Agent("bear", input=Task, output=Verdict, model=verdicts(["b", "a", "a"], 101.5))

    def flow(**compare: tm.Compare) -> tm.Step[Task, tm.SynthesizedReport]:
        judge = tm.Agent("judge", input=Debate, output=tm.SynthesizedReport, model=tm.SchemaModel())
        return tm.parallel(bull=bull, bear=bear, merge=judge, compare=compare)

    exact = tm.run(flow(), {"ticker": "A"}).output
    assert [c.field for c in exact.conflicts] == ["target_price", "risks"]
    lenient = flow(target_price=tm.Compare(tolerance=2), risks=tm.Compare(unordered=True))
    assert tm.run(lenient, {"ticker": "A"}).output.conflicts == []
    tight = flow(target_price=tm.Compare(tolerance=1), risks=tm.Compare(ignore=True))
    assert [c.field for c in tm.run(tight, {"ticker": "A"}).output.conflicts] == ["target_price"]
    relative = flow(target_price=tm.Compare(relative=0.02), risks=tm.Compare(unordered=True))
    assert tm.run(relative, {"ticker": "A"}).output.conflicts == []


def test_compare_applies_under_a_path_and_as_a_default() -> None:
    class Band(BaseModel):
        low: float
        high: float
        tags: list[str]

    class Out(BaseModel):
        band: Band
        score: float

    a = Out(band=Band(low=1.0, high=5.0, tags=["x", "y"]), score=0.5)
    b = Out(band=Band(low=1.01, high=9.0, tags=["y", "x"]), score=0.52)
    fields = [c.field for c in tm.detect_conflicts({"a": a, "b": b})]
    assert fields == ["band.low", "band.high", "band.tags", "score"]
    nested = {"band": tm.Compare(tolerance=0.1, unordered=True), "band.high": tm.Compare()}
    assert [c.field for c in tm.detect_conflicts({"a": a, "b": b}, nested)] == [
        "band.high",
        "score",
    ]
    everywhere = tm.Compare(tolerance=0.05, unordered=True)
    assert [c.field for c in tm.detect_conflicts({"a": a, "b": b}, everywhere)] == ["band.high"]


def test_compare_is_checked_when_the_flow_is_built() -> None:
    bull = tm.Agent("bull", input=Task, output=Verdict, model=tm.SchemaModel())
    merge = tm.Agent("m", input=Debate, output=tm.SynthesizedReport, model=tm.SchemaModel())
    with pytest.raises(tm.ConfigurationError, match="target"):
        tm.parallel(bull=bull, bear=bull, merge=merge, compare={"target": tm.Compare()})
    with pytest.raises(tm.ConfigurationError):
        tm.parallel(bull=bull, bear=bull, merge=merge, compare={"risks": 0.1})  # type: ignore[dict-item]
    with pytest.raises(tm.ConfigurationError):
        tm.Compare(tolerance=-1)


def test_branches_overlap_in_time() -> None:
    @tm.step
    async def slow_a(t: Task) -> Verdict:
        await asyncio.sleep(0.05)
        return Verdict(position="bull", target_price=1, risks=[], sector="x")

    @tm.step
    async def slow_b(t: Task) -> Verdict:
        await asyncio.sleep(0.05)
        return Verdict(position="bull", target_price=1, risks=[], sector="x")

    @tm.step
    def merge(d: Debate) -> tm.SynthesizedReport:
        return tm.SynthesizedReport(summary="agree")

    result = tm.run(tm.parallel(bull=slow_a, bear=slow_b, merge=merge), {"ticker": "A"})
    a, b = result.trace.find("parallel/bull"), result.trace.find("parallel/bear")
    assert a is not None and b is not None and a.ended is not None and b.ended is not None
    assert max(a.started, b.started) < min(a.ended, b.ended)


def test_branch_failure_keeps_other_outputs() -> None:
    @tm.step
    def broken(t: Task) -> Verdict:
        raise tm.ToolError("feed down", tool="quotes")

    bull = tm.Agent("bull", input=Task, output=Verdict, model=verdict_model("bull", 1))
    merge = tm.Agent("judge", input=Debate, output=tm.SynthesizedReport, model=tm.ScriptedModel([]))
    with pytest.raises(tm.ToolError) as info:
        tm.run(tm.parallel(bull=bull, bear=broken, merge=merge), {"ticker": "A"})
    assert info.value.step_path == "parallel/bear"
    assert info.value.partial.find("parallel/bull").status == "ok"


def test_merge_input_must_have_one_field_per_branch() -> None:
    class Wrong(BaseModel):
        bull: Verdict
        skeptic: Verdict

    bull = tm.Agent("bull", input=Task, output=Verdict, model=tm.SchemaModel())
    merge = tm.Agent("m", input=Wrong, output=tm.SynthesizedReport, model=tm.SchemaModel())
    with pytest.raises(tm.ContractError) as info:
        tm.parallel(bull=bull, bear=bull, merge=merge)
    assert any("'bear'" in p for p in info.value.problems)
    assert any("'skeptic'" in p for p in info.value.problems)


def test_merge_output_must_carry_conflicts() -> None:
    class Decision(BaseModel):
        answer: str

    bull = tm.Agent("bull", input=Task, output=Verdict, model=tm.SchemaModel())
    merge = tm.Agent("m", input=Debate, output=Decision, model=tm.SchemaModel())
    with pytest.raises(tm.ContractError, match="carry conflicts"):
        tm.parallel(bull=bull, bear=bull, merge=merge)


def test_merge_input_conflicts_field_is_filled() -> None:
    class DebateWithConflicts(BaseModel):
        bull: Verdict
        bear: Verdict
        conflicts: list[tm.Conflict] = []

    seen: list[list[str]] = []

    @tm.step
    def merge(d: DebateWithConflicts) -> tm.SynthesizedReport:
        seen.append([c.field for c in d.conflicts])
        return tm.SynthesizedReport(summary="s", conflicts=d.conflicts)

    bull = tm.Agent("bull", input=Task, output=Verdict, model=verdict_model("bull", 2))
    bear = tm.Agent("bear", input=Task, output=Verdict, model=verdict_model("bear", 2))
    tm.run(tm.parallel(bull=bull, bear=bear, merge=merge), {"ticker": "A"})
    assert seen == [["position"]]


def test_detect_conflicts_recurses_into_nested_models() -> None:
    class Inner(BaseModel):
        low: int
        high: int

    class Out(BaseModel):
        band: Inner
        note: str

    conflicts = tm.detect_conflicts(
        {
            "a": Out(band=Inner(low=1, high=5), note="n"),
            "b": Out(band=Inner(low=1, high=9), note="n"),
        }
    )
    assert [(c.field, c.values) for c in conflicts] == [("band.high", {"a": 5, "b": 9})]


def test_conflicts_ignore_provenance() -> None:
    claim = tm.Claim(statement="same")
    a = claim.model_copy(
        update={
            "provenance": tm.Provenance(agent=tm.AgentIdentity(name="a"), step_path="x", run_id="r")
        }
    )
    assert tm.detect_conflicts({"a": a, "b": claim}) == []
    assert json.loads(tm.Conflict(field="f", values={"a": 1}).model_dump_json())["field"] == "f"


def test_a_merge_field_narrower_than_its_branch_output_gets_a_summary_handoff() -> None:
    class Wide(BaseModel):
        answer: str
        detail: str

    class Narrow(BaseModel):
        answer: str

    class MergeIn(BaseModel):
        left: Narrow
        right: Narrow

    class MergeOut(BaseModel):
        conflicts: list[tm.Conflict] = []
        answers: list[str]

    class In(BaseModel):
        q: str

    @tm.step(name="left")
    def left(x: In) -> Wide:
        return Wide(answer="yes", detail="long")

    @tm.step(name="right")
    def right(x: In) -> Wide:
        return Wide(answer="yes", detail="longer")

    @tm.step(name="merge")
    def merge(m: MergeIn) -> MergeOut:
        return MergeOut(answers=[m.left.answer, m.right.answer])

    flow = tm.parallel(left=left, right=right, merge=merge)
    result = tm.run(flow, {"q": "?"})
    assert result.output.answers == ["yes", "yes"]
