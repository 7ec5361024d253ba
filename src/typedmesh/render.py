"""Drawing runs for people: a rich trace tree and usage tables.

Imported by the CLI only, so ``import typedmesh`` never loads rich.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from .journal.base import RunInfo
from .models.base import Usage
from .runtime.replay import FieldChange
from .runtime.trace import TraceNode

__all__ = [
    "changes_table",
    "model_usage_table",
    "runs_table",
    "trace_tree",
    "usage_by_agent",
    "usage_table",
]

_STATUS = {
    "ok": "green",
    "finished": "green",
    "failed": "red",
    "running": "yellow",
    "cancelled": "yellow",
    "incomplete": "magenta",
}


def _label(node: TraceNode) -> Text:
    text = Text()
    text.append(node.name, style="bold")
    text.append(f"  {node.kind}", style="cyan")
    if node.identity is not None and node.kind in {"agent", "function"}:
        text.append(f"  {node.identity.name}@{node.identity.version}", style="magenta")
    text.append(f"  {node.status}", style=_STATUS.get(node.status, "white"))
    if node.duration_ms is not None:
        text.append(f"  {node.duration_ms:.1f} ms", style="dim")
    usage = node.total_usage()
    if usage.model_calls:
        text.append(f"  {usage.input_tokens}+{usage.output_tokens} tok", style="dim")
        text.append(f"  ${usage.cost_usd:.6f}", style="dim")
    if node.models:
        text.append(f"  [{', '.join(node.models)}]", style="blue")
    return text


def _add(tree: Tree, node: TraceNode) -> None:
    branch = tree.add(_label(node))
    _decorate(branch, node)
    for child in node.children:
        _add(branch, child)


def _decorate(branch: Tree, node: TraceNode) -> None:
    for event in node.events:
        kind = event["event"]
        if kind in {"output.invalid", "output.gate_failed"}:
            problems = event.get("errors") or event.get("problems") or []
            branch.add(Text(f"{kind} #{event['attempt']}: " + "; ".join(problems), style="yellow"))
        elif kind in {
            "tool.denied",
            "tool.error",
            "tool.unknown",
            "tool.invalid_arguments",
            "model.retry",
            "loop.capped",
            "tool.in_doubt",
        }:
            detail = {k: v for k, v in event.items() if k != "event"}
            branch.add(Text(f"{kind} {detail}", style="yellow"))
        elif kind == "state.written":
            version = f" -> v{event['version']}" if "version" in event else ""
            branch.add(Text(f"state {event['op']} {event['key']}{version}", style="green"))
        elif kind in {"state.conflict", "state.in_doubt", "reconcile.conflict"}:
            detail = {k: v for k, v in event.items() if k != "event"}
            branch.add(Text(f"{kind} {detail}", style="yellow"))
        elif kind == "conflicts.detected":
            fields = ", ".join(c["field"] for c in event["conflicts"])
            branch.add(Text(f"conflicts detected: {fields}", style="yellow"))
        elif kind == "plan":
            steps = ", ".join(
                f"{s['id']}:{s['worker']}"
                + (f"<-{'+'.join(s['depends_on'])}" if s["depends_on"] else "")
                for s in event["plan"]["steps"]
            )
            branch.add(Text(f"plan (attempt {event['attempts']}): {steps}", style="cyan"))
    if node.error:
        branch.add(Text(f"error: {node.error}", style="red"))


def trace_tree(root: TraceNode) -> Tree:
    """The whole run as a tree: step, kind, identity, status, time, tokens, cost."""
    tree = Tree(_label(root))
    _decorate(tree, root)
    for child in root.children:
        _add(tree, child)
    return tree


def usage_by_agent(root: TraceNode) -> dict[str, Usage]:
    """Usage summed per agent identity (name@version)."""
    totals: dict[str, Usage] = {}
    for node in root.walk():
        if node.usage.model_calls or node.usage.tool_calls:
            key = f"{node.identity.name}@{node.identity.version}" if node.identity else node.name
            totals[key] = totals.get(key, Usage()) + node.usage
    return totals


def usage_table(root: TraceNode, total: Usage) -> Group:
    """Per-agent usage with a total row."""
    table = Table(title="usage and cost", show_footer=False)
    for column in ("agent", "models", "calls", "input tok", "output tok", "tools", "cost USD"):
        table.add_column(column, justify="left" if column in {"agent", "models"} else "right")
    models: dict[str, set[str]] = {}
    for node in root.walk():
        if node.identity is not None:
            key = f"{node.identity.name}@{node.identity.version}"
            models.setdefault(key, set()).update(node.models)
    for agent, usage in usage_by_agent(root).items():
        table.add_row(
            agent,
            ", ".join(sorted(models.get(agent, ()))),
            str(usage.model_calls),
            str(usage.input_tokens),
            str(usage.output_tokens),
            str(usage.tool_calls),
            f"{usage.cost_usd:.6f}",
        )
    table.add_row(
        Text("total", style="bold"),
        "",
        str(total.model_calls),
        str(total.input_tokens),
        str(total.output_tokens),
        str(total.tool_calls),
        Text(f"{total.cost_usd:.6f}", style="bold"),
    )
    return Group(table)


def model_usage_table(by_model: Mapping[str, Usage]) -> Table:
    """Usage and cost per model name."""
    table = Table(title="by model")
    for column in ("model", "calls", "input tok", "output tok", "cost USD"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for model, usage in sorted(by_model.items()):
        table.add_row(
            model,
            str(usage.model_calls),
            str(usage.input_tokens),
            str(usage.output_tokens),
            f"{usage.cost_usd:.6f}",
        )
    return table


def runs_table(runs: Iterable[RunInfo], title: str = "runs") -> Table:
    """One row per journaled run, newest first."""
    table = Table(title=title)
    table.add_column("run id", overflow="fold")
    for column in ("flow", "status", "started", "ended"):
        table.add_column(column)
    table.add_column("events", justify="right")
    for info in runs:
        table.add_row(
            escape(info.run_id),
            escape(info.flow),
            Text(info.status, style=_STATUS.get(info.status, "white")),
            info.started_at,
            info.ended_at or "",
            str(info.events),
        )
    return table


def _cell(value: Any) -> Text:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return Text(text if len(text) <= 200 else text[:197] + "...")


def changes_table(changes: Iterable[FieldChange]) -> Table:
    """The output fields a what-if replay changed: path, before, after."""
    table = Table(title="changed output fields")
    for column in ("field", "before", "after"):
        table.add_column(column, overflow="fold")
    for change in changes:
        table.add_row(Text(change.path), _cell(change.before), _cell(change.after))
    return table
