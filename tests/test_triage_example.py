"""examples/triage.py: routing, an approval that waits, deps and a session, end to end."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import typedmesh as tm
from typedmesh.journal import open_journal

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "triage.py"


@pytest.fixture
def ex(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The example imported fresh (offline: TYPEDMESH_MODEL unset)."""
    monkeypatch.delenv("TYPEDMESH_MODEL", raising=False)
    spec = importlib.util.spec_from_file_location("typedmesh_example_triage_t", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "typedmesh_example_triage_t", module)
    spec.loader.exec_module(module)
    return module


def events(journal: str, run_id: str, kind: str) -> list[Any]:
    return [e for e in open_journal(journal).read(run_id) if e.type == kind]


def two_turns(ex: ModuleType, journal: str) -> tuple[Any, tm.Session, tm.RunResult[Any]]:
    """Turn 1 (FAQ) finished, turn 2 (the refund) waiting for approval."""
    db = ex.demo_db()
    session = tm.Session("C-311", journal=journal)
    first = session.run(ex.flow, ex.example_input, deps=db)
    with pytest.raises(tm.RunWaiting) as waiting:
        session.run(ex.flow, ex.refund_input, deps=db)
    assert waiting.value.waiting == ["triage_desk/refunds/tool#1:approval"]
    return db, session, first


def test_the_refund_waits_for_approval_then_runs_once(ex: ModuleType, tmp_path: Path) -> None:
    journal = str(tmp_path / "t.db")
    db, _, first = two_turns(ex, journal)
    assert first.output.route == "faq" and first.output.output.article == "help/shipping"
    assert db.refunds == {} and db.orders["ORD-1042"].status == "delivered"  # nothing paid yet

    [pending] = tm.pending_approvals("C-311.turn-2", journal=journal)
    assert pending.tool == "issue_refund"
    assert pending.arguments == {"order_id": "ORD-1042", "amount": 329.0}
    assert pending.call_id == "triage_desk/refunds/tool#1"
    assert "refunds@2.0.0" in str(pending.agent)

    decision = tm.approve("C-311.turn-2", pending.call_id, by="ops@acme", journal=journal)
    assert decision.approved and decision.by == "ops@acme"
    assert db.refunds == {}  # approving runs nothing

    result = tm.resume("C-311.turn-2", ex.flow, journal=journal, deps=db)
    assert result.output.route == "refund"
    assert result.output.output.refund_id == "RF-0001"
    assert result.output.output.amount == 329.0
    [receipt] = db.refunds.values()
    assert receipt.order_id == "ORD-1042" and receipt.amount == 329.0
    assert db.orders["ORD-1042"].status == "refunded"

    started = [e.key for e in events(journal, "C-311.turn-2", "tool.started")]
    assert started == ["triage_desk/refunds/tool#0", "triage_desk/refunds/tool#1"]  # lookup, refund
    [decided] = events(journal, "C-311.turn-2", "approval.decided")
    assert decided.payload["by"] == "ops@acme" and decided.payload["approved"] is True
    # the decision is journaled again when the resumed run passes the router: the same route
    routes = events(journal, "C-311.turn-2", "route.decided")
    assert {(r.payload["key"], r.payload["agent"]["name"]) for r in routes} == {
        ("refund", "refunds")
    }


def test_a_small_refund_runs_without_waiting(ex: ModuleType, tmp_path: Path) -> None:
    db = ex.demo_db()
    ticket = ex.Ticket(customer_id="C-311", order_id="ORD-1077", text="It broke, refund please")
    result = tm.run(ex.flow, ticket, deps=db, journal=str(tmp_path / "t.db"))
    assert result.output.route == "refund" and result.output.output.amount == 59.5
    assert [r.order_id for r in db.refunds.values()] == ["ORD-1077"]


def test_a_denied_refund_moves_no_money(ex: ModuleType, tmp_path: Path) -> None:
    journal = str(tmp_path / "t.db")
    db, _, _ = two_turns(ex, journal)
    tm.approve(
        "C-311.turn-2",
        "triage_desk/refunds/tool#1",
        approved=False,
        by="ops@acme",
        reason="no photo of the damage",
        journal=journal,
    )
    result = tm.resume("C-311.turn-2", ex.flow, journal=journal, deps=db)
    reply = result.output.output
    assert reply.refund_id is None and "not approved" in reply.message
    assert "no photo of the damage" in reply.message
    assert db.refunds == {} and db.orders["ORD-1042"].status == "delivered"


def test_the_sessions_turns_and_replay_identical(ex: ModuleType, tmp_path: Path) -> None:
    journal = str(tmp_path / "t.db")
    db, session, _ = two_turns(ex, journal)
    assert [(t.turn, t.status) for t in session.turns()] == [(1, "finished"), (2, "waiting")]
    tm.approve("C-311.turn-2", "triage_desk/refunds/tool#1", by="ops@acme", journal=journal)
    tm.resume("C-311.turn-2", ex.flow, journal=journal, deps=db)

    turns = tm.Session("C-311", journal=journal).turns()  # rebuilt from the journal
    assert [(t.turn, t.run_id, t.status) for t in turns] == [
        (1, "C-311.turn-1", "finished"),
        (2, "C-311.turn-2", "finished"),
    ]
    assert [t.input["text"] for t in turns] == [ex.example_input.text, ex.refund_input.text]
    assert [t.output["route"] for t in turns] == ["faq", "refund"]
    assert turns[1].previous == "C-311.turn-1"

    for run_id in ("C-311.turn-1", "C-311.turn-2"):  # tools are served: no deps needed
        assert tm.replay(run_id, ex.flow, journal=journal).identical
    assert len(db.refunds) == 1  # the replay refunded nothing


def test_main_walks_through_and_approves(
    ex: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    ex.main()
    out = capsys.readouterr().out
    assert "routed 'faq' -> faq@0.9.0" in out
    assert "routed 'refund' -> refunds@2.0.0" in out
    assert "pending approval: issue_refund" in out
    assert "approved by ops@acme" in out
    assert "refunds issued: 1 ['RF-0001']" in out
    assert "turn 2  finished C-311.turn-2" in out
    ex.main()  # run again: a fresh demo journal, the same walk-through
    assert capsys.readouterr().out == out


def test_main_without_approving_prints_the_command(
    ex: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    ex.main(approve=False)
    out = capsys.readouterr().out
    assert (
        "typedmesh approve C-311.turn-2 'triage_desk/refunds/tool#1' --by ops@acme "
        "--journal triage-demo.db" in out
    )
    assert "refunds issued: 0" in out and "turn 2  waiting" in out
    tm.approve(
        "C-311.turn-2", "triage_desk/refunds/tool#1", by="ops@acme", journal="triage-demo.db"
    )
    ex.resume_main("C-311.turn-2")
    out = capsys.readouterr().out
    assert "refunds issued: 1 ['RF-0001']" in out and "turn 2  finished" in out
