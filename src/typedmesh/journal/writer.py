"""RunWriter: sequences, chains, blobs and batches one run's events.

Events are buffered and written in one transaction per batch. A durable event
(a tool call about to run, a tool result) flushes the buffer before the
writer returns, so everything up to it is on disk before the side effect
happens; since a flush writes in order, every earlier event is durable too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .base import Journal
from .events import GENESIS_HASH, Event, canonical_json, chain_hash, digest

__all__ = ["BLOB_THRESHOLD", "RunWriter"]

BLOB_THRESHOLD = 1024
"""Payload values whose JSON is longer than this are stored once, by digest."""


class RunWriter:
    """Appends one run's events to a journal."""

    __slots__ = ("_blobs", "_buffer", "batch_size", "journal", "prev_hash", "run_id", "seq")

    def __init__(
        self,
        journal: Journal,
        run_id: str,
        *,
        seq: int = 0,
        prev_hash: str = GENESIS_HASH,
        batch_size: int = 256,
    ) -> None:
        self.journal = journal
        self.run_id = run_id
        self.seq = seq
        self.prev_hash = prev_hash
        self.batch_size = batch_size
        self._buffer: list[Event] = []
        self._blobs: dict[str, bytes] = {}

    def emit(
        self,
        type: str,
        path: str,
        payload: dict[str, Any],
        *,
        key: str | None = None,
        span_id: str | None = None,
        parent_span_id: str | None = None,
        agent: dict[str, str] | None = None,
        durable: bool = False,
    ) -> Event:
        """Append one event; ``durable`` flushes it (and all before it) at once."""
        event = Event(
            run_id=self.run_id,
            seq=self.seq,
            type=type,
            path=path,
            ts=datetime.now(UTC).isoformat(),
            payload=self._externalize(payload),
            key=key,
            span_id=span_id,
            parent_span_id=parent_span_id,
            agent=agent,
            prev_hash=self.prev_hash,
        )
        event.hash = chain_hash(event)
        self.prev_hash = event.hash
        self.seq += 1
        self._buffer.append(event)
        if durable or len(self._buffer) >= self.batch_size:
            self.flush()
        return event

    def _externalize(self, payload: dict[str, Any]) -> dict[str, Any]:
        out = payload
        for name, value in payload.items():
            if value is None or isinstance(value, bool | int | float):
                continue
            text = value if isinstance(value, str) else canonical_json(value)
            if len(text) > BLOB_THRESHOLD:
                ref = digest(text)
                self._blobs[ref] = text.encode()
                if out is payload:
                    out = dict(payload)
                out[name] = {"$blob": ref, "json": not isinstance(value, str)}
        return out

    def flush(self) -> None:
        """Write every buffered event (and its blobs) in one transaction."""
        if not self._buffer:
            return
        events, blobs = self._buffer, self._blobs
        self._buffer, self._blobs = [], {}
        self.journal.write(events, blobs)
