"""typedmesh.reliability: the chain math against hand computations, and the same
figures measured from journals of real runs on offline models with known failures."""

from __future__ import annotations

import contextlib
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

import typedmesh as tm
from typedmesh import reliability as rel
from typedmesh.journal import MemoryJournal
from typedmesh.models.base import ModelRequest

probability = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
steps = st.integers(min_value=1, max_value=60)

# -- the seed's numbers -------------------------------------------------------------------


def test_the_seeds_numbers() -> None:
    assert rel.chain(0.95, 5) == pytest.approx(0.7737809375)  # 0.95^5
    assert rel.chain(0.95, 10) == pytest.approx(0.5987369392)  # 0.95^10: "a 60% system"
    assert rel.required_per_step(0.95, 10) == pytest.approx(0.9948838031)  # 0.95^(1/10)
    assert rel.chain(rel.required_per_step(0.95, 10), 10) == pytest.approx(0.95)


def test_chain_of_unequal_steps() -> None:
    assert rel.chain([0.99, 0.95, 0.9]) == pytest.approx(0.99 * 0.95 * 0.9)
    assert rel.chain([0.9, 0.9], 2) == pytest.approx(0.81)
    assert rel.chain(1.0, 1000) == 1.0
    assert rel.chain(0.0, 1) == 0.0


def test_retries_by_hand() -> None:
    assert rel.with_retries(0.95, 0) == pytest.approx(0.95)
    assert rel.with_retries(0.5, 1) == pytest.approx(0.75)  # 1 - 0.5^2
    assert rel.with_retries(0.9, 2) == pytest.approx(0.999)  # 1 - 0.1^3
    # ten 95% agents, each given one retry: 0.9975^10
    assert rel.chain(rel.with_retries(0.95, 1), 10) == pytest.approx(0.9752794)


def test_gate_by_hand() -> None:
    # p = 0.9, the gate catches 80% of bad outputs, one redo: q = 0.1 * 0.8 = 0.08
    g = rel.with_gate(0.9, 0.8, retries=1)
    assert g.success == pytest.approx(0.9 * 1.08)  # 0.972
    assert g.silent_failure == pytest.approx(0.1 * 0.2 * 1.08)  # 0.0216: slipped past
    assert g.caught_failure == pytest.approx(0.08**2)  # 0.0064: caught twice, fails loudly
    assert g.expected_attempts == pytest.approx(1.08)
    assert g.precision == pytest.approx(0.972 / (0.972 + 0.0216))
    assert g.success + g.silent_failure + g.caught_failure == pytest.approx(1.0)


def test_gate_edges() -> None:
    blind = rel.with_gate(0.9, 0.0, retries=3)  # a gate that catches nothing
    assert (blind.success, blind.silent_failure, blind.caught_failure) == pytest.approx(
        (0.9, 0.1, 0.0)
    )
    perfect = rel.with_gate(0.9, 1.0, retries=2)  # catches all: retries, no silent failure
    assert perfect.success == pytest.approx(rel.with_retries(0.9, 2))
    assert perfect.silent_failure == 0.0
    hopeless = rel.with_gate(0.0, 1.0, retries=2)
    assert hopeless.success == 0.0 and hopeless.caught_failure == 1.0
    assert hopeless.expected_attempts == 3.0 and hopeless.precision is None


def test_checkpoints_by_hand() -> None:
    # two 90% steps, one second chance. Enumerated: SS .81 (2 runs), SFS/FSS .081 each (3),
    # SFF/FSF .009 each (3), FF .01 (2): success .972, 2.18 step runs.
    c = rel.with_checkpoints(0.9, 2, resumes=1)
    assert c.checkpointed.success == pytest.approx(0.972)
    assert c.checkpointed.expected_step_runs == pytest.approx(2.18)
    # restarted: 1 - (1 - .81)^2; each try runs 1 + .9 steps, a second try 19% of the time
    assert c.restarted.success == pytest.approx(0.9639)
    assert c.restarted.expected_step_runs == pytest.approx(1.9 * 1.19)


def test_checkpoints_on_the_seeds_chain() -> None:
    c = rel.with_checkpoints(0.95, 10, resumes=2)
    assert c.restarted.success == pytest.approx(1 - (1 - 0.95**10) ** 3)  # ≈ 0.9354
    assert c.checkpointed.success == pytest.approx(
        sum(math.comb(10 + f - 1, f) * 0.95**10 * 0.05**f for f in range(3))
    )  # ≈ 0.9804
    assert c.checkpointed.success > c.restarted.success
    assert c.checkpointed.expected_step_runs < c.restarted.expected_step_runs


def test_checkpoints_edges() -> None:
    none = rel.with_checkpoints(0.9, 3, resumes=0)  # no second chance: both are the chain
    assert none.checkpointed.success == pytest.approx(0.729)
    assert none.restarted.success == pytest.approx(0.729)
    assert none.checkpointed.expected_step_runs == pytest.approx(1 + 0.9 + 0.81)
    assert none.restarted.expected_step_runs == pytest.approx(1 + 0.9 + 0.81)
    sure = rel.with_checkpoints(1.0, 4, resumes=2)
    assert sure.checkpointed == sure.restarted == rel.ChainOutcome(success=1, expected_step_runs=4)
    never = rel.with_checkpoints(0.0, 4, resumes=2)
    assert (
        never.checkpointed == never.restarted == rel.ChainOutcome(success=0, expected_step_runs=3)
    )


def _exact_checkpointed(p: float, n: int, r: int) -> tuple[float, float]:
    """Walk every (successes, failures) state: the probability of each, and its runs."""
    reach = {(0, 0): 1.0}
    success = runs = 0.0
    for s in range(n + 1):
        for f in range(r + 2):
            chance = reach.get((s, f), 0.0)
            if not chance:
                continue
            if s == n:
                success += chance
                continue
            if f == r + 1:
                continue
            runs += chance
            reach[(s + 1, f)] = reach.get((s + 1, f), 0.0) + chance * p
            reach[(s, f + 1)] = reach.get((s, f + 1), 0.0) + chance * (1 - p)
    return success, runs


@given(p=probability, n=st.integers(1, 12), r=st.integers(0, 6))
def test_checkpoints_match_a_walk_of_every_state(p: float, n: int, r: int) -> None:
    success, runs = _exact_checkpointed(p, n, r)
    c = rel.with_checkpoints(p, n, resumes=r)
    assert c.checkpointed.success == pytest.approx(success, abs=1e-9)
    assert c.checkpointed.expected_step_runs == pytest.approx(runs, rel=1e-9, abs=1e-9)
    assert c.checkpointed.success >= c.restarted.success - 1e-12


# -- properties ---------------------------------------------------------------------------


@given(a=probability, b=probability, n=steps)
def test_chain_grows_with_p(a: float, b: float, n: int) -> None:
    low, high = sorted((a, b))
    assert rel.chain(low, n) <= rel.chain(high, n)


@given(p=probability, n=steps)
def test_a_longer_chain_is_no_more_reliable(p: float, n: int) -> None:
    assert rel.chain(p, n + 1) <= rel.chain(p, n) <= p


@given(target=probability, n=steps)
def test_required_per_step_inverts_chain(target: float, n: int) -> None:
    per_step = rel.required_per_step(target, n)
    assert target <= per_step <= 1.0
    assert rel.chain(per_step, n) == pytest.approx(target, abs=1e-9)


@given(p=probability, k=st.integers(0, 20))
def test_retries_help_and_never_hurt(p: float, k: int) -> None:
    assert p - 1e-12 <= rel.with_retries(p, k) <= rel.with_retries(p, k + 1) + 1e-12 <= 1 + 1e-12


@given(p=probability, catch=probability, r=st.integers(0, 10))
def test_gate_outcomes_add_up(p: float, catch: float, r: int) -> None:
    g = rel.with_gate(p, catch, retries=r)
    assert g.success + g.silent_failure + g.caught_failure == pytest.approx(1.0)
    assert g.success >= p - 1e-12  # a redo only adds chances
    assert 1.0 <= g.expected_attempts <= r + 1


@given(a=probability, b=probability)
def test_a_better_gate_lets_less_slip(a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert (
        rel.with_gate(0.8, high, retries=1).silent_failure
        <= rel.with_gate(0.8, low, retries=1).silent_failure + 1e-12
    )


# -- arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda: rel.chain(1.2, 3), "p must be a probability between 0 and 1, got 1.2"),
        (lambda: rel.chain(95, 10), "give 0.95, not 95"),
        (lambda: rel.chain(-0.1, 3), "p must be a probability"),
        (lambda: rel.chain(float("nan"), 3), "p must be a probability"),
        (lambda: rel.chain("0.9", 3), "got '0.9' (str)"),
        (lambda: rel.chain(0.9, 0), "n must be >= 1, got 0"),
        (lambda: rel.chain(0.9, 2.5), "n must be a whole number >= 1, got 2.5"),
        (lambda: rel.chain(0.9, True), "n must be a whole number"),
        (lambda: rel.chain(0.9), "needs n"),
        (lambda: rel.chain([]), "empty list"),
        (lambda: rel.chain([0.9, 1.5]), "p[1] must be a probability"),
        (lambda: rel.chain([0.9, 0.9], 3), "got 2 step rates but n=3"),
        (lambda: rel.required_per_step(1.5, 10), "target must be a probability"),
        (lambda: rel.required_per_step(0.9, -1), "n must be >= 1"),
        (lambda: rel.with_retries(0.9, -1), "k must be >= 0, got -1"),
        (lambda: rel.with_retries(2, 1), "p must be a probability"),
        (lambda: rel.with_gate(0.9, 1.1), "catch_rate must be a probability"),
        (lambda: rel.with_gate(0.9, 0.5, retries=-1), "retries must be >= 0"),
        (lambda: rel.with_checkpoints(0.9, 0, resumes=1), "n must be >= 1"),
        (lambda: rel.with_checkpoints(0.9, 3, resumes=-2), "resumes must be >= 0"),
        (lambda: rel.wilson(5, 0), "trials must be >= 1"),
        (lambda: rel.wilson(6, 5), "cannot exceed trials"),
        (lambda: rel.parse_since("yesterday-ish"), "neither an ISO time"),
    ],
)
def test_bad_arguments_are_configuration_errors(call: Any, says: str) -> None:
    with pytest.raises(tm.ConfigurationError) as caught:
        call()
    assert says in str(caught.value)


# -- Wilson intervals and since -----------------------------------------------------------


def test_wilson_by_hand() -> None:
    assert rel.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert rel.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert rel.wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert rel.wilson(95, 100) == pytest.approx((0.8883, 0.9785), abs=1e-4)
    assert rel.Rate.of(0, 0).value is None
    assert str(rel.Rate.of(7, 10)) == "70.0% [39.7%, 89.2%] (7/10)"


@given(n=st.integers(1, 500), data=st.data())
def test_wilson_holds_the_estimate(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, n))
    low, high = rel.wilson(k, n)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_parse_since() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert rel.parse_since("2h", now=now) == now - timedelta(hours=2)
    assert rel.parse_since("90s", now=now) == now - timedelta(seconds=90)
    assert rel.parse_since("7d", now=now) == now - timedelta(days=7)
    assert rel.parse_since("30 min", now=now) == now - timedelta(minutes=30)
    assert rel.parse_since("2026-02-01T00:00:00", now=now) == datetime(2026, 2, 1, tzinfo=UTC)
    assert rel.parse_since("2026-02-01T00:00:00+02:00").utcoffset() == timedelta(hours=2)


def test_boundaries_of_error_types() -> None:
    assert rel.boundary_of("OutputValidationError") == "validation"
    assert rel.boundary_of("HandoffError") == "validation"
    assert rel.boundary_of("TransientModelError") == "model"
    assert rel.boundary_of("ScriptExhausted") == "model"
    assert rel.boundary_of("PlanRejected") == "gate"
    assert rel.boundary_of("ToolLoopExceeded") == "tool"
    assert rel.boundary_of("UnpricedModel") == "budget"
    assert rel.boundary_of("DeadlineExceeded") == "budget"
    assert rel.boundary_of("StepFailed") == "other"
    assert rel.boundary_of("KeyError") == "other"


# -- measured from real journals ------------------------------------------------------------


class Task(BaseModel):
    i: int


class Draft(BaseModel):
    text: str


class Score(BaseModel):
    value: int


def _input(request: ModelRequest) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(request.messages[1].content)
    return data


def _first_try_invalid(request: ModelRequest) -> str | dict[str, Any]:
    """Invalid JSON on the first output of every step; valid once corrected."""
    return "not json" if len(request.messages) == 2 else {"text": f"draft {_input(request)['i']}"}


def _runs(flow: tm.Step[Any, Any], inputs: list[dict[str, Any]], journal: Any) -> list[str]:
    ids = []
    for n, data in enumerate(inputs):
        run_id = f"{flow.name}-{n:02d}"
        with contextlib.suppress(tm.RunError):
            tm.run(flow, data, journal=journal, run_id=run_id)
        ids.append(run_id)
    return ids


def test_an_agent_invalid_on_its_first_try_every_time() -> None:
    journal = MemoryJournal()
    drafter = tm.Agent(
        "drafter",
        version="1.2.0",
        input=Task,
        output=Draft,
        model=tm.ScriptedModel(_first_try_invalid),
    )
    scorer = tm.Agent("scorer", input=Draft, output=Score, model=tm.SchemaModel())
    _runs(tm.sequential(drafter, scorer, name="pipe"), [{"i": i} for i in range(10)], journal)

    report = rel.measure(journal)
    agents = {a.agent: a for a in report.agents}
    d = agents["drafter@1.2.0"]
    assert (d.attempts, d.completed, d.failed) == (10, 10, 0)
    assert (d.first_try.successes, d.first_try.trials, d.first_try.value) == (0, 10, 0.0)
    assert d.success.value == 1.0
    assert (d.first_try.low, d.first_try.high) == pytest.approx(rel.wilson(0, 10))
    assert d.incidents_by_boundary == {"validation": 10}
    assert d.failures_by_boundary == {}
    s = agents["scorer@0.1.0"]
    assert (s.first_try.value, s.success.value, s.incidents_by_boundary) == (1.0, 1.0, {})
    [flow] = report.flows
    assert (flow.flow, flow.runs, flow.finished, flow.measured.value) == ("pipe", 10, 10, 1.0)
    assert flow.predicted == 1.0
    assert flow.predicted_first_try == 0.0  # without its retry the drafter never passes
    assert [s.path for s in flow.steps] == ["pipe/drafter", "pipe/scorer"]
    assert report.end_to_end.value == 1.0


def test_known_failures_by_boundary_and_error() -> None:
    """Runs 2, 5 and 8 get output the scorer can never fix; run 4's drafter hits a 429 first."""
    journal = MemoryJournal()
    rate_limited = {"done": False}

    def drafter_model(request: ModelRequest) -> Any:
        if _input(request)["i"] == 4 and not rate_limited["done"]:
            rate_limited["done"] = True
            return tm.TransientModelError("429 rate limited")
        return {"text": "bad" if _input(request)["i"] in (2, 5, 8) else "good"}

    def scorer_model(request: ModelRequest) -> Any:
        return "no idea" if _input(request)["text"] == "bad" else {"value": 3}

    drafter = tm.Agent(
        "drafter",
        input=Task,
        output=Draft,
        model=tm.ScriptedModel(drafter_model),
        retry=tm.RetryPolicy(backoff=0.0),
    )
    scorer = tm.Agent(
        "scorer", input=Draft, output=Score, model=tm.ScriptedModel(scorer_model), output_retries=1
    )
    flow = tm.sequential(drafter, scorer, name="scored")
    _runs(flow, [{"i": i} for i in range(10)], journal)

    report = rel.measure(journal)
    agents = {a.agent: a for a in report.agents}
    d, s = agents["drafter@0.1.0"], agents["scorer@0.1.0"]
    assert (d.attempts, d.success.value, d.first_try.successes) == (10, 1.0, 9)
    assert d.incidents_by_boundary == {"model": 1}  # the 429, retried
    assert (s.attempts, s.completed, s.failed) == (10, 7, 3)
    assert s.failures_by_boundary == {"validation": 3}
    assert s.failures_by_error == {"OutputValidationError": 3}
    assert s.incidents_by_boundary == {"validation": 6}  # two invalid outputs per failure
    assert (s.success.low, s.success.high) == pytest.approx(rel.wilson(7, 10))

    [f] = report.flows
    assert (f.finished, f.failed, f.measured.value) == (7, 3, 0.7)
    assert f.predicted == pytest.approx(1.0 * 0.7)
    assert f.predicted_first_try == pytest.approx(0.9 * 0.7)
    assert f.failures_by_boundary == {"validation": 3}
    failed = [r for r in report.runs if r.status == "failed"]
    assert [r.run_id for r in failed] == ["scored-02", "scored-05", "scored-08"]
    assert {(r.boundary, r.failed_step) for r in failed} == {("validation", "scored/scorer")}


def test_gate_tool_and_budget_failures() -> None:
    journal = MemoryJournal()

    class Ask(BaseModel):
        q: str

    # a gate that rejects every draft: GateError after two tries
    writer = tm.Agent("writer", input=Ask, output=Draft, model=tm.SchemaModel(), output_retries=1)

    @tm.step(name="gated")
    async def gated(a: Ask, ctx: tm.RunContext) -> Draft:
        gate = tm.Gate(check=lambda d: ["never good enough"])
        result: Draft = await ctx.run(writer, a, gate=gate)
        return result

    _runs(gated, [{"q": "x"}], journal)

    # an agent that keeps calling a tool past its round cap
    @tm.tool
    def lookup(term: str) -> str:
        raise tm.ToolError("the index is down", tool="lookup")

    looper = tm.Agent(
        "looper",
        input=Ask,
        output=Draft,
        tools=[lookup],
        max_tool_rounds=2,
        model=tm.ScriptedModel(lambda r: {"tool_calls": [{"name": "lookup", "arguments": {}}]}),
    )
    _runs(looper, [{"q": "y"}], journal)

    # a model-call budget that the second agent would cross
    first = tm.Agent("first", input=Ask, output=Ask, model=tm.SchemaModel())
    second = tm.Agent("second", input=Ask, output=Draft, model=tm.SchemaModel())
    capped = tm.sequential(first, second, name="capped")
    tm_run_id = "capped-00"
    with pytest.raises(tm.BudgetExceeded):
        tm.run(
            capped,
            {"q": "z"},
            journal=journal,
            run_id=tm_run_id,
            budget=tm.Budget(max_model_calls=1),
        )

    report = rel.measure(journal)
    agents = {a.agent: a for a in report.agents}
    assert agents["writer@0.1.0"].failures_by_boundary == {"gate": 1}
    assert agents["writer@0.1.0"].incidents_by_boundary == {"gate": 2}
    assert agents["looper@0.1.0"].failures_by_boundary == {"tool": 1}
    assert agents["looper@0.1.0"].failures_by_error == {"ToolLoopExceeded": 1}
    assert agents["looper@0.1.0"].incidents_by_boundary["tool"] >= 2  # invalid args / errors
    assert agents["second@0.1.0"].failures_by_boundary == {"budget": 1}
    assert agents["first@0.1.0"].success.value == 1.0
    assert "gated@0.1.0" not in agents  # a step that runs a step is not a leaf
    by_flow = {f.flow: f for f in report.flows}
    assert by_flow["capped"].failures_by_boundary == {"budget": 1}
    assert by_flow["capped"].predicted == pytest.approx(0.0)
    assert report.end_to_end.value == 0.0


class Review(BaseModel):
    draft: Draft
    task: Task
    round: int


def test_a_step_run_in_some_runs_weighs_as_often_as_it_ran() -> None:
    """A loop: runs 6-9 need a second round; in runs 8 and 9 that round's draft fails.

    Measured: 8 of 10 runs finish. The round-2 generator succeeds 2 times in 4, but it
    runs in only 4 runs of 10, so its factor is 1 - 0.4 * 0.5 = 0.8, not 0.5.
    """
    journal = MemoryJournal()

    def generate(request: ModelRequest) -> Any:
        second = "Round 2 of" in request.messages[0].content
        if second and _input(request)["i"] in (8, 9):
            return "not json"
        return {"text": "revised" if second else "first"}

    def evaluate(request: ModelRequest) -> Any:
        review = _input(request)
        passed = review["round"] == 2 or review["task"]["i"] < 6
        return {"passed": passed, "score": 1.0 if passed else 0.2, "feedback": "more"}

    generator = tm.Agent(
        "gen", input=Task, output=Draft, model=tm.ScriptedModel(generate), output_retries=0
    )
    evaluator = tm.Agent(
        "judge", input=Review, output=tm.Evaluation, model=tm.ScriptedModel(evaluate)
    )
    flow = tm.loop(generator, evaluator, max_rounds=2, name="refine")
    _runs(flow, [{"i": i} for i in range(10)], journal)

    [f] = rel.measure(journal).flows
    assert (f.finished, f.failed) == (8, 2)
    steps = {s.path: s for s in f.steps}
    assert list(steps) == ["refine/gen[1]", "refine/judge[1]", "refine/gen[2]", "refine/judge[2]"]
    assert steps["refine/gen[2]"].reach == pytest.approx(0.4)
    assert steps["refine/gen[2]"].success.value == pytest.approx(0.5)
    assert steps["refine/judge[2]"].reach == pytest.approx(2 / 8)
    assert f.predicted == pytest.approx(0.8) == f.measured.value
    assert rel.chain([s.success.value or 0 for s in f.steps]) == pytest.approx(0.5)  # naive


def test_parallel_branches_cancelled_count_in_no_rate() -> None:
    journal = MemoryJournal()

    class Left(BaseModel):
        left: str

    class Right(BaseModel):
        right: str

    @tm.step(name="boom")
    async def boom(t: Task) -> Left:
        raise RuntimeError("boom")

    @tm.step(name="slow")
    async def slow(t: Task, ctx: tm.RunContext) -> Right:
        await ctx.sleep(5)
        return Right(right="r")

    class Both(BaseModel):
        boom: Left
        slow: Right

    def join(both: Both) -> tm.SynthesizedReport:
        return tm.SynthesizedReport(summary=both.slow.right)

    flow = tm.parallel(merge=tm.step(join, name="join"), name="fan", boom=boom, slow=slow)
    _runs(flow, [{"i": 0}], journal)
    report = rel.measure(journal)
    agents = {a.agent: a for a in report.agents}
    assert agents["boom@0.1.0"].failures_by_boundary == {"other": 1}
    assert agents["boom@0.1.0"].failures_by_error == {"StepFailed": 1}
    assert (agents["slow@0.1.0"].attempts, agents["slow@0.1.0"].cancelled) == (0, 1)
    assert agents["slow@0.1.0"].success.value is None


def test_a_run_cut_off_by_a_crash() -> None:
    journal = MemoryJournal()
    drafter = tm.Agent("drafter", input=Task, output=Draft, model=tm.SchemaModel())
    scorer = tm.Agent("scorer", input=Draft, output=Score, model=tm.SchemaModel())
    flow = tm.sequential(drafter, scorer, name="pipe")
    tm.run(flow, {"i": 1}, journal=journal, run_id="whole")
    events = journal.read("whole")
    cut = next(i for i, e in enumerate(events) if e.type == "model.request" and "scorer" in e.path)
    report = rel.measure_runs([events[: cut + 1]])  # a crash inside the scorer's model call
    assert [r.status for r in report.runs] == ["incomplete"]
    agents = {a.agent: a for a in report.agents}
    assert (agents["scorer@0.1.0"].incomplete, agents["scorer@0.1.0"].attempts) == (1, 0)
    assert report.end_to_end.trials == 0
    assert report.flows[0].unfinished == 1
    assert report.flows[0].predicted is None  # no run ended: nothing to predict from


def test_measure_picks_runs_by_id_flow_and_time(tmp_path: Path) -> None:
    path = str(tmp_path / "runs.db")
    one = tm.Agent("one", input=Task, output=Draft, model=tm.SchemaModel())
    two = tm.Agent("two", input=Task, output=Draft, model=tm.SchemaModel())
    _runs(tm.sequential(one, name="a"), [{"i": 1}, {"i": 2}], path)
    _runs(tm.sequential(two, name="b"), [{"i": 3}], path)

    assert len(rel.measure(path).runs) == 3
    assert [r.run_id for r in rel.measure(path, ["a-01"]).runs] == ["a-01"]
    assert {r.flow for r in rel.measure(path, flow="b").runs} == {"b"}
    assert rel.measure(path, ["a-00", "a-01"], flow="b").runs == []
    assert len(rel.measure(path, since="1h").runs) == 3
    future = datetime.now(UTC) + timedelta(hours=1)
    assert rel.measure(path, since=future).runs == []
    with pytest.raises(tm.RunNotFound):
        rel.measure(path, ["nope"])


def test_the_report_is_json() -> None:
    journal = MemoryJournal()
    _runs(tm.Agent("solo", input=Task, output=Draft, model=tm.SchemaModel()), [{"i": 0}], journal)
    data = rel.measure(journal).model_dump(mode="json")
    assert json.loads(json.dumps(data)) == data
    assert data["agents"][0]["success"] == {
        "successes": 1,
        "trials": 1,
        "value": 1.0,
        "low": pytest.approx(rel.wilson(1, 1)[0]),
        "high": 1.0,
    }


def test_a_failed_run_resumed_to_the_end() -> None:
    """The scorer's provider is down once: the run fails there, is resumed, and finishes."""
    journal = MemoryJournal()
    answers: list[Any] = [tm.ModelError("provider down", status=500), {"value": 4}]
    drafter = tm.Agent("drafter", input=Task, output=Draft, model=tm.SchemaModel())
    scorer = tm.Agent("scorer", input=Draft, output=Score, model=tm.ScriptedModel(answers))
    flow = tm.sequential(drafter, scorer, name="pipe")
    with pytest.raises(tm.ModelError):
        tm.run(flow, {"i": 1}, journal=journal, run_id="bumpy")
    failed = rel.measure(journal)
    assert [(r.status, r.boundary, r.failed_step) for r in failed.runs] == [
        ("failed", "model", "pipe/scorer")
    ]
    tm.resume("bumpy", flow, journal=journal)

    report = rel.measure(journal)
    [run] = report.runs
    assert (run.status, run.resumes, run.error_type) == ("finished", 1, None)
    agents = {a.agent: a for a in report.agents}
    s = agents["scorer@0.1.0"]
    assert (s.attempts, s.completed, s.failed) == (2, 1, 1)
    assert s.failures_by_boundary == {"model": 1} and s.incidents_by_boundary == {"model": 1}
    assert agents["drafter@0.1.0"].attempts == 1  # restored on resume, not run again
    [f] = report.flows
    assert (f.finished, f.resumed, f.measured.value) == (1, 1, 1.0)
    assert f.predicted == pytest.approx(0.5)  # the scorer's 1 in 2: what the resume bought
