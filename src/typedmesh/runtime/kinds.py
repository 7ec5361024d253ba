"""Effect kinds: one descriptor says everything the runtime must know about a kind.

How a kind's request and result are recorded (event types, payload), how a
recorded result is served back, whether its start must be durable before it
runs (a side effect) and its result before it is used, what a start with no
outcome ("in doubt") means after a crash, and whether it may *wait*: return
``PENDING``, so the run suspends and a later ``resume`` continues once a
result has been recorded (``record_result``).

The built-in kinds are model, tool, clock, random and timer. Later kinds
(state reads and writes, approvals, remote calls) register the same way;
nothing else in the runtime names a kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..errors import InDoubtError, ModelError, StepFailed, ToolError, TransientModelError
from ..journal.events import Event, digest, dumps
from ..models.base import ModelRequest, ModelResponse, Usage

if TYPE_CHECKING:
    from .context import RunContext

__all__ = [
    "KINDS",
    "PENDING",
    "EffectKind",
    "InDoubtPolicy",
    "Recorded",
    "RequestRecord",
    "kind_of_event",
    "register_kind",
]

InDoubtPolicy = Literal["fail", "retry", "skip"]


class _Pending:
    """What a waiting kind's live execution returns when no result exists yet."""

    def __repr__(self) -> str:
        return "PENDING"


PENDING: Any = _Pending()


@dataclass(slots=True)
class RequestRecord:
    """How one request is journaled: its identity text and the event's payload."""

    text: str
    """The canonical text replay compares (its digest is the request's identity)."""
    digest: str
    payload: dict[str, Any]
    raw: dict[str, str] | None = None
    parts: dict[str, list[str]] | None = None


@dataclass(slots=True)
class Recorded:
    """What the journal holds for one effect key."""

    kind: EffectKind
    request_digest: str | None = None
    status: Literal["started", "ok", "error", "waiting"] = "started"
    value: Any = None
    error: dict[str, Any] | None = None
    started: dict[str, Any] | None = None
    """The started event's payload (decoded), for in-doubt decisions and diffs."""
    started_seq: int = -1
    started_event: Event | None = None
    seq: int = -1
    final: bool = False
    """For an error: nothing else happened at its step afterwards (the run stopped there)."""


class EffectKind:
    """A kind of effect. Subclass, set the class attributes, register it."""

    name: ClassVar[str]
    started_type: ClassVar[str] = ""
    completed_type: ClassVar[str] = ""
    failed_type: ClassVar[str] = ""
    waiting_type: ClassVar[str] = ""
    sync: ClassVar[bool] = False
    """One event holding the value (clock, random): no start, no doubt, no wait."""
    durable_start: ClassVar[bool] = False
    """The start is committed before the effect runs: it has side effects outside."""
    commit_result: ClassVar[bool] = False
    """The result is committed before it is used: losing it would cost a repeat."""
    defer_commit: ClassVar[bool] = False
    """With ``commit_result``: the commit may wait until the step's next effect or its
    completion, whichever comes first (a model response: the step only parses it in
    between, so one commit serves the response and the step's end)."""
    may_wait: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name:
            cls.started_type = cls.__dict__.get("started_type") or f"{name}.started"
            cls.completed_type = cls.__dict__.get("completed_type") or f"{name}.completed"
            cls.failed_type = cls.__dict__.get("failed_type") or f"{name}.error"
            cls.waiting_type = cls.__dict__.get("waiting_type") or f"{name}.waiting"

    def record_request(self, request: Any, ctx: RunContext) -> RequestRecord:
        text = dumps(request)
        ref = digest(text)
        payload = dict(request) if isinstance(request, dict) else {"request": request}
        payload["request_digest"] = ref
        return RequestRecord(text, ref, payload)

    def record_result(self, result: Any) -> tuple[dict[str, Any], dict[str, str] | None]:
        """The completed event's payload (and raw JSON-text fields)."""
        return {"result": result}, None

    def recorded_value(self, payload: dict[str, Any], load: Any) -> Any:
        """The result as stored in a completed event's payload (``load(name)`` reads a field)."""
        return load("result")

    def serve(self, rec: Recorded) -> Any:
        """The recorded outcome: the result, or the recorded failure raised again."""
        if rec.status == "error":
            raise self.error_from(rec.error or {})
        return rec.value

    def error_payload(self, exc: BaseException) -> dict[str, Any]:
        return {"type": type(exc).__name__, "message": str(exc)}

    def error_from(self, error: dict[str, Any]) -> Exception:
        return ModelError(str(error.get("message", "recorded failure")))

    def in_doubt(
        self, rec: Recorded, policy: InDoubtPolicy, ctx: RunContext, key: str
    ) -> Literal["retry"]:
        """A start with no outcome after a crash: by default it is simply run again."""
        return "retry"


KINDS: dict[str, EffectKind] = {}
_BY_EVENT: dict[str, tuple[EffectKind, str]] = {}


def register_kind(kind: EffectKind) -> EffectKind:
    """Make a kind known to the journal index (resume and replay find its events)."""
    KINDS[kind.name] = kind
    if kind.sync:
        _BY_EVENT[kind.name] = (kind, "value")
    else:
        for phase, type_ in (
            ("started", kind.started_type),
            ("completed", kind.completed_type),
            ("error", kind.failed_type),
            ("waiting", kind.waiting_type),
        ):
            _BY_EVENT[type_] = (kind, phase)
    return kind


def kind_of_event(event_type: str) -> tuple[EffectKind, str] | None:
    """The kind and phase an event type belongs to, or None for a non-effect event."""
    return _BY_EVENT.get(event_type)


class ModelKind(EffectKind):
    """A model call: retried freely in doubt (no side effect), its response committed."""

    name = "model"
    started_type = "model.request"
    completed_type = "model.response"
    failed_type = "model.error"
    commit_result = True
    defer_commit = True

    def record_request(self, request: Any, ctx: RunContext) -> RequestRecord:
        assert isinstance(request, ModelRequest)
        if not ctx.keeps_requests:  # a run nobody journals or replays: nothing to compare
            return RequestRecord("", "", {})
        # each message is stored once, by digest: a conversation re-sent on every
        # round adds one message per round to the journal, not the whole history
        parts = ctx.message_texts(request.messages)
        rest = request.model_dump_json(exclude={"messages"})
        text = '{"messages":[' + ",".join(parts) + "]" + ("," + rest[1:] if len(rest) > 2 else "}")
        ref = digest(text)
        return RequestRecord(
            text, ref, {"request_digest": ref}, raw={"request": rest}, parts={"messages": parts}
        )

    def record_result(self, result: Any) -> tuple[dict[str, Any], dict[str, str] | None]:
        assert isinstance(result, ModelResponse)
        return {
            "usage": _usage_payload(result.usage),
            "served_model": result.model,
        }, {"response": result.model_dump_json()}

    def recorded_value(self, payload: dict[str, Any], load: Any) -> Any:
        return load("response")

    def serve(self, rec: Recorded) -> Any:
        if rec.status == "error":
            raise self.error_from(rec.error or {})
        return ModelResponse.model_validate(rec.value)

    def error_payload(self, exc: BaseException) -> dict[str, Any]:
        payload = super().error_payload(exc)
        payload["transient"] = isinstance(exc, TransientModelError)
        for name in ("status", "error_type", "provider", "retry_after"):
            value = getattr(exc, name, None)
            if value is not None:
                payload[name] = value
        billed = getattr(exc, "usage", None)
        if billed is not None:  # billed though unusable: the run counts it
            payload["usage"] = _usage_payload(billed)
        return payload

    def error_from(self, error: dict[str, Any]) -> Exception:
        message = str(error.get("message", "recorded failure"))
        fields = {
            "status": error.get("status"),
            "error_type": error.get("error_type"),
            "provider": error.get("provider"),
        }
        if error.get("transient"):
            return TransientModelError(message, retry_after=error.get("retry_after"), **fields)
        return ModelError(message, **fields)


class ToolKind(EffectKind):
    """A tool call: its start is durable before it runs; in doubt asks the operator
    unless the tool is idempotent (then it runs again with the same idempotency key)."""

    name = "tool"
    started_type = "tool.started"
    completed_type = "tool.result"
    failed_type = "tool.error"
    durable_start = True
    commit_result = True

    def error_from(self, error: dict[str, Any]) -> Exception:
        message = str(error.get("message", "recorded failure"))
        if error.get("type") == "StepFailed":  # a bug in the tool failed the step, then too
            return StepFailed(message, error_type=str(error.get("error_type", "")))
        return ToolError(message, tool=str(error.get("tool", "")))

    def error_payload(self, exc: BaseException) -> dict[str, Any]:
        payload = super().error_payload(exc)
        payload["tool"] = getattr(exc, "tool", "")
        if isinstance(exc, StepFailed):
            payload["error_type"] = exc.error_type
        return payload

    def in_doubt(
        self, rec: Recorded, policy: InDoubtPolicy, ctx: RunContext, key: str
    ) -> Literal["retry"]:
        started = rec.started or {}
        tool = str(started.get("tool", ""))
        if started.get("idempotent", True) or policy == "retry":
            ctx.record("tool.in_doubt", key=key, tool=tool, resolution="retried")
            return "retry"
        if policy == "skip":
            ctx.record("tool.in_doubt", key=key, tool=tool, resolution="skipped")
            raise SkipInDoubt(
                f"tool call {key} was in doubt and skipped by the operator", tool=tool
            )
        raise InDoubtError(key, tool=tool)


class SkipInDoubt(ToolError):
    """An in-doubt tool call the operator chose to skip: journaled as the call's outcome."""


class ValueKind(EffectKind):
    """A value read from the world in one event (no start, nothing in doubt)."""

    sync = True


class ClockKind(ValueKind):
    name = "clock"

    def record_result(self, result: Any) -> tuple[dict[str, Any], dict[str, str] | None]:
        return {"value": result.isoformat()}, None

    def recorded_value(self, payload: dict[str, Any], load: Any) -> Any:
        return datetime.fromisoformat(load("value"))


class RandomKind(ValueKind):
    name = "random"

    def record_result(self, result: Any) -> tuple[dict[str, Any], dict[str, str] | None]:
        return {"value": result}, None

    def recorded_value(self, payload: dict[str, Any], load: Any) -> Any:
        return load("value")


class BreakerKind(ValueKind):
    """A circuit breaker's answer (closed, half_open, open): process state, so journaled."""

    name = "breaker"

    def record_result(self, result: Any) -> tuple[dict[str, Any], dict[str, str] | None]:
        return {"value": result}, None

    def recorded_value(self, payload: dict[str, Any], load: Any) -> Any:
        return load("value")


class TimerKind(EffectKind):
    """A wait of known length (retry backoff): served at once on replay; after a
    crash mid-wait, resume sleeps only what was left."""

    name = "timer"
    started_type = "timer.started"
    completed_type = "timer.fired"

    def record_request(self, request: Any, ctx: RunContext) -> RequestRecord:
        delay = float(request)
        text = dumps({"delay_s": delay})
        wake = (datetime.now(UTC) + timedelta(seconds=delay)).isoformat()
        ref = digest(text)
        return RequestRecord(text, ref, {"delay_s": delay, "wake_at": wake, "request_digest": ref})

    def record_result(self, result: Any) -> tuple[dict[str, Any], dict[str, str] | None]:
        return {}, None

    def recorded_value(self, payload: dict[str, Any], load: Any) -> Any:
        return None

    def in_doubt(
        self, rec: Recorded, policy: InDoubtPolicy, ctx: RunContext, key: str
    ) -> Literal["retry"]:
        return "retry"


MODEL = register_kind(ModelKind())
TOOL = register_kind(ToolKind())
CLOCK = register_kind(ClockKind())
RANDOM = register_kind(RandomKind())
TIMER = register_kind(TimerKind())
BREAKER = register_kind(BreakerKind())


def _usage_payload(usage: Usage) -> dict[str, Any]:
    """What a model call's event records of its usage (``estimated_calls`` only when
    the provider reported none, so the events of every other call are unchanged)."""
    fields: dict[str, Any] = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cost_usd": usage.cost_usd,
    }
    if usage.estimated_calls:
        fields["estimated_calls"] = usage.estimated_calls
    return fields
