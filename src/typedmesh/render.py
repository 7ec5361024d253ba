"""Drawing runs for people: a rich trace tree and usage tables.

Imported by the CLI only, so ``import typedmesh`` never loads rich.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from rich import box
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from .journal.base import RunInfo
from .models.base import Usage
from .runtime.cost import (
    CascadeCost,
    CostReport,
    NodeCost,
    PlanAndExecute,
    Spend,
    format_usd,
    places_of,
)
from .runtime.replay import FieldChange
from .runtime.trace import TraceNode

__all__ = [
    "COST_VIEWS",
    "cascade_table",
    "changes_table",
    "cost_agent_table",
    "cost_footer",
    "cost_line",
    "cost_model_table",
    "cost_node_table",
    "cost_views",
    "model_notes",
    "model_usage_table",
    "plan_and_execute_line",
    "plan_and_execute_table",
    "runs_table",
    "tokens_text",
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


def model_notes(report: CostReport) -> dict[str, str]:
    """How each model that is not simply billed at its list price was priced:
    ``offline, priced as gpt-4o`` (an offline double), ``unpriced`` (no known price)."""
    return {
        name: model.pricing
        for name, model in report.by_model.items()
        if model.offline or model.priced_as is None
    }


def _model_names(models: Iterable[str], notes: Mapping[str, str]) -> str:
    return ", ".join(f"{m} ({notes[m]})" if m in notes else m for m in models)


def _unpriced(node: TraceNode, notes: Mapping[str, str]) -> bool:
    """Whether every model the node (and its children) called has no price."""
    models = {m for n in node.walk() for m in n.models}
    return bool(models) and all(notes.get(m, "").endswith("unpriced") for m in models)


def _label(node: TraceNode, notes: Mapping[str, str] | None = None) -> Text:
    notes = notes or {}
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
        about = "~" if usage.estimated_calls else ""  # a provider reported no usage
        text.append(f"  {about}{usage.input_tokens}+{usage.output_tokens} tok", style="dim")
        if usage.cost_usd == 0 and _unpriced(node, notes):
            text.append("  unpriced", style="yellow")
        else:
            text.append(f"  ${usage.cost_usd:.6f}", style="dim")
    if node.models:
        text.append(f"  [{_model_names(node.models, notes)}]", style="blue")
    return text


def _add(tree: Tree, node: TraceNode, notes: Mapping[str, str] | None = None) -> None:
    branch = tree.add(_label(node, notes))
    _decorate(branch, node)
    for child in node.children:
        _add(branch, child, notes)


def _decorate(branch: Tree, node: TraceNode) -> None:
    for event in node.events:
        kind = event["event"]
        if kind in {"output.invalid", "output.gate_failed"}:
            problems = event.get("errors") or event.get("problems") or []
            branch.add(Text(f"{kind} #{event['attempt']}: " + "; ".join(problems), style="yellow"))
        elif kind in {"tool.result", "tool.error"} and "key" in event:
            branch.add(_tool_call(event))
        elif kind == "model.retry":
            branch.add(Text(_retry_line(event), style="yellow"))
        elif kind == "model.escalated":
            to = f"{event.get('from_model')} -> {event.get('to_model')}"
            branch.add(Text(f"escalated {to} after a {event.get('reason')} failure", style="cyan"))
        elif kind in {
            "tool.denied",
            "tool.error",
            "tool.unknown",
            "tool.invalid_arguments",
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
        elif kind.startswith("approval."):
            branch.add(_approval(event))
    outcome = _loop_outcome(node)
    if outcome is not None:
        branch.add(outcome)
    if node.error:
        branch.add(Text(f"error: {node.error}", style="red"))


def _retry_line(event: Mapping[str, Any]) -> str:
    """``retry 1 of model#0 after a timeout: ...; again in 0.5 s``."""
    what = event.get("error_type") or "error"
    status = f" (HTTP {event['status']})" if event.get("status") else ""
    after = f"; again in {event['delay_s']:g} s" if event.get("delay_s") is not None else ""
    key = str(event.get("key", "")).rpartition("/")[2]
    attempt = event.get("attempt", "?")
    return f"retry {attempt} of {key} after {what}{status}: {event.get('error', '')}{after}"


def _short(value: Any, width: int = 24) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def _tool_call(event: Mapping[str, Any]) -> Text:
    """``tool lookup_order(order_id="A1") ok``, or ``... error: why``."""
    arguments = event.get("arguments")
    shown = ""
    if isinstance(arguments, dict):
        shown = ", ".join(f"{k}={_short(v)}" for k, v in arguments.items())
        if len(shown) > 72:
            shown = shown[:71] + "…"
    call = f"tool {event.get('tool') or '?'}({shown})"
    if event["event"] == "tool.error":
        return Text(f"{call} error: {event.get('error', '')}", style="yellow")
    return Text(f"{call} ok", style="green")


def _loop_outcome(node: TraceNode) -> Text | None:
    """A loop's outcome: passed after N rounds, or capped at its maximum without passing."""
    if node.kind != "loop":
        return None
    output: Any = node.output
    data = output.model_dump() if hasattr(output, "model_dump") else output
    capped = next((e for e in node.events if e["event"] == "loop.capped"), None)
    if isinstance(data, dict) and isinstance(data.get("rounds"), int):
        rounds = data["rounds"]
        plural = "round" if rounds == 1 else "rounds"
        if data.get("passed"):
            return Text(f"loop passed after {rounds} {plural}", style="green")
        return Text(f"loop capped after {rounds} {plural}: not passed", style="yellow")
    if capped is not None:
        return Text(
            f"loop capped after {capped.get('max_rounds')} rounds: not passed", style="yellow"
        )
    return None


def _approval(event: Mapping[str, Any]) -> Text:
    """A tool call's approval: who approved or denied it (and why), or that it waits."""
    call = f"{event.get('tool') or 'tool'} ({event.get('call')})"
    if event["event"] == "approval.waiting":
        return Text(f"waiting for approval: {call}", style="yellow")
    verb = "approved" if event["event"] == "approval.approved" else "denied"
    reason = f": {event['reason']}" if event.get("reason") else ""
    at = str(event.get("at") or "")[:19].replace("T", " ")  # UTC, to the second
    text = f"{call} {verb} by {event.get('by')} at {at} UTC{reason}"
    return Text(text, style="green" if verb == "approved" else "red")


def trace_tree(root: TraceNode, notes: Mapping[str, str] | None = None) -> Tree:
    """The whole run as a tree: step, kind, identity, status, time, tokens, cost.

    ``notes`` (``model_notes``) labels offline and unpriced models."""
    tree = Tree(_label(root, notes))
    _decorate(tree, root)
    for child in root.children:
        _add(tree, child, notes)
    return tree


def usage_by_agent(root: TraceNode) -> dict[str, Usage]:
    """Usage summed per agent identity (name@version)."""
    totals: dict[str, Usage] = {}
    for node in root.walk():
        if node.usage.model_calls or node.usage.tool_calls:
            key = f"{node.identity.name}@{node.identity.version}" if node.identity else node.name
            totals[key] = totals.get(key, Usage()) + node.usage
    return totals


def usage_table(root: TraceNode, total: Usage, report: CostReport | None = None) -> Group:
    """Per-agent usage with a total row.

    With the run's cost ``report``, offline and unpriced models are labelled and a
    cost with no price reads ``unpriced``, not ``0.000000``."""
    notes = model_notes(report) if report is not None else {}
    spends = report.by_agent if report is not None else {}
    table = Table(title="usage and cost", show_footer=False)
    for column in ("agent", "models", "calls", "input tok", "output tok", "tools", "cost USD"):
        if column in {"agent", "models"}:  # names wrap (never cut with an ellipsis)
            table.add_column(column, overflow="fold", min_width=8)
        else:
            table.add_column(column, justify="right", no_wrap=True)
    models: dict[str, set[str]] = {}
    for node in root.walk():
        if node.identity is not None:
            key = f"{node.identity.name}@{node.identity.version}"
            models.setdefault(key, set()).update(node.models)
    for agent, usage in usage_by_agent(root).items():
        table.add_row(
            agent,
            _model_names(sorted(models.get(agent, ())), notes),
            str(usage.model_calls),
            str(usage.input_tokens),
            str(usage.output_tokens),
            str(usage.tool_calls),
            _money(spends[agent], 6) if agent in spends else f"{usage.cost_usd:.6f}",
        )
    table.add_row(
        Text("total", style="bold"),
        "",
        str(total.model_calls),
        str(total.input_tokens),
        str(total.output_tokens),
        str(total.tool_calls),
        Text(
            _money(report.total, 6) if report is not None else f"{total.cost_usd:.6f}",
            style="bold",
        ),
    )
    return Group(table)


def tokens_text(usage: Usage) -> str:
    """``1234``, or ``~1234 (2 calls estimated: no usage reported)`` when a provider
    left usage out and the framework counted the text instead."""
    if not usage.estimated_calls:
        return str(usage.total_tokens)
    calls = "call" if usage.estimated_calls == 1 else "calls"
    return (
        f"~{usage.total_tokens} ({usage.estimated_calls} {calls} estimated: "
        "the provider reported no usage)"
    )


def cost_line(total: Usage, report: CostReport | None = None) -> str:
    """``$0.000450``, ``unpriced``, ``$0.000450 (offline, priced as gpt-4o: gpt-4o)``."""
    if report is None:
        return f"${total.cost_usd:.6f}"
    spend = report.total
    text = "$0.000000" if not spend.model_calls else _money(spend, 6)
    offline = [m for m in report.by_model.values() if m.offline]
    if offline:
        text += " (" + "; ".join(f"{m.model}: {m.pricing}" for m in offline) + ")"
    return text


def model_usage_table(by_model: Mapping[str, Usage]) -> Table:
    """Usage and cost per model name."""
    table = Table(title="by model")
    for column in ("model", "calls", "input tok", "output tok", "cost USD"):
        if column == "model":
            table.add_column(column, overflow="fold", min_width=8)
        else:
            table.add_column(column, justify="right", no_wrap=True)
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


# -- cost views (typedmesh cost) -------------------------------------------------------
# Every amount of one report is printed with the same decimals (report.places()): the
# columns line up and each amount is exact, so the rows visibly add up to the totals.


def _cost_table(title: str, *columns: str, text: int = 1) -> Table:
    """A compact table: the first ``text`` columns hold text, the others numbers."""
    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        title_justify="left",
        collapse_padding=True,
        pad_edge=False,
    )
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index < text else "right")
    return table


def _keep_numbers(table: Table) -> Table:
    """Numbers never wrap nor shrink (each column is as wide as its widest cell), nor do
    names up to 24 characters in the first column: the other text columns wrap instead."""
    for index, column in enumerate(table.columns):
        cells = [c.plain if isinstance(c, Text) else str(c) for c in column.cells]
        widest = max((len(c) for c in cells), default=0)
        if column.justify == "right":
            column.min_width = widest
            column.no_wrap = True
        else:
            column.overflow = "fold"
            column.no_wrap = index == 0 and widest <= 24
    return table


def _money(spend: Spend, places: int) -> str:
    """A spend's cost: ``-`` for no model call, ``unpriced`` when no call had a price."""
    if not spend.model_calls:
        return "-"
    if spend.unpriced_calls == spend.model_calls:
        return "unpriced"
    text = format_usd(spend.cost_pusd, places)
    return f"{text} + unpriced" if spend.unpriced_calls else text


def _sum_spend(spends: Iterable[Spend]) -> Spend:
    total = Spend()
    for spend in spends:
        total = total + spend
    return total


def _amount(pusd: int | None, places: int) -> str:
    return "unpriced" if pusd is None else format_usd(pusd, places)


def _tokens(spend: Spend) -> str:
    return str(spend.total_tokens) if spend.model_calls else "-"


def _percent(value: Any) -> str:
    return "unpriced" if value is None else f"{value:.1f}%"


def cost_node_table(report: CostReport, places: int | None = None) -> Table:
    """The pattern tree: tokens and cost of each node itself (own) and with its children."""
    places = report.places() if places is None else places
    table = _cost_table(
        "by node (own: the node itself; total: with every node under it)",
        "node",
        "calls",
        "own tok",
        "own USD",
        "total tok",
        "total USD",
    )

    def add(node: NodeCost, prefix: str, last: bool, top: bool) -> None:
        guide = "" if top else prefix + ("└─ " if last else "├─ ")
        name = Text(guide, style="dim")
        name.append(node.name, style="bold" if node.total.spent else "")
        if node.kind not in {"agent", node.name}:  # the pattern (or function) it is
            name.append(f"  {node.kind}", style="cyan")
        own, total = node.own, node.total
        table.add_row(
            name,
            str(own.model_calls) if own.model_calls else "",
            _tokens(own),
            _money(own, places),
            _tokens(total),
            Text(_money(total, places), style="bold" if top else ""),
        )
        below = "" if top else prefix + ("   " if last else "│  ")
        for index, child in enumerate(node.children):
            add(child, below, index == len(node.children) - 1, False)

    add(report.root, "", True, True)
    return _keep_numbers(table)


def cost_agent_table(report: CostReport, places: int | None = None) -> Table:
    """Each agent identity that spent anything, with a total row."""
    places = report.places() if places is None else places
    table = _cost_table(
        "by agent", "agent", "models", "calls", "in tok", "out tok", "tools", "USD", text=2
    )
    for agent, spend in report.by_agent.items():
        table.add_row(
            escape(agent),
            escape(", ".join(report.agent_models.get(agent, []))),
            str(spend.model_calls),
            str(spend.input_tokens),
            str(spend.output_tokens),
            str(spend.tool_calls),
            _money(spend, places),
        )
    total = report.total
    table.add_row(
        Text("total", style="bold"),
        "",
        str(total.model_calls),
        str(total.input_tokens),
        str(total.output_tokens),
        str(total.tool_calls),
        Text(_money(total, places), style="bold"),
    )
    return _keep_numbers(table)


def cost_model_table(report: CostReport, places: int | None = None) -> Table:
    """Each model name: how it was priced, its calls, tokens and cost."""
    places = report.places() if places is None else places
    table = _cost_table("by model", "model", "pricing", "calls", "in tok", "out tok", "USD", text=2)
    for name, model in report.by_model.items():
        spend = model.spend
        table.add_row(
            escape(name),
            Text(model.pricing, style="yellow" if model.priced_as is None else "dim"),
            str(spend.model_calls),
            str(spend.input_tokens),
            str(spend.output_tokens),
            _money(spend, places),
        )
    total = report.total
    table.add_row(
        Text("total", style="bold"),
        "",
        str(total.model_calls),
        str(total.input_tokens),
        str(total.output_tokens),
        Text(_money(total, places), style="bold"),
    )
    return _keep_numbers(table)


def plan_and_execute_line(plan: PlanAndExecute, places: int | None = None) -> Text:
    """One line: what the orchestrate run cost, on the planner's model, and the saving."""
    hypothetical = plan.all_on_planner_pusd
    if places is None:
        places = places_of(plan.actual_pusd, hypothetical or 0, plan.saved_pusd or 0)
    actual = format_usd(plan.actual_pusd, places)
    if hypothetical is None:
        return Text(
            f"plan-and-execute: {actual}; {plan.planner_model} has no price, so the saving "
            "is unknown",
            style="yellow",
        )
    saved = plan.saved_pusd or 0
    return Text.assemble(
        ("plan-and-execute: ", "bold"),
        f"{actual}; all on {plan.planner_model}: {format_usd(hypothetical, places)}; ",
        (f"saved {_percent(plan.saving_pct)}", "bold green" if saved >= 0 else "bold red"),
    )


def plan_and_execute_table(plan: PlanAndExecute, places: int | None = None) -> Group:
    """An orchestrate run as run, against every call on the planner's model; the saving."""
    if places is None:
        places = places_of(
            plan.actual_pusd,
            plan.all_on_planner_pusd or 0,
            plan.saved_pusd or 0,
            *(r.spend.cost_pusd for r in plan.roles),
            *(r.on_planner_pusd or 0 for r in plan.roles),
        )
    model = escape(plan.planner_model)
    table = _cost_table(
        f"plan-and-execute at {escape(plan.path)}: as run, and on the planner's model",
        "node",
        "role",
        "models",
        "tokens",
        "USD",
        f"on {model}",
        text=3,
    )
    for role in plan.roles:
        table.add_row(
            escape(role.node),
            Text(role.role, style="cyan"),
            escape(", ".join(role.models)),
            _tokens(role.spend),
            _money(role.spend, places),
            _amount(role.on_planner_pusd, places),
        )
    total = _sum_spend(r.spend for r in plan.roles)
    table.add_row(
        Text("total", style="bold"),
        "",
        "",
        _tokens(total),
        Text(format_usd(plan.actual_pusd, places), style="bold"),
        Text(_amount(plan.all_on_planner_pusd, places), style="bold"),
    )
    return Group(_keep_numbers(table), plan_and_execute_line(plan, places))


def cascade_table(cascades: Iterable[CascadeCost], places: int | None = None) -> Table:
    """Each cascade: its escalation rate, cost, and saving against its top model."""
    cascades = list(cascades)
    if places is None:
        places = places_of(
            *(c.spend.cost_pusd for c in cascades),
            *(c.all_on_top_pusd or 0 for c in cascades),
        )
    table = _cost_table(
        "cascades (cheap first; escalated after a rejected answer)",
        "agent",
        "models",
        "escalated",
        "USD",
        "all on top",
        "saved",
        text=2,
    )
    for cascade in cascades:
        table.add_row(
            escape(cascade.agent),
            escape(" -> ".join(cascade.models)),
            f"{cascade.escalated_answers}/{cascade.answers} ({cascade.escalation_rate:.0%})",
            _money(cascade.spend, places),
            _amount(cascade.all_on_top_pusd, places),
            _percent(cascade.saving_pct),
        )
    return _keep_numbers(table)


def cost_footer(report: CostReport, places: int | None = None) -> Text:
    """The run's totals, and the total as each view adds it up: exact, or how they differ."""
    places = report.places() if places is None else places
    sums = report.sums()
    total = report.total
    text = Text()
    for label, value in (
        ("cost", _money(total, places)),
        ("tokens", str(total.total_tokens)),
        ("model calls", str(total.model_calls)),
        ("tool calls", str(total.tool_calls)),
    ):
        text.append(f"{label}: ", style="bold")
        text.append(f"{value}   ")
    text.rstrip()
    text.append("\nsums: ", style="bold")
    views = ("nodes", "agents", "models", "calls")
    if report.exact:
        text.append(" = ".join(views) + f" = {_money(total, places)} = run total")
        text.append(" (exact)", style="green")
    else:
        text.append("  ".join(f"{view} {format_usd(sums[view], places)}" for view in views))
        text.append(f"  run total {format_usd(sums['total'], places)}: they differ", style="red")
    if total.unpriced_calls:
        text.append(
            f"\n{total.unpriced_calls} model call(s) on a model with no price: their tokens "
            "are counted, their cost is not (typedmesh.models.pricing.register_price)",
            style="yellow",
        )
    return text


COST_VIEWS = ("node", "agent", "model")
"""The views of ``typedmesh cost``, in the order it prints them."""


def cost_views(report: CostReport, views: Iterable[str] = COST_VIEWS) -> Group:
    """``typedmesh cost``: the chosen views, the comparisons that apply, the footer."""
    wanted = set(views)
    places = report.places()
    parts: list[Any] = []
    if "node" in wanted:
        parts.append(cost_node_table(report, places))
    if "agent" in wanted:
        parts.append(cost_agent_table(report, places))
    if "model" in wanted:
        parts.append(cost_model_table(report, places))
    parts.extend(plan_and_execute_table(plan, places) for plan in report.plans)
    if report.cascades:
        parts.append(cascade_table(report.cascades, places))
    parts.append(cost_footer(report, places))
    return Group(*parts)
