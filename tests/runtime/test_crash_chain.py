"""kill -9 in the middle of a model-only chain: finished calls are never paid twice.

Each model response is committed before its output is used, so a crash
loses only the call in flight. Three resumers started at once: one takes
the run's lease and finishes it, the others are refused before they call
anything, so the in-flight call is retried at most once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import typedmesh as tm

HERE = Path(__file__).parent
FLOW = str(HERE / "chain_flow.py")


def env(bill: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "BILL_FILE": str(bill), "TYPEDMESH_ALLOW_NETWORK": "0", **extra}


def bills(bill: Path) -> Counter[str]:
    return Counter(line.split()[1] for line in bill.read_text().splitlines())


def crash_in_a4(tmp_path: Path) -> tuple[Path, Path]:
    journal, bill = tmp_path / "runs.db", tmp_path / "bill.txt"
    child = subprocess.Popen(
        [sys.executable, FLOW, "run", str(journal), "r1"],
        stdout=subprocess.PIPE,
        text=True,
        env=env(bill, PAUSE_AT="a4"),
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line.startswith("PAUSED a4"), line
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    child.stdout.close()
    return journal, bill


def test_a_crash_mid_call_keeps_every_finished_call(tmp_path: Path) -> None:
    journal, bill = crash_in_a4(tmp_path)
    with tm.SQLiteJournal(journal) as store:
        events = store.read("r1")
        responses = [e.path for e in events if e.type == "model.response"]
        assert responses == ["chain/a1", "chain/a2", "chain/a3"]  # committed before use
        assert tm.journal.verify_run(store, "r1").ok
        assert [r.status for r in store.runs()] == ["incomplete"]  # its owner is dead
    done = subprocess.run(
        [sys.executable, FLOW, "resume", str(journal), "r1"],
        capture_output=True,
        text=True,
        env=env(bill),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OK x+a1+a2+a3+a4+a5"
    # a1..a3 were paid once; a4 twice (the call in flight at the crash); a5 once
    assert bills(bill) == Counter({"a1": 1, "a2": 1, "a3": 1, "a4": 2, "a5": 1})


def test_three_resumers_at_once_one_wins(tmp_path: Path) -> None:
    journal, bill = crash_in_a4(tmp_path)
    resumers = [
        subprocess.Popen(
            [sys.executable, FLOW, "resume", str(journal), "r1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(bill, SLOW_AT="a4", SLOW_S="3"),
        )
        for _ in range(3)
    ]
    outcomes = []
    for child in resumers:
        out, err = child.communicate(timeout=90)
        outcomes.append((child.returncode, out.strip(), err))
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [0, 4, 4], outcomes
    winner = next(out for code, out, _ in outcomes if code == 0)
    assert winner == "OK x+a1+a2+a3+a4+a5"
    # the in-flight call was retried once, by the winner; the others called nothing
    assert bills(bill) == Counter({"a1": 1, "a2": 1, "a3": 1, "a4": 2, "a5": 1})
    with tm.SQLiteJournal(journal) as store:
        assert tm.journal.verify_run(store, "r1").ok
        assert [e.type for e in store.read("r1")].count("run.resumed") == 1
