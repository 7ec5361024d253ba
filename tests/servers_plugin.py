"""Real PostgreSQL and Redis servers for the tests: started once per session, on demand.

Fixtures (loaded by ``tests/conftest.py``):

* ``postgres_url`` (session): ``postgresql://postgres@127.0.0.1:PORT/postgres`` of a
  throw-away cluster (superuser, trust auth, ``fsync=off``);
* ``pg_schema`` (per test): the name of a fresh empty schema in it, dropped after the
  test; ``pg_schema_url``: a URL whose ``search_path`` is that schema, for any client
  that creates unqualified tables;
* ``redis_url`` (session): ``redis://127.0.0.1:PORT/0`` of a throw-away redis-server;
* ``redis_prefix`` (per test): a unique key prefix, its keys deleted after the test;
  ``redis_db_url``: a URL to a Redis database of its own, flushed before and after.

A server is started the first time a test asks for it and stopped when the session
ends (also when tests fail; a watchdog stops it if pytest is killed). Set
``TYPEDMESH_TEST_POSTGRES_URL`` / ``TYPEDMESH_TEST_REDIS_URL`` to use a server you run.
When a server truly cannot be started, each test that needs it is skipped with the
reason, and the end of the run prints a banner naming the servers and why;
``TYPEDMESH_REQUIRE_SERVERS=1`` makes that an error instead (for CI that must test them).
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from typedmesh.testing.servers import (
    Server,
    ServerUnavailable,
    create_schema,
    delete_redis_prefix,
    drop_schema,
    flush_redis,
    schema_url,
    start_postgres,
    start_redis,
)

UNAVAILABLE: dict[str, str] = {}
"""Server kind -> why it could not be started (for the end-of-run banner)."""

_NAMES = {"postgres": "PostgreSQL", "redis": "Redis"}
_SKIP_PREFIX = "{} unavailable: "


def _required() -> bool:
    return os.environ.get("TYPEDMESH_REQUIRE_SERVERS", "") not in ("", "0")


def _server(kind: str, start: Callable[[], Server]) -> Iterator[Server | None]:
    try:
        server = start()
    except ServerUnavailable as exc:
        UNAVAILABLE[kind] = exc.reason
        message = _SKIP_PREFIX.format(_NAMES[kind]) + exc.reason
        if _required():
            pytest.fail(message + " (TYPEDMESH_REQUIRE_SERVERS is set)", pytrace=False)
        pytest.skip(message)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Server | None]:
    """The session's PostgreSQL (None when TYPEDMESH_TEST_POSTGRES_URL names one)."""
    if os.environ.get("TYPEDMESH_TEST_POSTGRES_URL"):
        yield None
        return
    yield from _server("postgres", start_postgres)


@pytest.fixture(scope="session")
def postgres_url(postgres_server: Server | None) -> str:
    """A superuser URL to a throw-away PostgreSQL: ``postgresql://postgres@127.0.0.1:P/postgres``."""
    if postgres_server is None:
        return os.environ["TYPEDMESH_TEST_POSTGRES_URL"]
    return postgres_server.url


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[str]:
    """A fresh, empty schema for this test (dropped, with everything in it, afterwards)."""
    name = create_schema(postgres_url, prefix="test")
    try:
        yield name
    finally:
        drop_schema(postgres_url, name)


@pytest.fixture
def pg_schema_url(postgres_url: str, pg_schema: str) -> str:
    """``postgres_url`` with ``search_path`` set to this test's fresh schema."""
    return schema_url(postgres_url, pg_schema)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Server | None]:
    """The session's redis-server (None when TYPEDMESH_TEST_REDIS_URL names one)."""
    if os.environ.get("TYPEDMESH_TEST_REDIS_URL"):
        yield None
        return
    yield from _server("redis", start_redis)


@pytest.fixture(scope="session")
def redis_url(redis_server: Server | None) -> str:
    """A URL to a throw-away Redis: ``redis://127.0.0.1:PORT/0``."""
    if redis_server is None:
        return os.environ["TYPEDMESH_TEST_REDIS_URL"]
    return redis_server.url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses (``test:<hex>:``); its keys are deleted afterwards."""
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        delete_redis_prefix(redis_url, prefix)


_DATABASES = itertools.cycle(range(1, 16))  # every Redis has 16; 0 is redis_url's


@pytest.fixture
def redis_db_url(redis_url: str) -> Iterator[str]:
    """A URL to a Redis database of this test's own (1-15), empty before and flushed after."""
    url = urlunsplit(urlsplit(redis_url)._replace(path=f"/{next(_DATABASES)}"))
    flush_redis(url)
    try:
        yield url
    finally:
        flush_redis(url)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """A loud banner when tests were skipped because a server could not be started."""
    if not UNAVAILABLE:
        return
    skipped = terminalreporter.stats.get("skipped", [])
    counts = {
        kind: sum(
            1 for report in skipped if _SKIP_PREFIX.format(_NAMES[kind]) in str(report.longrepr)
        )
        for kind in UNAVAILABLE
    }
    terminalreporter.write_sep("!", "SERVERS UNAVAILABLE: tests skipped", red=True, bold=True)
    for kind, reason in UNAVAILABLE.items():
        terminalreporter.write_line(
            f"  {_NAMES[kind]}: {counts[kind]} test(s) skipped: {reason}", red=True, bold=True
        )
    terminalreporter.write_line(
        "  These tests did NOT run. Install the server (scripts/test does, as root with "
        "apt-get) or set TYPEDMESH_TEST_POSTGRES_URL / TYPEDMESH_TEST_REDIS_URL.",
        red=True,
    )
    terminalreporter.write_sep("!", red=True, bold=True)
