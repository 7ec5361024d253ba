"""Export a journaled run as OpenTelemetry spans (GenAI semantic conventions).

``export_run(journal, run_id)`` reads a run's events and hands one span per
boundary to a ``TracerProvider``: the run (``invoke_workflow {flow}``), each
step (``invoke_agent {agent}`` for agents, the step's name for patterns and
functions), each model call (``chat {model}``) and each tool call
(``execute_tool {tool}``). Times come from the journal, not from the export,
so a run can be exported any time after it happened, as often as wanted.

Ids are deterministic when the provider is the OpenTelemetry SDK's: the trace
id is the run id (when it is 32 hex digits; a digest of it otherwise) and a
step's span id is its journal ``span_id``, so spans line up with
``typedmesh trace`` and a second export of the same run repeats the same ids.

``opentelemetry`` is imported only when ``export_run`` is called (the
``otel`` extra); ``import typedmesh`` never loads it.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .errors import JournalError, MissingExtraError
from .journal.base import Journal
from .journal.events import Event, canonical_json
from .journal.verify import load_payload
from .runtime.context import span_id as journal_span_id

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = ["export_run"]

SCOPE = "typedmesh.telemetry"
"""The instrumentation scope of exported spans."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HEX32 = re.compile(r"[0-9a-f]{32}")
_STRUCTURAL = frozenset(
    {
        "run.started",
        "run.finished",
        "run.failed",
        "step.started",
        "step.completed",
        "step.failed",
        "model.request",
        "model.response",
        "model.error",
        "tool.started",
    }
)
"""Events that open or close spans; every other event becomes a span event."""

_ids_lock = threading.Lock()


@dataclass(slots=True, eq=False)
class _Span:
    """One span, built from the journal before anything is handed to OpenTelemetry."""

    span_id: int
    parent: _Span | None
    name: str
    kind: str  # "internal" or "client"
    start: int
    attributes: dict[str, Any]
    end: int | None = None
    error: tuple[str, str] | None = None
    events: list[tuple[str, dict[str, Any], int]] = field(default_factory=list)

    def close(self, end: int, status: str) -> None:
        self.end = end
        self.attributes["typedmesh.status"] = status

    def fail(self, end: int, payload: dict[str, Any], default_type: str) -> None:
        error_type = str(payload.get("type") or default_type)
        message = str(payload.get("message") or payload.get("error") or "")
        self.close(end, "failed")
        self.error = (error_type, message)
        self.attributes["error.type"] = error_type


def export_run(
    journal: Journal, run_id: str, *, tracer_provider: TracerProvider | None = None
) -> int:
    """Export run ``run_id`` of ``journal`` as spans; returns how many were exported.

    ``tracer_provider`` defaults to the global one. Spans follow the
    OpenTelemetry GenAI semantic conventions, with ``typedmesh.*`` attributes
    for what they do not cover (run id, step path, effect key, deployment);
    see ``docs/telemetry.md``. The provider is flushed before returning.
    Raises ``RunNotFound`` for an unknown run and ``MissingExtraError`` when
    the ``otel`` extra is not installed.
    """
    otel = _load_otel()
    events = journal.read(run_id)
    spans = _build(journal, run_id, events)
    provider = tracer_provider if tracer_provider is not None else otel.trace.get_tracer_provider()
    from . import __version__

    tracer = provider.get_tracer(SCOPE, __version__)
    exported = _emit(otel, tracer, _trace_id(run_id), spans)
    flush = getattr(provider, "force_flush", None)
    if callable(flush):
        flush()
    return exported


# -- OpenTelemetry, loaded lazily ------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Otel:
    trace: Any
    context: Any
    sdk_trace: Any
    id_generator: Any


def _load_otel() -> _Otel:
    try:
        import opentelemetry.context as context
        import opentelemetry.sdk.trace as sdk_trace
        import opentelemetry.sdk.trace.id_generator as id_generator
        import opentelemetry.trace as trace
    except ImportError:
        raise MissingExtraError("otel", "typedmesh.telemetry") from None
    return _Otel(trace=trace, context=context, sdk_trace=sdk_trace, id_generator=id_generator)


def _emit(otel: _Otel, tracer: Tracer, trace_id: int, spans: list[_Span]) -> int:
    """Start every span (parents first), then end them (children first)."""
    ids = _journal_ids(otel, trace_id)
    # The SDK tracer draws ids from its ``id_generator``: lend it one that hands out the
    # journal's ids for the spans started here, and give the old one back at once.
    sdk_tracer: Any = tracer if isinstance(tracer, otel.sdk_trace.Tracer) else None
    if sdk_tracer is not None and not hasattr(sdk_tracer, "id_generator"):
        sdk_tracer = None
    live: dict[int, Span] = {}
    with _ids_lock:
        previous = sdk_tracer.id_generator if sdk_tracer is not None else None
        if sdk_tracer is not None:
            sdk_tracer.id_generator = ids
        try:
            for span in spans:
                ids.next_span_id = span.span_id
                if span.parent is None:
                    parent_context = otel.context.Context()
                else:
                    parent_context = otel.trace.set_span_in_context(live[id(span.parent)])
                kind = otel.trace.SpanKind
                live[id(span)] = tracer.start_span(
                    span.name,
                    context=parent_context,
                    kind=kind.CLIENT if span.kind == "client" else kind.INTERNAL,
                    attributes=span.attributes,
                    start_time=span.start,
                )
        finally:
            if sdk_tracer is not None:
                sdk_tracer.id_generator = previous
    exported = 0
    for span in reversed(spans):
        target = live[id(span)]
        for name, attributes, timestamp in span.events:
            target.add_event(name, attributes, timestamp=timestamp)
        end = max(span.end if span.end is not None else span.start, span.start)
        if span.error is not None:
            error_type, message = span.error
            target.add_event(
                "exception",
                {"exception.type": error_type, "exception.message": message},
                timestamp=end,
            )
            target.set_status(otel.trace.Status(otel.trace.StatusCode.ERROR, message or None))
        if target.get_span_context().trace_flags.sampled:
            exported += 1
        target.end(end_time=end)
    return exported


def _journal_ids(otel: _Otel, trace_id: int) -> Any:
    """An SDK ``IdGenerator`` handing out the ids computed from the journal."""
    base = otel.id_generator

    class JournalIds(base.IdGenerator):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            self.fallback = base.RandomIdGenerator()
            self.next_span_id = 0

        def generate_span_id(self) -> int:
            value, self.next_span_id = self.next_span_id, 0
            return value or int(self.fallback.generate_span_id())

        def generate_trace_id(self) -> int:
            return trace_id

    return JournalIds()


# -- journal events -> spans -----------------------------------------------------


def _build(journal: Journal, run_id: str, events: list[Event]) -> list[_Span]:
    """Turn a run's events into spans, in start order (a parent before its children)."""
    return _Builder(journal, run_id).build(events)


class _Builder:
    def __init__(self, journal: Journal, run_id: str) -> None:
        self.journal = journal
        self.run_id = run_id
        self.spans: list[_Span] = []
        self.root: _Span | None = None
        self.current: dict[str, _Span] = {}
        """The latest span for each journal span id (steps, and effects by their key)."""
        self.by_path: dict[str, _Span] = {}
        self.attempts: dict[str, int] = {}
        self.open: dict[int, _Span] = {}
        self.terminal: Event | None = None
        self.last_ts = 0

    def build(self, events: list[Event]) -> list[_Span]:
        for event in events:
            ts = _ns(event.ts)
            root = self.root or self._open_root(event, ts)
            kind = event.type
            if kind == "run.resumed":
                self._close_open(self.last_ts, "cancelled" if self.terminal else "incomplete")
                self._settle_terminal(root)
                root.events.append((kind, _event_attributes(event), ts))
            elif kind in ("run.finished", "run.failed"):
                self._settle_terminal(root)
                self.terminal = event
                root.end = ts
            elif kind == "step.started":
                self._step_started(event, ts)
            elif kind in ("step.completed", "step.failed"):
                self._step_ended(event, ts)
            elif kind == "model.request":
                self._model_request(event, ts)
            elif kind in ("model.response", "model.error"):
                self._model_ended(event, ts)
            elif kind == "tool.started":
                self._tool_started(event, ts)
            elif kind in ("tool.result", "tool.error") and self._effect_open(event):
                self._tool_ended(event, ts)
            elif kind in ("tool.result", "tool.error") and "key" in event.payload:
                pass  # an older journal's ctx.record twin of the effect's own event
            elif kind not in _STRUCTURAL:
                target = self._owner(event) or root
                target.events.append((kind, _event_attributes(event), ts))
            self.last_ts = max(self.last_ts, ts)
        if self.root is None:
            return []
        terminal = self.terminal
        self._close_open(self.last_ts, "incomplete" if terminal is None else "cancelled")
        if terminal is None:
            self.root.close(self.last_ts, "incomplete")
        elif terminal.type == "run.failed":
            self.root.fail(_ns(terminal.ts), terminal.payload, "RunError")
            if terminal.payload.get("step_path"):
                self.root.attributes["typedmesh.error.step_path"] = terminal.payload["step_path"]
        else:
            self.root.close(_ns(terminal.ts), "ok")
        if terminal is not None:
            self.root.attributes.update(_usage_attributes(terminal.payload.get("usage")))
        return self.spans

    # -- the run -------------------------------------------------------------

    def _open_root(self, first: Event, ts: int) -> _Span:
        flow = str(first.payload.get("flow") or first.path)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_workflow",
            "gen_ai.workflow.name": flow,
            "typedmesh.run_id": self.run_id,
            "typedmesh.flow": flow,
        }
        if first.type == "run.started" and first.payload.get("kind"):
            attributes["typedmesh.step.kind"] = str(first.payload["kind"])
        root = _Span(
            span_id=_hex_int(journal_span_id(self.run_id, "")),
            parent=None,
            name=f"invoke_workflow {flow}",
            kind="internal",
            start=ts,
            attributes=attributes,
        )
        self.root = root
        self.spans.append(root)
        return root

    def _settle_terminal(self, root: _Span) -> None:
        """A run that ended and was resumed: its earlier end becomes an event on the run."""
        if self.terminal is not None:
            event = self.terminal
            root.events.append((event.type, _event_attributes(event), _ns(event.ts)))
            self.terminal = None
            root.end = None

    def _close_open(self, end: int, status: str) -> None:
        for span in self.open.values():
            span.close(end, status)
        self.open.clear()

    # -- steps ---------------------------------------------------------------

    def _new(
        self, journal_id: str, parent: _Span, name: str, kind: str, ts: int, attrs: dict[str, Any]
    ) -> _Span:
        """A span for ``journal_id``; a second start of the same id (resume) gets a new id."""
        attempt = self.attempts.get(journal_id, 0)
        self.attempts[journal_id] = attempt + 1
        previous = self.current.get(journal_id)
        if previous is not None and previous.end is None:
            self.open.pop(previous.span_id, None)
            previous.close(self.last_ts, "incomplete")
        otel_id = journal_id if attempt == 0 else _digest16(f"{journal_id}#{attempt}")
        attrs["typedmesh.run_id"] = self.run_id
        if attempt:
            attrs["typedmesh.attempt"] = attempt
        span = _Span(
            span_id=_hex_int(otel_id),
            parent=parent,
            name=name,
            kind=kind,
            start=ts,
            attributes=attrs,
        )
        self.current[journal_id] = span
        self.open[span.span_id] = span
        self.spans.append(span)
        return span

    def _step_started(self, event: Event, ts: int) -> None:
        journal_id = event.span_id or journal_span_id(self.run_id, event.path)
        parent = self.current.get(event.parent_span_id or "") or self._parent_by_path(event.path)
        agent = event.agent or {}
        step_kind = str(event.payload.get("kind", "step"))
        label = str(event.payload.get("name") or event.path.rpartition("/")[2])
        step_name = agent.get("name") or label
        attrs: dict[str, Any] = {}
        if step_kind == "agent":
            name = f"invoke_agent {step_name}"
            attrs["gen_ai.operation.name"] = "invoke_agent"
            attrs["gen_ai.agent.name"] = step_name
            if agent.get("version"):
                attrs["gen_ai.agent.version"] = agent["version"]
            if agent.get("deployment"):
                attrs["typedmesh.agent.deployment"] = agent["deployment"]
        else:
            name = step_name
        attrs["typedmesh.step.path"] = event.path
        attrs["typedmesh.step.kind"] = step_kind
        attrs["typedmesh.step.name"] = label
        span = self._new(journal_id, parent, name, "internal", ts, attrs)
        self.by_path[event.path] = span

    def _step_ended(self, event: Event, ts: int) -> None:
        span = self._owner(event)
        if span is None or span.end is not None:
            return
        self.open.pop(span.span_id, None)
        if event.type == "step.failed":
            span.fail(ts, event.payload, "RunError")
        else:
            span.close(ts, "ok")
            span.attributes.update(_usage_attributes(event.payload.get("usage")))

    def _owner(self, event: Event) -> _Span | None:
        """The span an event belongs to: by span id, else by step path."""
        if event.span_id is not None and event.span_id in self.current:
            return self.current[event.span_id]
        return self.by_path.get(event.path)

    def _parent_by_path(self, path: str) -> _Span:
        parent_path = path.rpartition("/")[0]
        found = self.by_path.get(parent_path) if parent_path else None
        assert self.root is not None
        return found or self.root

    # -- model and tool calls ------------------------------------------------

    def _effect_parent(self, event: Event) -> _Span:
        return self._owner(event) or self._parent_by_path(event.path)

    def _effect_open(self, event: Event) -> bool:
        if event.key is None:
            return False
        span = self.current.get(journal_span_id(self.run_id, event.key))
        return span is not None and span.end is None

    def _effect_span(self, event: Event) -> _Span | None:
        if event.key is None:
            return None
        span = self.current.get(journal_span_id(self.run_id, event.key))
        if span is None or span.end is not None:
            return None
        self.open.pop(span.span_id, None)
        return span

    def _model_request(self, event: Event, ts: int) -> None:
        key = event.key or f"{event.path}/model#?"
        attrs: dict[str, Any] = {"gen_ai.operation.name": "chat"}
        model = event.payload.get("model")
        if model:
            attrs["gen_ai.request.model"] = str(model)
        if event.payload.get("provider"):
            attrs["gen_ai.provider.name"] = str(event.payload["provider"])
        attrs.update(self._request_attributes(event))
        attrs["typedmesh.step.path"] = event.path
        attrs["typedmesh.effect.key"] = key
        name = f"chat {model}" if model else "chat"
        parent = self._effect_parent(event)
        self._new(journal_span_id(self.run_id, key), parent, name, "client", ts, attrs)

    def _request_attributes(self, event: Event) -> dict[str, Any]:
        try:
            text = load_payload(event, self.journal, "request")
            request = json.loads(text) if isinstance(text, str) else text
        except (JournalError, ValueError):
            return {}
        if not isinstance(request, dict):
            return {}
        attrs: dict[str, Any] = {}
        if request.get("temperature") is not None:
            attrs["gen_ai.request.temperature"] = float(request["temperature"])
        if request.get("max_tokens") is not None:
            attrs["gen_ai.request.max_tokens"] = int(request["max_tokens"])
        attrs["gen_ai.output.type"] = "json" if request.get("output_schema") else "text"
        return attrs

    def _model_ended(self, event: Event, ts: int) -> None:
        span = self._effect_span(event)
        if span is None:
            return
        if event.type == "model.error":
            span.fail(ts, event.payload, "ModelError")
            span.attributes["typedmesh.model.transient"] = bool(event.payload.get("transient"))
            return
        span.close(ts, "ok")
        try:
            response = load_payload(event, self.journal, "response")
        except JournalError:
            response = None
        if not isinstance(response, dict):
            return
        model = str(response.get("model") or "")
        if model:
            span.attributes["gen_ai.response.model"] = model
            if "gen_ai.request.model" not in span.attributes:
                # the journal's request does not name the model: what answered is the best known
                span.attributes["gen_ai.request.model"] = model
                span.name = f"chat {model}"
        usage = response.get("usage") or {}
        span.attributes["gen_ai.usage.input_tokens"] = int(usage.get("input_tokens", 0))
        span.attributes["gen_ai.usage.output_tokens"] = int(usage.get("output_tokens", 0))
        calls = [
            str(c.get("name")) for c in response.get("tool_calls") or [] if isinstance(c, dict)
        ]
        if calls:
            span.attributes["typedmesh.response.tool_calls"] = calls

    def _tool_started(self, event: Event, ts: int) -> None:
        key = event.key or f"{event.path}/tool#?"
        payload = event.payload
        tool = str(payload.get("tool") or "tool")
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool,
            "gen_ai.tool.call.id": key,
            "gen_ai.tool.type": "function",
            "typedmesh.step.path": event.path,
            "typedmesh.effect.key": key,
        }
        if payload.get("idempotency_key"):
            attrs["typedmesh.tool.idempotency_key"] = str(payload["idempotency_key"])
        if "idempotent" in payload:
            attrs["typedmesh.tool.idempotent"] = bool(payload["idempotent"])
        parent = self._effect_parent(event)
        self._new(
            journal_span_id(self.run_id, key), parent, f"execute_tool {tool}", "internal", ts, attrs
        )

    def _tool_ended(self, event: Event, ts: int) -> None:
        span = self._effect_span(event)
        if span is None:
            return
        if event.type == "tool.error":
            span.fail(ts, event.payload, "ToolError")
        else:
            span.close(ts, "ok")


# -- helpers ---------------------------------------------------------------------


def _ns(ts: str) -> int:
    """A journal timestamp (ISO 8601, UTC) in nanoseconds since the epoch."""
    moment = datetime.fromisoformat(ts)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _digest16(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _hex_int(value: str) -> int:
    return int(value, 16) or 1


def _trace_id(run_id: str) -> int:
    """The run id itself when it is 32 hex digits (uuid4().hex), else a digest of it."""
    if _HEX32.fullmatch(run_id) and int(run_id, 16):
        return int(run_id, 16)
    return int(hashlib.sha256(f"typedmesh-run:{run_id}".encode()).hexdigest()[:32], 16) or 1


def _usage_attributes(usage: Any) -> dict[str, Any]:
    if not isinstance(usage, dict):
        return {}
    attrs: dict[str, Any] = {}
    for name in ("input_tokens", "output_tokens", "model_calls", "tool_calls"):
        if isinstance(usage.get(name), int):
            attrs[f"typedmesh.usage.{name}"] = usage[name]
    if isinstance(usage.get("cost_usd"), int | float):
        attrs["typedmesh.usage.cost_usd"] = float(usage["cost_usd"])
    return attrs


def _event_attributes(event: Event) -> dict[str, Any]:
    """A journal event's payload as span-event attributes (nested values as JSON)."""
    attrs: dict[str, Any] = {}
    for name, value in event.payload.items():
        if value is None:
            continue
        if isinstance(value, str | bool | int | float):
            attrs[name] = value
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            attrs[name] = list(value)
        else:
            attrs[name] = canonical_json(value)
    if event.key is not None:
        attrs["typedmesh.effect.key"] = event.key
    attrs["typedmesh.step.path"] = event.path
    attrs["typedmesh.seq"] = event.seq
    return attrs
