"""The embedded default journal: one SQLite file in WAL mode.

Each ``write`` is one transaction (``executemany``), so a batch of events is
all there or not there after a crash. WAL with ``synchronous=NORMAL`` keeps a
commit cheap; ``durable=True`` uses ``synchronous=FULL`` for machines where
losing the last commits on power loss matters.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import JournalCorrupt, RunNotFound, VersionMismatch
from .base import Journal, RunInfo
from .events import JOURNAL_SCHEMA_VERSION, Event

__all__ = ["SQLiteJournal"]

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
]

_COLUMNS = (
    "run_id, seq, type, key, span_id, parent_span_id, path, agent, ts, payload, "
    "prev_hash, hash, schema_version"
)


class SQLiteJournal(Journal):
    """A journal in one SQLite file (created if missing)."""

    def __init__(self, path: str | Path, *, durable: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise JournalCorrupt(f"{self.path} is not a readable typedmesh journal: {exc}") from exc

    def _migrate(self) -> None:
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS typedmesh_migrations (version INTEGER NOT NULL)")
        row = db.execute("SELECT MAX(version) FROM typedmesh_migrations").fetchone()
        current = row[0] or 0
        if current > len(MIGRATIONS) or current > JOURNAL_SCHEMA_VERSION:
            raise VersionMismatch(
                f"{self.path} was written by journal schema {current}; this typedmesh reads "
                f"up to {JOURNAL_SCHEMA_VERSION}: upgrade typedmesh"
            )
        for version in range(current + 1, len(MIGRATIONS) + 1):
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[version - 1].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO typedmesh_migrations VALUES (?)", (version,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def write(self, events: Sequence[Event], blobs: Mapping[str, bytes]) -> None:
        rows = [
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
            for e in events
        ]
        db = self._db
        try:
            db.execute("BEGIN")
            if blobs:
                db.executemany("INSERT OR IGNORE INTO blobs VALUES (?, ?)", blobs.items())
            db.executemany(
                f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def read(self, run_id: str) -> list[Event]:
        try:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM events WHERE run_id = ? ORDER BY seq", (run_id,)
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise JournalCorrupt(f"cannot read run {run_id!r} from {self.path}: {exc}") from exc
        if not rows:
            raise RunNotFound(f"no run {run_id!r} in {self.path}")
        events = []
        for row in rows:
            try:
                events.append(
                    Event.from_texts(
                        run_id=row[0],
                        seq=row[1],
                        type=row[2],
                        key=row[3],
                        span_id=row[4],
                        parent_span_id=row[5],
                        path=row[6],
                        agent_json=row[7],
                        ts=row[8],
                        payload_json=row[9],
                        prev_hash=row[10],
                        hash=row[11],
                        schema_version=row[12],
                    )
                )
            except (json.JSONDecodeError, TypeError) as exc:
                raise JournalCorrupt(
                    f"event {row[1]} of run {run_id!r} is unreadable: {exc}"
                ) from exc
            if row[12] > JOURNAL_SCHEMA_VERSION:
                raise VersionMismatch(
                    f"event {row[1]} of run {run_id!r} has schema {row[12]}; "
                    f"this typedmesh reads up to {JOURNAL_SCHEMA_VERSION}"
                )
        return events

    def exists(self, run_id: str) -> bool:
        row = self._db.execute("SELECT 1 FROM events WHERE run_id = ? LIMIT 1", (run_id,))
        return row.fetchone() is not None

    def blob(self, digest: str) -> bytes:
        row = self._db.execute("SELECT data FROM blobs WHERE digest = ?", (digest,)).fetchone()
        if row is None:
            raise JournalCorrupt(f"blob {digest} is missing from {self.path}")
        return bytes(row[0])

    def runs(self) -> list[RunInfo]:
        try:
            rows = self._db.execute(
                """
                SELECT s.run_id, s.payload, s.ts, e.type, e.ts, c.n
                FROM events s
                JOIN (SELECT run_id, MAX(seq) AS last, COUNT(*) AS n FROM events
                      GROUP BY run_id) c ON c.run_id = s.run_id
                JOIN events e ON e.run_id = s.run_id AND e.seq = c.last
                WHERE s.seq = 0 ORDER BY s.ts DESC
                """
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise JournalCorrupt(f"cannot list runs in {self.path}: {exc}") from exc
        infos = []
        for run_id, payload, started, last_type, last_ts, count in rows:
            status = {"run.finished": "finished", "run.failed": "failed"}.get(
                last_type, "incomplete"
            )
            infos.append(
                RunInfo(
                    run_id=run_id,
                    flow=str(json.loads(payload).get("flow", "")),
                    status=status,
                    started_at=started,
                    ended_at=last_ts if status != "incomplete" else None,
                    events=count,
                )
            )
        return infos

    def close(self) -> None:
        self._db.close()
