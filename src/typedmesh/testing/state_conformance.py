"""The state-store conformance suite: what every ``StateStore`` backend promises, as tests.

Each ``test_*`` method of ``StateConformance`` is one promise of the
``StateStore`` interface, most of them written as an attack: a write at a
stale version or at a tombstone's version, a retried write after the key
moved on, N threads claiming one key, N threads incrementing one key, a
prefix full of SQL and glob wildcards, a value one byte over the limit, a
stored value that no longer fits its model. Memory and SQLite pass it; a new
backend (PostgreSQL, Redis, ...) passes it unchanged.

With pytest, subclass it under a name pytest collects and say how to make an
empty store; pytest runs every method::

    from typedmesh.testing.state_conformance import StateConformance

    class TestPostgresState(StateConformance):
        def make_store(self) -> StateStore:
            return PostgresStateStore(DSN, schema=f"t_{uuid.uuid4().hex}")

        def reopen(self, store: StateStore) -> StateStore:  # optional
            return PostgresStateStore(DSN, schema=store.schema)

``reopen`` makes a second handle onto the same storage (a new connection);
without it the tests of persistence and of two handles are skipped.
``self.tmp_path`` is a fresh directory per test; every store made or reopened
through the suite is closed after the test.

Without pytest, ``check_backend(make_store)`` runs every method and returns
one ``CheckResult`` each. Importing this module imports neither pytest nor
hypothesis; the one property-based test skips itself when hypothesis is not
installed. The whole suite takes a few seconds on a local backend (threads,
no sleeps longer than a tenth of a second).
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from pydantic import BaseModel

from ..errors import AlreadyClaimed, InvalidStateValue, StaleVersion, StateNotFound
from ..state.base import CLAIM_PREFIX, MAX_KEY_LENGTH, StateRecord, StateStore, Writer

__all__ = ["CheckResult", "StateConformance", "check_backend"]

AGENT = {"name": "pricer", "version": "3", "deployment": "eu-1"}


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

    value: Any = None


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


def run_threads(n: int, target: Callable[[int], Any]) -> list[Any]:
    """Run ``target(i)`` in ``n`` threads released together; their results (or the
    exceptions they raised), by ``i``."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def body(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target(i)
        except BaseException as exc:  # collected, judged by the test
            results[i] = exc

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "a thread did not finish within 60 s"
    return results


def shape(records: Iterable[StateRecord]) -> list[tuple[int, Any, bool]]:
    """A history as (version, value, deleted) rows."""
    return [(r.version, r.value, r.deleted) for r in records]


class Order(BaseModel):
    id: str
    qty: int
    note: str = ""


UNICODE_KEYS = [
    "ключ",
    "键:值",
    "emoji:🦄🏳️‍🌈",
    "rtl:שלום",
    "combining:e\u0301",
    "sep:\u2028\u2029",
    "nonchar:\U0010ffff",
    'quotes:it\'s "x"',
    "back\\slash",
    "spaces and: colons",
    "percent%under_score",
    "glob*?[a]{b}",
]

ROUND_TRIP_VALUES: list[Any] = [
    None,
    False,
    True,
    0,
    -1,
    2**53,
    2**64 + 1,
    0.5,
    -2.25,
    "",
    "plain",
    'Grüße, 世界, 🦄, \u2028, tab\t, newline\n, nul\x00, quote", backslash\\',
    [],
    {},
    [1, "two", None, [3, [4, [5]]], {"six": 6}],
    {
        "nested": {"deep": {"deeper": [{"k": "v"}, {"": ""}]}},
        "ключ": "значение",
        "🦄": ["🌈"],
        "null": None,
        "list": list(range(20)),
    },
]


# -- the suite ----------------------------------------------------------------------------


class StateConformance:
    """Every promise of the ``StateStore`` interface, one ``test_*`` method each.

    Subclass it (``class TestMyState(StateConformance)``) and define
    ``make_store``; ``reopen`` is optional.
    """

    tmp_path: Path
    _made: list[StateStore]

    threads: int = 8
    """Threads in the concurrency tests."""
    increments: int = 25
    """``update`` calls per thread in the lost-update test."""

    # -- what a backend provides ---------------------------------------------------------

    def make_store(self) -> StateStore:
        """A new, empty store (``self.tmp_path`` is this test's scratch directory)."""
        raise NotImplementedError("define make_store() in your StateConformance subclass")

    def reopen(self, store: StateStore) -> StateStore:
        """A new handle onto the same storage as ``store`` (a new connection), which
        may have been closed. Default: skip (a backend that keeps nothing)."""
        self.skip(f"{type(store).__name__} keeps nothing across handles: define reopen()")

    def skip(self, reason: str) -> NoReturn:
        """Skip the current test (``pytest.skip`` under pytest)."""
        skip(reason)

    # -- lifecycle (pytest's xunit-style hooks; check_backend calls them too) --------------

    def setup_method(self, method: object = None) -> None:
        self.tmp_path = Path(tempfile.mkdtemp(prefix="typedmesh-state-conformance-"))
        self._made = []

    def teardown_method(self, method: object = None) -> None:
        for store in reversed(self._made):
            with contextlib.suppress(Exception):  # a test may close a store itself
                store.close()
        self._made = []
        shutil.rmtree(self.tmp_path, ignore_errors=True)

    def store(self) -> StateStore:
        """A new empty store, closed after the test."""
        store = self.make_store()
        self._made.append(store)
        return store

    def second_handle(self, store: StateStore) -> StateStore:
        """Another handle onto ``store``'s storage (skips the test without ``reopen``)."""
        other = self.reopen(store)
        if other is not store:
            self._made.append(other)
        return other

    # -- reading and writing -------------------------------------------------------------

    def test_get_of_an_absent_key_is_none(self) -> None:
        store = self.store()
        assert store.get("nothing") is None
        assert store.history("nothing") == []
        assert store.keys() == []
        assert store.writes() == []
        assert store.claim_of("nothing") is None

    def test_create_then_get(self) -> None:
        store = self.store()
        made = store.create("k", {"a": 1})
        assert (made.key, made.value, made.version) == ("k", {"a": 1}, 1)
        got = store.get("k")
        assert got is not None
        assert (got.key, got.value, got.version) == ("k", {"a": 1}, 1)
        put = store.put("k", {"a": 2}, expected_version=1)
        assert put.version == 2
        got = store.get("k")
        assert got is not None and (got.value, got.version) == ({"a": 2}, 2)
        assert store.keys() == ["k"]

    def test_values_read_back_are_copies(self) -> None:
        store = self.store()
        value = {"list": [1, 2]}
        store.create("k", value)
        value["list"].append(3)
        first = store.get("k")
        assert first is not None and first.value == {"list": [1, 2]}
        first.value["list"].append(4)
        again = store.get("k")
        assert again is not None and again.value == {"list": [1, 2]}
        store.history("k")[0].value["list"].append(5)
        assert store.history("k")[0].value == {"list": [1, 2]}

    def test_put_at_a_stale_version_is_refused_with_what_is_stored(self) -> None:
        store = self.store()
        store.create("k", {"n": 1})
        store.put("k", {"n": 2}, expected_version=1)
        for stale in (1, 3, 99):
            with raises(StaleVersion) as caught:
                store.put("k", {"n": "lost"}, expected_version=stale)
            exc = caught.value
            assert (exc.key, exc.expected, exc.actual, exc.current) == ("k", stale, 2, {"n": 2})
        got = store.get("k")
        assert got is not None and (got.value, got.version) == ({"n": 2}, 2)
        assert shape(store.history("k")) == [(1, {"n": 1}, False), (2, {"n": 2}, False)]

    def test_put_expecting_a_value_on_an_absent_key_is_stale(self) -> None:
        store = self.store()
        with raises(StaleVersion) as caught:
            store.put("k", 1, expected_version=1)
        exc = caught.value
        assert (exc.expected, exc.actual, exc.current) == (1, 0, None)
        assert store.get("k") is None and store.history("k") == []
        assert store.keys() == [] and store.writes() == []

    def test_create_on_an_existing_key_is_stale(self) -> None:
        store = self.store()
        store.create("k", "first")
        with raises(StaleVersion) as caught:
            store.create("k", "second")
        exc = caught.value
        assert (exc.expected, exc.actual, exc.current) == (None, 1, "first")
        with raises(StaleVersion):
            store.put("k", "third", expected_version=None)
        got = store.get("k")
        assert got is not None and (got.value, got.version) == ("first", 1)
        assert len(store.history("k")) == 1

    def test_a_null_or_falsy_value_is_a_value_not_a_delete(self) -> None:
        store = self.store()
        falsy: list[Any] = [None, False, 0, "", [], {}]
        for i, value in enumerate(falsy):
            key = f"falsy{i}"
            store.create(key, value)
            got = store.get(key)
            assert got is not None and got.value == value and got.version == 1, (value, got)
            assert type(got.value) is type(value)
            with raises(StaleVersion) as caught:
                store.create(key, "again")
            assert caught.value.actual == 1 and caught.value.current == value
            record = store.history(key)[0]
            assert record.value == value and not record.deleted
        assert store.keys("falsy") == [f"falsy{i}" for i in range(6)]

    # -- deletes -------------------------------------------------------------------------

    def test_delete_leaves_a_tombstone_and_versions_keep_counting(self) -> None:
        store = self.store()
        store.create("k", "a")
        store.put("k", "b", expected_version=1)
        assert store.delete("k", expected_version=2) == 3
        assert store.get("k") is None
        assert store.keys() == []
        history = store.history("k")
        assert shape(history) == [(1, "a", False), (2, "b", False), (3, None, True)]
        # the tombstone's version is not a live version to write at
        with raises(StaleVersion) as caught:
            store.put("k", "zombie", expected_version=3)
        assert (caught.value.actual, caught.value.current) == (0, None)
        with raises(StaleVersion):
            store.delete("k", expected_version=3)
        # a new life continues the same sequence: no version is ever reused
        again = store.create("k", "c")
        assert again.version == 4
        got = store.get("k")
        assert got is not None and (got.value, got.version) == ("c", 4)
        assert store.delete("k", expected_version=4) == 5
        assert store.create("k", "d").version == 6
        versions = [r.version for r in store.history("k")]
        assert versions == [1, 2, 3, 4, 5, 6]
        assert [r.deleted for r in store.history("k")] == [False, False, True, False, True, False]

    def test_delete_at_a_stale_version_changes_nothing(self) -> None:
        store = self.store()
        store.create("k", {"v": 1})
        store.put("k", {"v": 2}, expected_version=1)
        with raises(StaleVersion) as caught:
            store.delete("k", expected_version=1)
        assert (caught.value.actual, caught.value.current) == (2, {"v": 2})
        got = store.get("k")
        assert got is not None and got.version == 2
        assert len(store.history("k")) == 2

    def test_delete_of_a_key_with_no_value_is_stale_and_writes_nothing(self) -> None:
        store = self.store()
        with raises(StaleVersion) as caught:
            store.delete("never", expected_version=1)
        assert (caught.value.expected, caught.value.actual, caught.value.current) == (1, 0, None)
        assert store.history("never") == []
        assert store.writes() == []
        store.create("k", 1)
        store.delete("k", expected_version=1)
        with raises(StaleVersion):
            store.delete("k", expected_version=1)
        assert [r.version for r in store.history("k")] == [1, 2]

    # -- expected_version ----------------------------------------------------------------

    def test_expected_version_must_be_a_positive_integer(self) -> None:
        store = self.store()
        store.create("k", "v")
        for bad in (0, -1, -99, True, False):
            with raises(InvalidStateValue):
                store.put("k", "bad", expected_version=bad)
            with raises(InvalidStateValue):
                store.delete("k", expected_version=bad)
            with raises(InvalidStateValue):
                store.put("fresh", "bad", expected_version=bad)
        got = store.get("k")
        assert got is not None and (got.value, got.version) == ("v", 1)
        assert len(store.history("k")) == 1 and store.get("fresh") is None
        assert store.history("fresh") == []

    # -- update --------------------------------------------------------------------------

    def test_update_reads_applies_and_writes_back(self) -> None:
        store = self.store()
        with raises(StateNotFound):
            store.update("counter", lambda n: n + 1)
        assert store.history("counter") == []
        made = store.update("counter", lambda n: n + 1, default=0)
        assert (made.value, made.version) == (1, 1)
        made = store.update("counter", lambda n: n + 1)
        assert (made.value, made.version) == (2, 2)
        store.delete("counter", expected_version=2)
        with raises(StateNotFound):
            store.update("counter", lambda n: n + 1)
        made = store.update("counter", lambda n: n + 10, default=0)
        assert (made.value, made.version) == (10, 4)
        with raises(ValueError):
            store.update("counter", lambda n: n, max_attempts=0)

    def test_update_rereads_and_retries_after_a_lost_race(self) -> None:
        store = self.store()
        store.create("k", 0)
        seen: list[int] = []

        def racing(n: int) -> int:
            seen.append(n)
            if len(seen) == 1:  # someone else writes between our read and our write
                store.put("k", 100, expected_version=1)
            return n + 1

        made = store.update("k", racing)
        assert seen == [0, 100]
        assert (made.value, made.version) == (101, 3)
        assert shape(store.history("k")) == [(1, 0, False), (2, 100, False), (3, 101, False)]

    def test_update_gives_up_after_max_attempts(self) -> None:
        store = self.store()
        store.create("k", 0)
        calls = 0

        def always_loses(n: int) -> int:
            nonlocal calls
            calls += 1
            got = store.get("k")
            assert got is not None
            store.put("k", got.value + 1000, expected_version=got.version)
            return n + 1

        with raises(StaleVersion) as caught:
            store.update("k", always_loses, max_attempts=3)
        assert calls == 3
        assert caught.value.actual == 4 and caught.value.current == 3000
        assert [r.value for r in store.history("k")] == [0, 1000, 2000, 3000]

    def test_update_from_many_threads_loses_no_increment(self) -> None:
        store = self.store()
        store.create("counter", 0)
        n, k = self.threads, self.increments

        def work(i: int) -> None:
            writer = Writer(run_id=f"thread-{i}", step_path="inc", by=f"thread-{i}")
            for _ in range(k):
                store.update("counter", lambda v: v + 1, writer=writer, max_attempts=100_000)

        results = run_threads(n, work)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert not failures, failures[:3]
        got = store.get("counter")
        assert got is not None and got.value == n * k, got
        assert got.version == n * k + 1
        history = store.history("counter")
        assert [r.version for r in history] == list(range(1, n * k + 2))
        assert [r.value for r in history] == list(range(n * k + 1))
        by_thread = {f"thread-{i}": 0 for i in range(n)}
        for record in history[1:]:
            assert record.writer.run_id is not None
            by_thread[record.writer.run_id] += 1
        assert by_thread == {f"thread-{i}": k for i in range(n)}

    def test_concurrent_creates_of_one_key_have_one_winner(self) -> None:
        store = self.store()
        n = self.threads
        for round_ in range(3):
            key = f"race{round_}"

            def create(i: int, key: str = key) -> Any:
                return store.create(key, {"by": i})

            results = run_threads(n, create)
            won = [r for r in results if not isinstance(r, BaseException)]
            lost = [r for r in results if isinstance(r, StaleVersion)]
            assert len(won) == 1 and len(lost) == n - 1, results
            winner = won[0].value
            assert all(r.actual == 1 and r.current == winner for r in lost)
            got = store.get(key)
            assert got is not None and got.value == winner and got.version == 1
            assert len(store.history(key)) == 1

    # -- history and writes --------------------------------------------------------------

    def test_history_names_every_versions_writer_and_time(self) -> None:
        store = self.store()
        writers = [
            Writer(run_id="r1", step_path="flow/price", agent=dict(AGENT), write_id="r1:e1"),
            Writer(by="cli"),
            Writer(run_id="r2", step_path="flow/fix", agent={"name": "fixer"}, write_id="x"),
            Writer(),
        ]
        before = time.time()
        store.create("k", {"price": 1}, writer=writers[0])
        store.put("k", {"price": 2}, expected_version=1, writer=writers[1])
        store.delete("k", expected_version=2, writer=writers[2])
        store.create("k", {"price": 3}, writer=writers[3])
        after = time.time()
        history = store.history("k")
        assert shape(history) == [
            (1, {"price": 1}, False),
            (2, {"price": 2}, False),
            (3, None, True),
            (4, {"price": 3}, False),
        ]
        for record, writer in zip(history, writers, strict=True):
            assert record.key == "k"
            assert record.writer == writer, (record.writer, writer)
            assert record.writer.to_dict() == writer.to_dict()
            assert before - 1 <= record.written_at <= after + 1, (before, record, after)
        times = [r.written_at for r in history]
        assert times == sorted(times)
        assert StateRecord.from_dict(history[0].to_dict()) == history[0]

    def test_writes_come_in_write_order_filtered_by_run_and_prefix(self) -> None:
        store = self.store()
        r1 = Writer(run_id="r1", step_path="s")
        r2 = Writer(run_id="r2", step_path="s")
        cli = Writer(by="cli")
        store.create("b:1", 1, writer=r1)
        store.create("a:1", 1, writer=r2)
        store.put("b:1", 2, expected_version=1, writer=r2)
        store.create("a:2", 1, writer=cli)
        store.delete("a:1", expected_version=1, writer=r1)
        store.create("ab", 1, writer=r1)
        store.put("a:2", 2, expected_version=1, writer=r1)
        everything = [(w.key, w.version, w.writer.run_id) for w in store.writes()]
        assert everything == [
            ("b:1", 1, "r1"),
            ("a:1", 1, "r2"),
            ("b:1", 2, "r2"),
            ("a:2", 1, None),
            ("a:1", 2, "r1"),
            ("ab", 1, "r1"),
            ("a:2", 2, "r1"),
        ]
        assert [(w.key, w.version) for w in store.writes(run_ids=["r1"])] == [
            ("b:1", 1),
            ("a:1", 2),
            ("ab", 1),
            ("a:2", 2),
        ]
        assert [(w.key, w.version) for w in store.writes(run_ids=["r1"], prefix="a:")] == [
            ("a:1", 2),
            ("a:2", 2),
        ]
        assert [(w.key, w.version) for w in store.writes(run_ids=("r2", "r1"), prefix="b")] == [
            ("b:1", 1),
            ("b:1", 2),
        ]
        assert [(w.key, w.version) for w in store.writes(prefix="a")] == [
            ("a:1", 1),
            ("a:2", 1),
            ("a:1", 2),
            ("ab", 1),
            ("a:2", 2),
        ]
        assert store.writes(run_ids=[]) == []
        assert store.writes(run_ids=["nobody"]) == []
        assert store.writes(prefix="zzz") == []
        deleted = store.writes(run_ids=["r1"], prefix="a:1")[0]
        assert deleted.deleted and deleted.value is None
        assert deleted.writer == r1

    def test_writes_scale_to_many_run_ids(self) -> None:
        store = self.store()
        for i in range(30):
            store.create(f"k{i}", i, writer=Writer(run_id=f"run-{i}"))
        wanted = [f"run-{i}" for i in range(0, 30, 3)] + [f"absent-{i}" for i in range(2000)]
        found = store.writes(run_ids=wanted)
        assert [w.key for w in found] == [f"k{i}" for i in range(0, 30, 3)]

    # -- keys and prefixes ---------------------------------------------------------------

    def test_keys_lists_live_keys_sorted_without_claims(self) -> None:
        store = self.store()
        for key in ("b", "a", "c:1", "c:2", "c", "cc"):
            store.create(key, key)
        store.delete("c:2", expected_version=1)
        store.claim("a", action="edit", writer=Writer(by="me"))
        store.claim("ghost", action="edit", writer=Writer(by="me"))
        assert store.keys() == ["a", "b", "c", "c:1", "cc"]
        assert store.keys("c") == ["c", "c:1", "cc"]
        assert store.keys("c:") == ["c:1"]
        assert store.keys("zz") == []
        assert store.keys(CLAIM_PREFIX) == [CLAIM_PREFIX + "a", CLAIM_PREFIX + "ghost"]
        store.release("ghost", writer=Writer(by="me"))
        assert store.keys(CLAIM_PREFIX) == [CLAIM_PREFIX + "a"]

    def test_a_prefix_is_literal_text_never_a_pattern(self) -> None:
        """SQL LIKE (``%``, ``_``), glob (``*``, ``?``, ``[``) and regex characters in a
        prefix match only themselves, and case matters."""
        store = self.store()
        keys = [
            "a_b",
            "axb",
            "a%b",
            "aXXb",
            "a*b",
            "a?b",
            "a[b]",
            "ab",
            "a\\b",
            "a.b",
            "A_b",
            "a^b",
            "a$b",
        ]
        for key in keys:
            store.create(key, key, writer=Writer(run_id="r"))
        for prefix in ("a_", "a%", "a*", "a?", "a[", "a\\", "a.", "A", "a^", "a$"):
            expected = sorted(k for k in keys if k.startswith(prefix))
            assert store.keys(prefix) == expected, (prefix, store.keys(prefix))
            assert sorted(w.key for w in store.writes(prefix=prefix)) == expected, prefix
            assert sorted(w.key for w in store.writes(run_ids=["r"], prefix=prefix)) == expected
        assert store.keys("a") == sorted(k for k in keys if k.startswith("a"))

    def test_a_prefix_at_the_end_of_unicode_is_matched_exactly(self) -> None:
        store = self.store()
        top = "\U0010ffff"
        keys = ["p" + top, "p" + top + "x", "p" + top + top, "q", "p\uffff", "p\ue000x", "p"]
        for key in keys:
            store.create(key, 1)
        for prefix in ("p", "p" + top, "p\uffff", "p\ue000", top, ""):
            expected = sorted(k for k in keys if k.startswith(prefix))
            assert sorted(store.keys(prefix)) == expected, (prefix, store.keys(prefix))
            assert sorted(w.key for w in store.writes(prefix=prefix)) == expected

    # -- idempotent writes -----------------------------------------------------------------

    def test_a_retried_write_returns_its_version_and_writes_nothing(self) -> None:
        store = self.store()
        w1 = Writer(run_id="r", step_path="s", write_id="r:put#1")
        first = store.create("k", {"n": 1}, writer=w1)
        again = store.create("k", {"n": 1}, writer=w1)
        assert first.version == again.version == 1
        assert store.write("k", '{"n":1}', expected_version=None, writer=w1) == (1, True)
        # the key moved on: the retry (at an expected version now stale) still only
        # reports the version it made
        store.put("k", {"n": 2}, expected_version=1, writer=Writer(by="other"))
        retried = store.put("k", {"n": "different"}, expected_version=None, writer=w1)
        assert retried.version == 1
        assert store.write("k", '{"n":9}', expected_version=7, writer=w1) == (1, True)
        got = store.get("k")
        assert got is not None and (got.value, got.version) == ({"n": 2}, 2)
        assert shape(store.history("k")) == [(1, {"n": 1}, False), (2, {"n": 2}, False)]
        # a new write id is a new write
        w2 = Writer(run_id="r", step_path="s", write_id="r:put#2")
        assert store.put("k", {"n": 3}, expected_version=2, writer=w2).version == 3
        assert store.write("k", '{"n":3}', expected_version=2, writer=w2) == (3, True)
        assert len(store.history("k")) == 3 and len(store.writes()) == 3

    def test_a_retried_delete_returns_its_version(self) -> None:
        store = self.store()
        store.create("k", 1)
        wd = Writer(run_id="r", write_id="r:del")
        assert store.delete("k", expected_version=1, writer=wd) == 2
        assert store.delete("k", expected_version=1, writer=wd) == 2
        store.create("k", 2)
        assert store.delete("k", expected_version=1, writer=wd) == 2
        assert [r.version for r in store.history("k")] == [1, 2, 3]
        got = store.get("k")
        assert got is not None and got.value == 2

    def test_a_write_id_belongs_to_one_key(self) -> None:
        store = self.store()
        w = Writer(run_id="r", write_id="same")
        assert store.create("a", 1, writer=w).version == 1
        assert store.create("b", 2, writer=w).version == 1
        got = store.get("b")
        assert got is not None and got.value == 2
        assert store.write("a", "5", expected_version=None, writer=w) == (1, True)
        assert store.write("b", "5", expected_version=None, writer=w) == (1, True)
        assert len(store.writes()) == 2

    def test_a_stale_write_does_not_consume_its_write_id(self) -> None:
        store = self.store()
        store.create("k", 0)
        w = Writer(run_id="r", write_id="w")
        with raises(StaleVersion):
            store.put("k", 1, expected_version=5, writer=w)
        assert store.put("k", 1, expected_version=1, writer=w).version == 2
        assert [r.writer.write_id for r in store.history("k")] == [None, "w"]

    def test_concurrent_retries_of_one_write_apply_it_once(self) -> None:
        store = self.store()
        store.create("k", 0)
        w = Writer(run_id="r", write_id="once")
        results = run_threads(
            self.threads, lambda i: store.write("k", "1", expected_version=1, writer=w)
        )
        assert all(isinstance(r, tuple) and r[0] == 2 for r in results), results
        assert sorted(r[1] for r in results) == [False] + [True] * (self.threads - 1)
        assert [r.version for r in store.history("k")] == [1, 2]

    # -- claims ----------------------------------------------------------------------------

    def test_exactly_one_of_many_claimants_wins(self) -> None:
        store = self.store()
        n = self.threads
        for round_ in range(4):
            key = f"job{round_}"
            writers = [
                Writer(run_id=f"run-{i}", step_path="flow/ship", agent={"name": f"agent-{i}"})
                for i in range(n)
            ]

            def claim(i: int, key: str = key, writers: list[Writer] = writers) -> Any:
                return store.claim(key, action="ship", writer=writers[i], ttl=60)

            results = run_threads(n, claim)
            won = [(i, r) for i, r in enumerate(results) if not isinstance(r, BaseException)]
            assert len(won) == 1, results
            winner, made = won[0]
            assert made.holder == writers[winner] and made.action == "ship"
            for i, r in enumerate(results):
                if i == winner:
                    continue
                assert isinstance(r, AlreadyClaimed), r
                assert r.holder == writers[winner].to_dict(), (r.holder, writers[winner])
                assert r.action == "ship" and r.key == key
                assert r.expires_at == made.expires_at
                assert f"run-{winner}" in r.owner
            held = store.claim_of(key)
            assert held is not None and held.holder == writers[winner]
            assert held.version == made.version
            assert len(store.history(CLAIM_PREFIX + key)) == 1

    def test_the_same_holder_claiming_again_gets_its_claim_back(self) -> None:
        store = self.store()
        me = Writer(run_id="r", step_path="flow/a", agent=dict(AGENT))
        first = store.claim("k", action="edit", writer=me, ttl=60)
        again = store.claim("k", action="edit", writer=me, ttl=60)
        assert again.version == first.version and again.holder == first.holder
        assert again.expires_at == first.expires_at
        # the same run and step with another agent identity is the same holder
        same = Writer(run_id="r", step_path="flow/a")
        assert store.claim("k", action="edit", writer=same).version == first.version
        # another step of the same run is not
        with raises(AlreadyClaimed):
            store.claim("k", action="edit", writer=Writer(run_id="r", step_path="flow/b"))
        with raises(AlreadyClaimed):
            store.claim("k", action="other", writer=me)
        assert len(store.history(CLAIM_PREFIX + "k")) == 1

    def test_an_expired_claim_can_be_taken(self) -> None:
        store = self.store()
        old = Writer(run_id="old", step_path="s")
        new = Writer(run_id="new", step_path="s")
        t = time.time()
        first = store.claim("k", action="a", writer=old, ttl=60, now=t)
        assert first.expires_at == t + 60
        with raises(AlreadyClaimed):
            store.claim("k", action="a", writer=new, now=t + 59)
        assert store.claim_of("k", now=t + 61) is None
        expired = store.claim_of("k", now=t + 61, include_expired=True)
        assert expired is not None and expired.holder == old
        taken = store.claim("k", action="a", writer=new, ttl=60, now=t + 61)
        assert taken.holder == new and taken.version == first.version + 1
        held = store.claim_of("k", now=t + 62)
        assert held is not None and held.holder == new
        with raises(AlreadyClaimed) as caught:
            store.claim("k", action="a", writer=old, now=t + 62)
        assert caught.value.holder == new.to_dict()
        # in real time too
        store.claim("short", action="a", writer=old, ttl=0.05)
        with raises(AlreadyClaimed):
            store.claim("short", action="a", writer=new)
        time.sleep(0.1)
        assert store.claim("short", action="a", writer=new).holder == new

    def test_a_claim_without_ttl_does_not_expire(self) -> None:
        store = self.store()
        claim = store.claim("k", action="a", writer=Writer(by="me"))
        assert claim.expires_at is None
        later = time.time() + 10 * 365 * 86400
        assert store.claim_of("k", now=later) is not None
        with raises(AlreadyClaimed):
            store.claim("k", action="a", writer=Writer(by="you"), now=later)
        with raises(ValueError):
            store.claim("k2", action="a", writer=Writer(by="me"), ttl=0)

    def test_release_by_the_holder_frees_the_key(self) -> None:
        store = self.store()
        me, you = Writer(run_id="me", step_path="s"), Writer(run_id="you", step_path="s")
        claim = store.claim("k", action="a", writer=me)
        assert store.release("k", writer=me) is True
        assert store.claim_of("k") is None
        assert store.release("k", writer=me) is False
        history = store.history(CLAIM_PREFIX + "k")
        assert [(r.version, r.deleted) for r in history] == [(1, False), (2, True)]
        taken = store.claim("k", action="a", writer=you)
        assert taken.holder == you and taken.version == claim.version + 2

    def test_release_by_another_holder_changes_nothing(self) -> None:
        store = self.store()
        me, you = Writer(run_id="me", step_path="s"), Writer(run_id="you", step_path="s")
        assert store.release("k", writer=me) is False
        assert store.history(CLAIM_PREFIX + "k") == []
        claim = store.claim("k", action="a", writer=me, ttl=60)
        assert store.release("k", writer=you) is False
        assert store.release("k", writer=Writer(run_id="me", step_path="other")) is False
        held = store.claim_of("k")
        assert held is not None and held.holder == me and held.version == claim.version
        assert len(store.history(CLAIM_PREFIX + "k")) == 1

    def test_claims_and_releases_under_a_write_id(self) -> None:
        """A step's writer carries a write id: its claim and release both take effect,
        a retried claim returns the claim, a claim after a release is a new claim."""
        store = self.store()
        me = Writer(run_id="r", step_path="s", write_id="r:s:claim")
        claim = store.claim("k", action="a", writer=me, ttl=60)
        assert store.claim("k", action="a", writer=me, ttl=60).version == claim.version
        assert store.release("k", writer=me) is True
        assert store.claim_of("k") is None
        other = Writer(run_id="other", step_path="s")
        assert store.claim("k", action="a", writer=other).holder == other
        assert store.release("k", writer=other) is True
        again = store.claim("k", action="a", writer=me, ttl=60)
        held = store.claim_of("k")
        assert held is not None and held.version == again.version > claim.version
        assert held.holder.same_holder(me)
        assert store.release("k", writer=me) is True
        assert store.claim_of("k") is None
        versions = [r.version for r in store.history(CLAIM_PREFIX + "k")]
        assert versions == list(range(1, len(versions) + 1))

    def test_claim_keys_are_reserved(self) -> None:
        store = self.store()
        reserved = CLAIM_PREFIX + "k"
        with raises(InvalidStateValue, match="reserved"):
            store.put(reserved, {"holder": {}}, expected_version=None)
        with raises(InvalidStateValue):
            store.create(reserved, 1)
        with raises(InvalidStateValue):
            store.get(reserved)
        with raises(InvalidStateValue):
            store.delete(reserved, expected_version=1)
        with raises(InvalidStateValue):
            store.update(reserved, lambda v: v, default=0)
        with raises(InvalidStateValue):
            store.claim(reserved, action="a", writer=Writer(by="me"))
        assert store.history(reserved) == [] and store.writes() == []
        # the claim of a key is not the key
        store.claim("k", action="a", writer=Writer(by="me"))
        assert store.get("k") is None
        store.create("k", "value")
        got = store.get("k")
        assert got is not None and got.version == 1

    # -- typed namespaces ------------------------------------------------------------------

    def test_a_namespace_validates_on_write_and_on_read(self) -> None:
        store = self.store()
        orders = store.namespace("order", Order)
        made = orders.create("1", Order(id="1", qty=2))
        assert made.key == "order:1" and made.version == 1
        got = orders.get("1")
        assert got is not None and got.value == Order(id="1", qty=2)
        assert isinstance(got.value, Order)
        raw = store.get("order:1")
        assert raw is not None and raw.value == {"id": "1", "qty": 2, "note": ""}
        # a plain dict that fits is accepted and read back as the model
        orders.put("1", {"id": "1", "qty": 3}, expected_version=1)  # type: ignore[arg-type]
        got = orders.get("1")
        assert got is not None and got.value.qty == 3 and got.version == 2
        bumped = orders.update("1", lambda o: o.model_copy(update={"qty": o.qty + 1}))
        assert bumped.value.qty == 4 and bumped.version == 3
        assert orders.keys() == ["1"]
        assert [r.version for r in orders.history("1")] == [1, 2, 3]
        assert orders.delete("1", expected_version=3) == 4
        assert orders.get("1") is None and orders.keys() == []

    def test_a_value_that_fails_the_model_is_refused_and_nothing_written(self) -> None:
        store = self.store()
        orders = store.namespace("order", Order)
        for bad in ({"id": "1", "qty": "many"}, {"id": "1"}, [1, 2], "order", None):
            with raises(InvalidStateValue) as caught:
                orders.create("1", bad)  # type: ignore[arg-type]
            assert caught.value.problems, bad
            assert caught.value.key == "order:1"
        assert store.history("order:1") == [] and store.keys() == []
        orders.create("1", Order(id="1", qty=1))
        with raises(InvalidStateValue) as caught:
            orders.put("1", {"id": "1", "qty": "x"}, expected_version=1)  # type: ignore[arg-type]
        assert any("qty" in p for p in caught.value.problems), caught.value.problems
        with raises(InvalidStateValue):
            orders.update("1", lambda o: {"qty": "broken"})  # type: ignore[arg-type,return-value]
        assert len(store.history("order:1")) == 1

    def test_a_stored_value_that_no_longer_fits_the_model_is_refused_on_read(self) -> None:
        store = self.store()
        store.create("order:old", {"id": "old", "qty": "a dozen"})
        orders = store.namespace("order", Order)
        with raises(InvalidStateValue) as caught:
            orders.get("old")
        assert caught.value.problems and caught.value.key == "order:old"
        with raises(InvalidStateValue):
            orders.update("old", lambda o: o)
        assert len(store.history("order:old")) == 1
        untyped = store.namespace("order")
        got = untyped.get("old")
        assert got is not None and got.value == {"id": "old", "qty": "a dozen"}

    # -- limits ----------------------------------------------------------------------------

    def test_invalid_keys_are_refused(self) -> None:
        store = self.store()
        bad_keys = [
            "",
            "k" * (MAX_KEY_LENGTH + 1),
            "tab\tkey",
            "new\nline",
            "nul\x00",
            "del\x7f",
            "esc\x1b",
            "lone\ud800surrogate",
            "\udfff",
        ]
        for key in bad_keys:
            for attempt in (
                lambda key=key: store.put(key, 1, expected_version=None),
                lambda key=key: store.create(key, 1),
                lambda key=key: store.get(key),
                lambda key=key: store.delete(key, expected_version=1),
                lambda key=key: store.update(key, lambda v: v, default=1),
                lambda key=key: store.claim(key, action="a", writer=Writer(by="me")),
                lambda key=key: store.history(key),
            ):
                with raises(InvalidStateValue):
                    attempt()
        assert store.writes() == [] and store.keys() == []
        assert store.keys(CLAIM_PREFIX) == []
        longest = "k" * MAX_KEY_LENGTH
        assert store.create(longest, 1).version == 1
        got = store.get(longest)
        assert got is not None and got.value == 1

    def test_values_over_the_size_limit_are_refused(self) -> None:
        store = self.store()
        limit = store.max_value_bytes
        # a JSON string of exactly the limit fits; one byte more does not
        fits = "x" * (limit - 2)
        assert store.create("big", fits).version == 1
        with raises(InvalidStateValue, match="bytes"):
            store.put("big", fits + "x", expected_version=1)
        got = store.get("big")
        assert got is not None and got.version == 1 and got.value == fits
        with raises(InvalidStateValue):
            store.write("raw", '"' + "y" * limit + '"', expected_version=None)
        assert store.get("raw") is None and store.history("raw") == []

    def test_the_size_limit_counts_utf8_bytes_not_characters(self) -> None:
        store = self.store()
        store.max_value_bytes = 100
        assert store.create("ok", "é" * 49).version == 1  # 98 + 2 quotes = 100 bytes
        with raises(InvalidStateValue):
            store.create("too-big", "é" * 50)  # 50 characters, 102 bytes
        with raises(InvalidStateValue):
            store.create("too-big", "🦄" * 25)
        assert store.history("too-big") == []

    def test_values_that_are_not_json_are_refused(self) -> None:
        store = self.store()
        store.create("k", "ok")
        for bad in (
            float("nan"),
            float("inf"),
            {"x": float("-inf")},
            {1, 2},
            {"set": {1}},
            b"bytes",
            object(),
            "lone \ud83d surrogate",
            {"key": ["deep \udc00"]},
            {"\ud800": 1},
        ):
            with raises(InvalidStateValue):
                store.put("k", bad, expected_version=1)
            with raises(InvalidStateValue):
                store.create("fresh", bad)
        got = store.get("k")
        assert got is not None and (got.value, got.version) == ("ok", 1)
        assert store.history("fresh") == [] and len(store.writes()) == 1

    def test_unicode_keys_and_nested_values_round_trip(self) -> None:
        store = self.store()
        for i, key in enumerate(UNICODE_KEYS):
            value = ROUND_TRIP_VALUES[i % len(ROUND_TRIP_VALUES)]
            store.create(key, value, writer=Writer(by=f"writer {key}", agent={"name": key}))
        for i, value in enumerate(ROUND_TRIP_VALUES):
            store.create(f"value:{i}", value)
        for i, key in enumerate(UNICODE_KEYS):
            got = store.get(key)
            want = ROUND_TRIP_VALUES[i % len(ROUND_TRIP_VALUES)]
            assert got is not None and got.value == want and got.key == key, (key, got)
            record = store.history(key)[0]
            assert record.key == key and record.writer.by == f"writer {key}"
            assert record.writer.agent == {"name": key}
        for i, value in enumerate(ROUND_TRIP_VALUES):
            got = store.get(f"value:{i}")
            assert got is not None and got.value == value, (value, got)
            assert type(got.value) is type(value), (value, got.value)
            assert store.history(f"value:{i}")[0].value == value
        values = [f"value:{i}" for i in range(len(ROUND_TRIP_VALUES))]
        assert store.keys() == sorted([*UNICODE_KEYS, *values])
        for key in UNICODE_KEYS:
            everything = store.keys()
            assert store.keys(key) == sorted(k for k in everything if k.startswith(key))

    # -- a model of the store ------------------------------------------------------------

    def test_random_operations_match_a_model_of_the_store(self) -> None:
        """Random put/create/delete sequences (some at stale versions, some retried
        under a used write id) give the results, errors and histories a dict predicts."""
        try:
            from hypothesis import HealthCheck, given, settings
            from hypothesis import strategies as st
        except ImportError:
            self.skip("hypothesis is not installed")
        store = self.store()
        examples = itertools.count()
        op = st.tuples(
            st.sampled_from(["put", "create", "delete"]),
            st.sampled_from(["a", "b", "c"]),
            st.one_of(st.integers(-3, 3), st.sampled_from([None, "s", [1], {"x": "y"}])),
            st.sampled_from([None, "live", "last", 1, 2, 3, 5]),
            st.sampled_from([None, None, "w1", "w2"]),
        )

        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.lists(op, max_size=25))
        def check(ops: list[tuple[str, str, Any, Any, str | None]]) -> None:
            run = next(examples)
            live: dict[str, tuple[int, Any]] = {}  # key -> (version, value)
            history: dict[str, list[tuple[int, Any, bool]]] = {}
            done: dict[tuple[str, str], int] = {}
            for kind, name, value, expect, write_id in ops:
                key = f"model{run}:{name}"
                rows = history.setdefault(key, [])
                last = rows[-1][0] if rows else 0
                live_version = live[key][0] if key in live else 0
                expected: int | None
                if expect == "live":
                    expected = live_version or None
                elif expect == "last":
                    expected = last or None
                else:
                    expected = expect
                if kind == "create":
                    expected = None
                if kind == "delete" and expected is None:
                    expected = live_version or 1
                writer = Writer(run_id=f"run{run}", write_id=write_id)
                if write_id is not None and (key, write_id) in done:
                    outcome: Any = done[key, write_id]
                elif (expected or 0) == live_version:
                    outcome = last + 1
                    rows.append((outcome, None if kind == "delete" else value, kind == "delete"))
                    if kind == "delete":
                        live.pop(key, None)
                    else:
                        live[key] = (outcome, value)
                    if write_id is not None:
                        done[key, write_id] = outcome
                else:
                    outcome = StaleVersion(
                        key,
                        expected=expected,
                        actual=live_version,
                        current=live[key][1] if key in live else None,
                    )
                try:
                    if kind == "delete":
                        assert expected is not None
                        got: Any = store.delete(key, expected_version=expected, writer=writer)
                    elif kind == "create":
                        got = store.create(key, value, writer=writer).version
                    else:
                        got = store.put(key, value, expected_version=expected, writer=writer)
                        got = got.version
                except StaleVersion as exc:
                    assert isinstance(outcome, StaleVersion), (kind, key, outcome, exc)
                    assert (exc.expected, exc.actual, exc.current) == (
                        outcome.expected,
                        outcome.actual,
                        outcome.current,
                    ), (kind, key, exc, outcome)
                else:
                    assert got == outcome, (kind, key, expected, got, outcome)
                found = store.get(key)
                if key in live:
                    assert found is not None and (found.version, found.value) == live[key]
                else:
                    assert found is None, (key, found)
            for key, rows in history.items():
                assert shape(store.history(key)) == rows, (key, rows)
            prefix = f"model{run}:"
            assert store.keys(prefix) == sorted(live)
            assert len(store.writes(prefix=prefix)) == sum(len(r) for r in history.values())

        check()

    # -- persistence and handles -----------------------------------------------------------

    def test_values_versions_history_and_claims_survive_reopening(self) -> None:
        store = self.store()
        w = Writer(run_id="r1", step_path="flow/a", agent=dict(AGENT), write_id="r1:1")
        store.create("k", {"n": 1}, writer=w)
        store.put("k", {"n": 2}, expected_version=1, writer=Writer(by="cli"))
        store.create("gone", "x")
        store.delete("gone", expected_version=1)
        store.create("ключ🦄", ["unicode"])
        holder = Writer(run_id="r1", step_path="flow/ship")
        claim = store.claim("job", action="ship", writer=holder, ttl=3600)
        forever = store.claim("job2", action="ship", writer=holder)
        history = store.history("k")
        writes = store.writes()
        store.close()
        again = self.second_handle(store)
        got = again.get("k")
        assert got is not None and (got.value, got.version) == ({"n": 2}, 2)
        assert again.get("gone") is None
        assert again.keys() == ["k", "ключ🦄"]
        assert again.history("k") == history
        assert again.writes() == writes
        assert [r.version for r in again.history("gone")] == [1, 2]
        held = again.claim_of("job")
        assert held is not None and held.holder == holder and held.version == claim.version
        assert held.expires_at == claim.expires_at
        held2 = again.claim_of("job2")
        assert held2 is not None and held2.expires_at is None and forever.expires_at is None
        with raises(AlreadyClaimed):
            again.claim("job", action="ship", writer=Writer(run_id="r2", step_path="x"))
        # the version sequence and the write ids carry on
        assert again.create("gone", "back").version == 3
        assert again.create("k", {"n": "retry"}, writer=w).version == 1
        assert again.put("k", {"n": 3}, expected_version=2).version == 3
        with raises(StaleVersion):
            again.put("k", {"n": 4}, expected_version=2)

    def test_two_handles_share_versions_and_claims(self) -> None:
        one = self.store()
        two = self.second_handle(one)
        one.create("k", 1)
        got = two.get("k")
        assert got is not None and (got.value, got.version) == (1, 1)
        two.put("k", 2, expected_version=1)
        with raises(StaleVersion) as caught:
            one.put("k", 3, expected_version=1)
        assert (caught.value.actual, caught.value.current) == (2, 2)
        one.claim("c", action="a", writer=Writer(by="one"))
        with raises(AlreadyClaimed):
            two.claim("c", action="a", writer=Writer(by="two"))
        w = Writer(run_id="r", write_id="shared")
        assert one.put("k", 4, expected_version=2, writer=w).version == 3
        assert two.put("k", 4, expected_version=2, writer=w).version == 3
        # increments through both handles from many threads: none lost
        handles = [one, two]
        n, k = self.threads, max(1, self.increments // 2)

        def work(i: int) -> None:
            for _ in range(k):
                handles[i % 2].update("n", lambda v: v + 1, default=0, max_attempts=100_000)

        results = run_threads(n, work)
        assert not [r for r in results if isinstance(r, BaseException)], results
        got = one.get("n")
        assert got is not None and got.value == n * k and got.version == n * k
        assert [r.version for r in two.history("n")] == list(range(1, n * k + 1))


# -- without pytest ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """One conformance test's outcome: ``passed``, ``failed`` or ``skipped``."""

    name: str
    outcome: str
    detail: str = ""


def check_backend(
    make_store: Callable[[Path], StateStore],
    *,
    reopen: Callable[[StateStore], StateStore] | None = None,
    only: Iterable[str] | None = None,
) -> list[CheckResult]:
    """Run the suite without pytest: ``make_store(scratch_dir)`` makes a new, empty store
    (each call gets a new empty directory; the store must not share storage with the
    ones made before it). ``reopen(store)`` is a new handle onto ``store``'s storage
    (without it, the persistence tests are skipped).

    Returns one result per test (``only`` names a subset); a failure's detail is its
    traceback.
    """

    class Adhoc(StateConformance):
        def make_store(self) -> StateStore:
            scratch = Path(tempfile.mkdtemp(prefix="state-", dir=self.tmp_path))
            return make_store(scratch)

        def reopen(self, store: StateStore) -> StateStore:
            if reopen is None:
                return super().reopen(store)
            return reopen(store)

        def skip(self, reason: str) -> NoReturn:
            raise ConformanceSkip(reason)

    names = sorted(n for n in dir(StateConformance) if n.startswith("test_"))
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
