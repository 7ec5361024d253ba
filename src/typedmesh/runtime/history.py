"""Session history: the earlier turns of a conversation, rebuilt from the journal.

A session (``tm.Session``) is a lineage of journaled runs, one per turn.
Each turn's ``run.started`` records ``session``: the session id, the turn's
number, the previous turn's run id, the run ids of the turns it was shown
(its window) and the run id of the summary it was shown, if any. The
history a turn sees is rebuilt from those runs' journaled inputs and
outputs, never from memory, so a resume or a replay of the turn (even in
another process, long after) shows the agent the very same messages, and a
replay can compare them with the recorded request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from ..errors import JournalCorrupt, RunNotFound
from ..journal.verify import load_payload, read_verified
from ..models.base import Message

if TYPE_CHECKING:
    from ..journal.base import Journal

__all__ = [
    "History",
    "SessionTurn",
    "Summary",
    "Transcript",
    "Turn",
    "load_history",
    "turn_of",
]


class Turn(BaseModel):
    """One finished turn of a session: what the user sent and what came back."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    turn: int
    """The turn's number in its session, from 1."""
    input: dict[str, Any]
    output: dict[str, Any]


class Transcript(BaseModel):
    """What a session's summarizer is given: the summary so far and the turns to fold in."""

    session_id: str
    summary: str | None = None
    """The summary of the turns before ``turns`` (None at the first summary)."""
    turns: list[Turn] = Field(default_factory=list)


class Summary(BaseModel):
    """A summarizer's answer: the conversation so far, in a few sentences."""

    summary: str


class History(BaseModel):
    """What a session turn sees of the turns before it: a summary and a window.

    ``turns`` are the last finished turns (oldest first, at most the
    session's ``window``); ``summary`` covers the earlier ones (None without a
    summarizer, or before the window first overflowed).
    """

    model_config = ConfigDict(frozen=True)

    session_id: str
    turn: int
    """The number of the turn this history is for (its first turn is 1)."""
    turns: list[Turn] = Field(default_factory=list)
    summary: str | None = None

    def messages(self, *, text_input: bool = False, text_output: bool = False) -> list[Message]:
        """The window as chat messages: each turn's input (user) and output (assistant).

        Each is the text the agent sent or got: JSON, or for a plain-text side
        (``input=str`` / ``output=str``) the text itself.
        """
        out: list[Message] = []
        for turn in self.turns:
            out.append(Message(role="user", content=_content(turn.input, text_input)))
            out.append(Message(role="assistant", content=_content(turn.output, text_output)))
        return out

    def note(self) -> str | None:
        """The summary as a system-prompt section, if there is one."""
        if not self.summary:
            return None
        return f"Summary of the earlier conversation (session {self.session_id}):\n{self.summary}"


@dataclass(frozen=True, slots=True)
class SessionTurn:
    """What ``tm.Session`` hands a turn's run: the ``session`` record for its
    ``run.started`` and the history that record names."""

    record: dict[str, Any]
    history: History


def _content(data: dict[str, Any], text: bool) -> str:
    if text and isinstance(data.get("text"), str):
        return str(data["text"])
    return _json(data)


def _json(data: dict[str, Any]) -> str:
    # the same text an Agent sends for an input (pydantic's compact JSON)
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def turn_of(store: Journal, run_id: str) -> tuple[dict[str, Any], Turn | None, str]:
    """A turn run's ``session`` record, the turn (None unless it finished) and its status.

    The run is verified first: a later turn is shown only history the journal vouches for.
    """
    try:
        events = read_verified(store, run_id)
    except RunNotFound:
        events = []
    if not events or events[0].type != "run.started":
        raise JournalCorrupt(f"session turn {run_id!r} has no run.started", run_id=run_id)
    started = events[0]
    session = started.payload.get("session") or {}
    last = events[-1]
    status = "finished" if last.type == "run.finished" else store.head(run_id).status
    if last.type != "run.finished":
        return session, None, status
    turn = Turn(
        run_id=run_id,
        turn=int(session.get("turn", 0)),
        input=load_payload(started, store, "input"),
        output=load_payload(last, store, "output"),
    )
    return session, turn, status


def summary_of(store: Journal, run_id: str) -> str:
    """The summary a finished summary run produced (verified, like a turn)."""
    events = read_verified(store, run_id)
    last = events[-1]
    if last.type != "run.finished":
        raise JournalCorrupt(f"summary run {run_id!r} did not finish", run_id=run_id)
    output = load_payload(last, store, "output")
    return str(output.get("summary", "")) if isinstance(output, dict) else str(output)


def load_history(store: Journal, session: dict[str, Any]) -> History:
    """The history a turn saw, rebuilt from the runs its ``session`` record names."""
    turns = []
    for run_id in session.get("history") or []:
        _, turn, status = turn_of(store, str(run_id))
        if turn is None:
            raise JournalCorrupt(
                f"session {session.get('id')!r}: turn {run_id!r} is in the history but is "
                f"{status}, not finished",
                run_id=str(run_id),
            )
        turns.append(turn)
    summary_run = session.get("summary")
    return History(
        session_id=str(session.get("id", "")),
        turn=int(session.get("turn", 0)),
        turns=turns,
        summary=summary_of(store, str(summary_run)) if summary_run else None,
    )
