"""EventLog and JournalSink: one run's events, made once, handed to every sink.

``EventLog`` sequences and hash-chains a run's events and moves large payload
values into content-addressed blobs; it hands each event to its sinks. The
journal is one sink (``JournalSink``); the trace reducer and live subscribers
are others, so a run without a journal still produces its events.

``JournalSink`` buffers and appends under the run's lease. ``commit()`` is a
group commit: every branch that needs its events durable awaits it, and the
first one schedules a single append for all of them after the ready
callbacks have run, so concurrent branches share one transaction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from .anchor import journal_key, sign_head
from .base import DEFAULT_LEASE_TTL, Journal, Lease
from .events import GENESIS_HASH, Event, chain_hash, digest, dumps

__all__ = ["BLOB_THRESHOLD", "EventLog", "EventSink", "JournalSink"]

BLOB_THRESHOLD = 1024
"""Payload values whose JSON is longer than this are stored once, by digest."""


class EventSink(Protocol):
    """Receives each event of a run as it is made, in order.

    A sink that needs events serialized and hash-chained (a journal, a
    forwarder) says so with ``wants_bytes = True``; a sink without the
    attribute is given them too. When no sink wants bytes, events carry their
    payload only (``payload_json`` and ``hash`` empty), which keeps a run
    without a journal cheap.
    """

    def accept(self, event: Event, blobs: Mapping[str, bytes]) -> None: ...


class EventLog:
    """Makes one run's events: sequence, chain, blobs; then hands them to the sinks."""

    __slots__ = (
        "_agents",
        "_known",
        "_seen_sinks",
        "prev_hash",
        "run_id",
        "seq",
        "serialize",
        "sinks",
    )

    def __init__(
        self,
        run_id: str,
        *,
        seq: int = 0,
        prev_hash: str = GENESIS_HASH,
        sinks: Iterable[EventSink] = (),
    ) -> None:
        self.run_id = run_id
        self.seq = seq
        self.prev_hash = prev_hash
        self.sinks: list[EventSink] = list(sinks)
        self.serialize = False
        """Whether any sink needs events serialized and chained."""
        self._seen_sinks = -1
        self._agents: dict[int, tuple[dict[str, str], str]] = {}
        self._known: set[str] = set()

    def add_sink(self, sink: EventSink) -> None:
        self.sinks.append(sink)

    def serializing(self) -> bool:
        """Whether events are serialized and chained: some sink wants their bytes."""
        if self._seen_sinks != len(self.sinks):  # sinks were added: who wants bytes now?
            self._seen_sinks = len(self.sinks)
            self.serialize = any(getattr(s, "wants_bytes", True) for s in self.sinks)
        return self.serialize

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
        raw: dict[str, str] | None = None,
        parts: dict[str, list[str]] | None = None,
        attachment: Any = None,
    ) -> Event:
        """Make one event and hand it to every sink.

        ``raw`` adds payload fields whose values are already JSON text (a
        pydantic ``model_dump_json()``), spliced in without re-encoding.
        ``parts`` adds list fields whose items (JSON texts) are stored one blob
        each, so a conversation re-sent on every call is stored once.
        ``attachment`` rides along in this process only (a step's typed output).
        """
        serialize = self.serializing()
        blobs: dict[str, bytes] = {}
        refs: dict[str, list[Any]] | None = None
        payload_json = ""  # nobody stores it: no JSON, no hash, no blobs
        if serialize:
            payload_json = dumps(payload)  # encoded once: stored and hashed as is
            if len(payload_json) > BLOB_THRESHOLD:
                refs, payload_json = self._externalize(payload, blobs)
            if raw:
                refs, payload_json = self._splice(payload_json, raw, refs, blobs)
            if parts:
                refs, payload_json = self._parts(payload_json, parts, refs, blobs)
        if raw:
            payload = {**payload, **raw}
        if parts:
            payload = {**payload, **parts}
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
            refs=refs,
            resolved=True,
            attachment=attachment,
        )
        if serialize:
            event.hash = self.prev_hash = chain_hash(event)
        self.seq += 1
        for sink in self.sinks:
            sink.accept(event, blobs)
        return event

    def _agent_json(self, agent: dict[str, str] | None) -> str | None:
        if agent is None:
            return None
        cached = self._agents.get(id(agent))
        if cached is None or cached[0] is not agent:
            cached = self._agents[id(agent)] = (agent, dumps(agent))
        return cached[1]

    def _blob(self, text: str, blobs: dict[str, bytes]) -> str:
        ref = digest(text)
        if ref not in self._known:
            self._known.add(ref)
            blobs[ref] = text.encode()
        return ref

    def _splice(
        self,
        payload_json: str,
        raw: dict[str, str],
        refs: dict[str, list[Any]] | None,
        blobs: dict[str, bytes],
    ) -> tuple[dict[str, list[Any]] | None, str]:
        items = [payload_json[1:-1]] if len(payload_json) > 2 else []
        for name, text in raw.items():
            if len(text) > BLOB_THRESHOLD:
                ref = self._blob(text, blobs)
                refs = {**(refs or {}), name: [ref, True]}
                text = dumps(ref)
            items.append(f"{dumps(name)}:{text}")
        return refs, "{" + ",".join(items) + "}"

    def _parts(
        self,
        payload_json: str,
        parts: dict[str, list[str]],
        refs: dict[str, list[Any]] | None,
        blobs: dict[str, bytes],
    ) -> tuple[dict[str, list[Any]] | None, str]:
        items = [payload_json[1:-1]] if len(payload_json) > 2 else []
        refs = dict(refs or {})
        for name, texts in parts.items():
            digests = [self._blob(text, blobs) for text in texts]
            refs[name] = ["parts", digests]
            items.append(f"{dumps(name)}:{len(digests)}")
        return refs, "{" + ",".join(items) + "}"

    def _externalize(
        self, payload: dict[str, Any], blobs: dict[str, bytes]
    ) -> tuple[dict[str, list[Any]] | None, str]:
        """Move each large payload value to a blob stored once under its digest."""
        out = dict(payload)
        refs: dict[str, list[Any]] = {}
        for name, value in payload.items():
            if value is None or isinstance(value, bool | int | float):
                continue
            text = value if isinstance(value, str) else dumps(value)
            if len(text) > BLOB_THRESHOLD:
                ref = self._blob(text, blobs)
                out[name] = ref  # a placeholder: ``refs`` says it is a blob, not the value
                refs[name] = [ref, not isinstance(value, str)]
        return (refs or None), dumps(out)


class JournalSink:
    """Appends a run's events to a journal under its lease, in group commits."""

    wants_bytes = True

    __slots__ = (
        "_blobs",
        "_buffer",
        "_key",
        "_pending",
        "batch_size",
        "journal",
        "last_append",
        "lease",
        "lost",
        "ttl",
        "unsaved",
    )

    def __init__(
        self,
        journal: Journal,
        lease: Lease,
        *,
        ttl: float = DEFAULT_LEASE_TTL,
        batch_size: int = 256,
    ) -> None:
        self.journal = journal
        self.lease = lease
        self.ttl = ttl
        self.batch_size = batch_size
        self._buffer: list[Event] = []
        self._blobs: dict[str, bytes] = {}
        self._pending: asyncio.Future[None] | None = None
        self._key = journal_key()
        self.lost: BaseException | None = None
        self.last_append = time.monotonic()
        self.unsaved = False
        """A buffered result must be committed before the run's next effect."""

    def accept(self, event: Event, blobs: Mapping[str, bytes]) -> None:
        self._buffer.append(event)
        if blobs:
            self._blobs.update(blobs)
        if len(self._buffer) >= self.batch_size:
            self.flush()

    def flush(self, *, release: str | None = None) -> None:
        """Append every buffered event (and its blobs) in one conditional transaction;
        with ``release``, give the run up with that status in the same transaction."""
        if self.lost is not None:
            raise self.lost
        if not self._buffer:
            if release is not None:
                self.journal.release(self.lease, release)
            return
        events, blobs = self._buffer, self._blobs
        self._buffer, self._blobs = [], {}
        self.unsaved = False
        last = events[-1]
        signature = sign_head(self._key, last.run_id, last.seq, last.hash)
        try:
            self.lease = self.journal.append(
                self.lease, events, blobs, signature=signature, ttl=self.ttl, release=release
            )
        except BaseException as exc:
            self.lost = exc  # the chain in memory no longer matches the journal: stop
            raise
        self.last_append = time.monotonic()

    async def commit(self) -> None:
        """Make everything emitted so far durable; concurrent callers share one append."""
        if self.lost is not None:
            raise self.lost
        if not self._buffer:
            return
        pending = self._pending
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = self._pending = loop.create_future()
            loop.call_soon(self._group_flush, pending)
        await asyncio.shield(pending)

    def _group_flush(self, pending: asyncio.Future[None]) -> None:
        self._pending = None
        try:
            self.flush()
        except BaseException as exc:
            pending.set_exception(exc)
            pending.exception()  # retrieved here: every waiter re-raises it
        else:
            pending.set_result(None)

    def ensure_owned(self) -> None:
        """Before a live effect: renew a lease close to expiry (a paused zombie fails here)."""
        if self.lost is not None:
            raise self.lost
        if self.lease.expires_at - time.time() < self.ttl / 2:
            self.heartbeat()

    def heartbeat(self) -> None:
        try:
            self.lease = self.journal.renew(self.lease, ttl=self.ttl)
        except BaseException as exc:
            self.lost = exc
            raise

    def release(self, status: str) -> None:
        if self.lost is None:
            self.journal.release(self.lease, status)
