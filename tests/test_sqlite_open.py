"""Processes opening one new SQLite file at the same instant all open it
(``typedmesh._sqlite``): the journal, and the state store that shares its file.

SQLite answers "locked" at once to some of them while another switches the file
to WAL (its busy handler is not asked there, to avoid a deadlock). Before, about
one trial in twenty had a process fail to open the file.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

import typedmesh as tm


def _open_at_once(barrier: Any, kind: str, path: str, results: Any) -> None:  # child
    barrier.wait()
    try:
        store = tm.SQLiteJournal(path) if kind == "journal" else tm.SQLiteStateStore(path)
        store.close()
        results.put("ok")
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("kind", ["journal", "state"])
def test_eight_processes_open_a_new_file_at_once_sixty_times(kind: str, tmp_path: Path) -> None:
    fork = multiprocessing.get_context("fork")
    failures = []
    for trial in range(60):
        path = str(tmp_path / f"runs-{trial}.db")
        barrier, results = fork.Barrier(8), fork.Queue()
        children = [
            fork.Process(target=_open_at_once, args=(barrier, kind, path, results))
            for _ in range(8)
        ]
        for child in children:
            child.start()
        outcomes = [results.get(timeout=60) for _ in children]
        for child in children:
            child.join(timeout=30)
        failures += [o for o in outcomes if o != "ok"]
    assert failures == []
