"""The PostgreSQL journal: the conformance suite, processes sharing runs, a lost server.

Every test here runs against a real throw-away PostgreSQL (``postgres_url``, one per
session); without one they skip, and the run ends with a banner saying so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

import typedmesh as tm
from typedmesh.errors import JournalError, LeaseHeld, LeaseLost
from typedmesh.journal import Journal, PostgresJournal, open_journal
from typedmesh.journal.base import new_owner
from typedmesh.journal.postgres import JournalUnavailable
from typedmesh.journal.writer import EventLog, JournalSink
from typedmesh.testing.journal_conformance import (
    JournalConformance,
    chain,
    refund_flow,
    snapshot,
)
from typedmesh.testing.servers import drop_schema, start_postgres

RUNTIME = Path(__file__).resolve().parents[1] / "runtime"
EXPECTED = {"charge A7 1299": 1, "ship A7": 1, "notify A7 on its way": 1}


class TestPostgresJournal(JournalConformance):
    """Each journal its own fresh schema; ``reopen`` is a second connection to it."""

    @pytest.fixture(autouse=True)
    def _server(self, postgres_url: str) -> None:
        self.url = postgres_url
        self.schemas: list[str] = []

    def make_journal(self) -> Journal:
        schema = f"conf_{uuid.uuid4().hex[:12]}"
        self.schemas.append(schema)
        return PostgresJournal(self.url, schema=schema)

    def reopen(self, journal: Journal) -> Journal:
        assert isinstance(journal, PostgresJournal)
        return PostgresJournal(self.url, schema=journal.schema)

    def teardown_method(self, method: object = None) -> None:
        super().teardown_method(method)
        for schema in getattr(self, "schemas", []):
            drop_schema(self.url, schema)


# -- helpers ---------------------------------------------------------------------------


@pytest.fixture
def url(postgres_url: str, pg_schema: str) -> str:
    """A journal URL of this test's own (its fresh schema)."""
    return f"{postgres_url}?schema={pg_schema}"


def env(**extra: str) -> dict[str, str]:
    out = {**os.environ, "TYPEDMESH_ALLOW_NETWORK": "0", **extra}
    out.pop("TYPEDMESH_JOURNAL_KEY", None)
    return out


def typedmesh(*args: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "typedmesh.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env(**extra),
        timeout=120,
    )


def effects(side: Path) -> Counter[str]:
    lines = side.read_text().splitlines() if side.exists() else []
    return Counter(line.split(" key=")[0] for line in lines)


def start_and_kill(url: str, pause_at: str, side: Path, cwd: Path) -> None:
    """Run tests/runtime/crash_flow.py on ``url`` in a child; SIGKILL it at ``pause_at``."""
    child = subprocess.Popen(
        [sys.executable, str(RUNTIME / "crash_flow.py"), url, "r1"],
        stdout=subprocess.PIPE,
        text=True,
        env=env(SIDE_EFFECT_FILE=str(side), PAUSE_AT=pause_at),
        cwd=cwd,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line.startswith("PAUSED"), line
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    child.stdout.close()


# -- a run crosses processes -----------------------------------------------------------------


def test_a_run_killed_in_one_process_resumes_in_another_cli_process(
    url: str, tmp_path: Path
) -> None:
    side = tmp_path / "effects.txt"
    start_and_kill(url, "ship:before", side, tmp_path)
    assert effects(side) == {"charge A7 1299": 1}
    head = PostgresJournal(url)
    try:
        assert head.head("r1").status == "running"  # its writer died mid-run
        (info,) = head.runs()
        assert info.status == "incomplete"  # a dead owner on this host: not live
    finally:
        head.close()
    flow = f"{RUNTIME / 'crash_flow.py'}:flow"
    out = typedmesh(
        "resume", "r1", "--flow", flow, "--journal", url, "--json",
        cwd=tmp_path, SIDE_EFFECT_FILE=str(side),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["output"]["message"] == "charged, shipped and notified"
    assert effects(side) == EXPECTED  # nothing repeated: the charge was not made again
    verified = typedmesh("verify", "r1", "--journal", url, cwd=tmp_path)
    assert verified.returncode == 0 and "OK" in verified.stdout, verified.stdout


def test_a_run_killed_after_its_charge_resumes_here_without_charging_again(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    side = tmp_path / "effects.txt"
    start_and_kill(url, "charge:after", side, tmp_path)
    monkeypatch.setenv("SIDE_EFFECT_FILE", str(side))
    sys.path.insert(0, str(RUNTIME))
    try:
        import crash_flow
    finally:
        sys.path.remove(str(RUNTIME))
    result = tm.resume("r1", crash_flow.flow, journal=url)
    assert result.output.message == "charged, shipped and notified"
    assert effects(side) == EXPECTED
    store = open_journal(url, must_exist=True)
    assert tm.verify_run(store, "r1").ok
    types = [e.type for e in store.read("r1")]
    assert types.count("run.resumed") == 1 and types[-1] == "run.finished"
    assert tm.replay("r1", crash_flow.flow, journal=url).identical


# -- racing writers --------------------------------------------------------------------------

RACER = textwrap.dedent("""
    import sys
    from typedmesh.errors import LeaseHeld
    from typedmesh.journal import PostgresJournal
    from typedmesh.journal.base import new_owner

    journal = PostgresJournal(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        lease = journal.acquire("r", new_owner(), ttl=60)
    except LeaseHeld as exc:
        print("held", exc.owner, flush=True)
    else:
        print("won", lease.token, flush=True)
""")


def test_processes_racing_to_acquire_a_run_one_wins_and_the_zombie_is_fenced(url: str) -> None:
    journal = PostgresJournal(url)
    try:
        # the run's owner lives on another machine; its lease has just expired
        zombie = journal.create_run("r", "far-away.example:1:beef", flow="flow", ttl=0.3)
        log = EventLog("r", sinks=[JournalSink(journal, zombie, ttl=0.3, batch_size=1)])
        log.emit("run.started", "flow", {"flow": "flow"})
        time.sleep(0.4)
        racers = [
            subprocess.Popen(
                [sys.executable, "-c", RACER, url],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env(),
            )
            for _ in range(3)
        ]
        for racer in racers:  # every racer connected, then all go at once
            assert racer.stdout is not None and racer.stdout.readline() == "ready\n"
        for racer in racers:
            assert racer.stdin is not None
            racer.stdin.write("go\n")
            racer.stdin.flush()
        outcomes = []
        for racer in racers:
            out, _ = racer.communicate(timeout=60)
            outcomes.append(out.split())
        winners = [o for o in outcomes if o[0] == "won"]
        assert len(winners) == 1, outcomes
        assert winners[0][1] == str(zombie.token + 1)
        head = journal.head("r")
        assert head.token == zombie.token + 1 and head.owner != zombie.owner
        assert all(o[0] == "held" and o[1] == head.owner for o in outcomes if o[0] != "won")
        # the zombie wakes up and appends, renews, releases: all fenced, nothing written
        before = snapshot(journal, "r")
        with pytest.raises(LeaseLost, match="no longer the run's"):
            log.emit("tool.started", "flow", {"tool": "refund"})
        with pytest.raises(LeaseLost):
            journal.renew(zombie)
        journal.release(zombie, "finished")
        assert snapshot(journal, "r") == before and journal.head("r").status == "running"
    finally:
        journal.close()


def test_threads_racing_on_one_run_through_separate_connections(url: str) -> None:
    """Eight connections append the same next event at once: one lands, seven are refused."""
    handles = [PostgresJournal(url) for _ in range(8)]
    try:
        lease = handles[0].create_run("r", new_owner(), flow="flow", ttl=60)
        first, second = chain("r", [("run.started", {"flow": "flow"}), ("note", {"n": 1})])
        handles[0].append(lease, [first], {})
        barrier = threading.Barrier(len(handles))
        results: list[str] = []

        def race(journal: PostgresJournal) -> None:
            barrier.wait()
            try:
                journal.append(lease, [second], {"sha256:" + "a" * 64: b"blob"})
            except LeaseLost:
                results.append("refused")
            else:
                results.append("landed")

        threads = [threading.Thread(target=race, args=(h,)) for h in handles]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(results) == ["landed"] + ["refused"] * 7
        assert [e.seq for e in handles[0].read("r")] == [0, 1]
        assert tm.verify_run(handles[0], "r").ok
    finally:
        for handle in handles:
            handle.close()


def test_schema_created_once_when_many_open_a_new_journal_at_once(postgres_url: str) -> None:
    schema = f"race_{uuid.uuid4().hex[:10]}"
    errors: list[BaseException] = []
    opened: list[PostgresJournal] = []
    barrier = threading.Barrier(6)

    def open_it() -> None:
        barrier.wait()
        try:
            opened.append(PostgresJournal(postgres_url, schema=schema))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    try:
        assert errors == [] and len(opened) == 6
        with psycopg.connect(postgres_url) as conn:
            rows = conn.execute(
                sql.SQL("SELECT version FROM {}.typedmesh_migrations").format(
                    sql.Identifier(schema)
                )
            ).fetchall()
        assert rows == [(1,)]
    finally:
        for journal in opened:
            journal.close()
        drop_schema(postgres_url, schema)


# -- an attacker with SQL access ------------------------------------------------------------


def test_a_tail_deleted_with_sql_is_caught_by_verify_and_resume(url: str, tmp_path: Path) -> None:
    journal = PostgresJournal(url)
    try:
        refund = refund_flow()
        tm.run(refund.flow, {"order_id": "A1"}, journal=journal, run_id="r")
        head = journal.head("r")
        with psycopg.connect(url.partition("?")[0]) as conn:  # the attacker's own session
            conn.execute(
                sql.SQL("DELETE FROM {}.events WHERE run_id = 'r' AND seq >= %s").format(
                    sql.Identifier(journal.schema)
                ),
                (head.seq - 2,),
            )
        out = typedmesh("verify", "r", "--journal", url, cwd=tmp_path)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "3 event(s) were deleted from the tail" in " ".join(out.stdout.split())
        with pytest.raises(tm.JournalCorrupt, match="deleted from the tail"):
            tm.resume("r", refund.flow, journal=journal)
        assert refund.refunds == ["A1"]
    finally:
        journal.close()


# -- a lost server ----------------------------------------------------------------------------


def test_a_refused_connection_is_one_line_naming_the_server_not_the_password(
    tmp_path: Path,
) -> None:
    out = typedmesh("runs", "--journal", "postgresql://bob:s3cret@127.0.0.1:1/x", cwd=tmp_path)
    assert out.returncode == 2
    assert "JournalUnavailable" in out.stderr and "127.0.0.1:1" in out.stderr
    assert "refused" in out.stderr.lower()
    assert "Traceback" not in out.stderr + out.stdout and "s3cret" not in out.stderr
    with pytest.raises(JournalUnavailable) as caught:
        PostgresJournal("postgresql://bob:s3cret@127.0.0.1:1/x", connect_timeout=2)
    assert caught.value.server == "127.0.0.1:1" and "s3cret" not in str(caught.value)


def test_a_server_killed_mid_run_is_a_typed_error_naming_it(tmp_path: Path) -> None:
    from pydantic import BaseModel

    class Q(BaseModel):
        text: str

    try:
        server = start_postgres()
    except Exception as exc:  # the session's server started; a second may still fail
        pytest.skip(f"a second PostgreSQL could not be started: {exc}")
    with server:

        @tm.step
        def first(q: Q) -> Q:
            return Q(text=q.text + "1")

        @tm.step
        def killer(q: Q) -> Q:
            os.killpg(server.pid, signal.SIGKILL)  # the server and all its backends
            server.process.wait(timeout=10)
            return Q(text=q.text + "2")

        journal = PostgresJournal(server.url)
        try:
            with pytest.raises(JournalUnavailable) as caught:
                tm.run(tm.sequential(first, killer, name="doomed"), {"text": "a"}, journal=journal)
            err = caught.value
            assert err.server == f"127.0.0.1:{server.port}"
            assert f"127.0.0.1:{server.port}" in str(err) and err.reason
            with pytest.raises(JournalUnavailable, match=f"127.0.0.1:{server.port}"):
                journal.runs()  # the next call tries a new connection: refused
        finally:
            journal.close()


def test_a_terminated_connection_is_replaced_by_the_next_call(url: str) -> None:
    journal = PostgresJournal(url)
    try:
        journal.create_run("r", new_owner())
        with psycopg.connect(url.partition("?")[0], autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'typedmesh' AND pid <> pg_backend_pid()"
            )
        with pytest.raises(JournalUnavailable):
            journal.head("r")
        assert journal.head("r").seq == -1  # reconnected
    finally:
        journal.close()


# -- opening -------------------------------------------------------------------------------


def test_durability_sets_synchronous_commit(url: str) -> None:
    for level, setting in (("off", "off"), ("normal", "local"), ("full", "on")):
        journal = PostgresJournal(url, durability=level)  # type: ignore[arg-type]
        try:
            row = journal._conn().execute("SHOW synchronous_commit").fetchone()
            assert row == (setting,), level
        finally:
            journal.close()


def test_readonly_and_must_exist(postgres_url: str, url: str) -> None:
    with pytest.raises(tm.RunNotFound, match="no typedmesh journal"):
        open_journal(url, must_exist=True)
    with pytest.raises(tm.RunNotFound):
        PostgresJournal(url, readonly=True)
    writer = PostgresJournal(url)
    reader = PostgresJournal(url, readonly=True)
    try:
        writer.create_run("r", new_owner())
        assert reader.head("r").seq == -1
        with pytest.raises(JournalError, match="read-only"):
            reader.create_run("s", new_owner())
        with pytest.raises(LeaseHeld):  # refused by the lease, before read-only matters
            writer.acquire("r", new_owner())
    finally:
        writer.close()
        reader.close()
    assert open_journal(url, must_exist=True) is open_journal(url)
    schema = url.rpartition("=")[2]
    in_path = f"{postgres_url}?options=-csearch_path%3D{schema}"
    journal = PostgresJournal(in_path)  # no schema named: the connection's search_path
    try:
        assert journal.schema == schema and journal.exists("r")
    finally:
        journal.close()


def test_cli_run_then_trace_and_runs_on_postgres(url: str, tmp_path: Path) -> None:
    flow = tmp_path / "qa_flow.py"
    flow.write_text(
        textwrap.dedent("""
            from pydantic import BaseModel
            import typedmesh as tm

            class Question(BaseModel):
                text: str

            class Answer(BaseModel):
                answer: str

            answerer = tm.Agent("answerer", input=Question, output=Answer,
                                model=tm.ScriptedModel(lambda r: {"answer": "yes"},
                                                       name="gpt-4o-mini"))
            flow = tm.sequential(answerer, name="qa")
        """)
    )
    ran = typedmesh(
        "run", f"{flow}:flow", "--input", '{"text": "hi"}', "--run-id", "q1",
        "--journal", url, "--durability", "full", cwd=tmp_path,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    trace = typedmesh("trace", "q1", "--journal", url, "--json", cwd=tmp_path)
    assert trace.returncode == 0, trace.stderr
    tree = json.loads(trace.stdout)
    assert tree["status"] == "ok" and tree["children"][0]["name"] == "answerer"
    runs = typedmesh("runs", "--journal", url, "--json", cwd=tmp_path)
    assert [r["run_id"] for r in json.loads(runs.stdout)] == ["q1"]
    assert not (tmp_path / ".typedmesh").exists()  # nothing went to a SQLite file
