"""Journals: every boundary crossing of a run, append-only and hash-chained."""

from __future__ import annotations

from pathlib import Path

from .base import DEFAULT_LEASE_TTL, Head, Journal, Lease, RunInfo, new_owner
from .events import JOURNAL_SCHEMA_VERSION, SCHEMA_VERSION_SUMMARIES, Event
from .jsonl import export_jsonl, import_jsonl
from .memory import MemoryJournal
from .sqlite import Durability, SQLiteJournal, shared_journal
from .verify import VerifyReport, load_payload, verify_run
from .writer import EventLog, EventSink, JournalSink

__all__ = [
    "DEFAULT_JOURNAL",
    "DEFAULT_LEASE_TTL",
    "JOURNAL_SCHEMA_VERSION",
    "SCHEMA_VERSION_SUMMARIES",
    "Durability",
    "Event",
    "EventLog",
    "EventSink",
    "Head",
    "Journal",
    "JournalSink",
    "Lease",
    "MemoryJournal",
    "RunInfo",
    "SQLiteJournal",
    "VerifyReport",
    "export_jsonl",
    "import_jsonl",
    "load_payload",
    "new_owner",
    "open_journal",
    "verify_run",
]

DEFAULT_JOURNAL = ".typedmesh/runs.db"
"""Where the CLI journals when no --journal is given."""


def open_journal(
    journal: str | Path | Journal,
    *,
    must_exist: bool = False,
    readonly: bool = False,
    durability: Durability = "normal",
) -> Journal:
    """A Journal from a path (SQLite) or a Journal object.

    ``must_exist`` refuses to create a new file, for commands that read runs;
    ``readonly`` opens it without write access (a read-only file or directory).
    A path opened for writing is one cached connection per process.
    """
    if isinstance(journal, Journal):
        return journal
    path = Path(journal)
    if (must_exist or readonly) and not path.exists():
        from ..errors import RunNotFound

        raise RunNotFound(f"no journal at {path}")
    if readonly:
        return SQLiteJournal(path, readonly=True)
    return shared_journal(path, durability=durability)
