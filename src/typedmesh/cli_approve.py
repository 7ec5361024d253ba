"""``typedmesh approve`` and ``typedmesh approvals``: decide the tool calls a run waits on.

A tool declared ``requires_approval`` suspends its run (``typedmesh run``
exits 4); ``approvals`` lists what waits (the tool and its arguments),
``approve RUN CALL_ID`` (or ``--deny``) records the decision in the run's
journal with who decided, and ``typedmesh resume RUN`` continues. A decision
that cannot be made (the run waits for no approval, an unknown call id, a
call decided already) is one line and exit 2; nothing is recorded. This module
imports the CLI's helpers when a command runs, so ``cli.py`` registers it with
a few lines.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .journal import DEFAULT_JOURNAL, describe_journal
from .runtime.approval import PendingApproval, approve, pending_approvals

__all__ = ["approvals_command", "approvals_table", "approve_command"]

JournalOpt = Annotated[
    str,
    typer.Option("--journal", help="the journal: a SQLite file, or postgresql://USER@HOST:PORT/DB"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document")]
ARGUMENTS_SHOWN = 120
"""Characters of a call's arguments shown in the table (``--json`` has them all)."""


def _arguments(pending: PendingApproval, limit: int | None = None) -> str:
    text = json.dumps(pending.arguments, ensure_ascii=False, separators=(", ", ": "))
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def approvals_table(pending: list[PendingApproval], *, title: str, with_run: bool) -> Table:
    """One row per tool call waiting for a decision: what it would do, and who asks."""
    table = Table(title=title, title_justify="left")
    if with_run:
        table.add_column("run", overflow="fold")
    table.add_column("call id", overflow="fold")
    table.add_column("tool", style="bold")
    table.add_column("arguments", overflow="fold")
    table.add_column("agent")
    table.add_column("requested (UTC)")
    for item in pending:
        row = [
            Text(item.call_id),
            Text(item.tool),
            Text(_arguments(item, ARGUMENTS_SHOWN)),
            Text(item.agent or item.step),
            Text(item.requested_at[:19].replace("T", " ")),
        ]
        table.add_row(*([Text(item.run_id)] if with_run else []), *row)
    return table


def approvals_command(
    run_id: Annotated[
        str | None,
        typer.Argument(help="the run (default: every waiting run in the journal)"),
    ] = None,
    journal: JournalOpt = DEFAULT_JOURNAL,
    as_json: JsonOpt = False,
) -> None:
    """List the tool calls waiting for approval: the tool, its arguments, the agent asking."""
    from .cli import _journal, console

    with _journal(journal, as_json, readonly=True) as store:
        pending = pending_approvals(run_id, journal=store)
    if as_json:
        print(json.dumps({"run_id": run_id, "pending": [p.to_dict() for p in pending]}))
        return
    where = describe_journal(journal)
    if not pending:
        if run_id is not None:
            console.print(escape(f"run {run_id} waits for no approval"))
        else:
            console.print(escape(f"no run in {where} waits for an approval"))
        return
    title = f"waiting for approval: run {run_id}" if run_id else f"waiting for approval in {where}"
    console.print(approvals_table(pending, title=escape(title), with_run=run_id is None))
    first = pending[0]
    console.print(
        escape(
            f"decide with `typedmesh approve {first.run_id} {first.call_id}` "
            "(or --deny --reason TEXT), then `typedmesh resume RUN`"
        ),
        soft_wrap=True,
    )


def approve_command(
    run_id: Annotated[str, typer.Argument(help="the waiting run (see `typedmesh approvals`)")],
    call_id: Annotated[
        str, typer.Argument(help="the tool call's id, e.g. flow/agent/tool#0 (see `approvals`)")
    ],
    deny: Annotated[
        bool, typer.Option("--deny", help="deny the call: the tool never runs")
    ] = False,
    reason: Annotated[
        str | None,
        typer.Option("--reason", help="why (journaled; a denial's reason is told to the model)"),
    ] = None,
    by: Annotated[
        str | None,
        typer.Option("--by", help="who decides (journaled; default: the OS user)"),
    ] = None,
    journal: JournalOpt = DEFAULT_JOURNAL,
    as_json: JsonOpt = False,
) -> None:
    """Approve (or --deny) a tool call a run waits on; then `typedmesh resume` continues it.

    The decision is appended to the run's journal with who decided, when, the
    reason and the digest of the call it decides.
    """
    from .cli import _journal, console

    with _journal(journal, as_json) as store:
        asked = {p.call_id: p for p in pending_approvals(run_id, journal=store)}
        decision = approve(run_id, call_id, approved=not deny, by=by, reason=reason, journal=store)
    pending = asked.get(decision.call_id)
    if as_json:
        document = {"run_id": run_id, **decision.to_dict()}
        if pending is not None:
            document.update(tool=pending.tool, arguments=pending.arguments)
        print(json.dumps(document))
        return
    verb = "approved" if decision.approved else "denied"
    what = f"{pending.tool} {_arguments(pending)}" if pending is not None else decision.call_id
    because = f" ({decision.reason})" if decision.reason else ""
    console.print(
        escape(
            f"{verb} {decision.call_id} of run {run_id}: {what}, by {decision.by}{because}; "
            f"resume with `typedmesh resume {run_id}`"
        ),
        soft_wrap=True,
    )
