"""Throw-away PostgreSQL and Redis servers for tests and benchmarks.

``start_postgres()`` and ``start_redis()`` start a real server in a fresh
temporary directory, listening on a free loopback port, and return a
``Server`` whose ``url`` a client connects to and whose ``stop()`` shuts it
down and deletes the directory. A ``Server`` is also a context manager::

    from typedmesh.testing.servers import ServerUnavailable, start_postgres

    with start_postgres() as pg:
        journal = PostgresJournal(pg.url)
        ...

PostgreSQL runs as the ``postgres`` system user when this process is root
(PostgreSQL refuses to run as root), as the current user otherwise. Its
binaries are looked for in ``$TYPEDMESH_PG_BIN`` (when set, only there), else in
``/usr/lib/postgresql/*/bin`` (newest first), then ``PATH``; ``redis-server`` in
``$TYPEDMESH_REDIS_SERVER`` (when set), else on ``PATH``.

PostgreSQL runs with ``fsync=off`` by default: fast for tests, but a power failure
may corrupt it, so never measure durability with it (``start_postgres(fsync=True)``
keeps PostgreSQL's default).

A server is stopped by ``stop()``, by the context manager, by an ``atexit``
hook when the process exits without stopping it, and by a small watchdog
process when this process dies without running ``atexit`` (SIGKILL, a
crash): the watchdog stops the server as soon as its pipe from this process
closes. A server that cannot start (binaries missing, no ``postgres`` user,
initdb failing, no port) raises ``ServerUnavailable`` with the reason.

This module does not import pytest (``tests/servers_plugin.py`` has the
fixtures); the isolation helpers (``create_schema``, ``schema_url``,
``delete_redis_prefix``, ``flush_redis``) import psycopg or redis when called.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = [
    "Server",
    "ServerUnavailable",
    "create_schema",
    "delete_redis_prefix",
    "drop_schema",
    "find_postgres_bin",
    "find_redis_server",
    "flush_redis",
    "free_port",
    "schema_url",
    "start_postgres",
    "start_redis",
]


class ServerUnavailable(RuntimeError):
    """A server could not be started here; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


# The watchdog: waits for its stdin (a pipe from the process that started the server)
# to close, then stops the server and deletes its directory. It outlives a SIGKILLed
# parent, so a crashed test run leaves no server behind.
_WATCHDOG = r"""
import os, shutil, signal, sys, time
pid, sig, directory = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
signal.signal(signal.SIGINT, signal.SIG_IGN)
try:
    sys.stdin.buffer.read()
except BaseException:
    pass
def alive():
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
if alive():
    try:
        os.kill(pid, sig)
    except OSError:
        pass
    deadline = time.time() + 15
    while alive() and time.time() < deadline:
        time.sleep(0.02)
    if alive():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        deadline = time.time() + 5
        while alive() and time.time() < deadline:
            time.sleep(0.02)
shutil.rmtree(directory, ignore_errors=True)
"""


@dataclass(eq=False)
class Server:
    """A running throw-away server: connect to ``url``; ``stop()`` when done."""

    kind: str
    """``postgres`` or ``redis``."""
    url: str
    host: str
    port: int
    directory: Path
    """The temporary directory holding the server's data, socket and log (deleted on stop)."""
    process: subprocess.Popen[bytes] = field(repr=False)
    log: Path = field(repr=False)
    _watchdog: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return not self._stopped and self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the server's log (empty once stopped)."""
        return _tail(self.log, lines)

    def stop(self) -> None:
        """Shut the server down (fast shutdown, SIGKILL if it hangs), delete its directory.

        Idempotent; safe to call from any thread.
        """
        with _LIVE_LOCK:
            if self._stopped:
                return
            self._stopped = True
            _LIVE.discard(self)
        watchdog = self._watchdog
        if watchdog is not None and watchdog.poll() is None:
            # closing the pipe is what tells the watchdog to stop the server: the same
            # path a crashed parent takes, so it is exercised on every stop
            if watchdog.stdin is not None:
                with contextlib.suppress(OSError):
                    watchdog.stdin.close()
            try:
                watchdog.wait(timeout=30)
            except subprocess.TimeoutExpired:
                watchdog.kill()
                watchdog.wait()
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_LIVE: set[Server] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _stop_all() -> None:
    """The backstop: servers a process forgot to stop are stopped when it exits."""
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


# -- finding binaries, ports ----------------------------------------------------------


def find_postgres_bin() -> Path:
    """The directory holding ``initdb`` and ``postgres``; ``ServerUnavailable`` if none."""
    candidates: list[Path] = []
    if os.environ.get("TYPEDMESH_PG_BIN"):  # named: that directory and no other
        named = Path(os.environ["TYPEDMESH_PG_BIN"])
        if all(os.access(named / name, os.X_OK) for name in ("initdb", "postgres")):
            return named
        raise ServerUnavailable(f"no initdb and postgres in TYPEDMESH_PG_BIN={named}")

    def version(path: str) -> tuple[int, ...]:
        digits = re.findall(r"\d+", Path(path).parent.name)
        return tuple(int(d) for d in digits)

    candidates += [
        Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    ]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates += [Path("/usr/local/pgsql/bin"), Path("/usr/pgsql/bin")]
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in ("initdb", "postgres")):
            return directory
    raise ServerUnavailable(
        "PostgreSQL server binaries (initdb, postgres) not found in $TYPEDMESH_PG_BIN, "
        "/usr/lib/postgresql/*/bin or PATH (apt-get install -y postgresql)"
    )


def find_redis_server() -> Path:
    """The ``redis-server`` executable; ``ServerUnavailable`` if there is none."""
    if os.environ.get("TYPEDMESH_REDIS_SERVER"):  # named: that executable and no other
        named = Path(os.environ["TYPEDMESH_REDIS_SERVER"])
        if os.access(named, os.X_OK):
            return named
        raise ServerUnavailable(f"TYPEDMESH_REDIS_SERVER={named} is not an executable")
    found = shutil.which("redis-server")
    candidates = [found] if found else []
    candidates += ["/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise ServerUnavailable("redis-server not found on PATH (apt-get install -y redis-server)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _can_connect(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass(frozen=True)
class _Account:
    uid: int
    gid: int
    name: str


def _postgres_account() -> _Account | None:
    """Whom PostgreSQL runs as: None (this user) unless we are root, then ``postgres``."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise ServerUnavailable(
            "running as root, and PostgreSQL refuses root: there is no 'postgres' "
            "system user to run it as (apt-get install -y postgresql creates one)"
        ) from None
    return _Account(entry.pw_uid, entry.pw_gid, entry.pw_name)


def _spawn(
    args: list[str],
    *,
    account: _Account | None,
    log: IO[bytes] | int,
    cwd: Path,
) -> subprocess.Popen[bytes]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
    if account is None:
        return subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
            env=env, start_new_session=True,
        )  # fmt: skip
    return subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd, env=env,
        start_new_session=True, user=account.uid, group=account.gid, extra_groups=[],
    )  # fmt: skip


def _watch(process: subprocess.Popen[bytes], sig: int, directory: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(process.pid), str(int(sig)), str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the test run does not reach it
    )


def _register(server: Server) -> Server:
    with _LIVE_LOCK:
        _LIVE.add(server)
    return server


# -- PostgreSQL -------------------------------------------------------------------------


def start_postgres(
    *,
    fsync: bool = False,
    timeout: float = 60.0,
    settings: dict[str, str] | None = None,
) -> Server:
    """A new PostgreSQL cluster in a temporary directory, on a free 127.0.0.1 port.

    ``url`` is ``postgresql://postgres@127.0.0.1:PORT/postgres`` (trust auth, the
    ``postgres`` superuser). ``fsync=False`` (default) is for test speed only.
    ``settings`` adds server settings (``{"max_connections": "300"}``).
    """
    bindir = find_postgres_bin()
    account = _postgres_account()
    directory = Path(tempfile.mkdtemp(prefix="typedmesh-pg-"))
    try:
        if account is not None:
            os.chown(directory, account.uid, account.gid)
        data = directory / "data"
        log_path = directory / "server.log"
        with log_path.open("wb") as log:
            initdb = _spawn(
                [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                 "-E", "UTF8", "--locale=C", "--no-sync"],
                account=account, log=log, cwd=directory,
            )  # fmt: skip
            try:
                code = initdb.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                initdb.kill()
                initdb.wait()
                raise ServerUnavailable(f"initdb took over {timeout:.0f} s") from None
        if code != 0:
            raise ServerUnavailable(
                f"initdb failed (exit {code}) in {directory}: {_tail(log_path, 5)}"
            )
        options = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(directory),
            "fsync": "on" if fsync else "off",
            "full_page_writes": "on" if fsync else "off",
            "max_connections": "200",
            "logging_collector": "off",
            **(settings or {}),
        }
        last = ""
        for _attempt in range(5):
            port = free_port()
            args = [str(bindir / "postgres"), "-D", str(data), "-p", str(port)]
            for name, value in options.items():
                args += ["-c", f"{name}={value}"]
            with log_path.open("ab") as log:
                process = _spawn(args, account=account, log=log, cwd=directory)
            watchdog = _watch(process, signal.SIGINT, directory)  # SIGINT: fast shutdown
            server = _register(
                Server(
                    kind="postgres",
                    url=f"postgresql://postgres@127.0.0.1:{port}/postgres",
                    host="127.0.0.1",
                    port=port,
                    directory=directory,
                    process=process,
                    log=log_path,
                    _watchdog=watchdog,
                )
            )
            if _wait_postgres(server, data, timeout):
                return server
            last = _tail(log_path, 8)
            _stop_keeping_directory(server)
            if "could not bind" not in last and "in use" not in last:
                break
        raise ServerUnavailable(f"PostgreSQL did not start: {last or 'no log'}")
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _wait_postgres(server: Server, data: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    pid_file = data / "postmaster.pid"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            lines = pid_file.read_text().splitlines()
        except OSError:
            lines = []
        # line 8 of postmaster.pid is the server's status: "ready" once it accepts connections
        if len(lines) >= 8 and lines[7].strip() == "ready" and _can_connect(server.port):
            return True
        time.sleep(0.02)
    return False


def _stop_keeping_directory(server: Server) -> None:
    """Stop a server that failed to start; its directory is reused for the next try."""
    with _LIVE_LOCK:
        server._stopped = True
        _LIVE.discard(server)
    if server.process.poll() is None:
        server.process.kill()
    server.process.wait()
    if server._watchdog is not None:
        server._watchdog.kill()
        server._watchdog.wait()
        if server._watchdog.stdin is not None:
            server._watchdog.stdin.close()


# -- Redis ----------------------------------------------------------------------------------


def start_redis(*, timeout: float = 30.0) -> Server:
    """A new ``redis-server`` with no persistence, on a free 127.0.0.1 port.

    ``url`` is ``redis://127.0.0.1:PORT/0``. Redis runs as the current user (root is fine).
    """
    exe = find_redis_server()
    directory = Path(tempfile.mkdtemp(prefix="typedmesh-redis-"))
    try:
        log_path = directory / "server.log"
        last = ""
        for _attempt in range(5):
            port = free_port()
            args = [
                str(exe), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(directory), "--daemonize", "no",
            ]  # fmt: skip
            with log_path.open("ab") as log:
                process = _spawn(args, account=None, log=log, cwd=directory)
            watchdog = _watch(process, signal.SIGTERM, directory)
            server = _register(
                Server(
                    kind="redis",
                    url=f"redis://127.0.0.1:{port}/0",
                    host="127.0.0.1",
                    port=port,
                    directory=directory,
                    process=process,
                    log=log_path,
                    _watchdog=watchdog,
                )
            )
            if _wait_redis(server, timeout):
                return server
            last = _tail(log_path, 8)
            _stop_keeping_directory(server)
            if "in use" not in last:
                break
        raise ServerUnavailable(f"redis-server did not start: {last or 'no log'}")
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _wait_redis(server: Server, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            try:
                s.connect(("127.0.0.1", server.port))
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return True
            except OSError:
                pass
        time.sleep(0.02)
    return False


# -- isolation helpers (need psycopg / redis) -------------------------------------------------


def create_schema(url: str, prefix: str = "t") -> str:
    """Create a new empty schema with a unique name in the database at ``url``; its name."""
    import psycopg
    from psycopg import sql

    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    return name


def drop_schema(url: str, schema: str) -> None:
    """Drop ``schema`` and everything in it (no error if it is gone)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def schema_url(url: str, schema: str) -> str:
    """``url`` with ``search_path`` set to ``schema`` (libpq ``options``): any client
    connecting to it creates and finds unqualified tables in that schema."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query)))


def delete_redis_prefix(url: str, prefix: str) -> int:
    """Delete every key starting with ``prefix`` in the database at ``url``; how many."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        deleted = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=_glob_escape(prefix) + "*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(client.delete(*batch))
                batch = []
        if batch:
            deleted += int(client.delete(*batch))
        return deleted
    finally:
        client.close()


def flush_redis(url: str) -> None:
    """Empty the Redis database ``url`` names (``FLUSHDB``)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def _glob_escape(text: str) -> str:
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)
