"""``typedmesh session ID --run FLOW --input ...``: a conversation from the shell.

Each command is a real process; each turn is a journaled run that sees the
earlier ones, waits for an approval like any run and is resumed by id alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cli_process import typedmesh_in

FLOW = textwrap.dedent("""
    import typedmesh as tm

    def reply(request):
        said = [m.content for m in request.messages if m.role == "user"]
        return f"{len(said)} message(s) seen; the last: {said[-1]}"

    chat = tm.Agent("chat", input=str, output=str,
                    model=tm.ScriptedModel(reply, name="gpt-4o-mini"))

    @tm.tool(requires_approval=True)
    def wire(amount: float) -> str:
        \"\"\"Send money (a person approves first).\"\"\"
        return f"sent {amount}"

    def banker_model(request):
        told = [m.content for m in request.messages if m.role == "tool"]
        if told:
            return told[-1]
        return {"tool_calls": [{"name": "wire", "arguments": {"amount": 50}}]}

    banker = tm.Agent("banker", input=str, output=str, tools=[wire],
                      model=tm.ScriptedModel(banker_model, name="gpt-4o-mini"))
""")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "chat_flow.py").write_text(FLOW)
    return tmp_path


def typedmesh(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return typedmesh_in(cwd, *args, journal="chat.db")


def test_three_turns_from_the_shell_see_their_history(workdir: Path) -> None:
    flow = f"{workdir}/chat_flow.py:chat"
    first = typedmesh(workdir, "session", "u-1", "--run", flow, "-i", "hello")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("1 message(s) seen; the last: hello\n")
    assert "turn 1 of session u-1: run u-1.turn-1" in first.stdout
    assert "offline, priced as gpt-4o-mini" in first.stdout

    second = typedmesh(workdir, "session", "u-1", "--run", flow, "-i", "and again")
    assert second.stdout.startswith("2 message(s) seen; the last: and again\n")

    third = typedmesh(
        workdir, "session", "u-1", "--run", flow, "-i", "bye", "--window", "0", "--json"
    )
    document = json.loads(third.stdout)
    assert document["session"] == "u-1" and document["turn"] == 3
    assert document["output"] == {"text": "1 message(s) seen; the last: bye"}  # window 0

    listed = typedmesh(workdir, "session", "u-1", "--json")
    turns = json.loads(listed.stdout)["turns"]
    assert [t["turn"] for t in turns] == [1, 2, 3]
    assert [t["history"] for t in turns] == [[], ["u-1.turn-1"], []]


def test_a_turn_that_waits_is_approved_and_resumed_by_id(workdir: Path) -> None:
    flow = f"{workdir}/chat_flow.py:banker"
    waiting = typedmesh(workdir, "session", "b-1", "--run", flow, "-i", "pay the plumber")
    assert waiting.returncode == 4, waiting.stdout + waiting.stderr
    assert "typedmesh resume b-1.turn-1" in waiting.stderr
    approved = typedmesh(workdir, "approve", "b-1.turn-1", "banker/tool#0", "--by", "ops")
    assert approved.returncode == 0, approved.stderr
    resumed = typedmesh(workdir, "resume", "b-1.turn-1", "--json")  # no --flow: it was recorded
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads(resumed.stdout)["output"] == {"text": "sent 50.0"}


def test_careless_turns_are_one_line_and_exit_2(workdir: Path) -> None:
    no_input = typedmesh(workdir, "session", "u-2", "--run", f"{workdir}/chat_flow.py:chat")
    assert no_input.returncode == 2
    assert "both --run MODULE:ATTR and --input" in no_input.stderr
    missing = typedmesh(
        workdir, "session", "u-2", "--run", f"{workdir}/chat_flow.py:nope", "-i", "x"
    )
    assert missing.returncode == 2 and "has no attribute 'nope'" in missing.stderr
    assert "Traceback" not in no_input.stderr + missing.stderr


def test_follow_streams_the_turn_on_stderr(workdir: Path) -> None:
    flow = f"{workdir}/chat_flow.py:chat"
    done = typedmesh(workdir, "session", "f-1", "--run", flow, "-i", "hi there", "--follow")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("1 message(s) seen; the last: hi there\n")
    assert "chat > 1 message(s) seen; the last: hi there" in done.stderr  # the text as written
    assert "run.finished" in done.stderr


# -- turns run one after another -------------------------------------------------------

SLOW = textwrap.dedent("""
    import os, time
    import typedmesh as tm

    def reply(request):
        gate = os.environ.get("HOLD_FILE")
        while gate and not os.path.exists(gate):  # answer only once the test says so
            time.sleep(0.02)
        said = [m.content for m in request.messages if m.role == "user"]
        return f"{len(said)} message(s) seen; the last: {said[-1]}"

    chat = tm.Agent("chat", input=str, output=str,
                    model=tm.ScriptedModel(reply, name="gpt-4o-mini"))
""")


def start_turn(cwd: Path, session: str, text: str, hold: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "TYPEDMESH_ALLOW_NETWORK": "0", "HOLD_FILE": str(hold)}
    args = ["session", session, "--run", f"{cwd}/slow_flow.py:chat", "-i", text]
    return subprocess.Popen(
        [sys.executable, "-m", "typedmesh.cli", *args, "--journal", str(cwd / "chat.db")],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_run(cwd: Path, run_id: str) -> None:
    import time

    import typedmesh as tm

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (cwd / "chat.db").exists():
            with tm.SQLiteJournal(cwd / "chat.db") as store:
                if store.exists(run_id) and store.read(run_id):
                    return
        time.sleep(0.05)
    raise AssertionError(f"{run_id} never started")


def test_a_turn_asked_for_while_the_last_one_runs_is_refused(workdir: Path) -> None:
    (workdir / "slow_flow.py").write_text(SLOW)
    hold = workdir / "go"
    first = start_turn(workdir, "r-1", "one", hold)
    try:
        wait_for_run(workdir, "r-1.turn-1")
        second = typedmesh(
            workdir,
            "session",
            "r-1",
            "--run",
            f"{workdir}/slow_flow.py:chat",
            "-i",
            "two",
            "--json",
        )
        assert second.returncode == 2, second.stdout + second.stderr
        refused = json.loads(second.stdout)
        assert refused["error"] == "SessionBusy" and "still running" in refused["message"]
        assert refused["run_id"] == "r-1.turn-1"
    finally:
        hold.touch()
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert out.startswith("1 message(s) seen; the last: one")
    after = typedmesh(
        workdir, "session", "r-1", "--run", f"{workdir}/slow_flow.py:chat", "-i", "two"
    )
    assert after.returncode == 0, after.stderr
    assert after.stdout.startswith("2 message(s) seen; the last: two")  # it saw turn 1


def test_a_waiting_or_cut_off_turn_must_be_finished_first(workdir: Path) -> None:
    banker = f"{workdir}/chat_flow.py:banker"
    assert typedmesh(workdir, "session", "w-1", "--run", banker, "-i", "pay").returncode == 4
    busy = typedmesh(workdir, "session", "w-1", "--run", banker, "-i", "pay more")
    assert busy.returncode == 2 and "waits for a decision" in busy.stderr
    assert "typedmesh resume w-1.turn-1" in busy.stderr

    (workdir / "slow_flow.py").write_text(SLOW)
    killed = start_turn(workdir, "k-1", "one", workdir / "never")
    wait_for_run(workdir, "k-1.turn-1")
    killed.kill()  # SIGKILL mid-turn: the process is gone, the turn never ends
    killed.communicate(timeout=30)
    cut = typedmesh(workdir, "session", "k-1", "--run", f"{workdir}/chat_flow.py:chat", "-i", "2")
    assert cut.returncode == 2 and "was cut off" in cut.stderr
    (workdir / "never").touch()
    resumed = typedmesh(workdir, "resume", "k-1.turn-1", "--json")
    assert resumed.returncode == 0, resumed.stderr
    again = typedmesh(workdir, "session", "k-1", "--run", f"{workdir}/chat_flow.py:chat", "-i", "2")
    assert again.returncode == 0 and again.stdout.startswith("2 message(s) seen; the last: 2")
