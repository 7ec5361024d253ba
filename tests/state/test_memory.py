"""The in-memory state store passes the conformance suite (typedmesh.testing.state_conformance);
the suite runs without pytest and names a broken backend's failure."""

from __future__ import annotations

import os
import subprocess
import sys

from typedmesh.errors import StaleVersion
from typedmesh.state import MemoryStateStore, StateStore, Writer
from typedmesh.testing.state_conformance import StateConformance, check_backend


class TestMemoryState(StateConformance):
    """Nothing persists: the reopen and two-handle tests skip."""

    def make_store(self) -> StateStore:
        return MemoryStateStore()


def test_the_suite_runs_without_pytest() -> None:
    code = """
import sys
sys.modules["pytest"] = None  # importing pytest now fails
from typedmesh.testing.state_conformance import check_backend
from typedmesh.state import MemoryStateStore

results = check_backend(
    lambda tmp: MemoryStateStore(),
    only=["test_create_then_get", "test_values_versions_history_and_claims_survive_reopening"],
)
print(sorted((r.name, r.outcome) for r in results))
"""
    env = {**os.environ, "TYPEDMESH_ALLOW_NETWORK": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "('test_create_then_get', 'passed')" in out.stdout
    assert "('test_values_versions_history_and_claims_survive_reopening', 'skipped')" in out.stdout


class LastVersionCAS(MemoryStateStore):
    """The bug: compares ``expected`` with the key's last version, a tombstone's included."""

    def _write(
        self, key: str, text: str | None, expected: int | None, writer: Writer, now: float
    ) -> tuple[int, bool]:
        history = self._history(key)
        if expected is not None and history and history[-1].deleted:
            if history[-1].version != expected:
                raise StaleVersion(key, expected=expected, actual=0)
            return super()._write(key, text, None, writer, now)
        return super()._write(key, text, expected, writer, now)


def test_check_backend_reports_a_broken_backend() -> None:
    results = {
        r.name: r
        for r in check_backend(
            lambda tmp: LastVersionCAS(),
            only=[
                "test_create_then_get",
                "test_delete_leaves_a_tombstone_and_versions_keep_counting",
            ],
        )
    }
    assert results["test_create_then_get"].outcome == "passed"
    failed = results["test_delete_leaves_a_tombstone_and_versions_keep_counting"]
    assert failed.outcome == "failed" and "StaleVersion was not raised" in failed.detail
