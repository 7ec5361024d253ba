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
from .events import GENESIS_HASH, Event, chain_hash, digest, dumps

__all__ = ["BLOB_THRESHOLD", "RunWriter"]

BLOB_THRESHOLD = 1024
"""Payload values whose JSON is longer than this are stored once, by digest."""


class RunWriter:
    """Appends one run's events to a journal."""

    __slots__ = (
        "_agents",
        "_blobs",
        "_buffer",
        "batch_size",
        "journal",
        "prev_hash",
        "run_id",
        "seq",
    )

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
        self._agents: dict[int, tuple[dict[str, str], str]] = {}

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
        raw: dict[str, str] | None = None,
    ) -> Event:
        """Append one event; ``durable`` flushes it (and all before it) at once.

        ``raw`` adds payload fields whose values are already JSON text (a
        pydantic ``model_dump_json()``), spliced in without re-encoding. The
        returned Event holds them as that text; events read back from the
        journal have them decoded.
        """
        payload_json = dumps(payload)  # encoded once: stored and hashed as is
        if len(payload_json) > BLOB_THRESHOLD:
            payload, payload_json = self._externalize(payload)
        if raw:
            payload_json = self._splice(payload_json, raw)
            payload = {**payload, **raw}  # not decoded here: readers get them decoded
        event = Event(
            run_id=self.run_id,
            seq=self.seq,
            type=type,
            path=path,
            ts=datetime.now(UTC).isoformat(),
            payload=payload,
            key=key,
            span_id=span_id,
            parent_span_id=parent_span_id,
            agent=agent,
            prev_hash=self.prev_hash,
            payload_json=payload_json,
            agent_json=self._agent_json(agent),
        )
        event.hash = chain_hash(event)
        self.prev_hash = event.hash
        self.seq += 1
        self._buffer.append(event)
        if durable or len(self._buffer) >= self.batch_size:
            self.flush()
        return event

    def _agent_json(self, agent: dict[str, str] | None) -> str | None:
        if agent is None:
            return None
        cached = self._agents.get(id(agent))
        if cached is None or cached[0] is not agent:
            cached = self._agents[id(agent)] = (agent, dumps(agent))
        return cached[1]

    def _splice(self, payload_json: str, raw: dict[str, str]) -> str:
        items = [payload_json[1:-1]] if len(payload_json) > 2 else []
        for name, text in raw.items():
            if len(text) > BLOB_THRESHOLD:
                ref = digest(text)
                self._blobs[ref] = text.encode()
                text = dumps({"$blob": ref, "json": True})
            items.append(f"{dumps(name)}:{text}")
        return "{" + ",".join(items) + "}"

    def _externalize(self, payload: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Move each large payload value to a blob stored once under its digest."""
        out = dict(payload)
        for name, value in payload.items():
            if value is None or isinstance(value, bool | int | float):
                continue
            text = value if isinstance(value, str) else dumps(value)
            if len(text) > BLOB_THRESHOLD:
                ref = digest(text)
                self._blobs[ref] = text.encode()
                out[name] = {"$blob": ref, "json": not isinstance(value, str)}
        return out, dumps(out)

    def flush(self) -> None:
        """Write every buffered event (and its blobs) in one transaction."""
        if not self._buffer:
            return
        events, blobs = self._buffer, self._blobs
        self._buffer, self._blobs = [], {}
        self.journal.write(events, blobs)
