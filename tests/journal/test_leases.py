"""Leases across real processes on one SQLite file: a killed owner, a zombie, racing takers.

The conformance suite checks the lease rules on each backend within one
process; these tests run them between processes, as they happen in use.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import typedmesh as tm
from typedmesh.journal.base import Lease, new_owner
from typedmesh.testing.journal_conformance import chain, snapshot

ENV = {**os.environ, "TYPEDMESH_ALLOW_NETWORK": "0"}
ENV.pop("TYPEDMESH_JOURNAL_KEY", None)

FLOW = textwrap.dedent(
    '''
    """A run that pauses inside its tool when PAUSE is set, to be killed there."""

    import asyncio
    import os
    import sys
    import time

    from pydantic import BaseModel

    import typedmesh as tm


    class Ask(BaseModel):
        order_id: str


    class Answer(BaseModel):
        answer: str


    @tm.tool
    def lookup(order_id: str) -> str:
        """Look an order up (idempotent: safe to run again after a crash)."""
        if os.environ.get("PAUSE"):
            print("PAUSED", os.getpid(), flush=True)
            time.sleep(600)
        return "shipped"


    def script(request):
        if not any(m.role == "tool" for m in request.messages):
            return {"tool_calls": [{"name": "lookup", "arguments": {"order_id": "A1"}}]}
        return {"answer": request.messages[-1].content}


    flow = tm.Agent(
        "clerk", input=Ask, output=Answer, tools=[lookup], model=tm.ScriptedModel(script)
    )

    if __name__ == "__main__":  # tm.run has no lease_ttl; arun does
        journal, run_id = sys.argv[1], sys.argv[2]
        order = {"order_id": "A1"}
        asyncio.run(tm.arun(flow, order, journal=journal, run_id=run_id, lease_ttl=3600))
    '''
)

TAKER = textwrap.dedent(
    """
    import sys, time
    from typedmesh.errors import LeaseHeld, RunExists
    from typedmesh.journal import SQLiteJournal, new_owner

    journal = SQLiteJournal(sys.argv[1])
    owner = new_owner()
    print("READY", owner, flush=True)
    for line in sys.stdin:
        command, run_id, at = line.split()
        time.sleep(max(0.0, float(at) - time.time()))  # every taker starts at the same moment
        try:
            if command == "acquire":
                lease = journal.acquire(run_id, owner, ttl=3600)
            else:
                lease = journal.create_run(run_id, owner, ttl=3600)
            print("WON", lease.token, flush=True)
        except (LeaseHeld, RunExists) as exc:
            print("LOST", type(exc).__name__, flush=True)
    """
)

ZOMBIE = textwrap.dedent(
    """
    import sys
    from typedmesh.errors import LeaseLost
    from typedmesh.journal import SQLiteJournal, new_owner
    from typedmesh.journal.writer import EventLog, JournalSink

    journal = SQLiteJournal(sys.argv[1])
    lease = journal.create_run("r", new_owner(), ttl=0.3)
    sink = JournalSink(journal, lease, ttl=0.3, batch_size=1)
    log = EventLog("r", sinks=[sink])
    log.emit("run.started", "flow", {"flow": "flow"})
    print("READY", flush=True)
    sys.stdin.readline()  # paused here (a GC pause, a suspended laptop) past its lease
    try:
        log.emit("tool.started", "flow", {"tool": "refund"})
        print("APPENDED", flush=True)
    except LeaseLost:
        print("FENCED", flush=True)
    """
)


@pytest.fixture(autouse=True)
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unsigned runs: a TYPEDMESH_JOURNAL_KEY in the environment would fail their verify."""
    monkeypatch.delenv("TYPEDMESH_JOURNAL_KEY", raising=False)


def spawn(args: list[str], cwd: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**ENV, **env},
        cwd=cwd,
    )


def line_of(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line, f"child {child.pid} exited: {child.wait()}"
    return line.strip()


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()


def test_a_killed_owner_is_taken_over_at_once(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    """SIGKILL the process that owns a run under a one-hour lease: resume needs no wait."""
    (tmp_path / "lease_flow.py").write_text(FLOW)
    path = tmp_path / "runs.db"
    owner = spawn(["lease_flow.py", str(path), "r"], tmp_path, PAUSE="1")
    children.append(owner)
    assert line_of(owner).startswith("PAUSED")
    store = tm.SQLiteJournal(path)
    head = store.head("r")
    assert head.owner is not None and head.owner.split(":")[1] == str(owner.pid)
    assert head.expires_at > time.time() + 3000
    with pytest.raises(tm.LeaseHeld) as held:  # alive: refused, naming it
        store.acquire("r", new_owner())
    assert held.value.owner == head.owner and held.value.expires_at == head.expires_at
    owner.send_signal(signal.SIGKILL)
    owner.wait(timeout=30)
    before = snapshot(store, "r")
    assert [e.type for e in store.read("r")][-1] == "tool.started"  # died inside the tool

    sys.path.insert(0, str(tmp_path))
    try:
        import lease_flow  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("lease_flow", None)
    started = time.monotonic()
    result = tm.resume("r", lease_flow.flow, journal=store)
    assert time.monotonic() - started < 30  # not the hour the lease had left
    assert result.output.answer == "shipped"
    after = store.read("r")
    assert [(e.seq, e.hash) for e in after[: len(before.events)]] == list(before.events)
    assert after[-1].type == "run.finished" and tm.verify_run(store, "r").ok
    head = store.head("r")
    assert head.status == "finished" and head.token == 2 and head.owner is None
    # the dead owner's lease (token 1) is fenced for good
    dead = Lease("r", held.value.owner, 1, time.time() + 3600)
    with pytest.raises(tm.LeaseLost):
        store.renew(dead)
    store.close()


def test_a_zombie_owner_past_its_lease_is_fenced(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    path = tmp_path / "runs.db"
    zombie = spawn(["-c", ZOMBIE, str(path)], tmp_path)
    children.append(zombie)
    assert line_of(zombie) == "READY"
    store = tm.SQLiteJournal(path)
    time.sleep(0.5)  # its lease (0.3 s) runs out while it is alive but stalled
    taker = store.acquire("r", new_owner(), ttl=60)
    assert taker.token == 2
    assert zombie.stdin is not None
    zombie.stdin.write("wake up\n")
    zombie.stdin.flush()
    assert line_of(zombie) == "FENCED"
    assert [e.type for e in store.read("r")] == ["run.started"]
    assert store.head("r").owner == taker.owner
    store.close()


def test_racing_processes_exactly_one_wins(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    """Two processes acquire (and create) the same run at the same instant, five times."""
    path = tmp_path / "runs.db"
    store = tm.SQLiteJournal(path)
    takers = [spawn(["-c", TAKER, str(path)], tmp_path) for _ in range(2)]
    children.extend(takers)
    owners = [line_of(t).split()[1] for t in takers]

    def race(command: str, run_id: str) -> list[str]:
        at = time.time() + 0.3
        for taker in takers:
            assert taker.stdin is not None
            taker.stdin.write(f"{command} {run_id} {at}\n")
            taker.stdin.flush()
        return [line_of(t) for t in takers]

    for round_ in range(5):
        run_id = f"free{round_}"
        lease = store.create_run(run_id, new_owner())
        store.append(lease, chain(run_id, [("run.started", {"flow": "flow"})]), {})
        store.release(lease, "incomplete")  # free: anyone may take it
        results = race("acquire", run_id)
        assert sorted(results) == ["LOST LeaseHeld", "WON 2"], results
        head = store.head(run_id)
        assert head.token == 2 and head.owner == owners[results.index("WON 2")]

        results = race("create", f"new{round_}")
        assert sorted(results) == ["LOST RunExists", "WON 1"], results
        head = store.head(f"new{round_}")
        assert head.token == 1 and head.owner == owners[results.index("WON 1")]
    store.close()
