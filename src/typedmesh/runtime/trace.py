"""The trace: a tree of nodes, one per step invocation, built as a run goes.

It is what ``RunResult.trace`` holds and what the CLI draws; the journal of
a later layer records the same boundaries durably.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from ..contracts import AgentIdentity
from ..models.base import Usage

__all__ = ["TraceNode"]


@dataclass(slots=True, eq=False)
class TraceNode:
    """One step invocation: who ran, how it ended, what it cost.

    ``usage`` is what this node spent itself; ``total_usage()`` adds its
    children. ``events`` lists notable crossings (retries, validation
    failures, tool calls and denials) in order.
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
