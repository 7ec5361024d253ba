"""The examples run offline and show what they claim to show."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import typedmesh as tm
from typedmesh.models.base import Message, ModelRequest, ModelResponse
from typedmesh.models.offline import SloppyModel

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NAMES = [
    "bull_bear",
    "support_pipeline",
    "code_review_loop",
    "research_plan",
    "passing_ships",
    "batch_reviews",
    "triage_route",
    "triage",
    "release_notes",
]

Loader = Callable[[str], ModuleType]


@pytest.fixture
def load(monkeypatch: pytest.MonkeyPatch) -> Loader:
    """Import an example fresh from its file (offline: TYPEDMESH_MODEL unset).

    Each test gets new module objects, so in-module state (the refund ledger,
    the scripted models' recorded calls) starts empty; sys.modules is restored.
    """
    monkeypatch.delenv("TYPEDMESH_MODEL", raising=False)

    def _load(name: str) -> ModuleType:
        module_name = f"typedmesh_example_{name}"
        spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, module_name, module)
        spec.loader.exec_module(module)
        return module

    return _load


def run_example(module: ModuleType, **options: Any) -> tm.RunResult[Any]:
    options.setdefault("state", tm.MemoryStateStore())  # a fresh store for every run
    return tm.run(
        module.flow, module.example_input, intent=getattr(module, "intent", None), **options
    )


def nodes_by_name(result: tm.RunResult[Any]) -> dict[str, tm.TraceNode]:
    nodes = result.trace.walk()
    by_name = {n.name: n for n in nodes}
    assert len(by_name) == len(nodes), "trace node names are not unique"
    return by_name


# -- bull_bear ------------------------------------------------------------------------


def test_bull_bear_carries_every_detected_conflict(load: Loader) -> None:
    ex = load("bull_bear")
    result = run_example(ex)
    nodes = nodes_by_name(result)
    outputs = {side: nodes[side].output for side in ("bull", "bear")}
    assert all(o is not None for o in outputs.values())
    detected = tm.detect_conflicts(
        {k: v for k, v in outputs.items() if v is not None}, ex.flow.compare
    )
    report: tm.SynthesizedReport = result.output
    carried = {c.field: c for c in report.conflicts}

    assert {c.field for c in detected} >= {"position", "claims", "risks"}
    assert [c.field for c in report.conflicts] == [c.field for c in detected]
    for conflict in detected:
        assert carried[conflict.field].values == conflict.values
        assert carried[conflict.field].note
    assert report.agreements and report.summary
    assert nodes["synthesizer"].status == "ok"
    assert not [e for e in nodes["synthesizer"].events if e["event"] == "output.gate_failed"]


def test_bull_bear_judge_writes_notes_not_conflicts(load: Loader) -> None:
    ex = load("bull_bear")
    result = run_example(ex)
    model = ex.judge.model
    assert isinstance(model, tm.ScriptedModel) and len(model.calls) == 1
    schema = model.calls[0].output_schema
    fields = [c.field for c in result.output.conflicts]
    assert "conflicts" not in schema["properties"]
    assert schema["properties"]["conflict_notes"]["required"] == fields
    # the long claim lists are in the input once, never asked back
    claim = result.output.conflicts[fields.index("claims")].values["bull"][0]["statement"]
    assert claim not in model.calls[0].system


def test_bull_bear_sides_differ_and_claims_carry_provenance(load: Loader) -> None:
    ex = load("bull_bear")
    nodes = nodes_by_name(run_example(ex))
    bull, bear = nodes["bull"].output, nodes["bear"].output
    assert isinstance(bull, ex.AgentVerdict) and isinstance(bear, ex.AgentVerdict)
    assert (bull.position, bear.position) == ("bull", "bear")
    for side, verdict in (("bull", bull), ("bear", bear)):
        assert verdict.claims and all(c.evidence for c in verdict.claims)
        assert "ACME" in verdict.claims[0].statement
        for claim in verdict.claims:
            assert claim.provenance is not None
            assert claim.provenance.agent.name == side
            assert claim.provenance.model == "gpt-4o-mini"


def test_bull_bear_offline_output_depends_on_the_ticker(load: Loader) -> None:
    ex = load("bull_bear")
    first = tm.run(ex.flow, ex.Task(ticker="ACME")).output
    again = tm.run(ex.flow, ex.Task(ticker="ACME")).output
    other = tm.run(ex.flow, ex.Task(ticker="NVDA")).output
    assert first.model_dump() == again.model_dump()
    assert first.summary != other.summary


# -- support_pipeline -----------------------------------------------------------------


def test_support_pipeline_refunds_once_and_says_so(load: Loader) -> None:
    ex = load("support_pipeline")
    result = run_example(ex, run_id="support-test")
    refunds = [
        e
        for n in result.trace.walk()
        for e in n.events
        if e["event"] == "tool.result" and e["tool"] == "issue_refund"
    ]
    assert len(refunds) == 1
    assert len(ex.REFUNDS) == 1
    receipt = next(iter(ex.REFUNDS.values()))
    assert receipt.order_id == "ORD-1042" and receipt.amount == 329.0
    reply = result.output
    assert reply.refund_id == receipt.refund_id
    assert receipt.refund_id in reply.message and "refund" in reply.message.lower()
    assert not reply.escalated
    assert ex.ORDERS["ORD-1042"].status == "refunded"


def test_support_pipeline_reply_sees_only_the_summary(load: Loader) -> None:
    ex = load("support_pipeline")
    result = run_example(ex, run_id="support-test")
    enriched = nodes_by_name(result)["enrich"].output
    assert isinstance(enriched, ex.Enriched)
    dropped = set(ex.Enriched.model_fields) - set(ex.ReplyBrief.model_fields)
    assert dropped == {
        "customer_id",
        "email",
        "shipping_address",
        "lifetime_value_usd",
        "card_last4",
    }

    model = ex.reply.model
    assert isinstance(model, tm.ScriptedModel) and len(model.calls) == 2
    user = next(m for m in model.calls[0].messages if m.role == "user")
    assert set(json.loads(user.content)) == set(ex.ReplyBrief.model_fields)
    secrets = [str(getattr(enriched, f)) for f in sorted(dropped)]
    for request in model.calls:
        text = request.model_dump_json()
        for secret in secrets:
            assert secret not in text, f"{secret!r} leaked into the reply agent's prompt"


def test_support_pipeline_without_refund_scope_escalates(load: Loader) -> None:
    ex = load("support_pipeline")
    result = run_example(ex, grant={"orders:read", "crm:read"})
    reply_node = nodes_by_name(result)["reply"]
    assert [e["tool"] for e in reply_node.events if e["event"] == "tool.denied"] == ["issue_refund"]
    assert ex.REFUNDS == {}
    assert ex.ORDERS["ORD-1042"].status == "delivered"
    assert result.output.escalated and result.output.refund_id is None


# -- code_review_loop -----------------------------------------------------------------


def test_code_review_loop_passes_in_round_two(load: Loader) -> None:
    ex = load("code_review_loop")
    result = run_example(ex)
    outcome = result.output
    assert outcome.passed and outcome.rounds == 2
    assert [e.passed for e in outcome.evaluations] == [False, True]
    assert "docstring" in outcome.evaluations[0].feedback
    assert "ValueError" in outcome.evaluations[0].feedback
    assert outcome.evaluations[1].score > outcome.evaluations[0].score

    nodes = nodes_by_name(result)
    first = nodes["writer[1]"].output
    assert isinstance(first, ex.Draft)
    spec = ex.example_input.model_dump()
    assert ex.review_problems(spec, first.code)
    assert ex.review_problems(spec, outcome.output.code) == []


def test_code_review_loop_final_draft_works(load: Loader) -> None:
    ex = load("code_review_loop")
    code = run_example(ex).output.output.code
    namespace: dict[str, Any] = {}
    exec(compile(code, "<draft>", "exec"), namespace)
    chunk = namespace["chunk"]
    assert chunk([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert chunk([], 3) == []
    with pytest.raises(ValueError):
        chunk([1], 0)


# -- research_plan --------------------------------------------------------------------


def test_research_plan_runs_the_dependent_step_last(load: Loader) -> None:
    ex = load("research_plan")
    result = run_example(ex)
    outcome = result.output
    steps = outcome.plan.steps
    assert len(steps) == 3
    [dependent] = [s for s in steps if s.depends_on]
    independent = [s for s in steps if not s.depends_on]
    assert sorted(dependent.depends_on) == sorted(s.id for s in independent)

    nodes = nodes_by_name(result)
    first, second = (nodes[f"{s.worker}[{s.id}]"] for s in independent)
    last = nodes[f"{dependent.worker}[{dependent.id}]"]
    assert first.ended is not None and second.ended is not None
    assert last.started >= max(first.ended, second.ended)
    assert second.started < first.ended  # independent steps overlapped

    # the $ref wiring: the summary cites exactly what the two searches found
    found = {r.step_id: r.output for r in outcome.results}
    urls = [s["url"] for i in ("s1", "s2") for s in found[i]["sources"]]
    assert found[dependent.id]["citations"] == urls
    assert outcome.output.citations == urls


def test_research_plan_planner_is_dearer_per_token(load: Loader) -> None:
    ex = load("research_plan")
    result = run_example(ex)

    def per_token(node: tm.TraceNode) -> float:
        return node.usage.cost_usd / node.usage.total_tokens

    nodes = nodes_by_name(result)
    workers = [n for n in result.trace.walk() if re.fullmatch(r"\w+\[s\d\]", n.name)]
    assert len(workers) == 3
    assert all(per_token(nodes["planner"]) > per_token(w) for w in workers)

    rows = ex.cost_by_agent(result.trace, ex.planner_model(result.trace))
    assert ex.planner_model(result.trace) == "gpt-4o"
    assert sum(r.cost_usd for r in rows) == pytest.approx(result.cost_usd)
    assert sum(r.cost_on_baseline_usd for r in rows) > 3 * result.cost_usd


# -- passing_ships --------------------------------------------------------------------


def test_passing_ships_with_claims_one_agent_acts_the_other_is_told_the_holder(
    load: Loader,
) -> None:
    ex = load("passing_ships")
    store = tm.MemoryStateStore()
    result = run_example(ex, state=store, run_id="r")
    report: tm.ReconcileReport = result.output
    handled = ex.Handled.model_validate(report.input)
    assert [handled.refund.acted, handled.replacement.acted].count(True) == 1
    assert report.ok and report.conflicts == []
    [refused] = [line for line in ex.describe(result) if "did not act" in line]
    assert "AlreadyClaimed" in refused and "run r, step passing_ships/ships/" in refused
    order = store.get("order:42")
    assert order is not None and (order.value["refunded"] > 0) != order.value["replaced"]
    again = run_example(ex, state=store, run_id="r2")  # the claim is still held: nobody acts
    handled = ex.Handled.model_validate(again.output.input)
    assert not handled.refund.acted and not handled.replacement.acted
    assert store.get("order:42") == order


def test_passing_ships_without_claims_reconcile_names_both_writers(load: Loader) -> None:
    ex = load("passing_ships")
    ticket = ex.example_input.model_copy(update={"claims": False})
    report: tm.ReconcileReport = tm.run(ex.flow, ticket, state=tm.MemoryStateStore()).output
    assert not report.ok
    [conflict] = report.conflicts
    assert conflict.field == "order:42" and conflict.note.startswith("at most one of")
    writers = " ".join(conflict.values)
    assert "refunder@1.0.0 (passing_ships/ships/refund" in writers
    assert "warehouse@1.0.0 (passing_ships/ships/replacement" in writers


# -- every example --------------------------------------------------------------------


class NoProse:
    """Hands the wrapped model each request with the system prompt blanked.

    A model that answers the same proves it reads only structured fields (the
    input, tool results, the output schema), never the framework's prose.
    """

    def __init__(self, inner: tm.Model) -> None:
        self.inner = inner
        self.name = inner.name
        self.provider = inner.provider

    async def generate(self, request: ModelRequest) -> ModelResponse:
        messages = [
            Message(role="system", content="") if m.role == "system" else m
            for m in request.messages
        ]
        return await self.inner.generate(request.model_copy(update={"messages": messages}))


def rewire(module: ModuleType, wrap: Callable[[tm.Model], tm.Model]) -> None:
    for step in module.flow.walk():
        if isinstance(step, tm.Agent):
            step._model = wrap(step.model)


def events_of(result: tm.RunResult[Any], kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(n.name, e) for n in result.trace.walk() for e in n.events if e["event"] == kind]


@pytest.mark.parametrize("name", NAMES)
def test_every_example_runs_the_same_on_a_sloppy_model(load: Loader, name: str) -> None:
    """Fences, a sentence before the JSON, raw newlines in strings: repaired, never re-asked."""
    clean = run_example(load(name), run_id="r")
    sloppy_module = load(name)
    rewire(sloppy_module, lambda m: SloppyModel(m, seed=7))
    sloppy = run_example(sloppy_module, run_id="r")
    assert sloppy.output.model_dump() == clean.output.model_dump()
    assert sloppy.usage.model_calls == clean.usage.model_calls
    assert events_of(sloppy, "output.invalid") == []
    assert events_of(sloppy, "output.gate_failed") == []
    repaired = events_of(sloppy, "output.repaired")
    answered = {  # a plain-text answer has no JSON to make sloppy, nothing to repair
        n.name
        for n in sloppy.trace.walk()
        if n.kind == "agent" and n.status == "ok" and not isinstance(n.output, tm.Text)
    }
    assert {node for node, _ in repaired} == answered
    assert all("code fence" in e["repairs"] for _, e in repaired)


class Recording:
    """Passes requests through and keeps every answer's text as the model sent it."""

    def __init__(self, inner: tm.Model) -> None:
        self.inner = inner
        self.name = inner.name
        self.provider = inner.provider
        self.texts: list[str] = []

    async def generate(self, request: ModelRequest) -> ModelResponse:
        response = await self.inner.generate(request)
        self.texts.append(response.content or "")
        return response


def test_the_writers_code_arrives_with_raw_newlines_and_is_kept(load: Loader) -> None:
    ex = load("code_review_loop")
    recorder = Recording(SloppyModel(ex.writer.model, seed=1))
    ex.writer._model = recorder
    result = run_example(ex)
    assert len(recorder.texts) == 2
    for text in recorder.texts:
        assert "```json" in text and "import Sequence\nfrom typing import TypeVar" in text
        with pytest.raises(json.JSONDecodeError):
            json.loads(text)
    code = result.output.output.code
    assert code.startswith("from collections.abc import Sequence\nfrom typing")
    assert ex.review_problems(ex.example_input.model_dump(), code) == []
    writer = [e["repairs"] for n, e in events_of(result, "output.repaired") if "writer" in n]
    assert len(writer) == 2 and all("raw control characters in strings" in r for r in writer)


@pytest.mark.parametrize("name", NAMES)
def test_no_offline_model_reads_the_frameworks_prose(load: Loader, name: str) -> None:
    """Merge notes, loop feedback, the worker catalog: each reaches the models as data."""
    clean = run_example(load(name), run_id="r")
    blind = load(name)
    rewire(blind, NoProse)
    result = run_example(blind, run_id="r")
    assert result.output.model_dump() == clean.output.model_dump()
    assert result.usage.model_calls == clean.usage.model_calls


@pytest.mark.parametrize("name", NAMES)
def test_main_prints_output_and_cost(
    load: Loader,
    name: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # whatever main writes (a journal, a state file) stays here
    load(name).main()
    out = capsys.readouterr().out
    cost = re.search(r"^cost: \$(\d+\.\d{6})", out, re.M)
    assert cost is not None, out
    assert float(cost.group(1)) > 0
    assert re.search(r"^usage: \d+ model calls", out, re.M)


@pytest.mark.parametrize("name", NAMES)
def test_typedmesh_model_switches_every_agent(
    load: Loader, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TYPEDMESH_MODEL", "openai:gpt-4o-mini")
    module = load(name)  # building the flow resolves no model, so nothing is called
    agents = [s for s in module.flow.walk() if isinstance(s, tm.Agent)]
    assert agents
    assert all(a.model_spec == "openai:gpt-4o-mini" for a in agents)
    assert isinstance(module.example_input, module.flow.input_type)


# -- release_notes ----------------------------------------------------------------------


def test_release_notes_prose_is_checked_by_code_and_revised(load: Loader) -> None:
    ex = load("release_notes")
    result = run_example(ex)
    outcome = result.output
    assert outcome.passed and outcome.rounds == 2
    assert [e.feedback for e in outcome.evaluations] == ["mention 'text'", "all changes covered"]
    assert isinstance(outcome.output, tm.Text)
    assert all(c.key in outcome.output.text for c in ex.example_input.changes)
    model = ex.writer.model
    assert isinstance(model, tm.ScriptedModel)
    assert all(call.output_schema is None for call in model.calls)  # no JSON mode asked
    revision = json.loads(model.calls[1].messages[-1].content)
    assert revision["feedback"] == "mention 'text'"
    assert revision["previous_draft"]["text"].startswith("Version 2.3.0 is out.")


def test_release_notes_streams_the_prose_as_written(
    load: Loader, capsys: pytest.CaptureFixture[str]
) -> None:
    ex = load("release_notes")
    ex.main(["--stream"])
    out = capsys.readouterr().out
    first, rest = out.split("--- checker[1] ---", 1)
    assert first.startswith("--- writer[1], as it writes ---\nVersion 2.3.0 is out.")
    assert "- text:" not in first and "- text:" in rest.split("--- checker[2] ---")[0]
