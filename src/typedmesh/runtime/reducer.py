"""The one reducer: a run's trace, usage and cost, derived from its events alone.

``TraceReducer`` is an event sink. During a run it receives every event as it
is made and keeps the trace tree (steps by path, kind, agent identity,
status, duration, tokens, cost, models, notable events) and the run's usage;
``RunResult.trace`` and ``.usage`` are what it holds. ``typedmesh trace`` and
``cost``, resume (which first feeds it the journaled events) and the
OpenTelemetry export use the same reducer on a journal's events, so a trace
never differs between a live run and its journal.

Cost is what was recorded when the call was made, never re-priced.

A run that crashed leaves steps started but never finished: they are marked
``incomplete``. Steps still open when the run failed were cancelled with it.
On a resumed run a step that is started again is the same node, started over.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from ..contracts import AgentIdentity
from ..journal.base import Journal
from ..journal.events import Event
from ..journal.verify import load_payload
from ..models.base import Usage
from .kinds import kind_of_event
from .trace import TraceNode

__all__ = [
    "TraceReducer",
    "step_outputs",
    "trace_from_events",
    "trace_to_dict",
]

_TOOL_OUTCOMES = frozenset({"tool.result", "tool.error"})
_LIFECYCLE = frozenset(
    {
        "run.started",
        "run.resumed",
        "run.finished",
        "run.failed",
        "run.suspended",
        "step.started",
        "step.completed",
        "step.failed",
        "step.cancelled",
    }
)


def _is_record(event: Event) -> bool:
    """Whether an event is a ``ctx.record`` note (shown on its node) rather than an effect."""
    kind = event.type
    return kind not in _LIFECYCLE and kind_of_event(kind) is None


def _recorded_usage(event: Event, journal: Journal | None) -> Usage:
    """The usage and cost a ``model.response`` recorded when the call was made."""
    usage = event.payload.get("usage")
    if not isinstance(usage, dict):  # journal format 1: inside the response itself
        response = load_payload(event, journal, "response") if journal is not None else None
        usage = (response or {}).get("usage") if isinstance(response, dict) else None
        usage = usage if isinstance(usage, dict) else {}
    return Usage(
        input_tokens=int(usage.get("input_tokens", 0)),
        output_tokens=int(usage.get("output_tokens", 0)),
        model_calls=1,
        cost_usd=float(usage.get("cost_usd", 0.0)),
    )


def add_usage(total: Usage, usage: Usage) -> None:
    """``total += usage`` in place; the counters are plain ints, so skip pydantic's setattr."""
    fields = total.__dict__
    fields["input_tokens"] += usage.input_tokens
    fields["output_tokens"] += usage.output_tokens
    fields["model_calls"] += usage.model_calls
    fields["tool_calls"] += usage.tool_calls
    fields["cost_usd"] += usage.cost_usd


def _identity(agent: dict[str, str] | None) -> AgentIdentity | None:
    return AgentIdentity.model_validate(agent) if agent else None


class TraceReducer:
    """Folds a run's events into its trace tree and usage; an event sink."""

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal
        self.t0: datetime | None = None
        self.root: TraceNode | None = None
        self.nodes: dict[str, TraceNode] = {}
        self.tool_names: dict[str, str] = {}
        self.tool_outcomes: set[str] = set()
        self.requested: dict[str, str] = {}
        self.usage = Usage()
        """What the whole run has spent: every model response and tool result recorded."""
        self.by_model: dict[str, Usage] = {}

    def accept(self, event: Event, blobs: Mapping[str, bytes]) -> None:
        self.add(event)

    def clock(self, ts: str) -> float:
        """Seconds since the run started (small floats keep durations exact)."""
        moment = datetime.fromisoformat(ts)
        if self.t0 is None:
            self.t0 = moment
        return (moment - self.t0).total_seconds()

    def load(self, event: Event, name: str) -> Any:
        if event.resolved or self.journal is None:
            return event.payload.get(name)
        return load_payload(event, self.journal, name)

    def owner(self, path: str) -> TraceNode | None:
        """The node at ``path``, or its nearest ancestor that is a node (tool contexts)."""
        while path:
            node = self.nodes.get(path)
            if node is not None:
                return node
            path = path.rpartition("/")[0]
        return self.root

    def start(self, event: Event, name: str, kind: str) -> TraceNode:
        node = self.nodes.get(event.path)
        if node is None:
            parent = self.owner(event.path.rpartition("/")[0])
            node = TraceNode(name=name, kind=kind, path=event.path, started=0.0)
            if parent is None:
                self.root = node
            else:
                parent.children.append(node)
            self.nodes[event.path] = node
            node.started_at = datetime.fromisoformat(event.ts)
        else:  # started again after a resume: its notes are written again, but a
            # served tool call writes nothing, so its outcome stays
            node.events[:] = [e for e in node.events if e["event"] in _TOOL_OUTCOMES]
        node.name, node.kind = name, kind
        node.identity = _identity(event.agent) or node.identity
        node.status, node.error, node.ended = "running", None, None
        node.started = self.clock(event.ts)
        return node

    def add(self, event: Event) -> None:
        payload = event.payload
        if event.type == "run.started":
            if self.root is None:
                kind = str(payload.get("kind", "flow"))
                self.start(event, str(payload.get("flow", event.path)), kind)
        elif event.type == "step.started":
            self.start(event, str(payload.get("name", event.path)), str(payload.get("kind", "")))
        elif event.type in ("step.completed", "step.failed", "step.cancelled"):
            node = self.nodes.get(event.path)
            if node is None:
                return
            duration = payload.get("duration_ms")
            if isinstance(duration, int | float):
                node.ended = node.started + duration / 1000
            else:
                node.ended = self.clock(event.ts)
            if event.type == "step.completed":
                node.status = "ok"
                node.output = event.attachment
            elif event.type == "step.cancelled":
                node.status, node.error = "cancelled", "cancelled"
            else:
                node.status = "failed"
                node.error = f"{payload.get('type', 'Error')}: {payload.get('message', '')}"
        elif event.type == "model.request" and event.key:
            self.requested[event.key] = str(payload.get("model") or "")
        elif event.type == "model.response" or (event.type == "model.error" and "usage" in payload):
            self.model_response(event)
        elif event.type == "tool.started" and event.key:
            self.tool_names[event.key] = str(payload.get("tool", ""))
        elif event.type in _TOOL_OUTCOMES:
            self.tool_outcome(event)
        elif _is_record(event):
            node = self.owner(event.path)
            if node is not None:
                data = {name: self.load(event, name) for name in payload}
                data["event"] = event.type
                node.events.append(data)

    def model_response(self, event: Event) -> None:
        usage = _recorded_usage(event, self.journal)
        name = self.requested.get(event.key or "") or str(event.payload.get("served_model") or "")
        if not name and not event.resolved and self.journal is not None:  # format 1
            response = load_payload(event, self.journal, "response")
            name = str(response.get("model") or "") if isinstance(response, dict) else ""
        node = self.owner(event.path)
        if node is not None:
            add_usage(node.usage, usage)
            if name and name not in node.models:
                node.models.append(name)
        add_usage(self.usage, usage)
        key = name or "(unnamed)"
        if key not in self.by_model:
            self.by_model[key] = Usage()
        add_usage(self.by_model[key], usage)

    def tool_outcome(self, event: Event) -> None:
        """A tool call's result or error, noted once per call as a live trace notes it.

        Journals written before ``call_tool`` stopped journaling its own note
        hold a second ``tool.result``/``tool.error`` per call: the key dedupes.
        """
        key = event.key or ""
        node = self.owner(event.path)
        if node is None or key in self.tool_outcomes:
            return
        self.tool_outcomes.add(key)
        payload = event.payload
        tool = str(payload.get("tool") or self.tool_names.get(key, ""))
        note: dict[str, Any] = {"event": event.type, "key": key, "tool": tool}
        if event.type == "tool.error":
            note["error"] = str(payload.get("error") or payload.get("message", ""))
        else:
            node.usage.__dict__["tool_calls"] += 1
            self.usage.__dict__["tool_calls"] += 1
        node.events.append(note)

    def finish(self, last: Event) -> TraceNode:
        if self.root is None:
            raise ValueError("a run's events must start with run.started or step.started")
        open_status = "cancelled" if last.type == "run.failed" else "incomplete"
        for node in self.root.walk():
            if node.status == "running":
                node.status = open_status
        if last.type == "run.failed" and self.root.status == "cancelled":
            payload = last.payload
            self.root.status = "failed"
            self.root.error = f"{payload.get('type', 'Error')}: {payload.get('message', '')}"
        return self.root


def trace_from_events(events: list[Event], journal: Journal) -> TraceNode:
    """The trace tree of a journaled run, from its events (blobs read from ``journal``)."""
    return reduce_events(events, journal).finish(events[-1])


def reduce_events(events: list[Event], journal: Journal) -> TraceReducer:
    """A reducer fed every event of a journaled run."""
    if not events:
        raise ValueError("no events")
    reducer = TraceReducer(journal)
    for event in events:
        reducer.add(event)
    return reducer


def step_outputs(events: Iterable[Event], journal: Journal) -> dict[str, Any]:
    """The JSON output of every completed step, by path (the last one wins on resume)."""
    return {
        event.path: load_payload(event, journal, "output")
        for event in events
        if event.type == "step.completed"
    }


def trace_to_dict(root: TraceNode, outputs: dict[str, Any]) -> dict[str, Any]:
    """``root.to_dict()`` with each step's journaled JSON output filled in."""

    def fill(node: dict[str, Any]) -> dict[str, Any]:
        node["output"] = outputs.get(node["path"], node["output"])
        for child in node["children"]:
            fill(child)
        return node

    return fill(root.to_dict())
