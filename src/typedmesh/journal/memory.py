"""An in-memory journal: for tests and for runs that need replay within one process."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import JournalCorrupt, RunNotFound
from .base import Journal, RunInfo, summarize
from .events import Event

__all__ = ["MemoryJournal"]


class MemoryJournal(Journal):
    """Keeps copies of events, so mutating an Event after write or read changes nothing."""

    def __init__(self) -> None:
        self._events: dict[str, list[dict[str, Any]]] = {}
        self._blobs: dict[str, bytes] = {}

    def write(self, events: Sequence[Event], blobs: Mapping[str, bytes]) -> None:
        self._blobs.update(blobs)
        for event in events:
            # the record holds only strings and numbers: later mutation of the Event is moot
            self._events.setdefault(event.run_id, []).append(event.to_dict())

    def read(self, run_id: str) -> list[Event]:
        rows = self._events.get(run_id)
        if not rows:
            raise RunNotFound(f"no run {run_id!r} in this journal")
        return [Event.from_dict(row) for row in rows]  # decoded afresh for each reader

    def exists(self, run_id: str) -> bool:
        return run_id in self._events

    def blob(self, digest: str) -> bytes:
        try:
            return self._blobs[digest]
        except KeyError:
            raise JournalCorrupt(f"blob {digest} is missing") from None

    def runs(self) -> list[RunInfo]:
        infos = [summarize(run_id, self.read(run_id)) for run_id in self._events]
        return sorted(infos, key=lambda r: r.started_at, reverse=True)
