"""The ``typedmesh state`` commands: read shared state, who wrote each version, claims; fix a value.

Every command takes ``--store URL`` (a SQLite file or ``sqlite:///path``,
``postgresql://...``, ``redis://...``, ``memory:``; default: the default
journal file, ``.typedmesh/runs.db``, which holds the state of runs started
with ``typedmesh run`` and its defaults) and ``--json``.

Exit codes:

* 0: success.
* 1: the store said no: a key with no value (``get``), a key never written
  (``history``), a lost race (``put``/``delete`` at a version that moved on:
  the message names the version found, and ``--json`` carries its value).
* 2: a usage or input error (bad JSON, an invalid key, an invalid value, a
  missing ``--expected-version``/``--create``), or a store that cannot be
  opened or reached (the message names the store, never its password, and why).

A mistake never prints a traceback: one line ``error: ...`` on stderr, or one
JSON document on stdout with ``--json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import (
    InvalidStateValue,
    StaleVersion,
    StateError,
    StateNotFound,
    StateUnavailable,
    UserError,
)
from .journal import DEFAULT_JOURNAL
from .state import CLAIM_PREFIX, StateRecord, StateStore, Writer, open_store

__all__ = [
    "RunStoreOpt",
    "StateCommandError",
    "default_store",
    "open_for_run",
    "state_app",
    "store_label",
]

state_app = typer.Typer(
    name="state",
    help="Shared state: read values, who wrote each version (run, step, agent), claims; "
    "fix a value as an operator.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)

StoreOpt = Annotated[
    str,
    typer.Option(
        "--store",
        metavar="URL",
        help="the state store: a SQLite file or sqlite:///path, postgresql://..., "
        "redis://... (default: the journal file)",
    ),
]
RunStoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        metavar="URL",
        help="the shared state store the run's steps use (ctx.state): a SQLite file or "
        "sqlite:///path, postgresql://..., redis://..., memory:",
    ),
]
KeyArg = Annotated[str, typer.Argument(help="the key, e.g. order:42")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document")]
ByOpt = Annotated[
    str,
    typer.Option("--by", help="who writes (stamped on the version as its writer)"),
]

VALUE_WIDTH = 120
"""How much of a value the history table shows (``--json`` shows it all)."""


class StateCommandError(Exception):
    """A state command's failure: one line, an exit code, the fields ``--json`` adds."""

    def __init__(self, message: str, *, code: int, kind: str, **fields: Any) -> None:
        self.code = code
        self.kind = kind
        self.fields = fields
        super().__init__(message)


# -- stores ---------------------------------------------------------------------------


def store_label(url: str) -> str:
    """A store URL as it may be printed: never with a password."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url.split("://", 1)[0] + "://..."
    if password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{host}" if user else f":***@{host}").geturl()


def _scrub(text: str, url: str) -> str:
    """``text`` with the password in ``url`` (if any) masked."""
    try:
        password = urlsplit(url).password if "://" in url else None
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text


def _sqlite_path(url: str) -> Path | None:
    """The file a SQLite store URL or path names (None: another kind of store)."""
    if url in ("memory:", "memory://") or ("://" in url and not url.startswith("sqlite:")):
        return None
    if url.startswith("sqlite:"):
        url = url.removeprefix("sqlite:")
        if url.startswith("//"):  # sqlite:///abs/path -> /abs/path, sqlite://rel -> rel
            url = url[2:]
    return Path(url)


def _unavailable(exc: StateError, url: str) -> StateCommandError:
    store = exc.store or store_label(url)
    message = _scrub(str(exc), url)
    reason = message.partition(" is unavailable: ")[2] or message
    return StateCommandError(
        f"state store {store} is unavailable: {reason}",
        code=2,
        kind=type(exc).__name__,
        store=store,
    )


def _open(url: str, *, must_exist: bool) -> StateStore:
    """Open the store ``url`` names; a missing SQLite file is refused when ``must_exist``."""
    path = _sqlite_path(url)
    if must_exist and path is not None and not path.exists():
        raise StateCommandError(
            f"no state store at {path} (no such file): pass --store URL, or run a flow first",
            code=2,
            kind="StateUnavailable",
            store=str(path),
        )
    try:
        return open_store(url)
    except StateUnavailable as exc:
        raise _unavailable(exc, url) from None
    except StateError as exc:
        raise StateCommandError(
            _scrub(str(exc), url), code=2, kind=type(exc).__name__, store=store_label(url)
        ) from None
    except UserError as exc:  # an extra not installed, a bad option in the URL
        raise StateCommandError(
            f"cannot open state store {store_label(url)}: {_scrub(str(exc), url)}",
            code=2,
            kind=type(exc).__name__,
            store=store_label(url),
        ) from None
    except Exception as exc:  # a driver refusing the URL itself
        raise StateCommandError(
            f"cannot open state store {store_label(url)}: {type(exc).__name__}: "
            f"{_scrub(str(exc), url)}",
            code=2,
            kind="StateUnavailable",
            store=store_label(url),
        ) from None


def _fail(exc: StateCommandError, as_json: bool, out: Console = errors) -> NoReturn:
    if as_json:
        print(json.dumps({"error": exc.kind, "message": str(exc), **exc.fields}, default=str))
    else:
        out.print(f"[red bold]error[/]: {escape(str(exc))}", soft_wrap=True)
    raise typer.Exit(exc.code)


def _problem(exc: BaseException, url: str) -> StateCommandError:
    """A store's refusal as a command error (exit code and ``--json`` fields)."""
    if isinstance(exc, StateCommandError):
        return exc
    if isinstance(exc, StaleVersion):
        if exc.actual == 0:
            now = f"{exc.key} has no value now (use --create)"
        else:
            now = (
                f"{exc.key} is at version {exc.actual} now: read it with `typedmesh state get "
                f"{exc.key}` and retry with --expected-version {exc.actual}"
            )
        return StateCommandError(
            f"{exc}; nothing written: {now}",
            code=1,
            kind="StaleVersion",
            key=exc.key,
            expected=exc.expected,
            actual=exc.actual,
            current=exc.current,
        )
    if isinstance(exc, StateUnavailable):
        return _unavailable(exc, url)
    if isinstance(exc, StateNotFound):
        return StateCommandError(
            _scrub(str(exc), url), code=1, kind="StateNotFound", key=exc.key, store=exc.store
        )
    if isinstance(exc, StateError):
        fields: dict[str, Any] = {"key": exc.key, "store": exc.store}
        if isinstance(exc, InvalidStateValue) and exc.problems:
            fields["problems"] = exc.problems
        return StateCommandError(_scrub(str(exc), url), code=2, kind=type(exc).__name__, **fields)
    if isinstance(exc, UserError):
        return StateCommandError(_scrub(str(exc), url), code=2, kind=type(exc).__name__)
    raise exc


@contextmanager
def _store(url: str, as_json: bool, *, must_exist: bool = True) -> Iterator[StateStore]:
    """Open a store; its refusals inside become one line and an exit code."""
    store: StateStore | None = None
    try:
        store = _open(url, must_exist=must_exist)
        yield store
    except (StateCommandError, StaleVersion, StateError, UserError) as exc:
        _fail(_problem(exc, url), as_json)
    finally:
        if store is not None:
            with suppress(Exception):  # closing a broken connection: nothing left to lose
                store.close()


def _missing(store: StateStore, key: str) -> StateCommandError:
    versions = store.history(key)
    where = f"in state store {store.url}"
    if versions and versions[-1].deleted:
        last = versions[-1]
        return StateCommandError(
            f"no value for {key!r} {where}: deleted at version {last.version} "
            f"({last.writer.describe()})",
            code=1,
            kind="StateNotFound",
            key=key,
            store=store.url,
            deleted_version=last.version,
        )
    return StateCommandError(
        f"no value for {key!r} {where}", code=1, kind="StateNotFound", key=key, store=store.url
    )


def _value_arg(text: str) -> Any:
    """``--value``: JSON inline, or ``@path`` to a UTF-8 file of JSON."""
    shown = "--value"
    if text.startswith("@"):
        shown = f"--value {text}"
        if len(text) < 2:
            raise StateCommandError(f"{shown}: give a file name after '@'", code=2, kind="Usage")
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise StateCommandError(f"{shown}: no such file", code=2, kind="UsageError") from None
        except UnicodeDecodeError as exc:
            raise StateCommandError(
                f"{shown}: not UTF-8 text (offset {exc.start})", code=2, kind="UsageError"
            ) from None
        except OSError as exc:
            raise StateCommandError(
                f"{shown}: cannot read it: {exc.strerror or exc}", code=2, kind="UsageError"
            ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateCommandError(
            f"{shown} is not valid JSON: {exc}", code=2, kind="UsageError"
        ) from None


def _version_arg(version: int | None) -> None:
    if version is not None and version < 1:
        raise StateCommandError(
            f"--expected-version must be a version >= 1 (see `typedmesh state get`), got "
            f"{version}; use --create for a key with no value",
            code=2,
            kind="UsageError",
        )


# -- rendering ------------------------------------------------------------------------


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _agent(writer: Writer) -> str:
    if not writer.agent:
        return ""
    name = writer.agent.get("name", "?")
    version = writer.agent.get("version")
    return f"{name}@{version}" if version else name


def _compact(value: Any, width: int = VALUE_WIDTH) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def history_table(key: str, records: list[StateRecord], store: str) -> Table:
    """A key's versions, oldest first, each with who wrote it from which run and step."""
    table = Table(title=f"{escape(key)} in {escape(store)}", title_justify="left")
    table.add_column("version", justify="right", no_wrap=True)
    table.add_column("when")
    table.add_column("deleted", no_wrap=True)
    for column in ("run", "step", "agent"):
        table.add_column(column, overflow="fold")
    if any(r.writer.by for r in records):
        table.add_column("by", overflow="fold")
    table.add_column("value", overflow="fold")
    for record in records:
        w = record.writer
        cells = [
            str(record.version),
            _when(record.written_at),
            "yes" if record.deleted else "",
            escape(w.run_id or ""),
            escape(w.step_path or ""),
            escape(_agent(w)),
        ]
        if len(table.columns) == 8:
            cells.append(escape(w.by or ""))
        cells.append("" if record.deleted else escape(_compact(record.value)))
        table.add_row(*cells)
    return table


# -- commands -------------------------------------------------------------------------


@state_app.command("get")
def get_command(key: KeyArg, store: StoreOpt = DEFAULT_JOURNAL, as_json: JsonOpt = False) -> None:
    """Print a key's value and version (exit 1 if it has none)."""
    with _store(store, as_json) as opened:
        found = opened.get(key)
        if found is None:
            raise _missing(opened, key)
        last = next((r for r in reversed(opened.history(key)) if r.version == found.version), None)
    if as_json:
        document = {"key": key, "version": found.version, "value": found.value}
        if last is not None:
            document.update(written_at=last.written_at, writer=last.writer.to_dict())
        print(json.dumps(document, ensure_ascii=False, default=str))
        return
    who = f", written {_when(last.written_at)} by {last.writer.describe()}" if last else ""
    console.print(f"[bold]{escape(key)}[/] version {found.version}{escape(who)}", soft_wrap=True)
    console.print_json(json.dumps(found.value, ensure_ascii=False, default=str))


@state_app.command("history")
def history_command(
    key: KeyArg, store: StoreOpt = DEFAULT_JOURNAL, as_json: JsonOpt = False
) -> None:
    """Every version of a key, oldest first: when, deleted, run, step, agent, value."""
    with _store(store, as_json) as opened:
        records = opened.history(key)
        if not records:
            raise StateCommandError(
                f"no value for {key!r} in state store {opened.url}: it was never written",
                code=1,
                kind="StateNotFound",
                key=key,
                store=opened.url,
            )
        label = opened.url
    if as_json:
        print(json.dumps([r.to_dict() for r in records], ensure_ascii=False, default=str))
        return
    console.print(history_table(key, records, label))


@state_app.command("keys")
def keys_command(
    prefix: Annotated[str, typer.Argument(help="only keys starting with this")] = "",
    store: StoreOpt = DEFAULT_JOURNAL,
    as_json: JsonOpt = False,
) -> None:
    """The keys that have a value (claims are listed by `state claims`)."""
    with _store(store, as_json) as opened:
        keys = opened.keys(prefix)
    if as_json:
        print(json.dumps(keys, ensure_ascii=False))
        return
    for key in keys:
        console.print(escape(key), soft_wrap=True, highlight=False)


@state_app.command("claims")
def claims_command(
    prefix: Annotated[str, typer.Argument(help="only claims on keys starting with this")] = "",
    store: StoreOpt = DEFAULT_JOURNAL,
    as_json: JsonOpt = False,
) -> None:
    """The live claims: which key, for what action, held by whom, until when."""
    with _store(store, as_json) as opened:
        claims = []
        for name in opened.keys(CLAIM_PREFIX + prefix):
            claim = opened.claim_of(name.removeprefix(CLAIM_PREFIX))
            if claim is not None:
                claims.append(claim)
        label = opened.url
    if as_json:
        print(json.dumps([c.to_dict() for c in claims], ensure_ascii=False, default=str))
        return
    table = Table(title=f"claims in {escape(label)}", title_justify="left")
    for column in ("key", "action", "holder", "claimed", "expires"):
        table.add_column(column, overflow="fold")
    for claim in claims:
        table.add_row(
            escape(claim.key),
            escape(claim.action),
            escape(claim.holder.describe()),
            _when(claim.claimed_at),
            "never" if claim.expires_at is None else _when(claim.expires_at),
        )
    console.print(table)


@state_app.command("put")
def put_command(
    key: KeyArg,
    value: Annotated[str, typer.Option("--value", help="the value as JSON, or @file.json")],
    by: ByOpt,
    expected_version: Annotated[
        int | None,
        typer.Option(
            "--expected-version",
            metavar="N",
            help="write only if the key is still at this version (see `state get`)",
        ),
    ] = None,
    create: Annotated[
        bool, typer.Option("--create", help="write only if the key has no value")
    ] = False,
    store: StoreOpt = DEFAULT_JOURNAL,
    as_json: JsonOpt = False,
) -> None:
    """Write a value as an operator, at the version you read (or --create): a version
    that moved on is refused with the current one, never overwritten."""
    try:
        if create == (expected_version is not None):
            raise StateCommandError(
                "give exactly one of --expected-version N (the version you read) and --create",
                code=2,
                kind="UsageError",
            )
        if not by.strip():
            raise StateCommandError("--by must name who writes", code=2, kind="UsageError")
        _version_arg(expected_version)
        data = _value_arg(value)
    except StateCommandError as exc:
        _fail(exc, as_json)
    writer = Writer(by=by)
    with _store(store, as_json, must_exist=not create) as opened:
        written = opened.put(key, data, expected_version=expected_version, writer=writer)
        if not as_json:
            console.print(
                f"{escape(key)}: version {written.version} written ({escape(writer.describe())}) "
                f"in {escape(opened.url)}"
            )
    if as_json:
        print(
            json.dumps(
                {"key": key, "version": written.version, "value": data, "writer": writer.to_dict()},
                ensure_ascii=False,
            )
        )


@state_app.command("delete")
def delete_command(
    key: KeyArg,
    by: ByOpt,
    expected_version: Annotated[
        int,
        typer.Option("--expected-version", metavar="N", help="the version you read"),
    ],
    store: StoreOpt = DEFAULT_JOURNAL,
    as_json: JsonOpt = False,
) -> None:
    """Delete a key's value at the version you read (the delete is a version too)."""
    try:
        if not by.strip():
            raise StateCommandError("--by must name who writes", code=2, kind="UsageError")
        _version_arg(expected_version)
    except StateCommandError as exc:
        _fail(exc, as_json)
    writer = Writer(by=by)
    with _store(store, as_json) as opened:
        version = opened.delete(key, expected_version=expected_version, writer=writer)
        if not as_json:
            console.print(
                f"{escape(key)}: deleted, version {version} ({escape(writer.describe())}) "
                f"in {escape(opened.url)}"
            )
    if as_json:
        print(json.dumps({"key": key, "version": version, "deleted": True, "by": by}))


# -- run and resume -------------------------------------------------------------------


def default_store(journal: str, no_journal: bool) -> str:
    """The store ``typedmesh run`` uses without ``--store``: the journal's own place.

    The journal's SQLite file (state tables beside the journal's), the same
    ``postgresql://`` database, ``memory:`` for an in-memory journal or none.
    """
    if no_journal or journal.startswith("memory:"):
        return "memory:"
    return journal


def open_for_run(url: str, as_json: bool) -> StateStore:
    """Open a run's store, a SQLite path made absolute (resume finds it from anywhere);
    a store that cannot be opened is one line and exit 2."""
    path = _sqlite_path(url)
    if path is not None and not path.is_absolute():
        url = os.path.abspath(path)
    try:
        return _open(url, must_exist=False)
    except StateCommandError as exc:
        _fail(exc, as_json)
