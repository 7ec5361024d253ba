"""Portable journals: one run as JSON lines (events, the blobs they use, its head).

For golden journals checked into a repository, for moving a run between
machines, and for attaching a run to a bug report. The head travels with
the run, so a cut tail is caught after an export too.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import JournalCorrupt
from .base import Head, Journal
from .events import Event
from .memory import MemoryJournal
from .verify import blob_refs, read_with_head

__all__ = ["export_jsonl", "import_jsonl"]


def export_jsonl(journal: Journal, run_id: str, path: str | Path) -> int:
    """Write a run's events, its blobs, then its head, one JSON object per line."""
    head, events = read_with_head(journal, run_id)  # one view, even while it is appended to
    digests = sorted({d for e in events for refs in blob_refs(e).values() for d in refs})
    lines = [json.dumps({"event": e.to_dict()}) for e in events]
    lines += [json.dumps({"blob": d, "data": journal.blob(d).decode()}) for d in digests]
    lines.append(json.dumps({"head": {**asdict(head), "owner": None, "expires_at": 0.0}}))
    Path(path).write_text("\n".join(lines) + "\n")
    return len(lines)


def import_jsonl(path: str | Path, into: Journal | None = None) -> tuple[Journal, str]:
    """Load a run written by ``export_jsonl``; returns the journal and the run id."""
    store = into if into is not None else MemoryJournal()
    events: list[Event] = []
    blobs: dict[str, bytes] = {}
    head: Head | None = None
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if "event" in record:
                events.append(Event.from_dict(record["event"]))
            elif "head" in record:
                head = _head(record["head"])
            else:
                blobs[record["blob"]] = record["data"].encode()
        except (json.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
            raise JournalCorrupt(f"{path}: line {number} is not a journal record: {exc}") from exc
    if not events:
        raise JournalCorrupt(f"{path} holds no events: not an exported run")
    store.import_run(events, blobs, head)
    return store, events[0].run_id


def _head(data: dict[str, Any]) -> Head:
    """The exported head, its fields checked: a garbled head is not a head."""
    head = Head(**data)
    typed = (
        isinstance(head.run_id, str)
        and type(head.seq) is int
        and isinstance(head.hash, str)
        and (head.signature is None or isinstance(head.signature, str))
        and isinstance(head.status, str)
    )
    if not typed:
        raise ValueError(f"a head's fields have the wrong types: {data}")
    return head
