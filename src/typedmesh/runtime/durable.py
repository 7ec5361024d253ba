"""Journaled effects: record live, serve on resume, refuse live on strict replay.

One executor serves four modes, so replay is the runtime with effects served
from the journal rather than a second engine:

- ``live``: execute every effect and journal request and result;
- ``resume``: serve effects already journaled, execute and journal the rest;
  a tool call started but never finished is *in doubt*;
- ``replay``: serve every effect from the journal; a missing effect or a
  request that differs from the recorded one is a ``NonDeterminismError``;
- ``whatif``: like replay, but effects of swapped steps, and effects whose
  request diverged because of them, run live.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from ..errors import (
    InDoubtError,
    ModelError,
    NonDeterminismError,
    ToolError,
    TransientModelError,
)
from ..journal.base import Journal
from ..journal.events import Event, digest, dumps
from ..journal.verify import load_payload
from ..journal.writer import RunWriter
from ..models.base import ModelRequest, ModelResponse
from .effects import EffectKind

if TYPE_CHECKING:
    from .context import RunContext

__all__ = ["InDoubtPolicy", "JournalEffects", "Mode", "Recorded", "index_events"]

Mode = Literal["live", "resume", "replay", "whatif"]
InDoubtPolicy = Literal["fail", "retry", "skip"]


@dataclass(slots=True)
class Recorded:
    """What the journal holds for one effect key."""

    kind: str
    request_digest: str | None = None
    status: Literal["started", "ok", "error"] = "started"
    value: Any = None
    error: dict[str, Any] | None = None
    request_event: Event | None = None
    idempotent: bool = True
    tool: str = ""
    seq: int = -1
    final: bool = False
    """For an error: nothing else happened at its step afterwards (the run stopped there)."""


@dataclass(slots=True)
class JournalIndex:
    """A run's journal, indexed for resume and replay."""

    effects: dict[str, Recorded] = field(default_factory=dict)
    completed: dict[str, dict[str, Any]] = field(default_factory=dict)

    def in_doubt(self) -> list[Recorded]:
        return [r for r in self.effects.values() if r.kind == "tool" and r.status == "started"]


def index_events(events: list[Event], journal: Journal) -> JournalIndex:
    """Index effect outcomes by key and completed steps by path."""
    index = JournalIndex()
    effects = index.effects
    last_effect: dict[str, int] = {}
    for event in events:
        kind, _, phase = event.type.partition(".")
        key = event.key
        if event.type == "step.completed":
            index.completed[event.path] = {
                "output": load_payload(event, journal, "output"),
                "usage": event.payload.get("usage", {}),
            }
        elif key is None:
            continue
        elif kind in ("clock", "random"):
            effects[key] = Recorded(kind, status="ok", value=event.payload["value"])
        elif phase in ("request", "started"):
            effects[key] = Recorded(
                kind,
                request_digest=event.payload.get("request_digest"),
                request_event=event,
                idempotent=bool(event.payload.get("idempotent", True)),
                tool=str(event.payload.get("tool", "")),
            )
        elif phase in ("response", "result") and key in effects:
            effects[key].status = "ok"
            effects[key].value = load_payload(
                event, journal, "response" if kind == "model" else "result"
            )
        elif phase == "error" and key in effects:
            effects[key].status = "error"
            effects[key].error = dict(event.payload)
            effects[key].seq = event.seq
        if key is not None:
            last_effect[event.path] = event.seq
    for rec in effects.values():
        if rec.status == "error" and rec.request_event is not None:
            rec.final = last_effect.get(rec.request_event.path) == rec.seq
    return index


class JournalEffects:
    """Effects that go through a journal (see the module docstring for the modes)."""

    __slots__ = ("executed", "in_doubt", "journal", "mode", "recorded", "served", "writer")

    def __init__(
        self,
        writer: RunWriter | None,
        journal: Journal | None,
        *,
        recorded: dict[str, Recorded] | None = None,
        mode: Mode = "live",
        in_doubt: InDoubtPolicy = "fail",
    ) -> None:
        self.writer = writer
        self.journal = journal
        self.recorded = recorded or {}
        self.mode = mode
        self.in_doubt = in_doubt
        self.served = 0
        self.executed = 0

    async def perform(
        self,
        ctx: RunContext,
        key: str,
        kind: EffectKind,
        request: Any,
        execute: Callable[[], Awaitable[Any]],
        meta: dict[str, Any] | None = None,
    ) -> Any:
        # journals keep key order byte for byte, so a request rebuilt from recorded
        # responses serializes to the same text as the live one
        if kind == "model":
            assert isinstance(request, ModelRequest)
            request_text = request.model_dump_json()
        else:
            request_text = dumps(request)
        request_digest = digest(request_text)
        rec = self.recorded.get(key) if self.recorded else None
        if rec is not None and not ctx.runs_live:
            if rec.status == "started":
                self._settle_in_doubt(ctx, key, rec)
            elif rec.request_digest == request_digest:
                if not (rec.final and self.mode == "resume"):
                    self.served += 1
                    return _outcome(kind, rec)
                # the failure that stopped the run: resuming means trying it again
            elif self.mode != "whatif":
                raise NonDeterminismError(
                    key, expected=self._recorded_request(rec), actual=request_text
                )
        elif rec is None and self.mode == "replay":
            raise NonDeterminismError(key, expected=None, actual=request_text)
        return await self._live(
            ctx, key, kind, request, request_text, request_digest, execute, meta
        )

    def _settle_in_doubt(self, ctx: RunContext, key: str, rec: Recorded) -> None:
        """A tool started before the crash and never reported: decide what to do."""
        if self.mode == "replay":
            raise NonDeterminismError(
                key,
                expected="a recorded tool result",
                actual="the journal ends with the call in doubt",
            )
        if rec.idempotent or self.in_doubt == "retry":
            ctx.record("tool.in_doubt", key=key, tool=rec.tool, resolution="retried")
            return
        if self.in_doubt == "skip":
            ctx.record("tool.in_doubt", key=key, tool=rec.tool, resolution="skipped")
            raise ToolError(
                f"tool call {key} was in doubt and skipped by the operator", tool=rec.tool
            )
        raise InDoubtError(key, tool=rec.tool)

    def _recorded_request(self, rec: Recorded) -> Any:
        if rec.request_event is None or self.journal is None:
            return None
        if rec.kind == "tool":  # a tool's request fields are the payload itself
            return {k: v for k, v in rec.request_event.payload.items() if k != "request_digest"}
        request = load_payload(rec.request_event, self.journal, "request")
        return request if isinstance(request, str) else dumps(request)

    async def _live(
        self,
        ctx: RunContext,
        key: str,
        kind: EffectKind,
        request: Any,
        request_text: str,
        request_digest: str,
        execute: Callable[[], Awaitable[Any]],
        meta: dict[str, Any] | None = None,
    ) -> Any:
        self.executed += 1
        writer = self.writer
        if writer is None:
            return await execute()
        span, parent, agent = ctx.event_origin()
        if kind == "model":
            writer.emit(
                "model.request",
                ctx.path,
                {"request_digest": request_digest, **(meta or {})},
                key=key,
                span_id=span,
                parent_span_id=parent,
                agent=agent,
                raw={"request": request_text},
            )
        else:
            writer.emit(
                "tool.started",
                ctx.path,
                {**request, "request_digest": request_digest},
                key=key,
                span_id=span,
                parent_span_id=parent,
                agent=agent,
                durable=True,
            )
        try:
            result = await execute()
        except Exception as exc:
            writer.emit(
                f"{kind}.error",
                ctx.path,
                {
                    "type": type(exc).__name__,
                    "message": str(exc),
                    "transient": isinstance(exc, TransientModelError),
                },
                key=key,
                span_id=span,
                parent_span_id=parent,
                agent=agent,
                durable=kind == "tool",
            )
            raise
        if kind == "model":
            assert isinstance(result, ModelResponse)
            writer.emit(
                "model.response",
                ctx.path,
                {},
                key=key,
                span_id=span,
                parent_span_id=parent,
                agent=agent,
                raw={"response": result.model_dump_json()},
            )
        else:
            writer.emit(
                "tool.result",
                ctx.path,
                {"result": result},
                key=key,
                span_id=span,
                parent_span_id=parent,
                agent=agent,
                durable=True,
            )
        return result

    def perform_sync(
        self, ctx: RunContext, key: str, kind: EffectKind, execute: Callable[[], Any]
    ) -> Any:
        rec = self.recorded.get(key) if self.recorded else None
        if rec is not None and rec.status == "ok" and not ctx.runs_live:
            self.served += 1
            value = rec.value
            return datetime.fromisoformat(value) if kind == "clock" else value
        if self.mode == "replay":
            raise NonDeterminismError(key, expected=None, actual=f"a new {kind} read")
        self.executed += 1
        value = execute()
        if self.writer is not None:
            span, parent, agent = ctx.event_origin()
            self.writer.emit(
                kind,
                ctx.path,
                {"value": value.isoformat() if kind == "clock" else value},
                key=key,
                span_id=span,
                parent_span_id=parent,
                agent=agent,
            )
        return value


def _outcome(kind: str, rec: Recorded) -> Any:
    if rec.status == "error":
        error = rec.error or {}
        message = str(error.get("message", "recorded failure"))
        if kind == "tool":
            raise ToolError(message, tool=rec.tool)
        if error.get("transient"):
            raise TransientModelError(message)
        raise ModelError(message)
    if kind == "model":
        return ModelResponse.model_validate(rec.value)
    return rec.value
