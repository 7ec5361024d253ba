"""Conformance: every journal backend stores, orders and returns events the same way."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

import typedmesh as tm
from typedmesh.journal import Event, Journal, RunWriter
from typedmesh.journal.verify import load_payload, verify_events


@pytest.fixture(params=["memory", "sqlite"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Journal]:
    store: Journal = (
        tm.MemoryJournal() if request.param == "memory" else tm.SQLiteJournal(tmp_path / "j.db")
    )
    yield store
    store.close()


def write_run(store: Journal, run_id: str, n: int = 5, big: str = "") -> list[Event]:
    writer = RunWriter(store, run_id, batch_size=2)
    writer.emit("run.started", "flow", {"flow": "flow", "input": {"x": 1}})
    for i in range(n):
        writer.emit(
            "model.request",
            "flow/a",
            {"request": big or f"req {i}"},
            key=f"flow/a/model#{i}",
            agent={"name": "a", "version": "1", "deployment": "local"},
        )
    writer.emit("run.finished", "flow", {"output": {"y": 2}})
    writer.flush()
    return store.read(run_id)


def test_events_come_back_in_order_and_chained(journal: Journal) -> None:
    events = write_run(journal, "r1")
    assert [e.seq for e in events] == list(range(7))
    assert events[1].key == "flow/a/model#0" and events[1].agent == {
        "name": "a",
        "version": "1",
        "deployment": "local",
    }
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
    assert verify_events("r1", events, journal).ok


def test_large_payloads_are_stored_once_by_digest(journal: Journal) -> None:
    big = "x" * 5000
    events = write_run(journal, "r2", n=3, big=big)
    refs = {e.payload["request"]["$blob"] for e in events if e.type == "model.request"}
    assert len(refs) == 1  # three events, one blob
    assert load_payload(events[1], journal, "request") == big


def test_runs_lists_status(journal: Journal) -> None:
    write_run(journal, "done")
    writer = RunWriter(journal, "crashed")
    writer.emit("run.started", "flow", {"flow": "flow"})
    writer.flush()
    runs = {r.run_id: r for r in journal.runs()}
    assert runs["done"].status == "finished" and runs["done"].events == 7
    assert runs["crashed"].status == "incomplete" and runs["crashed"].ended_at is None
    assert runs["done"].flow == "flow"


def test_unknown_run_and_missing_blob(journal: Journal) -> None:
    with pytest.raises(tm.RunNotFound):
        journal.read("nope")
    with pytest.raises(tm.JournalCorrupt):
        journal.blob("sha256:" + "0" * 64)


def test_unflushed_events_are_not_visible(journal: Journal) -> None:
    writer = RunWriter(journal, "r3", batch_size=100)
    writer.emit("run.started", "flow", {"flow": "flow"})
    with pytest.raises(tm.RunNotFound):
        journal.read("r3")
    writer.emit("tool.started", "flow", {"tool": "t"}, key="flow/tool#0", durable=True)
    assert [e.type for e in journal.read("r3")] == ["run.started", "tool.started"]


def test_memory_journal_is_immune_to_mutation_after_write() -> None:
    store = tm.MemoryJournal()
    writer = RunWriter(store, "r")
    event = writer.emit("run.started", "flow", {"flow": "flow", "input": {"a": 1}})
    writer.flush()
    event.payload["input"] = {"a": 2}
    read = store.read("r")[0]
    assert read.payload["input"] == {"a": 1}
    read.payload["input"]["a"] = 3
    assert store.read("r")[0].payload["input"] == {"a": 1}


def test_a_run_id_cannot_be_started_twice(journal: Journal) -> None:
    from pydantic import BaseModel

    class Q(BaseModel):
        q: str

    @tm.step
    def echo(q: Q) -> Q:
        return q

    tm.run(echo, {"q": "a"}, journal=journal, run_id="once")
    assert journal.exists("once") and not journal.exists("twice")
    before = len(journal.read("once"))
    with pytest.raises(tm.ConfigurationError, match="already in the journal"):
        tm.run(echo, {"q": "b"}, journal=journal, run_id="once")
    assert len(journal.read("once")) == before
