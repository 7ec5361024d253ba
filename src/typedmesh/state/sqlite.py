"""The embedded default state store: SQLite tables in one file, WAL mode.

The file may be the journal's (``.typedmesh/runs.db``): every table and index
here is named ``state_*``, and the store keeps its own schema version as a
row of ``state_schema``, so neither ever touches the other's.

``state_versions`` holds every version of every key (its rowid is the write
order), ``state_keys`` each key's head: its last version and whether that is
a live value or a delete. A write is one ``BEGIN IMMEDIATE`` transaction:
look the write id up (a unique index on (key, write_id)), check the live
version, insert the version row, move the head. So concurrent writers, in
threads or in processes, are serialized by SQLite's write lock, a lost race
writes nothing and a retried write never applies twice.

One connection per store, shared by its threads under a lock (a process that
forks gets a new connection in the child). A write waits up to
``busy_timeout`` seconds for another process's transaction, then fails with
``StateUnavailable`` naming the file.

``durability`` sets SQLite's fsync level, which decides what a power failure
(not a process crash: a killed process loses nothing committed) may lose:
``"off"`` may lose recent commits and, rarely, corrupt the file; ``"normal"``
(default, WAL) may lose the last commits but stays consistent; ``"full"``
fsyncs every commit and loses nothing committed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from .._sqlite import open_when_free
from ..errors import StaleVersion, StateUnavailable
from .base import StateRecord, StateStore, Writer

__all__ = ["STATE_SCHEMA_VERSION", "SQLiteStateStore"]

_getpid = os.getpid

Durability = Literal["off", "normal", "full"]
_SYNCHRONOUS = {"off": "OFF", "normal": "NORMAL", "full": "FULL"}

STATE_SCHEMA_VERSION = 1
"""The newest ``state_*`` schema this code reads and writes."""

MIGRATIONS: list[str] = [
    # 1: never edit a shipped migration; append a new one
    """
    CREATE TABLE IF NOT EXISTS state_versions (
        seq INTEGER PRIMARY KEY, key TEXT NOT NULL, version INTEGER NOT NULL, value TEXT,
        written_at REAL NOT NULL, run_id TEXT, step_path TEXT, agent TEXT, write_id TEXT,
        by TEXT);
    CREATE UNIQUE INDEX IF NOT EXISTS state_versions_key ON state_versions (key, version);
    CREATE UNIQUE INDEX IF NOT EXISTS state_versions_write_id
        ON state_versions (key, write_id) WHERE write_id IS NOT NULL;
    CREATE INDEX IF NOT EXISTS state_versions_run_id
        ON state_versions (run_id) WHERE run_id IS NOT NULL;
    CREATE TABLE IF NOT EXISTS state_keys (
        key TEXT PRIMARY KEY, version INTEGER NOT NULL, live INTEGER NOT NULL) WITHOUT ROWID;
    """,
]
assert len(MIGRATIONS) == STATE_SCHEMA_VERSION

_COLUMNS = "key, version, value, written_at, run_id, step_path, agent, write_id, by"
_BY_WRITE_ID = "SELECT version FROM state_versions WHERE key = ? AND write_id = ?"
_HEAD = "SELECT version, live FROM state_keys WHERE key = ?"
# the head and, in one statement, the version a write id already made (no head: no
# version of the key at all, so none made by that write id either)
_HEAD_OR_DONE = (
    "SELECT version, live, (SELECT version FROM state_versions WHERE key = ?1 AND write_id = ?2) "
    "FROM state_keys WHERE key = ?1"
)
_VALUE = "SELECT value FROM state_versions WHERE key = ? AND version = ?"
_INSERT = (
    "INSERT INTO state_versions (key, version, value, written_at, run_id, step_path, agent, "
    "write_id, by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_MOVE_HEAD = (
    "INSERT INTO state_keys (key, version, live) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET version = excluded.version, live = excluded.live"
)
_READ = (
    "SELECT v.version, v.value FROM state_keys k JOIN state_versions v "
    "ON v.key = k.key AND v.version = k.version WHERE k.key = ? AND k.live"
)


class SQLiteStateStore(StateStore):
    """A state store in one SQLite file (created, with its parent directory, if missing).

    ``busy_timeout`` is how many seconds a write waits for another process's
    write before ``StateUnavailable``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_value_bytes: int | None = None,
        durability: Durability = "normal",
        busy_timeout: float = 5.0,
    ) -> None:
        if durability not in _SYNCHRONOUS:
            raise ValueError(
                f"durability must be one of {sorted(_SYNCHRONOUS)}, got {durability!r}"
            )
        if busy_timeout < 0:
            raise ValueError(f"busy_timeout must be >= 0 seconds, got {busy_timeout}")
        self.path = Path(path)
        self.url = str(self.path)
        if max_value_bytes is not None:
            self.max_value_bytes = max_value_bytes
        self.durability: Durability = durability
        self.busy_timeout = busy_timeout
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._closed = False
        if self.path.is_dir():
            raise StateUnavailable(
                f"cannot open the state store at {self.path}: it is a directory",
                store=self.url,
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateUnavailable(
                f"cannot open the state store at {self.path}: {exc}", store=self.url
            ) from exc
        self._db = self._connect()

    # -- connection ----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            return open_when_free(self._connect_once, timeout_s=self.busy_timeout)
        except sqlite3.Error as exc:
            raise StateUnavailable(
                f"cannot open the state store at {self.path}: {_explain(exc)}",
                store=self.url,
            ) from exc

    def _connect_once(self) -> sqlite3.Connection:
        """Connect, set the connection up and migrate; on failure, keep nothing open."""
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            self._migrate(db, before_wal=True)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={_SYNCHRONOUS[self.durability]}")
            # checkpoint (and fsync) every ~40 MB of WAL rather than every 4 MB, as the
            # journal does: a commit stays one WAL append
            db.execute("PRAGMA wal_autocheckpoint=10000")
            self._migrate(db, before_wal=False)
        except BaseException:
            if db is not None:  # a refused file keeps no connection
                db.close()
            raise
        return db

    def _migrate(self, db: sqlite3.Connection, *, before_wal: bool) -> None:
        """Bring the ``state_*`` tables to ``STATE_SCHEMA_VERSION`` (refusing a newer file).

        Called before WAL is switched on only to refuse a newer file untouched."""
        current = _stored_version(db)
        self._check_version(current)
        if before_wal or current == STATE_SCHEMA_VERSION:
            return
        # one process migrates; another opening at the same moment waits for the write
        # lock, re-reads the version and finds nothing to do
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS state_schema "
                "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
            current = _stored_version(db)
            self._check_version(current)
            for version in range(current + 1, STATE_SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1].split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute(
                "INSERT INTO state_schema (component, version) VALUES ('state', ?) "
                "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                (STATE_SCHEMA_VERSION,),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _check_version(self, current: int) -> None:
        if current > STATE_SCHEMA_VERSION:
            raise StateUnavailable(
                f"cannot open the state store at {self.path}: it was written with state "
                f"schema {current}; this typedmesh reads up to {STATE_SCHEMA_VERSION} "
                "(upgrade typedmesh)",
                store=self.url,
            )

    def _conn(self) -> sqlite3.Connection:
        """The open connection (a new one in a forked child); call under the lock."""
        db = self._db
        if db is None or self._pid != _getpid():
            if self._closed:
                raise StateUnavailable(f"the state store at {self.path} is closed", store=self.url)
            # a connection inherited across fork() must not be used (nor closed) here
            self._pid = os.getpid()
            self._db = db = self._connect()
        return db

    @contextmanager
    def _using(self, what: str) -> Iterator[sqlite3.Connection]:
        """The connection under the lock; a storage failure is a ``StateUnavailable``."""
        with self._lock:
            try:
                yield self._conn()
            except sqlite3.Error as exc:
                raise StateUnavailable(
                    f"cannot {what} in the state store at {self.path}: {_explain(exc)}",
                    store=self.url,
                ) from exc

    def close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
            self._closed = True
            if db is not None and self._pid == os.getpid():
                db.close()

    # -- primitives ----------------------------------------------------------------

    def _read(self, key: str) -> tuple[int, str] | None:
        with self._using(f"read {key!r}") as db:
            row = db.execute(_READ, (key,)).fetchone()
        return None if row is None else (row[0], row[1])

    def _write(
        self, key: str, text: str | None, expected: int | None, writer: Writer, now: float
    ) -> tuple[int, bool]:
        # the hot path: no context managers, no messages built unless something fails
        write_id = writer.write_id
        with self._lock:
            try:
                db = self._db if self._pid == _getpid() else None
                if db is None:
                    db = self._conn()
                db.execute("BEGIN IMMEDIATE")
                try:
                    if write_id is None:
                        head = db.execute(_HEAD, (key,)).fetchone()
                    else:
                        head = db.execute(_HEAD_OR_DONE, (key, write_id)).fetchone()
                        if head is not None and head[2] is not None:
                            db.execute("ROLLBACK")
                            return head[2], True
                    if head is None:
                        last = live = 0
                    else:
                        last = head[0]
                        live = last if head[1] else 0
                    if (expected or 0) != live:
                        found = db.execute(_VALUE, (key, live)).fetchone() if live else None
                        db.execute("ROLLBACK")
                        current = None if found is None else json.loads(found[0])
                        raise StaleVersion(key, expected=expected, actual=live, current=current)
                    version = last + 1
                    agent = writer.agent
                    db.execute(
                        _INSERT,
                        (
                            key,
                            version,
                            text,
                            now,
                            writer.run_id,
                            writer.step_path,
                            None if agent is None else json.dumps(agent, ensure_ascii=False),
                            write_id,
                            writer.by,
                        ),
                    )
                    db.execute(_MOVE_HEAD, (key, version, text is not None))
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StateUnavailable(
                    f"cannot write {key!r} in the state store at {self.path}: {_explain(exc)}",
                    store=self.url,
                ) from exc
        return version, False

    def _history(self, key: str) -> list[StateRecord]:
        with self._using(f"read the history of {key!r}") as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM state_versions WHERE key = ? ORDER BY version", (key,)
            ).fetchall()
        return [_record(row) for row in rows]

    def _writes(self, run_ids: Sequence[str] | None, prefix: str) -> list[StateRecord]:
        if run_ids is not None and not run_ids:
            return []
        where, params = _prefix_where(prefix)
        if where is None:
            return []
        if run_ids is not None:
            # one parameter however many runs; "IS NOT NULL" lets the partial index serve
            where.append("run_id IN (SELECT value FROM json_each(?)) AND run_id IS NOT NULL")
            params.append(json.dumps(list(run_ids)))
        sql = f"SELECT {_COLUMNS} FROM state_versions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._using("read writes") as db:
            rows = db.execute(sql + " ORDER BY seq", params).fetchall()
        return [_record(row) for row in rows]

    def _keys(self, prefix: str) -> list[str]:
        where, params = _prefix_where(prefix)
        if where is None:
            return []
        sql = "SELECT key FROM state_keys WHERE live"
        if where:
            sql += " AND " + " AND ".join(where)
        with self._using("list keys") as db:
            rows = db.execute(sql + " ORDER BY key", params).fetchall()
        return [row[0] for row in rows]


def _stored_version(db: sqlite3.Connection) -> int:
    """The file's state schema version (0: no state tables yet), read without writing."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'state_schema'").fetchone() is None:
        return 0
    row = db.execute("SELECT version FROM state_schema WHERE component = 'state'").fetchone()
    return 0 if row is None else int(row[0])


def _record(row: tuple[Any, ...]) -> StateRecord:
    key, version, value, written_at, run_id, step_path, agent, write_id, by = row
    return StateRecord(
        key=key,
        version=version,
        value=None if value is None else json.loads(value),
        deleted=value is None,
        written_at=written_at,
        writer=Writer(
            run_id=run_id,
            step_path=step_path,
            agent=None if agent is None else json.loads(agent),
            write_id=write_id,
            by=by,
        ),
    )


def _prefix_where(prefix: str) -> tuple[list[str] | None, list[Any]]:
    """SQL conditions selecting the keys that start with ``prefix``, as a range of the
    key index (no LIKE or GLOB: a prefix is literal text); None when no key can."""
    if not prefix:
        return [], []
    try:
        prefix.encode("utf-8")
    except UnicodeEncodeError:
        return None, []  # a lone surrogate: no key holds one
    end = _prefix_end(prefix)
    if end is None:
        return ["key >= ?"], [prefix]
    return ["key >= ? AND key < ?"], [prefix, end]


def _prefix_end(prefix: str) -> str | None:
    """The least string above every string starting with ``prefix`` (None: there is
    none). SQLite compares text as UTF-8 bytes, which is code point order."""
    chars = prefix.rstrip("\U0010ffff")
    if not chars:
        return None
    code = ord(chars[-1]) + 1
    if 0xD800 <= code <= 0xDFFF:
        code = 0xE000  # surrogates are not text: the next character is U+E000
    return chars[:-1] + chr(code)


def _explain(exc: sqlite3.Error) -> str:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return f"the database is locked by another connection or process ({text})"
    if "not a database" in text or "malformed" in text:
        return f"the file is not a readable SQLite database ({text})"
    if "unable to open" in text:
        return f"the file cannot be opened ({text})"
    if "readonly" in text or "read-only" in text:
        return f"the file is read-only ({text})"
    if "full" in text:
        return f"the disk is full ({text})"
    return text
