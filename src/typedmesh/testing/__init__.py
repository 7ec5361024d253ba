"""Test helpers for users of typedmesh: crash a journal on purpose, check a backend.

``crashed_copy`` gives the journal a crash right after a given event would
have left behind (the head anchored there, as a real crash leaves it);
``typedmesh.testing.journal_conformance`` is the suite every journal backend
passes.
"""

from __future__ import annotations

from ..journal.base import Journal
from ..journal.memory import MemoryJournal
from ..journal.verify import blob_refs

__all__ = ["crashed_copy"]


def crashed_copy(journal: Journal, run_id: str, upto: int) -> MemoryJournal:
    """A new journal holding ``run_id`` as a crash right after event ``upto`` left it."""
    events = journal.read(run_id)[: upto + 1]
    refs = {d for e in events for digests in blob_refs(e).values() for d in digests}
    copy = MemoryJournal()
    copy.import_run(events, {ref: journal.blob(ref) for ref in refs})
    return copy
