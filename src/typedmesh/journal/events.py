"""Journal events: one per boundary crossing, hash-chained, versioned.

Every event carries the run id, its sequence number in the run, its type,
the effect key (for effects), span and parent span, step path, the agent
identity, a UTC timestamp and a JSON payload. ``hash`` is SHA-256 over the
previous event's hash and the event's canonical JSON, so editing, dropping or
reordering any event breaks the chain from that event on (``verify``).

Format policy: ``JOURNAL_SCHEMA_VERSION`` is stamped on every event and on
the journal file. A reader reads every older version it knows
(``SCHEMA_VERSION_SUMMARIES``) and refuses a newer one with
``VersionMismatch`` rather than guess.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "GENESIS_HASH",
    "JOURNAL_SCHEMA_VERSION",
    "SCHEMA_VERSION_SUMMARIES",
    "Event",
    "canonical_json",
    "chain_hash",
    "digest",
]

JOURNAL_SCHEMA_VERSION = 1
SCHEMA_VERSION_SUMMARIES: dict[int, str] = {
    1: "first format: events(run_id, seq, type, key, span, parent, path, agent, ts, payload, "
    "prev_hash, hash, schema_version) and content-addressed blobs",
}
assert max(SCHEMA_VERSION_SUMMARIES) == JOURNAL_SCHEMA_VERSION, "add a summary for each version"

GENESIS_HASH = "0" * 64


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces. The hash chain depends on it."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def digest(text: str | bytes) -> str:
    """``sha256:<hex>`` of text or bytes: how payloads and outputs are addressed."""
    data = text.encode() if isinstance(text, str) else text
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(slots=True)
class Event:
    """One journal event. ``hash`` is filled when the event is chained."""

    run_id: str
    seq: int
    type: str
    path: str
    ts: str
    payload: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    span_id: str | None = None
    parent_span_id: str | None = None
    agent: dict[str, str] | None = None
    prev_hash: str = GENESIS_HASH
    hash: str = ""
    schema_version: int = JOURNAL_SCHEMA_VERSION

    def body(self) -> dict[str, Any]:
        """Everything the hash covers (all fields but ``hash``)."""
        return {
            "run_id": self.run_id,
            "seq": self.seq,
            "type": self.type,
            "path": self.path,
            "ts": self.ts,
            "payload": self.payload,
            "key": self.key,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "agent": self.agent,
            "prev_hash": self.prev_hash,
            "schema_version": self.schema_version,
        }

    def to_dict(self) -> dict[str, Any]:
        data = self.body()
        data["hash"] = self.hash
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        return cls(**data)


def chain_hash(event: Event) -> str:
    """The hash this event must carry, given its ``prev_hash``."""
    return hashlib.sha256((event.prev_hash + canonical_json(event.body())).encode()).hexdigest()
