"""The one reducer: a run's trace, usage and cost, derived from its events alone.

``TraceReducer`` is an event sink. During a run it receives every event as it
is made and keeps the trace tree (steps by path, kind, agent identity,
status, duration, tokens, cost, models, notable events) and the run's usage;
``RunResult.trace`` and ``.usage`` are what it holds. ``typedmesh trace`` and
``cost``, resume (which first feeds it the journaled events) and the
OpenTelemetry export use the same reducer on a journal's events, so a trace
never differs between a live run and its journal.

For the export it also keeps what spans need and the tree does not show:
each start of a step (``TraceNode.attempts``), each model and tool call
(``calls``: key, times, status, usage, error, in doubt), the events shown on
them (``Attempt.notes``, ``notes`` for the run itself) and how the run ended
(``terminal``). Times stay the journal's text; nothing is decoded or parsed
for them while a run goes.

Cost is what was recorded when the call was made, never re-priced.

A run that crashed leaves steps started but never finished: they are marked
``incomplete``. Steps still open when the run failed were cancelled with it.
On a resumed run a step that is started again is the same node, started over,
with a second attempt; the first attempt stays ``incomplete``.
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
from .trace import Attempt, EffectCall, TraceNode

__all__ = [
    "TraceReducer",
    "reduce_events",
    "step_outputs",
    "trace_from_events",
    "trace_to_dict",
]

_TOOL_OUTCOMES = frozenset({"tool.result", "tool.error"})
_APPROVAL_NOTES = frozenset({"approval.waiting", "approval.approved", "approval.denied"})
_KEPT_ON_RESTART = _TOOL_OUTCOMES | _APPROVAL_NOTES
"""Notes a step keeps when a resume starts it over: served calls write nothing again."""
_STEP_ENDS = frozenset({"step.completed", "step.failed", "step.cancelled"})
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


def _usage(fields: Any) -> Usage:
    """The usage and cost one model call recorded."""
    usage = fields if isinstance(fields, dict) else {}
    return Usage(
        input_tokens=int(usage.get("input_tokens", 0)),
        output_tokens=int(usage.get("output_tokens", 0)),
        model_calls=1,
        cost_usd=float(usage.get("cost_usd", 0.0)),
        estimated_calls=int(usage.get("estimated_calls", 0)),
    )


def _error(payload: dict[str, Any]) -> tuple[str, str]:
    """A recorded failure: (type, message), as its event's payload gives them."""
    return str(payload.get("type") or ""), str(payload.get("message") or payload.get("error") or "")


def add_usage(total: Usage, usage: Usage) -> None:
    """``total += usage`` in place; the counters are plain ints, so skip pydantic's setattr."""
    fields = total.__dict__
    fields["input_tokens"] += usage.input_tokens
    fields["output_tokens"] += usage.output_tokens
    fields["model_calls"] += usage.model_calls
    fields["tool_calls"] += usage.tool_calls
    fields["cost_usd"] += usage.cost_usd
    fields["estimated_calls"] += usage.estimated_calls


def _identity(agent: dict[str, str] | None) -> AgentIdentity | None:
    return AgentIdentity.model_validate(agent) if agent else None


class TraceReducer:
    """Folds a run's events into its trace tree, usage and calls; an event sink."""

    wants_bytes = False
    """It reads payloads only: a run it alone follows is not serialized."""

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal
        self.t0: datetime | None = None
        self.root: TraceNode | None = None
        self.nodes: dict[str, TraceNode] = {}
        self.tool_outcomes: set[str] = set()
        self.tool_arguments: dict[str, Any] = {}  # by call key, for the trace's tool notes
        self.usage = Usage()
        """What the whole run has spent: every model response and tool result recorded."""
        self.by_model: dict[str, Usage] = {}
        self.run_id = ""
        self.first: Event | None = None
        """The run's first event (``run.started``): where the run's span starts."""
        self.last: Event | None = None
        self.last_ts = ""
        """The latest timestamp seen: where whatever a crash cut off ends."""
        self.terminal: Event | None = None
        """``run.finished`` or ``run.failed``, unless a resume came after it."""
        self.notes: list[Event] = []
        """Events shown on the run itself: resumes, and the ends a resume undid."""
        self.calls: list[EffectCall] = []
        """Every model and tool call, in the order they started."""
        self.latest: dict[str, EffectCall] = {}
        """The latest call for each effect key."""
        self.state_writes: dict[str, tuple[str, str]] = {}
        """Each state write's (op, state key), by effect key, until its outcome."""
        self.approvals: dict[str, str] = {}
        """The tool each approval asked about, by the approval's effect key."""

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

    def fields(self, event: Event) -> dict[str, Any]:
        """An event's payload with blob references resolved (the payload itself when live)."""
        if event.resolved or self.journal is None:
            return dict(event.payload)
        return {name: load_payload(event, self.journal, name) for name in event.payload}

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
            node.events[:] = [e for e in node.events if e["event"] in _KEPT_ON_RESTART]
            parent = None if node is self.root else self.owner(event.path.rpartition("/")[0])
        node.name, node.kind = name, kind
        node.identity = _identity(event.agent) or node.identity
        node.status, node.error, node.ended = "running", None, None
        node.started = self.clock(event.ts)
        if event.type == "step.started":
            attempts = node.attempts
            if attempts and attempts[-1].status == "running":  # started again, no resume between
                attempts[-1].ended, attempts[-1].status = self.last_ts, "incomplete"
            under = -1 if parent is None else len(parent.attempts) - 1
            attempts.append(Attempt(event.seq, event.ts, under, event.span_id, event.agent))
        return node

    def add(self, event: Event) -> None:
        kind = event.type
        payload = event.payload
        if self.first is None:
            self.first, self.run_id = event, event.run_id
        if kind == "run.started":
            if self.root is None:
                flow_kind = str(payload.get("kind", "flow"))
                self.start(event, str(payload.get("flow", event.path)), flow_kind)
        elif kind == "step.started":
            self.start(event, str(payload.get("name", event.path)), str(payload.get("kind", "")))
        elif kind in _STEP_ENDS:
            self.step_ended(event)
        elif kind == "model.request":
            self.call_started(event, "model")
        elif kind == "model.response" or kind == "model.error":
            self.model_outcome(event)
        elif kind == "tool.started":
            self.call_started(event, "tool")
        elif kind in _TOOL_OUTCOMES:
            self.tool_outcome(event)
        elif kind == "state.write":
            self.state_writes[event.key or ""] = (str(payload.get("op")), str(payload.get("key")))
            self.attach(self.owner(event.path), event)
        elif kind == "state.written" or kind == "state.conflict":
            self.state_outcome(event)
        elif kind.startswith("approval."):
            self.approval(event)
        elif kind == "run.finished" or kind == "run.failed":
            if self.terminal is not None:  # two ends with no resume between: keep both
                self.notes.append(self.terminal)
            self.terminal = event
        elif kind == "run.resumed":
            self.close_open(self.last_ts, "incomplete" if self.terminal is None else "cancelled")
            if self.terminal is not None:  # the end the resume undid stays as a note
                self.notes.append(self.terminal)
                self.terminal = None
            self.notes.append(event)
        else:
            self.note(event)
        self.last = event
        if event.ts > self.last_ts:
            self.last_ts = event.ts

    def step_ended(self, event: Event) -> None:
        node = self.nodes.get(event.path)
        if node is None:
            return
        payload = event.payload
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
        attempt = node.attempts[-1] if node.attempts else None
        if attempt is not None and attempt.status == "running":
            attempt.ended, attempt.status = event.ts, node.status
            if node.status == "failed":
                attempt.error = _error(payload)

    def state_outcome(self, event: Event) -> None:
        """A state write's outcome, on its step: which key, the version made, or the conflict."""
        node = self.owner(event.path)
        op, key = self.state_writes.pop(event.key or "", ("write", "?"))
        note: dict[str, Any] = {"event": event.type, "op": op, "key": key}
        payload = event.payload
        if event.type == "state.written":
            result = payload.get("result")
            if isinstance(result, dict) and "version" in result:
                note["version"] = result["version"]
        else:
            note["error"] = f"{payload.get('type', 'Error')}: {payload.get('message', '')}"
        if node is not None:
            node.events.append(note)
        self.attach(node, event)

    def approval(self, event: Event) -> None:
        """A tool call's approval, on its step: waiting, then approved or denied and by whom."""
        node = self.owner(event.path)
        key = event.key or ""
        payload = event.payload
        call = key.removesuffix(":approval")
        tool = self.approvals.get(key, "")
        if event.type == "approval.requested":
            self.approvals[key] = str(payload.get("tool") or "")
        elif node is not None and event.type == "approval.waiting":
            node.events.append({"event": event.type, "call": call, "tool": tool})
        elif node is not None and event.type == "approval.decided":
            waited = {"event": "approval.waiting", "call": call, "tool": tool}
            node.events[:] = [e for e in node.events if e != waited]  # decided: no longer waits
            node.events.append(
                {
                    "event": "approval.approved" if payload.get("approved") else "approval.denied",
                    "call": call,
                    "tool": tool,
                    "by": payload.get("by"),
                    "reason": payload.get("reason"),
                    "at": payload.get("decided_at"),
                }
            )
        self.attach(node, event)

    def note(self, event: Event) -> None:
        """Any other event: a record on its node, and a note on what was running then."""
        node = self.owner(event.path)
        if node is not None and _is_record(event):
            data = self.fields(event)
            data["event"] = event.type
            node.events.append(data)
            if event.type == "tool.in_doubt" and event.key in self.latest:
                self.latest[event.key].in_doubt = str(event.payload.get("resolution") or "")
        self.attach(node, event)

    def attach(self, node: TraceNode | None, event: Event) -> None:
        """Show ``event`` on the current attempt of ``node`` (or on the run)."""
        if node is not None and node.attempts:
            node.attempts[-1].notes.append(event)
        else:
            self.notes.append(event)

    def close_open(self, ts: str, status: str) -> None:
        """End every attempt and call still running (a crash, or the run's end, cut them off)."""
        if self.root is not None:
            for node in self.root.walk():
                if node.attempts and node.attempts[-1].status == "running":
                    node.attempts[-1].ended, node.attempts[-1].status = ts, status
        for call in self.latest.values():
            if call.status == "running":
                call.ended, call.status = ts, status

    def call_started(self, event: Event, kind: str) -> EffectCall:
        key = event.key or f"{event.path}/{kind}#?"
        previous = self.latest.get(key)
        if previous is not None and previous.status == "running":  # started again
            previous.ended, previous.status = self.last_ts, "incomplete"
        node = self.owner(event.path)
        attempt = len(node.attempts) - 1 if node is not None else -1
        number = 0 if previous is None else previous.number + 1
        payload = event.payload
        if kind == "model":
            call = EffectCall(
                kind,
                key,
                event.path,
                event.seq,
                event.ts,
                node,
                attempt,
                number,
                model=str(payload.get("model") or ""),
                provider=str(payload.get("provider") or ""),
                request=event,
            )
        else:
            self.tool_arguments[key] = self.load(event, "arguments")
            idempotent = payload.get("idempotent")
            call = EffectCall(
                kind,
                key,
                event.path,
                event.seq,
                event.ts,
                node,
                attempt,
                number,
                tool=str(payload.get("tool") or ""),
                idempotency_key=payload.get("idempotency_key"),
                idempotent=None if idempotent is None else bool(idempotent),
            )
        self.latest[key] = call
        self.calls.append(call)
        return call

    def model_outcome(self, event: Event) -> None:
        payload = event.payload
        latest = self.latest.get(event.key) if event.key else None
        usage: Usage | None = None
        served = payload.get("served_model")
        if event.type == "model.response" or "usage" in payload:
            fields = payload.get("usage")
            if (
                (not isinstance(fields, dict) or "served_model" not in payload)
                and event.type == "model.response"
                and not event.resolved
                and self.journal is not None
            ):  # journal format 1: usage and model inside the response itself
                response = load_payload(event, self.journal, "response")
                if isinstance(response, dict):
                    fields = fields if isinstance(fields, dict) else response.get("usage")
                    served = served or response.get("model")
            usage = _usage(fields)
            self.count(event, usage, (latest.model if latest else "") or str(served or ""))
        if latest is None or latest.status != "running":
            return
        latest.ended, latest.usage = event.ts, usage
        if event.type == "model.error":
            latest.status, latest.error = "failed", _error(payload)
            latest.transient = bool(payload.get("transient"))
        else:
            latest.status, latest.served_model, latest.response = "ok", str(served or ""), event

    def count(self, event: Event, usage: Usage, name: str) -> None:
        """Add one model call's recorded usage to its node, the run and its model."""
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
        payload = event.payload
        key = event.key or ""
        node = self.owner(event.path)
        call = self.latest.get(key) if key else None
        if call is not None and call.status == "running":
            call.ended = event.ts
            if event.type == "tool.error":
                call.status, call.error = "failed", _error(payload)
            else:
                call.status = "ok"
        elif "key" not in payload:  # an outcome with no call running (an in-doubt call skipped)
            self.attach(node, event)
        if node is None or key in self.tool_outcomes:
            return
        self.tool_outcomes.add(key)
        known = self.latest.get(key)
        tool = str(payload.get("tool") or (known.tool if known is not None else ""))
        note: dict[str, Any] = {"event": event.type, "key": key, "tool": tool}
        arguments = self.tool_arguments.get(key)
        if isinstance(arguments, dict):
            note["arguments"] = arguments
        if event.type == "tool.error":
            note["error"] = str(payload.get("error") or payload.get("message", ""))
        else:
            node.usage.__dict__["tool_calls"] += 1
            self.usage.__dict__["tool_calls"] += 1
        node.events.append(note)

    def finish(self, last: Event | None = None) -> TraceNode:
        """The trace as the events so far leave it: what is still open was cut off."""
        last = last if last is not None else self.last
        if self.root is None or last is None:
            raise ValueError("a run's events must start with run.started or step.started")
        open_status = "cancelled" if last.type == "run.failed" else "incomplete"
        for node in self.root.walk():
            if node.status == "running":
                node.status = open_status
        self.close_open(self.last_ts, open_status)
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
