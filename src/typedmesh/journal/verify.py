"""Integrity: check a run's hash chain, its anchored head and its blobs; load payloads.

The chain alone cannot tell a run that ended from one whose tail was cut:
both are valid prefixes. The head stored with the last append can: it names
the last seq and hash, so deleting the last event, the last seven, or
everything from a tool's ``tool.started`` on fails ``verify``. With
``TYPEDMESH_JOURNAL_KEY`` set the head must carry the key's signature too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import JournalCorrupt, RunNotFound
from .anchor import journal_key, signature_ok
from .base import Head, Journal
from .events import GENESIS_HASH, Event, chain_hash, digest

__all__ = ["VerifyReport", "blob_refs", "load_payload", "verify_events", "verify_run"]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The result of ``verify``: ``ok``, or the first bad event and why."""

    run_id: str
    events: int
    ok: bool
    bad_seq: int | None = None
    bad_type: str | None = None
    reason: str = ""
    signed: bool = False


def verify_events(
    run_id: str,
    events: list[Event],
    journal: Journal | None = None,
    head: Head | None = None,
    *,
    key: bytes | None = None,
) -> VerifyReport:
    """Recompute the chain; check it ends at ``head``; with ``journal``, check blobs."""
    prev = GENESIS_HASH
    for expected_seq, event in enumerate(events):
        reason = ""
        if event.run_id != run_id:
            reason = f"the event belongs to run {event.run_id!r}, not {run_id!r}"
        elif event.seq != expected_seq:
            reason = f"sequence gap: expected seq {expected_seq}, found {event.seq}"
        elif event.prev_hash != prev:
            reason = "prev_hash does not match the previous event's hash"
        elif chain_hash(event) != event.hash:
            reason = "hash does not match the event's contents (altered)"
        elif journal is not None:
            reason = _blob_problem(event, journal)
        if reason:
            return VerifyReport(run_id, len(events), False, event.seq, event.type, reason)
        prev = event.hash
    if head is None:
        return VerifyReport(run_id, len(events), True)
    last_seq = events[-1].seq if events else -1
    if head.seq != last_seq or head.hash != (events[-1].hash if events else GENESIS_HASH):
        missing = head.seq - last_seq
        damage = f"{missing} event(s) were deleted from the tail" if missing > 0 else "altered"
        reason = f"the journal's head is event {head.seq} but the events end at {last_seq}: "
        reason += damage
        return VerifyReport(run_id, len(events), False, last_seq + 1, "(head)", reason)
    if not signature_ok(key, run_id, head.seq, head.hash, head.signature):
        reason = (
            "the head is not signed" if head.signature is None else "the head's signature is wrong"
        ) + " with TYPEDMESH_JOURNAL_KEY (forged or written without the key)"
        return VerifyReport(run_id, len(events), False, head.seq, "(head)", reason)
    return VerifyReport(run_id, len(events), True, signed=key is not None)


def blob_refs(event: Event) -> dict[str, list[str]]:
    """The blobs each payload field is stored in: name -> digests.

    Format 2 names them in the event's ``refs`` (hashed with the header):
    ``[digest, is_json]`` for one value, ``["parts", [digest, ...]]`` for a list
    whose items are stored one blob each (a conversation's messages, stored once).
    """
    if event.schema_version >= 2:
        found: dict[str, list[str]] = {}
        for name, ref in (event.refs or {}).items():
            found[name] = [str(d) for d in ref[1]] if ref[0] == "parts" else [str(ref[0])]
        return found
    legacy: dict[str, list[str]] = {}  # format 1 marked blobs inside the payload
    for name, value in event.payload.items():
        if isinstance(value, dict) and "$blob" in value:
            legacy[name] = [str(value["$blob"])]
    return legacy


def _blob_problem(event: Event, journal: Journal) -> str:
    try:
        named = blob_refs(event)
    except (TypeError, IndexError, KeyError, AttributeError):
        return f"malformed blob references: {event.refs!r}"
    for name, refs in named.items():
        for ref in refs:
            try:
                data = journal.blob(ref)
            except JournalCorrupt:
                return f"payload {name!r}: blob {ref} is missing"
            if digest(data) != ref:
                return f"payload {name!r}: blob {ref} does not match its digest"
    return ""


def read_with_head(journal: Journal, run_id: str, *, tries: int = 10) -> tuple[Head, list[Event]]:
    """A run's head and its events as one view, even while another process appends.

    The head and the events are two reads. An append committed between them
    shows more events than the head names, which is also what a forged tail
    looks like; so when the head has moved meanwhile, both are read again. A
    mismatch that stays while the head stands still is the journal's own, for
    ``verify_events`` to judge. Raises ``RunNotFound`` for a run never registered.
    """
    head = journal.head(run_id)
    for _ in range(tries):
        try:
            events = journal.read(run_id)
        except RunNotFound:
            events = []  # every event deleted: the head still says how many there were
        last = events[-1].seq if events else -1
        if last == head.seq:
            return head, events
        again = journal.head(run_id)
        if again.seq == head.seq and again.hash == head.hash:
            return head, events  # nobody is appending: the mismatch is real
        head = again  # a writer committed in between: read both again
    return head, events


def read_verified(journal: Journal, run_id: str) -> list[Event]:
    """A run's events, refused (``JournalCorrupt``) unless chain, blobs, anchored head
    and signature check out: what anything that acts on a journal reads."""
    head, events = read_with_head(journal, run_id)  # RunNotFound: never registered
    report = verify_events(run_id, events, journal, head, key=journal_key())
    if not report.ok:
        raise JournalCorrupt(
            f"run {run_id!r} fails verification at event {report.bad_seq} "
            f"({report.bad_type}): {report.reason}",
            run_id=run_id,
            seq=report.bad_seq,
        )
    return events


def verify_run(journal: Journal, run_id: str) -> VerifyReport:
    """Verify one run of a journal: chain, blobs, anchored head and its signature."""
    head, events = read_with_head(journal, run_id)  # RunNotFound when there is no such run
    return verify_events(run_id, events, journal, head, key=journal_key())


def load_payload(event: Event, journal: Journal, name: str) -> Any:
    """One payload value, with a blob reference resolved."""
    value = event.payload.get(name)
    if event.resolved:
        return value
    ref = (event.refs or {}).get(name) if event.schema_version >= 2 else None
    if ref is not None and ref[0] == "parts":
        return [json.loads(journal.blob(str(d))) for d in ref[1]]
    if ref is not None:
        text = journal.blob(str(ref[0])).decode()
        return json.loads(text) if ref[1] else text
    if event.schema_version < 2 and isinstance(value, dict) and "$blob" in value:
        text = journal.blob(value["$blob"]).decode()
        return json.loads(text) if value.get("json") else text
    return value
