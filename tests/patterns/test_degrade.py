"""parallel(..., on_branch_error="degrade"): a failed branch reaches the merge as a typed
BranchFailure, the merge output says which branches were missing, and a replay agrees."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

import typedmesh as tm


class Task(BaseModel):
    topic: str


class View(BaseModel):
    stance: str
    confidence: float


class Views(BaseModel):
    bull: View | tm.BranchFailure
    bear: View | tm.BranchFailure
    quant: View | tm.BranchFailure


def analyst(name: str, answer: Any) -> tm.Agent[Task, View]:
    return tm.Agent(
        name, input=Task, output=View, model=tm.ScriptedModel([answer] * 3), output_retries=1
    )


def merge_fn(views: Views) -> tm.DegradedReport:
    ok = [k for k in ("bull", "bear", "quant") if isinstance(getattr(views, k), View)]
    return tm.DegradedReport(summary=f"{len(ok)} views: {', '.join(ok)}")


def flow(**overrides: Any) -> tm.Step:  # type: ignore[type-arg]
    branches = {
        "bull": analyst("bull", '{"stance": "buy", "confidence": 0.8}'),
        "bear": analyst("bear", "I cannot answer that in JSON, sorry."),  # malformed, always
        "quant": analyst("quant", '{"stance": "buy", "confidence": 0.6}'),
    }
    branches.update(overrides)
    merge = tm.step(merge_fn, name="merge")
    return tm.parallel(merge=merge, on_branch_error="degrade", **branches)


def test_a_malformed_branch_degrades_instead_of_failing_the_run() -> None:
    journal = tm.MemoryJournal()
    result = tm.run(flow(), {"topic": "ACME"}, journal=journal, run_id="r")
    report = result.output
    assert report.summary == "2 views: bull, quant"
    assert report.missing_branches == ["bear"]
    [degraded] = [e for e in journal.read("r") if e.type == "branch.degraded"]
    assert degraded.payload["branch"] == "bear"
    assert degraded.payload["error_type"] == "OutputValidationError"
    assert degraded.payload["agent"]["name"] == "bear"
    # conflicts are still stamped among the branches that answered
    assert [c.field for c in report.conflicts] == ["confidence"]
    replayed = tm.replay("r", flow(), journal=journal)
    assert replayed.identical and replayed.executed == 0


def test_the_merge_sees_the_typed_failure() -> None:
    seen: list[tm.BranchFailure] = []

    def merge_seeing(views: Views) -> tm.DegradedReport:
        seen.extend(
            v for v in (views.bull, views.bear, views.quant) if isinstance(v, tm.BranchFailure)
        )
        return tm.DegradedReport(summary="x", missing_branches=["not me"])

    branches = {
        "bull": analyst("bull", tm.ModelError("provider down", status=503)),
        "bear": analyst("bear", '{"stance": "sell", "confidence": 0.7}'),
        "quant": analyst("quant", '{"stance": "hold", "confidence": 0.5}'),
    }
    f = tm.parallel(
        merge=tm.step(merge_seeing, name="merge"), on_branch_error="degrade", **branches
    )
    report = tm.run(f, {"topic": "ACME"}).output
    assert report.missing_branches == ["bull"]  # stamped over what the merge wrote
    [failure] = seen
    assert failure.branch == "bull" and failure.error_type == "ModelError"
    assert failure.step_path.endswith("/bull")


def test_a_budget_breach_still_stops_a_degrading_run() -> None:
    budget = tm.Budget(max_model_calls=1)
    with pytest.raises(tm.BudgetExceeded):
        tm.run(flow(), {"topic": "ACME"}, budget=budget)


def test_degrade_is_checked_when_the_flow_is_built() -> None:
    class Strict(BaseModel):
        bull: View
        bear: View

    def merge_strict(views: Strict) -> tm.SynthesizedReport:
        return tm.SynthesizedReport(summary="")

    branches = {"bull": analyst("bull", "{}"), "bear": analyst("bear", "{}")}
    with pytest.raises(tm.ContractError) as caught:
        tm.parallel(
            merge=tm.step(merge_strict, name="merge"), on_branch_error="degrade", **branches
        )
    problems = " ".join(caught.value.problems)
    assert "must also accept a BranchFailure" in problems and "missing_branches" in problems
    with pytest.raises(tm.ConfigurationError, match="'fail' or 'degrade'"):
        tm.parallel(
            merge=tm.step(merge_strict, name="merge"),
            on_branch_error="ignore",  # type: ignore[arg-type]
            **branches,
        )


def test_without_degrade_the_first_failure_still_fails_the_run() -> None:
    def merge_plain(views: Views) -> tm.DegradedReport:
        return tm.DegradedReport(summary="")

    branches = {
        "bull": analyst("bull", '{"stance": "buy", "confidence": 0.8}'),
        "bear": analyst("bear", "not json"),
        "quant": analyst("quant", '{"stance": "buy", "confidence": 0.6}'),
    }
    f = tm.parallel(merge=tm.step(merge_plain, name="merge"), **branches)
    with pytest.raises(tm.OutputValidationError):
        tm.run(f, {"topic": "x"})
