"""The journal commands of the CLI (runs, trace, verify, cost, resume, replay), as subprocesses."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import typedmesh as tm
from typedmesh.journal.events import canonical_json, digest

FLOW = textwrap.dedent("""
    import os
    from pydantic import BaseModel
    import typedmesh as tm

    class Question(BaseModel):
        text: str

    class Answer(BaseModel):
        answer: str
        confidence: float

    class Receipt(BaseModel):
        answer: str
        charge_id: str

    answerer = tm.Agent(
        "answerer", version="1.4.0", input=Question, output=Answer,
        instructions=os.environ.get("QA_INSTRUCTIONS", "Answer the question."),
        model=tm.ScriptedModel(lambda r: {"answer": "yes", "confidence": 0.8},
                               name="gpt-4o-mini"))
    answerer_v2 = tm.Agent(
        "answerer", version="2.0.0", input=Question, output=Answer,
        instructions="Answer the question, carefully.",
        model=tm.ScriptedModel(lambda r: {"answer": "no", "confidence": 0.3},
                               name="gpt-4o-mini"))

    @tm.step(version="0.2.0")
    def shout(a: Answer) -> Answer:
        return Answer(answer=a.answer.upper(), confidence=a.confidence)

    @tm.tool(idempotent=False)
    def charge(amount: float) -> str:
        if os.environ.get("QA_CRASH"):
            os._exit(17)  # the process dies inside the side effect
        return "CH-1"

    @tm.step(version="0.3.0")
    async def bill(a: Answer, ctx: tm.RunContext) -> Receipt:
        return Receipt(answer=a.answer, charge_id=await ctx.call_tool(charge, amount=1.0))

    flow = tm.sequential(answerer, shout, name="qa")
    billed = tm.sequential(answerer, bill, name="billed")
    broken = tm.Agent("broken", version="0.9.1", input=Question, output=Answer,
                      model=tm.ScriptedModel(lambda r: "not json", name="gpt-4o-mini"))
""")

INPUT = '{"text": "ok?"}'


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "qa_flow.py").write_text(FLOW)
    return tmp_path


def typedmesh(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "typedmesh.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={"TYPEDMESH_ALLOW_NETWORK": "0", "PATH": "/usr/bin:/bin", "COLUMNS": "200", **env},
    )


def run_json(cwd: Path, target: str = "qa_flow.py:flow", *args: str, **env: str) -> Any:
    done = typedmesh(cwd, "run", target, "--input", INPUT, "--json", *args, **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_run_journals_by_default_and_says_where(workdir: Path) -> None:
    done = typedmesh(workdir, "run", "qa_flow.py:flow", "--input", INPUT, "--run-id", "r1")
    assert done.returncode == 0, done.stderr
    assert "run id: r1" in done.stdout and "journal: .typedmesh/runs.db" in done.stdout
    assert (workdir / ".typedmesh" / "runs.db").exists()
    with tm.SQLiteJournal(workdir / ".typedmesh" / "runs.db") as store:
        started = store.read("r1")[0]  # the target is in the hash-chained journal itself
    assert started.payload["target"] == f"{workdir / 'qa_flow.py'}:flow"
    assert not (workdir / ".typedmesh" / "runs.db.targets.json").exists()


def test_no_journal_writes_nothing(workdir: Path) -> None:
    data = run_json(workdir, "qa_flow.py:flow", "--no-journal")
    assert data["journal"] is None
    assert not (workdir / ".typedmesh").exists()


def test_runs_trace_verify_cost_read_the_journal(workdir: Path) -> None:
    data = run_json(workdir, "qa_flow.py:flow", "--run-id", "r1")
    usage = data["usage"]
    assert data["journal"] == ".typedmesh/runs.db" and usage["model_calls"] == 1

    runs = typedmesh(workdir, "runs", "--json")
    assert runs.returncode == 0, runs.stderr
    [info] = json.loads(runs.stdout)
    assert info["run_id"] == "r1" and info["flow"] == "qa" and info["status"] == "finished"
    assert info["events"] == 10 and info["ended_at"]
    table = typedmesh(workdir, "runs")
    assert "r1" in table.stdout and "finished" in table.stdout and "qa" in table.stdout

    tree = typedmesh(workdir, "trace", "r1")
    assert tree.returncode == 0, tree.stderr
    tokens = f"{usage['input_tokens']}+{usage['output_tokens']} tok"
    assert "answerer@1.4.0" in tree.stdout and "shout@0.2.0" in tree.stdout
    assert tokens in tree.stdout and "gpt-4o-mini" in tree.stdout and "finished" in tree.stdout
    as_json = json.loads(typedmesh(workdir, "trace", "r1", "--json").stdout)
    assert as_json["name"] == "qa" and as_json["status"] == "ok"
    answerer, shout = as_json["children"]
    assert answerer["identity"] == {"name": "answerer", "version": "1.4.0", "deployment": "local"}
    assert answerer["usage"]["input_tokens"] == usage["input_tokens"]
    assert answerer["output"] == {"answer": "yes", "confidence": 0.8}
    assert shout["identity"]["version"] == "0.2.0" and shout["output"] == data["output"]
    assert as_json["total_usage"] == usage

    verify = typedmesh(workdir, "verify", "r1")
    assert verify.returncode == 0 and "OK" in verify.stdout and "10 events" in verify.stdout

    cost = typedmesh(workdir, "cost", "r1", "--json")
    assert cost.returncode == 0, cost.stderr
    report = json.loads(cost.stdout)
    assert report["usage"] == usage and report["cost_usd"] == pytest.approx(data["cost_usd"])
    assert report["by_agent"]["answerer@1.4.0"] == usage
    assert report["by_model"]["gpt-4o-mini"]["output_tokens"] == usage["output_tokens"]
    table = typedmesh(workdir, "cost", "r1").stdout
    assert "answerer@1.4.0" in table and "by model" in table and "gpt-4o-mini" in table
    assert str(usage["input_tokens"]) in table


def test_trace_of_a_failed_run_shows_the_validation_errors(workdir: Path) -> None:
    done = typedmesh(workdir, "run", "qa_flow.py:broken", "--input", INPUT, "--run-id", "bad")
    assert done.returncode == 1 and "OutputValidationError" in done.stderr
    tree = typedmesh(workdir, "trace", "bad")
    assert tree.returncode == 0, tree.stderr
    assert "broken@0.9.1" in tree.stdout and "failed" in tree.stdout
    assert "output.invalid #1" in tree.stdout and "output.invalid #3" in tree.stdout
    assert "Invalid JSON" in tree.stdout
    [info] = json.loads(typedmesh(workdir, "runs", "--json").stdout)
    assert info["status"] == "failed"


def test_verify_names_the_tampered_event(workdir: Path) -> None:
    run_json(workdir, "qa_flow.py:flow", "--run-id", "r1")
    db = workdir / ".typedmesh" / "runs.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE events SET payload = ? WHERE seq = 3", ('{"request": "edited"}',))
    conn.close()
    done = typedmesh(workdir, "verify", "r1")
    assert done.returncode == 1
    assert "FAILED" in done.stdout and "event seq 3 (model.request)" in done.stdout
    assert "altered" in done.stdout
    report = json.loads(typedmesh(workdir, "verify", "r1", "--json").stdout)
    assert report["ok"] is False and report["bad_seq"] == 3
    replay = typedmesh(workdir, "replay", "r1")
    assert replay.returncode == 2 and "JournalCorrupt" in replay.stderr


def test_strict_replay_is_identical(workdir: Path) -> None:
    data = run_json(workdir, "qa_flow.py:flow", "--run-id", "r1")
    done = typedmesh(workdir, "replay", "r1")
    assert done.returncode == 0, done.stderr
    assert "identical" in done.stdout
    assert digest(canonical_json(data["output"])) in done.stdout
    assert "served from the journal: 1, executed live: 0" in done.stdout
    report = json.loads(typedmesh(workdir, "replay", "r1", "--json").stdout)
    assert report["identical"] and report["executed"] == 0 and report["changes"] == []


def test_replay_of_a_changed_flow_names_the_effect_and_diffs_the_request(workdir: Path) -> None:
    run_json(workdir, "qa_flow.py:flow", "--run-id", "r1")
    done = typedmesh(workdir, "replay", "r1", QA_INSTRUCTIONS="Answer in one word.")
    assert done.returncode == 1
    assert "NonDeterminismError" in done.stderr and "qa/answerer/model#0" in done.stderr
    diff_lines = done.stderr.splitlines()
    assert any(line.startswith("-") and "Answer the question." in line for line in diff_lines)
    assert any(line.startswith("+") and "Answer in one word." in line for line in diff_lines)
    assert "Traceback" not in done.stderr


def test_what_if_swap_lists_the_changed_fields(workdir: Path) -> None:
    run_json(workdir, "qa_flow.py:flow", "--run-id", "r1")
    done = typedmesh(workdir, "replay", "r1", "--swap", "answerer=qa_flow.py:answerer_v2")
    assert done.returncode == 0, done.stderr
    assert "answerer -> answerer@2.0.0" in done.stdout and "executed live: 1" in done.stdout
    rows = [line for line in done.stdout.splitlines() if "│" in line]
    assert any('"YES"' in row and '"NO"' in row for row in rows)
    assert any("confidence" in row and "0.8" in row and "0.3" in row for row in rows)
    report = json.loads(
        typedmesh(
            workdir, "replay", "r1", "--swap", "answerer=qa_flow.py:answerer_v2", "--json"
        ).stdout
    )
    assert report["swapped"] == ["answerer"] and report["executed"] == 1
    assert {c["path"]: (c["before"], c["after"]) for c in report["changes"]} == {
        "answer": ("YES", "NO"),
        "confidence": (0.8, 0.3),
    }
    same = typedmesh(workdir, "replay", "r1", "--swap", "answerer=qa_flow.py:answerer")
    assert same.returncode == 0 and "no change" in same.stdout
    missing = typedmesh(workdir, "replay", "r1", "--swap", "nobody=qa_flow.py:answerer_v2")
    assert missing.returncode == 2 and "nobody" in missing.stderr


def test_unknown_run_and_missing_journal_exit_2(workdir: Path) -> None:
    run_json(workdir, "qa_flow.py:flow", "--run-id", "r1")
    for command in ("trace", "verify", "cost", "replay", "resume"):
        done = typedmesh(workdir, command, "nope")
        assert done.returncode == 2, (command, done.stderr)
        assert "RunNotFound" in done.stderr and "no run 'nope'" in done.stderr
        assert "Traceback" not in done.stderr
    done = typedmesh(workdir, "runs", "--journal", "elsewhere.db")
    assert done.returncode == 2 and "no journal at elsewhere.db" in done.stderr
    assert not (workdir / "elsewhere.db").exists()


def test_garbage_journal_is_journal_corrupt(workdir: Path) -> None:
    garbage = workdir / "garbage.db"
    garbage.write_bytes(b"this is not a database, just text\n" * 20)
    for args in (("runs",), ("trace", "r1"), ("verify", "r1"), ("cost", "r1")):
        done = typedmesh(workdir, *args, "--journal", "garbage.db")
        assert done.returncode == 2, (args, done.stderr)
        assert "JournalCorrupt" in done.stderr and "garbage.db" in done.stderr
        assert "Traceback" not in done.stderr
    done = typedmesh(workdir, "run", "qa_flow.py:flow", "--input", INPUT, "--journal", "garbage.db")
    assert done.returncode == 2 and "JournalCorrupt" in done.stderr
    assert garbage.read_bytes().startswith(b"this is not a database")


def test_resume_of_a_finished_run_gives_its_output(workdir: Path) -> None:
    data = run_json(workdir, "qa_flow.py:flow", "--run-id", "r1")
    done = typedmesh(workdir, "resume", "r1", "--json")
    assert done.returncode == 0, done.stderr
    resumed = json.loads(done.stdout)
    assert resumed["output"] == data["output"] and resumed["usage"] == data["usage"]
    human = typedmesh(workdir, "resume", "r1")
    assert human.returncode == 0 and "already finished" in human.stdout
    assert '"answer": "YES"' in human.stdout and "answerer@1.4.0" in human.stdout
    [info] = json.loads(typedmesh(workdir, "runs", "--json").stdout)
    assert info["events"] == 10  # nothing was written


def test_flow_target_falls_back_to_flow_option(workdir: Path) -> None:
    flow = workdir / "qa_flow.py"
    code = flow.read_text()
    run_json(workdir, "qa_flow.py:flow", "--run-id", "r1", "--journal", "x.db")
    flow.rename(workdir / "moved.py")  # the recorded target is gone
    done = typedmesh(workdir, "replay", "r1", "--journal", "x.db")
    assert done.returncode == 2 and "--flow" in done.stderr
    flow.write_text(code)
    done = typedmesh(workdir, "replay", "r1", "--journal", "x.db", "--flow", "qa_flow.py:flow")
    assert done.returncode == 0 and "identical" in done.stdout
    wrong = typedmesh(workdir, "replay", "r1", "--journal", "x.db", "--flow", "qa_flow.py:billed")
    assert wrong.returncode == 2 and "'qa'" in wrong.stderr


def test_crash_in_doubt_then_resume(workdir: Path) -> None:
    crashed = typedmesh(
        workdir, "run", "qa_flow.py:billed", "--input", INPUT, "--run-id", "c1", QA_CRASH="1"
    )
    assert crashed.returncode == 17
    [info] = json.loads(typedmesh(workdir, "runs", "--json").stdout)
    assert info["status"] == "incomplete" and info["ended_at"] is None
    tree = typedmesh(workdir, "trace", "c1")
    assert "bill@0.3.0  incomplete" in tree.stdout and "answerer@1.4.0  ok" in tree.stdout

    stuck = typedmesh(workdir, "resume", "c1")
    assert stuck.returncode == 3
    assert "InDoubtError" in stuck.stderr and "billed/bill/tool#0" in stuck.stderr
    assert "--retry-in-doubt" in stuck.stderr and "--skip-in-doubt" in stuck.stderr
    both = typedmesh(workdir, "resume", "c1", "--retry-in-doubt", "--skip-in-doubt")
    assert both.returncode == 2

    done = typedmesh(workdir, "resume", "c1", "--retry-in-doubt", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["output"] == {"answer": "yes", "charge_id": "CH-1"}
    tree = typedmesh(workdir, "trace", "c1")
    assert "finished" in tree.stdout and "resolution': 'retried'" in tree.stdout
    cost = json.loads(typedmesh(workdir, "cost", "c1", "--json").stdout)
    assert cost["usage"]["model_calls"] == 1 and cost["usage"]["tool_calls"] == 1
    assert typedmesh(workdir, "verify", "c1").returncode == 0
    assert "identical" in typedmesh(workdir, "replay", "c1").stdout


def test_run_refuses_a_run_id_already_in_the_journal(workdir: Path) -> None:
    run_json(workdir, "qa_flow.py:flow", "--run-id", "r1")
    done = typedmesh(workdir, "run", "qa_flow.py:flow", "--input", INPUT, "--run-id", "r1")
    assert done.returncode == 2 and "already in the journal" in done.stderr
    assert "typedmesh resume r1" in done.stderr and "Traceback" not in done.stderr


def test_resume_takes_new_budget_flags_and_a_durability_level(workdir: Path) -> None:
    stopped = typedmesh(
        workdir, "run", "qa_flow.py:flow", "--input", INPUT, "--run-id", "b1",
        "--max-model-calls", "0", "--durability", "full",
    )  # fmt: skip
    assert stopped.returncode == 1 and "BudgetExceeded" in stopped.stderr
    again = typedmesh(workdir, "resume", "b1", "--json")
    assert again.returncode == 1 and "BudgetExceeded" in again.stdout  # the recorded budget
    done = typedmesh(workdir, "resume", "b1", "--json", "--max-model-calls", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["output"] == {"answer": "YES", "confidence": 0.8}
    bad = typedmesh(workdir, "resume", "b1", "--durability", "sometimes")
    assert bad.returncode == 2 and "--durability" in bad.stderr


WAITING_FLOW = textwrap.dedent("""
    from typing import Any, ClassVar
    from pydantic import BaseModel
    import typedmesh as tm

    class Ask(tm.EffectKind):
        name: ClassVar[str] = "ask_human"
        may_wait: ClassVar[bool] = True

    ASK = tm.register_kind(Ask())

    class Q(BaseModel):
        text: str

    @tm.step(name="asker")
    async def flow(q: Q, ctx: tm.RunContext) -> Q:
        async def nobody_yet() -> Any:
            return tm.PENDING
        answer = await ctx.perform(ASK, {"q": q.text}, nobody_yet)
        return Q(text=f"{q.text} -> {answer}")
""")


def test_a_waiting_run_exits_4_and_resumes_after_its_result(workdir: Path) -> None:
    (workdir / "wait_flow.py").write_text(WAITING_FLOW)
    waiting = typedmesh(workdir, "run", "wait_flow.py:flow", "--input", INPUT, "--run-id", "w1")
    assert waiting.returncode == 4, waiting.stderr
    assert "RunWaiting" in waiting.stderr and "asker/ask_human#0" in waiting.stderr
    assert "Traceback" not in waiting.stderr
    listed = typedmesh(workdir, "waiting", "w1", "--json")
    assert json.loads(listed.stdout) == {"run_id": "w1", "waiting": ["asker/ask_human#0"]}
    recorded = typedmesh(
        workdir, "record", "w1", "asker/ask_human#0", "--value", '"yes"', "--by", "me"
    )
    assert recorded.returncode == 0, recorded.stderr
    again = typedmesh(workdir, "record", "w1", "asker/ask_human#0", "--value", '"no"')
    assert again.returncode == 2 and "not waiting" in again.stderr  # one decision only
    done = typedmesh(workdir, "resume", "w1", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["output"] == {"text": "ok? -> yes"}


def test_read_commands_open_the_journal_read_only(workdir: Path) -> None:
    run_json(workdir, "qa_flow.py:flow", "--run-id", "r1")
    db = workdir / ".typedmesh" / "runs.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = db.read_bytes()
    for command in ("runs", "trace", "cost", "verify"):
        args = [command] if command == "runs" else [command, "r1"]
        done = typedmesh(workdir, *args)
        assert done.returncode == 0, (command, done.stderr)
    assert db.read_bytes() == before
    assert not (workdir / ".typedmesh" / "runs.db-wal").exists() or (
        (workdir / ".typedmesh" / "runs.db-wal").stat().st_size == 0
    )
