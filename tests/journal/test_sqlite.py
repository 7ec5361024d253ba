"""The SQLite journal: WAL, tampering, corrupt files, newer schemas."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from pydantic import BaseModel

import typedmesh as tm


class Q(BaseModel):
    text: str


class A(BaseModel):
    answer: str


def journaled_run(path: Path, run_id: str = "r1") -> None:
    agent = tm.Agent(
        "a",
        input=Q,
        output=A,
        instructions="Answer. " * 200,
        model=tm.ScriptedModel(lambda r: {"answer": "x" * 50}),
    )
    tm.run(agent, {"text": "hi"}, journal=path, run_id=run_id)


def test_file_is_wal_and_readable_by_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    journaled_run(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    types = [r[0] for r in db.execute("SELECT type FROM events WHERE run_id='r1' ORDER BY seq")]
    assert types[0] == "run.started" and types[-1] == "run.finished"
    assert "model.request" in types and "model.response" in types
    db.close()


def test_tampering_with_one_payload_is_named_by_verify(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    journaled_run(path)
    db = sqlite3.connect(path)
    ((seq, payload),) = db.execute(
        "SELECT seq, payload FROM events WHERE type='model.response'"
    ).fetchall()
    data = json.loads(payload)
    data["response"]["content"] = '{"answer": "forged"}'
    db.execute("UPDATE events SET payload=? WHERE seq=?", (json.dumps(data), seq))
    db.commit()
    db.close()
    store = tm.SQLiteJournal(path)
    report = tm.verify_run(store, "r1")
    assert not report.ok and report.bad_seq == seq and report.bad_type == "model.response"
    assert "altered" in report.reason
    flow = tm.Agent("a", input=Q, output=A, model=tm.ScriptedModel([]))
    before = [(e.seq, e.hash) for e in store.read("r1")]
    with pytest.raises(tm.JournalCorrupt, match=f"event {seq}"):
        tm.replay("r1", flow, journal=store)
    with pytest.raises(tm.JournalCorrupt, match=f"event {seq}"):
        tm.resume("r1", flow, journal=store)
    assert [(e.seq, e.hash) for e in store.read("r1")] == before  # nothing was appended
    store.close()


def test_deleting_an_event_breaks_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    journaled_run(path)
    db = sqlite3.connect(path)
    db.execute("DELETE FROM events WHERE seq=2")
    db.commit()
    db.close()
    report = tm.verify_run(tm.SQLiteJournal(path), "r1")
    assert not report.ok and report.bad_seq == 3 and "gap" in report.reason


def test_tampered_blob_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    journaled_run(path)  # the model request is over the blob threshold
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] >= 1
    db.execute("UPDATE blobs SET data = CAST('forged' AS BLOB)")
    db.commit()
    db.close()
    report = tm.verify_run(tm.SQLiteJournal(path), "r1")
    assert not report.ok and "does not match its digest" in report.reason


def test_garbage_and_truncated_files_are_journal_corrupt(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(tm.JournalCorrupt):
        tm.SQLiteJournal(garbage)
    real = tmp_path / "real.db"
    journaled_run(real)
    store = tm.SQLiteJournal(real)
    store.close()
    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(real.read_bytes()[:1500])
    with pytest.raises(tm.JournalError):
        store = tm.SQLiteJournal(truncated)
        store.read("r1")


def test_newer_schema_is_refused_and_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    journaled_run(path)
    db = sqlite3.connect(path)
    db.execute("INSERT INTO typedmesh_migrations VALUES (99)")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(tm.VersionMismatch, match="99"):
        tm.SQLiteJournal(path)
    assert path.read_bytes() == before


def test_event_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    journaled_run(path)
    db = sqlite3.connect(path)
    db.execute("UPDATE events SET schema_version=2 WHERE seq=1")
    db.commit()
    db.close()
    with pytest.raises(tm.VersionMismatch):
        tm.SQLiteJournal(path).read("r1")


def test_unknown_run_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    journaled_run(path)
    flow = tm.Agent("a", input=Q, output=A, model=tm.ScriptedModel([]))
    with pytest.raises(tm.RunNotFound):
        tm.resume("nope", flow, journal=path)
    with pytest.raises(tm.RunNotFound):
        tm.replay("r1", flow, journal=tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()
