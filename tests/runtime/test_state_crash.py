"""kill -9 between a state write and its journal record: the resumed run (in another
process) writes nothing twice, on SQLite and on PostgreSQL."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import typedmesh as tm
from typedmesh.state import open_store

FLOW = Path(__file__).with_name("state_crash_flow.py")


def load_flow() -> ModuleType:
    spec = importlib.util.spec_from_file_location("state_crash_flow", FLOW)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_child(
    journal: Path, run_id: str, url: str, kill_after: str | None
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    if kill_after:
        env["KILL_AFTER_WRITE"] = kill_after
    return subprocess.run(
        [sys.executable, str(FLOW), str(journal), run_id, url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return str(request.getfixturevalue("pg_schema_url"))


@pytest.mark.parametrize("kill_after", ["stock:A1", "__claim__:order:7", "order:7"])
def test_a_kill_between_the_store_write_and_its_journal_record_writes_nothing_twice(
    tmp_path: Path, store_url: str, kill_after: str, request: pytest.FixtureRequest
) -> None:
    journal = tmp_path / "runs.db"
    child = run_child(journal, "crash", store_url, kill_after)
    assert child.returncode == -signal.SIGKILL, child.stderr
    store = open_store(store_url)
    request.addfinalizer(store.close)
    before = {key: len(store.history(key)) for key in ("stock:A1", "order:7", "__claim__:order:7")}
    with tm.SQLiteJournal(journal) as j:
        events = j.read("crash")
    # the write is in the store, its start in the journal, its outcome is not
    assert any(e.type == "state.write" for e in events)
    assert store.history(kill_after)[-1].writer.run_id == "crash"

    flow = load_flow()
    result = tm.resume("crash", flow.flow, journal=journal, state=store)
    assert result.output.note.startswith("refunded 5")
    stock = store.history("stock:A1")
    assert [r.value for r in stock] == [3, 2]  # decremented once, never twice
    orders = store.history("order:7")
    assert [r.value.get("refunded", 0.0) for r in orders] == [0.0, 5.0]  # refunded once
    claims = store.history("__claim__:order:7")
    assert len(claims) == 1 and claims[0].writer.step_path == "support/refunder"
    assert before[kill_after] == len(store.history(kill_after))  # the killed write stood
    with tm.SQLiteJournal(journal) as j:
        assert tm.verify_run(j, "crash").ok
        events = j.read("crash")
    doubt = [e for e in events if e.type == "state.in_doubt"]
    assert [e.payload["state_key"] for e in doubt] == [kill_after.removeprefix("__claim__:")]
    written = [
        e for e in events if e.type == "state.written" and e.payload["result"].get("deduplicated")
    ]
    # read back, not guessed: the store recognized the write id (a put), or the claim
    # found names this run and step as its holder (a claim) - either way, one version
    assert len(written) == (0 if kill_after.startswith("__claim__:") else 1)
    assert tm.replay("crash", flow.flow, journal=journal).identical


def test_an_uninterrupted_run_in_a_child_process_matches(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    child = run_child(tmp_path / "runs.db", "whole", url, None)
    assert child.returncode == 0 and "DONE" in child.stdout, child.stderr
    store = open_store(url)
    assert [r.value for r in store.history("stock:A1")] == [3, 2]
    store.close()
