"""``typedmesh batch MODULE:ATTR --inputs file.jsonl``: one flow over many inputs.

Each JSONL line is one item, run as its own journaled run ``BATCH-00000``,
``BATCH-00001``... (the batch id is printed; ``--batch-id`` names it). A live
progress bar (stderr) shows items done, the success rate, tokens and cost;
the end is a report: items by status, the success rate with its 95%
confidence interval, errors by type, tokens and cost per agent and model,
malformed lines, and how to continue. Running the same command with the same
``--batch-id`` again takes finished items from the journal, resumes failed,
incomplete and waiting ones, and starts the rest. ``--provider-batch`` sends
model calls through the OpenAI / Anthropic batch APIs (half price, hours):
items end ``waiting`` and the command can exit; run it again (or ``--poll``)
to collect.

Exit codes: 0 every item ok; 1 an item failed, a line was malformed or an
item was skipped (the batch budget was used up); 2 a usage error (the target,
an unreadable inputs file, a bad option, a journal that cannot be opened);
4 nothing failed but items wait for results (run the command again later).
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .contracts import is_text
from .journal import DEFAULT_JOURNAL, describe_journal
from .runtime.cost import priced_as

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from .batch import BatchProgress, BatchReport

__all__ = ["batch_command", "print_report"]

console = Console()
errors = Console(stderr=True)

SHOWN = 20
"""How many failed items and malformed lines the human report lists (``--json``: all)."""


def batch_command(
    target: Annotated[str, typer.Argument(help="the flow, as MODULE:ATTR or path/file.py:ATTR")],
    inputs: Annotated[
        str, typer.Option("--inputs", "-i", help="a JSONL file: one input object per line")
    ],
    batch_id: Annotated[
        str | None,
        typer.Option("--batch-id", help="the batch's id: the same id resumes it (default: new)"),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", help="items running at once")
    ] = 4,
    journal: Annotated[
        str,
        typer.Option(
            "--journal", help="the journal: a SQLite file, or postgresql://USER@HOST:PORT/DB"
        ),
    ] = DEFAULT_JOURNAL,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="token budget shared by all items")
    ] = None,
    max_cost: Annotated[
        float | None, typer.Option("--max-cost", help="cost budget in USD shared by all items")
    ] = None,
    max_model_calls: Annotated[
        int | None,
        typer.Option("--max-model-calls", help="model-call budget shared by all items"),
    ] = None,
    max_plan_steps: Annotated[
        int | None,
        typer.Option("--max-plan-steps", help="longest plan an orchestrator runs"),
    ] = None,
    provider_batch: Annotated[
        bool,
        typer.Option(
            "--provider-batch",
            help="send OpenAI/Anthropic model calls through the provider's batch API "
            "(about half price, results within hours; run again to collect)",
        ),
    ] = False,
    poll: Annotated[
        float | None,
        typer.Option(
            "--poll", metavar="SECONDS", help="keep collecting waiting items every SECONDS"
        ),
    ] = None,
    intent: Annotated[str | None, typer.Option(help="Intent JSON, or @file.json")] = None,
    grant: Annotated[list[str] | None, typer.Option(help="a scope the runs grant (repeat)")] = None,
    deadline: Annotated[
        float | None,
        typer.Option("--deadline", metavar="SECONDS", help="stop each item after SECONDS"),
    ] = None,
    model_timeout: Annotated[
        float | None,
        typer.Option(
            "--model-timeout", metavar="SECONDS", help="timeout of each provider model request"
        ),
    ] = None,
    durability: Annotated[
        str, typer.Option("--durability", help="fsync level of the journal: off, normal, full")
    ] = "normal",
    no_retry_failed: Annotated[
        bool,
        typer.Option("--no-retry-failed", help="report failed items as journaled, do not resume"),
    ] = False,
    retry_in_doubt: Annotated[
        bool, typer.Option("--retry-in-doubt", help="run a tool call in doubt again")
    ] = False,
    skip_in_doubt: Annotated[
        bool, typer.Option("--skip-in-doubt", help="skip a tool call in doubt")
    ] = False,
    state_url: Annotated[
        str | None,
        typer.Option(
            "--store",
            metavar="URL",
            help="the shared state store the items' steps use (default: the journal's file)",
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="write each item (status, output, error) as JSONL"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON document")] = False,
    no_progress: Annotated[
        bool, typer.Option("--no-progress", help="no progress bar on stderr")
    ] = False,
) -> None:
    """Run a flow on every line of a JSONL file, each line a journaled, resumable run."""
    from . import cli
    from . import cli_journal as cj
    from . import cli_state as cs
    from .batch import abatch, read_inputs
    from .errors import JournalError, UserError
    from .runtime.budget import Budget
    from .runtime.kinds import InDoubtPolicy

    with cli._user_errors(as_json):
        if retry_in_doubt and skip_in_doubt:
            raise cli.CommandLineError("--retry-in-doubt and --skip-in-doubt exclude each other")
        if concurrency < 1:
            raise cli.CommandLineError(f"--concurrency must be >= 1, got {concurrency}")
        if poll is not None and not (math.isfinite(poll) and poll > 0):
            raise cli.CommandLineError(f"--poll must be a positive number of seconds, got {poll}")
        shared = cli._budget_arg(max_tokens, max_cost, max_model_calls)
        if max_plan_steps is not None and max_plan_steps < 0:
            raise cli.CommandLineError(f"--max-plan-steps must be >= 0, got {max_plan_steps}")
        per_item = None if max_plan_steps is None else Budget(max_plan_steps=max_plan_steps)
        cli._model_timeout_arg(model_timeout)
        level = cli._durability_arg(durability)
        cli._deadline_arg(deadline)
        run_intent = cli._intent_arg(intent)
        flow = cli.load_step(target)
        entries = read_inputs(inputs, text=is_text(flow.input_type))
    policy: InDoubtPolicy = "retry" if retry_in_doubt else "skip" if skip_in_doubt else "fail"
    bar = None if as_json or no_progress else _ProgressBar()
    with cli._journal(journal, as_json, must_exist=False, durability=level) as store:
        state = cs.open_for_run(state_url or cs.default_store(journal, False), as_json)
        try:
            if bar is not None:
                bar.start()
            report = asyncio.run(
                abatch(
                    flow,
                    entries,
                    batch_id=batch_id,
                    journal=store,
                    concurrency=concurrency,
                    budget=shared,
                    item_budget=per_item,
                    provider_batch=provider_batch,
                    poll_every=poll,
                    intent=run_intent,
                    grant=grant,
                    deadline=deadline,
                    durability=level,
                    retry_failed=not no_retry_failed,
                    in_doubt=policy,
                    progress=None if bar is None else bar.update,
                    target=cj.resolved_target(target),
                    state=state,
                )
            )
        except (UserError, JournalError):
            raise  # exit 2, in _journal
        finally:
            if bar is not None:
                bar.stop()
            state.close()
        report.journal = describe_journal(journal)
    if output is not None:
        _write_items(report, output, as_json)
    if as_json:
        print(json.dumps(report.to_dict(), default=str))
    else:
        print_report(console, report, target=target, inputs=inputs, journal=journal)
    raise typer.Exit(exit_code(report))


def exit_code(report: BatchReport) -> int:
    """0 all ok; 4 nothing failed but items wait; 1 otherwise."""
    counts = report.counts
    if counts["failed"] or counts["malformed"] or counts["skipped"]:
        return 1
    return 4 if counts["waiting"] else 0


def _write_items(report: BatchReport, path: str, as_json: bool) -> None:
    from . import cli

    lines = [
        json.dumps(
            {
                k: v
                for k, v in item.to_dict().items()
                if k in ("index", "line", "run_id", "status", "error_type", "error", "output")
            },
            default=str,
            ensure_ascii=False,
        )
        for item in report.items
    ]
    try:
        Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    except OSError as exc:
        cli._fail(
            cli.CommandLineError(f"--output {path}: cannot write it: {exc.strerror or exc}"),
            as_json,
            code=2,
        )


class _ProgressBar:
    """A rich progress bar on stderr: items done, success rate, tokens, cost."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress: Progress = Progress(
            TextColumn("[bold]batch {task.fields[batch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TextColumn("{task.fields[spend]}"),
            TimeElapsedColumn(),
            console=errors,
            transient=False,
        )
        self.task: TaskID | None = None

    def start(self) -> None:
        self.progress.start()

    def stop(self) -> None:
        self.progress.stop()

    def update(self, state: BatchProgress) -> None:
        rate = state.success_rate
        status = f"ok {state.ok}  failed {state.failed}"
        if state.waiting:
            status += f"  waiting {state.waiting}"
        if state.skipped:
            status += f"  skipped {state.skipped}"
        status += "  " + ("success —" if rate is None else f"success {rate:.0%}")
        usage = state.usage
        spend = f"{usage.total_tokens} tok  ${usage.cost_usd:.4f}"
        if self.task is None:
            self.task = self.progress.add_task(
                "batch", total=state.total, batch=state.batch_id, status=status, spend=spend
            )
        self.progress.update(
            self.task,
            completed=state.done,
            total=state.total,
            batch=state.batch_id,
            status=status,
            spend=spend,
        )


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def print_report(
    out: Console,
    report: BatchReport,
    *,
    target: str | None = None,
    inputs: str | None = None,
    journal: str | None = None,
) -> None:
    """The human report of a batch."""
    counts = report.counts
    out.rule(f"[bold]{escape(report.flow)}[/] batch {escape(report.batch_id)}")
    parts = [f"[bold]{len(report.items)}[/] items"]
    styles = {"ok": "green", "failed": "red", "waiting": "yellow", "malformed": "red"}
    for status in ("ok", "failed", "waiting", "malformed", "skipped"):
        if counts[status] or status in ("ok", "failed"):
            style = styles.get(status, "")
            shown = f"[{style}]{status}[/]" if style else status
            parts.append(f"{shown} {counts[status]}")
    out.print("   ".join(parts))
    decided = counts["ok"] + counts["failed"]
    interval = report.confidence_interval
    rate = f"[bold]success rate:[/] {_percent(report.success_rate)}"
    if interval is not None:
        rate += f" (95% CI {_percent(interval[0])} to {_percent(interval[1])})"
    out.print(rate + f" over {decided} item(s) that ran to an end")
    usage = report.usage
    unpriced = {n for n, u in report.by_model.items() if not u.cost_usd and priced_as(n) is None}
    cost = "unpriced" if report.by_model and unpriced == set(report.by_model) else None
    out.print(
        f"[bold]cost:[/] {cost or f'${usage.cost_usd:.6f}'}   "
        f"[bold]tokens:[/] {usage.total_tokens}   "
        f"[bold]model calls:[/] {usage.model_calls}   [bold]tool calls:[/] {usage.tool_calls}   "
        f"[bold]time:[/] {report.duration_s:.1f} s"
    )
    if report.by_agent:
        table = Table(title="usage by agent")
        for column in ("agent", "calls", "input tok", "output tok", "tools", "cost USD"):
            table.add_column(column, justify="left" if column == "agent" else "right")
        for agent, used in sorted(report.by_agent.items()):
            table.add_row(
                escape(agent),
                str(used.model_calls),
                str(used.input_tokens),
                str(used.output_tokens),
                str(used.tool_calls),
                f"{used.cost_usd:.6f}",
            )
        out.print(table)
    if report.by_model:
        models = ", ".join(
            f"{escape(name)} {'unpriced' if name in unpriced else f'${used.cost_usd:.6f}'}"
            for name, used in sorted(report.by_model.items())
        )
        out.print(f"[bold]by model:[/] {models}")
    if report.errors_by_type:
        kinds = ", ".join(f"{escape(k)} {n}" for k, n in report.errors_by_type.items())
        out.print(f"[bold]errors:[/] {kinds}")
    failed = report.of("failed") + report.of("skipped")
    for item in failed[:SHOWN]:
        where = f"line {item.line}" if item.line is not None else f"item {item.index}"
        out.print(
            f"  [red]{item.status}[/] {where} ({escape(str(item.run_id))}): "
            f"{escape(str(item.error_type))}: {escape(_first_line(item.error))}",
            soft_wrap=True,
        )
    if len(failed) > SHOWN:
        out.print(f"  ... and {len(failed) - SHOWN} more (--json lists every item)")
    malformed = report.of("malformed")
    for item in malformed[:SHOWN]:
        out.print(
            f"  [red]skipped[/] {escape(_first_line(item.error))}",
            soft_wrap=True,
        )
    if len(malformed) > SHOWN:
        out.print(f"  ... and {len(malformed) - SHOWN} more malformed lines")
    again = _command(report, target, inputs, journal)
    if counts["waiting"]:
        out.print(
            f"[yellow]{counts['waiting']} item(s) wait for results[/]: collect them later with "
            f"{again}",
            soft_wrap=True,
        )
    elif not report.complete and counts["failed"] + counts["skipped"]:
        out.print(f"resume the failed and skipped items with {again}", soft_wrap=True)
    out.print(
        f"[bold]batch id:[/] {escape(report.batch_id)}   "
        f"[bold]journal:[/] {escape(str(report.journal))}"
    )


def _first_line(text: str | None) -> str:
    return (text or "").partition("\n")[0]


def _command(
    report: BatchReport, target: str | None, inputs: str | None, journal: str | None
) -> str:
    if target is None or inputs is None:
        return f"the same batch id ({escape(report.batch_id)})"
    command = f"typedmesh batch {target} --inputs {inputs} --batch-id {report.batch_id}"
    if journal is not None and journal != DEFAULT_JOURNAL:
        command += f" --journal {describe_journal(journal)}"
    return f"`{escape(command)}`"
