"""SIGKILL a journaled run at several points; resume; every side effect happens once."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

import typedmesh as tm

HERE = Path(__file__).parent


def load_flow() -> ModuleType:
    spec = importlib.util.spec_from_file_location("crash_flow", HERE / "crash_flow.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_until_paused(tmp: Path, pause_at: str, journal: Path, side: Path) -> None:
    env = {
        **os.environ,
        "SIDE_EFFECT_FILE": str(side),
        "PAUSE_AT": pause_at,
        "TYPEDMESH_ALLOW_NETWORK": "0",
    }
    child = subprocess.Popen(
        [sys.executable, str(HERE / "crash_flow.py"), str(journal), "r1"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line.startswith("PAUSED"), line
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL


def effects(side: Path) -> Counter[str]:
    lines = side.read_text().splitlines() if side.exists() else []
    return Counter(line.split(" key=")[0] for line in lines)


@pytest.fixture
def baseline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    side = tmp_path / "baseline-effects.txt"
    monkeypatch.setenv("SIDE_EFFECT_FILE", str(side))
    module = load_flow()
    output = tm.run(module.flow, module.ORDER, journal=tmp_path / "baseline.db").output
    assert effects(side) == EXPECTED
    return output.model_dump()


EXPECTED = {"charge A7 1299": 1, "ship A7": 1, "notify A7 on its way": 1}


@pytest.mark.parametrize(
    "pause_at", ["charge:before", "charge:after", "ship:before", "ship:after", "model:closer"]
)
def test_resume_after_sigkill_repeats_no_side_effect(
    pause_at: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, baseline: dict[str, object]
) -> None:
    journal, side = tmp_path / "runs.db", tmp_path / "effects.txt"
    run_until_paused(tmp_path, pause_at, journal, side)
    before_resume = effects(side)
    assert sum(before_resume.values()) <= 2 and "notify A7 on its way" not in before_resume
    monkeypatch.setenv("SIDE_EFFECT_FILE", str(side))
    module = load_flow()
    result = tm.resume("r1", module.flow, journal=journal)
    assert result.output.model_dump() == baseline  # same output as the uninterrupted run
    assert effects(side) == EXPECTED  # each side effect exactly once
    lines = side.read_text().splitlines()
    assert len(lines) == 3 and len({line.split(" key=")[1] for line in lines[:2]}) == 2
    store = tm.SQLiteJournal(journal)
    assert tm.verify_run(store, "r1").ok
    types = [e.type for e in store.read("r1")]
    assert types.count("run.resumed") == 1 and types[-1] == "run.finished"
    store.close()
    # the resumed run replays exactly from its journal alone
    assert tm.replay("r1", module.flow, journal=journal).identical


@pytest.mark.parametrize("pause_at", ["notify:before", "notify:after"])
def test_non_idempotent_call_in_doubt_stops_resume(
    pause_at: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal, side = tmp_path / "runs.db", tmp_path / "effects.txt"
    run_until_paused(tmp_path, pause_at, journal, side)
    monkeypatch.setenv("SIDE_EFFECT_FILE", str(side))
    module = load_flow()
    store = tm.SQLiteJournal(journal)
    before = [e.hash for e in store.read("r1")]
    with pytest.raises(tm.InDoubtError) as info:
        tm.resume("r1", module.flow, journal=store)
    assert info.value.tool == "notify" and "closer/tool#0" in info.value.effect_key
    assert [e.hash for e in store.read("r1")] == before  # the journal was not touched
    sent = effects(side)["notify A7 on its way"]
    if pause_at == "notify:after":
        # the operator knows the email went out: skip it; the agent is told
        result = tm.resume("r1", module.flow, journal=store, in_doubt="skip")
        assert effects(side)["notify A7 on its way"] == sent == 1
    else:
        result = tm.resume("r1", module.flow, journal=store, in_doubt="retry")
        assert sent == 0 and effects(side)["notify A7 on its way"] == 1
    assert result.output.order_id == "A7"
    assert effects(side)["charge A7 1299"] == 1 and effects(side)["ship A7"] == 1
    store.close()
