"""Shared-state compare-and-swap throughput per backend, and the PostgreSQL journal.

A script, not a test: it prints tables. Run it in the dev virtualenv (it has the
``postgres`` and ``redis`` extras):

    .venv/bin/python benchmarks/state.py --plain

It starts its own PostgreSQL (fsync on: durable numbers) and redis-server (no
persistence) through ``typedmesh.testing.servers`` and stops them at the end; a
server that cannot start is reported and its rows are skipped.

1. Uncontended CAS: one writer in one process. ``put`` at the version it holds
   (one ``_write``, the CAS itself), and ``update`` (a read, then the CAS).
2. Contended: 8 writer PROCESSES (memory: 8 threads, it lives in one process)
   each ``update`` one key ``+1`` K times (or until a time cap: a durable
   PostgreSQL commits about 100 times a second here): throughput, conflicts
   (StaleVersion per successful write), retries (total; worst for one update),
   lost updates (the updates the writers saw succeed minus the final value; must
   be 0) and whether the history is versions 1..n holding values 1..n.
3. Journal append: ``PostgresJournal`` next to ``SQLiteJournal``, with the
   realistic model events of ``overhead.py`` section 3 (batches of 256).

    --quick          a fast smoke run (shorter timings, fewer updates and events)
    --only A,B       run some sections: cas, contended, journal
    --plain          plain-text tables even when rich is installed (for logs, README)
    --worker ...     (internal) one contending writer process
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from typedmesh.errors import StaleVersion
from typedmesh.state import MemoryStateStore, StateStore, Writer

TARGET_SQLITE_CAS = 5_000  # uncontended CAS writes a second on SQLite
WRITERS = 8
MAX_ATTEMPTS = 1_000_000  # an update never gives up here: conflicts are counted instead


@dataclass(frozen=True)
class Settings:
    cas_seconds: float  # one timed chunk of the uncontended loop
    cas_repeats: int  # chunks; the median is shown
    updates: int  # updates per contending writer (at most)
    contend_seconds: float  # ... and no longer than this (a slow backend under load)
    events: int  # journal events per repetition
    journal_repeats: int


FULL = Settings(0.6, 3, 250, 8.0, 10_000, 2)
QUICK = Settings(0.3, 1, 40, 3.0, 2_000, 1)


# -- backends -----------------------------------------------------------------------


def make_store(spec: dict[str, str]) -> StateStore:
    """A store from a JSON-able spec (the contending processes get the same spec)."""
    kind = spec["kind"]
    if kind == "memory":
        return MemoryStateStore()
    if kind == "sqlite":
        from typedmesh.state.sqlite import SQLiteStateStore

        return SQLiteStateStore(spec["path"])
    if kind == "postgres":
        from typedmesh.state.postgres import PostgresStateStore

        return PostgresStateStore(spec["url"], schema=spec["schema"])
    if kind == "redis":
        from typedmesh.state.redis import RedisStateStore

        return RedisStateStore(spec["url"], prefix=spec["prefix"])
    raise ValueError(f"unknown backend {kind!r}")


@dataclass
class Backend:
    name: str
    note: str
    spec: Callable[[], dict[str, str]]
    """A fresh, empty store's spec each call."""


@dataclass
class Servers:
    postgres: Any = None
    redis: Any = None
    missing: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        for server in (self.postgres, self.redis):
            if server is not None:
                server.stop()


def start_servers(report: Report) -> Servers:
    from typedmesh.testing.servers import ServerUnavailable, start_postgres, start_redis

    servers = Servers()
    try:
        servers.postgres = start_postgres(fsync=True)
    except ServerUnavailable as exc:
        servers.missing["PostgreSQL"] = exc.reason
    try:
        servers.redis = start_redis()
    except ServerUnavailable as exc:
        servers.missing["Redis"] = exc.reason
    for name, reason in servers.missing.items():
        report.notes.append(f"{name} rows SKIPPED: the server did not start: {reason}")
    return servers


def backends(tmp: Path, servers: Servers) -> list[Backend]:
    found = [
        Backend("memory", "MemoryStateStore", lambda: {"kind": "memory"}),
        Backend(
            "SQLite",
            "WAL, durability normal",
            lambda: {"kind": "sqlite", "path": str(tmp / f"state-{uuid.uuid4().hex[:8]}.db")},
        ),
    ]
    if servers.postgres is not None:
        pg_url = servers.postgres.url
        found.append(
            Backend(
                "PostgreSQL",
                "fsync on, synchronous_commit on",
                lambda: {"kind": "postgres", "url": pg_url, "schema": f"b_{uuid.uuid4().hex[:10]}"},
            )
        )
    if servers.redis is not None:
        redis_url = servers.redis.url
        found.append(
            Backend(
                "Redis",
                "no persistence",
                lambda: {
                    "kind": "redis",
                    "url": redis_url,
                    "prefix": f"b:{uuid.uuid4().hex[:10]}:",
                },
            )
        )
    return found


# -- results and printing -------------------------------------------------------------


@dataclass
class Report:
    cas: list[dict[str, Any]] = field(default_factory=list)
    contended: list[dict[str, Any]] = field(default_factory=list)
    journal: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)


PLAIN = False
"""Set by --plain: print aligned text even when rich is importable."""


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table when rich is importable, else aligned plain text."""
    try:
        if PLAIN:
            raise ImportError("--plain")
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        print(f"\n{title}")
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
        print("  ".join("-" * w for w in widths))
        for row in rows:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        return
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=140).print(table)


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


# -- section 1: uncontended CAS ---------------------------------------------------------


def timed_rate(op: Callable[[], None], seconds: float, repeats: int) -> float:
    """Median operations a second over ``repeats`` chunks of about ``seconds`` each."""
    for _ in range(50):  # warm up: connections, prepared statements, the script cache
        op()
    rates = []
    for _ in range(repeats):
        done = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(20):
                op()
            done += 20
            now = time.perf_counter()
            if now >= deadline:
                break
        rates.append(done / (now - start))
    return statistics.median(rates)


def measure_cas(store: StateStore, s: Settings) -> tuple[float, float, float]:
    """CAS puts, updates and reads a second on one store, one writer."""
    writer = Writer(by="bench")
    held = store.create("cas", 0, writer=writer)
    state = {"version": held.version, "n": 0}

    def put() -> None:
        state["n"] += 1
        done = store.put("cas", state["n"], expected_version=state["version"], writer=writer)
        state["version"] = done.version

    put_rate = timed_rate(put, s.cas_seconds, s.cas_repeats)
    store.create("upd", 0, writer=writer)
    update_rate = timed_rate(
        lambda: store.update("upd", lambda n: n + 1, writer=writer), s.cas_seconds, s.cas_repeats
    )
    read_rate = timed_rate(lambda: store.get("cas"), s.cas_seconds, s.cas_repeats)
    return put_rate, update_rate, read_rate


def section_cas(s: Settings, found: list[Backend], report: Report, extra: list[Backend]) -> None:
    for backend in found + extra:
        store = make_store(backend.spec())
        try:
            put_rate, update_rate, read_rate = measure_cas(store, s)
        finally:
            store.close()
        if "(info)" not in backend.note:
            report.values[f"cas_{backend.name}"] = put_rate
        report.cas.append(
            {
                "backend": backend.name,
                "note": backend.note,
                "put": put_rate,
                "us": 1e6 / put_rate,
                "update": update_rate,
                "get": read_rate,
            }
        )


# -- section 2: contended updates --------------------------------------------------------


def worker(
    spec: dict[str, str], key: str, count: int, seconds: float, go: Path, who: str
) -> dict[str, Any]:
    """One contending writer: ``count`` updates of ``key`` (fewer if ``seconds`` pass
    first), counting every attempt."""
    store = make_store(spec)
    store.get(key)  # connected before the start
    calls = 0
    worst = 0
    gave_up = 0

    def inc(n: int) -> int:
        nonlocal calls
        calls += 1
        return n + 1

    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.0005)
    start = time.time()
    done = 0
    while done < count and time.time() - start < seconds:
        before = calls
        try:
            store.update(key, inc, default=0, max_attempts=MAX_ATTEMPTS, writer=Writer(by=who))
        except StaleVersion:
            gave_up += 1
        done += 1
        worst = max(worst, calls - before - 1)
    end = time.time()
    store.close()
    ok = done - gave_up
    return {
        "start": start,
        "end": end,
        "ok": ok,
        "stale": calls - ok,
        "worst": worst,
        "gave_up": gave_up,
    }


def run_processes(
    spec: dict[str, str], key: str, count: int, seconds: float, tmp: Path
) -> list[dict[str, Any]]:
    go = tmp / f"go-{uuid.uuid4().hex[:8]}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                json.dumps(spec),
                key,
                str(count),
                str(seconds),
                str(go),
                f"w{i}",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(WRITERS)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"a writer process did not start: {line!r}")
        go.touch()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"a writer process failed (exit {proc.returncode})")
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def run_threads(store: StateStore, key: str, count: int, seconds: float) -> list[dict[str, Any]]:
    """The memory store's contention: threads of this process on one store."""
    results: list[dict[str, Any]] = []
    barrier = threading.Barrier(WRITERS)
    lock = threading.Lock()

    def body(i: int) -> None:
        calls = worst = 0

        def inc(n: int) -> int:
            nonlocal calls
            calls += 1
            return n + 1

        barrier.wait()
        start = time.time()
        done = 0
        while done < count and time.time() - start < seconds:
            before = calls
            store.update(key, inc, default=0, max_attempts=MAX_ATTEMPTS)
            done += 1
            worst = max(worst, calls - before - 1)
        end = time.time()
        with lock:
            results.append(
                {
                    "start": start,
                    "end": end,
                    "ok": done,
                    "stale": calls - done,
                    "worst": worst,
                    "gave_up": 0,
                }
            )

    threads = [threading.Thread(target=body, args=(i,)) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def section_contended(s: Settings, found: list[Backend], tmp: Path, report: Report) -> None:
    for backend in found:
        spec = backend.spec()
        key = "counter"
        store = make_store(spec)
        try:
            if backend.name == "memory":
                results = run_threads(store, key, s.updates, s.contend_seconds)
                how = f"{WRITERS} threads"
            else:
                results = run_processes(spec, key, s.updates, s.contend_seconds, tmp)
                how = f"{WRITERS} processes"
            final = store.get(key)
            value = 0 if final is None else int(final.value)
            history = store.history(key)
            whole = [r.version for r in history] == list(range(1, len(history) + 1)) and [
                r.value for r in history
            ] == list(range(1, len(history) + 1))
        finally:
            store.close()
        ok = sum(r["ok"] for r in results)
        stale = sum(r["stale"] for r in results)
        span = max(r["end"] for r in results) - min(r["start"] for r in results)
        lost = ok - value  # every update a writer saw succeed must be in the value
        if ok < WRITERS * s.updates:
            report.notes.append(
                f"{backend.name}: the contending writers stopped at the {s.contend_seconds:.0f} s "
                f"cap after {ok} of {WRITERS * s.updates} updates"
            )
        report.values[f"lost_{backend.name}"] = lost
        report.contended.append(
            {
                "backend": backend.name,
                "how": how,
                "writes": ok,
                "seconds": span,
                "rate": ok / span if span > 0 else None,
                "conflicts": stale / ok if ok else None,
                "retries": stale,
                "worst": max(r["worst"] for r in results),
                "gave_up": sum(r["gave_up"] for r in results),
                "lost": lost,
                "history": "whole" if whole and len(history) == value else "BROKEN",
            }
        )


# -- section 3: journal append -----------------------------------------------------------


def section_journal(s: Settings, tmp: Path, servers: Servers, report: Report) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import overhead  # the realistic events and the loops of its section 3

    import typedmesh as tm
    from typedmesh.journal import EventLog, new_owner

    pg_journal: Any = None
    try:
        from typedmesh.journal.postgres import PostgresJournal

        pg_journal = PostgresJournal
    except ImportError as exc:
        report.notes.append(f"PostgreSQL journal rows SKIPPED: not there yet ({exc})")
    if servers.postgres is None:
        pg_journal = None  # the server's absence is reported with the server

    def sqlite(_: int) -> Any:
        return tm.SQLiteJournal(tmp / f"journal-{uuid.uuid4().hex[:8]}.db")

    def postgres(durability: str) -> Callable[[int], Any]:
        def make(_: int) -> Any:
            schema = f"j_{uuid.uuid4().hex[:10]}"
            return pg_journal(servers.postgres.url, schema=schema, durability=durability)

        return make

    journals: list[tuple[str, str, Callable[[int], Any]]] = [
        ("SQLiteJournal", "WAL, durability normal (no fsync a commit)", sqlite)
    ]
    if pg_journal is not None:
        journals += [
            ("PostgresJournal", "durability normal (synchronous_commit local)", postgres("normal")),
            ("PostgresJournal", "(info) durability off (synchronous_commit off)", postgres("off")),
        ]
    events = overhead.realistic_events(s.events)
    small = events[:300]  # one commit per 2 events: 150 commits (fsyncs on PostgreSQL)
    batch = overhead.BATCH
    for name, note, make in journals:
        end_to_end, prebuilt, commits = [], [], []
        for r in range(s.journal_repeats):
            with make(r) as journal:
                end_to_end.append(overhead.append_end_to_end(journal, events))
            collect = overhead.Collect()
            overhead.emit_all(EventLog("bench-run", sinks=[collect]), events)
            with make(r) as journal:
                lease = journal.create_run("bench-run", new_owner())
                start = time.perf_counter()
                for i in range(0, len(events), batch):
                    part = collect.events[i : i + batch]
                    lease = journal.append(lease, part, collect.blobs if i == 0 else {})
                prebuilt.append(time.perf_counter() - start)
            with make(r) as journal:
                commits.append(overhead.append_end_to_end(journal, small, batch=2))
        row = {
            "journal": name,
            "note": note,
            "end_to_end": len(events) / statistics.median(end_to_end),
            "prebuilt": len(events) / statistics.median(prebuilt),
            "commits": len(small) / 2 / statistics.median(commits),
        }
        report.journal.append(row)
        if "(info)" not in note:
            report.values[f"journal_{name}"] = row["end_to_end"]


# -- the report ------------------------------------------------------------------------------


def source_state() -> str:
    """The commit measured, and whether src/ had uncommitted edits (read-only git)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "source: not a git checkout"
    return f"source: commit {head}" + (" + uncommitted edits in src/" if dirty else "")


def load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def versions(servers: Servers) -> str:
    found = []
    for name in ("typedmesh", "psycopg", "redis"):
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (missing)")
    for server, what in ((servers.postgres, "postgres"), (servers.redis, "redis-server")):
        if server is None:
            continue
        try:
            exe = "postgres" if what == "postgres" else what
            if what == "postgres":
                from typedmesh.testing.servers import find_postgres_bin

                exe = str(find_postgres_bin() / "postgres")
            out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
            found.append(out.strip().split("\n")[0])
        except OSError:
            pass
    return ", ".join(found)


def print_report(report: Report, s: Settings) -> None:
    v = report.values
    if report.cas:
        print_table(
            "1. Uncontended: one writer, one process (median of timed chunks)",
            ["backend", "configuration", "CAS put/s", "us/CAS", "update/s", "get/s"],
            [
                [
                    r["backend"],
                    r["note"],
                    fmt(r["put"], 0),
                    fmt(r["us"]),
                    fmt(r["update"], 0),
                    fmt(r["get"], 0),
                ]
                for r in report.cas
            ],
        )
    if report.contended:
        print_table(
            f"2. Contended: {WRITERS} writers x {s.updates} update(+1) of one key "
            f"(at most {s.contend_seconds:.0f} s)",
            [
                "backend",
                "writers",
                "writes",
                "wall s",
                "writes/s",
                "conflicts/write",
                "retries",
                "worst",
                "lost updates",
                "history",
            ],
            [
                [
                    r["backend"],
                    r["how"],
                    str(r["writes"]),
                    fmt(r["seconds"], 2),
                    fmt(r["rate"], 0),
                    fmt(r["conflicts"], 2),
                    str(r["retries"]),
                    str(r["worst"]),
                    str(r["lost"]),
                    r["history"],
                ]
                for r in report.contended
            ],
        )
    if report.journal:
        print_table(
            f"3. Journal append: realistic model events (overhead.py section 3), batches of {256}",
            [
                "journal",
                "configuration",
                "events/s end to end",
                "events/s prebuilt",
                "commits/s (2 events)",
            ],
            [
                [
                    r["journal"],
                    r["note"],
                    fmt(r["end_to_end"], 0),
                    fmt(r["prebuilt"], 0),
                    fmt(r["commits"], 0),
                ]
                for r in report.journal
            ],
        )
    rows = []
    if "cas_SQLite" in v:
        rows.append(
            [
                "uncontended CAS on SQLite",
                f"{v['cas_SQLite']:,.0f}/s",
                f">= {TARGET_SQLITE_CAS:,}/s",
                "PASS" if v["cas_SQLite"] >= TARGET_SQLITE_CAS else "FAIL",
            ]
        )
    for key, lost in v.items():
        if key.startswith("lost_"):
            rows.append(
                [f"lost updates, {key[5:]}", f"{lost:.0f}", "0", "PASS" if lost == 0 else "FAIL"]
            )
    if "journal_PostgresJournal" in v and "journal_SQLiteJournal" in v:
        ratio = v["journal_PostgresJournal"] / v["journal_SQLiteJournal"]
        rows.append(
            [
                "(info) PostgreSQL journal append vs SQLite, end to end",
                f"{v['journal_PostgresJournal']:,.0f} / {v['journal_SQLiteJournal']:,.0f} ev/s"
                f" = {ratio:.2f}",
                "-",
                "-",
            ]
        )
    if rows:
        print_table(
            f"Targets (load average {load()} now)",
            ["measure", "result", "target", "PASS/FAIL"],
            rows,
        )
    for note in report.notes:
        print(f"note: {note}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fast smoke run")
    parser.add_argument(
        "--only",
        default="cas,contended,journal",
        help="comma-separated sections: cas, contended, journal",
    )
    parser.add_argument("--plain", action="store_true", help="plain-text tables (no rich)")
    parser.add_argument(
        "--worker",
        nargs=6,
        metavar=("SPEC", "KEY", "N", "SECONDS", "GO", "WHO"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args(argv)
    if args.worker:
        spec, key, count, seconds, go, who = args.worker
        done = worker(json.loads(spec), key, int(count), float(seconds), Path(go), who)
        print(json.dumps(done), flush=True)
        return 0
    global PLAIN
    PLAIN = args.plain
    settings = QUICK if args.quick else FULL
    sections = {part.strip() for part in args.only.split(",") if part.strip()}
    unknown = sections - {"cas", "contended", "journal"}
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")

    report = Report()
    tmp = Path(tempfile.mkdtemp(prefix="typedmesh-state-bench-"))
    servers = start_servers(report)
    began = time.perf_counter()
    try:
        print(
            f"typedmesh state benchmark - {datetime.now(UTC):%Y-%m-%d %H:%M} UTC - "
            f"{'quick' if args.quick else 'full'} mode\n"
            f"Python {platform.python_version()} on {platform.machine()}, "
            f"{os.cpu_count()} cores; tmp dir {tmp}; load average {load()}\n"
            f"{versions(servers)}\n{source_state()}"
        )
        found = backends(tmp, servers)
        if "cas" in sections:
            extra = []
            if servers.postgres is not None:
                url = servers.postgres.url + "?options=-csynchronous_commit%3Doff"
                extra.append(
                    Backend(
                        "PostgreSQL",
                        "(info) synchronous_commit off",
                        lambda: {
                            "kind": "postgres",
                            "url": url,
                            "schema": f"b_{uuid.uuid4().hex[:10]}",
                        },
                    )
                )
            section_cas(settings, found, report, extra)
            report.notes.append(f"load average after the CAS section: {load()}")
        if "contended" in sections:
            section_contended(settings, found, tmp, report)
            report.notes.append(f"load average after the contended section: {load()}")
        if "journal" in sections:
            section_journal(settings, tmp, servers, report)
            report.notes.append(f"load average after the journal section: {load()}")
        report.notes.append(f"took {time.perf_counter() - began:.0f} s on {os.cpu_count()} cores")
        print_report(report, settings)
    finally:
        servers.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
