"""Cost attribution: nodes, agents and models add up exactly; plan-and-execute and cascades."""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.contracts import AgentIdentity
from typedmesh.journal import import_jsonl
from typedmesh.models import pricing
from typedmesh.models.base import ModelRequest, ModelResponse, Usage
from typedmesh.models.pricing import cost_of
from typedmesh.runtime.cost import (
    CallCost,
    CostReport,
    Spend,
    cost_report,
    format_usd,
    places_of,
    priced_as,
    reducer_cost,
    reprice,
    run_cost,
    to_pusd,
)
from typedmesh.runtime.reducer import add_usage, reduce_events
from typedmesh.runtime.trace import EffectCall, TraceNode

JOURNALS = Path(__file__).parent / "journals"
USD = 10**12  # pico-dollars per dollar


def answer(content: Any, input_tokens: int, output_tokens: int) -> ModelResponse:
    """A scripted answer with the usage a provider would report."""
    text = content if isinstance(content, str) else json.dumps(content)
    return ModelResponse(
        content=text, usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    )


class Q(BaseModel):
    text: str


class A(BaseModel):
    answer: str


def agent(name: str, model: tm.Model | str, **options: Any) -> tm.Agent[Any, Any]:
    options.setdefault("input", Q)
    options.setdefault("output", A)
    return tm.Agent(name, version="1.0.0", model=model, **options)


def says(name: str = "gpt-4o-mini", text: str = "ok") -> tm.ScriptedModel:
    """An offline model that always answers ``text`` (usage counted from the text)."""
    return tm.ScriptedModel(lambda r: {"answer": text}, name=name)


def check_exact(report: CostReport, result: tm.RunResult[Any] | None = None) -> None:
    """Every view adds up to the run's total, to the pico-dollar, and matches the reducer."""
    sums = report.sums()
    assert report.exact, sums
    total = report.total
    assert total.cost_pusd == sum(c.cost_pusd for c in report.calls)
    nodes = list(report.root.walk())
    for node in nodes:
        assert node.total == node.own + sum((c.total for c in node.children), Spend())
    assert sum((n.own for n in nodes), Spend()) == total
    assert sum(report.by_agent.values(), Spend()) == total
    models = sum((m.spend for m in report.by_model.values()), Spend())
    assert models == replace(total, tool_calls=0)  # tool calls belong to no model
    if result is not None:
        usage = result.usage
        assert (total.input_tokens, total.output_tokens) == (
            usage.input_tokens,
            usage.output_tokens,
        )
        assert (total.model_calls, total.tool_calls) == (usage.model_calls, usage.tool_calls)
        # the float total drifts by float noise only; the exact one is the sum of the calls
        assert abs(total.cost_pusd - to_pusd(usage.cost_usd)) <= total.model_calls
        by_path = {n.path: n for n in result.trace.walk()}
        for node in nodes:
            own = by_path[node.path].usage
            assert (node.own.input_tokens, node.own.output_tokens) == (
                own.input_tokens,
                own.output_tokens,
            )
            assert node.own.model_calls == own.model_calls


def journaled(flow: tm.Step[Any, Any], data: Any, **options: Any) -> tuple[Any, CostReport]:
    journal = tm.MemoryJournal()
    result = tm.run(flow, data, journal=journal, run_id="r", **options)
    return result, run_cost(journal, "r")


# -- the units ------------------------------------------------------------------------


def test_amounts_are_exact_and_printed_exactly() -> None:
    assert to_pusd(0.00022709999999999996) == 227_100_000  # float noise rounds away
    assert to_pusd(7.635e-05) == 76_350_000
    assert format_usd(3_245_000_000) == "$0.003245"
    assert format_usd(1_050_000) == "$0.00000105"  # never rounded to 6 decimals
    assert format_usd(3_245_000_000, 8) == "$0.00324500"
    assert format_usd(-5) == "-$0.000000000005"
    assert places_of(3_245_000_000, 303_450_000) == 8
    assert reprice("gpt-4o", 790, 127) == 3_245_000_000  # 790 x $2.50 + 127 x $10 per Mtok
    assert reprice("no-such-model", 1, 1) is None


def test_offline_and_dated_names_price_as_the_table_entry() -> None:
    assert priced_as("gpt-4o-mini") == "gpt-4o-mini"
    assert priced_as("gpt-4o-mini-2024-07-18") == "gpt-4o-mini"  # longest prefix
    assert priced_as("faulty:gpt-4o") == "gpt-4o"  # the part after the first ':'
    assert priced_as("scripted") is None and priced_as("schema") is None


# -- real runs of each pattern ---------------------------------------------------------


@tm.tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value of {key}"


@tm.step(name="restate", version="1.0.0")
def restate(a: A) -> Q:
    return Q(text=a.answer)


class Both(BaseModel):
    left: A
    right: A


class Merged(BaseModel):
    answer: str
    conflicts: list[tm.Conflict] = []


@tm.step(name="unpack", version="1.0.0")
def unpack(m: Merged) -> Q:
    return Q(text=m.answer)


class Draft(BaseModel):
    code: str


class Spec(BaseModel):
    spec: str
    previous_draft: Draft | None = None
    feedback: str | None = None


class Review(BaseModel):
    draft: Draft
    task: Spec
    round: int


def tool_user() -> tm.Agent[Any, Any]:
    def respond(request: ModelRequest) -> Any:
        if not any(m.role == "tool" for m in request.messages):
            return {"tool_calls": [{"name": "lookup", "arguments": {"key": "k"}}]}
        return {"answer": "looked up"}

    return agent("looker", tm.ScriptedModel(respond, name="gpt-4o"), tools=[lookup])


def sequential_flow() -> tm.Step[Any, Any]:
    return tm.sequential(
        tool_user(), restate, agent("local", says("scripted")), name="seq"
    )  # "scripted" has no price: its tokens count, its cost does not


def parallel_flow() -> tm.Step[Any, Any]:
    merge = agent("merge", says("claude-sonnet-4"), input=Both, output=Merged)
    return tm.parallel(
        left=agent("left", says("gpt-4o-mini", "same")),
        right=agent("right", says("gpt-4o", "same")),
        merge=merge,
        name="par",
    )


def loop_flow() -> tm.Step[Any, Any]:
    writer = agent(
        "writer",
        tm.ScriptedModel(lambda r: {"code": "def f(): pass"}, name="gpt-4.1-mini"),
        input=Spec,
        output=Draft,
    )
    reviewer = agent(
        "reviewer",
        tm.ScriptedModel(
            lambda r: {"passed": r.input_data()["round"] >= 2, "score": 0.5, "feedback": "more"},
            name="o4-mini",
        ),
        input=Review,
        output=tm.Evaluation,
    )
    return tm.loop(writer, reviewer, max_rounds=3, name="review")


def orchestrate_flow(planner_model: str = "gpt-4o", priced_usage: bool = True) -> tm.Step[Any, Any]:
    """A planner on ``planner_model``, two workers and a synthesizer on gpt-4o-mini.

    With ``priced_usage`` each answer reports round token counts: the planner
    1000 in + 200 out, each worker 2000 + 500, the synthesizer 3000 + 1000.
    """
    plan = {
        "goal": "cover",
        "steps": [
            {"id": "a", "worker": "worker", "input": {"text": "x"}},
            {"id": "b", "worker": "worker", "input": {"text": "y"}},
        ],
    }

    def scripted(name: str, content: Any, tokens: tuple[int, int]) -> tm.ScriptedModel:
        if priced_usage:
            return tm.ScriptedModel(lambda r: answer(content, *tokens), name=name)
        return tm.ScriptedModel(lambda r: content, name=name)

    planner = agent("planner", scripted(planner_model, plan, (1000, 200)), output=tm.Plan)
    worker = agent("worker", scripted("gpt-4o-mini", {"answer": "w"}, (2000, 500)))
    synthesizer = agent(
        "synthesizer",
        scripted("gpt-4o-mini", {"answer": "s"}, (3000, 1000)),
        input=tm.PlanExecution,
    )
    return tm.orchestrate(planner, workers=[worker], synthesizer=synthesizer)


def nested_flow() -> tm.Step[Any, Any]:
    return tm.sequential(parallel_flow(), unpack, orchestrate_flow(), name="nested")


FLOWS = {
    "sequential": (sequential_flow, {"text": "q"}),
    "parallel": (parallel_flow, {"text": "q"}),
    "loop": (loop_flow, {"spec": "f"}),
    "orchestrate": (lambda: orchestrate_flow(priced_usage=False), {"text": "q"}),
    "nested": (nested_flow, {"text": "q"}),
}


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_each_pattern_adds_up_exactly(name: str) -> None:
    build, data = FLOWS[name]
    result, report = journaled(build(), data)
    check_exact(report, result)
    assert report.total.model_calls >= 3
    # the live reducer's view of the same run is the same report
    assert report.root.to_dict() == cost_report(result.trace, report.calls, "r").root.to_dict()


@pytest.mark.parametrize(
    "path", sorted(JOURNALS.glob("*.jsonl")) + sorted(JOURNALS.glob("v1/*.jsonl")), ids=str
)
def test_golden_journals_add_up_exactly(path: Path) -> None:
    journal, run_id = import_jsonl(path)
    events = journal.read(run_id)
    reducer = reduce_events(events, journal)
    reducer.finish(events[-1])
    report = reducer_cost(reducer)
    check_exact(report)
    assert report.total.input_tokens == reducer.usage.input_tokens
    assert abs(report.total.cost_pusd - to_pusd(reducer.usage.cost_usd)) <= 10
    for model, usage in reducer.by_model.items():
        spend = report.by_model[model].spend
        assert (spend.model_calls, spend.output_tokens) == (usage.model_calls, usage.output_tokens)
        assert report.by_model[model].pricing == f"offline, priced as {model}"


def test_the_node_view_nests_and_separates_own_from_total() -> None:
    _, report = journaled(nested_flow(), {"text": "q"})
    root = report.root
    assert root.own.model_calls == 0 and root.total == report.total
    par, _, orch = root.children
    assert [c.name for c in par.children] == ["left", "right", "merge"]
    assert par.total == sum((c.total for c in par.children), Spend())
    assert orch.kind == "orchestrate" and orch.own == Spend()
    assert orch.total.cost_pusd == 6_750_000_000  # as the orchestrate test below computes
    assert report.by_agent["worker@1.0.0"].model_calls == 2  # two nodes, one agent


def test_sequential_with_a_tool_and_an_unpriced_model() -> None:
    result, report = journaled(sequential_flow(), {"text": "q"})
    looker = report.root.children[0]
    assert (looker.own.model_calls, looker.own.tool_calls) == (2, 1)
    local = report.by_model["scripted"]
    assert local.pricing == "offline, unpriced" and local.priced_as is None
    assert local.spend.unpriced_calls == 1 and local.spend.cost_pusd == 0
    assert local.spend.total_tokens > 0
    assert report.by_model["gpt-4o"].pricing == "offline, priced as gpt-4o"
    assert report.total.unpriced_calls == 1
    check_exact(report, result)


def test_a_price_given_at_run_time_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(pricing.PRICES, "house-llm", pricing.Price(1.0, 2.0))
    pricing._resolved.clear()
    journal = tm.MemoryJournal()
    tm.run(agent("a", says("house-llm")), {"text": "q"}, journal=journal, run_id="r")
    monkeypatch.delitem(pricing.PRICES, "house-llm")  # `typedmesh cost` in another process
    pricing._resolved.clear()
    model = run_cost(journal, "r").by_model["house-llm"]
    assert model.pricing == "price given at run time" and model.spend.cost_pusd > 0
    assert model.spend.unpriced_calls == 0


# -- plan-and-execute ----------------------------------------------------------------


def test_orchestrate_against_the_planner_model_by_hand() -> None:
    result, report = journaled(orchestrate_flow(), {"text": "q"})
    check_exact(report, result)
    [plan] = report.plans
    assert plan.path == "orchestrate" and plan.planner_model == "gpt-4o"
    # as run: planner 1000 x $2.50 + 200 x $10 = $0.0045; workers on gpt-4o-mini
    # 2 x (2000 x $0.15 + 500 x $0.60) = $0.0012; synthesizer 3000 x $0.15 + 1000 x $0.60
    # = $0.00105 (prices per million tokens)
    assert plan.actual_pusd == 6_750_000_000 == report.total.cost_pusd
    # on gpt-4o: planner $0.0045; workers 2 x (2000 x $2.50 + 500 x $10) = $0.02;
    # synthesizer 3000 x $2.50 + 1000 x $10 = $0.0175
    assert plan.all_on_planner_pusd == 42_000_000_000
    assert plan.saved_pusd == 35_250_000_000
    assert plan.saving_pct == Decimal(35_250) * 100 / Decimal(42_000)
    assert round(float(plan.saving_pct or 0), 2) == 83.93
    roles = [(r.role, r.node, r.on_planner_pusd) for r in plan.roles]
    assert roles == [
        ("planner", "planner", 4_500_000_000),
        ("worker", "worker[a]", 10_000_000_000),
        ("worker", "worker[b]", 10_000_000_000),
        ("synthesizer", "synthesizer", 17_500_000_000),
    ]
    assert [r.spend.cost_pusd for r in plan.roles] == [
        4_500_000_000,
        600_000_000,
        600_000_000,
        1_050_000_000,
    ]
    document = plan.to_dict()
    assert document["saving_pct"] == pytest.approx(83.928571, abs=1e-6)
    assert document["actual_usd"] == 0.00675 and document["all_on_planner_usd"] == 0.042


def test_an_unpriced_planner_model_leaves_the_saving_unknown() -> None:
    result, report = journaled(orchestrate_flow("house-planner"), {"text": "q"})
    [plan] = report.plans
    assert plan.planner_model == "house-planner"
    assert plan.all_on_planner_pusd is None and plan.saving_pct is None
    assert plan.to_dict()["saving_pct"] is None
    check_exact(report, result)


def test_the_research_plan_example_matches_its_own_hand_rolled_comparison() -> None:
    journal, run_id = import_jsonl(JOURNALS / "research_plan.jsonl")
    [plan] = run_cost(journal, run_id).plans
    assert plan.planner_model == "gpt-4o"
    assert plan.actual_pusd == 4_615_100_000
    tokens = {r.node: (r.spend.input_tokens, r.spend.output_tokens) for r in plan.roles}
    by_hand = sum(cost_of("gpt-4o", i, o) for i, o in tokens.values())
    assert plan.all_on_planner_pusd == to_pusd(by_hand) == 26_080_000_000
    assert round(float(plan.saving_pct or 0), 1) == 82.3


# -- cascades ------------------------------------------------------------------------


def cascade_loop(top: str = "gpt-4o") -> tm.Step[Any, Any]:
    """A writer on Cascade(gpt-4o-mini, top) for four rounds; its 2nd cheap answer is invalid."""
    cheap_calls: list[int] = []

    def cheap(request: ModelRequest) -> ModelResponse:
        cheap_calls.append(1)
        if len(cheap_calls) == 2:
            return answer("I think the code is fine", 1000, 100)
        return answer({"code": "def f(): pass"}, 1000, 100)

    writer = agent(
        "writer",
        tm.Cascade(
            tm.ScriptedModel(cheap, name="gpt-4o-mini"),
            tm.ScriptedModel(lambda r: answer({"code": "def f(): ..."}, 1200, 100), name=top),
        ),
        input=Spec,
        output=Draft,
    )

    @tm.step(name="reviewer")
    def reviewer(r: Review) -> tm.Evaluation:
        return tm.Evaluation(passed=r.round >= 4, score=0.5, feedback="again")

    return tm.loop(writer, reviewer, max_rounds=4, name="rounds")


def test_cascade_escalation_rate_and_saving_by_hand() -> None:
    result, report = journaled(cascade_loop(), {"spec": "f"})
    check_exact(report, result)
    [cascade] = report.cascades
    assert cascade.agent == "writer@1.0.0" and cascade.models == ("gpt-4o-mini", "gpt-4o")
    assert (cascade.answers, cascade.escalated_answers, cascade.escalations) == (4, 1, 1)
    assert cascade.escalation_rate == 0.25 and cascade.reasons == {"validation": 1}
    # 4 cheap calls: 1000 x $0.15 + 100 x $0.60 = $0.00021 each; 1 on gpt-4o:
    # 1200 x $2.50 + 100 x $10 = $0.004
    assert cascade.spend.model_calls == 5
    assert cascade.spend.cost_pusd == 4_840_000_000 == report.total.cost_pusd
    # all on gpt-4o: 4 x (1000 x $2.50 + 100 x $10) = $0.014, + $0.004
    assert cascade.all_on_top_pusd == 18_000_000_000
    assert cascade.saved_pusd == 13_160_000_000
    assert cascade.saving_pct == Decimal(13_160) * 100 / Decimal(18_000)
    document = cascade.to_dict()
    assert document["escalation_rate"] == 0.25 and document["top_model"] == "gpt-4o"
    assert document["saving_pct"] == pytest.approx(73.111111, abs=1e-6)


def test_a_cascade_that_never_escalated_is_counted_with_its_full_saving() -> None:
    """Every answer is journaled (cascade.answered), so 0 escalations still shows."""
    writer = agent(
        "writer",
        tm.Cascade(
            tm.ScriptedModel(lambda r: answer({"code": "x"}, 1000, 100), name="gpt-4o-mini"),
            tm.ScriptedModel(lambda r: answer({"code": "y"}, 1000, 100), name="gpt-4o"),
        ),
        input=Spec,
        output=Draft,
    )
    result, report = journaled(writer, {"spec": "f"})
    check_exact(report, result)
    [cascade] = report.cascades
    assert cascade.models == ("gpt-4o-mini", "gpt-4o")
    assert (cascade.answers, cascade.escalated_answers, cascade.escalations) == (1, 0, 0)
    assert cascade.spend.cost_pusd == 210_000_000  # 1000 x $0.15 + 100 x $0.60
    assert cascade.all_on_top_pusd == 3_500_000_000  # 1000 x $2.50 + 100 x $10
    assert cascade.saved_pusd == 3_290_000_000


def test_a_cascade_to_an_unpriced_model_has_no_saving() -> None:
    _, report = journaled(cascade_loop(top="house-llm"), {"spec": "f"})
    [cascade] = report.cascades
    assert cascade.top_model == "house-llm" and cascade.all_on_top_pusd is None
    assert cascade.saving_pct is None and report.by_model["house-llm"].pricing.endswith("unpriced")


def test_no_cascade_no_plan_nothing_to_compare() -> None:
    _, report = journaled(parallel_flow(), {"text": "q"})
    assert report.plans == () and report.cascades == ()
    document = report.to_dict()
    assert document["plan_and_execute"] == [] and document["cascades"] == []
    assert document["sums"]["exact"] is True


# -- any tree, any calls ---------------------------------------------------------------

MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4", "offline:gpt-4.1", "o3", "local-llm"]
AGENTS = ["a@1", "b@1", "b@2", None]


@st.composite
def runs(draw: st.DrawFn) -> tuple[TraceNode, list[EffectCall]]:
    """A random trace tree and random model calls on its nodes, priced as a run prices them."""
    root = TraceNode(name="run", kind="sequential", path="run")
    nodes = [root]
    for index in range(draw(st.integers(0, 25))):
        parent = nodes[draw(st.integers(0, len(nodes) - 1))]
        who = draw(st.sampled_from(AGENTS))
        identity = None
        if who is not None:
            name, version = who.split("@")
            identity = AgentIdentity(name=name, version=version)
        node = parent.child(f"n{index}", "agent", f"{parent.path}/n{index}", identity)
        nodes.append(node)
    calls: list[EffectCall] = []
    for number in range(draw(st.integers(0, 40))):
        node = nodes[draw(st.integers(0, len(nodes) - 1))]
        model = draw(st.sampled_from(MODELS))
        tokens_in = draw(st.integers(0, 2_000_000))
        tokens_out = draw(st.integers(0, 200_000))
        usage = Usage(
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            model_calls=1,
            cost_usd=cost_of(model, tokens_in, tokens_out),
        )
        add_usage(node.usage, usage)
        if model not in node.models:
            node.models.append(model)
        key = f"{node.path}/model#{number}"
        call = EffectCall("model", key, node.path, number, "", node, 0, model=model, usage=usage)
        calls.append(call)
    for node in nodes[1:]:
        tools = draw(st.integers(0, 2))
        node.usage.__dict__["tool_calls"] += tools
    return root, calls


@settings(max_examples=200, deadline=None)
@given(runs())
def test_any_tree_adds_up_exactly(run: tuple[TraceNode, list[EffectCall]]) -> None:
    root, calls = run
    report = cost_report(root, calls)
    check_exact(report)
    assert len(report.calls) == len(calls)  # no residual: every counted call has a record
    total = report.total
    assert total.model_calls == len(calls)
    assert total.tool_calls == sum(n.usage.tool_calls for n in root.walk())
    assert total.cost_pusd == sum(to_pusd(c.usage.cost_usd) for c in calls if c.usage)
    assert total.cost_pusd == sum(
        reprice(c.model, c.usage.input_tokens, c.usage.output_tokens) or 0 for c in calls if c.usage
    )  # what was recorded is what the table prices, to the pico-dollar
    unpriced = [c for c in calls if c.model == "local-llm" and c.usage and c.usage.total_tokens]
    assert total.unpriced_calls == len(unpriced)
    assert report.root.total == root_total(report)
    json.dumps(report.to_dict())  # JSON-ready


def root_total(report: CostReport) -> Spend:
    return sum((n.own for n in report.root.walk()), Spend())


def test_usage_no_call_carries_is_attributed_to_its_node() -> None:
    root = TraceNode(name="run", kind="sequential", path="run")
    node = root.child("a", "agent", "run/a", None)
    node.usage = Usage(input_tokens=100, output_tokens=10, model_calls=1, cost_usd=0.0004)
    node.models.append("gpt-4o")
    report = cost_report(root, [])
    [residual] = report.calls
    assert residual == CallCost("run/a", "gpt-4o", "", 100, 10, 400_000_000)
    check_exact(report)
