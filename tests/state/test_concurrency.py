"""Many writers on one key, no lost update: asyncio tasks (threads under
``asyncio.to_thread``) and separate OS processes, on one SQLite file; and two
processes racing to claim the same keys, one winner each time."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from typedmesh.state import CLAIM_PREFIX, MemoryStateStore, StateStore, Writer
from typedmesh.state.sqlite import SQLiteStateStore

WORKER = Path(__file__).with_name("state_worker.py")
TASKS, TASK_INCREMENTS = 8, 25
PROCESSES, PROCESS_INCREMENTS = 4, 50


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TYPEDMESH_ALLOW_NETWORK": "0"},
    )


def ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"worker did not start: {line!r} {err}")


def finish(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    summary: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return summary


async def increment_in_tasks(store: StateStore, key: str) -> None:
    async def task(i: int) -> None:
        writer = Writer(run_id=f"task-{i}", step_path="task/increment", by=f"pid:{os.getpid()}")
        for j in range(TASK_INCREMENTS):
            await asyncio.to_thread(
                store.update,
                key,
                lambda n: n + 1,
                writer=Writer(**{**writer.to_dict(), "write_id": f"task-{i}:{j}"}),
                max_attempts=100_000,
            )

    await asyncio.gather(*(task(i) for i in range(TASKS)))


def check_history(store: StateStore, key: str, expected: dict[str, tuple[str, int]]) -> None:
    """``key`` went 0, 1, 2, ... one version per increment, each naming its writer;
    ``expected`` maps run id -> (by, increments)."""
    total = sum(n for _, n in expected.values())
    got = store.get(key)
    assert got is not None and got.value == total and got.version == total + 1
    history = store.history(key)
    assert [r.version for r in history] == list(range(1, total + 2))
    assert [r.value for r in history] == list(range(total + 1))
    assert not any(r.deleted for r in history)
    counts = Counter((r.writer.run_id, r.writer.by) for r in history[1:])
    assert counts == Counter({(run, by): n for run, (by, n) in expected.items()}), counts
    write_ids = [r.writer.write_id for r in history[1:]]
    assert len(set(write_ids)) == total  # each increment applied exactly once
    times = [r.written_at for r in history]
    assert all(a <= b + 1.0 for a, b in itertools.pairwise(times))


def task_writers() -> dict[str, tuple[str, int]]:
    return {f"task-{i}": (f"pid:{os.getpid()}", TASK_INCREMENTS) for i in range(TASKS)}


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_asyncio_tasks_lose_no_update(tmp_path: Path, backend: str) -> None:
    store: StateStore = (
        MemoryStateStore() if backend == "memory" else SQLiteStateStore(tmp_path / "state.db")
    )
    with store:
        store.create("counter", 0, writer=Writer(by="test"))
        await increment_in_tasks(store, "counter")
        check_history(store, "counter", task_writers())


async def test_processes_and_tasks_on_one_file_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with SQLiteStateStore(path) as store:
        store.create("counter", 0, writer=Writer(by="test"))
        procs = [
            start("update", str(path), "counter", str(PROCESS_INCREMENTS), f"proc-{i}")
            for i in range(PROCESSES)
        ]
        try:
            for proc in procs:
                ready(proc)
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            await increment_in_tasks(store, "counter")  # while the processes write
            summaries = [await asyncio.to_thread(finish, proc) for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
        expected = task_writers()
        for i, (proc, summary) in enumerate(zip(procs, summaries, strict=True)):
            assert summary["pid"] == proc.pid
            versions = summary["versions"]
            assert isinstance(versions, list) and versions == sorted(set(versions))
            expected[f"proc-{i}"] = (f"pid:{proc.pid}", PROCESS_INCREMENTS)
        check_history(store, "counter", expected)
        # every version a process reported is one its writer made
        by_version = {r.version: r.writer.run_id for r in store.history("counter")}
        for i, summary in enumerate(summaries):
            versions = summary["versions"]
            assert isinstance(versions, list)
            assert {by_version[v] for v in versions} == {f"proc-{i}"}


def test_two_processes_racing_to_claim_have_one_winner_each_time(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    rounds = 50
    SQLiteStateStore(path).close()
    procs = [start("claim", str(path), "job:", name) for name in ("left", "right")]
    answers: list[list[dict[str, object]]] = [[], []]
    try:
        for proc in procs:
            ready(proc)
        for i in range(rounds):
            order = procs if i % 2 == 0 else procs[::-1]
            for proc in order:  # both get the key before either answers
                assert proc.stdin is not None
                proc.stdin.write(f"{i}\n")
                proc.stdin.flush()
            for k, proc in enumerate(procs):
                assert proc.stdout is not None
                answers[k].append(json.loads(proc.stdout.readline()))
        summaries = [finish(proc) for proc in procs]  # closing stdin ends the workers
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert [s["rounds"] for s in summaries] == [rounds, rounds]
    wins = Counter()
    with SQLiteStateStore(path) as store:
        for i in range(rounds):
            left, right = answers[0][i], answers[1][i]
            assert left["i"] == right["i"] == i
            assert [left["won"], right["won"]].count(True) == 1, (left, right)
            winner = left if left["won"] else right
            loser = right if left["won"] else left
            assert loser["holder"] == winner["holder"]  # refused naming the winner
            holder = winner["holder"]
            assert isinstance(holder, dict)
            wins[holder["run_id"]] += 1
            held = store.claim_of(f"job:{i}")
            assert held is not None and held.holder.to_dict() == holder
            assert held.holder.by == f"pid:{procs[0 if left['won'] else 1].pid}"
            assert len(store.history(CLAIM_PREFIX + f"job:{i}")) == 1
    assert sum(wins.values()) == rounds
