"""Durable human approval: a tool call waits for a recorded decision, across real process exits.

The flow (``approval_flow.py``) is a refund desk: refunds over $100 need a person.
Three processes run it until it waits, approve the call, and resume it; the refund
happens once, the journal verifies (signed, too), replay is exact, and the trace
names who decided. A denial is told to the model; careless decisions change nothing.
"""

from __future__ import annotations

import getpass
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.journal.anchor import KEY_ENV
from typedmesh.runtime.approval import (
    ApprovalDenied,
    ApprovalError,
    ApprovalMismatch,
    approve,
    call_digest,
    pending_approvals,
)
from typedmesh.runtime.reducer import trace_from_events

HERE = Path(__file__).parent
CALL = "refunds/support/tool#0"
KEY = "approvals-are-evidence"


def load_flow() -> ModuleType:
    spec = importlib.util.spec_from_file_location("approval_flow", HERE / "approval_flow.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def desk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("SIDE_EFFECT_FILE", str(tmp_path / "refunds.txt"))
    monkeypatch.delenv(KEY_ENV, raising=False)
    return load_flow()


def refunds(tmp_path: Path) -> list[str]:
    path = tmp_path / "refunds.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.split(" key=")[0] for line in lines]


def process(tmp_path: Path, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    """One process of the flow's life: it starts, does its part, and exits."""
    env = {
        **os.environ,
        "SIDE_EFFECT_FILE": str(tmp_path / "refunds.txt"),
        "TYPEDMESH_ALLOW_NETWORK": "0",
    }
    env.pop(KEY_ENV, None)
    if key is not None:
        env[KEY_ENV] = key
    return subprocess.run(
        [sys.executable, str(HERE / "approval_flow.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )


def events_of(journal: Path, run_id: str) -> list[tm.Event]:
    with tm.SQLiteJournal(journal) as store:
        return store.read(run_id)


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_an_approval_across_three_processes_runs_the_tool_once(
    signed: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, desk: ModuleType
) -> None:
    journal = tmp_path / "runs.db"
    key = KEY if signed else None
    first = process(tmp_path, "run", str(journal), "r1", "A7", "250", key=key)
    assert first.returncode == 4, first.stderr
    assert first.stdout.split() == ["WAITING", f"{CALL}:approval"]
    assert refunds(tmp_path) == []  # nothing ran: the process exited waiting
    with tm.SQLiteJournal(journal) as store:
        [info] = store.runs()
        assert info.status == "waiting"

    second = process(tmp_path, "approve", str(journal), "r1", CALL, "alice@acme", key=key)
    assert second.returncode == 0, second.stderr
    decided = json.loads(second.stdout.removeprefix("DECIDED "))
    assert decided["approved"] is True and decided["by"] == "alice@acme"
    assert refunds(tmp_path) == []  # approving records a decision; it runs nothing

    third = process(tmp_path, "resume", str(journal), "r1", key=key)
    assert third.returncode == 0, third.stderr
    output = json.loads(third.stdout.removeprefix("DONE "))
    assert output == {"status": "refunded", "notes": ["refunded $250.00 on A7"]}
    assert refunds(tmp_path) == ["refund A7 250.00"]  # exactly once

    if signed:
        monkeypatch.setenv(KEY_ENV, KEY)
    events = events_of(journal, "r1")
    decision = next(e for e in events if e.type == "approval.decided")
    assert (
        decision.payload["by"] == "alice@acme" and decision.payload["recorded_by"] == "alice@acme"
    )
    assert decision.payload["call_digest"] == call_digest(
        "r1", CALL, "refund", {"order_id": "A7", "amount": 250.0}
    )
    assert decision.path == "refunds/support"  # on the step that asked, as its agent
    assert decision.agent is not None and decision.agent["name"] == "support"
    types = [e.type for e in events]
    assert types.index("approval.decided") < types.index("tool.started")
    assert types.count("tool.started") == 1
    with tm.SQLiteJournal(journal) as store:
        report = tm.verify_run(store, "r1")
        assert report.ok and report.signed is signed
    replayed = tm.replay("r1", desk.flow, journal=journal)
    assert replayed.identical and replayed.output.status == "refunded"
    assert refunds(tmp_path) == ["refund A7 250.00"]  # a replay runs nothing
    if signed:  # the decision is under the head's signature: another key refuses the run
        monkeypatch.setenv(KEY_ENV, "another-key")
        with tm.SQLiteJournal(journal) as store:
            assert not tm.verify_run(store, "r1").ok
        with pytest.raises(tm.JournalCorrupt, match="signature"):
            approve("r1", CALL, journal=journal)


def test_a_denial_is_told_to_the_model_which_answers_without_the_tool(
    tmp_path: Path, desk: ModuleType
) -> None:
    journal = tmp_path / "runs.db"
    assert process(tmp_path, "run", str(journal), "d1", "B2", "500").returncode == 4
    denied = process(
        tmp_path, "approve", str(journal), "d1", CALL, "bob", "--deny", "refunds over $300: call"
    )
    assert denied.returncode == 0, denied.stderr
    done = process(tmp_path, "resume", str(journal), "d1")
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout.removeprefix("DONE "))
    assert output["status"] == "partly refunded"
    [told] = output["notes"]
    assert told.startswith("Error: the call to tool 'refund' was denied by bob")
    assert "refunds over $300: call" in told and "did not run" in told
    assert refunds(tmp_path) == []  # the tool never ran
    events = events_of(journal, "d1")
    assert "tool.started" not in [e.type for e in events]
    with tm.SQLiteJournal(journal) as store:
        assert tm.verify_run(store, "d1").ok
        trace = trace_from_events(events, store)
    node = trace.find("refunds/support")
    assert node is not None
    [note] = [e for e in node.events if e["event"].startswith("approval.")]
    assert note["event"] == "approval.denied" and note["by"] == "bob"
    assert note["tool"] == "refund" and note["reason"] == "refunds over $300: call"
    assert tm.replay("d1", desk.flow, journal=journal).identical


def test_a_predicate_asks_only_for_large_refunds(tmp_path: Path, desk: ModuleType) -> None:
    journal = tmp_path / "runs.db"
    small = tm.run(desk.flow, {"order_id": "S1", "amounts": [40]}, journal=journal, run_id="s")
    assert small.output.notes == ["refunded $40.00 on S1"]
    assert [e.type for e in events_of(journal, "s") if e.type.startswith("approval.")] == []
    # one answer asks for both: the small refund runs at once, the large one waits
    with pytest.raises(tm.RunWaiting) as waiting:
        tm.run(desk.flow, {"order_id": "M1", "amounts": [60, 100.01]}, journal=journal, run_id="m")
    assert waiting.value.waiting == ["refunds/support/tool#1:approval"]
    assert refunds(tmp_path) == ["refund S1 40.00", "refund M1 60.00"]
    [pending] = pending_approvals("m", journal=journal)
    assert (pending.call_id, pending.tool, pending.arguments) == (
        "refunds/support/tool#1",
        "refund",
        {"order_id": "M1", "amount": 100.01},
    )
    assert pending.agent == "support@1.2.0" and pending.step == "refunds/support"
    assert pending_approvals(journal=journal) == [pending]  # every waiting run
    # resuming with no decision waits again and asks nothing again
    with pytest.raises(tm.RunWaiting):
        tm.resume("m", desk.flow, journal=journal)
    assert len(pending_approvals("m", journal=journal)) == 1
    decision = approve("m", "refunds/support/tool#1:approval", journal=journal)  # either id
    assert decision.by == getpass.getuser() and decision.reason is None
    result = tm.resume("m", desk.flow, journal=journal)
    assert result.output.notes == ["refunded $60.00 on M1", "refunded $100.01 on M1"]
    assert refunds(tmp_path) == ["refund S1 40.00", "refund M1 60.00", "refund M1 100.01"]
    assert tm.replay("m", desk.flow, journal=journal).identical
    # the live trace of the resumed run and the journal's trace agree, approver included
    with tm.SQLiteJournal(journal) as store:
        from_journal = trace_from_events(store.read("m"), store)
    for trace in (result.trace, from_journal):
        node = trace.find("refunds/support")
        assert node is not None
        notes = [e for e in node.events if e["event"].startswith("approval.")]
        assert [(n["event"], n["call"], n["by"]) for n in notes] == [
            ("approval.approved", "refunds/support/tool#1", getpass.getuser())
        ]


def test_a_replay_notices_a_gate_added_or_removed(tmp_path: Path, desk: ModuleType) -> None:
    journal = tmp_path / "runs.db"
    with pytest.raises(tm.RunWaiting):
        tm.run(desk.flow, {"order_id": "G", "amounts": [500]}, journal=journal, run_id="gated")
    approve("gated", CALL, by="alice", journal=journal)
    tm.resume("gated", desk.flow, journal=journal)
    tm.run(desk.flow, {"order_id": "G", "amounts": [50]}, journal=journal, run_id="free")
    rule = desk.refund.requires_approval
    try:
        desk.refund.requires_approval = False  # the gate was removed from the flow
        with pytest.raises(tm.NonDeterminismError, match="never made this approval call"):
            tm.replay("gated", desk.flow, journal=journal)
        desk.refund.requires_approval = True  # now every refund needs a person
        with pytest.raises(tm.NonDeterminismError) as added:
            tm.replay("free", desk.flow, journal=journal)
        assert added.value.effect_key == f"{CALL}:approval"
    finally:
        desk.refund.requires_approval = rule
    assert refunds(tmp_path) == ["refund G 500.00", "refund G 50.00"]


def test_careless_decisions_record_nothing(tmp_path: Path, desk: ModuleType) -> None:
    journal = tmp_path / "runs.db"
    tm.run(desk.flow, {"order_id": "F1", "amounts": [10]}, journal=journal, run_id="done")
    with pytest.raises(ApprovalError, match=r"run 'done' is not waiting for an approval \(it is "):
        approve("done", CALL, journal=journal)
    with pytest.raises(tm.RunWaiting):
        tm.run(desk.flow, {"order_id": "W1", "amounts": [900]}, journal=journal, run_id="w")
    before = len(events_of(journal, "w"))
    with pytest.raises(ApprovalError, match=r"no call refunds/support/tool#7 waiting.*tool#0"):
        approve("w", "refunds/support/tool#7", journal=journal)
    with pytest.raises(tm.RunNotFound):
        approve("nope", CALL, journal=journal)
    assert len(events_of(journal, "w")) == before
    approve("w", CALL, by="carol", journal=journal)
    with pytest.raises(ApprovalError, match=r"already approved by carol at .*a decision is final"):
        approve("w", CALL, approved=False, by="dave", journal=journal)
    with pytest.raises(ApprovalError, match="already approved by carol"):
        approve("w", CALL, by="carol", journal=journal)
    assert len(events_of(journal, "w")) == before + 1
    assert refunds(tmp_path) == ["refund F1 10.00"]


def test_a_decision_recorded_for_another_call_is_refused(tmp_path: Path, desk: ModuleType) -> None:
    """``typedmesh record`` can write any value: a decision must name its own call."""
    journal = tmp_path / "runs.db"
    for run_id in ("a", "b"):
        with pytest.raises(tm.RunWaiting):
            tm.run(desk.flow, {"order_id": "X", "amounts": [300]}, journal=journal, run_id=run_id)
    approve("a", CALL, by="alice", journal=journal)
    moved = next(e for e in events_of(journal, "a") if e.type == "approval.decided").payload
    decision = {k: moved[k] for k in ("approved", "by", "decided_at", "reason", "call_digest")}
    tm.record_result("b", f"{CALL}:approval", decision, journal=journal, recorded_by="mallory")
    with pytest.raises(ApprovalMismatch, match="for another call"):
        tm.resume("b", desk.flow, journal=journal)
    assert refunds(tmp_path) == []


def test_a_step_calling_the_tool_itself_waits_too(tmp_path: Path, desk: ModuleType) -> None:
    class Ask(BaseModel):
        amount: float

    class Told(BaseModel):
        text: str

    @tm.step(name="direct", scopes={"payments:refund"})
    async def direct(ask: Ask, ctx: tm.RunContext) -> Told:
        try:
            return Told(text=await ctx.call_tool(desk.refund, order_id="D", amount=ask.amount))
        except ApprovalDenied as exc:
            return Told(text=f"denied by {exc.decision.by}")

    journal = tm.MemoryJournal()
    with pytest.raises(tm.RunWaiting):
        tm.run(direct, {"amount": 120}, journal=journal, run_id="x")
    approve("x", "direct/tool#0", approved=False, by="erin", journal=journal)
    assert tm.resume("x", direct, journal=journal).output.text == "denied by erin"
    assert refunds(tmp_path) == []
    with pytest.raises(tm.ConfigurationError, match="requires approval, which waits in a journal"):
        tm.run(direct, {"amount": 120})


def test_requires_approval_takes_a_bool_or_a_predicate() -> None:
    with pytest.raises(tm.ConfigurationError, match="requires_approval must be"):

        @tm.tool(requires_approval="yes")  # type: ignore[arg-type]
        def wrong(x: int) -> int:
            return x

    @tm.tool(requires_approval=True)
    def always(x: int) -> int:
        """Always asks."""
        return x

    args: Any = always.parse_arguments({"x": 1})
    assert always.needs_approval(args) and "requires_approval" in repr(always)


def waiting_refund(tmp_path: Path, desk: ModuleType, run_id: str, order: str, amount: int) -> Path:
    """A run of the desk waiting for approval of one refund; its journal's path."""
    journal = tmp_path / "runs.db"
    with pytest.raises(tm.RunWaiting):
        tm.run(
            desk.flow,
            {"order_id": order, "amounts": [amount]},
            journal=journal,
            run_id=run_id,
            grant={"payments:refund"},
        )
    return journal


def _race_to_decide(
    barrier: Any, journal: str, n: int, results: Any
) -> None:  # pragma: no cover - runs in a spawned process
    barrier.wait()
    try:
        decision = approve("race", CALL, approved=n % 2 == 0, by=f"approver-{n}", journal=journal)
        results.put((n, "decided", decision.approved))
    except Exception as exc:
        results.put((n, type(exc).__name__, str(exc)))


def test_approvers_racing_on_one_call_record_exactly_one_decision(
    tmp_path: Path, desk: ModuleType
) -> None:
    """Eight processes decide the same call at once (half approve, half deny): one
    decision is recorded; every other approver is told who decided, none sees a lease."""
    import multiprocessing

    journal = waiting_refund(tmp_path, desk, "race", "Z9", 500)
    spawn = multiprocessing.get_context("spawn")
    barrier, results = spawn.Barrier(8), spawn.Queue()
    workers = [
        spawn.Process(target=_race_to_decide, args=(barrier, str(journal), n, results))
        for n in range(8)
    ]
    for worker in workers:
        worker.start()
    outcomes = sorted(results.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(timeout=30)

    decided = [o for o in outcomes if o[1] == "decided"]
    assert len(decided) == 1, outcomes
    winner, _, approved = decided[0]
    verb = "approved" if approved else "denied"
    for n, kind, message in outcomes:
        if n != winner:
            assert kind == "ApprovalError", outcomes
            assert f"already {verb} by approver-{winner}" in message
    events = events_of(journal, "race")
    assert [e.type for e in events].count("approval.decided") == 1
    with tm.SQLiteJournal(journal) as store:
        assert tm.verify_run(store, "race").ok
    result = tm.resume("race", desk.flow, journal=journal)
    assert refunds(tmp_path) == (["refund Z9 500.00"] if approved else [])
    assert result.output.status in ("refunded", "denied") or result.output.notes


def test_a_reader_is_not_fooled_by_an_append_between_its_two_reads(
    tmp_path: Path, desk: ModuleType
) -> None:
    """Reading a run is two reads (its head, its events). Another process appending
    between them once made an honest journal look altered (JournalCorrupt)."""
    journal = waiting_refund(tmp_path, desk, "q1", "Q1", 700)
    store = tm.SQLiteJournal(journal)
    read_events = store.read
    appended: list[str] = []

    def read_while_another_process_appends(run_id: str) -> list[tm.Event]:
        if not appended:  # the head was read already: now a decision is committed elsewhere
            appended.append(approve("q1", CALL, by="bob", journal=str(journal)).by)
        return read_events(run_id)

    store.read = read_while_another_process_appends  # type: ignore[method-assign]
    report = tm.verify_run(store, "q1")
    assert appended == ["bob"] and report.ok, report
    assert [e.type for e in store.read("q1")][-1] == "approval.decided"
    store.close()
