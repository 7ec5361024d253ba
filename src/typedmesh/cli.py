"""The ``typedmesh`` command line: run flows, and read, verify, resume and replay their journals.

Exit codes: 0 success; 1 a run failed, a journal failed verification, or a
replay diverged; 2 a usage or journal error (unknown run, unreadable
journal, bad target); 3 a resume stopped on a tool call in doubt.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.json import JSON
from rich.markup import escape

from . import cli_journal as cj
from .contracts import Intent
from .errors import (
    InDoubtError,
    InputValidationError,
    JournalCorrupt,
    JournalError,
    NonDeterminismError,
    RunError,
    TypedMeshError,
    UserError,
)
from .journal import DEFAULT_JOURNAL, Journal, open_journal
from .models.base import Usage
from .runtime.budget import Budget
from .runtime.durable import InDoubtPolicy
from .runtime.run import arun
from .runtime.trace import TraceNode
from .step import Step

app = typer.Typer(
    help="typedmesh: typed, journaled multi-agent flows.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)

JournalOpt = Annotated[str, typer.Option("--journal", help="the journal file (SQLite)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document")]
RunIdArg = Annotated[str, typer.Argument(help="the run id (see `typedmesh runs`)")]
FlowOpt = Annotated[
    str | None,
    typer.Option("--flow", help="the flow as MODULE:ATTR (default: the one `run` recorded)"),
]


@app.callback()
def _root() -> None:
    """typedmesh: typed, journaled multi-agent flows."""


def load_target(spec: str) -> Any:
    """Load ``module:attr`` where module is a dotted name or a path to a .py file."""
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        raise typer.BadParameter(f"expected MODULE:ATTR, got {spec!r}")
    if cj.is_file_target(module_part):
        path = Path(module_part).resolve()
        if not path.exists():
            raise typer.BadParameter(f"no such file: {module_part}")
        name = f"_typedmesh_target_{path.stem}"
        module = sys.modules.get(name)
        if module is None or getattr(module, "__file__", None) != str(path):
            spec_obj = importlib.util.spec_from_file_location(name, path)
            if spec_obj is None or spec_obj.loader is None:
                raise typer.BadParameter(f"cannot import {module_part}")
            module = importlib.util.module_from_spec(spec_obj)
            sys.modules[name] = module
            sys.path.insert(0, str(path.parent))
            spec_obj.loader.exec_module(module)
    else:
        sys.path.insert(0, str(Path.cwd()))
        module = importlib.import_module(module_part)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise typer.BadParameter(f"{module_part} has no attribute {attr!r}") from None


def load_step(spec: str) -> Step[Any, Any]:
    """``load_target`` that insists on a typedmesh Step."""
    step = load_target(spec)
    if not isinstance(step, Step):
        raise typer.BadParameter(f"{spec} is a {type(step).__name__}, not a typedmesh Step")
    return step


def _json_arg(text: str, what: str) -> Any:
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{what} is not valid JSON: {exc}") from None


def _fail(exc: TypedMeshError, as_json: bool, *, code: int) -> NoReturn:
    partial = getattr(exc, "partial", None)
    if as_json:
        print(
            json.dumps(
                {
                    "error": type(exc).__name__,
                    "message": str(exc),
                    "run_id": getattr(exc, "run_id", None),
                    "step_path": getattr(exc, "step_path", None),
                    "partial": partial.to_dict() if partial is not None else None,
                },
                default=str,
            )
        )
    else:
        errors.print(f"[red bold]{type(exc).__name__}[/]: {escape(str(exc))}")
        if partial is not None:
            from .render import trace_tree

            errors.print(trace_tree(partial))
    raise typer.Exit(code)


@contextmanager
def _journal(path: str, as_json: bool, *, must_exist: bool = True) -> Iterator[Journal]:
    """Open a journal; journal and usage errors inside exit 2 with the message."""
    try:
        store = open_journal(path, must_exist=must_exist)
    except JournalError as exc:
        _fail(exc, as_json, code=2)
    try:
        yield store
    except (JournalError, UserError) as exc:
        _fail(exc, as_json, code=2)
    finally:
        store.close()


def _print_run(title: str, output: Any, trace: TraceNode, usage: Usage) -> None:
    from .render import trace_tree, usage_table

    console.rule(title)
    console.print(JSON(output.model_dump_json()))
    console.rule("trace")
    console.print(trace_tree(trace))
    console.print(usage_table(trace, usage))
    console.print(
        f"[bold]cost:[/] ${usage.cost_usd:.6f}   [bold]tokens:[/] "
        f"{usage.total_tokens}   [bold]model calls:[/] {usage.model_calls}"
    )


@app.command("run")
def run_command(
    target: Annotated[str, typer.Argument(help="the flow, as MODULE:ATTR or path/file.py:ATTR")],
    input: Annotated[str, typer.Option("--input", "-i", help="input JSON, or @file.json")],
    intent: Annotated[str | None, typer.Option(help="Intent JSON, or @file.json")] = None,
    as_json: JsonOpt = False,
    max_tokens: Annotated[int | None, typer.Option(help="hard token budget")] = None,
    max_cost: Annotated[float | None, typer.Option(help="hard cost budget in USD")] = None,
    max_model_calls: Annotated[int | None, typer.Option(help="hard model-call budget")] = None,
    grant: Annotated[list[str] | None, typer.Option(help="a scope the run grants (repeat)")] = None,
    run_id: Annotated[str | None, typer.Option(help="the run id (default: random)")] = None,
    journal: JournalOpt = DEFAULT_JOURNAL,
    no_journal: Annotated[bool, typer.Option("--no-journal", help="do not journal")] = False,
) -> None:
    """Run a flow on an input; journal it; print its output, trace tree, usage and cost."""
    flow = load_step(target)
    data = _json_arg(input, "--input")
    run_intent = Intent.model_validate(_json_arg(intent, "--intent")) if intent else None
    budget = None
    if max_tokens is not None or max_cost is not None or max_model_calls is not None:
        budget = Budget(
            max_tokens=max_tokens, max_cost_usd=max_cost, max_model_calls=max_model_calls
        )
    run_id = run_id or uuid.uuid4().hex
    store: Journal | None = None
    if not no_journal:
        try:
            store = open_journal(journal)
            cj.refuse_existing_run(store, run_id)
        except (JournalError, UserError) as exc:
            if store is not None:
                store.close()
            _fail(exc, as_json, code=2)
        cj.remember_target(journal, run_id, target)  # before running: a crash can be resumed
    try:
        result = asyncio.run(
            arun(
                flow,
                data,
                intent=run_intent,
                budget=budget,
                grant=grant,
                run_id=run_id,
                journal=store,
            )
        )
    except InputValidationError as exc:
        _fail(exc, as_json, code=2)
    except RunError as exc:
        if store is not None and not as_json:
            errors.print(f"run id: {run_id}   journal: {escape(journal)}")
        _fail(exc, as_json, code=1)
    except (UserError, JournalError) as exc:
        _fail(exc, as_json, code=2)
    finally:
        if store is not None:
            store.close()
    if as_json:
        print(json.dumps(result.to_dict(), default=str))
        return
    _print_run(
        f"[bold]{flow.name}[/] run {result.run_id}", result.output, result.trace, result.usage
    )
    if store is not None:
        console.print(f"[bold]run id:[/] {result.run_id}   [bold]journal:[/] {escape(journal)}")


@app.command("runs")
def runs_command(journal: JournalOpt = DEFAULT_JOURNAL, as_json: JsonOpt = False) -> None:
    """List the runs in a journal, newest first."""
    with _journal(journal, as_json) as store:
        infos = store.runs()
    if as_json:
        print(json.dumps([asdict(info) for info in infos]))
        return
    from .render import runs_table

    console.print(runs_table(infos, title=f"runs in {escape(journal)}"))


@app.command("trace")
def trace_command(
    run_id: RunIdArg, journal: JournalOpt = DEFAULT_JOURNAL, as_json: JsonOpt = False
) -> None:
    """Show a journaled run as a tree: steps, agents, status, time, tokens, cost, events."""
    from .journal.trace import step_outputs, trace_from_events, trace_to_dict

    with _journal(journal, as_json) as store:
        events = store.read(run_id)
        root = trace_from_events(events, store)
        if as_json:
            print(json.dumps(trace_to_dict(root, step_outputs(events, store)), default=str))
            return
    from .render import trace_tree

    status = cj.run_status(events)
    console.rule(f"[bold]{escape(root.name)}[/] run {escape(run_id)}  {status}")
    console.print(trace_tree(root))
    usage = root.total_usage()
    console.print(
        f"[bold]events:[/] {len(events)}   [bold]tokens:[/] {usage.total_tokens}   "
        f"[bold]cost:[/] ${usage.cost_usd:.6f}"
    )


@app.command("verify")
def verify_command(
    run_id: RunIdArg, journal: JournalOpt = DEFAULT_JOURNAL, as_json: JsonOpt = False
) -> None:
    """Check a run's hash chain and blobs; exit 1 naming the first bad event."""
    from .journal.verify import VerifyReport, verify_run

    with _journal(journal, as_json) as store:
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
    run_id: RunIdArg, journal: JournalOpt = DEFAULT_JOURNAL, as_json: JsonOpt = False
) -> None:
    """Usage and cost of a journaled run, by agent and by model."""
    from .journal.trace import trace_from_events, usage_by_model, usage_from_events
    from .render import model_usage_table, usage_by_agent, usage_table

    with _journal(journal, as_json) as store:
        events = store.read(run_id)
        root = trace_from_events(events, store)
        total = usage_from_events(events, store)
        by_model = usage_by_model(events, store)
    if as_json:
        print(
            json.dumps(
                {
                    "run_id": run_id,
                    "usage": total.model_dump(),
                    "cost_usd": total.cost_usd,
                    "by_agent": {k: u.model_dump() for k, u in usage_by_agent(root).items()},
                    "by_model": {k: u.model_dump() for k, u in by_model.items()},
                }
            )
        )
        return
    console.print(usage_table(root, total))
    console.print(model_usage_table(by_model))
    console.print(
        f"[bold]cost:[/] ${total.cost_usd:.6f}   [bold]tokens:[/] {total.total_tokens}   "
        f"[bold]model calls:[/] {total.model_calls}   [bold]tool calls:[/] {total.tool_calls}"
    )


def _flow_for(journal: str, run_id: str, flow: str | None) -> Step[Any, Any]:
    spec = flow or cj.recorded_target(journal, run_id)
    if spec is None:
        raise typer.BadParameter(
            f"no flow target is recorded for run {run_id!r}: pass --flow MODULE:ATTR"
        )
    return load_step(spec)


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
) -> None:
    """Continue a run from its journal without repeating any journaled effect."""
    from .journal.trace import trace_from_events, usage_from_events
    from .runtime.replay import aresume

    if retry_in_doubt and skip_in_doubt:
        raise typer.BadParameter("--retry-in-doubt and --skip-in-doubt exclude each other")
    policy: InDoubtPolicy = "retry" if retry_in_doubt else "skip" if skip_in_doubt else "fail"
    with _journal(journal, as_json) as store:
        finished = store.read(run_id)[-1].type == "run.finished"
        step = _flow_for(journal, run_id, flow)
        try:
            result = asyncio.run(aresume(run_id, step, journal=store, in_doubt=policy))
        except InDoubtError as exc:
            _fail(exc, as_json, code=3)
        except NonDeterminismError as exc:
            _nondeterminism(exc, store, run_id, as_json)
        except RunError as exc:
            _fail(exc, as_json, code=1)
        events = store.read(run_id)
        trace = trace_from_events(events, store)
        usage = usage_from_events(events, store)
    if as_json:
        print(json.dumps(result.to_dict(), default=str))
        return
    note = "already finished: its recorded output" if finished else "resumed"
    _print_run(f"[bold]{step.name}[/] run {escape(run_id)} {note}", result.output, trace, usage)


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
) -> None:
    """Replay a run from its journal: strictly, or what-if with steps swapped."""
    from .runtime.replay import areplay

    swaps: dict[str, Step[Any, Any]] = {}
    for item in swap or []:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise typer.BadParameter(f"--swap expects NAME=MODULE:ATTR, got {item!r}")
        swaps[name] = load_step(spec)
    with _journal(journal, as_json) as store:
        store.read(run_id)
        step = _flow_for(journal, run_id, flow)
        try:
            result = asyncio.run(areplay(run_id, step, journal=store, swap=swaps or None))
        except NonDeterminismError as exc:
            _nondeterminism(exc, store, run_id, as_json)
        except RunError as exc:
            _fail(exc, as_json, code=1)
    if as_json:
        print(json.dumps(cj.replay_dict(result), default=str))
    else:
        cj.print_replay(console, result, swaps)
    if not swaps and not result.identical:
        raise typer.Exit(1)


def main() -> None:
    """Entry point of the ``typedmesh`` console script."""
    app()


if __name__ == "__main__":
    main()
