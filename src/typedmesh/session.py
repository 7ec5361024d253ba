"""Sessions: a multi-turn conversation as a lineage of journaled runs.

``session = tm.Session("chat-42", journal="runs.db", window=5)`` and then
``session.run(agent, {"text": "..."})`` once per turn. Each turn is an
ordinary journaled run, ``chat-42.turn-1``, ``chat-42.turn-2``, ...; its
``run.started`` records ``session``: the session id, the turn number, the
previous turn's run id, the run ids of the earlier turns it is shown (its
window) and the summary run it is shown, if any. The history is rebuilt from
those runs' journaled inputs and outputs, never kept in memory, so any process
can continue a session, and ``tm.resume`` / ``tm.replay`` of a turn show the
agent the same messages again (a replay compares them with the recorded
request).

The history is bounded, as the user chooses: ``window=N`` shows the last N
finished turns (a turn that failed or still waits is left out); with
``summary=step`` the turns that leave the window are folded into a running
summary by that step (input ``Transcript``, output with a ``summary`` text
field, e.g. ``Summary``), run as its own journaled run
``chat-42.summary-T`` just before turn T. A root agent puts the summary in its
system prompt and the window as user/assistant messages before the new input;
any step can read ``ctx.history``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from .errors import ConfigurationError, SessionBusy
from .journal import DEFAULT_JOURNAL, Journal, open_journal
from .journal.base import lease_live, now
from .journal.sqlite import Durability
from .journal.verify import load_payload
from .runtime.history import (
    History,
    SessionTurn,
    Transcript,
    Turn,
    load_history,
    summary_of,
    turn_of,
)
from .runtime.run import RunResult, arun, run_sync
from .step import Step

__all__ = ["Session", "TurnInfo"]

Out = TypeVar("Out", bound=BaseModel)

_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")


@dataclass(frozen=True, slots=True)
class TurnInfo:
    """One turn of a session as its journal tells it (``typedmesh session`` lists these)."""

    turn: int
    run_id: str
    flow: str
    status: str
    started_at: str
    input: Any
    output: Any = None
    """The turn's output (None unless it finished)."""
    previous: str | None = None
    history: list[str] = field(default_factory=list)
    """The run ids of the earlier turns it was shown."""
    summary_run: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Session:
    """A conversation: turns run one after another, each a journaled run that sees
    the earlier ones.

    ``id`` names the session (letters, digits and ``_.:@-``); ``journal`` is
    where its turns are (every turn of a session must use the same one).
    ``window`` is how many earlier finished turns a turn is shown (0: none);
    ``summary`` is a step that folds the turns leaving the window into a
    running summary (its input is a ``Transcript``, its output has a
    ``summary`` text field). The session keeps nothing in memory: two
    ``Session`` objects with the same id and journal are the same session.
    Turns run one after another: a turn asked for while the last one is still
    running, waits for an approval or was cut off by a crash is refused
    (``SessionBusy``, naming the turn to finish) before it runs; two started
    at the same instant get the same number, and the second is refused
    (``RunExists``). A failed turn has ended: the next one is shown the turns
    before it.
    """

    def __init__(
        self,
        id: str,
        *,
        journal: str | Path | Journal = DEFAULT_JOURNAL,
        window: int = 10,
        summary: Step[Any, Any] | None = None,
        durability: Durability = "normal",
    ) -> None:
        if not isinstance(id, str) or not _SESSION_ID.fullmatch(id):
            raise ConfigurationError(
                f"session id {id!r}: use 1-128 letters, digits and _.:@- (not starting "
                "with punctuation)"
            )
        if window < 0:
            raise ConfigurationError(f"session {id!r}: window must be >= 0, got {window}")
        if summary is not None:
            if not isinstance(summary, Step):
                raise ConfigurationError(
                    f"session {id!r}: summary must be a Step, got {type(summary).__name__}"
                )
            field_ = summary.output_type.model_fields.get("summary")
            if field_ is None or field_.annotation is not str:
                raise ConfigurationError(
                    f"session {id!r}: the summary step {summary.name!r} must answer a model "
                    f"with a `summary: str` field (e.g. tm.Summary), not "
                    f"{summary.output_type.__name__}"
                )
        self.id = id
        self.journal = journal
        self.window = window
        self.summary = summary
        self.durability: Durability = durability

    def __repr__(self) -> str:
        return f"<Session {self.id!r} window={self.window}>"

    # -- names ---------------------------------------------------------------------

    def run_id(self, turn: int) -> str:
        """The run id of turn ``turn`` (from 1)."""
        return f"{self.id}.turn-{turn}"

    def _store(self) -> Journal:
        return open_journal(self.journal, durability=self.durability)

    # -- reading -------------------------------------------------------------------

    def count(self) -> int:
        """How many turns the session has had (finished or not)."""
        return _count(self._store(), self)

    def turns(self) -> list[TurnInfo]:
        """Every turn, oldest first, as the journal tells it."""
        store = self._store()
        return [_turn_info(store, self.run_id(n), n) for n in range(1, _count(store, self) + 1)]

    def history(self, turn: int | None = None) -> History:
        """What turn ``turn`` (default: the last one) was shown, rebuilt from the journal."""
        store = self._store()
        n = turn if turn is not None else _count(store, self)
        if n < 1:
            return History(session_id=self.id, turn=1)
        record, _, _ = turn_of(store, self.run_id(n))
        return load_history(store, record)

    # -- running -------------------------------------------------------------------

    async def arun(self, flow: Step[Any, Out], input: Any, **options: Any) -> RunResult[Out]:
        """Run the next turn: ``flow`` on ``input``, shown the session's history.

        ``options`` go to ``tm.arun`` (``intent``, ``budget``, ``deps``,
        ``model_settings``, ``deadline``, ``state``, ...); ``run_id`` and
        ``journal`` are the session's. With a summary step, the turns leaving
        the window are summarized first, in a run of their own.
        """
        for taken in ("run_id", "journal", "session"):
            if taken in options:
                raise ConfigurationError(f"session.run: {taken}= is the session's to choose")
        store = self._store()
        previous = _count(store, self)
        turn = previous + 1
        before: dict[str, Any] = {}
        candidates: list[str] = []
        if previous:
            before, last, status = turn_of(store, self.run_id(previous))
            if last is None:
                self._refuse_unended(store, previous, status)
            candidates = [str(r) for r in before.get("history") or []]
            if last is not None:
                candidates.append(last.run_id)
        window = candidates[len(candidates) - self.window :] if self.window else []
        dropped = candidates[: len(candidates) - len(window)]
        summary_run: str | None = before.get("summary")
        if dropped and self.summary is not None:
            summary_run = await self._summarize(store, turn, dropped, summary_run)
        record = {
            "id": self.id,
            "turn": turn,
            "previous": self.run_id(previous) if previous else None,
            "history": window,
            "summary": summary_run,
        }
        history = load_history(store, record)
        return await arun(
            flow,
            input,
            run_id=self.run_id(turn),
            journal=self.journal,
            durability=self.durability,
            session=SessionTurn(record, history),
            **options,
        )

    def _refuse_unended(self, store: Journal, turn: int, status: str) -> None:
        """Turns run one after another: refuse the next while this one has not ended
        (a failed turn has: the next one is shown the turns before it)."""
        if status not in ("running", "waiting", "incomplete"):
            return
        run_id = self.run_id(turn)
        head = store.head(run_id)
        if status == "running" and not lease_live(head.owner, head.expires_at, now()):
            status = "incomplete"  # its process is gone: nobody will finish it
        what = {
            "running": "is still running; run the next turn when it has answered",
            "waiting": (
                "waits for a decision: approve or deny it (`typedmesh approvals "
                f"{run_id}`), then `typedmesh resume {run_id}`"
            ),
            "incomplete": (
                f"was cut off before it ended (its process stopped): `typedmesh resume {run_id}`"
            ),
        }[status]
        raise SessionBusy(
            f"session {self.id!r}: turn {turn} ({run_id}) {what}",
            session_id=self.id,
            run_id=run_id,
            status=status,
        )

    def run(self, flow: Step[Any, Out], input: Any, **options: Any) -> RunResult[Out]:
        """Synchronous twin of ``arun``."""
        return run_sync(self.arun(flow, input, **options))

    async def _summarize(
        self, store: Journal, turn: int, dropped: list[str], previous: str | None
    ) -> str:
        """Fold the turns leaving the window into the summary; the summary run's id."""
        assert self.summary is not None
        turns: list[Turn] = []
        for run_id in dropped:
            _, done, _ = turn_of(store, run_id)
            assert done is not None, "only finished turns are in a window"
            turns.append(done)
        transcript = Transcript(
            session_id=self.id,
            summary=summary_of(store, previous) if previous else None,
            turns=turns,
        )
        attempt = 1
        while True:  # a failed summary run is kept; the next try is a new run
            run_id = f"{self.id}.summary-{turn}" + (f".{attempt}" if attempt > 1 else "")
            if not store.exists(run_id):
                break
            if store.head(run_id).status == "finished":
                return run_id
            attempt += 1
        record = {"id": self.id, "summary_for": turn, "turns": dropped, "previous": previous}
        await arun(
            self.summary,
            transcript,
            run_id=run_id,
            journal=self.journal,
            durability=self.durability,
            session=SessionTurn(record, History(session_id=self.id, turn=turn)),
        )
        return run_id


def _count(store: Journal, session: Session) -> int:
    """The number of turns: turn run ids are consecutive, so a galloping search finds it."""
    if not store.exists(session.run_id(1)):
        return 0
    low, high = 1, 2
    while store.exists(session.run_id(high)):
        low, high = high, high * 2
    while high - low > 1:  # turn `low` exists, turn `high` does not
        middle = (low + high) // 2
        if store.exists(session.run_id(middle)):
            low = middle
        else:
            high = middle
    return low


def _turn_info(store: Journal, run_id: str, number: int) -> TurnInfo:
    events = store.read(run_id)
    started = events[0]
    record = started.payload.get("session") or {}
    last = events[-1]
    finished = last.type == "run.finished"
    return TurnInfo(
        turn=int(record.get("turn", number)),
        run_id=run_id,
        flow=str(started.payload.get("flow", "")),
        status="finished" if finished else store.head(run_id).status,
        started_at=started.ts,
        input=load_payload(started, store, "input"),
        output=load_payload(last, store, "output") if finished else None,
        previous=record.get("previous"),
        history=[str(r) for r in record.get("history") or []],
        summary_run=record.get("summary"),
    )
