"""Export a journaled run as OpenTelemetry spans (GenAI semantic conventions).

``export_run(journal, run_id)`` reads a run's events and hands one span per
boundary to a ``TracerProvider``: the run (``invoke_workflow {flow}``), each
step (``invoke_agent {agent}`` for agents, the step's name for patterns and
functions), each model call (``chat {model}``) and each tool call
(``execute_tool {tool}``). Times come from the journal, not from the export,
so a run can be exported any time after it happened, as often as wanted.

The spans are a rendering of what the run's one reducer (``TraceReducer``,
the same that gives ``RunResult.trace``, ``typedmesh trace`` and ``cost``)
folded from the events: a step's attempts, each model and tool call, the
events shown on them. ``export_reduced`` renders a reducer fed some other
way, e.g. subscribed to a live run.

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
from .models.base import Usage
from .runtime.context import span_id as journal_span_id
from .runtime.reducer import TraceReducer, reduce_events
from .runtime.trace import Attempt, EffectCall, TraceNode

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = ["export_reduced", "export_run"]

SCOPE = "typedmesh.telemetry"
"""The instrumentation scope of exported spans."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HEX32 = re.compile(r"[0-9a-f]{32}")
_ids_lock = threading.Lock()


@dataclass(slots=True, eq=False)
class _Span:
    """One span, built from the journal before anything is handed to OpenTelemetry."""

    span_id: int
    parent: _Span | None
    name: str
    kind: str  # "internal" or "client"
    seq: int
    """The journal sequence number of the event that started it: spans start in this order."""
    start: int
    attributes: dict[str, Any]
    end: int | None = None
    error: tuple[str, str] | None = None
    events: list[tuple[str, dict[str, Any], int]] = field(default_factory=list)

    def close(self, end: int, status: str) -> None:
        self.end = end
        self.attributes["typedmesh.status"] = status

    def fail(self, end: int, error: tuple[str, str], default_type: str) -> None:
        error_type = error[0] or default_type
        self.close(end, "failed")
        self.error = (error_type, error[1])
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
    _load_otel()
    events = journal.read(run_id)
    if not events:
        return 0
    return export_reduced(reduce_events(events, journal), tracer_provider=tracer_provider)


def export_reduced(reducer: TraceReducer, *, tracer_provider: TracerProvider | None = None) -> int:
    """Export the run ``reducer`` folded; returns how many spans were exported.

    The reducer may have been fed a journal's events (``export_run``) or a
    run's events as they were made (a ``TraceReducer`` in ``subscribers``):
    the spans are the same. What is still open is ended as the reducer's
    ``finish`` ends it. Otherwise as ``export_run``.
    """
    otel = _load_otel()
    spans = _build(reducer)
    provider = tracer_provider if tracer_provider is not None else otel.trace.get_tracer_provider()
    from . import __version__

    tracer = provider.get_tracer(SCOPE, __version__)
    exported = _emit(otel, tracer, _trace_id(reducer.run_id), spans)
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


# -- the reducer's result -> spans -------------------------------------------------


def _build(reducer: TraceReducer) -> list[_Span]:
    """The spans of what ``reducer`` folded, in start order (a parent before its children)."""
    root = reducer.root
    first = reducer.first
    if root is None or first is None:
        return []
    reducer.finish()
    run_id = reducer.run_id
    run = _run_span(reducer, first)
    spans = [run]
    of_node: dict[int, list[_Span]] = {}
    """Each node's spans, one per attempt."""
    parents: dict[int, TraceNode] = {}
    for node in root.walk():
        for child in node.children:
            parents[id(child)] = node
        up = parents.get(id(node))
        own = of_node[id(node)] = []
        for number, attempt in enumerate(node.attempts):
            parent = run if up is None or attempt.parent < 0 else of_node[id(up)][attempt.parent]
            span = _step_span(run_id, node, number, attempt, parent)
            own.append(span)
            spans.append(span)
    for call in reducer.calls:
        owner = call.node
        parent = run if owner is None or call.attempt < 0 else of_node[id(owner)][call.attempt]
        spans.append(_call_span(reducer, call, parent))
    spans.sort(key=lambda span: span.seq)
    return spans


def _run_span(reducer: TraceReducer, first: Event) -> _Span:
    flow = str(first.payload.get("flow") or first.path)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "invoke_workflow",
        "gen_ai.workflow.name": flow,
        "typedmesh.run_id": reducer.run_id,
        "typedmesh.flow": flow,
    }
    if first.type == "run.started" and first.payload.get("kind"):
        attributes["typedmesh.step.kind"] = str(first.payload["kind"])
    span = _Span(
        span_id=_hex_int(journal_span_id(reducer.run_id, "")),
        parent=None,
        name=f"invoke_workflow {flow}",
        kind="internal",
        seq=first.seq,
        start=_ns(first.ts),
        attributes=attributes,
        events=_notes(reducer.notes),
    )
    terminal = reducer.terminal
    if terminal is None:
        span.close(_ns(reducer.last_ts), "incomplete")
    elif terminal.type == "run.failed":
        span.fail(_ns(terminal.ts), _error_of(terminal.payload), "RunError")
        if terminal.payload.get("step_path"):
            attributes["typedmesh.error.step_path"] = terminal.payload["step_path"]
    else:
        span.close(_ns(terminal.ts), "ok")
    attributes.update(_usage_attributes(reducer.usage))
    return span


def _step_span(run_id: str, node: TraceNode, number: int, attempt: Attempt, parent: _Span) -> _Span:
    agent = attempt.agent or {}
    label = node.name if node.name != node.path else node.path.rpartition("/")[2]
    step_kind = node.kind or "step"
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
    attrs["typedmesh.step.path"] = node.path
    attrs["typedmesh.step.kind"] = step_kind
    attrs["typedmesh.step.name"] = label
    journal_id = attempt.span_id or journal_span_id(run_id, node.path)
    span = _new(run_id, journal_id, number, parent, name, "internal", attempt.seq, attempt.started)
    span.attributes.update(attrs)
    span.events = _notes(attempt.notes)
    _end(span, attempt.ended, attempt.status, attempt.error, "RunError")
    if attempt.status == "ok":
        span.attributes.update(_usage_attributes(node.total_usage()))
    return span


def _call_span(reducer: TraceReducer, call: EffectCall, parent: _Span) -> _Span:
    run_id = reducer.run_id
    journal_id = journal_span_id(run_id, call.key)
    attrs: dict[str, Any]
    if call.kind == "model":
        model = call.model or (call.served_model if call.status == "ok" else "")
        attrs = {"gen_ai.operation.name": "chat"}
        if model:  # a request that does not name the model: what answered is the best known
            attrs["gen_ai.request.model"] = model
        if call.provider:
            attrs["gen_ai.provider.name"] = call.provider
        attrs.update(_request_attributes(reducer, call))
        name, kind, default = (f"chat {model}" if model else "chat"), "client", "ModelError"
    else:
        tool = call.tool or "tool"
        attrs = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool,
            "gen_ai.tool.call.id": call.key,
            "gen_ai.tool.type": "function",
        }
        if call.idempotency_key:
            attrs["typedmesh.tool.idempotency_key"] = str(call.idempotency_key)
        if call.idempotent is not None:
            attrs["typedmesh.tool.idempotent"] = call.idempotent
        if call.in_doubt:
            attrs["typedmesh.tool.in_doubt"] = call.in_doubt
        name, kind, default = f"execute_tool {tool}", "internal", "ToolError"
    attrs["typedmesh.step.path"] = call.path
    attrs["typedmesh.effect.key"] = call.key
    span = _new(run_id, journal_id, call.number, parent, name, kind, call.seq, call.started)
    span.attributes.update(attrs)
    _end(span, call.ended, call.status, call.error, default)
    if call.kind == "model":
        if call.transient is not None:
            span.attributes["typedmesh.model.transient"] = call.transient
        if call.served_model:
            span.attributes["gen_ai.response.model"] = call.served_model
        if call.usage is not None:
            span.attributes["gen_ai.usage.input_tokens"] = call.usage.input_tokens
            span.attributes["gen_ai.usage.output_tokens"] = call.usage.output_tokens
        requested = _tool_calls(reducer, call)
        if requested:
            span.attributes["typedmesh.response.tool_calls"] = requested
    return span


def _new(
    run_id: str,
    journal_id: str,
    number: int,
    parent: _Span,
    name: str,
    kind: str,
    seq: int,
    started: str,
) -> _Span:
    """A span for the ``number``-th start of ``journal_id``; a start after the first
    (a resumed run started it again) gets an id of its own."""
    otel_id = journal_id if number == 0 else _digest16(f"{journal_id}#{number}")
    attrs: dict[str, Any] = {"typedmesh.run_id": run_id}
    if number:
        attrs["typedmesh.attempt"] = number
    return _Span(
        span_id=_hex_int(otel_id),
        parent=parent,
        name=name,
        kind=kind,
        seq=seq,
        start=_ns(started),
        attributes=attrs,
    )


def _end(
    span: _Span, ended: str | None, status: str, error: tuple[str, str] | None, default: str
) -> None:
    end = _ns(ended) if ended else span.start
    if status == "failed":
        span.fail(end, error or ("", ""), default)
    else:
        span.close(end, status)


def _request_attributes(reducer: TraceReducer, call: EffectCall) -> dict[str, Any]:
    """What the model request asked for, decoded from its event now, not during the run."""
    request = _decoded(reducer, call.request, "request")
    if not isinstance(request, dict):
        return {}
    attrs: dict[str, Any] = {}
    if request.get("temperature") is not None:
        attrs["gen_ai.request.temperature"] = float(request["temperature"])
    if request.get("max_tokens") is not None:
        attrs["gen_ai.request.max_tokens"] = int(request["max_tokens"])
    attrs["gen_ai.output.type"] = "json" if request.get("output_schema") else "text"
    return attrs


def _tool_calls(reducer: TraceReducer, call: EffectCall) -> list[str]:
    """The names of the tools the model's response asked for."""
    response = _decoded(reducer, call.response, "response")
    if not isinstance(response, dict):
        return []
    return [str(c.get("name")) for c in response.get("tool_calls") or [] if isinstance(c, dict)]


def _decoded(reducer: TraceReducer, event: Event | None, name: str) -> Any:
    """A payload field as JSON: a live event holds it as text, a journaled one decoded."""
    if event is None:
        return None
    try:
        value = reducer.load(event, name)
        return json.loads(value) if isinstance(value, str) else value
    except (JournalError, ValueError):
        return None


def _notes(events: list[Event]) -> list[tuple[str, dict[str, Any], int]]:
    return [(event.type, _event_attributes(event), _ns(event.ts)) for event in events]


def _error_of(payload: dict[str, Any]) -> tuple[str, str]:
    return str(payload.get("type") or ""), str(payload.get("message") or payload.get("error") or "")


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


def _usage_attributes(usage: Usage) -> dict[str, Any]:
    return {
        "typedmesh.usage.input_tokens": usage.input_tokens,
        "typedmesh.usage.output_tokens": usage.output_tokens,
        "typedmesh.usage.model_calls": usage.model_calls,
        "typedmesh.usage.tool_calls": usage.tool_calls,
        "typedmesh.usage.cost_usd": float(usage.cost_usd),
    }


def _stored_payload(event: Event) -> dict[str, Any]:
    """The payload as the journal stores it: a large value is its blob's digest there."""
    payload = event.payload
    if not event.resolved or not event.refs:
        return payload
    stored = dict(payload)
    for name, ref in event.refs.items():
        stored[name] = len(ref[1]) if ref[0] == "parts" else ref[0]
    return stored


def _event_attributes(event: Event) -> dict[str, Any]:
    """A journal event's payload as span-event attributes (nested values as JSON)."""
    attrs: dict[str, Any] = {}
    for name, value in _stored_payload(event).items():
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
