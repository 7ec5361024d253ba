"""Memory and SQLite run through the same conformance suite (typedmesh.testing.journal_conformance).

A new backend passes by subclassing ``JournalConformance`` the same way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import typedmesh as tm
from typedmesh.journal import Event, Journal, Lease
from typedmesh.testing.journal_conformance import JournalConformance, check_backend


class TestMemoryJournal(JournalConformance):
    def make_journal(self) -> Journal:
        return tm.MemoryJournal()


class TestSQLiteJournal(JournalConformance):
    """Each journal its own file; ``reopen`` is a second connection to the same file."""

    def make_journal(self) -> Journal:
        self.count = getattr(self, "count", 0) + 1
        return tm.SQLiteJournal(self.tmp_path / f"journal{self.count}.db")

    def reopen(self, journal: Journal) -> Journal:
        assert isinstance(journal, tm.SQLiteJournal)
        return tm.SQLiteJournal(journal.path)


def test_the_suite_runs_without_pytest(tmp_path: Path) -> None:
    """The suite imports and runs where pytest is not installed (a backend's own CI)."""
    code = """
import sys
sys.modules["pytest"] = None  # importing pytest now fails
from typedmesh.testing.journal_conformance import check_backend
import typedmesh as tm

class NoTamper(tm.MemoryJournal):
    tamper_drop_tail = None

results = check_backend(
    lambda tmp: NoTamper(),
    only=[
        "test_events_come_back_in_order_and_chained",
        "test_a_cut_tail_fails_verify_naming_the_missing_tail",
    ],
)
print(sorted((r.name, r.outcome) for r in results))
"""
    env = {**os.environ, "TYPEDMESH_ALLOW_NETWORK": "0"}
    env.pop("TYPEDMESH_JOURNAL_KEY", None)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "('test_a_cut_tail_fails_verify_naming_the_missing_tail', 'skipped')" in out.stdout
    assert "('test_events_come_back_in_order_and_chained', 'passed')" in out.stdout


def test_check_backend_reports_a_broken_backend() -> None:
    """A backend that forgets the conditional append fails the suite, by name."""

    class Unconditional(tm.MemoryJournal):
        def append(
            self,
            lease: Lease,
            events: Sequence[Event],
            blobs: Mapping[str, bytes],
            *,
            signature: str | None = None,
            ttl: float = 30.0,
            release: str | None = None,
        ) -> Lease:
            head = self.head(lease.run_id)  # the bug: takes whatever lease the run has now
            forced = Lease(lease.run_id, head.owner or "", head.token, 0.0)
            return super().append(
                forced, events, blobs, signature=signature, ttl=ttl, release=release
            )

    results = {
        r.name: r
        for r in check_backend(
            lambda tmp: Unconditional(),
            only=["test_append_by_a_non_owner_is_refused", "test_unknown_run_and_missing_blob"],
        )
    }
    assert results["test_unknown_run_and_missing_blob"].outcome == "passed"
    failed = results["test_append_by_a_non_owner_is_refused"]
    assert failed.outcome == "failed" and "LeaseLost was not raised" in failed.detail
