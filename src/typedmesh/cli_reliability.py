"""``typedmesh reliability``: predicted next to measured reliability, from a journal's runs.

The figures are ``typedmesh.reliability.measure``'s; this module only picks the
runs (ids, ``--flow``, ``--since``) and draws them. It imports the CLI's
helpers when the command runs, so ``cli.py`` can register it with one line.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .errors import ConfigurationError
from .journal import DEFAULT_JOURNAL, describe_journal
from .reliability import (
    AgentReliability,
    FlowReliability,
    Rate,
    ReliabilityReport,
    measure,
    parse_since,
    required_per_step,
)

__all__ = ["reliability_command", "reliability_tables"]

RUN_LIMIT = 20
"""Failed runs listed before the rest are summed up in one line."""


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _ci(rate: Rate) -> str:
    if rate.low is None or rate.high is None:
        return "—"
    return f"{rate.low * 100:.1f}-{rate.high * 100:.1f}%"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items()) or "—"


def _rate_cell(rate: Rate) -> Text:
    if rate.value is None:
        return Text("—", style="dim")
    style = "green" if rate.value >= 0.95 else "yellow" if rate.value >= 0.8 else "red"
    return Text(f"{rate.value:.1%} ({rate.successes}/{rate.trials})", style=style)


def _needs(flow: FlowReliability, target: float) -> float | None:
    return required_per_step(target, len(flow.steps)) if flow.steps else None


def flows_table(flows: list[FlowReliability], target: float) -> Table:
    """One row per flow: the chain of its measured step rates beside its measured rate."""
    table = Table(title="flows: predicted vs measured end to end")
    table.add_column("flow", no_wrap=True)
    table.add_column("runs", justify="right")
    table.add_column("steps", justify="right")
    table.add_column("predicted\nno retries", justify="right")
    table.add_column("predicted", justify="right")
    table.add_column("measured", justify="right")
    table.add_column("95% CI", justify="right")
    table.add_column(f"per step\nfor {target:.0%}", justify="right")
    table.add_column("failures")
    for flow in flows:
        runs = str(flow.runs) + (f" ({flow.unfinished} unfinished)" if flow.unfinished else "")
        table.add_row(
            escape(flow.flow),
            runs,
            str(len(flow.steps)),
            _pct(flow.predicted_first_try),
            Text(_pct(flow.predicted), style="bold"),
            _rate_cell(flow.measured),
            _ci(flow.measured),
            _pct(_needs(flow, target)),
            escape(_counts(flow.failures_by_boundary)),
        )
    return table


def _rate_with_ci(rate: Rate) -> Text:
    """The rate on one line, its 95% interval dim below it."""
    cell = _rate_cell(rate)
    if rate.value is not None:
        cell.append("\n" + _ci(rate), style="dim")
    return cell


def agents_table(agents: list[AgentReliability]) -> Table:
    """One row per agent (name@version): first try, after retries, what failed where."""
    table = Table(title="agents: measured per step execution (95% CI below each rate)")
    table.add_column("agent", no_wrap=True)
    table.add_column("attempts", justify="right")
    table.add_column("first try", justify="right")
    table.add_column("after retries", justify="right")
    table.add_column("failures by boundary")
    table.add_column("by error")
    table.add_column("incidents (all)")
    for agent in agents:
        attempts = str(agent.attempts)
        skipped = agent.cancelled + agent.incomplete
        if skipped:
            attempts += f"\n+{skipped} cut off"
        table.add_row(
            escape(agent.agent),
            attempts,
            _rate_with_ci(agent.first_try),
            _rate_with_ci(agent.success),
            escape(_counts(agent.failures_by_boundary)),
            escape(_counts(agent.failures_by_error)),
            escape(_counts(agent.incidents_by_boundary)),
        )
    return table


def steps_table(flow: FlowReliability) -> Table:
    """A flow's steps in order: how often each ran, and how often it succeeded."""
    table = Table(title=f"steps of {escape(flow.flow)} (the chain the prediction multiplies)")
    table.add_column("step")
    table.add_column("agent")
    table.add_column("reach", justify="right")
    table.add_column("first try", justify="right")
    table.add_column("after retries", justify="right")
    table.add_column("95% CI", justify="right")
    for step in flow.steps:
        table.add_row(
            escape(step.path),
            escape(step.agent),
            _pct(step.reach),
            _rate_cell(step.first_try),
            _rate_cell(step.success),
            _ci(step.success),
        )
    return table


def failed_runs_table(report: ReliabilityReport) -> Table | None:
    failed = [r for r in report.runs if r.status == "failed"]
    if not failed:
        return None
    table = Table(title="failed runs (newest last)")
    for column in ("run id", "flow", "boundary", "error", "step"):
        table.add_column(column, overflow="fold")
    hidden = max(0, len(failed) - RUN_LIMIT)
    for run in failed[-RUN_LIMIT:]:
        table.add_row(
            escape(run.run_id),
            escape(run.flow),
            run.boundary or "",
            escape(run.error_type or ""),
            escape(run.failed_step or ""),
        )
    if hidden:
        table.caption = f"and {hidden} earlier failed run(s)"
    return table


def reliability_tables(report: ReliabilityReport, target: float) -> list[Table]:
    """Every table ``typedmesh reliability`` prints, in order."""
    tables = [flows_table(report.flows, target), agents_table(report.agents)]
    tables += [steps_table(flow) for flow in report.flows if flow.steps]
    failed = failed_runs_table(report)
    if failed is not None:
        tables.append(failed)
    return tables


def _document(report: ReliabilityReport, target: float, picked: dict[str, Any]) -> dict[str, Any]:
    data = report.model_dump(mode="json")
    for flow, dumped in zip(report.flows, data["flows"], strict=True):
        dumped["needs_per_step"] = _needs(flow, target)
    return {"filters": picked, "target": target, **data}


def _print(console: Console, report: ReliabilityReport, target: float, where: str) -> None:
    flows = len(report.flows)
    console.rule(
        f"[bold]reliability[/] of {len(report.runs)} run(s) of {flows} flow(s) in {escape(where)}"
    )
    for table in reliability_tables(report, target):
        console.print(table)
    console.print(f"[bold]end to end (all runs read):[/] {report.end_to_end}")
    console.print(
        "[dim]predicted = the chain of each step's measured success rate, weighted by how "
        "often the step ran; a gap to measured means failures outside the steps, or steps "
        "whose failures are not independent. 95% CI: Wilson score interval.[/]"
    )


def reliability_command(
    run_ids: Annotated[
        list[str] | None,
        typer.Argument(help="the runs to measure (default: every run in the journal)"),
    ] = None,
    flow: Annotated[
        str | None, typer.Option("--flow", help="only the runs of this flow (its name)")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="only runs started since an ISO time (2026-01-31T12:00) or a duration ago "
            "(30m, 2h, 7d)",
        ),
    ] = None,
    target: Annotated[
        float,
        typer.Option("--target", help="the end-to-end rate each flow's steps are sized for"),
    ] = 0.95,
    journal: Annotated[
        str,
        typer.Option(
            "--journal", help="the journal: a SQLite file, or postgresql://USER@HOST:PORT/DB"
        ),
    ] = DEFAULT_JOURNAL,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON document")] = False,
) -> None:
    """Reliability predicted from each step's measured rate, beside the measured end to end.

    Per agent (name@version): attempts, first-try success, success after retries,
    failures by boundary and error type, each rate with a Wilson 95% interval.
    """
    from .cli import CommandLineError, _fail, _journal, _user_errors, console, resolve_run_id

    with _user_errors(as_json):
        try:
            after = parse_since(since) if since is not None else None
        except ConfigurationError:
            raise CommandLineError(
                f"--since {since!r} is neither an ISO time (2026-01-31T12:00) nor a duration "
                "(90s, 30m, 2h, 7d, 1w)"
            ) from None
        if not 0.0 < target < 1.0:
            raise CommandLineError(f"--target must be a rate between 0 and 1, got {target}")
    where = describe_journal(journal)
    with _journal(journal, as_json, readonly=True) as store:
        run_ids = [resolve_run_id(store, r) for r in run_ids] if run_ids else run_ids
        if not run_ids and not store.runs():
            raise CommandLineError(f"no runs in {where}: nothing to measure")
        report = measure(store, run_ids, flow=flow, since=after)
    if not report.runs:
        picked = [f"of flow {flow!r}" if flow else "", f"since {since}" if since else ""]
        detail = " ".join(p for p in picked if p)
        _fail(CommandLineError(f"no runs {detail} in {where}".replace("  ", " ")), as_json, code=2)
    if as_json:
        picked_json = {"run_ids": run_ids or None, "flow": flow, "since": since}
        print(json.dumps(_document(report, target, picked_json)))
        return
    _print(console, report, target, where)
