"""open_journal: paths and URLs (sqlite:, postgresql://, memory:), without a server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import typedmesh as tm
from typedmesh.errors import ConfigurationError, MissingExtraError, RunNotFound
from typedmesh.journal import describe_journal, open_journal
from typedmesh.journal.base import new_owner
from typedmesh.journal.postgres import (
    JournalUnavailable,
    PostgresJournal,
    _reason,
    _split_schema,
    redact_url,
)


def test_plain_paths_and_sqlite_urls_are_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    absolute = open_journal(f"sqlite://{tmp_path}/abs.db")
    assert isinstance(absolute, tm.SQLiteJournal) and absolute.path == tmp_path / "abs.db"
    relative = open_journal("sqlite:sub/rel.db")
    assert isinstance(relative, tm.SQLiteJournal) and relative.path == Path("sub/rel.db")
    assert (tmp_path / "sub" / "rel.db").exists()
    plain = open_journal(tmp_path / "plain.db")
    assert isinstance(plain, tm.SQLiteJournal)
    assert open_journal(str(tmp_path / "plain.db")) is plain
    odd = open_journal("runs:v1.db")  # a colon in a file name is not a URL
    assert isinstance(odd, tm.SQLiteJournal) and odd.path == Path("runs:v1.db")
    with pytest.raises(RunNotFound):
        open_journal("sqlite:missing.db", must_exist=True)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("sqlite://host/x.db", "has no host"),
        ("sqlite:", "names no file"),
        ("mysql://u:pw@h/db", "unsupported journal URL 'mysql://u:\\*\\*\\*@h/db'"),
        ("redis://127.0.0.1:6379/0", "unsupported journal URL"),
    ],
)
def test_bad_urls_are_configuration_errors(url: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        open_journal(url)


def test_memory_urls_name_one_journal_per_process() -> None:
    name = f"memory:{new_owner()}"
    with pytest.raises(RunNotFound):
        open_journal(name, must_exist=True)
    journal = open_journal(name)
    assert isinstance(journal, tm.MemoryJournal)
    assert open_journal(name) is journal and open_journal(name, readonly=True) is journal
    assert open_journal("memory:other-" + name) is not journal


def test_postgres_urls_without_psycopg_say_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now fails
    for url in ("postgresql://u@127.0.0.1:1/db", "postgres://u@127.0.0.1:1/db"):
        with pytest.raises(ConfigurationError, match=r"pip install \"typedmesh\[postgres\]\""):
            open_journal(url)
    with pytest.raises(MissingExtraError):
        PostgresJournal("postgresql://u@127.0.0.1:1/db")


def test_postgres_urls_reach_the_postgres_journal() -> None:
    with pytest.raises(JournalUnavailable, match=r"127\.0\.0\.1:1\b") as caught:
        open_journal("postgres://u:pw@127.0.0.1:1/db?schema=s&connect_timeout=2")
    assert caught.value.server == "127.0.0.1:1" and "pw" not in str(caught.value)
    with pytest.raises(ConfigurationError, match="not a PostgreSQL URL"):
        PostgresJournal("postgresql://h/db?nonsense=1")


def test_schema_query_parameter_and_redaction() -> None:
    assert _split_schema("postgresql://u@h:5/db?schema=s1&sslmode=disable") == (
        "postgresql://u@h:5/db?sslmode=disable",
        "s1",
    )
    assert _split_schema("postgresql://u@h/db") == ("postgresql://u@h/db", None)
    assert _split_schema("host=h dbname=db") == ("host=h dbname=db", None)
    assert redact_url("postgresql://u:secret@h:5/db") == "postgresql://u:***@h:5/db"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert describe_journal("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    assert describe_journal("runs.db") == "runs.db"
    assert describe_journal(tm.MemoryJournal()) == "MemoryJournal"
    text = (
        'connection failed: connection to server at "127.0.0.1", port 1 failed: '
        'FATAL:  password authentication failed for user "u" (secret)\n\tmore'
    )
    assert _reason(text, "secret") == (
        'FATAL: password authentication failed for user "u" (***); more'
    )
