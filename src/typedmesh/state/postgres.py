"""The PostgreSQL state store: versioned values shared by many processes and hosts.

Two tables in one schema: ``typedmesh_state`` holds each key's head (its last
version and, unless that version is a delete, its JSON text) and
``typedmesh_state_history`` every version ever written, with its writer. They
are created on first use, idempotently, under an advisory lock (so two
processes opening a fresh schema at once do not race).

A write is ONE statement, so one transaction: a conditional ``UPDATE`` (or, to
create, an ``INSERT ... ON CONFLICT DO UPDATE ... WHERE``) of the head that only
matches when the live version is the expected one, the history row inserted
from what it returned, and the write id looked up first so a retried write
returns the version it made. A unique index on ``(key, write_id)`` backs the
lookup up. Row locks serialize writers of one key; a loser's statement matches
nothing and changes nothing, and a second statement reads what won.

A refused connection, or a server that dies mid-statement, is a
``StateUnavailable`` naming ``host:port`` (never the password) and why; a
statement cut off is rolled back by the server, so nothing is half written
(whether a write cut off *after* its commit happened is what write ids
answer). Connections found dead are dropped, and the next call connects
again: the store recovers by itself once the server is back.

psycopg 3 is imported here only: ``pip install 'typedmesh[postgres]'``.
"""

from __future__ import annotations

import json
import select
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import (
    ConfigurationError,
    MissingExtraError,
    StaleVersion,
    StateError,
    StateUnavailable,
)
from .base import StateRecord, StateStore, Writer

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresStateStore"]

SCHEMA_VERSION = 1
POOL_IDLE = 8
"""Connections kept open between calls (more are opened while more threads call)."""
CONNECT_TIMEOUT_S = 10

_DDL = """
CREATE TABLE IF NOT EXISTS {schema}.typedmesh_state (
    key TEXT COLLATE "C" PRIMARY KEY,
    version BIGINT NOT NULL,
    value TEXT
);
CREATE TABLE IF NOT EXISTS {schema}.typedmesh_state_history (
    seq BIGSERIAL PRIMARY KEY,
    key TEXT COLLATE "C" NOT NULL,
    version BIGINT NOT NULL,
    value TEXT,
    deleted BOOLEAN NOT NULL,
    written_at DOUBLE PRECISION NOT NULL,
    writer TEXT NOT NULL,
    run_id TEXT,
    write_id TEXT,
    UNIQUE (key, version)
);
CREATE UNIQUE INDEX IF NOT EXISTS typedmesh_state_history_write_id
    ON {schema}.typedmesh_state_history (key, write_id) WHERE write_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS typedmesh_state_history_run
    ON {schema}.typedmesh_state_history (run_id, seq) WHERE run_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS {schema}.typedmesh_state_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO {schema}.typedmesh_state_meta (name, value) VALUES ('schema_version', '{version}')
    ON CONFLICT (name) DO NOTHING;
"""

# The write: the write id looked up, the head changed only at the expected live
# version, the history row made from what changed, in one statement.
_PRIOR = """
WITH prior AS (
    SELECT version FROM {schema}.typedmesh_state_history
    WHERE key = %(key)s AND write_id = %(write_id)s
),
"""
_HISTORY = """
ins AS (
    INSERT INTO {schema}.typedmesh_state_history
        (key, version, value, deleted, written_at, writer, run_id, write_id)
    SELECT %(key)s, up.version, %(value)s, %(deleted)s, %(written_at)s, %(writer)s,
        %(run_id)s, %(write_id)s
    FROM up
    RETURNING version
)
SELECT version, false FROM ins
UNION ALL
SELECT version, true FROM prior
"""
_UPDATE = """
up AS (
    UPDATE {schema}.typedmesh_state SET version = version + 1, value = %(value)s
    WHERE key = %(key)s AND version = %(expected)s AND value IS NOT NULL
        AND NOT EXISTS (SELECT 1 FROM prior)
    RETURNING version
),
"""
_CREATE = """
up AS (
    INSERT INTO {schema}.typedmesh_state AS head (key, version, value)
    SELECT %(key)s, 1, %(value)s WHERE NOT EXISTS (SELECT 1 FROM prior)
    ON CONFLICT (key) DO UPDATE SET version = head.version + 1, value = EXCLUDED.value
        WHERE head.value IS NULL
    RETURNING version
),
"""
_LOOK = """
SELECT
    (SELECT version FROM {schema}.typedmesh_state_history
        WHERE key = %(key)s AND write_id = %(write_id)s),
    (SELECT version FROM {schema}.typedmesh_state WHERE key = %(key)s),
    (SELECT value FROM {schema}.typedmesh_state WHERE key = %(key)s)
"""
_READ = """
SELECT version, value FROM {schema}.typedmesh_state WHERE key = %s AND value IS NOT NULL
"""
_HISTORY_OF = """
SELECT key, version, value, deleted, written_at, writer
FROM {schema}.typedmesh_state_history WHERE key = %s ORDER BY version
"""
_WRITES_ALL = """
SELECT key, version, value, deleted, written_at, writer
FROM {schema}.typedmesh_state_history
WHERE key >= %(low)s AND starts_with(key, %(prefix)s) ORDER BY seq
"""
_WRITES_RUNS = """
SELECT key, version, value, deleted, written_at, writer
FROM {schema}.typedmesh_state_history
WHERE run_id = ANY(%(runs)s) AND starts_with(key, %(prefix)s) ORDER BY seq
"""
_KEYS = """
SELECT key FROM {schema}.typedmesh_state
WHERE value IS NOT NULL AND key >= %(low)s AND starts_with(key, %(prefix)s) ORDER BY key
"""


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise MissingExtraError("postgres", "PostgresStateStore") from None
    return psycopg


def _split_url(url: str) -> tuple[str, str | None]:
    """The DSN for libpq and the ``schema=`` query parameter of a URL, if any."""
    if not url.startswith(("postgresql://", "postgres://")):
        return url, None
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [v for k, v in query if k == "schema"]
    if not schemas:
        return url, None
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schemas[-1]


class PostgresStateStore(StateStore):
    """State in PostgreSQL (psycopg 3, sync, thread-safe through a small pool).

    ``url`` is a libpq URL or conninfo string (``postgresql://user@host:5432/db``;
    a ``?schema=name`` parameter is taken as ``schema``). ``schema`` names the
    schema holding the tables (created if missing; default: the connection's
    current schema, usually ``public``). ``max_value_bytes`` caps one value's JSON.
    """

    def __init__(
        self, url: str, *, schema: str | None = None, max_value_bytes: int | None = None
    ) -> None:
        self._psycopg = _import_psycopg()
        from psycopg import conninfo

        dsn, url_schema = _split_url(url)
        try:
            params = conninfo.conninfo_to_dict(dsn)
        except self._psycopg.ProgrammingError as exc:
            raise ConfigurationError(f"not a PostgreSQL URL or conninfo: {exc}") from None
        self._dsn = dsn
        self._password = str(params.get("password") or "")
        host = str(params.get("host") or params.get("hostaddr") or "localhost")
        port = str(params.get("port") or "5432")
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        """``host:port`` of the server, as errors name it."""
        user = params.get("user")
        dbname = params.get("dbname")
        self.url = "postgresql://" + (f"{user}@" if user else "") + self.address
        self.url += f"/{dbname}" if dbname else ""
        if max_value_bytes is not None:
            if max_value_bytes < 1:
                raise ConfigurationError(f"max_value_bytes must be >= 1, got {max_value_bytes}")
            self.max_value_bytes = max_value_bytes
        self._connect_timeout = None if "connect_timeout" in params else CONNECT_TIMEOUT_S
        self._lock = threading.Lock()
        self._idle: list[psycopg.Connection[Any]] = []
        self._closed = False
        self.schema = schema or url_schema or ""
        self._sql: dict[str, str] = {}
        self._setup()

    # -- connections -----------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        extra: dict[str, Any] = {"autocommit": True}
        if self._connect_timeout is not None:
            extra["connect_timeout"] = self._connect_timeout
        conn: psycopg.Connection[Any] = self._psycopg.connect(self._dsn, **extra)
        return conn

    def _take(self) -> psycopg.Connection[Any]:
        """An idle connection still alive, or a new one."""
        while True:
            with self._lock:
                if self._closed:
                    raise StateError(f"{self.url}: the state store is closed", store=self.url)
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect()
            if not _dead(conn):
                return conn
            conn.close()  # the server went away (or restarted) while it sat idle

    def _give(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < POOL_IDLE and not conn.closed:
                self._idle.append(conn)
                return
        conn.close()

    def _drop_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    @contextmanager
    def _conn(self, key: str | None = None) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; a failure of the server or the link is StateUnavailable."""
        pg = self._psycopg
        conn = None
        try:
            conn = self._take()
            yield conn
        except (pg.OperationalError, pg.InterfaceError) as exc:
            if conn is not None:
                conn.close()
            self._drop_idle()  # they talked to the same server: likely dead too
            self._unavailable(exc, key)
        except pg.Error as exc:
            if conn is not None:
                conn.close()
            raise StateError(
                f"PostgreSQL state store at {self.address} refused the operation: "
                f"{self._reason(exc)}",
                store=self.url,
                key=key,
            ) from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        else:
            self._give(conn)

    def _reason(self, exc: BaseException) -> str:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if self._password:
            reason = reason.replace(self._password, "***")
        return reason

    def _unavailable(self, exc: BaseException, key: str | None) -> NoReturn:
        raise StateUnavailable(
            f"PostgreSQL state store at {self.address} is unavailable: {self._reason(exc)}",
            store=self.url,
            key=key,
        ) from None

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._drop_idle()

    # -- schema ----------------------------------------------------------------------

    def _setup(self) -> None:
        from psycopg import sql

        with self._conn() as conn:
            if not self.schema:
                row = conn.execute("SELECT current_schema()").fetchone()
                if row is None or row[0] is None:
                    raise ConfigurationError(
                        f"{self.url}: no schema given and the search_path names none "
                        "that exists; pass schema="
                    )
                self.schema = str(row[0])
            ident = sql.Identifier(self.schema).as_string(conn)
            meta = f"SELECT value FROM {ident}.typedmesh_state_meta WHERE name = %s".encode()
            exists = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", (f"{ident}.typedmesh_state_meta",)
            ).fetchone()
            if exists and exists[0]:
                # opened before: no DDL, so a role that may only read and write rows can open it
                row = conn.execute(meta, ("schema_version",)).fetchone()
            else:
                with conn.transaction():
                    conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtext(%s))",
                        ("typedmesh.state:" + self.schema,),
                    )
                    schema_found = conn.execute(
                        "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)
                    ).fetchone()
                    if schema_found is None:  # (CREATE SCHEMA IF NOT EXISTS needs the right)
                        conn.execute(
                            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                                sql.Identifier(self.schema)
                            )
                        )
                    conn.execute(_DDL.format(schema=ident, version=SCHEMA_VERSION).encode())
                    row = conn.execute(meta, ("schema_version",)).fetchone()
            found = int(row[0]) if row else SCHEMA_VERSION
            if found > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"{self.url} schema {self.schema!r} holds state schema version {found}; "
                    f"this typedmesh knows up to {SCHEMA_VERSION}: upgrade typedmesh"
                )
        self._sql = {
            "update": (_PRIOR + _UPDATE + _HISTORY).format(schema=ident),
            "create": (_PRIOR + _CREATE + _HISTORY).format(schema=ident),
            "look": _LOOK.format(schema=ident),
            "read": _READ.format(schema=ident),
            "history": _HISTORY_OF.format(schema=ident),
            "writes_all": _WRITES_ALL.format(schema=ident),
            "writes_runs": _WRITES_RUNS.format(schema=ident),
            "keys": _KEYS.format(schema=ident),
        }

    def _q(self, name: str) -> bytes:
        return self._sql[name].encode()

    # -- primitives --------------------------------------------------------------------

    def _read(self, key: str) -> tuple[int, str] | None:
        with self._conn(key) as conn:
            row = conn.execute(self._q("read"), (key,)).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def _write(
        self, key: str, text: str | None, expected: int | None, writer: Writer, now: float
    ) -> tuple[int, bool]:
        params = {
            "key": key,
            "value": text,
            "expected": expected,
            "deleted": text is None,
            "written_at": now,
            "writer": json.dumps(writer.to_dict(), ensure_ascii=False, separators=(",", ":")),
            "run_id": writer.run_id,
            "write_id": writer.write_id,
        }
        query = self._q("create" if expected is None else "update")
        unique = self._psycopg.errors.UniqueViolation
        while True:
            with self._conn(key) as conn:
                try:
                    row = conn.execute(query, params).fetchone()
                except unique:
                    row = None  # the same write id won a race with this one: look below
                if row is not None:
                    return int(row[0]), bool(row[1])
                done, version, value = conn.execute(self._q("look"), params).fetchone() or (
                    None,
                    None,
                    None,
                )
            if done is not None:
                return int(done), True
            live = 0 if version is None or value is None else int(version)
            if live != (expected or 0):
                current = None if value is None else json.loads(value)
                raise StaleVersion(key, expected=expected, actual=live, current=current)
            # what won has been undone in between (a delete after a create): try again

    def _history(self, key: str) -> list[StateRecord]:
        with self._conn(key) as conn:
            rows = conn.execute(self._q("history"), (key,)).fetchall()
        return [_record(row) for row in rows]

    def _writes(self, run_ids: Sequence[str] | None, prefix: str) -> list[StateRecord]:
        with self._conn() as conn:
            if run_ids is None:
                rows = conn.execute(self._q("writes_all"), {"low": prefix, "prefix": prefix})
            else:
                rows = conn.execute(
                    self._q("writes_runs"), {"runs": list(run_ids), "prefix": prefix}
                )
            found = rows.fetchall()
        return [_record(row) for row in found]

    def _keys(self, prefix: str) -> list[str]:
        with self._conn() as conn:
            rows = conn.execute(self._q("keys"), {"low": prefix, "prefix": prefix}).fetchall()
        return [str(row[0]) for row in rows]


def _record(row: Sequence[Any]) -> StateRecord:
    key, version, value, deleted, written_at, writer = row
    return StateRecord(
        key=str(key),
        version=int(version),
        value=None if value is None else json.loads(value),
        deleted=bool(deleted),
        written_at=float(written_at),
        writer=Writer.from_dict(json.loads(writer)),
    )


def _dead(conn: psycopg.Connection[Any]) -> bool:
    """Whether an idle connection is gone: closed, broken, or its socket readable (an
    idle connection is sent nothing, so a readable socket is the server's goodbye:
    an error before it shut down, or end of file)."""
    if conn.closed or conn.broken:
        return True
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
