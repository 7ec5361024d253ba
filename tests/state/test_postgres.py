"""PostgresStateStore: the conformance suite, a server killed mid-write and mid-run,
and processes racing increments on one key, against real PostgreSQL servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from typedmesh.errors import StateUnavailable
from typedmesh.state import StateStore, Writer
from typedmesh.state.postgres import PostgresStateStore
from typedmesh.testing.servers import Server, ServerUnavailable, drop_schema, start_postgres
from typedmesh.testing.state_conformance import StateConformance

PASSWORD = "pw-never-shown-7f3a"


class TestPostgresState(StateConformance):
    """The whole conformance suite, a fresh schema per store made."""

    @pytest.fixture(autouse=True)
    def _postgres(self, postgres_url: str) -> Iterator[None]:
        self.url = postgres_url
        self.schemas: list[str] = []
        yield
        for schema in self.schemas:
            drop_schema(postgres_url, schema)

    def make_store(self) -> StateStore:
        schema = f"state_{uuid.uuid4().hex[:16]}"
        self.schemas.append(schema)
        return PostgresStateStore(self.url, schema=schema)

    def reopen(self, store: StateStore) -> StateStore:
        assert isinstance(store, PostgresStateStore)
        return PostgresStateStore(self.url, schema=store.schema)


# -- a server of the test's own, to kill ------------------------------------------------


def _with_password(url: str) -> str:
    """The same URL with a password (trust auth ignores it): errors must not show it."""
    return url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


def _kill(server: Server) -> None:
    """SIGKILL the postmaster and every backend (they share its process group)."""
    os.killpg(server.pid, signal.SIGKILL)
    server.process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)


def _restart(server: Server) -> None:
    """Start the killed server again: same data directory, port and settings (it
    recovers from its write-ahead log, as after a crash)."""
    import pwd

    account = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    with server.log.open("ab") as log:
        server.process = subprocess.Popen(
            list(server.process.args),  # type: ignore[arg-type]
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=server.directory,
            start_new_session=True,
            user=None if account is None else account.pw_uid,
            group=None if account is None else account.pw_gid,
            extra_groups=None if account is None else [],
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            psycopg.connect(server.url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            time.sleep(0.05)
    raise AssertionError(f"PostgreSQL did not come back: {server.log_tail()}")


@pytest.fixture
def own_postgres(postgres_url: str) -> Iterator[Server]:
    """A PostgreSQL of this test's own (never the session's: the test kills it).

    Asks for ``postgres_url`` first, so a machine that cannot start PostgreSQL
    skips through the shared fixture, loudly."""
    try:
        server = start_postgres()
    except ServerUnavailable as exc:
        pytest.fail(f"the session PostgreSQL started but a second one did not: {exc.reason}")
    try:
        yield server
    finally:
        if server.process.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.process.wait(timeout=10)
        server.stop()


def _wait_for_lock_waiter(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.01)
    raise AssertionError("the write never started waiting for the row lock")


def test_a_server_killed_mid_write_is_unavailable_and_the_write_is_not_half_done(
    own_postgres: Server,
) -> None:
    url = _with_password(own_postgres.url)
    address = f"127.0.0.1:{own_postgres.port}"
    store = PostgresStateStore(url, schema="killed")
    assert PASSWORD not in store.url and address in store.url
    store.create("k", {"n": 0}, writer=Writer(by="setup"))

    # hold the key's row lock so the write is inside its statement when the server dies
    blocker = psycopg.connect(own_postgres.url)
    blocker.execute("SELECT * FROM killed.typedmesh_state WHERE key = 'k' FOR UPDATE")
    caught: list[BaseException] = []

    def write() -> None:
        try:
            store.put("k", {"n": 1}, expected_version=1, writer=Writer(write_id="w-1"))
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    _wait_for_lock_waiter(own_postgres.url)
    _kill(own_postgres)
    thread.join(timeout=30)
    assert not thread.is_alive()
    blocker.close()

    assert len(caught) == 1 and isinstance(caught[0], StateUnavailable), caught
    error = caught[0]
    assert address in str(error) and PASSWORD not in str(error)
    assert error.store == store.url and error.key == "k"
    # while it is down: every call says so, naming the server and why
    for call in (lambda: store.get("k"), lambda: store.history("k"), store.keys):
        with pytest.raises(StateUnavailable, match=address) as down:
            call()
        assert "refused" in str(down.value).lower() and PASSWORD not in str(down.value)

    _restart(own_postgres)
    # the same store handle reconnects by itself; the cut-off write left nothing
    found = store.get("k")
    assert found is not None and (found.value, found.version) == ({"n": 0}, 1)
    assert [r.version for r in store.history("k")] == [1]
    assert store.writes(run_ids=None) == store.history("k")
    # retried under its write id it applies once, as a first attempt
    assert store.write("k", '{"n":1}', expected_version=1, writer=Writer(write_id="w-1")) == (
        2,
        False,
    )
    assert store.write("k", '{"n":1}', expected_version=1, writer=Writer(write_id="w-1")) == (
        2,
        True,
    )
    store.close()


def test_a_server_killed_mid_run_leaves_history_whole(own_postgres: Server) -> None:
    """Threads incrementing one key when the server dies: every thread gets
    StateUnavailable; after the restart the history is one unbroken sequence with
    every acknowledged increment and at most one in doubt per thread."""
    store = PostgresStateStore(_with_password(own_postgres.url), schema="run")
    acked = [0] * 4
    errors: list[BaseException | None] = [None] * 4
    started = threading.Barrier(5)

    def work(i: int) -> None:
        started.wait()
        try:
            while True:
                store.update("n", lambda n: n + 1, default=0, max_attempts=1000)
                acked[i] += 1
        except BaseException as exc:
            errors[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    started.wait()
    time.sleep(0.4)
    _kill(own_postgres)
    for thread in threads:
        thread.join(timeout=30)
    assert all(isinstance(e, StateUnavailable) for e in errors), errors
    assert all(f"127.0.0.1:{own_postgres.port}" in str(e) for e in errors)
    assert sum(acked) > 0

    _restart(own_postgres)
    history = store.history("n")
    n = len(history)
    assert [r.version for r in history] == list(range(1, n + 1))
    assert [r.value for r in history] == list(range(1, n + 1))
    found = store.get("n")
    assert found is not None and found.version == n and found.value == n
    assert sum(acked) <= n <= sum(acked) + len(threads)
    store.close()


# -- processes racing on one key -------------------------------------------------------

WORKER = """
import json, sys, time
from pathlib import Path
from typedmesh.state import Writer
from typedmesh.state.postgres import PostgresStateStore
url, schema, who, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
go = Path(sys.argv[5])
store = PostgresStateStore(url, schema=schema)
store.get("counter")  # connected before the start
calls = 0
def inc(n):
    global calls
    calls += 1
    return n + 1
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
for _ in range(count):
    store.update("counter", inc, default=0, max_attempts=100_000, writer=Writer(by=who))
print(json.dumps({"who": who, "calls": calls}), flush=True)
"""


def race(
    url: str, schema: str, tmp_path: Path, module: str, processes: int, count: int
) -> list[Any]:
    go = tmp_path / "go"
    code = WORKER.replace("typedmesh.state.postgres import PostgresStateStore", module)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url, schema, f"p{i}", str(count), str(go)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    go.touch()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        results.append(json.loads(out))
    return results


def test_processes_racing_increments_lose_none(
    postgres_url: str, pg_schema: str, tmp_path: Path
) -> None:
    processes, count = 6, 60
    results = race(
        postgres_url,
        pg_schema,
        tmp_path,
        "typedmesh.state.postgres import PostgresStateStore",
        processes,
        count,
    )
    store = PostgresStateStore(postgres_url, schema=pg_schema)
    total = processes * count
    found = store.get("counter")
    assert found is not None and (found.value, found.version) == (total, total)
    history = store.history("counter")
    assert [r.version for r in history] == list(range(1, total + 1))
    assert [r.value for r in history] == list(range(1, total + 1))
    by: dict[str | None, int] = {}
    for record in history:
        by[record.writer.by] = by.get(record.writer.by, 0) + 1
    assert by == {f"p{i}": count for i in range(processes)}
    assert [r.version for r in store.writes()] == list(range(1, total + 1))
    # they did race: some reads were stale (fn ran again)
    assert sum(r["calls"] for r in results) > total
    store.close()


def test_tables_are_created_once_by_racing_processes(postgres_url: str, tmp_path: Path) -> None:
    schema = f"fresh_{uuid.uuid4().hex[:12]}"
    code = (
        "import sys; from typedmesh.state.postgres import PostgresStateStore as P; "
        "s = P(sys.argv[1], schema=sys.argv[2]); s.create(sys.argv[3], 1); s.close()"
    )
    try:
        procs = [
            subprocess.Popen([sys.executable, "-c", code, postgres_url, schema, f"k{i}"])
            for i in range(4)
        ]
        assert [p.wait(timeout=120) for p in procs] == [0] * 4
        store = PostgresStateStore(postgres_url, schema=schema)
        assert store.keys() == ["k0", "k1", "k2", "k3"]
        store.close()
    finally:
        drop_schema(postgres_url, schema)


def test_the_schema_may_come_from_the_url_and_default_to_the_search_path(
    postgres_url: str, pg_schema: str
) -> None:
    store = PostgresStateStore(postgres_url + f"?schema={pg_schema}")
    assert store.schema == pg_schema
    store.create("a", 1)
    store.close()
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute(
            sql.SQL("SELECT value FROM {}.typedmesh_state WHERE key = 'a'").format(
                sql.Identifier(pg_schema)
            )
        ).fetchone()
    assert row == ("1",)
    from typedmesh.testing.servers import schema_url

    by_path = PostgresStateStore(schema_url(postgres_url, pg_schema))
    assert by_path.schema == pg_schema
    found = by_path.get("a")
    assert found is not None and found.value == 1
    by_path.close()


def test_a_role_that_may_only_read_and_write_rows_opens_an_existing_store(
    postgres_url: str, pg_schema: str
) -> None:
    PostgresStateStore(postgres_url, schema=pg_schema).close()  # tables made by the owner
    role = f"rows_{uuid.uuid4().hex[:8]}"
    ident = sql.Identifier(pg_schema)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        for grant in (
            "GRANT USAGE ON SCHEMA {s} TO {r}",
            "GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {s} TO {r}",
            "GRANT USAGE ON ALL SEQUENCES IN SCHEMA {s} TO {r}",
        ):
            conn.execute(sql.SQL(grant).format(s=ident, r=sql.Identifier(role)))
    try:
        url = postgres_url.replace("postgres@", f"{role}@", 1)
        store = PostgresStateStore(url, schema=pg_schema)
        store.create("a", 1, writer=Writer(run_id="r"))
        assert store.update("a", lambda n: n + 1).version == 2
        assert [r.value for r in store.writes(run_ids=["r"])] == [1]
        store.close()
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_an_unreachable_server_is_unavailable_at_open(postgres_url: str) -> None:
    from typedmesh.testing.servers import free_port

    port = free_port()
    with pytest.raises(StateUnavailable, match=f"127.0.0.1:{port}") as caught:
        PostgresStateStore(f"postgresql://u:{PASSWORD}@127.0.0.1:{port}/db")
    assert PASSWORD not in str(caught.value) and PASSWORD not in caught.value.store


def test_open_store_picks_postgres(postgres_url: str, pg_schema: str) -> None:
    from typedmesh.state import open_store

    store = open_store(postgres_url + f"?schema={pg_schema}")
    assert isinstance(store, PostgresStateStore) and store.schema == pg_schema
    store.close()


def test_a_closed_store_refuses_calls(postgres_url: str, pg_schema: str) -> None:
    from typedmesh.errors import StateError

    store = PostgresStateStore(postgres_url, schema=pg_schema)
    store.close()
    with pytest.raises(StateError, match="closed"):
        store.get("a")
