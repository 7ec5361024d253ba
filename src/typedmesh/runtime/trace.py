"""The trace: a tree of nodes, one per step invocation, built as a run goes.

It is what ``RunResult.trace`` holds and what the CLI draws. The reducer
(``runtime/reducer.py``) builds it from the run's events; each node also
keeps its ``attempts`` (one per start of the step: a resumed run may start a
step again) and the reducer keeps one ``EffectCall`` per model or tool call,
which is what the OpenTelemetry export renders as spans.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ..contracts import AgentIdentity
from ..models.base import Usage

if TYPE_CHECKING:
    from ..journal.events import Event

__all__ = ["Attempt", "EffectCall", "TraceNode"]


@dataclass(slots=True, eq=False)
class Attempt:
    """One start of a step, from its ``step.started`` to how that start ended.

    A step runs once, but a resumed run starts again every step the crash
    cut off: its node gets a second attempt, and the first one stays as the
    crash left it (``incomplete``). Times are the journal's timestamps
    (ISO 8601 text, parsed only by whoever needs them).
    """

    seq: int
    """The ``step.started`` event's sequence number."""
    started: str
    parent: int
    """The attempt of the parent node this one ran under (-1: under the run itself)."""
    span_id: str | None = None
    agent: dict[str, str] | None = None
    """The agent identity its ``step.started`` recorded (a resume may run a newer version)."""
    ended: str | None = None
    status: str = "running"
    """``running``, ``ok``, ``failed``, ``cancelled`` or ``incomplete`` (cut off by a crash)."""
    error: tuple[str, str] | None = None
    """The failure as recorded: (type, message)."""
    notes: list[Event] = field(default_factory=list)
    """The other events made during this attempt (records, retries, clock reads, ...)."""


@dataclass(slots=True, eq=False)
class EffectCall:
    """One model or tool call, from its start event to its outcome.

    A call a crash cut off and a resumed run started again is two calls with
    the same key (``number`` 0, then 1). ``request`` and ``response`` are the
    model call's events, kept so that their JSON is decoded only by whoever
    wants it (the OpenTelemetry export), never while the run goes.
    """

    kind: str
    """``model`` or ``tool``."""
    key: str
    path: str
    """The path of the event that started it (a step's, or a tool context's)."""
    seq: int
    started: str
    node: TraceNode | None
    """The step that made the call."""
    attempt: int
    """Which of ``node.attempts`` made it (-1: none; the run itself)."""
    number: int = 0
    ended: str | None = None
    status: str = "running"
    """``running``, ``ok``, ``failed``, ``cancelled`` or ``incomplete`` (cut off by a crash)."""
    error: tuple[str, str] | None = None
    """The failure as recorded: (type, message)."""
    model: str = ""
    """The model asked for (the one the price table knows)."""
    provider: str = ""
    served_model: str = ""
    """The model the response says answered."""
    usage: Usage | None = None
    """What the call cost as recorded (also for a failed call that was billed)."""
    transient: bool | None = None
    tool: str = ""
    idempotency_key: str | None = None
    idempotent: bool | None = None
    in_doubt: str | None = None
    """How a resume settled a call a crash left without an outcome (``retried``, ``skipped``)."""
    request: Event | None = None
    response: Event | None = None


@dataclass(slots=True, eq=False)
class TraceNode:
    """One step invocation: who ran, how it ended, what it cost.

    ``usage`` is what this node spent itself; ``total_usage()`` adds its
    children. ``events`` lists notable crossings (retries, validation
    failures, tool calls and denials) in order. ``attempts`` has one entry
    per start of the step (more than one when a resumed run started it again).
    """

    name: str
    kind: str
    path: str
    identity: AgentIdentity | None = None
    status: str = "running"
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    usage: Usage = field(default_factory=Usage)
    models: list[str] = field(default_factory=list)
    error: str | None = None
    output: BaseModel | None = None
    children: list[TraceNode] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def duration_ms(self) -> float | None:
        return None if self.ended is None else (self.ended - self.started) * 1000

    def child(self, name: str, kind: str, path: str, identity: AgentIdentity | None) -> TraceNode:
        node = TraceNode(name=name, kind=kind, path=path, identity=identity)
        self.children.append(node)
        return node

    def finish(
        self, status: str, *, output: BaseModel | None = None, error: str | None = None
    ) -> None:
        self.ended = time.perf_counter()
        self.status = status
        self.output = output
        self.error = error

    def total_usage(self) -> Usage:
        total = self.usage
        for child in self.children:
            total = total + child.total_usage()
        return total

    def walk(self) -> list[TraceNode]:
        """This node and every descendant, depth first."""
        nodes = [self]
        for child in self.children:
            nodes.extend(child.walk())
        return nodes

    def find(self, path: str) -> TraceNode | None:
        return next((n for n in self.walk() if n.path == path), None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (outputs dumped, identities flattened)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "path": self.path,
            "identity": self.identity.model_dump() if self.identity else None,
            "status": self.status,
            "started_at": self.started_at.isoformat(),
            "duration_ms": self.duration_ms,
            "usage": self.usage.model_dump(),
            "total_usage": self.total_usage().model_dump(),
            "models": self.models,
            "error": self.error,
            "output": self.output.model_dump(mode="json") if self.output is not None else None,
            "events": self.events,
            "children": [c.to_dict() for c in self.children],
        }
