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
from rich.text import Text

from .journal import DEFAULT_JOURNAL, describe_journal
from .runtime.approval import PendingApproval, approve, pending_approvals

__all__ = ["approvals_command", "approvals_text", "approve_command"]

JournalOpt = Annotated[
    str,
    typer.Option("--journal", help="the journal: a SQLite file, or postgresql://USER@HOST:PORT/DB"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document")]


def _arguments(pending: PendingApproval) -> str:
    return json.dumps(pending.arguments, ensure_ascii=False, separators=(", ", ": "))


def approvals_text(pending: list[PendingApproval]) -> Text:
    """Each call waiting for a decision: run and call id, the tool with all its arguments
    (what the approver approves), and which agent asked when. Readable at any width."""
    text = Text()
    for item in pending:
        text.append("run ", style="dim").append(item.run_id, style="bold")
        text.append("  call ", style="dim").append(item.call_id, style="bold")
        text.append("\n  ").append(item.tool, style="bold cyan")
        text.append(" " + _arguments(item))
        asked = item.requested_at[:19].replace("T", " ")
        text.append(f"\n  asked by {item.agent or item.step} at {asked} UTC\n", style="dim")
    text.rstrip()
    return text


def approvals_command(
    run_id: Annotated[
        str | None,
        typer.Argument(help="the run (default: every waiting run in the journal)"),
    ] = None,
    journal: JournalOpt = DEFAULT_JOURNAL,
    as_json: JsonOpt = False,
) -> None:
    """List the tool calls waiting for approval: the tool, its arguments, the agent asking."""
    from .cli import _journal, console, resolve_run_id

    with _journal(journal, as_json, readonly=True) as store:
        if run_id is not None:
            run_id = resolve_run_id(store, run_id)
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
    calls = f"{len(pending)} call{'s' if len(pending) > 1 else ''}"
    place = f"run {run_id}" if run_id else where
    console.print(escape(f"waiting for approval in {place}: {calls}"), style="bold")
    console.print(approvals_text(pending), soft_wrap=True)
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
    from .cli import _journal, console, resolve_run_id

    with _journal(journal, as_json) as store:
        run_id = resolve_run_id(store, run_id)
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
