"""The journal backend interface: append-only events and content-addressed blobs.

A backend stores what ``RunWriter`` hands it in one transaction per batch and
gives it back in order. Memory and SQLite ship in the core; PostgreSQL slots
in by implementing the same five methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .events import Event

__all__ = ["Journal", "RunInfo"]


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One line of ``typedmesh runs``."""

    run_id: str
    flow: str
    status: str
    started_at: str
    ended_at: str | None
    events: int


class Journal(ABC):
    """Where runs are journaled. Appends are atomic per ``write`` call."""

    @abstractmethod
    def write(self, events: Sequence[Event], blobs: Mapping[str, bytes]) -> None:
        """Store blobs (idempotently, by digest) and append events, atomically."""

    @abstractmethod
    def read(self, run_id: str) -> list[Event]:
        """Every event of a run in order; ``RunNotFound`` if there is none."""

    def exists(self, run_id: str) -> bool:
        """Whether the journal holds any event of ``run_id``."""
        from ..errors import RunNotFound

        try:
            self.read(run_id)
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

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def summarize(run_id: str, events: Sequence[Event]) -> RunInfo:
    """A RunInfo from a run's events (shared by backends that keep no run table)."""
    first, last = events[0], events[-1]
    status = {"run.finished": "finished", "run.failed": "failed"}.get(last.type, "incomplete")
    return RunInfo(
        run_id=run_id,
        flow=str(first.payload.get("flow", first.path)),
        status=status,
        started_at=first.ts,
        ended_at=last.ts if status != "incomplete" else None,
        events=len(events),
    )
