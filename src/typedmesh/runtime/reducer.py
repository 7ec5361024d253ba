"""Rebuild a journaled run's trace tree and usage from its events alone.

``trace_from_events`` gives the same ``TraceNode`` tree a live run returns
(steps by path, kind, agent identity, status, duration, tokens, cost, models,
notable events), so ``typedmesh trace`` and ``typedmesh cost`` need nothing
but the journal. Step outputs stay in the journal (``step_outputs``): a
``TraceNode`` holds typed outputs, and the journal only has their JSON.

A run that crashed leaves steps started but never finished: they are marked
``incomplete``. Steps still open when the run failed were cancelled with it.
On a resumed run a step that is started again is the same node, started over.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from ..contracts import AgentIdentity
from ..models.base import Usage
from ..models.pricing import cost_of
from ..runtime.trace import TraceNode
from .base import Journal
from .events import Event
from .verify import load_payload

__all__ = [
    "step_outputs",
    "trace_from_events",
    "trace_to_dict",
    "usage_by_model",
    "usage_from_events",
]

_EFFECT_TYPES = frozenset(
    {"model.request", "model.response", "model.error", "tool.started", "clock", "random"}
)
_TOOL_OUTCOMES = frozenset({"tool.result", "tool.error"})


def _is_record(event: Event) -> bool:
    """Whether an event is a ``ctx.record`` note (shown on its node) rather than an effect."""
    kind = event.type
    return not (
        kind.startswith(("run.", "step.")) or kind in _EFFECT_TYPES or kind in _TOOL_OUTCOMES
    )


def _response_usage(response: Any) -> tuple[str, Usage]:
    """The model name and priced usage of one journaled ``model.response``."""
    if not isinstance(response, dict):
        return "", Usage()
    name = str(response.get("model") or "")
    usage = response.get("usage") or {}
    tokens_in = int(usage.get("input_tokens", 0))
    tokens_out = int(usage.get("output_tokens", 0))
    return name, Usage(
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        model_calls=1,
        cost_usd=cost_of(name, tokens_in, tokens_out) if name else 0.0,
    )


def _identity(agent: dict[str, str] | None) -> AgentIdentity | None:
    return AgentIdentity.model_validate(agent) if agent else None


class _Builder:
    def __init__(self, journal: Journal, t0: datetime) -> None:
        self.journal = journal
        self.t0 = t0
        self.root: TraceNode | None = None
        self.nodes: dict[str, TraceNode] = {}
        self.tool_names: dict[str, str] = {}
        self.tool_outcomes: set[str] = set()

    def clock(self, ts: str) -> float:
        """Seconds since the run started (small floats keep durations exact)."""
        return (datetime.fromisoformat(ts) - self.t0).total_seconds()

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
            node = TraceNode(name=name, kind=kind, path=event.path)
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
        elif event.type in ("step.completed", "step.failed"):
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
            else:
                node.status = "failed"
                node.error = f"{payload.get('type', 'Error')}: {payload.get('message', '')}"
        elif event.type == "model.response":
            node = self.owner(event.path)
            name, usage = _response_usage(load_payload(event, self.journal, "response"))
            if node is not None:
                node.usage = node.usage + usage
                if name and name not in node.models:
                    node.models.append(name)
        elif event.type == "tool.started" and event.key:
            self.tool_names[event.key] = str(payload.get("tool", ""))
        elif event.type in _TOOL_OUTCOMES:
            self.tool_outcome(event)
        elif _is_record(event):
            node = self.owner(event.path)
            if node is not None:
                data = {name: load_payload(event, self.journal, name) for name in payload}
                data["event"] = event.type
                node.events.append(data)

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
            node.usage = node.usage + Usage(tool_calls=1)
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
    if not events:
        raise ValueError("no events")
    builder = _Builder(journal, datetime.fromisoformat(events[0].ts))
    for event in events:
        builder.add(event)
    return builder.finish(events[-1])


def step_outputs(events: Iterable[Event], journal: Journal) -> dict[str, Any]:
    """The JSON output of every completed step, by path (the last one wins on resume)."""
    return {
        event.path: load_payload(event, journal, "output")
        for event in events
        if event.type == "step.completed"
    }


def usage_by_model(events: Iterable[Event], journal: Journal) -> dict[str, Usage]:
    """Tokens, calls and cost of every model response in the journal, by model name."""
    totals: dict[str, Usage] = {}
    for event in events:
        if event.type == "model.response":
            name, usage = _response_usage(load_payload(event, journal, "response"))
            key = name or "(unnamed)"
            totals[key] = totals.get(key, Usage()) + usage
    return totals


def usage_from_events(events: list[Event], journal: Journal) -> Usage:
    """What the run spent in total: model usage and cost plus tool calls."""
    total = Usage()
    for usage in usage_by_model(events, journal).values():
        total = total + usage
    tools = {e.key for e in events if e.type == "tool.result"}
    return total + Usage(tool_calls=len(tools))


def trace_to_dict(root: TraceNode, outputs: dict[str, Any]) -> dict[str, Any]:
    """``root.to_dict()`` with each step's journaled JSON output filled in."""

    def fill(node: dict[str, Any]) -> dict[str, Any]:
        node["output"] = outputs.get(node["path"], node["output"])
        for child in node["children"]:
            fill(child)
        return node

    return fill(root.to_dict())
