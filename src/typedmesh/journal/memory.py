"""An in-memory journal: for tests and for runs that need replay within one process.

It keeps the same promises as the SQLite journal (leases, conditional appends,
an anchored head), so a test on memory tests the semantics users get on disk.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..errors import JournalCorrupt, RunNotFound
from .base import (
    DEFAULT_LEASE_TTL,
    Head,
    Journal,
    Lease,
    RunInfo,
    check_acquire,
    check_append,
    lease_live,
    now,
    refuse_existing,
)
from .events import GENESIS_HASH, Event

__all__ = ["MemoryJournal"]


def _record(row: dict[str, Any]) -> dict[str, Any]:
    """A stored event's record: texts and numbers, ``refs`` copied (never shared with a caller)."""
    refs = row["refs"]
    return row if refs is None else {**row, "refs": json.loads(json.dumps(refs))}


class MemoryJournal(Journal):
    """Keeps copies of events, so mutating an Event after write or read changes nothing."""

    def __init__(self) -> None:
        self._events: dict[str, list[dict[str, Any]]] = {}
        self._heads: dict[str, Head] = {}
        self._created: dict[str, str] = {}
        self._updated: dict[str, str] = {}
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def create_run(
        self, run_id: str, owner: str, *, flow: str = "", ttl: float = DEFAULT_LEASE_TTL
    ) -> Lease:
        with self._lock:
            if run_id in self._heads:
                raise refuse_existing(run_id)
            expires = now() + ttl
            self._heads[run_id] = Head(
                run_id, -1, GENESIS_HASH, None, "running", owner, 1, expires, flow
            )
            self._events[run_id] = []
            return Lease(run_id, owner, 1, expires)

    def acquire(self, run_id: str, owner: str, *, ttl: float = DEFAULT_LEASE_TTL) -> Lease:
        with self._lock:
            head = self._head(run_id)
            t = now()
            check_acquire(head, owner, t)
            token = head.token + 1
            self._heads[run_id] = replace(
                head, owner=owner, token=token, expires_at=t + ttl, status="running"
            )
            return Lease(run_id, owner, token, t + ttl)

    def renew(self, lease: Lease, *, ttl: float = DEFAULT_LEASE_TTL) -> Lease:
        with self._lock:
            head = self._head(lease.run_id)
            check_append(head, lease, ())
            expires = now() + ttl
            self._heads[lease.run_id] = replace(head, expires_at=expires)
            return replace(lease, expires_at=expires)

    def release(self, lease: Lease, status: str) -> None:
        with self._lock:
            head = self._heads.get(lease.run_id)
            if head is None or head.token != lease.token or head.owner != lease.owner:
                return
            self._heads[lease.run_id] = replace(head, owner=None, expires_at=0.0, status=status)

    def append(
        self,
        lease: Lease,
        events: Sequence[Event],
        blobs: Mapping[str, bytes],
        *,
        signature: str | None = None,
        ttl: float = DEFAULT_LEASE_TTL,
        release: str | None = None,
    ) -> Lease:
        with self._lock:
            head = self._head(lease.run_id)
            check_append(head, lease, events)
            self._blobs.update(blobs)
            rows = self._events[lease.run_id]
            # the record holds only strings and numbers: later mutation of the Event is moot
            rows.extend(_record(event.to_dict()) for event in events)
            expires = now() + ttl
            if events:
                last = events[-1]
                head = replace(head, seq=last.seq, hash=last.hash, signature=signature)
            if events and events[0].seq == 0:
                self._created[lease.run_id] = events[0].ts
            if events:
                self._updated[lease.run_id] = events[-1].ts
            if release is not None:
                head = replace(head, owner=None, status=release)
                expires = 0.0
            self._heads[lease.run_id] = replace(head, expires_at=expires)
            return replace(lease, expires_at=expires)

    def head(self, run_id: str) -> Head:
        with self._lock:
            return self._head(run_id)

    def _head(self, run_id: str) -> Head:
        head = self._heads.get(run_id)
        if head is None:
            raise RunNotFound(f"no run {run_id!r} in this journal", run_id=run_id)
        return head

    def read(self, run_id: str) -> list[Event]:
        with self._lock:
            rows = list(self._events.get(run_id) or ())
        if not rows:
            raise RunNotFound(f"no run {run_id!r} in this journal", run_id=run_id)
        # decoded afresh for each reader; refs copied, as a database would
        return [Event.from_dict(_record(row)) for row in rows]

    def blob(self, digest: str) -> bytes:
        with self._lock:
            data = self._blobs.get(digest)
        if data is None:
            raise JournalCorrupt(f"blob {digest} is missing")
        return data

    def runs(self) -> list[RunInfo]:
        infos = []
        t = now()
        with self._lock:
            items = [(h, list(self._events[h.run_id])) for h in self._heads.values()]
        for head, rows in items:
            if head.seq < 0:  # registered, nothing appended yet (as SQLite lists them)
                continue
            status = head.status
            if status == "running" and not lease_live(head.owner, head.expires_at, t):
                status = "incomplete"
            ended = self._updated.get(head.run_id) if status in ("finished", "failed") else None
            started = self._created.get(head.run_id, "")
            infos.append(RunInfo(head.run_id, head.flow, status, started, ended, len(rows)))
        return sorted(infos, key=lambda r: r.started_at, reverse=True)

    # -- test hooks: what an attacker with access to the storage can do ------------

    def tamper_drop_tail(self, run_id: str, count: int) -> None:
        """Delete the last ``count`` events (the head stays): for integrity tests."""
        with self._lock:
            del self._events[run_id][len(self._events[run_id]) - count :]
