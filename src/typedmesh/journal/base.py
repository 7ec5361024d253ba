"""The journal backend interface: leased runs, conditional appends, anchored heads.

A run is written by exactly one live owner. ``create_run`` or ``acquire``
gives the owner a ``Lease`` (a fencing token and an expiry); every
``append`` is one transaction, conditional on that token *and* on the run's
head being the sequence number the batch continues, and it moves the head
(last seq, hash and signature) in the same transaction as the events. A
second owner, a zombie whose lease was taken over, or a writer that missed
an append is refused with ``LeaseLost`` before its events land.

Memory and SQLite ship in the core; every backend passes the conformance
suite in ``typedmesh.testing.journal_conformance``.
"""

from __future__ import annotations

import itertools
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

from ..errors import LeaseHeld, LeaseLost, RunExists
from .events import GENESIS_HASH, Event

__all__ = [
    "DEFAULT_LEASE_TTL",
    "Head",
    "Journal",
    "Lease",
    "RunInfo",
    "RunStatus",
    "new_owner",
]

DEFAULT_LEASE_TTL = 30.0
"""Seconds a lease lives without a heartbeat or an append."""

RunStatus = str
"""``running``, ``waiting``, ``finished``, ``failed`` or ``suspended``; a ``running``
run whose lease has expired is reported as ``incomplete``."""


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One line of ``typedmesh runs``."""

    run_id: str
    flow: str
    status: str
    started_at: str
    ended_at: str | None
    events: int


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to append to one run: valid while ``token`` is the run's token."""

    run_id: str
    owner: str
    token: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class Head:
    """Where a run's chain ends, as stored with its last append, and who owns it."""

    run_id: str
    seq: int
    """The last event's seq; -1 for a run with no event yet."""
    hash: str
    signature: str | None
    status: str
    owner: str | None
    token: int
    expires_at: float
    flow: str = ""


def new_owner() -> str:
    """An owner id naming this host and process, so a dead local owner can be told."""
    return f"{os.uname().nodename}:{os.getpid()}:{os.urandom(4).hex()}"


def owner_is_dead(owner: str | None) -> bool:
    """Whether ``owner`` is a process on this host that no longer exists."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != os.uname().nodename or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def lease_live(owner: str | None, expires_at: float, now: float) -> bool:
    """Whether a run is being written right now by a live owner."""
    return owner is not None and expires_at > now and not owner_is_dead(owner)


def lease_free(head: Head, now: float) -> bool:
    """Whether a new owner may take ``head``'s run: no owner, expired, or dead here."""
    return head.owner is None or head.expires_at <= now or owner_is_dead(head.owner)


class Journal(ABC):
    """Where runs are journaled. Appends are atomic, conditional and anchored."""

    readonly: bool = False

    # -- ownership -----------------------------------------------------------------

    @abstractmethod
    def create_run(
        self, run_id: str, owner: str, *, flow: str = "", ttl: float = DEFAULT_LEASE_TTL
    ) -> Lease:
        """Register a new run owned by ``owner``; ``RunExists`` if the id is taken."""

    @abstractmethod
    def acquire(self, run_id: str, owner: str, *, ttl: float = DEFAULT_LEASE_TTL) -> Lease:
        """Take an existing run: ``LeaseHeld`` while another live owner holds it.

        The fencing token goes up by one, so appends under any older lease fail.
        """

    @abstractmethod
    def renew(self, lease: Lease, *, ttl: float = DEFAULT_LEASE_TTL) -> Lease:
        """Extend a lease (a heartbeat); ``LeaseLost`` if it is no longer the run's."""

    @abstractmethod
    def release(self, lease: Lease, status: str) -> None:
        """Give the run up with ``status``; a lost lease releases nothing."""

    @abstractmethod
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
        """Store blobs and events and move the head, in one transaction.

        ``release`` gives the run up with that status in the same transaction
        (a run's last append), as ``release()`` would after it.

        Conditional on ``lease.token`` being the run's token and on
        ``events[0].seq`` directly following the head: else ``LeaseLost`` and
        nothing is written. Renews the lease; returns it.
        """

    @abstractmethod
    def head(self, run_id: str) -> Head:
        """The run's anchored head; ``RunNotFound`` if there is no such run."""

    # -- reading -------------------------------------------------------------------

    @abstractmethod
    def read(self, run_id: str) -> list[Event]:
        """Every event of a run in order; ``RunNotFound`` if there is none."""

    def exists(self, run_id: str) -> bool:
        """Whether the journal knows ``run_id``."""
        from ..errors import RunNotFound

        try:
            self.head(run_id)
        except RunNotFound:
            return False
        return True

    @abstractmethod
    def blob(self, digest: str) -> bytes:
        """The bytes stored under ``digest``; ``JournalCorrupt`` if missing."""

    @abstractmethod
    def runs(self) -> list[RunInfo]:
        """Every run in the journal, newest first."""

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release resources; the default has none."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- import --------------------------------------------------------------------

    def import_run(
        self, events: Sequence[Event], blobs: Mapping[str, bytes], head: Head | None = None
    ) -> None:
        """Store a whole run as exported (golden journals, JSONL): anchored at ``head``.

        Without ``head`` (an export from before heads), the last event anchors it.
        A head the events do not end at (a tail cut from the export) is refused
        with ``JournalCorrupt``: stored, the run would look whole. So are events
        that are not one run's, from its first event on, consecutive and linked
        (a gap, a cut head): nothing is stored, the run id stays free. An edited
        event whose hash no longer matches is imported; ``verify`` names it.
        """
        from ..errors import JournalCorrupt

        if not events:
            raise JournalCorrupt("nothing to import: the run has no events")
        run_id = events[0].run_id
        if events[0].seq != 0 or events[0].prev_hash != GENESIS_HASH:
            raise JournalCorrupt(
                f"run {run_id!r}: the events start at seq {events[0].seq}, not at the "
                "run's first event",
                run_id=run_id,
                seq=0,
            )
        for previous, event in itertools.pairwise(events):
            if event.run_id != run_id:
                raise JournalCorrupt(
                    f"event {event.seq} belongs to run {event.run_id!r}, not {run_id!r}",
                    run_id=run_id,
                    seq=event.seq,
                )
            if event.seq != previous.seq + 1:
                raise JournalCorrupt(
                    f"run {run_id!r}: sequence gap: event {event.seq} follows {previous.seq}",
                    run_id=run_id,
                    seq=previous.seq + 1,
                )
            if event.prev_hash != previous.hash:
                raise JournalCorrupt(
                    f"run {run_id!r}: event {event.seq} does not link to event {previous.seq}",
                    run_id=run_id,
                    seq=event.seq,
                )
        if head is not None:
            last = events[-1]
            if head.run_id != run_id:
                raise JournalCorrupt(
                    f"the head is run {head.run_id!r} but the events are run {run_id!r}",
                    run_id=run_id,
                )
            if head.seq != last.seq or head.hash != last.hash:
                missing = head.seq - last.seq
                raise JournalCorrupt(
                    f"run {run_id!r}: the head is event {head.seq} but the events end at "
                    f"{last.seq}: "
                    + (
                        f"{missing} event(s) were deleted from the tail"
                        if missing > 0
                        else "the head does not name the last event (altered)"
                    ),
                    run_id=run_id,
                    seq=last.seq + 1,
                )
        flow = str(events[0].payload.get("flow", "")) if events[0].type == "run.started" else ""
        lease = self.create_run(run_id, new_owner(), flow=flow, ttl=0.0)
        self._store_imported(lease, events, blobs, head)

    def _store_imported(
        self, lease: Lease, events: Sequence[Event], blobs: Mapping[str, bytes], head: Head | None
    ) -> None:
        self.append(lease, events, blobs, signature=head.signature if head else None, ttl=0.0)
        status = head.status if head is not None else status_of(events)
        self.release(lease, "incomplete" if status == "running" else status)


EVENT_COLUMNS = (
    "run_id, seq, type, key, span_id, parent_span_id, path, agent, ts, payload, "
    "prev_hash, hash, schema_version, refs"
)
"""The events table's columns, in the order ``events_from_rows`` reads them (SQL backends)."""


def event_rows(events: Sequence[Event]) -> list[tuple[Any, ...]]:
    """Events as a SQL backend stores them: one tuple per event, in ``EVENT_COLUMNS`` order."""
    import json

    return [
        (
            e.run_id,
            e.seq,
            e.type,
            e.key,
            e.span_id,
            e.parent_span_id,
            e.path,
            e.agent_json,
            e.ts,
            e.payload_json,
            e.prev_hash,
            e.hash,
            e.schema_version,
            None if e.refs is None else json.dumps(e.refs),
        )
        for e in events
    ]


def events_from_rows(rows: Sequence[Sequence[Any]], run_id: str) -> list[Event]:
    """A SQL backend's event rows (``EVENT_COLUMNS``) as Events: a newer schema is
    ``VersionMismatch``, an unreadable row ``JournalCorrupt``."""
    import json

    from ..errors import JournalCorrupt, VersionMismatch
    from .events import JOURNAL_SCHEMA_VERSION

    events = []
    for row in rows:
        if row[12] > JOURNAL_SCHEMA_VERSION:
            raise VersionMismatch(
                f"event {row[1]} of run {run_id!r} has schema {row[12]}; "
                f"this typedmesh reads up to {JOURNAL_SCHEMA_VERSION}"
            )
        try:
            events.append(
                Event.from_texts(
                    run_id=row[0],
                    seq=row[1],
                    type=row[2],
                    key=row[3],
                    span_id=row[4],
                    parent_span_id=row[5],
                    path=row[6],
                    agent_json=row[7],
                    ts=row[8],
                    payload_json=row[9],
                    prev_hash=row[10],
                    hash=row[11],
                    schema_version=row[12],
                    refs=row[13],
                )
            )
        except (json.JSONDecodeError, TypeError) as exc:
            raise JournalCorrupt(
                f"event {row[1]} of run {run_id!r} is unreadable: {exc}",
                run_id=run_id,
                seq=row[1],
            ) from exc
    return events


def status_of(events: Sequence[Event]) -> str:
    """A run's status judged from its last event alone."""
    last = events[-1].type if events else ""
    return {
        "run.finished": "finished",
        "run.failed": "failed",
        "run.suspended": "waiting",
    }.get(last, "incomplete")


def check_append(head: Head, lease: Lease, events: Sequence[Event]) -> None:
    """Raise ``LeaseLost`` unless ``lease`` owns ``head``'s run and ``events`` continue it.

    The batch itself must be one run's consecutive, chained events: a lease on
    one run never writes another run's events, and the head it moves to names
    the batch's last event.
    """
    if head.token != lease.token or head.owner != lease.owner:
        now_held = "was released" if head.owner is None else f"is now owned by {head.owner!r}"
        raise LeaseLost(
            f"run {lease.run_id!r} {now_held} (token {head.token}); this writer's lease "
            f"(owner {lease.owner!r}, token {lease.token}) is no longer the run's",
            run_id=lease.run_id,
        )
    if not events:
        return
    if events[0].seq != head.seq + 1:
        raise LeaseLost(
            f"run {lease.run_id!r} head is at seq {head.seq}; a batch starting at "
            f"{events[0].seq} does not continue it",
            run_id=lease.run_id,
        )
    if events[0].prev_hash != (head.hash if head.seq >= 0 else GENESIS_HASH):
        where = "the head's hash" if head.seq >= 0 else "genesis (the run's first event)"
        raise LeaseLost(
            f"run {lease.run_id!r}: the batch does not chain to {where}", run_id=lease.run_id
        )
    check_batch(lease, events)


def check_batch(lease: Lease, events: Sequence[Event]) -> None:
    """Raise ``LeaseLost`` unless ``events`` are ``lease``'s run's, consecutive and chained.

    Needs no storage: a backend whose append checks the head in its own
    conditional write (SQL) calls this first.
    """
    previous: Event | None = None
    for event in events:
        if event.run_id != lease.run_id:
            raise LeaseLost(
                f"a lease on run {lease.run_id!r} cannot append an event of run {event.run_id!r}",
                run_id=lease.run_id,
            )
        if previous is not None and (
            event.seq != previous.seq + 1 or event.prev_hash != previous.hash
        ):
            raise LeaseLost(
                f"run {lease.run_id!r}: event {event.seq} of the batch does not follow "
                f"event {previous.seq} (a batch is consecutive and chained)",
                run_id=lease.run_id,
            )
        previous = event


def check_acquire(head: Head, owner: str, now: float) -> None:
    """Raise ``LeaseHeld`` unless ``owner`` may take ``head``'s run now."""
    if head.owner == owner or lease_free(head, now):
        return
    raise LeaseHeld(
        f"run {head.run_id!r} is being written by {head.owner!r} (lease expires in "
        f"{max(0.0, head.expires_at - now):.1f} s); refusing a second writer",
        run_id=head.run_id,
        owner=head.owner or "",
        expires_at=head.expires_at,
    )


def refuse_existing(run_id: str) -> RunExists:
    return RunExists(
        f"run {run_id!r} is already in the journal: resume or replay it, or start a new run id",
        run_id=run_id,
    )


def now() -> float:
    return time.time()
