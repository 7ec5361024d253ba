"""parallel(): concurrency, conflict detection, the conflict gate, contracts."""

from __future__ import annotations

import asyncio
import json
import re
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


def honest_judge(request: ModelRequest) -> dict[str, object]:
    fields = re.findall(r"^- ([\w.]+): ", request.messages[0].content, re.M)
    return {
        "summary": "split",
        "conflicts": [{"field": f, "values": {}, "note": "open"} for f in fields],
    }


def debate(judge: tm.Model) -> tm.Step[Task, tm.SynthesizedReport]:
    bull = tm.Agent("bull", input=Task, output=Verdict, model=verdict_model("bull", 120))
    bear = tm.Agent("bear", input=Task, output=Verdict, model=verdict_model("bear", 80))
    merge = tm.Agent("judge", input=Debate, output=tm.SynthesizedReport, model=judge)
    return tm.parallel(bull=bull, bear=bear, merge=merge)


def test_conflicts_are_detected_and_carried() -> None:
    result = tm.run(debate(tm.ScriptedModel(honest_judge)), {"ticker": "ACME"})
    assert [c.field for c in result.output.conflicts] == ["position", "target_price"]
    detected = next(e for e in result.trace.events if e["event"] == "conflicts.detected")
    assert detected["conflicts"][0]["values"] == {"bull": "bull", "bear": "bear"}
    # the agreed fields (risks, sector) are not conflicts
    assert {"risks", "sector"}.isdisjoint(c["field"] for c in detected["conflicts"])


def test_merge_that_drops_a_conflict_is_reasked_then_fails() -> None:
    lazy = tm.ScriptedModel(lambda r: {"summary": "bull wins", "conflicts": []})
    with pytest.raises(tm.ConflictsDropped) as info:
        tm.run(debate(lazy), {"ticker": "ACME"})
    assert len(lazy.calls) == 3  # output_retries=2 -> three tries
    assert any("position" in p for p in info.value.problems)
    assert "missing from 'conflicts'" in lazy.calls[1].messages[-1].content
    # partial results survive: both branch outputs are in the trace
    partial = info.value.partial
    assert partial.find("parallel/bull").output.position == "bull"
    assert partial.find("parallel/bear").output.position == "bear"


def test_merge_that_recovers_after_feedback_passes() -> None:
    answers = [{"summary": "average: hold", "conflicts": []}]
    judge = tm.ScriptedModel(lambda r: answers.pop() if answers else honest_judge(r))
    result = tm.run(debate(judge), {"ticker": "ACME"})
    assert len(result.output.conflicts) == 2


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
