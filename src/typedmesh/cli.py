"""The ``typedmesh`` command line: run flows, and read, verify, resume and replay their journals.

Exit codes (docs/errors.md lists each error with an example message):

* 0: success.
* 1: a run failed (a ``RunError``, ``StepFailed`` included: a user step
  raised), a journal failed verification, or a replay diverged.
* 2: a usage, input or journal error: a bad option, a flow target that cannot
  be loaded (unknown module, ``SyntaxError``, ``ContractError`` on import),
  an unreadable ``@file``, input or intent that does not validate, an
  unknown run, a journal that cannot be opened or created.
* 3: a resume stopped on a tool call in doubt.
* 4: the run is waiting for a result (an approval, a signal): nothing failed;
  record the result, then ``typedmesh resume`` it.

A user mistake never prints a traceback: one line ``error: ...`` on stderr
(details, such as a contract's problems, indented below it), or one JSON
document on stdout with ``--json``. ``TYPEDMESH_TRACEBACK=1`` prints the
traceback of an exception a user step raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import json
import math
import os
import shlex
import sqlite3
import sys
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.json import JSON
from rich.markup import escape

from . import cli_batch as cb
from . import cli_follow as cf
from . import cli_journal as cj
from . import cli_state as cs
from .contracts import Intent, Text, is_text
from .errors import (
    InDoubtError,
    InputValidationError,
    JournalCorrupt,
    JournalError,
    NonDeterminismError,
    RunError,
    RunWaiting,
    StateError,
    StepFailed,
    TypedMeshError,
    UserError,
)
from .journal import DEFAULT_JOURNAL, Durability, Journal, describe_journal, open_journal
from .models.base import Usage
from .runtime.budget import Budget
from .runtime.cost import CostReport, cost_report
from .runtime.kinds import InDoubtPolicy
from .runtime.trace import TraceNode
from .step import Step
from .validation import error_lines

app = typer.Typer(
    help="typedmesh: typed, journaled multi-agent flows.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(cs.state_app, name="state")
app.command("batch")(cb.batch_command)
console = Console()
errors = Console(stderr=True)

JournalOpt = Annotated[
    str,
    typer.Option("--journal", help="the journal: a SQLite file, or postgresql://USER@HOST:PORT/DB"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document")]
RunIdArg = Annotated[str, typer.Argument(help="the run id (see `typedmesh runs`)")]
FlowOpt = Annotated[
    str | None,
    typer.Option("--flow", help="the flow as MODULE:ATTR (default: the one `run` recorded)"),
]
DurabilityOpt = Annotated[
    str,
    typer.Option(
        "--durability",
        help="fsync level of the journal: off, normal or full (docs/durability.md: what a "
        "power failure may lose at each)",
    ),
]
DepsOpt = Annotated[
    str | None,
    typer.Option(
        "--deps",
        metavar="MODULE:ATTR",
        help="the run's deps: an object, or a function or class called with no arguments",
    ),
]
DeadlineOpt = Annotated[
    float | None,
    typer.Option("--deadline", metavar="SECONDS", help="stop the run after this many seconds"),
]
MaxTokensOpt = Annotated[int | None, typer.Option("--max-tokens", help="hard token budget")]
MaxCostOpt = Annotated[float | None, typer.Option("--max-cost", help="hard cost budget in USD")]
MaxCallsOpt = Annotated[
    int | None, typer.Option("--max-model-calls", help="hard model-call budget")
]
MaxPlanOpt = Annotated[
    int | None, typer.Option("--max-plan-steps", help="longest plan an orchestrator runs")
]
ModelTimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--model-timeout",
        metavar="SECONDS",
        help="timeout of each provider model request not given its own "
        "(default: $TYPEDMESH_MODEL_TIMEOUT, else 60)",
    ),
]


@app.callback()
def _root() -> None:
    """typedmesh: typed, journaled multi-agent flows."""


class CommandLineError(UserError):
    """A mistake on the command line or in what it names: exit 2, one line, no traceback.

    ``kind`` is what ``--json`` reports as ``"error"``: ``UsageError``, or the
    type of the exception that loading a flow raised (``SyntaxError``,
    ``ContractError``, ...).
    """

    def __init__(self, message: str, *, kind: str = "UsageError") -> None:
        self.kind = kind
        super().__init__(message)


def _short_path(filename: str) -> str:
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # another drive
        return filename
    return filename if relative.startswith(".." + os.sep + "..") else relative


def _where(exc: BaseException, near: Path | None = None) -> str:
    """``file:line`` where ``exc`` was raised (the last frame in ``near``, when given)."""
    if isinstance(exc, SyntaxError) and exc.filename:  # its message says where already
        return ""
    frames: list[traceback.FrameSummary] = list(traceback.extract_tb(exc.__traceback__))
    if near is not None:
        frames = [f for f in frames if Path(f.filename) == near] or frames
    if not frames:
        return ""
    frame = frames[-1]
    return f"{_short_path(frame.filename)}:{frame.lineno}"


def _load_failed(what: str, exc: BaseException, near: Path | None = None) -> CommandLineError:
    """A flow file or module that raised while it was imported."""
    first, _, rest = str(exc).partition("\n")
    where = _where(exc, near)
    message = f"cannot load {what}: {type(exc).__name__}: {first}"
    if where:
        message += f" (at {where})"
    failed = CommandLineError(message + ("\n" + rest if rest else ""), kind=type(exc).__name__)
    for field in ("source", "target", "problems"):  # a ContractError's fields, for --json
        if hasattr(exc, field):
            setattr(failed, field, getattr(exc, field))
    return failed


def _import_file(module_part: str) -> Any:
    path = Path(module_part).resolve()
    if not path.exists():
        raise CommandLineError(f"no such file: {module_part}")
    if not path.is_file():
        raise CommandLineError(f"{module_part} is a directory, not a Python file")
    name = f"_typedmesh_target_{path.stem}"
    module = sys.modules.get(name)
    if module is not None and getattr(module, "__file__", None) == str(path):
        return module
    spec_obj = importlib.util.spec_from_file_location(name, path)
    if spec_obj is None or spec_obj.loader is None:
        raise CommandLineError(f"cannot import {module_part}: not a Python file")
    module = importlib.util.module_from_spec(spec_obj)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))
    try:
        spec_obj.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise _load_failed(module_part, exc, path) from exc
    return module


def _import_dotted(module_part: str) -> Any:
    sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(module_part)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_part == missing or module_part.startswith(missing + ".")):
            raise CommandLineError(
                f"no module named {module_part!r}: give a dotted module importable from "
                "this directory, or path/to/file.py, before the ':'"
            ) from None
        raise _load_failed(module_part, exc) from exc
    except Exception as exc:
        raise _load_failed(module_part, exc) from exc


def load_target(spec: str) -> Any:
    """Load ``module:attr`` where module is a dotted name or a path to a .py file.

    Whatever goes wrong (no such module or file, a ``SyntaxError`` or a
    ``ContractError`` raised on import, no such attribute) is a
    ``CommandLineError`` naming it.
    """
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        raise CommandLineError(f"expected MODULE:ATTR or path/to/file.py:ATTR, got {spec!r}")
    if cj.is_file_target(module_part):
        module = _import_file(module_part)
    else:
        module = _import_dotted(module_part)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise CommandLineError(f"{module_part} has no attribute {attr!r}") from None


def load_step(spec: str) -> Step[Any, Any]:
    """``load_target`` that insists on a typedmesh Step."""
    step = load_target(spec)
    if not isinstance(step, Step):
        raise CommandLineError(f"{spec} is a {type(step).__name__}, not a typedmesh Step")
    return step


def _read_arg_file(text: str, option: str) -> str:
    """The text of the file that ``@path`` names, for ``option``."""
    shown = f"{option} {text}"
    if len(text) < 2:
        raise CommandLineError(f"{shown}: give a file name after '@'")
    try:
        return Path(text[1:]).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CommandLineError(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise CommandLineError(f"{shown}: is a directory, not a file") from None
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start : exc.start + 1].hex()
        raise CommandLineError(
            f"{shown}: not UTF-8 text (byte 0x{byte} at offset {exc.start})"
        ) from None
    except OSError as exc:
        raise CommandLineError(f"{shown}: cannot read it: {exc.strerror or exc}") from None


def _json_arg(text: str, option: str) -> Any:
    """The JSON value of ``option``: inline, or ``@path`` to a UTF-8 file."""
    what = option
    if text.startswith("@"):
        what = f"{option} {text}"
        text = _read_arg_file(text, option)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandLineError(f"{what} is not valid JSON: {exc}") from None


def _deps_arg(spec: str | None) -> Any:
    """The deps ``--deps`` names: the object itself, or what its factory returns."""
    if spec is None:
        return None
    found = load_target(spec)
    if not (inspect.isfunction(found) or inspect.ismethod(found) or isinstance(found, type)):
        return found
    try:
        return found()
    except Exception as exc:  # the user's factory failed: say where, no traceback
        raise _load_failed(f"the deps from {spec}", exc) from None


def _input_arg(text: str, flow: Step[Any, Any]) -> Any:
    """``--input`` for ``flow``: JSON, or for a plain-text flow the text itself.

    A flow whose input is ``Text`` (``input=str``) takes the option (or the
    ``@file``) verbatim, unless it is a JSON object such as ``{"text": ...}``.
    """
    if not is_text(flow.input_type):
        return _json_arg(text, "--input")
    raw = _read_arg_file(text, "--input") if text.startswith("@") else text
    if raw.lstrip().startswith("{"):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            return raw
        if isinstance(value, dict) and "text" in value:
            return value
    return raw


def _intent_arg(text: str | None) -> Intent | None:
    if text is None:
        return None
    data = _json_arg(text, "--intent")
    try:
        return Intent.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(error_lines(exc))
        raise CommandLineError(f"--intent does not fit Intent: {problems}") from None


def _budget_arg(
    max_tokens: int | None,
    max_cost: float | None,
    max_model_calls: int | None,
    max_plan_steps: int | None = None,
) -> Budget | None:
    """The Budget the budget options give; a negative or NaN limit is a usage error."""
    limits = {
        "--max-tokens": max_tokens,
        "--max-cost": max_cost,
        "--max-model-calls": max_model_calls,
        "--max-plan-steps": max_plan_steps,
    }
    for option, value in limits.items():
        if value is not None and not value >= 0:  # `not >=` catches NaN too
            raise CommandLineError(f"{option} must be >= 0, got {value}")
    if all(value is None for value in limits.values()):
        return None
    return Budget(
        max_tokens=max_tokens,
        max_cost_usd=max_cost,
        max_model_calls=max_model_calls,
        max_plan_steps=max_plan_steps,
    )


def _durability_arg(value: str) -> Durability:
    if value not in ("off", "normal", "full"):
        raise CommandLineError(f"--durability must be off, normal or full, got {value!r}")
    return value  # type: ignore[return-value]


def _deadline_arg(seconds: float | None) -> None:
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise CommandLineError(f"--deadline must be a positive number of seconds, got {seconds}")


def _model_timeout_arg(seconds: float | None) -> None:
    """``--model-timeout``: the timeout of every provider model not given its own."""
    if seconds is None:
        return
    if not (math.isfinite(seconds) and seconds > 0):
        raise CommandLineError(
            f"--model-timeout must be a positive number of seconds, got {seconds}"
        )
    from .models import set_default_timeout

    set_default_timeout(seconds)


def _headline(exc: BaseException) -> str:
    """The line naming what went wrong; details (problems, a diff) follow it."""
    if isinstance(exc, CommandLineError):
        return str(exc)
    first, newline, rest = str(exc).partition("\n")
    run_id = getattr(exc, "run_id", None)
    if run_id and not isinstance(exc, JournalError):  # a journal error names its run itself
        first += f" (run {run_id})"
    return f"{type(exc).__name__}: {first}{newline}{rest}"


def _fail(
    exc: BaseException,
    as_json: bool,
    *,
    code: int,
    partial: Any = None,
    footer: str | None = None,
) -> NoReturn:
    """Report ``exc`` as one error line (or one JSON document) and exit with ``code``."""
    if partial is None:
        partial = getattr(exc, "partial", None)
    if as_json:
        document: dict[str, Any] = {
            "error": exc.kind if isinstance(exc, CommandLineError) else type(exc).__name__,
            "message": str(exc),
            "run_id": getattr(exc, "run_id", None),
            "step_path": getattr(exc, "step_path", None),
            "partial": partial.to_dict() if partial is not None else None,
        }
        for field in ("error_type", "source", "target", "problems"):
            if hasattr(exc, field):
                document[field] = getattr(exc, field)
        print(json.dumps(document, default=str))
    else:
        cause = exc.__cause__ if isinstance(exc, StepFailed) else None
        if cause is not None:  # where the user's code raised: the one frame worth showing
            if os.environ.get("TYPEDMESH_TRACEBACK"):
                traceback.print_exception(cause)
            where = _where(cause)
            if where:
                footer = f"raised at {where}" + (f"\n{footer}" if footer else "")
        errors.print(f"[red bold]error[/]: {escape(_headline(exc))}", soft_wrap=True)
        if partial is not None:
            from .render import model_notes, trace_tree

            notes = None
            calls = getattr(exc, "partial_calls", ())
            if calls and isinstance(partial, TraceNode):  # label offline and unpriced models
                with contextlib.suppress(Exception):  # a label is not worth a second failure
                    notes = model_notes(cost_report(partial, calls))
            errors.print(trace_tree(partial, notes))
        if footer:
            errors.print(footer, soft_wrap=True)
    raise typer.Exit(code)


def _step_raised(
    exc: Exception,
    as_json: bool,
    *,
    run_id: str,
    store: Journal | None,
    footer: str | None = None,
) -> NoReturn:
    """An exception a user step raised that the runtime did not wrap: exit 1, one line."""
    if os.environ.get("TYPEDMESH_TRACEBACK"):
        traceback.print_exception(exc)
    if not getattr(exc, "run_id", None):
        with contextlib.suppress(AttributeError):  # an exception class with __slots__
            exc.run_id = run_id  # type: ignore[attr-defined]
    partial = getattr(exc, "partial", None)
    if partial is None and store is not None:
        partial = _journaled_trace(store, run_id)
    where = _where(exc)
    if where and not as_json:
        footer = f"raised at {where}" + (f"\n{footer}" if footer else "")
    _fail(exc, as_json, code=1, partial=partial, footer=footer)


def _journaled_trace(store: Journal, run_id: str) -> Any:
    """A run's trace as far as its journal goes, or None when it cannot be rebuilt."""
    for name in (".runtime.reducer", ".journal.trace"):
        try:
            module = importlib.import_module(name, __package__)
            return module.trace_from_events(store.read(run_id), store)
        except Exception:  # a courtesy: the error line is what matters
            continue
    return None


def _journal_problem(path: str, exc: BaseException) -> BaseException:
    """A journal that cannot be opened or created, as one line (typed errors stay as they are)."""
    if isinstance(exc, TypedMeshError):
        return exc
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    culprit = getattr(exc, "filename", None)
    if culprit and str(culprit) != path:
        reason += f": {culprit}"
    return CommandLineError(f"cannot open or create the journal {path}: {reason}")


@contextmanager
def _user_errors(as_json: bool) -> Iterator[None]:
    """Usage, contract and journal errors raised inside exit 2 with one line."""
    try:
        yield
    except (UserError, JournalError) as exc:
        _fail(exc, as_json, code=2)


@contextmanager
def _journal(
    path: str,
    as_json: bool,
    *,
    must_exist: bool = True,
    readonly: bool = False,
    durability: Durability = "normal",
) -> Iterator[Journal]:
    """Open a journal; journal and usage errors inside exit 2 with the message."""
    try:
        store = open_journal(path, must_exist=must_exist, readonly=readonly, durability=durability)
    except (JournalError, UserError, OSError, sqlite3.Error) as exc:
        _fail(_journal_problem(path, exc), as_json, code=2)
    try:
        yield store
    except (JournalError, UserError) as exc:
        _fail(exc, as_json, code=2)
    finally:
        store.close()


def resolve_run_id(store: Journal, run_id: str) -> str:
    """The run ``run_id`` names: the exact id, else the one run whose id starts with it.

    A prefix that several runs share is a ``CommandLineError`` listing up to 5 of
    them; an id that matches nothing comes back unchanged (reading it then raises
    the usual ``RunNotFound``)."""
    ids = [info.run_id for info in store.runs()]
    if not run_id or run_id in ids:
        return run_id
    matches = sorted(i for i in ids if i.startswith(run_id))
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        more = f" (and {len(matches) - 5} more)" if len(matches) > 5 else ""
        raise CommandLineError(
            f"run id prefix {run_id!r} is ambiguous: {', '.join(matches[:5])}{more}"
        )
    return run_id


def _next_steps(run_id: str, journal: str) -> None:
    """The commands that read a run a user just ran or resumed."""
    flag = "" if journal == DEFAULT_JOURNAL else f" --journal {shlex.quote(journal)}"
    commands = "   ".join(
        f"typedmesh {verb} {run_id}{flag}" for verb in ("trace", "cost", "replay")
    )
    console.print(f"[dim]next:[/] {escape(commands)}", soft_wrap=True)


def _run_cost(store: Journal, run_id: str) -> CostReport | None:
    """A run's cost report, for labelling offline and unpriced models (None: unreadable)."""
    from .runtime.cost import run_cost

    try:
        return run_cost(store, run_id)
    except Exception:  # a courtesy: the numbers of the run's own usage stand
        return None


def _print_run(
    title: str, output: Any, trace: TraceNode, usage: Usage, report: CostReport | None = None
) -> None:
    from .render import cost_line, model_notes, tokens_text, trace_tree, usage_table

    console.rule(title)
    if isinstance(output, Text):  # plain text is shown as text, not as {"text": ...}
        console.print(output.text, markup=False, highlight=False)
    else:
        console.print(JSON(output.model_dump_json()))
    console.rule("trace")
    console.print(trace_tree(trace, model_notes(report) if report is not None else None))
    console.print(usage_table(trace, usage, report))
    console.print(
        f"[bold]cost:[/] {escape(cost_line(usage, report))}   [bold]tokens:[/] "
        f"{tokens_text(usage)}   [bold]model calls:[/] {usage.model_calls}"
    )


@app.command("run")
def run_command(
    target: Annotated[str, typer.Argument(help="the flow, as MODULE:ATTR or path/file.py:ATTR")],
    input: Annotated[
        str,
        typer.Option(
            "--input", "-i", help="input JSON, or @file.json (a plain-text flow: the text)"
        ),
    ],
    intent: Annotated[str | None, typer.Option(help="Intent JSON, or @file.json")] = None,
    as_json: JsonOpt = False,
    max_tokens: MaxTokensOpt = None,
    max_cost: MaxCostOpt = None,
    max_model_calls: MaxCallsOpt = None,
    max_plan_steps: MaxPlanOpt = None,
    grant: Annotated[list[str] | None, typer.Option(help="a scope the run grants (repeat)")] = None,
    run_id: Annotated[str | None, typer.Option(help="the run id (default: random)")] = None,
    journal: JournalOpt = DEFAULT_JOURNAL,
    no_journal: Annotated[bool, typer.Option("--no-journal", help="do not journal")] = False,
    model_timeout: ModelTimeoutOpt = None,
    durability: DurabilityOpt = "normal",
    deadline: DeadlineOpt = None,
    state_url: cs.RunStoreOpt = None,
    deps: DepsOpt = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="show the run's events and model token deltas on stderr as they happen",
        ),
    ] = False,
) -> None:
    """Run a flow on an input; journal it; print its output, trace tree, usage and cost.

    ``--store`` defaults to the journal's own place (its SQLite file, its
    PostgreSQL database; ``memory:`` with ``--no-journal``)."""
    with _user_errors(as_json):
        budget = _budget_arg(max_tokens, max_cost, max_model_calls, max_plan_steps)
        _model_timeout_arg(model_timeout)
        level = _durability_arg(durability)
        _deadline_arg(deadline)
        run_intent = _intent_arg(intent)
        flow = load_step(target)
        data = _input_arg(input, flow)
        run_deps = _deps_arg(deps)
    run_id = run_id or uuid.uuid4().hex
    store: Journal | None = None
    if not no_journal:
        try:
            store = open_journal(journal, durability=level)
            cj.refuse_existing_run(store, run_id)
        except (JournalError, UserError, OSError, sqlite3.Error) as exc:
            if store is not None:
                store.close()
            _fail(_journal_problem(journal, exc), as_json, code=2)
    try:
        state = cs.open_for_run(state_url or cs.default_store(journal, no_journal), as_json)
    except BaseException:
        if store is not None:
            store.close()
        raise
    footer = (
        f"run id: {run_id}   journal: {escape(describe_journal(journal))}"
        if store is not None
        else None
    )
    try:
        result = asyncio.run(
            cf.runner(follow, as_json)(  # arun, or a tm.stream printing as it goes
                flow,
                data,
                intent=run_intent,
                budget=budget,
                grant=grant,
                run_id=run_id,
                journal=store,
                target=cj.resolved_target(target),  # journaled: resume finds the flow by id
                deadline=deadline,
                durability=level,
                state=state,
                deps=run_deps,
            )
        )
    except InputValidationError as exc:
        _fail(exc, as_json, code=2)
    except RunWaiting as exc:
        _fail(exc, as_json, code=4, footer=footer)
    except (RunError, StateError) as exc:
        _fail(exc, as_json, code=1, footer=footer)
    except (UserError, JournalError) as exc:
        _fail(exc, as_json, code=2)
    except Exception as exc:  # a user step raised and the runtime did not wrap it
        _step_raised(exc, as_json, run_id=run_id, store=store, footer=footer)
    else:
        report = None
        if not as_json:  # from the journal; or, with --no-journal, from the run itself
            report = _run_cost(store, result.run_id) if store is not None else result.cost()
    finally:
        state.close()
        if store is not None:
            store.close()
    if as_json:
        print(json.dumps(result.to_dict(), default=str))
        return
    _print_run(
        f"[bold]{flow.name}[/] run {result.run_id}",
        result.output,
        result.trace,
        result.usage,
        report,
    )
    if store is not None:
        console.print(
            f"[bold]run id:[/] {result.run_id}   "
            f"[bold]journal:[/] {escape(describe_journal(journal))}"
        )
        _next_steps(result.run_id, journal)


@app.command("runs")
def runs_command(journal: JournalOpt = DEFAULT_JOURNAL, as_json: JsonOpt = False) -> None:
    """List the runs in a journal, newest first."""
    with _journal(journal, as_json, readonly=True) as store:
        infos = store.runs()
    if as_json:
        print(json.dumps([asdict(info) for info in infos]))
        return
    from .render import runs_table

    console.print(runs_table(infos, title=f"runs in {escape(describe_journal(journal))}"))


@app.command("trace")
def trace_command(
    run_id: RunIdArg, journal: JournalOpt = DEFAULT_JOURNAL, as_json: JsonOpt = False
) -> None:
    """Show a journaled run as a tree: steps, agents, status, time, tokens, cost, events."""
    from .runtime.reducer import step_outputs, trace_from_events, trace_to_dict

    with _journal(journal, as_json, readonly=True) as store:
        run_id = resolve_run_id(store, run_id)
        events = store.read(run_id)
        root = trace_from_events(events, store)
        if as_json:
            print(json.dumps(trace_to_dict(root, step_outputs(events, store)), default=str))
            return
        report = _run_cost(store, run_id)
    from .render import cost_line, model_notes, tokens_text, trace_tree

    status = cj.run_status(events)
    console.rule(f"[bold]{escape(root.name)}[/] run {escape(run_id)}  {status}")
    console.print(trace_tree(root, model_notes(report) if report is not None else None))
    usage = root.total_usage()
    console.print(
        f"[bold]events:[/] {len(events)}   [bold]tokens:[/] {tokens_text(usage)}   "
        f"[bold]cost:[/] {escape(cost_line(usage, report))}"
    )


@app.command("verify")
def verify_command(
    run_id: RunIdArg, journal: JournalOpt = DEFAULT_JOURNAL, as_json: JsonOpt = False
) -> None:
    """Check a run's hash chain and blobs; exit 1 naming the first bad event."""
    from .journal.verify import VerifyReport, verify_run

    with _journal(journal, as_json, readonly=True) as store:
        run_id = resolve_run_id(store, run_id)
        try:
            report = verify_run(store, run_id)
        except JournalCorrupt as exc:  # an event too damaged to read at all
            report = VerifyReport(run_id, 0, False, reason=str(exc))
    if as_json:
        print(json.dumps(asdict(report)))
    elif report.ok:
        console.print(f"[green bold]OK[/]: run {escape(run_id)}: {report.events} events verified")
    else:
        where = (
            "" if report.bad_seq is None else f"event seq {report.bad_seq} ({report.bad_type}): "
        )
        console.print(f"[red bold]FAILED[/]: run {escape(run_id)}: {escape(where + report.reason)}")
    if not report.ok:
        raise typer.Exit(1)


@app.command("cost")
def cost_command(
    run_id: RunIdArg,
    journal: JournalOpt = DEFAULT_JOURNAL,
    as_json: JsonOpt = False,
    by: Annotated[
        str | None,
        typer.Option("--by", help="one view: agent, model or node (default: all three)"),
    ] = None,
) -> None:
    """Where a journaled run's money went: by pattern node, by agent and by model.

    The views add up exactly to the run's total (the footer shows it). An
    orchestrate run is compared with its planner's model doing every call; a
    cascade that escalated shows its escalation rate and what it saved.
    docs/cost.md explains each number."""
    views: tuple[str, ...] = ("node", "agent", "model")
    with _user_errors(as_json):
        if by is not None:
            if by not in views:
                raise CommandLineError(f"--by must be agent, model or node, got {by!r}")
            views = (by,)
    from .render import cost_views, usage_by_agent
    from .runtime.cost import reducer_cost
    from .runtime.reducer import reduce_events

    with _journal(journal, as_json, readonly=True) as store:
        run_id = resolve_run_id(store, run_id)
        events = store.read(run_id)
        reducer = reduce_events(events, store)
        root = reducer.finish(events[-1])
        report = reducer_cost(reducer)
    total = reducer.usage
    if as_json:
        document = {
            # as recorded (float sums), as before: the exact views follow
            "run_id": run_id,
            "usage": total.model_dump(),
            "cost_usd": total.cost_usd,
            "by_agent": {k: u.model_dump() for k, u in usage_by_agent(root).items()},
            "by_model": {k: u.model_dump() for k, u in reducer.by_model.items()},
            **report.to_dict(views),
        }
        print(json.dumps(document))
        return
    status = cj.run_status(events)
    console.rule(f"[bold]{escape(root.name)}[/] run {escape(run_id)}  {status}: cost")
    console.print(cost_views(report, views))


def _flow_for(journal: str, run_id: str, flow: str | None) -> Step[Any, Any]:
    if flow is not None:
        return load_step(flow)
    spec = cj.recorded_target(journal, run_id)
    if spec is None:
        raise CommandLineError(
            f"no flow target is recorded for run {run_id!r}: pass --flow MODULE:ATTR"
        )
    try:
        return load_step(spec)
    except UserError as exc:
        raise CommandLineError(
            f"the flow recorded for run {run_id!r} ({spec}) cannot be loaded: {exc}; "
            "pass --flow MODULE:ATTR",
            kind=getattr(exc, "kind", type(exc).__name__),
        ) from exc


def _nondeterminism(
    exc: NonDeterminismError, store: Journal, run_id: str, as_json: bool
) -> NoReturn:
    recorded, new, diff = cj.request_diff(exc, store, run_id)
    if as_json:
        print(
            json.dumps(
                {
                    "error": "NonDeterminismError",
                    "effect_key": exc.effect_key,
                    "step_path": exc.step_path,
                    "recorded": recorded,
                    "new": new,
                    "diff": diff,
                }
            )
        )
    else:
        errors.print(
            f"[red bold]NonDeterminismError[/]: effect [bold]{escape(exc.effect_key)}[/] "
            f"differs from the journal (step {escape(str(exc.step_path))})"
        )
        sys.stderr.write(diff or f"--- recorded\n{recorded}\n+++ new\n{new}\n")
    raise typer.Exit(1)


@app.command("resume")
def resume_command(
    run_id: RunIdArg,
    flow: FlowOpt = None,
    journal: JournalOpt = DEFAULT_JOURNAL,
    retry_in_doubt: Annotated[
        bool, typer.Option("--retry-in-doubt", help="run a tool call in doubt again")
    ] = False,
    skip_in_doubt: Annotated[
        bool, typer.Option("--skip-in-doubt", help="skip a tool call in doubt")
    ] = False,
    as_json: JsonOpt = False,
    model_timeout: ModelTimeoutOpt = None,
    max_tokens: MaxTokensOpt = None,
    max_cost: MaxCostOpt = None,
    max_model_calls: MaxCallsOpt = None,
    max_plan_steps: MaxPlanOpt = None,
    durability: DurabilityOpt = "normal",
    deadline: DeadlineOpt = None,
    state_url: cs.RunStoreOpt = None,
    deps: DepsOpt = None,
) -> None:
    """Continue a run from its journal without repeating any journaled effect.

    Budget options replace the recorded budget; it covers the whole run, what
    was spent before included. ``--store`` replaces the state store the run
    recorded.
    """
    from .runtime.reducer import reduce_events
    from .runtime.replay import aresume

    with _user_errors(as_json):
        if retry_in_doubt and skip_in_doubt:
            raise CommandLineError("--retry-in-doubt and --skip-in-doubt exclude each other")
        _model_timeout_arg(model_timeout)
        budget = _budget_arg(max_tokens, max_cost, max_model_calls, max_plan_steps)
        level = _durability_arg(durability)
        _deadline_arg(deadline)
    policy: InDoubtPolicy = "retry" if retry_in_doubt else "skip" if skip_in_doubt else "fail"
    with _journal(journal, as_json, durability=level) as store:
        run_id = resolve_run_id(store, run_id)
        finished = store.read(run_id)[-1].type == "run.finished"
        step = _flow_for(journal, run_id, flow)
        with _user_errors(as_json):
            run_deps = _deps_arg(deps)
        state = None if state_url is None else cs.open_for_run(state_url, as_json)
        try:
            result = asyncio.run(
                aresume(
                    run_id,
                    step,
                    journal=store,
                    in_doubt=policy,
                    budget=budget,
                    deadline=deadline,
                    durability=level,
                    state=state,
                    deps=run_deps,
                )
            )
        except InDoubtError as exc:
            _fail(exc, as_json, code=3)
        except RunWaiting as exc:
            _fail(exc, as_json, code=4)
        except NonDeterminismError as exc:
            _nondeterminism(exc, store, run_id, as_json)
        except (RunError, StateError) as exc:
            _fail(exc, as_json, code=1)
        except (UserError, JournalError):
            raise  # exit 2, in _journal
        except Exception as exc:  # a user step raised and the runtime did not wrap it
            _step_raised(exc, as_json, run_id=run_id, store=store)
        finally:
            if state is not None:
                state.close()
        events = store.read(run_id)
        reducer = reduce_events(events, store)
        trace, usage = reducer.finish(events[-1]), reducer.usage
        report = None if as_json else _run_cost(store, run_id)
    if as_json:
        print(json.dumps(result.to_dict(), default=str))
        return
    note = "already finished: its recorded output" if finished else "resumed"
    _print_run(
        f"[bold]{step.name}[/] run {escape(run_id)} {note}", result.output, trace, usage, report
    )
    _next_steps(run_id, journal)


@app.command("waiting")
def waiting_command(
    run_id: RunIdArg, journal: JournalOpt = DEFAULT_JOURNAL, as_json: JsonOpt = False
) -> None:
    """List the effects a waiting run waits for (give each a result with `record`)."""
    from .runtime.waits import waiting_effects

    with _journal(journal, as_json, readonly=True) as store:
        run_id = resolve_run_id(store, run_id)
        keys = waiting_effects(run_id, journal=store)
    if as_json:
        print(json.dumps({"run_id": run_id, "waiting": keys}))
        return
    if not keys:
        console.print(f"run {escape(run_id)} waits for nothing")
    for key in keys:
        console.print(key)


@app.command("record")
def record_command(
    run_id: RunIdArg,
    key: Annotated[str, typer.Argument(help="the waiting effect's key (see `waiting`)")],
    value: Annotated[str, typer.Option("--value", help="the result as JSON, or @file.json")],
    by: Annotated[
        str | None, typer.Option("--by", help="who decided (journaled with the result)")
    ] = None,
    journal: JournalOpt = DEFAULT_JOURNAL,
    as_json: JsonOpt = False,
) -> None:
    """Record the result a waiting run waits for; then `typedmesh resume` continues it."""
    from .runtime.waits import record_result

    with _user_errors(as_json):
        result = _json_arg(value, "--value")
    with _journal(journal, as_json) as store:
        run_id = resolve_run_id(store, run_id)
        record_result(run_id, key, result, journal=store, recorded_by=by)
    if as_json:
        print(json.dumps({"run_id": run_id, "key": key, "recorded": True}))
    else:
        console.print(f"recorded {escape(key)}: resume with `typedmesh resume {escape(run_id)}`")


@app.command("replay")
def replay_command(
    run_id: RunIdArg,
    flow: FlowOpt = None,
    swap: Annotated[
        list[str] | None,
        typer.Option(help="NAME=MODULE:ATTR: run this step instead of NAME, live (repeat)"),
    ] = None,
    journal: JournalOpt = DEFAULT_JOURNAL,
    as_json: JsonOpt = False,
    deps: DepsOpt = None,
) -> None:
    """Replay a run from its journal: strictly, or what-if with steps swapped.

    ``--deps`` is needed only when a function step reads ``ctx.deps`` itself
    (tools are served from the journal)."""
    from .runtime.replay import areplay

    swaps: dict[str, Step[Any, Any]] = {}
    with _user_errors(as_json):
        for item in swap or []:
            name, sep, spec = item.partition("=")
            if not sep or not name or not spec:
                raise CommandLineError(f"--swap expects NAME=MODULE:ATTR, got {item!r}")
            swaps[name] = load_step(spec)
        run_deps = _deps_arg(deps)
    with _journal(journal, as_json) as store:
        run_id = resolve_run_id(store, run_id)
        store.read(run_id)
        step = _flow_for(journal, run_id, flow)
        try:
            result = asyncio.run(
                areplay(run_id, step, journal=store, swap=swaps or None, deps=run_deps)
            )
        except NonDeterminismError as exc:
            _nondeterminism(exc, store, run_id, as_json)
        except RunError as exc:
            _fail(exc, as_json, code=1)
        except (UserError, JournalError):
            raise  # exit 2, in _journal
        except Exception as exc:  # a user step raised and the runtime did not wrap it
            _step_raised(exc, as_json, run_id=run_id, store=store)
    if as_json:
        print(json.dumps(cj.replay_dict(result), default=str))
    else:
        cj.print_replay(console, result, swaps)
    if not swaps and not result.identical:
        raise typer.Exit(1)


from .cli_reliability import reliability_command  # noqa: E402 - it uses the helpers above

app.command("reliability")(reliability_command)

from .cli_approve import approvals_command, approve_command  # noqa: E402

app.command("approve")(approve_command)
app.command("approvals")(approvals_command)
from .cli_session import session_command  # noqa: E402

app.command("session")(session_command)


def main() -> None:
    """Entry point of the ``typedmesh`` console script."""
    app()  # a reader that goes away (`| head`): click exits 1 quietly; the run is journaled


if __name__ == "__main__":
    main()
