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

from .contracts import Text as PlainText
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
    run: Annotated[
        str | None,
        typer.Option(
            "--run",
            metavar="MODULE:ATTR",
            help="run the session's next turn with this flow (then give --input)",
        ),
    ] = None,
    input: Annotated[
        str | None,
        typer.Option("--input", "-i", help="the turn's input: JSON, or a plain-text flow's text"),
    ] = None,
    window: Annotated[
        int, typer.Option(help="how many earlier turns the new turn is shown", min=0)
    ] = 10,
    summary: Annotated[
        str | None,
        typer.Option(
            metavar="MODULE:ATTR", help="a step that folds older turns into a running summary"
        ),
    ] = None,
    deps: Annotated[
        str | None,
        typer.Option(metavar="MODULE:ATTR", help="the turn's deps (an object or a factory)"),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="show the turn's events and the model's text on stderr as it comes",
        ),
    ] = False,
) -> None:
    """List a session's turns: status, run id, input and output, the history each was shown.

    With ``--run FLOW --input ...``, run the session's next turn first: FLOW
    on the input, shown the earlier turns (``--window``, ``--summary``), and
    print its output. Each turn is an ordinary journaled run, so a chat from
    the shell can be traced, resumed and replayed like any run."""
    from .cli import CommandLineError, _journal, console

    if run is not None or input is not None:
        _run_turn(session_id, journal, as_json, run, input, window, summary, deps, follow)
        return
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


def _run_turn(
    session_id: str,
    journal: str,
    as_json: bool,
    target: str | None,
    text: str | None,
    window: int,
    summary_target: str | None,
    deps_target: str | None,
    follow: bool = False,
) -> None:
    """``typedmesh session ID --run FLOW --input ...``: one turn, its output and a footer."""
    import asyncio
    import sys

    from . import cli
    from . import cli_journal as cj
    from .cli_follow import Follower
    from .errors import InputValidationError, JournalError, RunError, RunWaiting, UserError
    from .runtime.stream import StreamSink

    with cli._user_errors(as_json):
        if target is None or text is None:
            raise cli.CommandLineError("run a turn with both --run MODULE:ATTR and --input")
        flow = cli.load_step(target)
        data = cli._input_arg(text, flow)
        summary = cli.load_step(summary_target) if summary_target is not None else None
        turn_deps = cli._deps_arg(deps_target)
    follower = Follower(sys.stderr, json_lines=as_json) if follow else None
    watching = [] if follower is None else [StreamSink(follower.write, follower.write)]
    with cli._journal(journal, as_json, must_exist=False) as store:  # a first turn makes it
        session = Session(session_id, journal=store, window=window, summary=summary)
        try:
            result = asyncio.run(  # the flow's target is journaled: `resume` finds it
                session.arun(
                    flow,
                    data,
                    deps=turn_deps,
                    target=cj.resolved_target(target),
                    subscribers=watching,
                )
            )
        except InputValidationError as exc:
            cli._fail(exc, as_json, code=2)
        except RunWaiting as exc:
            cli._fail(exc, as_json, code=4, footer=_resume_hint(exc, journal))
        except RunError as exc:
            cli._fail(exc, as_json, code=1)
        except (UserError, JournalError):
            raise  # exit 2, in _journal
        finally:
            if follower is not None:
                follower.end()
        report = None if as_json else cli._run_cost(store, result.run_id)
    turn = int(result.run_id.rpartition(".turn-")[2])
    if as_json:
        print(json.dumps({"session": session_id, "turn": turn, **result.to_dict()}, default=str))
        return
    if isinstance(result.output, PlainText):
        cli.console.print(result.output.text, markup=False, highlight=False)
    else:
        cli.console.print_json(result.output.model_dump_json())
    from .render import cost_line, tokens_text

    cli.console.print(
        f"[dim]turn {turn} of session {escape(session_id)}: run {escape(result.run_id)}   "
        f"tokens: {escape(tokens_text(result.usage))}   "
        f"cost: {escape(cost_line(result.usage, report))}[/]",
        soft_wrap=True,
    )


def _resume_hint(exc: BaseException, journal: str) -> str:
    run_id = getattr(exc, "run_id", None) or "RUN"
    flag = "" if journal == DEFAULT_JOURNAL else f" --journal {journal}"
    return f"the turn waits: decide, then `typedmesh resume {run_id}{flag}`"
