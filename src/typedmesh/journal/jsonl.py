"""Portable journals: one run as JSON lines (events and the blobs they use).

For golden journals checked into a repository, for moving a run between
machines, and for attaching a run to a bug report.
"""

from __future__ import annotations

import json
from pathlib import Path

from .base import Journal
from .events import Event
from .memory import MemoryJournal

__all__ = ["export_jsonl", "import_jsonl"]


def export_jsonl(journal: Journal, run_id: str, path: str | Path) -> int:
    """Write a run's events, then its blobs, one JSON object per line; returns the lines."""
    events = journal.read(run_id)
    digests = sorted(
        {
            v["$blob"]
            for e in events
            for v in e.payload.values()
            if isinstance(v, dict) and "$blob" in v
        }
    )
    lines = [json.dumps({"event": e.to_dict()}) for e in events]
    lines += [json.dumps({"blob": d, "data": journal.blob(d).decode()}) for d in digests]
    Path(path).write_text("\n".join(lines) + "\n")
    return len(lines)


def import_jsonl(path: str | Path, into: Journal | None = None) -> tuple[Journal, str]:
    """Load a run written by ``export_jsonl``; returns the journal and the run id."""
    store = into if into is not None else MemoryJournal()
    events: list[Event] = []
    blobs: dict[str, bytes] = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if "event" in record:
            events.append(Event.from_dict(record["event"]))
        else:
            blobs[record["blob"]] = record["data"].encode()
    store.write(events, blobs)
    return store, events[0].run_id
