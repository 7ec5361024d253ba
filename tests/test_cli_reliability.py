"""``typedmesh reliability``, run as a real subprocess on journals of real runs."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.models.base import ModelRequest


class Ticket(BaseModel):
    id: int


class Triage(BaseModel):
    category: str


class Reply(BaseModel):
    body: str


def _triage(request: ModelRequest) -> Any:
    ticket = json.loads(request.messages[1].content)
    if ticket["id"] % 3 == 1 and len(request.messages) == 2:
        return "This looks like billing."  # prose first: invalid, fixed once told
    return {"category": "unknown" if ticket["id"] in (4, 7) else "billing"}


def _reply(request: ModelRequest) -> Any:
    if json.loads(request.messages[1].content)["category"] == "unknown":
        return "I cannot help."  # never valid: the step fails
    return {"body": "On it."}


triage = tm.Agent(
    "triage", version="2.1.0", input=Ticket, output=Triage, model=tm.ScriptedModel(_triage)
)
responder = tm.Agent(
    "responder",
    version="0.3.0",
    input=Triage,
    output=Reply,
    output_retries=1,
    model=tm.ScriptedModel(_reply),
)
support = tm.sequential(triage, responder, name="support")
echo = tm.Agent("echo", input=Ticket, output=Reply, model=tm.SchemaModel())


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Ten support runs (4 and 7 fail in the responder; 1, 4, 7 retry triage) and two echoes."""
    path = str(tmp_path_factory.mktemp("rel") / "runs.db")
    for i in range(10):
        with contextlib.suppress(tm.RunError):
            tm.run(support, {"id": i}, journal=path, run_id=f"ticket-{i}")
    for i in range(2):
        tm.run(echo, {"id": i}, journal=path, run_id=f"echo-{i}")
    return path


def typedmesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "typedmesh.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "140"},
    )


def test_predicted_and_measured_side_by_side(journal: str) -> None:
    done = typedmesh("reliability", "--journal", journal)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "reliability of 12 run(s) of 2 flow(s)" in out
    [row] = [line for line in out.splitlines() if line.startswith("│ support ")]
    # predicted without retries 0.7 * 0.8 = 56%; with them 1.0 * 0.8; measured 8/10
    cells = [c.strip() for c in row.split("│")[1:-1]]
    assert cells[:6] == ["support", "10", "2", "56.0%", "80.0%", "80.0% (8/10)"]
    assert cells[6] == "49.0-94.3%"  # Wilson 95% of 8/10
    assert cells[7] == "97.5%"  # each of 2 steps, for 95% end to end
    assert "triage@2.1.0" in out and "70.0% (7/10)" in out and "100.0% (10/10)" in out
    assert "responder@0.3.0" in out and "OutputValidationError 2" in out
    assert "ticket-4" in out and "ticket-7" in out and "support/responder" in out
    assert "end to end (all runs read): 83.3% [55.2%, 95.3%] (10/12)" in out
    assert done.stderr == ""


def test_json(journal: str) -> None:
    done = typedmesh("reliability", "--journal", journal, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    flows = {f["flow"]: f for f in data["flows"]}
    support_flow = flows["support"]
    assert support_flow["measured"]["successes"] == 8 and support_flow["measured"]["trials"] == 10
    assert support_flow["predicted"] == pytest.approx(0.8)
    assert support_flow["predicted_first_try"] == pytest.approx(0.56)
    assert support_flow["needs_per_step"] == pytest.approx(0.95**0.5)
    agents = {a["agent"]: a for a in data["agents"]}
    assert agents["triage@2.1.0"]["incidents_by_boundary"] == {"validation": 3}
    assert agents["responder@0.3.0"]["failures_by_boundary"] == {"validation": 2}
    assert data["filters"] == {"run_ids": None, "flow": None, "since": None}
    assert data["target"] == 0.95


def test_runs_picked_by_id_flow_and_time(journal: str) -> None:
    picked = typedmesh("reliability", "ticket-4", "ticket-5", "--journal", journal, "--json")
    assert [r["run_id"] for r in json.loads(picked.stdout)["runs"]] == ["ticket-4", "ticket-5"]
    only = typedmesh("reliability", "--flow", "echo", "--journal", journal, "--json")
    data = json.loads(only.stdout)
    assert [f["flow"] for f in data["flows"]] == ["echo"]
    assert data["end_to_end"]["value"] == 1.0
    recent = typedmesh("reliability", "--since", "1h", "--journal", journal, "--json")
    assert len(json.loads(recent.stdout)["runs"]) == 12
    wide = typedmesh("reliability", "--since", "2000-01-01T00:00", "--journal", journal)
    assert wide.returncode == 0 and "reliability of 12 run(s)" in wide.stdout
    target = typedmesh("reliability", "--flow", "support", "--target", "0.99", "--journal", journal)
    assert "for 99%" in target.stdout and "99.5%" in target.stdout  # 0.99 ** 0.5


@pytest.fixture(scope="module")
def empty(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("rel") / "empty.db")
    tm.SQLiteJournal(path).close()
    return path


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["nope"], "error: RunNotFound: no run 'nope'"),
        (["--since", "yesterday"], "error: --since 'yesterday' is neither an ISO time"),
        (["--since", "-3h"], "error: --since '-3h' is neither"),
        (["--flow", "nothing"], "error: no runs of flow 'nothing' in"),
        (["--target", "95"], "error: --target must be a rate between 0 and 1, got 95.0"),
        (["--journal", "EMPTY"], "error: no runs in "),
        (["--journal", "MISSING"], "error: RunNotFound: no journal at"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    journal: str, empty: str, tmp_path: Path, args: list[str], says: str
) -> None:
    args = [{"EMPTY": empty, "MISSING": str(tmp_path / "missing.db")}.get(arg, arg) for arg in args]
    if "--journal" not in args:
        args += ["--journal", journal]
    done = typedmesh("reliability", *args)
    assert done.returncode == 2
    assert done.stderr.startswith(says), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr + done.stdout


def test_no_run_since_a_future_time(journal: str) -> None:
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    done = typedmesh("reliability", "--since", future, "--journal", journal)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: no runs since {future} in")


def test_errors_as_json(journal: str) -> None:
    done = typedmesh("reliability", "nope", "--journal", journal, "--json")
    assert done.returncode == 2
    assert json.loads(done.stdout)["error"] == "RunNotFound"
    bad = typedmesh("reliability", "--since", "soon", "--journal", journal, "--json")
    assert bad.returncode == 2 and json.loads(bad.stdout)["error"] == "UsageError"


def test_listed_in_help() -> None:
    done = typedmesh("--help")
    assert "reliability" in done.stdout
