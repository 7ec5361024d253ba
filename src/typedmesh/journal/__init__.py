"""Journals: every boundary crossing of a run, append-only and hash-chained."""

from __future__ import annotations

from pathlib import Path

from .base import Journal, RunInfo
from .events import JOURNAL_SCHEMA_VERSION, SCHEMA_VERSION_SUMMARIES, Event
from .jsonl import export_jsonl, import_jsonl
from .memory import MemoryJournal
from .sqlite import SQLiteJournal
from .verify import VerifyReport, load_payload, verify_run
from .writer import RunWriter

__all__ = [
    "DEFAULT_JOURNAL",
    "JOURNAL_SCHEMA_VERSION",
    "SCHEMA_VERSION_SUMMARIES",
    "Event",
    "Journal",
    "MemoryJournal",
    "RunInfo",
    "RunWriter",
    "SQLiteJournal",
    "VerifyReport",
    "export_jsonl",
    "import_jsonl",
    "load_payload",
    "open_journal",
    "verify_run",
]

DEFAULT_JOURNAL = ".typedmesh/runs.db"
"""Where the CLI journals when no --journal is given."""


def open_journal(journal: str | Path | Journal, *, must_exist: bool = False) -> Journal:
    """A Journal from a path (SQLite) or a Journal object.

    ``must_exist`` refuses to create a new file, for commands that read runs.
    """
    if isinstance(journal, Journal):
        return journal
    path = Path(journal)
    if must_exist and not path.exists():
        from ..errors import RunNotFound

        raise RunNotFound(f"no journal at {path}")
    return SQLiteJournal(path)
