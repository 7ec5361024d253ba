"""Journals: every boundary crossing of a run, append-only and hash-chained."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from .base import DEFAULT_LEASE_TTL, Head, Journal, Lease, RunInfo, new_owner
from .events import JOURNAL_SCHEMA_VERSION, SCHEMA_VERSION_SUMMARIES, Event
from .jsonl import export_jsonl, import_jsonl
from .memory import MemoryJournal
from .postgres import JournalUnavailable, PostgresJournal, is_postgres_url, redact_url
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
    "JournalUnavailable",
    "Lease",
    "MemoryJournal",
    "PostgresJournal",
    "RunInfo",
    "SQLiteJournal",
    "VerifyReport",
    "describe_journal",
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
    """A Journal from a path or URL, or a Journal object as it is.

    * ``postgresql://user@host:port/db`` (or ``postgres://``; ``?schema=NAME`` picks
      the schema): a ``PostgresJournal`` (needs ``typedmesh[postgres]``);
    * ``sqlite:///abs/path.db``, ``sqlite:relative/path.db`` or a plain path: SQLite;
    * ``memory:`` (or ``memory:NAME``): an in-memory journal shared by this process.

    ``must_exist`` refuses to create a new journal, for commands that read runs;
    ``readonly`` opens it without write access. A path or URL opened is one cached
    connection per process (its ``close`` does nothing).
    """
    if isinstance(journal, Journal):
        return journal
    if isinstance(journal, str):
        if is_postgres_url(journal):
            from .postgres import shared_postgres_journal

            return shared_postgres_journal(
                journal,
                durability=durability,
                readonly=readonly,
                create=not (must_exist or readonly),
            )
        if journal.startswith("memory:"):
            return _memory_journal(journal.removeprefix("memory:"), must_exist or readonly)
        if journal.startswith("sqlite:"):
            journal = _sqlite_path(journal)
        elif _URL.match(journal):
            from ..errors import ConfigurationError

            raise ConfigurationError(
                f"unsupported journal URL {redact_url(journal)!r}: use a file path, "
                "sqlite:///abs/path.db, sqlite:relative/path.db, postgresql://... or memory:"
            )
    path = Path(journal)
    if (must_exist or readonly) and not path.exists():
        from ..errors import RunNotFound

        raise RunNotFound(f"no journal at {path}")
    if readonly:
        return SQLiteJournal(path, readonly=True)
    return shared_journal(path, durability=durability)


def describe_journal(journal: object) -> str:
    """A journal as a label to print: a URL without its password, a path, a class name."""
    label = getattr(journal, "label", None)
    if isinstance(label, str):
        return label
    path = getattr(journal, "path", journal)
    if isinstance(path, str):
        return redact_url(path) if "://" in path else path
    return str(path) if isinstance(path, Path) else type(journal).__name__


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
"""A URL scheme (two letters at least: ``C:/runs.db`` is a path)."""

_MEMORY: dict[str, MemoryJournal] = {}
_MEMORY_LOCK = threading.Lock()


def _memory_journal(name: str, must_exist: bool) -> MemoryJournal:
    with _MEMORY_LOCK:
        store = _MEMORY.get(name)
        if store is None:
            if must_exist:
                from ..errors import RunNotFound

                raise RunNotFound(f"no journal at memory:{name} in this process")
            store = _MEMORY[name] = MemoryJournal()
        return store


def _sqlite_path(url: str) -> str:
    """``sqlite:///abs/path`` -> ``/abs/path``; ``sqlite:rel/path`` -> ``rel/path``."""
    rest = url.removeprefix("sqlite:")
    if rest.startswith("///"):
        return "/" + rest.lstrip("/")  # sqlite:////abs (SQLAlchemy's form) too
    if rest.startswith("//"):
        from ..errors import ConfigurationError

        raise ConfigurationError(
            f"{url!r}: a SQLite journal has no host; write sqlite:///abs/path.db "
            "or sqlite:relative/path.db"
        )
    if not rest:
        from ..errors import ConfigurationError

        raise ConfigurationError(f"{url!r} names no file")
    return rest
