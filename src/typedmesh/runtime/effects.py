"""Effects: the single door every nondeterministic act goes through.

A model call, a tool call, the clock, a random draw and a timer are each
performed by the ``Effects`` engine under a deterministic key
(``path/kind#n``), allocated when the call is made. The engine serves four
modes, so replay is the runtime with effects served from the journal rather
than a second engine:

- ``live``: execute every effect and record request and result as events;
- ``resume``: serve effects already journaled, execute and record the rest;
  a start with no outcome is *in doubt* and its kind decides what that means;
- ``replay``: serve every effect from the journal; a missing effect, a
  request that differs from the recorded one, or a recorded effect never
  asked for is a ``NonDeterminismError``;
- ``whatif``: like replay, but effects of swapped steps, and effects whose
  request diverged because of them, run live.

What a kind records and how it is served comes from its descriptor
(``kinds.py``); nothing here names a kind.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..errors import NonDeterminismError, RunError
from ..journal.base import Journal
from ..journal.events import Event, dumps
from ..journal.verify import load_payload
from .kinds import (
    PENDING,
    EffectKind,
    InDoubtPolicy,
    Recorded,
    RequestRecord,
    SkipInDoubt,
    kind_of_event,
)

if TYPE_CHECKING:
    from .context import RunContext

__all__ = ["Effects", "JournalIndex", "Mode", "Suspend", "index_events"]

Mode = Literal["live", "resume", "replay", "whatif"]


class Suspend(BaseException):
    """Raised through the run when an effect waits for a result that is not recorded yet."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(key)


@dataclass(slots=True)
class JournalIndex:
    """A run's journal, indexed for resume and replay."""

    effects: dict[str, Recorded] = field(default_factory=dict)
    completed: dict[str, Any] = field(default_factory=dict)
    """Output JSON of every finished step, by path."""

    def in_doubt(self) -> list[tuple[str, Recorded]]:
        return [(k, r) for k, r in self.effects.items() if r.status == "started"]


def index_events(events: list[Event], journal: Journal) -> JournalIndex:
    """Index effect outcomes by key and completed steps by path."""
    index = JournalIndex()
    effects = index.effects
    last_effect: dict[str, int] = {}
    for event in events:
        key = event.key
        if event.type == "step.completed":
            index.completed[event.path] = load_payload(event, journal, "output")
            continue
        if key is None:
            continue
        found = kind_of_event(event.type)
        if found is None:
            last_effect[event.path] = event.seq
            continue
        kind, phase = found

        def load(name: str, event: Event = event) -> Any:
            return load_payload(event, journal, name)

        if phase == "value":
            effects[key] = Recorded(
                kind, status="ok", value=kind.recorded_value(event.payload, load)
            )
        elif phase == "started":
            effects[key] = Recorded(
                kind,
                request_digest=event.payload.get("request_digest"),
                started=event.payload,
                started_seq=event.seq,
                started_event=event,
            )
        elif key in effects:
            rec = effects[key]
            rec.seq = event.seq
            if phase == "completed":
                rec.status, rec.value = "ok", kind.recorded_value(event.payload, load)
            elif phase == "error":
                rec.status, rec.error = "error", dict(event.payload)
            elif phase == "waiting":
                rec.status = "waiting"
        last_effect[event.path] = event.seq
    for rec in effects.values():
        if rec.status == "error" and rec.started is not None:
            rec.final = last_effect.get(_path_of(events, rec)) == rec.seq
    return index


def _path_of(events: list[Event], rec: Recorded) -> str:
    return events[rec.started_seq].path if 0 <= rec.started_seq < len(events) else ""


class Effects:
    """Performs effects for one run in one mode (see the module docstring)."""

    __slots__ = ("consumed", "executed", "in_doubt", "journal", "mode", "recorded", "served")

    def __init__(
        self,
        *,
        journal: Journal | None = None,
        recorded: dict[str, Recorded] | None = None,
        mode: Mode = "live",
        in_doubt: InDoubtPolicy = "fail",
    ) -> None:
        self.journal = journal
        self.recorded = recorded or {}
        self.mode = mode
        self.in_doubt = in_doubt
        self.served = 0
        self.executed = 0
        self.consumed: set[str] = set()

    async def perform(
        self,
        ctx: RunContext,
        kind: EffectKind,
        key: str,
        request: Any,
        execute: Callable[[], Awaitable[Any]],
        *,
        meta: dict[str, Any] | None = None,
        admit: Callable[[RequestRecord], Any] | None = None,
    ) -> Any:
        """Return the effect's result: recorded, or by awaiting ``execute()``.

        ``meta`` is recorded with the request but is not part of its identity
        (which model served it: a what-if may swap the model). ``admit`` runs
        only when the effect will really execute (a budget reservation).
        """
        record = kind.record_request(request, ctx)
        rec = self.recorded.get(key) if self.recorded else None
        if rec is not None and not ctx.runs_live:
            self.consumed.add(key)
            if rec.status == "waiting" or (rec.status == "started" and kind.may_wait):
                if self.mode == "replay":
                    raise NonDeterminismError(
                        key, expected="a recorded result", actual="the run is still waiting"
                    )
                raise Suspend(key)
            if rec.status == "started":
                if rec.request_digest and rec.request_digest != record.digest:
                    if self.mode != "whatif":  # a retry in doubt must be the same request
                        raise NonDeterminismError(
                            key, expected=self.recorded_request(kind, rec), actual=record.text
                        )
                elif self.mode == "replay":
                    raise NonDeterminismError(
                        key,
                        expected="a recorded result",
                        actual="the journal ends with the call in doubt",
                    )
                try:
                    kind.in_doubt(rec, self.in_doubt, ctx, key)
                except SkipInDoubt as exc:  # the operator's decision is the call's outcome
                    ctx.emit(kind.failed_type, kind.error_payload(exc), key=key)
                    await ctx.commit()
                    raise
            elif rec.request_digest == record.digest:
                if not (rec.final and self.mode == "resume"):
                    self.served += 1
                    return kind.serve(rec)
                # the failure that stopped the run: resuming means trying it again
            elif self.mode != "whatif":
                raise NonDeterminismError(
                    key, expected=self.recorded_request(kind, rec), actual=record.text
                )
        elif rec is None and self.mode == "replay":
            raise NonDeterminismError(key, expected=None, actual=record.text)
        if admit is not None:
            admit(record)
        return await self._live(ctx, kind, key, record, execute, meta)

    async def _live(
        self,
        ctx: RunContext,
        kind: EffectKind,
        key: str,
        record: RequestRecord,
        execute: Callable[[], Awaitable[Any]],
        meta: dict[str, Any] | None,
    ) -> Any:
        self.executed += 1
        payload = {**record.payload, **meta} if meta else record.payload
        ctx.emit(kind.started_type, payload, key=key, raw=record.raw, parts=record.parts)
        if kind.durable_start:
            await ctx.commit()  # on disk (and our lease checked) before the side effect
        else:
            await ctx.settle()  # a result this step is acting on is on disk first
            ctx.ensure_owned()
        try:
            result = await execute()
        except Exception as exc:
            ctx.emit(kind.failed_type, kind.error_payload(exc), key=key)
            if kind.durable_start:
                await ctx.commit()
            raise
        if result is PENDING:
            if not kind.may_wait:
                raise RunError(f"effect {key}: kind {kind.name!r} may not wait")
            ctx.emit(kind.waiting_type, {}, key=key)
            await ctx.commit()
            raise Suspend(key)
        fields, raw = kind.record_result(result)
        ctx.emit(kind.completed_type, fields, key=key, raw=raw)
        if kind.commit_result:
            if kind.defer_commit:
                ctx.unsaved()  # committed before the step's next effect or its end
            else:
                await ctx.commit()  # durable before anything uses it
        return result

    def perform_sync(
        self, ctx: RunContext, kind: EffectKind, key: str, execute: Callable[[], Any]
    ) -> Any:
        """The same for a kind whose value is read without waiting (clock, random)."""
        rec = self.recorded.get(key) if self.recorded else None
        if rec is not None and rec.status == "ok" and not ctx.runs_live:
            self.consumed.add(key)
            self.served += 1
            return rec.value
        if self.mode == "replay":
            raise NonDeterminismError(key, expected=None, actual=f"a new {kind.name} read")
        self.executed += 1
        value = execute()
        fields, _ = kind.record_result(value)
        ctx.emit(kind.name, fields, key=key)
        return value

    def unconsumed(self) -> list[str]:
        """Recorded effects that the replayed flow never asked for, in journal order.

        An effect made inside another (a state write inside a tool) is consumed
        with it: a served tool call is not run again, so neither is its inside.
        """
        consumed = self.consumed
        left = [
            (rec.started_seq if rec.started_seq >= 0 else rec.seq, key)
            for key, rec in self.recorded.items()
            if key not in consumed and not _inside_consumed(key, consumed)
        ]
        return [key for _, key in sorted(left)]

    def recorded_request(self, kind: EffectKind, rec: Recorded) -> Any:
        """The recorded request, rebuilt from the journal for a diff."""
        event = rec.started_event
        if event is None or self.journal is None:
            return None
        if "request" not in event.payload:  # a tool's request fields are the payload itself
            return {k: v for k, v in event.payload.items() if k != "request_digest"}
        request = load_payload(event, self.journal, "request")
        if "messages" in (event.refs or {}):  # stored one message per blob
            request = {"messages": load_payload(event, self.journal, "messages"), **request}
        return request if isinstance(request, str) else dumps(request)


def _inside_consumed(key: str, consumed: set[str]) -> bool:
    """Whether ``key`` was made inside an effect that was consumed (its key a prefix)."""
    cut = key.rfind("/")
    while cut > 0:
        key = key[:cut]
        if "#" in key.rpartition("/")[2] and key in consumed:
            return True
        cut = key.rfind("/")
    return False
