"""The embedded default journal: one SQLite file in WAL mode.

Each ``append`` is one ``BEGIN IMMEDIATE`` transaction: a conditional update
of the run's row (its fencing token and head seq must be what the writer
holds), then the blobs and events. So a batch is all there or not there
after a crash, the head (last seq, hash, signature) always names the last
event, and a fenced-out writer changes nothing.

``durability`` sets SQLite's fsync level, which decides what a *power
failure* (not a process crash: a killed process loses nothing committed) may
lose: ``"off"`` may lose recent commits and, rarely, corrupt the file;
``"normal"`` (default, WAL) may lose the last commits but stays consistent;
``"full"`` fsyncs every commit and loses nothing committed.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from .._sqlite import open_when_free
from ..errors import JournalCorrupt, JournalError, RunNotFound, VersionMismatch
from .base import (
    DEFAULT_LEASE_TTL,
    EVENT_COLUMNS,
    Head,
    Journal,
    Lease,
    RunInfo,
    check_acquire,
    check_append,
    check_batch,
    event_rows,
    events_from_rows,
    lease_live,
    now,
    refuse_existing,
)
from .events import GENESIS_HASH, JOURNAL_SCHEMA_VERSION, Event

__all__ = ["Durability", "SQLiteJournal"]

Durability = Literal["off", "normal", "full"]
_SYNCHRONOUS = {"off": "OFF", "normal": "NORMAL", "full": "FULL"}

MIGRATIONS: list[str] = [
    # 1: never edit a shipped migration; append a new one
    """
    CREATE TABLE IF NOT EXISTS events (
        run_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, key TEXT,
        span_id TEXT, parent_span_id TEXT, path TEXT NOT NULL, agent TEXT, ts TEXT NOT NULL,
        payload TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL,
        schema_version INTEGER NOT NULL, PRIMARY KEY (run_id, seq));
    CREATE INDEX IF NOT EXISTS events_type ON events (type, run_id);
    CREATE TABLE IF NOT EXISTS blobs (digest TEXT PRIMARY KEY, data BLOB NOT NULL);
    """,
    # 2: blob references out of the payload; a runs table holding lease and anchored head
    """
    ALTER TABLE events ADD COLUMN refs TEXT;
    CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY, flow TEXT NOT NULL DEFAULT '', status TEXT NOT NULL,
        owner TEXT, token INTEGER NOT NULL, expires_at REAL NOT NULL,
        head_seq INTEGER NOT NULL, head_hash TEXT NOT NULL, head_sig TEXT,
        created_at TEXT, updated_at TEXT);
    INSERT OR IGNORE INTO runs (run_id, flow, status, owner, token, expires_at, head_seq,
        head_hash, head_sig, created_at, updated_at)
        SELECT e.run_id, COALESCE(json_extract(s.payload, '$.flow'), ''),
            CASE e.type WHEN 'run.finished' THEN 'finished' WHEN 'run.failed' THEN 'failed'
                ELSE 'incomplete' END,
            NULL, 1, 0, e.seq, e.hash, NULL, s.ts, e.ts
        FROM events e
        JOIN (SELECT run_id, MAX(seq) AS last FROM events GROUP BY run_id) m
            ON m.run_id = e.run_id AND m.last = e.seq
        LEFT JOIN events s ON s.run_id = e.run_id AND s.seq = 0;
    """,
    # 3: nothing reads events by type any more (the runs table lists runs), and the
    # index cost a page write on every commit
    """
    DROP INDEX IF EXISTS events_type;
    """,
]

BUSY_TIMEOUT_MS = 5000
"""How long a write waits for another connection's transaction before ``JournalError``."""

_COLUMNS = EVENT_COLUMNS
_HEAD_COLUMNS = "run_id, head_seq, head_hash, head_sig, status, owner, token, expires_at, flow"


class SQLiteJournal(Journal):
    """A journal in one SQLite file (created if missing unless ``readonly``)."""

    def __init__(
        self,
        path: str | Path,
        *,
        durability: Durability = "normal",
        readonly: bool = False,
        durable: bool = False,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.durability: Durability = "full" if durable else durability
        if durability not in _SYNCHRONOUS:
            raise JournalError(f"durability must be one of {sorted(_SYNCHRONOUS)}")
        self._lock = threading.RLock()
        if not readonly:
            if self.path.is_dir():
                raise JournalError(f"{self.path} is a directory, not a journal file")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise JournalError(f"cannot create journal {self.path}: {exc}") from exc
        try:
            open_when_free(self._open, timeout_s=BUSY_TIMEOUT_MS / 1000)
        except sqlite3.OperationalError as exc:
            raise JournalError(f"cannot open the journal at {self.path}: {_explain(exc)}") from exc
        except sqlite3.DatabaseError as exc:  # a refused file (corrupt) keeps no connection
            raise JournalCorrupt(f"{self.path} is not a readable typedmesh journal: {exc}") from exc

    def _open(self) -> None:
        """Connect, set the connection up and migrate the schema; on failure, keep nothing."""
        if self.readonly:
            db = self._db = _connect_readonly(self.path)
        else:
            db = self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
        try:
            if not self.readonly:
                db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                self._check_version(self._stored_version())  # before WAL touches the file
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={_SYNCHRONOUS[self.durability]}")
                # checkpoints (which fsync) every ~40 MB of WAL, not every 4 MB: a commit
                # is a WAL append; "full" still fsyncs each one
                db.execute("PRAGMA wal_autocheckpoint=10000")
            self._migrate()
        except BaseException:
            del self._db
            db.close()
            raise

    def _migrate(self) -> None:
        db = self._db
        if self.readonly:
            current = self._stored_version()
            self._check_version(current)
            if current < len(MIGRATIONS):
                raise JournalError(
                    f"{self.path} uses journal schema {current}; open it writable once "
                    f"to migrate it to {len(MIGRATIONS)}"
                )
            return
        current = self._stored_version()
        self._check_version(current)
        if current == len(MIGRATIONS):
            return
        # One process migrates. Another that opened the file at the same moment waits
        # here for the write lock, then re-reads the version and finds nothing to do.
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS typedmesh_migrations (version INTEGER NOT NULL)")
            current = self._version()
            self._check_version(current)
            for version in range(current + 1, len(MIGRATIONS) + 1):
                for statement in MIGRATIONS[version - 1].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO typedmesh_migrations VALUES (?)", (version,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _version(self) -> int:
        row = self._db.execute("SELECT MAX(version) FROM typedmesh_migrations").fetchone()
        return int(row[0] or 0)

    def _stored_version(self) -> int:
        """The file's journal schema (0 for a new file), read without writing."""
        exists = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE name='typedmesh_migrations'"
        ).fetchone()
        return self._version() if exists else 0

    def _check_version(self, current: int) -> None:
        if current > len(MIGRATIONS) or current > JOURNAL_SCHEMA_VERSION:
            raise VersionMismatch(
                f"{self.path} was written by journal schema {current}; this typedmesh reads "
                f"up to {JOURNAL_SCHEMA_VERSION}: upgrade typedmesh"
            )

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction; storage failures become typed ``JournalError``s."""
        if self.readonly:
            raise JournalError(f"{self.path} is open read-only: cannot {what}")
        db = self._db
        with self._lock:
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                raise JournalError(f"cannot {what} in {self.path}: {_explain(exc)}") from exc
            except sqlite3.ProgrammingError as exc:  # used after close()
                raise JournalError(f"cannot {what} in {self.path}: {exc}") from exc
            except sqlite3.DatabaseError as exc:
                raise JournalCorrupt(f"cannot {what} in {self.path}: {exc}") from exc

    @contextmanager
    def _reading(self, what: str, run_id: str | None = None) -> Iterator[sqlite3.Connection]:
        """A read under the lock: a locked or closed file is a ``JournalError``, a damaged
        one ``JournalCorrupt``; never a raw sqlite3 error."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.OperationalError as exc:
                raise JournalError(f"cannot {what} in {self.path}: {_explain(exc)}") from exc
            except sqlite3.ProgrammingError as exc:  # used after close()
                raise JournalError(f"cannot {what} in {self.path}: {exc}") from exc
            except sqlite3.DatabaseError as exc:
                raise JournalCorrupt(f"cannot {what} in {self.path}: {exc}", run_id=run_id) from exc

    # -- ownership -----------------------------------------------------------------

    def create_run(
        self, run_id: str, owner: str, *, flow: str = "", ttl: float = DEFAULT_LEASE_TTL
    ) -> Lease:
        t = now()
        with self._transaction(f"create run {run_id!r}") as db:
            taken = db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if taken is not None:
                raise refuse_existing(run_id)
            db.execute(
                "INSERT INTO runs (run_id, flow, status, owner, token, expires_at, head_seq, "
                "head_hash, head_sig) VALUES (?, ?, 'running', ?, 1, ?, -1, ?, NULL)",
                (run_id, flow, owner, t + ttl, GENESIS_HASH),
            )
        return Lease(run_id, owner, 1, t + ttl)

    def acquire(self, run_id: str, owner: str, *, ttl: float = DEFAULT_LEASE_TTL) -> Lease:
        with self._transaction(f"acquire run {run_id!r}") as db:
            head = self._head(db, run_id)
            t = now()
            check_acquire(head, owner, t)
            token = head.token + 1
            db.execute(
                "UPDATE runs SET owner = ?, token = ?, expires_at = ?, status = 'running' "
                "WHERE run_id = ? AND token = ?",
                (owner, token, t + ttl, run_id, head.token),
            )
        return Lease(run_id, owner, token, t + ttl)

    def renew(self, lease: Lease, *, ttl: float = DEFAULT_LEASE_TTL) -> Lease:
        expires = now() + ttl
        with self._transaction(f"renew the lease on {lease.run_id!r}") as db:
            check_append(self._head(db, lease.run_id), lease, ())
            db.execute(
                "UPDATE runs SET expires_at = ? WHERE run_id = ? AND token = ?",
                (expires, lease.run_id, lease.token),
            )
        return Lease(lease.run_id, lease.owner, lease.token, expires)

    def release(self, lease: Lease, status: str) -> None:
        with self._transaction(f"release run {lease.run_id!r}") as db:
            db.execute(
                "UPDATE runs SET owner = NULL, expires_at = 0, status = ? "
                "WHERE run_id = ? AND token = ? AND owner = ?",
                (status, lease.run_id, lease.token, lease.owner),
            )

    def append(
        self,
        lease: Lease,
        events: Sequence[Event],
        blobs: Mapping[str, bytes],
        *,
        signature: str | None = None,
        ttl: float = DEFAULT_LEASE_TTL,
        release: str | None = None,
    ) -> Lease:
        rows = event_rows(events)
        if not events:  # nothing to store: a heartbeat, refused to a lost lease
            renewed = self.renew(lease, ttl=ttl)
            if release is not None:
                self.release(renewed, release)
            return renewed
        check_batch(lease, events)  # the head is checked by the conditional UPDATE below
        expires = now() + ttl
        with self._transaction(f"append to run {lease.run_id!r}") as db:
            if events:
                last = events[-1]
                updated = db.execute(
                    "UPDATE runs SET head_seq = ?, head_hash = ?, head_sig = ?, expires_at = ?, "
                    "updated_at = ?, created_at = COALESCE(created_at, ?), "
                    "owner = CASE WHEN ? IS NULL THEN owner END, "
                    "status = COALESCE(?, status) "
                    "WHERE run_id = ? AND token = ? AND owner = ? "
                    "AND head_seq = ? AND head_hash = ?",
                    (
                        last.seq,
                        last.hash,
                        signature,
                        0.0 if release is not None else expires,
                        last.ts,
                        events[0].ts,
                        release,
                        release,
                        lease.run_id,
                        lease.token,
                        lease.owner,
                        events[0].seq - 1,
                        events[0].prev_hash,
                    ),
                ).rowcount
                if updated != 1:  # explain with the row as it is, then nothing is written
                    check_append(self._head(db, lease.run_id), lease, events)
                    raise JournalError(f"append to {lease.run_id!r} was refused")
                if blobs:
                    db.executemany("INSERT OR IGNORE INTO blobs VALUES (?, ?)", blobs.items())
                db.executemany(
                    f"INSERT INTO events ({_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
        return Lease(lease.run_id, lease.owner, lease.token, expires)

    def head(self, run_id: str) -> Head:
        with self._reading(f"read the head of run {run_id!r}", run_id) as db:
            return self._head(db, run_id)

    def _head(self, db: sqlite3.Connection, run_id: str) -> Head:
        row = db.execute(f"SELECT {_HEAD_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"no run {run_id!r} in {self.path}", run_id=run_id)
        return Head(
            run_id=row[0],
            seq=row[1],
            hash=row[2],
            signature=row[3],
            status=row[4],
            owner=row[5],
            token=row[6],
            expires_at=row[7],
            flow=row[8],
        )

    # -- reading -------------------------------------------------------------------

    def read(self, run_id: str) -> list[Event]:
        with self._reading(f"read run {run_id!r}", run_id) as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM events WHERE run_id = ? ORDER BY seq", (run_id,)
            ).fetchall()
        if not rows:
            raise RunNotFound(f"no run {run_id!r} in {self.path}", run_id=run_id)
        return events_from_rows(rows, run_id)

    def blob(self, digest: str) -> bytes:
        with self._reading(f"read blob {digest}") as db:
            row = db.execute("SELECT data FROM blobs WHERE digest = ?", (digest,)).fetchone()
        if row is None:
            raise JournalCorrupt(f"blob {digest} is missing from {self.path}")
        return bytes(row[0])

    def runs(self) -> list[RunInfo]:
        with self._reading("list runs") as db:
            rows = db.execute(
                """
                SELECT r.run_id, r.flow, r.status, r.owner, r.expires_at, r.created_at,
                       r.updated_at, (SELECT COUNT(*) FROM events c WHERE c.run_id = r.run_id)
                FROM runs r WHERE r.head_seq >= 0 ORDER BY r.created_at DESC
                """
            ).fetchall()
        t = now()
        infos = []
        for run_id, flow, status, owner, expires, started, updated, count in rows:
            if status == "running" and not lease_live(owner, expires, t):
                status = "incomplete"
            ended = updated if status in ("finished", "failed") else None
            infos.append(RunInfo(run_id, flow, status, started or "", ended, count))
        return infos

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- test hooks: what an attacker with access to the file can do -----------------

    def tamper_drop_tail(self, run_id: str, count: int) -> None:
        """Delete the last ``count`` events (the head stays): for integrity tests."""
        with self._lock:
            self._db.execute(
                "DELETE FROM events WHERE run_id = ? AND seq > "
                "(SELECT MAX(seq) FROM events WHERE run_id = ?) - ?",
                (run_id, run_id, count),
            )


def _connect_readonly(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise JournalError(f"no journal file at {path}")
    uri = f"file:{path.resolve()}?mode=ro"
    db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        db.execute("SELECT 1 FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        # a WAL file in a directory we cannot write: read the file as it stands
        db.close()
        db = sqlite3.connect(
            f"file:{path.resolve()}?mode=ro&immutable=1",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
    return db


def _explain(exc: sqlite3.OperationalError) -> str:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return f"the journal is locked by another process ({text})"
    if "full" in text:
        return f"the disk is full ({text})"
    if "readonly" in text or "read-only" in text:
        return f"the journal is read-only ({text})"
    return text


_OPEN: dict[tuple[str, int, str], SQLiteJournal] = {}
_OPEN_LOCK = threading.Lock()


def shared_journal(path: str | Path, *, durability: Durability = "normal") -> SQLiteJournal:
    """One open journal per path, durability and process: opening by path is cheap."""
    key = (str(Path(path).resolve()), os.getpid(), durability)
    with _OPEN_LOCK:
        store = _OPEN.get(key)
        if store is None or not Path(key[0]).exists():
            store = _OPEN[key] = _SharedSQLiteJournal(path, durability=durability)
        return store


class _SharedSQLiteJournal(SQLiteJournal):
    """A cached journal: ``close`` is a no-op, the process keeps it open."""

    def close(self) -> None:
        return None
