"""The SQLite state store: the conformance suite, and what only SQLite has to say
(a file shared with the journal, a locked or unreadable file, its schema row, query
plans that use its indexes, a forked child)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

import typedmesh as tm
from typedmesh.errors import StaleVersion, StateUnavailable
from typedmesh.state import StateStore, Writer, open_store
from typedmesh.state.sqlite import STATE_SCHEMA_VERSION, SQLiteStateStore, _prefix_end
from typedmesh.testing.journal_conformance import refund_flow
from typedmesh.testing.state_conformance import StateConformance


class TestSQLiteState(StateConformance):
    """Each store its own file; ``reopen`` is a new connection to the same file."""

    def make_store(self) -> StateStore:
        self.count = getattr(self, "count", 0) + 1
        return SQLiteStateStore(self.tmp_path / f"state{self.count}.db")

    def reopen(self, store: StateStore) -> StateStore:
        assert isinstance(store, SQLiteStateStore)
        return SQLiteStateStore(store.path)


def tables(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        db.close()


@pytest.mark.parametrize("state_first", [True, False])
def test_the_store_shares_the_journals_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_first: bool
) -> None:
    monkeypatch.delenv("TYPEDMESH_JOURNAL_KEY", raising=False)
    path = tmp_path / ".typedmesh" / "runs.db"
    if state_first:
        with SQLiteStateStore(path) as store:
            store.create("order:1", {"qty": 1}, writer=Writer(run_id="r1"))
    with tm.SQLiteJournal(path) as journal:
        made = refund_flow()
        tm.run(made.flow, {"order_id": "A1"}, journal=journal, run_id="r1")
        with SQLiteStateStore(path) as store:
            store.update("order:1", lambda v: {"qty": v["qty"] + 1}, default={"qty": 0})
            assert tm.verify_run(journal, "r1").ok
    assert {"events", "runs", "state_versions", "state_keys", "state_schema"} <= tables(path)
    assert not {t for t in tables(path) if t.startswith("state_")} - {
        "state_versions",
        "state_keys",
        "state_schema",
    }
    with SQLiteStateStore(path) as store, tm.SQLiteJournal(path) as journal:
        got = store.get("order:1")
        assert got is not None and got.value == {"qty": 2 if state_first else 1}
        assert tm.verify_run(journal, "r1").ok
        assert [r.run_id for r in journal.runs()] == ["r1"]


def test_the_schema_version_is_a_row_and_a_newer_file_is_refused_untouched(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    SQLiteStateStore(path).close()
    db = sqlite3.connect(path, isolation_level=None)
    assert db.execute("SELECT component, version FROM state_schema").fetchall() == [
        ("state", STATE_SCHEMA_VERSION)
    ]
    db.execute("UPDATE state_schema SET version = ?", (STATE_SCHEMA_VERSION + 1,))
    db.close()
    with pytest.raises(StateUnavailable, match="upgrade typedmesh") as caught:
        SQLiteStateStore(path)
    assert str(path) in str(caught.value) and caught.value.store == str(path)


def test_a_locked_database_beyond_the_timeout_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStateStore(path, busy_timeout=0.1)
    store.create("k", 1)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    try:
        with pytest.raises(StateUnavailable, match="locked") as caught:
            store.put("k", 2, expected_version=1)
        assert str(path) in str(caught.value)
        got = store.get("k")  # reads go on under WAL
        assert got is not None and got.version == 1
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.put("k", 2, expected_version=1).version == 2
    store.close()


def test_an_unreadable_file_is_unavailable_naming_it(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StateUnavailable, match="not a readable SQLite database") as caught:
        SQLiteStateStore(garbage)
    assert str(garbage) in str(caught.value)
    assert garbage.read_bytes() == b"this is not a database at all" * 100
    with pytest.raises(StateUnavailable, match="directory"):
        SQLiteStateStore(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateUnavailable, match=str(blocker)):
        SQLiteStateStore(blocker / "sub" / "state.db")


def test_a_closed_store_is_unavailable(tmp_path: Path) -> None:
    store = SQLiteStateStore(tmp_path / "state.db")
    store.create("k", 1)
    store.close()
    store.close()
    with pytest.raises(StateUnavailable, match="closed"):
        store.get("k")
    with pytest.raises(StateUnavailable, match="closed"):
        store.put("k", 2, expected_version=1)


def test_options_and_open_store(tmp_path: Path) -> None:
    for durability in ("off", "normal", "full"):
        with SQLiteStateStore(tmp_path / f"{durability}.db", durability=durability) as store:
            store.create("k", durability)
            db = store._db
            assert db is not None
            level = db.execute("PRAGMA synchronous").fetchone()[0]
            assert level == {"off": 0, "normal": 1, "full": 2}[durability]
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(ValueError, match="durability"):
        SQLiteStateStore(tmp_path / "x.db", durability="fast")  # type: ignore[arg-type]
    with SQLiteStateStore(tmp_path / "small.db", max_value_bytes=10) as store:
        assert store.max_value_bytes == 10
        with pytest.raises(tm.errors.InvalidStateValue):
            store.create("k", "x" * 20)
    for url in (str(tmp_path / "a.db"), f"sqlite://{tmp_path / 'b.db'}", tmp_path / "c.db"):
        opened = open_store(url)
        try:
            assert isinstance(opened, SQLiteStateStore) and opened.path.parent == tmp_path
        finally:
            opened.close()


def test_reads_and_writes_use_the_indexes(tmp_path: Path) -> None:
    with SQLiteStateStore(tmp_path / "state.db") as store:
        store.create("k", 1, writer=Writer(run_id="r", write_id="w"))
        db = store._db
        assert db is not None
        queries = {
            "by write id": (
                "SELECT version FROM state_versions WHERE key = ? AND write_id = ?",
                ("k", "w"),
            ),
            "history": ("SELECT * FROM state_versions WHERE key = ? ORDER BY version", ("k",)),
            "writes by run": (
                "SELECT * FROM state_versions WHERE run_id IN (SELECT value FROM json_each(?)) "
                "AND run_id IS NOT NULL ORDER BY seq",
                ('["r"]',),
            ),
            "keys": (
                "SELECT key FROM state_keys WHERE live AND key >= ? AND key < ? ORDER BY key",
                ("a", "b"),
            ),
        }
        for name, (sql, params) in queries.items():
            plan = " ".join(str(r[3]) for r in db.execute("EXPLAIN QUERY PLAN " + sql, params))
            assert "SCAN state_" not in plan, (name, plan)


def test_prefix_end_is_the_least_string_above_the_prefix() -> None:
    assert _prefix_end("ab") == "ac"
    assert _prefix_end("a\U0010ffff") == "b"
    assert _prefix_end("\U0010ffff\U0010ffff") is None
    assert _prefix_end("a\ud7ff") == "a\ue000"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_writes_through_its_own_connection(tmp_path: Path) -> None:
    store = SQLiteStateStore(tmp_path / "state.db")
    store.create("k", 0)
    pid = os.fork()
    if pid == 0:  # the child: exit status says what happened
        code = 1
        try:
            store.update("k", lambda v: v + 1, writer=Writer(by="child"))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    got = store.get("k")  # the parent's connection still works
    assert got is not None and (got.value, got.version) == (1, 2)
    assert store.history("k")[-1].writer.by == "child"
    with pytest.raises(StaleVersion):
        store.put("k", 5, expected_version=1)
    store.close()
