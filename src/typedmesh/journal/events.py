"""Journal events: one per boundary crossing, hash-chained, versioned.

Every event carries the run id, its sequence number in the run, its type,
the effect key (for effects), span and parent span, step path, the agent
identity, a UTC timestamp and a JSON payload. ``hash`` is SHA-256 over the
event's header (which holds the previous event's hash) and the exact payload
text stored, so editing, dropping or reordering any event breaks the chain
from that event on (``verify``). The payload is encoded once, when emitted.

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
    "dumps",
]

JOURNAL_SCHEMA_VERSION = 3
SCHEMA_VERSION_SUMMARIES: dict[int, str] = {
    1: "first format: events(run_id, seq, type, key, span, parent, path, agent, ts, payload, "
    "prev_hash, hash, schema_version) and content-addressed blobs",
    2: "blob references leave the payload: an event's `refs` (hashed with its header) name "
    "the payload fields stored as blobs, so a payload that merely contains {'$blob': ...} "
    "is data; a runs table anchors each run's head (last seq, hash, signature) and lease",
    3: "events as in 2; the file drops its events-by-type index (runs are listed from "
    "the runs table), one page write less per commit",
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


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)


def dumps(value: Any) -> str:
    """Compact JSON that keeps key order: how payloads are stored and hashed."""
    return _ENCODER.encode(value)  # one encoder, not one per call as json.dumps(**opts) makes


@dataclass(slots=True)
class Event:
    """One journal event. ``hash`` is filled when the event is chained.

    ``payload_json`` and ``agent_json`` are the exact texts stored and hashed;
    ``payload`` and ``agent`` are their decoded forms. A backend must store the
    texts byte for byte (TEXT, not a JSON type that reorders keys).
    """

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
    payload_json: str = ""
    agent_json: str | None = None
    refs: dict[str, list[Any]] | None = None
    """Payload fields stored as blobs: name -> [digest, is_json]. Hashed with the header."""
    resolved: bool = False
    """True for an event still in the process that emitted it: ``payload`` holds every
    value in full (blob fields included; ``raw`` fields as JSON text). Such an event of a
    run no sink stores is not serialized: ``payload_json`` and ``hash`` are empty."""
    attachment: Any = None
    """In-process only, never stored: the typed value an event describes (a step's output)."""

    def __post_init__(self) -> None:
        if not self.payload_json and not self.resolved:
            self.payload_json = dumps(self.payload)
        if self.agent is not None and self.agent_json is None:
            self.agent_json = dumps(self.agent)

    def header(self) -> str:
        """Every field but the payload, as the hash covers them."""
        fields: list[Any] = [
            self.schema_version,
            self.run_id,
            self.seq,
            self.type,
            self.path,
            self.ts,
            self.key,
            self.span_id,
            self.parent_span_id,
            self.agent_json,
            self.prev_hash,
        ]
        if self.schema_version >= 2:
            fields.append(self.refs)
        return dumps(fields)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record that ``from_dict`` turns back into the same event."""
        return {
            "run_id": self.run_id,
            "seq": self.seq,
            "type": self.type,
            "path": self.path,
            "ts": self.ts,
            "key": self.key,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "agent_json": self.agent_json,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "schema_version": self.schema_version,
            "payload_json": self.payload_json,
            "refs": self.refs,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        return cls.from_texts(**data)

    @classmethod
    def from_texts(
        cls,
        *,
        run_id: str,
        seq: int,
        type: str,
        path: str,
        ts: str,
        key: str | None,
        span_id: str | None,
        parent_span_id: str | None,
        agent_json: str | None,
        prev_hash: str,
        hash: str,
        schema_version: int,
        payload_json: str,
        refs: dict[str, list[Any]] | str | None = None,
    ) -> Event:
        """An event read back from storage, decoded from its stored texts."""
        return cls(
            run_id=run_id,
            seq=seq,
            type=type,
            path=path,
            ts=ts,
            payload=json.loads(payload_json),
            key=key,
            span_id=span_id,
            parent_span_id=parent_span_id,
            agent=json.loads(agent_json) if agent_json else None,
            prev_hash=prev_hash,
            hash=hash,
            schema_version=schema_version,
            payload_json=payload_json,
            agent_json=agent_json,
            refs=json.loads(refs) if isinstance(refs, str) else refs,
        )


def chain_hash(event: Event) -> str:
    """The hash this event must carry: over its header (with ``prev_hash``) and payload text."""
    text = f"{event.header()}\n{event.payload_json}"
    return hashlib.sha256(text.encode()).hexdigest()
