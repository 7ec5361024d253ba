"""The SQLite journal: WAL, read-only opens, locks, a full disk, tampering, old and newer files."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.journal import JOURNAL_SCHEMA_VERSION, Event, open_journal
from typedmesh.journal import sqlite as sqlite_journal
from typedmesh.journal.base import new_owner
from typedmesh.journal.sqlite import MIGRATIONS
from typedmesh.journal.writer import EventLog, JournalSink
from typedmesh.runtime.reducer import trace_from_events
from typedmesh.testing.journal_conformance import chain, refund_flow, snapshot

HERE = Path(__file__).parent
FORMAT_1 = HERE.parent / "journals" / "v1" / "bull_bear.jsonl"  # from journal schema 1


class Q(BaseModel):
    text: str


class A(BaseModel):
    answer: str


@pytest.fixture(autouse=True)
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unsigned runs: a TYPEDMESH_JOURNAL_KEY in the environment would fail their verify."""
    monkeypatch.delenv("TYPEDMESH_JOURNAL_KEY", raising=False)


def journaled_run(path: Path, run_id: str = "r1") -> None:
    agent = tm.Agent(
        "a",
        input=Q,
        output=A,
        instructions="Answer. " * 200,
        model=tm.ScriptedModel(lambda r: {"answer": "x" * 50}),
    )
    with tm.SQLiteJournal(path) as store:  # closed: the WAL is checkpointed into the file
        tm.run(agent, {"text": "hi"}, journal=store, run_id=run_id)


def test_file_is_wal_and_readable_by_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    journaled_run(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    types = [r[0] for r in db.execute("SELECT type FROM events WHERE run_id='r1' ORDER BY seq")]
    assert types[0] == "run.started" and types[-1] == "run.finished"
    assert "model.request" in types and "model.response" in types
    head = db.execute("SELECT head_seq, status, owner FROM runs WHERE run_id='r1'").fetchone()
    assert head == (len(types) - 1, "finished", None)
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
    before = snapshot(store, "r1")
    with pytest.raises(tm.JournalCorrupt, match=f"event {seq}"):
        tm.replay("r1", flow, journal=store)
    with pytest.raises(tm.JournalCorrupt, match=f"event {seq}"):
        tm.resume("r1", flow, journal=store)
    assert snapshot(store, "r1") == before  # nothing was appended
    store.close()


def test_deleting_an_event_breaks_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    journaled_run(path)
    db = sqlite3.connect(path)
    db.execute("DELETE FROM events WHERE seq=2")
    db.commit()
    db.close()
    with tm.SQLiteJournal(path) as store:
        report = tm.verify_run(store, "r1")
    assert not report.ok and report.bad_seq == 3 and "gap" in report.reason


def test_tampered_blob_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    journaled_run(path)  # the instructions are over the blob threshold
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] >= 1
    db.execute("UPDATE blobs SET data = CAST('forged' AS BLOB)")
    db.commit()
    db.close()
    with tm.SQLiteJournal(path) as store:
        report = tm.verify_run(store, "r1")
    assert not report.ok and "does not match its digest" in report.reason


def test_garbage_and_truncated_files_are_journal_corrupt(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(tm.JournalCorrupt):
        tm.SQLiteJournal(garbage)
    real = tmp_path / "real.db"
    journaled_run(real)
    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(real.read_bytes()[:1500])
    with pytest.raises(tm.JournalError):
        tm.SQLiteJournal(truncated).read("r1")


def test_unknown_run_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    journaled_run(path)
    flow = tm.Agent("a", input=Q, output=A, model=tm.ScriptedModel([]))
    with pytest.raises(tm.RunNotFound):
        tm.resume("nope", flow, journal=path)
    with pytest.raises(tm.RunNotFound):
        tm.replay("r1", flow, journal=tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()


def test_a_closed_journal_raises_a_typed_error(tmp_path: Path) -> None:
    store = tm.SQLiteJournal(tmp_path / "runs.db")
    store.close()
    for call in (
        lambda: store.read("r"),
        lambda: store.head("r"),
        lambda: store.runs(),
        lambda: store.blob("sha256:" + "0" * 64),
        lambda: store.create_run("r", new_owner()),
    ):
        with pytest.raises(tm.JournalError) as info:
            call()
        assert not isinstance(info.value, tm.JournalCorrupt)


# -- read-only ------------------------------------------------------------------------------


def test_read_only_open_reads_everything_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    made = refund_flow()
    with tm.SQLiteJournal(path) as store:
        tm.run(made.flow, {"order_id": "A1"}, journal=store, run_id="r")
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    ro = open_journal(path, readonly=True)
    assert ro.readonly
    (info,) = ro.runs()
    assert info.run_id == "r" and info.status == "finished" and info.events == 10
    events = ro.read("r")
    trace = trace_from_events(events, ro)
    assert (trace.name, trace.status) == ("clerk", "ok") and trace.usage.total_tokens > 0
    report = tm.verify_run(ro, "r")
    assert report.ok and report.events == 10
    replayed = tm.replay("r", made.flow, journal=ro)
    assert replayed.identical and replayed.executed == 0
    assert tm.replay("r", made.flow, journal=path).identical  # a path is opened read-only
    head = ro.head("r")
    lease = tm.journal.Lease("r", "me", head.token, 0.0)
    for write in (
        lambda: ro.create_run("new", new_owner()),
        lambda: ro.acquire("r", new_owner()),
        lambda: ro.renew(lease),
        lambda: ro.release(lease, "failed"),
        lambda: ro.append(lease, chain("r", [("note", {})]), {}),
        lambda: ro.import_run(chain("other", [("note", {})]), {}),
    ):
        with pytest.raises(tm.JournalError, match="read-only"):
            write()
    with pytest.raises(tm.JournalError, match="read-only"):
        tm.resume("r", made.flow, journal=ro)
    with pytest.raises(tm.JournalError, match="read-only"):
        tm.run(made.flow, {"order_id": "B2"}, journal=ro, run_id="new")
    ro.close()
    assert made.refunds == ["A1"]
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    wal = tmp_path / "runs.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # sqlite may leave an empty WAL


def test_read_only_open_of_a_missing_or_old_file(tmp_path: Path) -> None:
    with pytest.raises(tm.RunNotFound):
        open_journal(tmp_path / "missing.db", readonly=True)
    assert not (tmp_path / "missing.db").exists()
    old = tmp_path / "old.db"
    schema_1_file(old)
    before = old.read_bytes()
    with pytest.raises(tm.JournalError, match="open it writable once"):
        open_journal(old, readonly=True)
    assert old.read_bytes() == before


# -- locks and a full disk ------------------------------------------------------------------


def test_a_locked_journal_is_a_typed_journal_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_journal, "BUSY_TIMEOUT_MS", 100)
    path = tmp_path / "runs.db"
    store = tm.SQLiteJournal(path)
    lease = store.create_run("r", new_owner(), ttl=60)
    sink = JournalSink(store, lease)
    log = EventLog("r", sinks=[sink])
    log.emit("run.started", "flow", {"flow": "flow"})
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        started = time.monotonic()
        with pytest.raises(tm.JournalError, match="locked by another process") as info:
            sink.flush()
        assert time.monotonic() - started < 3  # gave up after the busy timeout
        assert not isinstance(info.value, tm.JournalCorrupt | tm.LeaseLost)
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        with pytest.raises(tm.JournalError, match="locked"):
            store.create_run("other", new_owner())
        with pytest.raises(tm.JournalError, match="locked"):
            store.acquire("r", new_owner())
        with pytest.raises(tm.JournalError, match="locked"):
            tm.run(refund_flow().flow, {"order_id": "A1"}, journal=store, run_id="run")
        assert store.head("r").seq == -1  # reads go on under WAL
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    again = store.append(lease, chain("r", [("run.started", {"flow": "flow"})]), {})
    assert again.token == lease.token and store.head("r").seq == 0
    store.close()


def test_a_full_disk_is_a_typed_journal_error_and_writes_nothing(tmp_path: Path) -> None:
    store = tm.SQLiteJournal(tmp_path / "runs.db")
    lease = store.create_run("r", new_owner(), ttl=60)
    sink = JournalSink(store, lease)
    log = EventLog("r", sinks=[sink])
    log.emit("run.started", "flow", {"flow": "flow"})
    sink.flush()
    before = snapshot(store, "r")
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count={pages}")  # the disk fills up here
    log.emit("model.request", "flow", {"request": os.urandom(100_000).hex()})
    with pytest.raises(tm.JournalError, match="disk is full") as info:
        sink.flush()
    assert not isinstance(info.value, tm.JournalCorrupt)
    assert snapshot(store, "r") == before  # the transaction rolled back whole
    store.close()


# -- old and newer files ----------------------------------------------------------------------


def format_1_run() -> tuple[list[dict[str, object]], dict[str, str]]:
    events, blobs = [], {}
    for line in FORMAT_1.read_text().splitlines():
        record = json.loads(line)
        if "event" in record:
            events.append(record["event"])
        else:
            blobs[record["blob"]] = record["data"]
    return events, blobs


def schema_1_file(path: Path) -> list[Event]:
    """A journal as typedmesh wrote it before journal schema 2: the golden run and a crash."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(MIGRATIONS[0])
    db.execute("CREATE TABLE typedmesh_migrations (version INTEGER NOT NULL)")
    db.execute("INSERT INTO typedmesh_migrations VALUES (1)")
    records, blobs = format_1_run()
    crashed = chain(
        "old-crashed",
        [("run.started", {"flow": "old", "input": {}}), ("step.started", {"name": "x"})],
        schema_version=1,
    )
    rows = [Event.from_dict(r) for r in records] + crashed
    db.executemany(
        "INSERT INTO events (run_id, seq, type, key, span_id, parent_span_id, path, agent, ts, "
        "payload, prev_hash, hash, schema_version) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [
            (
                e.run_id,
                e.seq,
                e.type,
                e.key,
                e.span_id,
                e.parent_span_id,
                e.path,
                e.agent_json,
                e.ts,
                e.payload_json,
                e.prev_hash,
                e.hash,
                e.schema_version,
            )
            for e in rows
        ],
    )
    db.executemany("INSERT INTO blobs VALUES (?, ?)", [(d, t.encode()) for d, t in blobs.items()])
    db.close()
    return rows


def test_a_schema_1_file_migrates_and_gets_heads_backfilled(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    rows = schema_1_file(path)
    golden = [e for e in rows if e.run_id != "old-crashed"]
    with tm.SQLiteJournal(path) as store:
        versions = [v for (v,) in store._db.execute("SELECT version FROM typedmesh_migrations")]
        assert versions == [1, 2, 3]
        head = store.head(golden[0].run_id)
        assert (head.seq, head.hash, head.status) == (golden[-1].seq, golden[-1].hash, "finished")
        assert head.owner is None and head.signature is None and head.flow == "debate"
        crashed = store.head("old-crashed")
        assert (crashed.seq, crashed.status) == (1, "incomplete")
        runs = {r.run_id: r for r in store.runs()}
        assert runs[golden[0].run_id].events == len(golden)
        assert runs["old-crashed"].status == "incomplete"
        report = tm.verify_run(store, golden[0].run_id)
        assert report.ok and report.events == len(golden)
        assert tm.verify_run(store, "old-crashed").ok
        # a migrated run is taken like any other: its head anchors the next append
        lease = store.acquire("old-crashed", new_owner())
        log = EventLog("old-crashed", seq=2, prev_hash=crashed.hash)
        log.sinks.append(JournalSink(store, lease, batch_size=1))
        log.emit("run.resumed", "flow", {})
        assert store.head("old-crashed").seq == 2 and tm.verify_run(store, "old-crashed").ok
    with tm.SQLiteJournal(path) as again:  # opening a migrated file again changes nothing
        assert [v for (v,) in again._db.execute("SELECT version FROM typedmesh_migrations")] == [
            1,
            2,
            3,
        ]


def test_a_migration_another_process_already_ran_is_not_run_twice(tmp_path: Path) -> None:
    """Two processes open an old file at once: the slower one read the version before the
    faster one migrated. It re-reads it under the write lock and finds nothing to do."""
    path = tmp_path / "old.db"
    schema_1_file(path)
    tm.SQLiteJournal(path).close()  # the faster process: migrated to 2

    class Slow(tm.SQLiteJournal):
        def _stored_version(self) -> int:
            return 1  # what it read before the other process committed

    with Slow(path) as slow:
        assert slow.runs()
    with tm.SQLiteJournal(path) as store:
        versions = [v for (v,) in store._db.execute("SELECT version FROM typedmesh_migrations")]
    assert versions == [1, 2, 3]


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
    with pytest.raises(tm.VersionMismatch, match="99"):
        open_journal(path, readonly=True)
    assert path.read_bytes() == before


def test_newer_rollback_journal_file_is_not_switched_to_wal(tmp_path: Path) -> None:
    """A newer typedmesh might not use WAL: refusing its file must not convert it."""
    path = tmp_path / "newer.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE typedmesh_migrations (version INTEGER NOT NULL)")
    db.execute("INSERT INTO typedmesh_migrations VALUES (?)", (len(MIGRATIONS) + 1,))
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(tm.VersionMismatch):
        tm.SQLiteJournal(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["newer.db"]


def test_event_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    journaled_run(path)
    db = sqlite3.connect(path)
    db.execute("UPDATE events SET schema_version=? WHERE seq=1", (JOURNAL_SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with tm.SQLiteJournal(path) as store, pytest.raises(tm.VersionMismatch):
        store.read("r1")
