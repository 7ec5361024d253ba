"""Results for waiting effects: recorded from outside the run, then ``resume`` continues.

An effect kind that may wait (a human approval, a signal) suspends its run:
the journal holds it with status ``waiting`` and no process needs to stay
alive. ``record_result`` appends the result under a short lease of its own,
as one conditional append, so two deciders cannot both record one; the next
``resume`` serves it to the run like any journaled result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..journal import open_journal
from ..journal.base import Journal, new_owner
from ..journal.writer import EventLog, JournalSink
from .effects import index_events
from .replay import _verified

__all__ = ["record_result", "waiting_effects"]


def waiting_effects(run_id: str, *, journal: str | Path | Journal) -> list[str]:
    """The keys of a run's effects that wait for a result."""
    store = open_journal(journal, must_exist=True)
    index = index_events(_verified(store, run_id), store)
    return [k for k, r in index.effects.items() if r.status == "waiting"]


def record_result(
    run_id: str,
    key: str,
    result: Any,
    *,
    journal: str | Path | Journal,
    recorded_by: str | None = None,
) -> None:
    """Record ``result`` for the waiting effect ``key`` of ``run_id``.

    ``recorded_by`` (who decided) is journaled with it. Refused when the
    effect is not waiting (unknown, or already has a result) or when the run
    is being written by a live process.
    """
    store = open_journal(journal, must_exist=True)
    lease = store.acquire(run_id, new_owner(), ttl=10.0)
    try:
        events = _verified(store, run_id)
        rec = index_events(events, store).effects.get(key)
        if rec is None or rec.status != "waiting" or rec.started_event is None:
            state = "no such effect" if rec is None else f"its status is {rec.status!r}"
            raise ConfigurationError(f"run {run_id!r}: {key} is not waiting for a result ({state})")
        sink = JournalSink(store, lease, ttl=10.0)
        log = EventLog(run_id, seq=len(events), prev_hash=events[-1].hash, sinks=[sink])
        fields, raw = rec.kind.record_result(result)
        started = rec.started_event
        log.emit(
            rec.kind.completed_type,
            started.path,
            {**fields, "recorded_by": recorded_by},
            key=key,
            span_id=started.span_id,
            parent_span_id=started.parent_span_id,
            agent=started.agent,
            raw=raw,
        )
        sink.flush()
    finally:
        store.release(lease, "waiting")
