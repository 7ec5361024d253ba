"""The journal conformance suite: what every journal backend promises, as tests.

Each ``test_*`` method of ``JournalConformance`` is one promise of the
``Journal`` interface, most of them written as an attack: a stale or forged
lease appending, a zombie writer after a takeover, a tail cut from the
journal, a forged run with every hash recomputed, a payload that looks like a
blob reference. Memory and SQLite pass it; a new backend (PostgreSQL, ...)
passes it unchanged.

With pytest, subclass it under a name pytest collects and say how to make an
empty journal; pytest runs every method::

    from typedmesh.testing.journal_conformance import JournalConformance

    class TestPostgresJournal(JournalConformance):
        def make_journal(self) -> Journal:
            return PostgresJournal(DSN, schema=f"t_{uuid.uuid4().hex}")

        def reopen(self, journal: Journal) -> Journal:  # optional
            return PostgresJournal(DSN, schema=journal.schema)

        def drop_tail(self, journal: Journal, run_id: str, count: int) -> None:
            ...  # optional: delete the last events, keep the head (skipped if absent)

``self.tmp_path`` is a fresh directory per test; every journal made or
reopened through the suite is closed after the test. (For pytest's assertion
messages, add ``pytest.register_assert_rewrite("typedmesh.testing.journal_conformance")``
to a ``conftest.py``; plain ``assert`` messages are given either way.)

Without pytest, ``check_backend(make_journal)`` runs every method and returns
one ``CheckResult`` each. Importing this module does not import pytest; only
a skipped test asks for it (to report the skip), if it is installed.

The suite sleeps a little (lease expiry, under a second in all), starts one
short-lived ``python`` process (to name an owner that is dead) and runs small
flows on scripted models, offline. It unsets ``TYPEDMESH_JOURNAL_KEY`` for
each test (restored after it) and sets it around the signing tests, so run it
where nothing else in the process reads that variable at the same time.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

from pydantic import BaseModel, ConfigDict

from ..errors import (
    JournalCorrupt,
    LeaseHeld,
    LeaseLost,
    RunExists,
    RunNotFound,
)
from ..journal.anchor import KEY_ENV, sign_head
from ..journal.base import Journal, Lease, new_owner
from ..journal.events import GENESIS_HASH, Event, chain_hash, digest, dumps
from ..journal.jsonl import export_jsonl, import_jsonl
from ..journal.verify import blob_refs, load_payload, verify_run
from ..journal.writer import BLOB_THRESHOLD, EventLog, JournalSink

__all__ = ["CheckResult", "JournalConformance", "check_backend"]

AGENT = {"name": "a", "version": "1", "deployment": "local"}


# -- helpers (pytest-free) ------------------------------------------------------------


class ConformanceSkip(Exception):
    """A test that does not apply to this backend (raised when pytest is not installed)."""


def skip(reason: str) -> NoReturn:
    """Skip the current test: ``pytest.skip`` when pytest is installed, else ``ConformanceSkip``."""
    try:
        import pytest
    except ImportError:
        raise ConformanceSkip(reason) from None
    pytest.skip(reason)


@dataclass
class Raised:
    """What ``raises`` caught."""

    value: BaseException | None = None


@contextmanager
def raises(kind: type[BaseException], match: str | None = None) -> Iterator[Raised]:
    """``pytest.raises`` without pytest: the block raises ``kind`` (its text holds ``match``)."""
    caught = Raised()
    try:
        yield caught
    except kind as exc:
        caught.value = exc
        if match is not None and match not in str(exc):
            raise AssertionError(f"{kind.__name__} raised, but {match!r} not in {exc}") from exc
        return
    raise AssertionError(f"{kind.__name__} was not raised")


@contextmanager
def journal_key(value: str | None) -> Iterator[None]:
    """Set (or unset, with None) ``TYPEDMESH_JOURNAL_KEY`` for the block."""
    before = os.environ.get(KEY_ENV)
    if value is None:
        os.environ.pop(KEY_ENV, None)
    else:
        os.environ[KEY_ENV] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(KEY_ENV, None)
        else:
            os.environ[KEY_ENV] = before


@dataclass(frozen=True)
class Snapshot:
    """A run as stored: its events (seq, hash), its head's anchor and signature."""

    events: tuple[tuple[int, str], ...]
    head_seq: int
    head_hash: str
    signature: str | None


def snapshot(journal: Journal, run_id: str) -> Snapshot:
    try:
        events = tuple((e.seq, e.hash) for e in journal.read(run_id))
    except RunNotFound:
        events = ()
    head = journal.head(run_id)
    return Snapshot(events, head.seq, head.hash, head.signature)


def dead_owner() -> str:
    """An owner id naming a process on this host that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return f"{socket.gethostname()}:{child.pid}:deadbeef"


def chain(run_id: str, specs: Iterable[tuple[str, dict[str, Any]]], **fields: Any) -> list[Event]:
    """Events built by hand (not by an EventLog), hash-chained from genesis."""
    events: list[Event] = []
    prev = GENESIS_HASH
    for seq, (type_, payload) in enumerate(specs):
        event = Event(
            run_id=run_id,
            seq=seq,
            type=type_,
            path="flow",
            ts=f"2026-01-01T00:00:{seq:02d}+00:00",
            payload=payload,
            prev_hash=prev,
            **fields,
        )
        event.hash = chain_hash(event)
        prev = event.hash
        events.append(event)
    return events


def rechain(events: list[Event], start: int = 0) -> list[Event]:
    """Recompute every hash from ``events[start]`` on, as a forger does after an edit."""
    prev = events[start - 1].hash if start > 0 else GENESIS_HASH
    for event in events[start:]:
        event.prev_hash = prev
        event.hash = chain_hash(event)
        prev = event.hash
    return events


def blobs_of(journal: Journal, events: Iterable[Event]) -> dict[str, bytes]:
    refs = {d for e in events for digests in blob_refs(e).values() for d in digests}
    return {ref: journal.blob(ref) for ref in refs}


# -- flows the suite runs ---------------------------------------------------------------


class Ask(BaseModel):
    order_id: str


class Answer(BaseModel):
    answer: str


class Loose(BaseModel):
    """Any JSON object: a run input that is exactly ``{"$blob": ..., "json": true}``."""

    model_config = ConfigDict(extra="allow")


@dataclass
class RefundFlow:
    """An agent that calls a non-idempotent refund tool once; ``refunds`` counts the calls."""

    flow: Any
    refunds: list[str]


def refund_flow() -> RefundFlow:
    import typedmesh as tm
    from typedmesh.models.base import ModelRequest

    refunds: list[str] = []

    @tm.tool(idempotent=False)
    def refund(order_id: str) -> str:
        """Refund an order: money leaves the account each time it is called."""
        refunds.append(order_id)
        return f"refunded {order_id}"

    def script(request: ModelRequest) -> dict[str, Any]:
        if not any(m.role == "tool" for m in request.messages):
            return {"tool_calls": [{"name": "refund", "arguments": {"order_id": "A1"}}]}
        return {"answer": request.messages[-1].content or ""}

    clerk = tm.Agent(
        "clerk",
        input=Ask,
        output=Answer,
        tools=[refund],
        model=tm.ScriptedModel(script),
    )
    return RefundFlow(clerk, refunds)


def lookup_flow(result: dict[str, Any]) -> Any:
    """An agent whose (idempotent) tool returns ``result`` and which answers with its JSON."""
    import typedmesh as tm
    from typedmesh.models.base import ModelRequest

    @tm.tool
    def lookup(order_id: str) -> dict[str, Any]:
        """Look an order up."""
        return result

    def script(request: ModelRequest) -> dict[str, Any]:
        if not any(m.role == "tool" for m in request.messages):
            return {"tool_calls": [{"name": "lookup", "arguments": {"order_id": "A1"}}]}
        return {"answer": request.messages[-1].content or ""}

    return tm.Agent(
        "clerk", input=Ask, output=Answer, tools=[lookup], model=tm.ScriptedModel(script)
    )


def echo_flow() -> Any:
    import typedmesh as tm

    @tm.step(name="echo")
    def echo(value: Loose) -> Loose:
        return value

    return echo


# -- the suite ----------------------------------------------------------------------------


class JournalConformance:
    """Every promise of the ``Journal`` interface, one ``test_*`` method each.

    Subclass it (``class TestMyJournal(JournalConformance)``) and define
    ``make_journal``; ``reopen`` and ``drop_tail`` are optional.
    """

    tmp_path: Path
    _made: list[Journal]
    _key: str | None

    # -- what a backend provides ---------------------------------------------------------

    def make_journal(self) -> Journal:
        """A new, empty journal (``self.tmp_path`` is this test's scratch directory)."""
        raise NotImplementedError("define make_journal() in your JournalConformance subclass")

    def reopen(self, journal: Journal) -> Journal:
        """A second handle onto the same storage (another connection); default: the same."""
        return journal

    def drop_tail(self, journal: Journal, run_id: str, count: int) -> None:
        """Delete a run's last ``count`` events but keep its head, as an attacker with
        write access to the storage would. Default: the backend's ``tamper_drop_tail``."""
        hook = getattr(journal, "tamper_drop_tail", None)
        if hook is None:
            self.skip(f"{type(journal).__name__} has no tamper_drop_tail: define drop_tail()")
        hook(run_id, count)

    def skip(self, reason: str) -> NoReturn:
        """Skip the current test (``pytest.skip`` under pytest)."""
        skip(reason)

    # -- lifecycle (pytest's xunit-style hooks; check_backend calls them too) --------------

    def setup_method(self, method: object = None) -> None:
        self.tmp_path = Path(tempfile.mkdtemp(prefix="typedmesh-conformance-"))
        self._made = []
        self._key = os.environ.pop(KEY_ENV, None)  # each test sets the key it needs

    def teardown_method(self, method: object = None) -> None:
        for journal in reversed(self._made):
            with contextlib.suppress(Exception):  # a test may close a journal itself
                journal.close()
        self._made = []
        shutil.rmtree(self.tmp_path, ignore_errors=True)
        if self._key is not None:
            os.environ[KEY_ENV] = self._key

    def journal(self) -> Journal:
        """A new empty journal, closed after the test."""
        journal = self.make_journal()
        self._made.append(journal)
        return journal

    def second_handle(self, journal: Journal) -> Journal:
        other = self.reopen(journal)
        if other is not journal:
            self._made.append(other)
        return other

    # -- helpers -------------------------------------------------------------------------

    def write_run(
        self, journal: Journal, run_id: str, n: int = 5, big: str = "", batch_size: int = 2
    ) -> list[Event]:
        """A finished run of ``n + 2`` events written through EventLog and JournalSink."""
        lease = journal.create_run(run_id, new_owner(), flow="flow")
        sink = JournalSink(journal, lease, batch_size=batch_size)
        log = EventLog(run_id, sinks=[sink])
        log.emit("run.started", "flow", {"flow": "flow", "input": {"x": 1}})
        for i in range(n):
            log.emit(
                "model.request",
                "flow/a",
                {"request": big or f"req {i}"},
                key=f"flow/a/model#{i}",
                agent=AGENT,
            )
        log.emit("run.finished", "flow", {"output": {"y": 2}})
        sink.flush()
        sink.release("finished")
        return journal.read(run_id)

    def started(
        self, journal: Journal, run_id: str, count: int = 3
    ) -> tuple[JournalSink, EventLog]:
        """A run being written: ``count`` events appended; the writer's sink and log."""
        lease = journal.create_run(run_id, new_owner(), flow="flow", ttl=60)
        sink = JournalSink(journal, lease)
        log = EventLog(run_id, sinks=[sink])
        for i in range(count):
            log.emit("note", "flow", {"i": i})
        sink.flush()
        return sink, log

    def refund_run(self, journal: Journal, run_id: str) -> RefundFlow:
        import typedmesh as tm

        made = refund_flow()
        tm.run(made.flow, {"order_id": "A1"}, journal=journal, run_id=run_id)
        assert made.refunds == ["A1"], made.refunds
        return made

    def crashed(self, source: Journal, run_id: str, upto: int) -> Journal:
        """A new journal holding ``run_id`` as a crash right after event ``upto`` left it."""
        events = source.read(run_id)[: upto + 1]
        copy = self.journal()
        copy.import_run(events, blobs_of(source, events))
        return copy

    # -- storage ---------------------------------------------------------------------------

    def test_events_come_back_in_order_and_chained(self) -> None:
        journal = self.journal()
        events = self.write_run(journal, "r1")
        assert [e.seq for e in events] == list(range(7))
        assert events[1].key == "flow/a/model#0" and events[1].agent == AGENT
        assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
        head = journal.head("r1")
        assert (head.seq, head.hash, head.status) == (6, events[-1].hash, "finished")
        assert verify_run(journal, "r1").ok

    def test_large_payloads_are_stored_once_by_digest(self) -> None:
        journal = self.journal()
        big = "x" * (BLOB_THRESHOLD * 5)
        events = self.write_run(journal, "r2", n=3, big=big)
        requests = [e for e in events if e.type == "model.request"]
        refs = {json.dumps(e.refs) for e in requests}
        assert len(refs) == 1 and requests[0].refs is not None  # three events, one blob
        ((ref, is_json),) = requests[0].refs.values()
        assert journal.blob(ref) == big.encode() and is_json is False
        assert load_payload(requests[1], journal, "request") == big
        assert verify_run(journal, "r2").ok

    def test_unknown_run_and_missing_blob(self) -> None:
        journal = self.journal()
        with raises(RunNotFound):
            journal.read("nope")
        with raises(RunNotFound):
            journal.head("nope")
        with raises(RunNotFound):
            journal.acquire("nope", new_owner())
        with raises(RunNotFound):
            verify_run(journal, "nope")
        with raises(JournalCorrupt):
            journal.blob("sha256:" + "0" * 64)
        assert not journal.exists("nope")

    def test_unflushed_events_are_not_visible(self) -> None:
        journal = self.journal()
        lease = journal.create_run("r3", new_owner())
        sink = JournalSink(journal, lease, batch_size=100)
        log = EventLog("r3", sinks=[sink])
        log.emit("run.started", "flow", {"flow": "flow"})
        with raises(RunNotFound):
            journal.read("r3")
        assert journal.head("r3").seq == -1 and journal.exists("r3")
        log.emit("tool.started", "flow", {"tool": "t"}, key="flow/tool#0")
        sink.flush()
        assert [e.type for e in journal.read("r3")] == ["run.started", "tool.started"]
        assert journal.head("r3").seq == 1

    def test_events_read_back_are_copies(self) -> None:
        journal = self.journal()
        lease = journal.create_run("r", new_owner())
        sink = JournalSink(journal, lease)
        log = EventLog("r", sinks=[sink])
        event = log.emit("run.started", "flow", {"flow": "flow", "input": {"a": 1}})
        log.emit("model.request", "flow", {"request": "y" * (BLOB_THRESHOLD * 2)})
        sink.flush()
        event.payload["input"] = {"a": 2}
        first, second = journal.read("r")
        assert first.payload["input"] == {"a": 1}
        first.payload["input"]["a"] = 3
        assert second.refs is not None
        second.refs["request"][0] = "sha256:" + "f" * 64
        again = journal.read("r")
        assert again[0].payload["input"] == {"a": 1}
        assert again[1].refs is not None and again[1].refs["request"][0] != "sha256:" + "f" * 64
        assert verify_run(journal, "r").ok

    def test_runs_lists_status_flow_and_counts(self) -> None:
        journal = self.journal()
        self.write_run(journal, "done")
        crashed = journal.create_run("crashed", dead_owner(), flow="flow")
        EventLog("crashed", sinks=[JournalSink(journal, crashed, batch_size=1)]).emit(
            "run.started", "flow", {"flow": "flow"}
        )
        live = journal.create_run("live", new_owner(), flow="flow", ttl=60)
        EventLog("live", sinks=[JournalSink(journal, live, batch_size=1)]).emit(
            "run.started", "flow", {"flow": "flow"}
        )
        journal.create_run("empty", new_owner(), flow="flow")  # nothing appended: not listed
        runs = {r.run_id: r for r in journal.runs()}
        assert set(runs) == {"done", "crashed", "live"}, runs
        assert runs["done"].status == "finished" and runs["done"].events == 7
        assert runs["done"].flow == "flow" and runs["done"].ended_at is not None
        assert runs["crashed"].status == "incomplete" and runs["crashed"].ended_at is None
        assert runs["live"].status == "running" and runs["live"].events == 1
        assert all(r.started_at for r in runs.values())

    def test_a_run_id_cannot_be_started_twice(self) -> None:
        import typedmesh as tm

        journal = self.journal()
        made = self.refund_run(journal, "once")
        before = snapshot(journal, "once")
        with raises(RunExists, match="already in the journal"):
            tm.run(made.flow, {"order_id": "B2"}, journal=journal, run_id="once")
        with raises(RunExists):
            self.second_handle(journal).create_run("once", new_owner())
        assert snapshot(journal, "once") == before and made.refunds == ["A1"]

    # -- conditional append -----------------------------------------------------------------

    def test_append_with_a_stale_seq_is_refused_and_writes_nothing(self) -> None:
        """A writer whose idea of the head is behind (it missed an append) is refused."""
        journal = self.journal()
        sink, log = self.started(journal, "r")
        lease = sink.lease
        before = snapshot(journal, "r")
        events = journal.read("r")
        big = "z" * (BLOB_THRESHOLD * 2)
        # a second log continuing from event 0, as a writer that missed events 1 and 2
        stale = EventLog("r", seq=1, prev_hash=events[0].hash)
        batch: list[tuple[Event, dict[str, bytes]]] = []
        stale.sinks.append(_Collect(batch))
        stale.emit("note", "flow", {"forged": big})
        stale_events, stale_blobs = [batch[0][0]], batch[0][1]
        with raises(LeaseLost, match="head is at seq 2"):
            journal.append(lease, stale_events, stale_blobs)
        # the same batch again after it landed (a retried append) is refused too
        with raises(LeaseLost):
            journal.append(lease, events[1:], {})
        # the right seq, but not chained to the head's hash
        wrong = chain("r", [("note", {"i": "x"})] * 4)[3:]
        with raises(LeaseLost, match="chain"):
            journal.append(lease, wrong, {})
        # a gap: seq 5 after a head at 2
        gap = EventLog("r", seq=5, prev_hash=events[-1].hash)
        gap.sinks.append(_Collect(batch))
        gap.emit("note", "flow", {"gap": True})
        with raises(LeaseLost):
            journal.append(lease, [batch[-1][0]], {})
        assert snapshot(journal, "r") == before
        (ref,) = stale_blobs
        with raises(JournalCorrupt):
            journal.blob(ref)  # a refused batch stores no blob either
        log.emit("note", "flow", {"i": 3})  # the owner itself still appends
        sink.flush()
        assert journal.head("r").seq == 3 and verify_run(journal, "r").ok

    def test_append_under_an_old_token_after_takeover_is_refused(self) -> None:
        journal = self.journal()
        old = journal.create_run("r", new_owner(), ttl=0.2)
        log = EventLog("r", sinks=[JournalSink(journal, old, ttl=0.2, batch_size=1)])
        log.emit("run.started", "flow", {"flow": "flow"})  # appended: the lease renewed, 0.2 s
        time.sleep(0.3)
        other = self.second_handle(journal)
        new = other.acquire("r", new_owner(), ttl=60)
        assert new.token == old.token + 1
        before = snapshot(journal, "r")
        with raises(LeaseLost, match="no longer the run's"):
            log.emit("tool.started", "flow", {"tool": "refund"})  # the zombie's next append
        assert snapshot(journal, "r") == before
        # the new owner continues from the head; the zombie's log is dead
        events = journal.read("r")
        fresh = EventLog("r", seq=1, prev_hash=events[-1].hash)
        fresh.sinks.append(JournalSink(other, new, batch_size=1))
        fresh.emit("run.resumed", "flow", {})
        assert journal.head("r").seq == 1 and verify_run(journal, "r").ok

    def test_append_by_a_non_owner_is_refused(self) -> None:
        journal = self.journal()
        lease = self.started(journal, "r")[0].lease
        before = snapshot(journal, "r")
        events = journal.read("r")
        nxt = EventLog("r", seq=3, prev_hash=events[-1].hash)
        batch: list[tuple[Event, dict[str, bytes]]] = []
        nxt.sinks.append(_Collect(batch))
        nxt.emit("tool.started", "flow", {"tool": "refund"})
        forged = [batch[0][0]]
        for intruder in (
            replace(lease, owner=new_owner()),  # the right token, another owner
            replace(lease, token=lease.token + 1),  # the right owner, a guessed token
            replace(lease, token=lease.token - 1),
            Lease("r", "", lease.token, lease.expires_at),
        ):
            with raises(LeaseLost):
                journal.append(intruder, forged, {})
            with raises(LeaseLost):
                journal.renew(intruder)
            journal.release(intruder, "failed")
        assert snapshot(journal, "r") == before
        assert journal.head("r").owner == lease.owner and journal.head("r").status == "running"
        # a lease on one run never writes another run's events
        self.started(journal, "victim", count=1)
        victim = journal.read("victim")
        into_victim = EventLog("victim", seq=1, prev_hash=victim[-1].hash)
        into_victim.sinks.append(_Collect(batch))
        into_victim.emit("run.finished", "flow", {"output": "forged"})
        smuggled = replace(batch[-1][0], run_id="r", seq=3, prev_hash=events[-1].hash)
        with raises(LeaseLost):
            journal.append(lease, [smuggled, batch[-1][0]], {})
        with raises(LeaseLost):
            journal.append(replace(lease, run_id="victim"), [batch[-1][0]], {})
        assert snapshot(journal, "r") == before and len(journal.read("victim")) == 1

    def test_an_empty_append_by_a_lost_lease_is_refused(self) -> None:
        journal = self.journal()
        lease = self.started(journal, "r")[0].lease
        journal.release(lease, "incomplete")
        taker = journal.acquire("r", new_owner())
        with raises(LeaseLost):
            journal.append(lease, [], {})
        renewed = journal.append(taker, [], {}, ttl=60)
        assert renewed.token == taker.token and journal.head("r").owner == taker.owner

    def test_a_batch_must_be_consecutive_and_chained(self) -> None:
        journal = self.journal()
        lease = self.started(journal, "r", count=1)[0].lease
        full = journal.read("r") + chain("r", [("note", {"i": i}) for i in range(4)])[1:]
        first, second, third = rechain(full, 1)[1:]
        third_skipped = [first, third]  # seq 1 then 3
        with raises(LeaseLost):
            journal.append(lease, third_skipped, {})
        unchained = [first, replace(second, prev_hash=GENESIS_HASH)]
        with raises(LeaseLost):
            journal.append(lease, unchained, {})
        assert journal.head("r").seq == 0 and len(journal.read("r")) == 1
        journal.append(lease, [first, second, third], {})
        assert journal.head("r").seq == 3 and verify_run(journal, "r").ok

    # -- leases ------------------------------------------------------------------------------

    def test_create_run_twice_is_run_exists(self) -> None:
        journal = self.journal()
        journal.create_run("r", new_owner())
        with raises(RunExists) as caught:
            journal.create_run("r", new_owner())
        assert getattr(caught.value, "run_id", None) == "r"
        with raises(RunExists):
            self.second_handle(journal).create_run("r", new_owner())

    def test_acquire_while_held_is_lease_held_with_owner_and_expiry(self) -> None:
        journal = self.journal()
        owner = new_owner()
        lease = journal.create_run("r", owner, ttl=60)
        before = journal.head("r")
        for handle in (journal, self.second_handle(journal)):
            with raises(LeaseHeld) as caught:
                handle.acquire("r", new_owner())
            err = caught.value
            assert isinstance(err, LeaseHeld)
            assert err.run_id == "r" and err.owner == owner
            assert abs(err.expires_at - lease.expires_at) < 1e-3
        assert journal.head("r") == before  # the refused acquire changed nothing
        again = journal.acquire("r", owner)  # its own owner may re-take it (a new token)
        assert again.token == lease.token + 1

    def test_an_expired_lease_is_taken_over_and_its_owner_fenced(self) -> None:
        journal = self.journal()
        old = journal.create_run("r", new_owner(), ttl=0.2)
        with raises(LeaseHeld):
            journal.acquire("r", new_owner())
        time.sleep(0.3)
        taker = new_owner()
        new = self.second_handle(journal).acquire("r", taker, ttl=60)
        assert new.token == old.token + 1 and new.owner == taker
        with raises(LeaseLost):
            journal.renew(old)
        journal.release(old, "finished")
        head = journal.head("r")
        assert head.owner == taker and head.token == new.token and head.status == "running"
        with raises(LeaseLost):
            journal.append(old, chain("r", [("run.started", {"flow": "flow"})]), {})
        journal.append(new, chain("r", [("run.started", {"flow": "flow"})]), {})
        assert journal.head("r").seq == 0

    def test_a_dead_owner_on_this_host_is_taken_over_at_once(self) -> None:
        journal = self.journal()
        corpse = dead_owner()
        old = journal.create_run("r", corpse, ttl=3600)
        new = journal.acquire("r", new_owner())
        assert new.token == old.token + 1
        with raises(LeaseLost):
            journal.renew(old)

    def test_a_live_owner_elsewhere_is_not_presumed_dead(self) -> None:
        journal = self.journal()
        journal.create_run("r", "another-host.example:1:cafe", ttl=3600)
        with raises(LeaseHeld):
            journal.acquire("r", new_owner())
        journal.create_run("mine", new_owner(), ttl=3600)  # this very process: alive
        with raises(LeaseHeld):
            journal.acquire("mine", new_owner())

    def test_renew_after_takeover_is_lease_lost(self) -> None:
        journal = self.journal()
        old = journal.create_run("r", new_owner(), ttl=0.1)
        renewed = journal.renew(old, ttl=0.1)
        assert renewed.expires_at >= old.expires_at and renewed.token == old.token
        time.sleep(0.2)
        journal.acquire("r", new_owner())
        with raises(LeaseLost):
            journal.renew(renewed)

    def test_release_with_a_stale_lease_changes_nothing(self) -> None:
        journal = self.journal()
        old = self.started(journal, "r")[0].lease
        journal.release(old, "incomplete")
        new = journal.acquire("r", new_owner(), ttl=60)
        before = journal.head("r")
        journal.release(old, "finished")  # a zombie "finishing" the run it lost
        assert journal.head("r") == before
        journal.release(new, "failed")
        after = journal.head("r")
        assert after.status == "failed" and after.owner is None
        journal.release(new, "finished")  # released once: a second release is stale too
        assert journal.head("r").status == "failed"

    def test_a_released_run_is_free(self) -> None:
        journal = self.journal()
        lease = self.started(journal, "r")[0].lease
        journal.release(lease, "waiting")
        head = journal.head("r")
        assert head.owner is None and head.status == "waiting" and head.seq == 2
        taken = journal.acquire("r", new_owner())
        assert taken.token == lease.token + 1 and journal.head("r").status == "running"

    # -- the anchored head: a cut tail is caught -----------------------------------------

    CUTS = ("last event", "last seven", "from tool.started on", "everything")

    def cut(self, journal: Journal, run_id: str, how: str) -> int:
        """Cut ``run_id``'s tail as ``how`` says; returns how many events were deleted."""
        events = journal.read(run_id)
        count = {
            "last event": 1,
            "last seven": 7,
            "from tool.started on": len(events)
            - next(e.seq for e in events if e.type == "tool.started"),
            "everything": len(events),
        }[how]
        self.drop_tail(journal, run_id, count)
        return count

    def test_a_cut_tail_fails_verify_naming_the_missing_tail(self) -> None:
        journal = self.journal()
        for number, how in enumerate(self.CUTS):
            run_id = f"cut-{number}"
            self.refund_run(journal, run_id)
            assert verify_run(journal, run_id).ok
            total = journal.head(run_id).seq + 1
            deleted = self.cut(journal, run_id, how)
            report = verify_run(journal, run_id)
            assert not report.ok, how
            assert f"{deleted} event(s) were deleted from the tail" in report.reason, report
            assert report.bad_seq == total - deleted and report.bad_type == "(head)", report
            assert report.events == total - deleted

    def test_resume_of_a_cut_run_refuses_and_refunds_nothing(self) -> None:
        import typedmesh as tm

        journal = self.journal()
        for number, how in enumerate(self.CUTS):
            run_id = f"cut-{number}"
            made = self.refund_run(journal, run_id)
            self.cut(journal, run_id, how)
            before = snapshot(journal, run_id)
            with raises(tm.JournalError) as caught:
                tm.resume(run_id, made.flow, journal=journal)
            if how != "everything":  # with no event left, there is no run to read
                assert isinstance(caught.value, JournalCorrupt), caught.value
                assert "deleted from the tail" in str(caught.value)
            assert made.refunds == ["A1"], f"{how}: the refund ran again"
            assert snapshot(journal, run_id) == before, f"{how}: resume wrote to the run"

    def test_a_real_crash_resumes_and_refunds_once(self) -> None:
        """The contrast: a crash leaves the head at the last event, so resume continues."""
        import typedmesh as tm

        journal = self.journal()
        self.refund_run(journal, "r")
        events = journal.read("r")
        before_tool = next(e.seq for e in events if e.type == "tool.started") - 1
        crashed = self.crashed(journal, "r", before_tool)
        assert verify_run(crashed, "r").ok
        made = refund_flow()
        result = tm.resume("r", made.flow, journal=crashed)
        assert made.refunds == ["A1"] and result.output.answer == "refunded A1"
        assert verify_run(crashed, "r").ok and crashed.head("r").status == "finished"
        # a crash inside the refund (started, no result) is in doubt: not retried blindly
        in_doubt = self.crashed(journal, "r", before_tool + 1)
        again = refund_flow()
        with raises(tm.InDoubtError):
            tm.resume("r", again.flow, journal=in_doubt)
        assert again.refunds == []

    # -- head signatures -------------------------------------------------------------------------

    def test_a_signed_run_verifies(self) -> None:
        journal = self.journal()
        with journal_key("k" * 32):
            self.refund_run(journal, "r")
            report = verify_run(journal, "r")
            assert report.ok and report.signed, report
            head = journal.head("r")
            assert head.signature == sign_head(b"k" * 32, "r", head.seq, head.hash)
        report = verify_run(journal, "r")  # without the key: verified, not "signed"
        assert report.ok and not report.signed
        with journal_key("another key"):
            report = verify_run(journal, "r")
            assert not report.ok and "signature is wrong" in report.reason, report

    def test_a_forged_run_with_recomputed_hashes_fails_only_with_the_key(self) -> None:
        """A forger with write access edits a payload, recomputes every hash after it and the
        head's hash, and keeps the old signature (he lacks the key).

        With ``TYPEDMESH_JOURNAL_KEY`` set, verify catches him. Without a key the forgery
        verifies: the chain and the anchored head prove a run whole and unaltered against
        accidents and against anyone who cannot rewrite the head, not against a writer of
        the storage. That is the limit of an unsigned journal, shown here on purpose.
        """
        import typedmesh as tm

        journal = self.journal()
        with journal_key("k" * 32):
            self.refund_run(journal, "r")
        events = journal.read("r")
        head = journal.head("r")
        result = next(e for e in events if e.type == "tool.result")
        forged_payload = {**result.payload, "result": "refund declined"}
        result.payload = forged_payload
        result.payload_json = dumps(forged_payload)
        rechain(events, result.seq)
        forged_head = replace(head, hash=events[-1].hash)  # signature kept: no key to redo it
        forgery = self.journal()
        forgery.import_run(events, blobs_of(journal, events), forged_head)
        assert forgery.head("r").signature == head.signature
        with journal_key("k" * 32):
            report = verify_run(forgery, "r")
            assert not report.ok and "signature is wrong" in report.reason, report
            assert report.bad_type == "(head)"
            with raises(JournalCorrupt, match="signature"):
                tm.replay("r", refund_flow().flow, journal=forgery)
        with journal_key(None):
            assert verify_run(forgery, "r").ok  # the documented limit: no key, no proof

    def test_an_unsigned_run_fails_once_a_key_is_set(self) -> None:
        import typedmesh as tm

        journal = self.journal()
        with journal_key(None):
            made = self.refund_run(journal, "r")
            assert verify_run(journal, "r").ok
        with journal_key("k" * 32):
            report = verify_run(journal, "r")
            assert not report.ok and "not signed" in report.reason, report
            with raises(JournalCorrupt, match="not signed"):
                tm.resume("r", made.flow, journal=journal)
        assert made.refunds == ["A1"]

    # -- blob references are unambiguous ------------------------------------------------------

    def test_a_literal_blob_marker_is_data(self) -> None:
        """Format 2 names blob fields in the hashed header: a payload that merely *contains*
        ``{"$blob": <digest>, "json": true}`` is the data it says, even when the digest is
        another run's stored blob."""
        import typedmesh as tm

        journal = self.journal()
        echo = echo_flow()
        secret = {"card": "4111 1111 1111 1111", "pad": "s" * (BLOB_THRESHOLD * 2)}
        tm.run(echo, secret, journal=journal, run_id="other")
        refs = journal.read("other")[0].refs or {}
        stolen = str(refs["input"][0])
        assert json.loads(journal.blob(stolen)) == secret
        marker = {"$blob": stolen, "json": True}

        result = tm.run(echo, marker, journal=journal, run_id="input")
        assert result.output.model_dump() == marker
        assert verify_run(journal, "input").ok
        started = journal.read("input")[0]
        assert started.refs is None and load_payload(started, journal, "input") == marker
        replayed = tm.replay("input", echo, journal=journal)
        assert replayed.output.model_dump() == marker and replayed.identical

        looked_up = lookup_flow(marker)
        answer = tm.run(looked_up, {"order_id": "A1"}, journal=journal, run_id="tool").output
        assert json.loads(answer.answer) == marker
        assert verify_run(journal, "tool").ok
        replayed_tool = tm.replay("tool", looked_up, journal=journal)
        assert replayed_tool.identical and json.loads(replayed_tool.output.answer) == marker

    def test_an_unknown_digest_in_data_breaks_nothing(self) -> None:
        import typedmesh as tm

        journal = self.journal()
        marker = {"$blob": "sha256:" + "f" * 64, "json": True}
        echo = echo_flow()
        tm.run(echo, marker, journal=journal, run_id="input")
        assert verify_run(journal, "input").ok
        assert tm.replay("input", echo, journal=journal).output.model_dump() == marker
        looked_up = lookup_flow(marker)
        tm.run(looked_up, {"order_id": "A1"}, journal=journal, run_id="tool")
        assert verify_run(journal, "tool").ok
        assert tm.replay("tool", looked_up, journal=journal).identical
        # resumed after a crash right after the tool's result: served from the journal
        events = journal.read("tool")
        result_seq = next(e.seq for e in events if e.type == "tool.result")
        crashed = self.crashed(journal, "tool", result_seq)
        resumed = tm.resume("tool", looked_up, journal=crashed)
        assert json.loads(resumed.output.answer) == marker
        assert verify_run(crashed, "tool").ok
        crashed_input = self.crashed(journal, "input", 0)
        assert tm.resume("input", echo, journal=crashed_input).output.model_dump() == marker

    def test_format_1_blob_markers_still_resolve(self) -> None:
        """Format 1 marked blobs inside the payload; those journals keep reading as written."""
        journal = self.journal()
        text = json.dumps({"messages": ["m" * BLOB_THRESHOLD]})
        ref = digest(text)
        events = chain(
            "old",
            [
                ("run.started", {"flow": "flow", "input": {"x": 1}}),
                ("model.request", {"request": {"$blob": ref, "json": True}}),
                ("run.finished", {"output": {"y": 2}}),
            ],
            schema_version=1,
        )
        journal.import_run(events, {ref: text.encode()})
        assert verify_run(journal, "old").ok
        request = journal.read("old")[1]
        assert load_payload(request, journal, "request") == json.loads(text)
        head = journal.head("old")
        assert (head.seq, head.hash, head.status) == (2, events[-1].hash, "finished")
        broken = chain(
            "old-missing",
            [("model.request", {"request": {"$blob": "sha256:" + "e" * 64}})],
            schema_version=1,
        )
        journal.import_run(broken, {})
        report = verify_run(journal, "old-missing")
        assert not report.ok and "is missing" in report.reason

    # -- JSONL ----------------------------------------------------------------------------------

    def test_jsonl_round_trip_keeps_the_head(self) -> None:
        journal = self.journal()
        with journal_key("k" * 32):
            self.refund_run(journal, "r")
            path = self.tmp_path / "r.jsonl"
            export_jsonl(journal, "r", path)
            into = self.journal()
            imported, run_id = import_jsonl(path, into=into)
            assert imported is into and run_id == "r"
            head, copied = journal.head("r"), into.head("r")
            assert (copied.seq, copied.hash, copied.signature, copied.status) == (
                head.seq,
                head.hash,
                head.signature,
                head.status,
            )
            assert copied.owner is None and copied.flow == head.flow
            report = verify_run(into, "r")
            assert report.ok and report.signed, report
            assert [e.hash for e in into.read("r")] == [e.hash for e in journal.read("r")]
            with raises(RunExists):
                import_jsonl(path, into=into)

    def test_jsonl_cut_tail_is_caught_after_export(self) -> None:
        journal = self.journal()
        self.refund_run(journal, "r")
        path = self.tmp_path / "r.jsonl"
        export_jsonl(journal, "r", path)
        lines = path.read_text().splitlines()
        event_lines = [i for i, line in enumerate(lines) if line.startswith('{"event"')]
        for cut in (1, 7):
            kept = [line for i, line in enumerate(lines) if i not in event_lines[-cut:]]
            cut_path = self.tmp_path / f"cut{cut}.jsonl"
            cut_path.write_text("\n".join(kept) + "\n")
            into = self.journal()
            with raises(JournalCorrupt, match=f"{cut} event(s) were deleted from the tail"):
                import_jsonl(cut_path, into=into)
            assert not into.exists("r") and into.runs() == []
        # dropping the head line too leaves a format-1 export: only a key can tell
        headless = [
            line
            for i, line in enumerate(lines)
            if i != event_lines[-1] and not line.startswith('{"head"')
        ]
        headless_path = self.tmp_path / "headless.jsonl"
        headless_path.write_text("\n".join(headless) + "\n")
        into = self.journal()
        import_jsonl(headless_path, into=into)
        with journal_key("k" * 32):
            report = verify_run(into, "r")
            assert not report.ok and "not signed" in report.reason

    def test_import_refuses_a_broken_run_and_leaves_its_id_free(self) -> None:
        """A gap, a missing first event or another run's event: refused before anything
        is stored. An edited event (hash mismatch) imports, for verify to name it."""
        source = self.journal()
        self.refund_run(source, "r")
        events = source.read("r")
        blobs = blobs_of(source, events)
        journal = self.journal()
        other = chain("other", [("note", {})] * 3)
        for broken, match in (
            (events[:3] + events[4:], "gap"),
            (events[1:], "first event"),
            ([*events[:2], replace(events[2], prev_hash=GENESIS_HASH)], "link"),
            ([*events[:1], replace(other[1], seq=1, prev_hash=events[0].hash)], "belongs"),
        ):
            with raises(JournalCorrupt, match=match):
                journal.import_run(broken, blobs)
            assert not journal.exists("r") and journal.runs() == []
        edited = [replace(e) for e in events]
        edited[5].payload_json = dumps({"result": "edited"})
        journal.import_run(edited, blobs)
        report = verify_run(journal, "r")
        assert not report.ok and report.bad_seq == 5 and "altered" in report.reason

    def test_jsonl_empty_or_garbled_file_is_journal_corrupt(self) -> None:
        into = self.journal()
        empty = self.tmp_path / "empty.jsonl"
        empty.write_text("")
        with raises(JournalCorrupt):
            import_jsonl(empty, into=into)
        blank = self.tmp_path / "blank.jsonl"
        blank.write_text("\n\n")
        with raises(JournalCorrupt):
            import_jsonl(blank, into=into)
        garbled = self.tmp_path / "garbled.jsonl"
        garbled.write_text('{"event": {"run_id": "r"}}\n')
        with raises(JournalCorrupt, match="line 1"):
            import_jsonl(garbled, into=into)
        journal = self.journal()
        self.refund_run(journal, "r")
        export_jsonl(journal, "r", garbled)
        lines = garbled.read_text().splitlines()
        head = json.loads(lines[-1])
        head["head"]["seq"] = str(head["head"]["seq"])
        garbled.write_text("\n".join([*lines[:-1], json.dumps(head)]) + "\n")
        with raises(JournalCorrupt, match=f"line {len(lines)}"):
            import_jsonl(garbled, into=into)
        assert into.runs() == []


class _Collect:
    """A sink that keeps what it is given (for batches a test appends by hand)."""

    def __init__(self, into: list[tuple[Event, dict[str, bytes]]]) -> None:
        self.into = into

    def accept(self, event: Event, blobs: Any) -> None:
        self.into.append((event, dict(blobs)))


# -- without pytest ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """One conformance test's outcome: ``passed``, ``failed`` or ``skipped``."""

    name: str
    outcome: str
    detail: str = ""


def check_backend(
    make_journal: Callable[[Path], Journal],
    *,
    reopen: Callable[[Journal], Journal] | None = None,
    drop_tail: Callable[[Journal, str, int], None] | None = None,
    only: Iterable[str] | None = None,
) -> list[CheckResult]:
    """Run the suite without pytest: ``make_journal(scratch_dir)`` makes a new, empty journal
    (each call gets a new empty directory; the journal must not share storage with the
    ones made before it).

    Returns one result per test (``only`` names a subset); a failure's detail is its
    traceback.
    """

    class Adhoc(JournalConformance):
        def make_journal(self) -> Journal:
            scratch = Path(tempfile.mkdtemp(prefix="journal-", dir=self.tmp_path))
            return make_journal(scratch)

        def reopen(self, journal: Journal) -> Journal:
            return reopen(journal) if reopen is not None else journal

        def drop_tail(self, journal: Journal, run_id: str, count: int) -> None:
            if drop_tail is not None:
                drop_tail(journal, run_id, count)
            else:
                super().drop_tail(journal, run_id, count)

        def skip(self, reason: str) -> NoReturn:
            raise ConformanceSkip(reason)

    names = sorted(n for n in dir(JournalConformance) if n.startswith("test_"))
    if only is not None:
        wanted = set(only)
        unknown = wanted - set(names)
        if unknown:
            raise ValueError(f"no conformance test named {sorted(unknown)}")
        names = [n for n in names if n in wanted]
    results = []
    for name in names:
        suite = Adhoc()
        suite.setup_method()
        try:
            getattr(suite, name)()
        except ConformanceSkip as exc:
            results.append(CheckResult(name, "skipped", str(exc)))
        except Exception:
            results.append(CheckResult(name, "failed", traceback.format_exc()))
        else:
            results.append(CheckResult(name, "passed"))
        finally:
            suite.teardown_method()
    return results
