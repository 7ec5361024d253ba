"""typedmesh.testing.servers and the fixtures of tests/servers_plugin.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from typedmesh.testing.servers import (
    Server,
    ServerUnavailable,
    find_postgres_bin,
    schema_url,
    start_redis,
)

TESTS = Path(__file__).resolve().parent


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def wait_gone(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.05)
    return False


def test_the_module_does_not_import_pytest() -> None:
    code = "import sys; sys.modules['pytest'] = None; import typedmesh.testing.servers"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_missing_binaries_are_server_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TYPEDMESH_PG_BIN", "/nonexistent")
    monkeypatch.setenv("TYPEDMESH_REDIS_SERVER", "/nonexistent/redis-server")
    with pytest.raises(ServerUnavailable, match="TYPEDMESH_PG_BIN=/nonexistent"):
        find_postgres_bin()
    with pytest.raises(ServerUnavailable) as caught:
        start_redis()
    assert "/nonexistent/redis-server" in caught.value.reason


def test_redis_starts_stops_and_cleans_up(redis_url: str) -> None:
    """(``redis_url`` first: skipped with the plugin's reason where there is no Redis.)"""
    with start_redis() as server:
        import redis

        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping() and server.url == f"redis://127.0.0.1:{server.port}/0"
        finally:
            client.close()
        directory, pid = server.directory, server.pid
        assert directory.exists() and server.running
    assert not directory.exists() and gone(pid) and not server.running
    server.stop()  # idempotent


def test_servers_die_with_a_sigkilled_parent(postgres_url: str, redis_url: str) -> None:
    """No atexit runs after SIGKILL: the watchdog stops both servers and deletes their files."""
    code = textwrap.dedent("""
        import time
        from typedmesh.testing.servers import start_postgres, start_redis
        pg, r = start_postgres(), start_redis()
        print(pg.pid, pg.directory, r.pid, r.directory, flush=True)
        time.sleep(120)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    pg_pid, pg_dir, redis_pid, redis_dir = child.stdout.readline().split()
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert wait_gone(int(pg_pid)) and wait_gone(int(redis_pid))
    deadline = time.monotonic() + 10
    while (Path(pg_dir).exists() or Path(redis_dir).exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(pg_dir).exists() and not Path(redis_dir).exists()


def test_fixtures_isolate_schemas_and_redis_keys(
    pg_schema: str, pg_schema_url: str, redis_prefix: str, redis_db_url: str, redis_url: str
) -> None:
    import psycopg
    import redis

    with psycopg.connect(pg_schema_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
        row = conn.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 't'"
        ).fetchone()
    assert row == (pg_schema,)
    assert "search_path" in schema_url("postgresql://h/db?sslmode=disable", "s")
    client = redis.Redis.from_url(redis_url)
    own = redis.Redis.from_url(redis_db_url)
    try:
        client.set(redis_prefix + "k", "v")
        assert own.dbsize() == 0 and redis_db_url != redis_url
    finally:
        client.close()
        own.close()


def test_an_unavailable_server_skips_with_a_banner(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["servers_plugin"]\n')
    (tmp_path / "test_needs.py").write_text(
        "def test_pg(postgres_url):\n    pass\n\n"
        "def test_pg_again(pg_schema):\n    pass\n\n"
        "def test_redis(redis_url):\n    pass\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "TYPEDMESH_PG_BIN": str(tmp_path / "no-such-dir"),
        "TYPEDMESH_REDIS_SERVER": str(tmp_path / "no-redis-server"),
    }
    for var in ("TYPEDMESH_TEST_POSTGRES_URL", "TYPEDMESH_TEST_REDIS_URL"):
        env.pop(var, None)
    args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", str(tmp_path)]
    out = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 skipped" in out.stdout, out.stdout
    assert "SERVERS UNAVAILABLE" in out.stdout
    assert "PostgreSQL: 2 test(s) skipped: no initdb and postgres in TYPEDMESH_PG_BIN" in out.stdout
    assert "Redis: 1 test(s) skipped: TYPEDMESH_REDIS_SERVER=" in out.stdout
    required = subprocess.run(
        args, capture_output=True, text=True, env={**env, "TYPEDMESH_REQUIRE_SERVERS": "1"},
        cwd=tmp_path,
    )  # fmt: skip
    assert required.returncode == 1 and "3 errors" in required.stdout, required.stdout


def test_postgres_runs_with_fsync_off_never_as_root(postgres_server: Server | None) -> None:
    import psycopg

    if postgres_server is None:
        pytest.skip("TYPEDMESH_TEST_POSTGRES_URL names a server this session did not start")
    with psycopg.connect(postgres_server.url) as conn:
        assert conn.execute("SHOW fsync").fetchone() == ("off",)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
    status = Path(f"/proc/{postgres_server.pid}/status").read_text()
    uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    assert uid != "0"
