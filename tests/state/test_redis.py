"""RedisStateStore: the conformance suite, a server killed mid-write and mid-run,
and processes racing increments on one key, against real redis-servers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from typedmesh.errors import StateUnavailable
from typedmesh.state import StateStore, Writer
from typedmesh.state.redis import RedisStateStore
from typedmesh.testing.servers import Server, ServerUnavailable, delete_redis_prefix, start_redis
from typedmesh.testing.state_conformance import StateConformance

PASSWORD = "pw-never-shown-7f3a"


class TestRedisState(StateConformance):
    """The whole conformance suite, a fresh key prefix per store made."""

    @pytest.fixture(autouse=True)
    def _redis(self, redis_url: str) -> Iterator[None]:
        self.url = redis_url
        self.prefixes: list[str] = []
        yield
        for prefix in self.prefixes:
            delete_redis_prefix(redis_url, prefix)

    def make_store(self) -> StateStore:
        prefix = f"test:{uuid.uuid4().hex[:12]}:"
        self.prefixes.append(prefix)
        return RedisStateStore(self.url, prefix=prefix)

    def reopen(self, store: StateStore) -> StateStore:
        assert isinstance(store, RedisStateStore)
        return RedisStateStore(self.url, prefix=store.prefix)


# -- a server of the test's own, to kill ------------------------------------------------


def _kill(server: Server) -> None:
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=10)


def _restart(server: Server) -> None:
    """Start the killed server again on its port, loading its append-only file."""
    args = [str(a) for a in server.process.args]  # type: ignore[union-attr]
    at = args.index("--appendonly")
    args[at + 1 : at + 2] = ["yes", "--appendfsync", "always"]
    with server.log.open("ab") as log:
        server.process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=server.directory,
            start_new_session=True,
        )
    client = redis.Redis.from_url(server.url)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if client.ping():
                client.close()
                return
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    raise AssertionError(f"redis-server did not come back: {server.log_tail()}")


@pytest.fixture
def own_redis(redis_url: str) -> Iterator[Server]:
    """A redis-server of this test's own (never the session's: the test kills it),
    made durable (append-only file, fsync on every write) so a restart shows what
    a write left. Asks for ``redis_url`` first, so a machine that cannot start
    Redis skips through the shared fixture, loudly."""
    try:
        server = start_redis()
    except ServerUnavailable as exc:
        pytest.fail(f"the session Redis started but a second one did not: {exc.reason}")
    try:
        client = redis.Redis.from_url(server.url)
        client.config_set("appendfsync", "always")
        client.config_set("appendonly", "yes")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = client.info("persistence")
            if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
                break
            time.sleep(0.02)
        client.close()
        yield server
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=10)
        server.stop()


def _with_password(url: str) -> str:
    """The URL with a password: errors must never show it (the server is given it too)."""
    return url.replace("redis://", f"redis://:{PASSWORD}@", 1)


def _require_password(server: Server) -> None:
    client = redis.Redis.from_url(server.url)
    client.config_set("requirepass", PASSWORD)
    client.close()


def test_a_server_killed_mid_write_is_unavailable_and_the_write_is_not_half_done(
    own_redis: Server,
) -> None:
    _require_password(own_redis)
    url = _with_password(own_redis.url)
    address = f"127.0.0.1:{own_redis.port}"
    store = RedisStateStore(url, prefix="killed:")
    assert PASSWORD not in store.url and address in store.url
    store.create("k", {"n": 0}, writer=Writer(by="setup"))

    # pause writers so the write is sent and waiting for its reply when the server dies
    admin = redis.Redis.from_url(url)
    admin.execute_command("CLIENT", "PAUSE", "30000", "WRITE")
    caught: list[BaseException] = []

    def write() -> None:
        try:
            store.put("k", {"n": 1}, expected_version=1, writer=Writer(write_id="w-1"))
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive(), caught
    _kill(own_redis)
    thread.join(timeout=30)
    assert not thread.is_alive()
    admin.close()

    assert len(caught) == 1 and isinstance(caught[0], StateUnavailable), caught
    error = caught[0]
    assert address in str(error) and PASSWORD not in str(error)
    assert error.store == store.url and error.key == "k"
    for call in (lambda: store.get("k"), lambda: store.history("k"), store.keys):
        with pytest.raises(StateUnavailable, match=address) as down:
            call()
        assert "refused" in str(down.value).lower() and PASSWORD not in str(down.value)

    _restart(own_redis)
    found = store.get("k")  # the same handle reconnects (and reloads its script)
    assert found is not None and (found.value, found.version) == ({"n": 0}, 1)
    assert [r.version for r in store.history("k")] == [1]
    assert store.writes() == store.history("k")
    assert store.write("k", '{"n":1}', expected_version=1, writer=Writer(write_id="w-1")) == (
        2,
        False,
    )
    assert store.write("k", '{"n":1}', expected_version=1, writer=Writer(write_id="w-1")) == (
        2,
        True,
    )
    store.close()


def test_a_server_killed_mid_run_leaves_history_whole(own_redis: Server) -> None:
    """Threads incrementing one key when the server dies: every thread gets
    StateUnavailable; after the restart head, history and write index agree, with
    every acknowledged increment and at most one in doubt per thread."""
    store = RedisStateStore(own_redis.url, prefix="run:")
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
    _kill(own_redis)
    for thread in threads:
        thread.join(timeout=30)
    assert all(isinstance(e, StateUnavailable) for e in errors), errors
    assert all(f"127.0.0.1:{own_redis.port}" in str(e) for e in errors)
    assert sum(acked) > 0

    _restart(own_redis)
    history = store.history("n")
    n = len(history)
    assert [r.version for r in history] == list(range(1, n + 1))
    assert [r.value for r in history] == list(range(1, n + 1))
    found = store.get("n")
    assert found is not None and found.version == n and found.value == n
    assert store.writes() == history
    assert sum(acked) <= n <= sum(acked) + len(threads)
    store.close()


# -- processes racing on one key -------------------------------------------------------

WORKER = """
import json, sys, time
from pathlib import Path
from typedmesh.state import Writer
from typedmesh.state.redis import RedisStateStore
url, prefix, who, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
go = Path(sys.argv[5])
store = RedisStateStore(url, prefix=prefix)
calls = 0
def inc(n):
    global calls
    calls += 1
    return n + 1
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
for _ in range(count):
    store.update("counter", inc, default=0, max_attempts=100_000, writer=Writer(by=who, run_id=who))
print(json.dumps({"who": who, "calls": calls}), flush=True)
"""


def _race(url: str, prefix: str, tmp_path: Path, processes: int, count: int) -> list[Any]:
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, url, prefix, f"p{i}", str(count), str(go)],
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
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    processes, count = 6, 60
    results = _race(redis_url, redis_prefix, tmp_path, processes, count)
    store = RedisStateStore(redis_url, prefix=redis_prefix)
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
    assert store.writes() == history
    for i in range(processes):
        assert store.writes(run_ids=[f"p{i}"]) == [r for r in history if r.writer.by == f"p{i}"]
    assert sum(r["calls"] for r in results) > total  # they did race
    store.close()


def test_stores_with_other_prefixes_do_not_see_each_other(
    redis_url: str, redis_prefix: str
) -> None:
    one = RedisStateStore(redis_url, prefix=redis_prefix + "a*:")
    two = RedisStateStore(redis_url, prefix=redis_prefix + "ab:")
    one.create("x", 1, writer=Writer(run_id="r"))
    two.create("x", 2, writer=Writer(run_id="r"))
    assert one.keys() == ["x"] and two.keys() == ["x"]
    assert [r.value for r in one.writes(run_ids=["r"])] == [1]
    assert [r.value for r in two.writes()] == [2]
    one.close()
    two.close()


def test_an_unreachable_server_is_unavailable_at_open(redis_url: str) -> None:
    from typedmesh.testing.servers import free_port

    port = free_port()
    with pytest.raises(StateUnavailable, match=f"127.0.0.1:{port}") as caught:
        RedisStateStore(f"redis://:{PASSWORD}@127.0.0.1:{port}/0")
    assert PASSWORD not in str(caught.value) and PASSWORD not in caught.value.store


def test_open_store_picks_redis(redis_url: str) -> None:
    from typedmesh.state import open_store

    store = open_store(redis_url)
    assert isinstance(store, RedisStateStore) and store.prefix == "typedmesh:"
    store.close()
