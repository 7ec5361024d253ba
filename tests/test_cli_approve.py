"""``typedmesh approvals`` and ``typedmesh approve``, each command a real process.

A run waits (exit 4), an approver lists what waits and decides, ``resume``
continues; the journal verifies, signed as well, and ``trace`` names who
decided. Careless decisions are one line and exit 2, and record nothing.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import typedmesh as tm
from typedmesh.journal import describe_journal
from typedmesh.journal.anchor import KEY_ENV

FLOW = textwrap.dedent("""
    import os
    from pathlib import Path
    from pydantic import BaseModel
    import typedmesh as tm

    class Claim(BaseModel):
        order_id: str
        amount: float

    class Outcome(BaseModel):
        note: str

    @tm.tool(idempotent=False, requires_approval=lambda args: args["amount"] > 100)
    def refund(order_id: str, amount: float) -> str:
        \"\"\"Refund an order; over $100 a person approves first.\"\"\"
        with Path(os.environ["SIDE_EFFECT_FILE"]).open("a") as f:
            f.write(f"refund {order_id} {amount:.2f}\\n")
        return f"refunded ${amount:.2f}"

    def desk(request):
        told = [m.content for m in request.messages if m.role == "tool"]
        if told:
            return {"note": told[-1]}
        claim = Claim.model_validate_json(request.messages[1].content)
        return {"tool_calls": [{"name": "refund", "arguments": claim.model_dump()}]}

    support = tm.Agent("support", version="2.0.0", input=Claim, output=Outcome,
                       tools=[refund], model=tm.ScriptedModel(desk, name="gpt-4o-mini"))
    flow = tm.sequential(support, name="refunds")
""")
CALL = "refunds/support/tool#0"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "refund_flow.py").write_text(FLOW)
    return tmp_path


def typedmesh(cwd: Path, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TYPEDMESH_ALLOW_NETWORK": "0",
        "SIDE_EFFECT_FILE": str(cwd / "refunds.txt"),
        "COLUMNS": "160",
    }
    env.pop(KEY_ENV, None)
    if key is not None:
        env[KEY_ENV] = key
    return subprocess.run(
        [sys.executable, "-m", "typedmesh.cli", *args, "--journal", str(cwd / "runs.db")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
    )


def one_line_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout and "╭" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("error: ")
    return line


def refunds(cwd: Path) -> list[str]:
    path = cwd / "refunds.txt"
    return path.read_text().splitlines() if path.exists() else []


def wait(cwd: Path, run_id: str, amount: str = "250", key: str | None = None) -> None:
    claim = json.dumps({"order_id": "A7", "amount": float(amount)})
    done = typedmesh(cwd, "run", "refund_flow.py:flow", "-i", claim, "--run-id", run_id, key=key)
    assert done.returncode == 4, done.stderr  # waiting: nothing failed
    assert f"{CALL}:approval" in done.stderr and "waiting for approval: refund" in done.stderr


@pytest.mark.parametrize("key", [None, "the-audit-key"], ids=["unsigned", "signed"])
def test_wait_list_approve_resume(workdir: Path, key: str | None) -> None:
    wait(workdir, "r1", key=key)
    listed = typedmesh(workdir, "approvals", key=key)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[:4] == [
        f"waiting for approval in {describe_journal(str(workdir / 'runs.db'))}: 1 call",
        f"run r1  call {CALL}",
        '  refund {"order_id": "A7", "amount": 250.0}',
        listed.stdout.splitlines()[3],
    ]
    assert listed.stdout.splitlines()[3].startswith("  asked by support@2.0.0 at ")
    assert f"typedmesh approve r1 {CALL}" in listed.stdout

    done = typedmesh(workdir, "approve", "r1", CALL, "--by", "alice@acme", key=key)
    assert done.returncode == 0, done.stderr
    assert f"approved {CALL} of run r1: refund" in done.stdout and "by alice@acme" in done.stdout
    assert refunds(workdir) == []
    assert "waits for no approval" in typedmesh(workdir, "approvals", "r1", key=key).stdout

    resumed = typedmesh(workdir, "resume", "r1", "--json", key=key)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["output"] == {"note": "refunded $250.00"}
    assert refunds(workdir) == ["refund A7 250.00"]
    verified = typedmesh(workdir, "verify", "r1", key=key)
    assert verified.returncode == 0 and "OK" in verified.stdout, verified.stdout
    if key is not None:  # the decision is under the signature: another key fails the run
        forged = typedmesh(workdir, "verify", "r1", key="not-the-key")
        assert forged.returncode == 1 and "signature" in forged.stdout
    trace = typedmesh(workdir, "trace", "r1", key=key)
    assert f"refund ({CALL}) approved by alice@acme" in trace.stdout
    replayed = typedmesh(workdir, "replay", "r1", key=key)
    assert replayed.returncode == 0, replayed.stderr
    assert refunds(workdir) == ["refund A7 250.00"]


def test_deny_with_a_reason_and_the_os_user(workdir: Path) -> None:
    wait(workdir, "d1", amount="900")
    done = typedmesh(workdir, "approve", "d1", CALL, "--deny", "--reason", "too much", "--json")
    assert done.returncode == 0, done.stderr
    decision = json.loads(done.stdout)
    assert decision["approved"] is False and decision["by"] == getpass.getuser()
    assert decision["reason"] == "too much" and decision["tool"] == "refund"
    assert decision["arguments"] == {"order_id": "A7", "amount": 900.0}
    assert decision["call_digest"].startswith("sha256:")
    resumed = typedmesh(workdir, "resume", "d1", "--json")
    note = json.loads(resumed.stdout)["output"]["note"]
    assert note.startswith("Error: the call to tool 'refund' was denied by") and "too much" in note
    assert refunds(workdir) == []
    trace = typedmesh(workdir, "trace", "d1")
    assert f"refund ({CALL}) denied by {getpass.getuser()}" in trace.stdout
    assert "too much" in trace.stdout


def test_careless_decisions_are_one_line_and_exit_2(workdir: Path) -> None:
    small = json.dumps({"order_id": "S", "amount": 5})
    ran = typedmesh(workdir, "run", "refund_flow.py:flow", "-i", small, "--run-id", "small")
    assert ran.returncode == 0, ran.stderr
    line = one_line_error(typedmesh(workdir, "approve", "small", CALL), 2)
    assert "run 'small' is not waiting for an approval (it is finished)" in line

    wait(workdir, "w")
    with tm.SQLiteJournal(workdir / "runs.db") as store:
        before = len(store.read("w"))
    line = one_line_error(typedmesh(workdir, "approve", "w", "refunds/support/tool#3"), 2)
    assert f"has no call refunds/support/tool#3 waiting for approval; waiting: {CALL}" in line
    line = one_line_error(typedmesh(workdir, "approve", "ghost", CALL), 2)
    assert "no run 'ghost'" in line
    line = one_line_error(typedmesh(workdir, "approvals", "ghost"), 2)
    assert "no run 'ghost'" in line

    assert typedmesh(workdir, "approve", "w", CALL, "--by", "carol").returncode == 0
    line = one_line_error(typedmesh(workdir, "approve", "w", CALL, "--deny", "--by", "dave"), 2)
    assert f"call {CALL} was already approved by carol at" in line and "final" in line
    as_json = typedmesh(workdir, "approve", "w", CALL, "--json")
    assert as_json.returncode == 2 and json.loads(as_json.stdout)["error"] == "ApprovalError"
    with tm.SQLiteJournal(workdir / "runs.db") as store:
        assert len(store.read("w")) == before + 1  # only carol's decision

    missing = subprocess.run(
        [sys.executable, "-m", "typedmesh.cli", "approvals", "--journal", "nowhere.db"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=workdir,
    )
    assert one_line_error(missing, 2)


def test_listed_in_help(workdir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "typedmesh.cli", "--help"], capture_output=True, text=True
    )
    assert "approve" in done.stdout and "approvals" in done.stdout
