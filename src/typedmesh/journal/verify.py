"""Integrity: check a run's hash chain and its blobs; load payloads back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import JournalCorrupt
from .base import Journal
from .events import GENESIS_HASH, Event, chain_hash, digest

__all__ = ["VerifyReport", "load_payload", "verify_events", "verify_run"]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The result of ``verify``: ``ok``, or the first bad event and why."""

    run_id: str
    events: int
    ok: bool
    bad_seq: int | None = None
    bad_type: str | None = None
    reason: str = ""


def verify_events(run_id: str, events: list[Event], journal: Journal | None = None) -> VerifyReport:
    """Recompute the chain; with ``journal``, also check every referenced blob's digest."""
    prev = GENESIS_HASH
    for expected_seq, event in enumerate(events):
        reason = ""
        if event.seq != expected_seq:
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
    return VerifyReport(run_id, len(events), True)


def _blob_problem(event: Event, journal: Journal) -> str:
    for name, value in event.payload.items():
        if isinstance(value, dict) and "$blob" in value:
            try:
                data = journal.blob(value["$blob"])
            except JournalCorrupt:
                return f"payload {name!r}: blob {value['$blob']} is missing"
            if digest(data) != value["$blob"]:
                return f"payload {name!r}: blob {value['$blob']} does not match its digest"
    return ""


def verify_run(journal: Journal, run_id: str) -> VerifyReport:
    """Verify one run of a journal."""
    return verify_events(run_id, journal.read(run_id), journal)


def load_payload(event: Event, journal: Journal, name: str) -> Any:
    """One payload value, with a blob reference resolved."""
    value = event.payload.get(name)
    if isinstance(value, dict) and "$blob" in value:
        text = journal.blob(value["$blob"]).decode()
        return json.loads(text) if value.get("json") else text
    return value
