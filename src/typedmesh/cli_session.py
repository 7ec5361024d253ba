"""``typedmesh session SESSION_ID``: the turns of a session, as its journal tells them.

Each turn is one line: its number, status, run id and flow, what the user
sent and what came back (shortened; ``--json`` has them in full), and which
earlier turns and summary it was shown. A session with no turn in the
journal is exit 2. This module imports the CLI's helpers when the command
runs, so ``cli.py`` registers it with two lines.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.text import Text

from .journal import DEFAULT_JOURNAL, describe_journal
from .session import Session, TurnInfo

__all__ = ["session_command", "turns_text"]

JournalOpt = Annotated[
    str,
    typer.Option("--journal", help="the journal: a SQLite file, or postgresql://USER@HOST:PORT/DB"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document")]

WIDTH = 72


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= WIDTH else text[: WIDTH - 3] + "..."


def turns_text(turns: list[TurnInfo]) -> Text:
    """Each turn: number, status, run id, flow; its input and output; what it was shown."""
    text = Text()
    style = {"finished": "green", "failed": "red", "waiting": "yellow"}
    for info in turns:
        text.append(f"turn {info.turn}  ", style="bold")
        text.append(info.status, style=style.get(info.status, "magenta"))
        text.append(f"  {info.run_id}", style="bold")
        text.append(f"  {info.flow}  {info.started_at[:19].replace('T', ' ')}\n", style="dim")
        text.append("  in:  ", style="dim").append(_short(info.input) + "\n")
        if info.output is not None:
            text.append("  out: ", style="dim").append(_short(info.output) + "\n")
        shown = [r.rsplit("-", 1)[-1] for r in info.history]
        seen = f"turns {', '.join(shown)}" if shown else "no earlier turn"
        if info.summary_run:
            seen += f" + summary {info.summary_run}"
        text.append(f"  saw: {seen}\n", style="dim")
    text.rstrip()
    return text


def session_command(
    session_id: Annotated[str, typer.Argument(help="the session id given to tm.Session")],
    journal: JournalOpt = DEFAULT_JOURNAL,
    as_json: JsonOpt = False,
) -> None:
    """List a session's turns: status, run id, input and output, the history each was shown."""
    from .cli import CommandLineError, _journal, console

    with _journal(journal, as_json, readonly=True) as store:
        session = Session(session_id, journal=store)
        turns = session.turns()
        if not turns:
            raise CommandLineError(
                f"no session {session_id!r} in {describe_journal(journal)} (no run "
                f"{session.run_id(1)!r})"
            )
    if as_json:
        print(
            json.dumps(
                {
                    "session": session_id,
                    "journal": describe_journal(journal),
                    "turns": [t.to_dict() for t in turns],
                },
                default=str,
            )
        )
        return
    count = f"{len(turns)} turn{'s' if len(turns) != 1 else ''}"
    console.print(escape(f"session {session_id} in {describe_journal(journal)}: {count}"))
    console.print(turns_text(turns), soft_wrap=True)
