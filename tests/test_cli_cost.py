"""`typedmesh cost`: the node, agent and model views, the comparisons, --by and --json."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

FLOWS = textwrap.dedent("""
    import json
    from pydantic import BaseModel
    import typedmesh as tm

    class Q(BaseModel):
        text: str

    class A(BaseModel):
        answer: str

    class Spec(BaseModel):
        spec: str
        previous_draft: "Draft | None" = None
        feedback: str | None = None

    class Draft(BaseModel):
        code: str

    Spec.model_rebuild()

    class Review(BaseModel):
        draft: Draft
        task: Spec
        round: int

    def answer(content, tokens_in, tokens_out):
        return tm.ModelResponse(
            content=json.dumps(content),
            usage=tm.Usage(input_tokens=tokens_in, output_tokens=tokens_out),
        )

    PLAN = {"goal": "cover", "steps": [
        {"id": "a", "worker": "worker", "input": {"text": "x"}},
        {"id": "b", "worker": "worker", "input": {"text": "y"}},
    ]}
    planner = tm.Agent("planner", version="1.0.0", input=Q, output=tm.Plan,
        model=tm.ScriptedModel(lambda r: answer(PLAN, 1000, 200), name="gpt-4o"))
    worker = tm.Agent("worker", version="1.0.0", input=Q, output=A,
        model=tm.ScriptedModel(lambda r: answer({"answer": "w"}, 2000, 500),
                               name="gpt-4o-mini"))
    synthesizer = tm.Agent("synthesizer", version="1.0.0", input=tm.PlanExecution, output=A,
        model=tm.ScriptedModel(lambda r: answer({"answer": "s"}, 3000, 1000),
                               name="gpt-4o-mini"))
    planned = tm.orchestrate(planner, workers=[worker], synthesizer=synthesizer)

    cheap_calls = []

    def cheap(request):
        cheap_calls.append(1)
        if len(cheap_calls) == 2:  # the second cheap answer is not JSON: escalate once
            return tm.ModelResponse(content="looks fine to me",
                                    usage=tm.Usage(input_tokens=1000, output_tokens=100))
        return answer({"code": "def f(): pass"}, 1000, 100)

    writer = tm.Agent("writer", version="1.0.0", input=Spec, output=Draft,
        model=tm.Cascade(
            tm.ScriptedModel(cheap, name="gpt-4o-mini"),
            tm.ScriptedModel(lambda r: answer({"code": "def f(): ..."}, 1200, 100),
                             name="gpt-4o")))

    @tm.step(name="reviewer")
    def reviewer(r: Review) -> tm.Evaluation:
        return tm.Evaluation(passed=r.round >= 4, score=0.5, feedback="again")

    cascaded = tm.loop(writer, reviewer, max_rounds=4, name="rounds")

    local = tm.Agent("local", version="0.1.0", input=Q, output=A,
        model=tm.ScriptedModel(lambda r: {"answer": "here"}, name="house-llm"))
""")


def typedmesh(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "typedmesh.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=None,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A journal with three runs: plan (orchestrate), cascade (loop) and local (unpriced)."""
    path = tmp_path_factory.mktemp("cost")
    (path / "flows.py").write_text(FLOWS)
    for target, data, run_id in (
        ("planned", {"text": "q"}, "plan"),
        ("cascaded", {"spec": "f"}, "cascade"),
        ("local", {"text": "q"}, "local"),
    ):
        done = typedmesh(
            path, "run", f"flows.py:{target}", "--input", json.dumps(data), "--run-id", run_id
        )
        assert done.returncode == 0, done.stderr
    return path


def cost_json(workdir: Path, *args: str) -> dict[str, Any]:
    done = typedmesh(workdir, "cost", *args, "--json")
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def test_cost_shows_the_three_views_the_comparison_and_exact_sums(workdir: Path) -> None:
    done = typedmesh(workdir, "cost", "plan")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for title in ("by node", "by agent", "by model", "plan-and-execute at orchestrate"):
        assert title in out
    # the pattern tree, own and total: the orchestrate node spends nothing itself
    assert "├─ planner" in out and "├─ worker[a]" in out and "└─ synthesizer" in out
    assert "planner@1.0.0" in out and "worker@1.0.0" in out
    assert "offline, priced as gpt-4o" in out
    # hand-computed: $0.0045 + 2 x $0.0006 + $0.00105 as run; $0.042 with gpt-4o doing all
    assert "plan-and-execute: $0.006750; all on gpt-4o: $0.042000; saved 83.9%" in out
    assert "sums: nodes = agents = models = calls = $0.006750 = run total (exact)" in out
    assert "$0.000000" not in out and "Traceback" not in done.stderr


def test_by_shows_one_view(workdir: Path) -> None:
    node = typedmesh(workdir, "cost", "plan", "--by", "node").stdout
    assert "by node" in node and "by agent" not in node and "by model" not in node
    assert "(exact)" in node
    model = typedmesh(workdir, "cost", "plan", "--by", "model").stdout
    assert "by model" in model and "by node" not in model
    bad = typedmesh(workdir, "cost", "plan", "--by", "team")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip() == "error: --by must be agent, model or node, got 'team'"


def test_json_carries_the_same_numbers(workdir: Path) -> None:
    document = cost_json(workdir, "plan")
    total = document["total"]
    assert total["cost_pusd"] == 6_750_000_000 and total["cost_usd"] == 0.00675
    assert total["model_calls"] == 4 and total["input_tokens"] == 8000
    assert document["sums"] == {
        "calls": 6_750_000_000,
        "nodes": 6_750_000_000,
        "agents": 6_750_000_000,
        "models": 6_750_000_000,
        "total": 6_750_000_000,
        "exact": True,
    }
    nodes = document["nodes"]
    assert nodes["kind"] == "orchestrate" and nodes["own"]["model_calls"] == 0
    assert nodes["total"] == total
    assert [c["name"] for c in nodes["children"]] == [
        "planner",
        "worker[a]",
        "worker[b]",
        "synthesizer",
    ]
    assert document["agents"]["worker@1.0.0"]["cost_pusd"] == 1_200_000_000
    assert document["models"]["gpt-4o"]["pricing"] == "offline, priced as gpt-4o"
    [plan] = document["plan_and_execute"]
    assert plan["planner_model"] == "gpt-4o"
    assert (plan["actual_pusd"], plan["all_on_planner_pusd"]) == (6_750_000_000, 42_000_000_000)
    assert plan["saving_pct"] == pytest.approx(83.928571, abs=1e-6)
    assert [r["role"] for r in plan["roles"]] == ["planner", "worker", "worker", "synthesizer"]
    assert document["cascades"] == []
    # the keys `cost --json` always had, as recorded
    assert document["usage"]["model_calls"] == 4
    assert document["cost_usd"] == pytest.approx(0.00675)
    assert document["by_agent"]["planner@1.0.0"]["input_tokens"] == 1000
    assert document["by_model"]["gpt-4o-mini"]["model_calls"] == 3
    only = cost_json(workdir, "plan", "--by", "agent")
    assert "agents" in only and "nodes" not in only and "models" not in only
    assert (
        only["sums"]["exact"] is True and only["plan_and_execute"] == document["plan_and_execute"]
    )


def test_cascade_escalation_rate_and_saving(workdir: Path) -> None:
    out = typedmesh(workdir, "cost", "cascade").stdout
    assert "cascades" in out and "writer@1.0.0" in out
    assert "gpt-4o-mini -> gpt-4o" in out and "1/4 (25%)" in out
    assert "73.1%" in out  # $0.00484 as run, $0.018 with every call on gpt-4o
    [cascade] = cost_json(workdir, "cascade")["cascades"]
    assert cascade["escalation_rate"] == 0.25 and cascade["reasons"] == {"validation": 1}
    assert (cascade["cost_pusd"], cascade["all_on_top_pusd"]) == (4_840_000_000, 18_000_000_000)


def test_an_unpriced_model_is_unpriced_not_free(workdir: Path) -> None:
    out = typedmesh(workdir, "cost", "local").stdout
    assert "house-llm" in out and "offline, unpriced" in out
    assert "cost: unpriced" in out and "$0.000000" not in out
    assert "1 model call(s) on a model with no price" in out
    document = cost_json(workdir, "local")
    assert document["total"]["unpriced_calls"] == 1
    assert document["models"]["house-llm"]["priced_as"] is None


def test_a_run_that_does_not_exist_is_one_line_and_exit_2(workdir: Path) -> None:
    done = typedmesh(workdir, "cost", "nope")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "error: RunNotFound: no run 'nope' in .typedmesh/runs.db"
    ]
    as_json = typedmesh(workdir, "cost", "nope", "--json")
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout)["error"] == "RunNotFound"
