"""Integrity against an attacker with write access to the SQLite file, and old journals.

The conformance suite cuts tails and forges runs through each backend's test
hooks; here the attacker uses plain SQL on the file, as anyone who can open
it can.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

import typedmesh as tm
from typedmesh.journal import Journal, export_jsonl, import_jsonl, load_payload
from typedmesh.journal.anchor import KEY_ENV
from typedmesh.journal.events import chain_hash, dumps
from typedmesh.testing.journal_conformance import RefundFlow, refund_flow, snapshot

FORMAT_1_DIR = Path(__file__).parent.parent / "journals" / "v1"  # journals from before heads
FORMAT_1 = FORMAT_1_DIR / "bull_bear.jsonl"
FORMAT_1_FILES = sorted(FORMAT_1_DIR.glob("*.jsonl"))
KEY = "a-key-the-forger-does-not-have"

CUTS = {
    "the last event": "seq = (SELECT MAX(seq) FROM events WHERE run_id = :run)",
    "the last seven": "seq > (SELECT MAX(seq) FROM events WHERE run_id = :run) - 7",
    "everything from tool.started on": (
        "seq >= (SELECT MIN(seq) FROM events WHERE run_id = :run AND type = 'tool.started')"
    ),
}


@pytest.fixture(autouse=True)
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


@pytest.fixture
def sql(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """The attacker's own connection to the journal file."""
    db = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
    yield db
    db.close()


def refund_run(path: Path, run_id: str = "r") -> RefundFlow:
    made = refund_flow()
    with tm.SQLiteJournal(path) as store:
        tm.run(made.flow, {"order_id": "A1"}, journal=store, run_id=run_id)
    assert made.refunds == ["A1"]
    return made


@pytest.mark.parametrize("cut", list(CUTS))
def test_a_tail_cut_with_sql_is_caught_and_resume_refunds_nothing(
    cut: str, tmp_path: Path, sql: sqlite3.Connection
) -> None:
    path = tmp_path / "runs.db"
    made = refund_run(path)
    total = sql.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    deleted = sql.execute(f"DELETE FROM events WHERE run_id = :run AND {CUTS[cut]}", {"run": "r"})
    count = deleted.rowcount
    assert count >= 1
    with tm.SQLiteJournal(path) as store:
        report = tm.verify_run(store, "r")
        assert not report.ok and report.bad_type == "(head)"
        assert f"{count} event(s) were deleted from the tail" in report.reason
        assert f"head is event {total - 1}" in report.reason
        before = snapshot(store, "r")
        with pytest.raises(tm.JournalCorrupt, match="deleted from the tail"):
            tm.resume("r", made.flow, journal=store)
        assert made.refunds == ["A1"]  # the refund did not run again
        assert snapshot(store, "r") == before  # nothing appended
    with pytest.raises(tm.JournalCorrupt, match="deleted from the tail"):
        tm.replay("r", made.flow, journal=path)


def forge(store: Journal, sql: sqlite3.Connection, run_id: str = "r") -> None:
    """Rewrite the refund's result, recompute every later hash and the head's hash."""
    events = store.read(run_id)
    start = next(e.seq for e in events if e.type == "tool.result")
    events[start].payload_json = dumps({"result": "refund declined"})
    for event in events[start:]:
        event.prev_hash = events[event.seq - 1].hash
        event.hash = chain_hash(event)
        sql.execute(
            "UPDATE events SET payload = ?, prev_hash = ?, hash = ? WHERE run_id = ? AND seq = ?",
            (event.payload_json, event.prev_hash, event.hash, run_id, event.seq),
        )
    sql.execute("UPDATE runs SET head_hash = ? WHERE run_id = ?", (events[-1].hash, run_id))


def test_a_forgery_with_every_hash_recomputed_is_caught_by_the_signature(
    tmp_path: Path, sql: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``TYPEDMESH_JOURNAL_KEY`` set, the head's HMAC is what a forger cannot redo.

    Without a key the same forgery verifies: chain and head catch accidents, cut tails
    and edits by anyone who does not also rewrite the head, but a writer of the file who
    recomputes every hash and the head is only caught by a signature. Set the key where
    journals must stand up as evidence.
    """
    path = tmp_path / "runs.db"
    monkeypatch.setenv(KEY_ENV, KEY)
    made = refund_run(path)
    with tm.SQLiteJournal(path) as store:
        report = tm.verify_run(store, "r")
        assert report.ok and report.signed
        forge(store, sql)
        report = tm.verify_run(store, "r")
        assert not report.ok and report.bad_type == "(head)"
        assert "signature is wrong" in report.reason
        with pytest.raises(tm.JournalCorrupt, match="signature"):
            tm.replay("r", made.flow, journal=store)
        sql.execute("UPDATE runs SET head_sig = NULL")  # dropping the signature: no better
        assert "not signed" in tm.verify_run(store, "r").reason
        monkeypatch.delenv(KEY_ENV)
        assert tm.verify_run(store, "r").ok  # the documented limit without a key
        forged = store.read("r")
        result = next(e for e in forged if e.type == "tool.result")
        assert load_payload(result, store, "result") == "refund declined"


def test_a_cut_that_also_rewrites_the_head_needs_the_key(
    tmp_path: Path, sql: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cut from tool.started on and move the head back to match: only the key tells."""
    path = tmp_path / "runs.db"
    monkeypatch.setenv(KEY_ENV, KEY)
    made = refund_run(path)
    sql.execute(
        f"DELETE FROM events WHERE run_id = :run AND {CUTS['everything from tool.started on']}",
        {"run": "r"},
    )
    sql.execute(
        "UPDATE runs SET head_seq = (SELECT MAX(seq) FROM events), "
        "head_hash = (SELECT hash FROM events ORDER BY seq DESC LIMIT 1), status = 'incomplete'"
    )
    with tm.SQLiteJournal(path) as store:
        report = tm.verify_run(store, "r")
        assert not report.ok and "signature is wrong" in report.reason
        before = snapshot(store, "r")
        with pytest.raises(tm.JournalCorrupt, match="signature"):
            tm.resume("r", made.flow, journal=store)
        assert made.refunds == ["A1"] and snapshot(store, "r") == before
        monkeypatch.delenv(KEY_ENV)
        assert tm.verify_run(store, "r").ok  # no key: a consistent prefix is all there is


def test_blob_references_are_covered_by_the_hash(tmp_path: Path, sql: sqlite3.Connection) -> None:
    """Pointing an event's ``refs`` at another blob is an edit of the event."""
    path = tmp_path / "runs.db"
    refund_run(path)
    seq, refs = sql.execute(
        "SELECT seq, refs FROM events WHERE refs IS NOT NULL ORDER BY seq LIMIT 1"
    ).fetchone()
    other = sql.execute("SELECT digest FROM blobs ORDER BY digest LIMIT 1").fetchone()[0]
    changed = json.loads(refs)
    name = next(iter(changed))
    changed[name] = [other, True] if changed[name][0] != "parts" else ["parts", [other]]
    sql.execute("UPDATE events SET refs = ? WHERE seq = ?", (json.dumps(changed), seq))
    with tm.SQLiteJournal(path) as store:
        report = tm.verify_run(store, "r")
    assert not report.ok and report.bad_seq == seq and "altered" in report.reason


# -- journals from before heads (format 1) --------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Journal]:
    store: Journal = (
        tm.MemoryJournal() if request.param == "memory" else tm.SQLiteJournal(tmp_path / "j.db")
    )
    yield store
    store.close()


def test_the_format_1_fixtures_are_there() -> None:
    assert {p.stem for p in FORMAT_1_FILES} >= {"bull_bear", "support_pipeline"}


@pytest.mark.parametrize("golden", FORMAT_1_FILES, ids=lambda p: p.stem)
def test_a_format_1_golden_journal_imports_and_verifies(
    golden: Path, journal: Journal, tmp_path: Path
) -> None:
    lines = golden.read_text().splitlines()
    assert not any(line.startswith('{"head"') for line in lines)  # from before heads
    _, run_id = import_jsonl(golden, into=journal)
    events = journal.read(run_id)
    assert {e.schema_version for e in events} == {1}
    head = journal.head(run_id)
    assert (head.seq, head.hash) == (events[-1].seq, events[-1].hash)  # the last event anchors
    assert head.signature is None and head.status == "finished"
    assert head.flow == events[0].payload["flow"]
    report = tm.verify_run(journal, run_id)
    assert report.ok and report.events == len(events)
    request = next(e for e in events if e.type == "model.request")
    assert "messages" in load_payload(request, journal, "request")  # format 1 blob markers
    # exported again, it carries its head from now on
    path = tmp_path / "again.jsonl"
    export_jsonl(journal, run_id, path)
    head_line = json.loads(path.read_text().splitlines()[-1])["head"]
    assert (head_line["seq"], head_line["hash"]) == (head.seq, head.hash)
    copy, _ = import_jsonl(path)
    assert tm.verify_run(copy, run_id).ok


def test_a_format_1_journal_is_unsigned_once_a_key_is_set(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Format 1 predates signatures: with a key set it verifies as ``not signed``."""
    _, run_id = import_jsonl(FORMAT_1, into=journal)
    monkeypatch.setenv(KEY_ENV, KEY)
    report = tm.verify_run(journal, run_id)
    assert not report.ok and "not signed" in report.reason


def test_a_format_1_journal_with_a_cut_tail_cannot_tell(journal: Journal, tmp_path: Path) -> None:
    """Format 1 carried no head: a cut at a step boundary still verifies (why heads came)."""
    lines = FORMAT_1.read_text().splitlines()
    events = [i for i, line in enumerate(lines) if line.startswith('{"event"')]
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(line for i, line in enumerate(lines) if i != events[-1]) + "\n")
    _, run_id = import_jsonl(cut, into=journal)
    assert tm.verify_run(journal, run_id).ok
    assert journal.head(run_id).status == "incomplete"  # but it no longer looks finished
