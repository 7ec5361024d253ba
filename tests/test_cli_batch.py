"""``typedmesh batch``, run as a real subprocess: reports, exit codes, and a batch
SIGKILLed halfway that finishes on the second run with every side effect once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import typedmesh as tm

FLOW = '''
import os
import time
from pathlib import Path

from pydantic import BaseModel

import typedmesh as tm
from typedmesh.models.base import ModelRequest


class Order(BaseModel):
    order_id: str


class Charged(BaseModel):
    order_id: str
    receipt: str


def note(name: str, line: str) -> None:
    with open(os.environ[name], "a") as f:
        f.write(line + "\\n")
        f.flush()
        os.fsync(f.fileno())


@tm.tool
def charge(order_id: str, ctx: tm.RunContext) -> str:
    """Charge an order (idempotent through ctx.idempotency_key, as a payment API is)."""
    note("ATTEMPTS_FILE", order_id)
    path = Path(os.environ["EFFECTS_FILE"])
    key = ctx.idempotency_key
    if not (path.exists() and f" key={key}" in path.read_text()):
        note("EFFECTS_FILE", f"{order_id} key={key}")
    if os.environ.get("PAUSE_AT") == order_id:  # the kill lands here: charged, not journaled
        Path(os.environ["PAUSED_FILE"]).write_text(order_id)
        time.sleep(120)
    return f"receipt-{order_id}"


def biller(request: ModelRequest) -> object:
    order = request.input_data()["order_id"]
    if order == "BAD":
        return "not JSON, three times"
    tool = [m.content for m in request.messages if m.role == "tool"]
    if not tool:
        return {"tool_calls": [{"name": "charge", "arguments": {"order_id": order}}]}
    return {"order_id": order, "receipt": tool[0]}


flow = tm.Agent(
    "biller",
    input=Order,
    output=Charged,
    tools=[charge],
    model=tm.ScriptedModel(biller, name="gpt-4o-mini"),
)
'''

ORDERS = [f"O{n}" for n in range(1, 9)]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def flow_file(tmp_path: Path) -> Path:
    path = tmp_path / "orders_flow.py"
    path.write_text(FLOW)
    return path


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "TYPEDMESH_ALLOW_NETWORK": "0",
        "PATH": "/usr/bin:/bin",
        "COLUMNS": "200",
        "ATTEMPTS_FILE": str(tmp_path / "attempts.txt"),
        "EFFECTS_FILE": str(tmp_path / "effects.txt"),
        "PAUSED_FILE": str(tmp_path / "paused.txt"),
        **extra,
    }


def typedmesh(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "typedmesh.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env(tmp_path, **extra),
    )


def inputs(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "orders.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def orders(*ids: str) -> list[str]:
    return [json.dumps({"order_id": i}) for i in ids]


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def batch_command(flow_file: Path, file: Path, batch_id: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "typedmesh.cli",
        "batch",
        f"{flow_file}:flow",
        "--inputs",
        str(file),
        "--batch-id",
        batch_id,
        "--concurrency",
        "2",
        "--journal",
        "runs.db",
        "--json",
    ]


def test_batch_prints_a_report_and_exits_0_when_every_item_is_ok(
    tmp_path: Path, flow_file: Path
) -> None:
    file = inputs(tmp_path, *orders("O1", "O2", "O3"))
    done = typedmesh(tmp_path, "batch", f"{flow_file}:flow", "-i", str(file), "--batch-id", "b1")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "3 items" in out and "ok 3" in out
    assert "success rate: 100.0% (95% CI" in out
    assert "biller@0.1.0" in out and "cost: $0.0" in out
    assert "batch id: b1" in out
    assert "batch b1" in done.stderr  # the progress bar
    report = json.loads(
        typedmesh(
            tmp_path, "batch", f"{flow_file}:flow", "-i", str(file), "--batch-id", "b1", "--json"
        ).stdout
    )
    assert report["counts"]["ok"] == 3
    assert [i["action"] for i in report["items"]] == ["journaled"] * 3
    assert lines_of(tmp_path / "attempts.txt") == ["O1", "O2", "O3"]  # nothing ran again
    # each item is an ordinary run: typedmesh trace / cost / resume work on it
    trace = typedmesh(tmp_path, "trace", "b1-00001")
    assert trace.returncode == 0 and "biller" in trace.stdout


def test_malformed_lines_are_reported_and_skipped_and_the_rest_run(
    tmp_path: Path, flow_file: Path
) -> None:
    file = inputs(
        tmp_path, *orders("O1"), "{oops", '["O2"]', '{"order": "O3"}', *orders("O4", "BAD")
    )
    done = typedmesh(
        tmp_path,
        "batch",
        f"{flow_file}:flow",
        "-i",
        str(file),
        "--batch-id",
        "m1",
        "--output",
        "items.jsonl",
    )
    assert done.returncode == 1, done.stderr
    out = done.stdout
    assert "malformed 3" in out and "ok 2" in out and "failed 1" in out
    assert "skipped line 2: not valid JSON" in out
    assert "skipped line 3: expected a JSON object, got an array" in out
    assert "skipped line 4: input for 'biller' does not fit Order: order_id: Field required" in out
    assert "failed line 6 (m1-00005): OutputValidationError" in out
    assert "errors: OutputValidationError 1" in out
    assert lines_of(tmp_path / "attempts.txt") == ["O1", "O4"]
    items = [json.loads(line) for line in lines_of(tmp_path / "items.jsonl")]
    assert [i["status"] for i in items] == [
        "ok",
        "malformed",
        "malformed",
        "malformed",
        "ok",
        "failed",
    ]
    assert items[0]["output"] == {"order_id": "O1", "receipt": "receipt-O1"}
    assert items[1]["line"] == 2 and items[1]["run_id"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-i", "missing.jsonl"], "no such inputs file: missing.jsonl"),
        (["-i", "orders.jsonl", "--concurrency", "0"], "--concurrency must be >= 1"),
        (["-i", "orders.jsonl", "--max-cost", "-1"], "--max-cost must be >= 0"),
        (["-i", "orders.jsonl", "--batch-id", "no good"], "batch id 'no good'"),
        (["-i", "orders.jsonl", "--poll", "0"], "--poll must be a positive number"),
    ],
)
def test_usage_errors_exit_2_in_one_line(
    tmp_path: Path, flow_file: Path, args: list[str], message: str
) -> None:
    inputs(tmp_path, *orders("O1"))
    done = typedmesh(tmp_path, "batch", f"{flow_file}:flow", *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    as_json = typedmesh(tmp_path, "batch", f"{flow_file}:flow", *args, "--json")
    assert as_json.returncode == 2 and message in json.loads(as_json.stdout)["message"]


def test_a_bad_target_is_a_usage_error(tmp_path: Path) -> None:
    file = inputs(tmp_path, *orders("O1"))
    done = typedmesh(tmp_path, "batch", "nowhere.py:flow", "-i", str(file))
    assert done.returncode == 2 and "no such file: nowhere.py" in done.stderr


def test_a_batch_killed_midway_resumes_with_every_item_finished_once(
    tmp_path: Path, flow_file: Path
) -> None:
    file = inputs(tmp_path, *orders(*ORDERS))
    command = batch_command(flow_file, file, "kill")
    child = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env(tmp_path, PAUSE_AT="O5"),
    )
    paused = tmp_path / "paused.txt"
    deadline = time.monotonic() + 60
    while not paused.exists():
        assert child.poll() is None, "the batch ended before it reached O5"
        assert time.monotonic() < deadline, "the batch never reached O5"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGKILL
    before = Counter(lines_of(tmp_path / "attempts.txt"))
    assert before["O5"] == 1 and before["O8"] == 0  # killed midway
    with tm.SQLiteJournal(tmp_path / "runs.db") as store:
        finished_before = {
            r.run_id: len(store.read(r.run_id)) for r in store.runs() if r.status == "finished"
        }
    assert finished_before and "kill-00004" not in finished_before

    again = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env(tmp_path))
    assert again.returncode == 0, again.stdout + again.stderr
    report = json.loads(again.stdout)
    assert report["counts"]["ok"] == len(ORDERS)
    actions = {i["run_id"]: i["action"] for i in report["items"]}
    assert actions["kill-00004"] == "resumed"
    assert all(actions[run_id] == "journaled" for run_id in finished_before)
    assert actions["kill-00007"] == "started"

    # every side effect happened exactly once: O5's charge was in doubt when killed and
    # ran again under the same idempotency key, which the payment API dedupes
    effects = Counter(line.split(" key=")[0] for line in lines_of(tmp_path / "effects.txt"))
    assert effects == Counter(ORDERS)
    attempts = Counter(lines_of(tmp_path / "attempts.txt"))
    for run_id in finished_before:  # a finished item's tool never ran again
        order = ORDERS[int(run_id.rsplit("-", 1)[1])]
        assert attempts[order] == 1
    with tm.SQLiteJournal(tmp_path / "runs.db") as store:
        runs = {r.run_id: r for r in store.runs()}
        assert sorted(runs) == [f"kill-{n:05d}" for n in range(len(ORDERS))]
        for run_id in runs:
            events = store.read(run_id)
            assert [e.type for e in events].count("run.finished") == 1
            assert tm.verify_run(store, run_id).ok
            if run_id in finished_before:  # untouched by the second run
                assert len(events) == finished_before[run_id]
        outputs = [
            i["output"]["receipt"] for i in sorted(report["items"], key=lambda i: i["index"])
        ]
        assert outputs == [f"receipt-{o}" for o in ORDERS]
    replayed = tm.replay("kill-00004", _load_flow(flow_file), journal=tmp_path / "runs.db")
    assert replayed.identical and replayed.executed == 0


def _load_flow(path: Path) -> tm.Step[Any, Any]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("orders_flow_for_replay", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    flow: tm.Step[Any, Any] = module.flow
    return flow


def test_resume_of_one_item_by_run_id_finds_the_flow(tmp_path: Path, flow_file: Path) -> None:
    file = inputs(tmp_path, *orders("O1", "BAD"))
    first = typedmesh(tmp_path, "batch", f"{flow_file}:flow", "-i", str(file), "--batch-id", "r")
    assert first.returncode == 1
    resumed = typedmesh(tmp_path, "resume", "r-00000")
    assert resumed.returncode == 0 and "already finished" in resumed.stdout
    failed = typedmesh(tmp_path, "resume", "r-00001")
    assert failed.returncode == 1 and "OutputValidationError" in failed.stderr
    kept = typedmesh(
        tmp_path,
        "batch",
        f"{flow_file}:flow",
        "-i",
        str(file),
        "--batch-id",
        "r",
        "--no-retry-failed",
        "--json",
    )
    report = json.loads(kept.stdout)
    assert kept.returncode == 1 and [i["action"] for i in report["items"]] == ["journaled"] * 2
    assert os.path.exists(tmp_path / ".typedmesh" / "runs.db")


# -- one batch, several processes ------------------------------------------------------


def test_two_processes_on_one_batch_share_it_and_each_item_runs_once(
    tmp_path: Path, flow_file: Path
) -> None:
    """The same batch started twice to go faster: every item runs once, in one of the
    two, and each process reports all of them with their real outcome (none 'failed'
    because the other process had it)."""
    file = inputs(tmp_path, *orders(*ORDERS))
    command = batch_command(flow_file, file, "shared")
    workers = [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(tmp_path)
        )
        for _ in range(2)
    ]
    reports = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, out + err
        reports.append(json.loads(out))
    for report in reports:
        assert report["counts"]["ok"] == len(ORDERS)
        receipts = sorted(i["output"]["receipt"] for i in report["items"])
        assert receipts == sorted(f"receipt-{o}" for o in ORDERS)
    # each item's run was started by exactly one process (the other found it running,
    # waited, or resumed it after it ended, which runs nothing again)
    started = Counter(i["run_id"] for r in reports for i in r["items"] if i["action"] == "started")
    assert sorted(started) == [f"shared-{n:05d}" for n in range(len(ORDERS))]
    assert set(started.values()) == {1}
    assert Counter(lines_of(tmp_path / "attempts.txt")) == Counter(ORDERS)  # each tool once
    assert Counter(line.split(" key=")[0] for line in lines_of(tmp_path / "effects.txt")) == (
        Counter(ORDERS)
    )


def test_a_worker_killed_midway_is_finished_by_the_other(tmp_path: Path, flow_file: Path) -> None:
    file = inputs(tmp_path, *orders(*ORDERS))
    command = batch_command(flow_file, file, "takeover")
    first = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env(tmp_path, PAUSE_AT="O5"),
    )
    paused = tmp_path / "paused.txt"
    deadline = time.monotonic() + 60
    while not paused.exists():
        assert first.poll() is None and time.monotonic() < deadline, "never reached O5"
        time.sleep(0.02)
    second = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(tmp_path)
    )
    time.sleep(1.0)  # the second is waiting on O5, which the first holds
    assert second.poll() is None
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=10) == -signal.SIGKILL
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, out + err
    report = json.loads(out)
    assert report["counts"]["ok"] == len(ORDERS)
    actions = {i["run_id"]: i["action"] for i in report["items"]}
    assert actions["takeover-00004"] == "resumed"  # taken over once its worker was gone
    effects = Counter(line.split(" key=")[0] for line in lines_of(tmp_path / "effects.txt"))
    assert effects == Counter(ORDERS)  # O5's charge, in doubt, deduped by its key
    with tm.SQLiteJournal(tmp_path / "runs.db") as store:
        for n in range(len(ORDERS)):
            events = store.read(f"takeover-{n:05d}")
            assert [e.type for e in events].count("run.finished") == 1
            assert tm.verify_run(store, f"takeover-{n:05d}").ok
