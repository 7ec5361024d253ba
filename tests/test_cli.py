"""The typedmesh command line, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

FLOW = textwrap.dedent("""
    from pydantic import BaseModel
    import typedmesh as tm

    class Question(BaseModel):
        text: str

    class Answer(BaseModel):
        answer: str
        confidence: float

    answerer = tm.Agent("answerer", version="1.4.0", input=Question, output=Answer,
                        model=tm.ScriptedModel(lambda r: {"answer": "yes", "confidence": 0.8},
                                               name="gpt-4o-mini"))

    @tm.step
    def shout(a: Answer) -> Answer:
        return Answer(answer=a.answer.upper(), confidence=a.confidence)

    flow = tm.sequential(answerer, shout, name="qa")
    broken = tm.Agent("broken", input=Question, output=Answer,
                      model=tm.ScriptedModel(lambda r: "not json"))
    not_a_step = 42

    @tm.step
    def timeout_probe(q: Question) -> Answer:
        from typedmesh.models import default_timeout
        return Answer(answer=str(default_timeout()), confidence=1.0)
""")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the CLI journals to ./.typedmesh/runs.db


@pytest.fixture
def flow_file(tmp_path: Path) -> Path:
    path = tmp_path / "qa_flow.py"
    path.write_text(FLOW)
    return path


def typedmesh(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "typedmesh.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"TYPEDMESH_ALLOW_NETWORK": "0", "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )


def test_run_prints_output_trace_usage_and_cost(flow_file: Path) -> None:
    done = typedmesh("run", f"{flow_file}:flow", "--input", '{"text": "ok?"}')
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert '"answer": "YES"' in out
    assert "answerer@1.4.0" in out and "shout" in out  # the trace tree
    assert "usage and cost" in out and "gpt-4o-mini" in out
    assert "cost: $0.0000" in out


def test_run_json_is_machine_readable(flow_file: Path) -> None:
    done = typedmesh(
        "run",
        f"{flow_file}:flow",
        "--input",
        '{"text": "ok?"}',
        "--json",
        "--intent",
        '{"goal": "answer"}',
        "--run-id",
        "cli-1",
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["run_id"] == "cli-1" and data["output"] == {"answer": "YES", "confidence": 0.8}
    assert data["trace"]["children"][0]["identity"]["version"] == "1.4.0"
    assert data["usage"]["model_calls"] == 1 and data["cost_usd"] > 0
    assert data["intent"]["goal"] == "answer"


def test_bad_input_exits_2_with_the_field(flow_file: Path) -> None:
    done = typedmesh("run", f"{flow_file}:flow", "--input", '{"txt": 1}', "--json")
    assert done.returncode == 2
    error = json.loads(done.stdout)
    assert error["error"] == "InputValidationError" and "text" in error["message"]


def test_run_error_exits_1_with_partial_trace(flow_file: Path) -> None:
    done = typedmesh("run", f"{flow_file}:broken", "--input", '{"text": "q"}', "--json")
    assert done.returncode == 1
    error = json.loads(done.stdout)
    assert error["error"] == "OutputValidationError"
    assert error["partial"]["status"] == "failed" and error["run_id"]


def test_budget_flag_stops_the_run(flow_file: Path) -> None:
    done = typedmesh(
        "run", f"{flow_file}:flow", "--input", '{"text": "q"}', "--max-model-calls", "0"
    )
    assert done.returncode == 1 and "BudgetExceeded" in done.stderr


def test_bad_targets_are_usage_errors(flow_file: Path) -> None:
    assert typedmesh("run", f"{flow_file}:not_a_step", "--input", "{}").returncode == 2
    assert typedmesh("run", f"{flow_file}:missing", "--input", "{}").returncode == 2
    assert typedmesh("run", "no_colon", "--input", "{}").returncode == 2
    assert typedmesh("run", f"{flow_file}:flow", "--input", "{not json").returncode == 2


def test_model_timeout_sets_the_default_of_every_provider_model(flow_file: Path) -> None:
    target = f"{flow_file}:timeout_probe"
    done = typedmesh("run", target, "--input", '{"text": "q"}', "--json", "--model-timeout", "7.5")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["output"]["answer"] == "7.5"
    default = typedmesh("run", target, "--input", '{"text": "q"}', "--json", "--no-journal")
    assert json.loads(default.stdout)["output"]["answer"] == "60.0"


@pytest.mark.parametrize("seconds", ["0", "-1", "nan", "inf"])
def test_model_timeout_must_be_a_positive_number(flow_file: Path, seconds: str) -> None:
    for command in (
        ("run", f"{flow_file}:flow", "--input", '{"text": "q"}'),
        ("resume", "some-run"),
    ):
        done = typedmesh(*command, "--model-timeout", seconds)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error: --model-timeout must be a positive number")
        assert "Traceback" not in done.stderr
