"""A journal in PostgreSQL: many processes on many machines write and resume runs.

The same tables and promises as the SQLite journal: a ``runs`` row per run
holding its lease (owner, fencing token, expiry) and anchored head (last seq,
hash, signature, status, flow), ``events`` by ``(run_id, seq)``, ``blobs`` by
digest. Each ``append`` is one transaction whose first statement is a
conditional ``UPDATE`` of the run's row (``WHERE token = ... AND owner = ...
AND head_seq = ... AND head_hash = ...``): that row lock and condition decide,
so of two writers racing on a run one moves the head and the other is refused
with ``LeaseLost`` before any of its events or blobs are written.

Lease expiry is measured on the *database server's* clock, so a machine with a
skewed clock cannot take over a live lease early. A dead owner on the same
host as the acquirer is taken over at once (as with SQLite); an owner on
another machine is taken over once its lease expires.

``durability`` sets ``synchronous_commit`` for the journal's connection:
``"off"`` (a server crash may lose the last few hundred milliseconds of
commits, never consistency), ``"normal"`` (``local``: each commit is flushed
to the server's disk; with synchronous replication, does not wait for
standbys) and ``"full"`` (``on``: also waits for synchronous standbys, where
configured).

psycopg 3 is imported only when a ``PostgresJournal`` is made; without it,
``ConfigurationError`` says ``pip install "typedmesh[postgres]"``. Losing the
server (refused, down, killed mid-run) is ``JournalUnavailable``, naming the
server as ``host:port`` (never the password) and the reason.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import (
    ConfigurationError,
    JournalCorrupt,
    JournalError,
    JournalUnavailable,
    LeaseLost,
    MissingExtraError,
    RunNotFound,
    VersionMismatch,
)
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
    refuse_existing,
)
from .events import GENESIS_HASH, Event
from .sqlite import Durability

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "JournalUnavailable",
    "PostgresDriverMissing",
    "PostgresJournal",
    "is_postgres_url",
    "redact_url",
    "shared_postgres_journal",
]

_SYNCHRONOUS_COMMIT = {"off": "off", "normal": "local", "full": "on"}
_KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": 15,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30000,
}
_NOW = "extract(epoch FROM clock_timestamp())::float8"
"""The server's clock, in seconds: leases expire by one clock, whoever's machine asks."""

MIGRATIONS: list[list[str]] = [
    # 1: never edit a shipped migration; append a new one
    [
        """
        CREATE TABLE IF NOT EXISTS runs (
            run_id TEXT PRIMARY KEY, flow TEXT NOT NULL DEFAULT '', status TEXT NOT NULL,
            owner TEXT, token BIGINT NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
            head_seq BIGINT NOT NULL, head_hash TEXT NOT NULL, head_sig TEXT,
            created_at TEXT, updated_at TEXT)
        """,
        """
        CREATE TABLE IF NOT EXISTS events (
            run_id TEXT NOT NULL, seq BIGINT NOT NULL, type TEXT NOT NULL, key TEXT,
            span_id TEXT, parent_span_id TEXT, path TEXT NOT NULL, agent TEXT, ts TEXT NOT NULL,
            payload TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL,
            schema_version INTEGER NOT NULL, refs TEXT, PRIMARY KEY (run_id, seq))
        """,
        "CREATE TABLE IF NOT EXISTS blobs (digest TEXT PRIMARY KEY, data BYTEA NOT NULL)",
        "CREATE INDEX IF NOT EXISTS runs_created ON runs (created_at)",
    ],
]

_COLUMNS = EVENT_COLUMNS
_HEAD_COLUMNS = "run_id, head_seq, head_hash, head_sig, status, owner, token, expires_at, flow"


class PostgresDriverMissing(MissingExtraError, ConfigurationError):
    """A ``postgresql://`` journal was asked for but psycopg is not installed."""


def is_postgres_url(text: str) -> bool:
    return text.startswith(("postgresql://", "postgres://"))


def redact_url(url: str) -> str:
    """``url`` without the password of its user part (``user:***@host``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise PostgresDriverMissing(
            "postgres", "the PostgreSQL journal (postgresql:// URLs)"
        ) from exc
    return psycopg


class PostgresJournal(Journal):
    """A journal in a PostgreSQL database (tables created on first open).

    ``url_or_dsn`` is a ``postgresql://`` URL or a libpq ``key=value`` string. The
    tables live in ``schema`` (created if missing), else in the URL's ``?schema=``,
    else in the connection's current schema (its ``search_path``, usually
    ``public``). ``create=False`` refuses a database with no journal yet
    (``RunNotFound``); ``readonly`` opens read-only transactions and refuses writes.

    Thread-safe: one connection, used under a lock; a broken connection is
    replaced by the next call.
    """

    def __init__(
        self,
        url_or_dsn: str,
        *,
        schema: str | None = None,
        durability: Durability = "normal",
        readonly: bool = False,
        create: bool = True,
        connect_timeout: float = 10.0,
    ) -> None:
        if durability not in _SYNCHRONOUS_COMMIT:
            raise ConfigurationError(f"durability must be one of {sorted(_SYNCHRONOUS_COMMIT)}")
        self._pg = _import_psycopg()
        self.durability: Durability = durability
        self.readonly = readonly
        self._lock = threading.RLock()
        self._closed = False
        self._db: psycopg.Connection[Any] | None = None
        conninfo, url_schema = _split_schema(url_or_dsn)
        try:
            params = self._pg.conninfo.conninfo_to_dict(conninfo)
        except self._pg.Error as exc:
            raise ConfigurationError(
                f"not a PostgreSQL URL or connection string: {_scrub(str(exc), None)}"
            ) from exc
        self._password: str | None = params.get("password") or None
        host = str(params.get("host") or os.environ.get("PGHOST") or "localhost")
        port = str(params.get("port") or os.environ.get("PGPORT") or "5432")
        self.server = f"{host}:{port}"
        """Where the journal is: ``host:port`` (no user, no password)."""
        self.database = str(params.get("dbname") or os.environ.get("PGDATABASE") or "")
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout
        self._params = params
        self.schema: str = schema or url_schema or ""
        self.label = f"postgresql://{self.server}/{self.database}"
        with self._lock:
            conn = self._conn()  # resolves self.schema when none was named
            self.label += f"?schema={self.schema}"
            try:
                try:
                    self._migrate(conn, create=create)
                except self._pg.Error as exc:
                    raise self._translate(exc, "open the journal") from exc
            except BaseException:
                self._disconnect()  # a refused database keeps no connection
                raise

    def __repr__(self) -> str:
        return f"PostgresJournal({self.label!r})"

    # -- connection ----------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        pg = self._pg
        extra: dict[str, Any] = {}
        if "connect_timeout" not in self._params:
            extra["connect_timeout"] = max(1, round(self._connect_timeout))
        if "application_name" not in self._params:
            extra["application_name"] = "typedmesh"
        # a server machine that vanishes (no RST) is noticed in ~30 s, not at TCP's minutes
        for name, value in _KEEPALIVE.items():
            if name not in self._params:
                extra[name] = value
        try:
            conn: psycopg.Connection[Any] = pg.connect(self._conninfo, autocommit=True, **extra)
        except pg.Error as exc:
            reason = _reason(str(exc), self._password)
            raise JournalUnavailable(
                f"cannot reach the PostgreSQL journal at {self.server}: {reason}",
                server=self.server,
                reason=reason,
            ) from None
        try:
            sql = pg.sql
            if not self.schema:
                row = conn.execute("SELECT current_schema()").fetchone()
                if row is None or not row[0]:
                    raise JournalError(
                        f"the PostgreSQL journal at {self.server}: the search_path names no "
                        "existing schema; pass schema= or ?schema=NAME"
                    )
                self.schema = str(row[0])
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            conn.execute(
                sql.SQL("SET synchronous_commit TO {}").format(
                    sql.SQL(_SYNCHRONOUS_COMMIT[self.durability])
                )
            )
            if self.readonly:
                conn.execute("SET default_transaction_read_only TO on")
        except BaseException as exc:
            conn.close()
            if isinstance(exc, pg.Error):
                raise self._translate(exc, "open the journal") from exc
            raise
        return conn

    def _conn(self) -> psycopg.Connection[Any]:
        """The open connection; a new one if the last broke (the server restarted)."""
        if self._closed:
            raise JournalError(f"the journal {self.label} is closed")
        conn = self._db
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            self._db = None
            conn = self._db = self._connect()
        return conn

    def _translate(self, exc: Exception, what: str, run_id: str | None = None) -> JournalError:
        """A driver error as a typed ``JournalError``: unreachable, corrupt, or other."""
        pg = self._pg
        reason = _reason(str(exc), self._password)
        state = getattr(exc, "sqlstate", None) or ""
        conn = self._db
        lost = (
            conn is None
            or conn.closed
            or conn.broken
            or state.startswith(("08", "57P", "53"))
            or (isinstance(exc, pg.OperationalError) and not state)
        )
        if lost:
            doubt = (
                " (whether it was stored is known once the journal is read again)"
                if what.startswith("append")
                else ""
            )
            return JournalUnavailable(
                f"lost the PostgreSQL journal at {self.server} while trying to {what}: "
                f"{reason}{doubt}",
                server=self.server,
                reason=reason,
            )
        if isinstance(exc, pg.IntegrityError):
            return JournalCorrupt(
                f"cannot {what} in {self.label}: the stored rows disagree with the head ({reason})",
                run_id=run_id,
            )
        if isinstance(exc, pg.errors.UndefinedTable):
            return JournalError(
                f"cannot {what} in {self.label}: the journal's tables are gone ({reason})"
            )
        return JournalError(f"cannot {what} in {self.label}: {reason}")

    @contextmanager
    def _transaction(self, what: str, run_id: str | None = None) -> Iterator[psycopg.Cursor[Any]]:
        """One transaction under the lock; driver errors become typed ``JournalError``s."""
        if self.readonly:
            raise JournalError(f"{self.label} is open read-only: cannot {what}")
        pg = self._pg
        with self._lock:
            try:
                conn = self._conn()
                with conn.transaction(), conn.cursor() as cur:
                    yield cur
            except pg.Error as exc:
                raise self._translate(exc, what, run_id) from exc

    @contextmanager
    def _reading(self, what: str, run_id: str | None = None) -> Iterator[psycopg.Cursor[Any]]:
        """Statements outside a transaction (each its own), under the lock."""
        pg = self._pg
        with self._lock:
            try:
                conn = self._conn()
                with conn.cursor() as cur:
                    yield cur
            except pg.Error as exc:
                raise self._translate(exc, what, run_id) from exc

    # -- schema ----------------------------------------------------------------------

    def _stored_version(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute("SELECT to_regclass('typedmesh_migrations') IS NOT NULL").fetchone()
        if not row or not row[0]:
            return 0
        row = conn.execute("SELECT MAX(version) FROM typedmesh_migrations").fetchone()
        return int(row[0] or 0) if row else 0

    def _check_version(self, current: int) -> None:
        if current > len(MIGRATIONS):
            raise VersionMismatch(
                f"{self.label} was written by PostgreSQL journal schema {current}; this "
                f"typedmesh reads up to {len(MIGRATIONS)}: upgrade typedmesh"
            )

    def _migrate(self, conn: psycopg.Connection[Any], *, create: bool) -> None:
        current = self._stored_version(conn)
        self._check_version(current)
        if current == len(MIGRATIONS):
            return
        if current == 0 and (self.readonly or not create):
            raise RunNotFound(f"no typedmesh journal at {self.label}")
        if self.readonly:
            raise JournalError(
                f"{self.label} uses journal schema {current}; open it writable once to "
                f"migrate it to {len(MIGRATIONS)}"
            )
        sql = self._pg.sql
        # One process migrates; another opening the journal at the same moment waits on
        # the advisory lock, then finds the version current and does nothing.
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(self.schema),))
            exists = conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)
            ).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS typedmesh_migrations (version INTEGER NOT NULL)"
            )
            current = self._stored_version(conn)
            self._check_version(current)
            for version in range(current + 1, len(MIGRATIONS) + 1):
                for statement in MIGRATIONS[version - 1]:
                    conn.execute(statement)
                conn.execute("INSERT INTO typedmesh_migrations VALUES (%s)", (version,))

    # -- ownership -----------------------------------------------------------------

    def create_run(
        self, run_id: str, owner: str, *, flow: str = "", ttl: float = DEFAULT_LEASE_TTL
    ) -> Lease:
        with self._transaction(f"create run {run_id!r}", run_id) as cur:
            row = cur.execute(
                "INSERT INTO runs (run_id, flow, status, owner, token, expires_at, head_seq, "
                f"head_hash, head_sig) VALUES (%s, %s, 'running', %s, 1, {_NOW} + %s::float8, "
                "-1, %s, NULL) ON CONFLICT (run_id) DO NOTHING RETURNING expires_at",
                (run_id, flow, owner, float(ttl), GENESIS_HASH),
            ).fetchone()
            if row is None:
                raise refuse_existing(run_id)
        return Lease(run_id, owner, 1, float(row[0]))

    def acquire(self, run_id: str, owner: str, *, ttl: float = DEFAULT_LEASE_TTL) -> Lease:
        with self._transaction(f"acquire run {run_id!r}", run_id) as cur:
            # FOR UPDATE: a racing acquirer waits here, then sees this one's lease
            row = cur.execute(
                f"SELECT {_HEAD_COLUMNS}, {_NOW} FROM runs WHERE run_id = %s FOR UPDATE",
                (run_id,),
            ).fetchone()
            if row is None:
                raise RunNotFound(f"no run {run_id!r} in {self.label}", run_id=run_id)
            head = _head_of(row)
            check_acquire(head, owner, float(row[9]))
            taken = cur.execute(
                f"UPDATE runs SET owner = %s, token = token + 1, expires_at = {_NOW} + "
                "%s::float8, status = 'running' WHERE run_id = %s AND token = %s "
                "RETURNING token, expires_at",
                (owner, float(ttl), run_id, head.token),
            ).fetchone()
            if taken is None:  # cannot happen under FOR UPDATE; refuse rather than guess
                raise LeaseLost(f"run {run_id!r} changed hands while acquiring", run_id=run_id)
        return Lease(run_id, owner, int(taken[0]), float(taken[1]))

    def renew(self, lease: Lease, *, ttl: float = DEFAULT_LEASE_TTL) -> Lease:
        with self._transaction(f"renew the lease on {lease.run_id!r}", lease.run_id) as cur:
            row = cur.execute(
                f"UPDATE runs SET expires_at = {_NOW} + %s::float8 "
                "WHERE run_id = %s AND token = %s AND owner = %s RETURNING expires_at",
                (float(ttl), lease.run_id, lease.token, lease.owner),
            ).fetchone()
            if row is None:
                self._refuse(cur, lease, ())
        return Lease(lease.run_id, lease.owner, lease.token, float(row[0]))

    def release(self, lease: Lease, status: str) -> None:
        with self._transaction(f"release run {lease.run_id!r}", lease.run_id) as cur:
            cur.execute(
                "UPDATE runs SET owner = NULL, expires_at = 0, status = %s "
                "WHERE run_id = %s AND token = %s AND owner = %s",
                (status, lease.run_id, lease.token, lease.owner),
            )

    def _refuse(self, cur: psycopg.Cursor[Any], lease: Lease, events: Sequence[Event]) -> NoReturn:
        """Explain a refused conditional write with the row as it is; always raises."""
        check_append(self._head(cur, lease.run_id), lease, events)
        raise LeaseLost(f"a write to run {lease.run_id!r} was refused", run_id=lease.run_id)

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
        if not events:  # nothing to store: a heartbeat, refused to a lost lease
            renewed = self.renew(lease, ttl=ttl)
            if release is not None:
                self.release(renewed, release)
            return renewed
        check_batch(lease, events)  # the head is checked by the conditional UPDATE below
        rows = event_rows(events)
        last = events[-1]
        with self._transaction(f"append to run {lease.run_id!r}", lease.run_id) as cur:
            row = cur.execute(
                "UPDATE runs SET head_seq = %(seq)s, head_hash = %(hash)s, head_sig = %(sig)s, "
                f"expires_at = CASE WHEN %(release)s::text IS NULL THEN {_NOW} + %(ttl)s::float8 "
                "ELSE 0 END, updated_at = %(ts)s, created_at = COALESCE(created_at, %(first)s), "
                "owner = CASE WHEN %(release)s::text IS NULL THEN owner END, "
                "status = COALESCE(%(release)s::text, status) "
                "WHERE run_id = %(run)s AND token = %(token)s AND owner = %(owner)s "
                "AND head_seq = %(after)s AND head_hash = %(prev)s RETURNING expires_at",
                {
                    "seq": last.seq,
                    "hash": last.hash,
                    "sig": signature,
                    "release": release,
                    "ttl": float(ttl),
                    "ts": last.ts,
                    "first": events[0].ts,
                    "run": lease.run_id,
                    "token": lease.token,
                    "owner": lease.owner,
                    "after": events[0].seq - 1,
                    "prev": events[0].prev_hash,
                },
            ).fetchone()
            if row is None:  # explain with the row as it is; the transaction rolls back
                self._refuse(cur, lease, events)
            if blobs:
                cur.executemany(
                    "INSERT INTO blobs (digest, data) VALUES (%s, %s) "
                    "ON CONFLICT (digest) DO NOTHING",
                    list(blobs.items()),
                )
            cur.executemany(
                f"INSERT INTO events ({_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
        return Lease(lease.run_id, lease.owner, lease.token, float(row[0]))

    def head(self, run_id: str) -> Head:
        with self._reading(f"read the head of run {run_id!r}", run_id) as cur:
            return self._head(cur, run_id)

    def _head(self, cur: psycopg.Cursor[Any], run_id: str) -> Head:
        row = cur.execute(
            f"SELECT {_HEAD_COLUMNS} FROM runs WHERE run_id = %s", (run_id,)
        ).fetchone()
        if row is None:
            raise RunNotFound(f"no run {run_id!r} in {self.label}", run_id=run_id)
        return _head_of(row)

    # -- reading -------------------------------------------------------------------

    def read(self, run_id: str) -> list[Event]:
        with self._reading(f"read run {run_id!r}", run_id) as cur:
            rows = cur.execute(
                f"SELECT {_COLUMNS} FROM events WHERE run_id = %s ORDER BY seq", (run_id,)
            ).fetchall()
        if not rows:
            raise RunNotFound(f"no run {run_id!r} in {self.label}", run_id=run_id)
        return events_from_rows(rows, run_id)

    def blob(self, digest: str) -> bytes:
        with self._reading(f"read blob {digest}") as cur:
            row = cur.execute("SELECT data FROM blobs WHERE digest = %s", (digest,)).fetchone()
        if row is None:
            raise JournalCorrupt(f"blob {digest} is missing from {self.label}")
        return bytes(row[0])

    def runs(self) -> list[RunInfo]:
        with self._reading("list runs") as cur:
            clock = cur.execute(f"SELECT {_NOW}").fetchone()
            rows = cur.execute(
                """
                SELECT r.run_id, r.flow, r.status, r.owner, r.expires_at, r.created_at,
                       r.updated_at, (SELECT COUNT(*) FROM events c WHERE c.run_id = r.run_id)
                FROM runs r WHERE r.head_seq >= 0 ORDER BY r.created_at DESC NULLS LAST
                """
            ).fetchall()
        t = float(clock[0]) if clock else 0.0
        infos = []
        for run_id, flow, status, owner, expires, started, updated, count in rows:
            if status == "running" and not lease_live(owner, expires, t):
                status = "incomplete"
            ended = updated if status in ("finished", "failed") else None
            infos.append(RunInfo(run_id, flow, status, started or "", ended, int(count)))
        return infos

    def close(self) -> None:
        self._disconnect()

    def _disconnect(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._db = self._db, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    # -- test hooks: what an attacker with access to the database can do --------------

    def tamper_drop_tail(self, run_id: str, count: int) -> None:
        """Delete the last ``count`` events (the head stays): for integrity tests."""
        with self._lock, self._conn().cursor() as cur:
            cur.execute(
                "DELETE FROM events WHERE run_id = %s AND seq > "
                "(SELECT MAX(seq) FROM events WHERE run_id = %s) - %s",
                (run_id, run_id, count),
            )


def _head_of(row: Sequence[Any]) -> Head:
    return Head(
        run_id=row[0],
        seq=int(row[1]),
        hash=row[2],
        signature=row[3],
        status=row[4],
        owner=row[5],
        token=int(row[6]),
        expires_at=float(row[7]),
        flow=row[8],
    )


def _split_schema(url_or_dsn: str) -> tuple[str, str | None]:
    """A URL's ``?schema=NAME`` taken out (libpq would refuse it): (conninfo, schema)."""
    if not is_postgres_url(url_or_dsn):
        return url_or_dsn, None
    parts = urlsplit(url_or_dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    if schema is None:
        return url_or_dsn, None
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema or None


def _lock_key(schema: str) -> int:
    """A stable 64-bit advisory lock id for DDL on ``schema``."""
    digest = hashlib.sha256(f"typedmesh.journal:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _scrub(text: str, password: str | None) -> str:
    """One line, without the password."""
    if password:
        text = text.replace(password, "***")
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "; ".join(line for line in lines if line)


def _reason(text: str, password: str | None) -> str:
    """The driver's message in one line: without the password, without the repeated
    ``connection to server at "h", port p failed:`` preamble."""
    text = _scrub(text, password)
    text = re.sub(r"^connection failed:\s*", "", text)
    text = re.sub(r'connection to server at "[^"]*"(?: \([^)]*\))?, port \d+ failed:\s*', "", text)
    text = re.sub(r'connection to server on socket "[^"]*" failed:\s*', "", text)
    return text.strip() or "no reason given"


# -- one shared journal per URL and process (as shared_journal does for SQLite files) ------

_OPEN: dict[tuple[str, str, bool, int], PostgresJournal] = {}
_OPEN_LOCK = threading.Lock()


def shared_postgres_journal(
    url: str,
    *,
    durability: Durability = "normal",
    readonly: bool = False,
    create: bool = True,
) -> PostgresJournal:
    """One open journal per URL, durability, mode and process: opening by URL is cheap.

    Its ``close`` is a no-op; the connection is closed when the process exits.
    """
    key = (url, durability, readonly, os.getpid())
    with _OPEN_LOCK:
        store = _OPEN.get(key)
        if store is None or store._closed:
            store = _OPEN[key] = _SharedPostgresJournal(
                url, durability=durability, readonly=readonly, create=create
            )
        elif not create:
            with store._lock:
                try:
                    conn = store._conn()
                    found = store._stored_version(conn) > 0
                except store._pg.Error as exc:
                    raise store._translate(exc, "open the journal") from exc
            if not found:
                raise RunNotFound(f"no typedmesh journal at {store.label}")
        return store


class _SharedPostgresJournal(PostgresJournal):
    """A cached journal: ``close`` is a no-op, the process keeps it open."""

    def close(self) -> None:
        return None


@atexit.register
def _close_shared() -> None:
    with _OPEN_LOCK:
        stores = list(_OPEN.values())
        _OPEN.clear()
    for store in stores:
        if isinstance(store, _SharedPostgresJournal):
            with contextlib.suppress(Exception):
                store._disconnect()
