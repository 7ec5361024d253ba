"""Results for waiting effects: recorded from outside the run, then ``resume`` continues.

An effect kind that may wait (a human approval, a signal) suspends its run:
the journal holds it with status ``waiting`` and no process needs to stay
alive. ``record_result`` appends the result under a short lease of its own,
as one conditional append, so two deciders cannot both record one; the next
``resume`` serves it to the run like any journaled result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from ..errors import ConfigurationError
from ..journal import open_journal
from ..journal.base import Journal, new_owner
from ..journal.events import Event
from ..journal.writer import EventLog, JournalSink
from .effects import index_events
from .kinds import EffectKind, kind_of_event
from .replay import verified_events

__all__ = ["record_result", "waiting_effects"]


def waiting_effects(run_id: str, *, journal: str | Path | Journal) -> list[str]:
    """The keys of a run's effects that wait for a result."""
    store = open_journal(journal, must_exist=True)
    return sorted(_waiting(verified_events(store, run_id), store))


def _waiting(events: list[Event], store: Journal) -> dict[str, tuple[EffectKind, Event]]:
    """Waiting effects by key, with their kind and started event.

    A kind this process never registered (the flow that defined it is not
    imported here) is known by its ``<name>.waiting`` event: its result is
    recorded the default way, ``{"result": value}``.
    """
    found: dict[str, tuple[EffectKind, Event]] = {}
    for effect_key, rec in index_events(events, store).effects.items():
        if rec.status == "waiting" and rec.started_event is not None:
            found[effect_key] = (rec.kind, rec.started_event)
    done = {e.key for e in events if e.key and e.type.endswith((".completed", ".error"))}
    for event in events:
        name, _, phase = event.type.rpartition(".")
        key = event.key
        unknown = kind_of_event(event.type) is None
        if phase == "waiting" and unknown and key and key not in found and key not in done:
            found[key] = (_unregistered(name), event)
    return found


def _unregistered(name: str) -> EffectKind:
    kind = type(f"Unregistered_{name}", (EffectKind,), {"name": name, "may_wait": True})
    return cast(EffectKind, kind())


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
        events = verified_events(store, run_id)
        waiting = _waiting(events, store)
        if key not in waiting:
            raise ConfigurationError(
                f"run {run_id!r}: {key} is not waiting for a result "
                f"(waiting: {sorted(waiting) or 'nothing'})"
            )
        kind, started = waiting[key]
        sink = JournalSink(store, lease, ttl=10.0)
        log = EventLog(run_id, seq=len(events), prev_hash=events[-1].hash, sinks=[sink])
        fields, raw = kind.record_result(result)
        log.emit(
            kind.completed_type,
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
