"""``typedmesh state``: the passing-ships example run through the CLI on a real SQLite
file, then read back (values, who wrote each version, claims), fixed by an operator,
and every careless input: one line, the documented exit code, never a traceback.

Exit codes (docs/state.md): 1 the store said no (no value, a lost race); 2 a usage or
input error, or a store that cannot be opened or reached.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = f"{ROOT / 'examples' / 'passing_ships.py'}:flow"


def typedmesh(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "typedmesh.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={"TYPEDMESH_ALLOW_NETWORK": "0", "PATH": "/usr/bin:/bin", "COLUMNS": "250"},
    )


def ok_json(cwd: Path, *args: str) -> Any:
    done = typedmesh(cwd, *args, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def run_ships(cwd: Path, run_id: str, order: str = "42", claims: bool = True, *args: str) -> Any:
    ticket = json.dumps({"order_id": order, "claims": claims})
    return ok_json(cwd, "run", EXAMPLE, "-i", ticket, "--run-id", run_id, *args)


def one_line_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    """The error line of a failed command: exit ``code``, one line, no traceback."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def acted(report: dict[str, Any]) -> list[bool]:
    handled = report["output"]["input"]
    return [handled["refund"]["acted"], handled["replacement"]["acted"]]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on (held bound, so nothing can start listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- the example through the CLI ------------------------------------------------------


def test_the_example_via_the_cli_then_state_get_and_history_name_the_writers(
    tmp_path: Path,
) -> None:
    # no --journal, no --store: the journal and the state share .typedmesh/runs.db
    result = run_ships(tmp_path, "r1")
    assert result["output"]["ok"] and acted(result).count(True) == 1
    assert (tmp_path / ".typedmesh" / "runs.db").exists()
    winner = "refund" if acted(result)[0] else "replacement"
    agent = {"refund": "refunder", "replacement": "warehouse"}[winner]

    got = ok_json(tmp_path, "state", "get", "order:42")
    assert got["key"] == "order:42" and got["version"] == 2
    assert got["value"]["refunded"] == 329.0 or got["value"]["replaced"] is True
    assert got["writer"]["run_id"] == "r1"
    assert got["writer"]["step_path"] == f"passing_ships/ships/{winner}"
    assert got["writer"]["agent"]["name"] == agent

    history = ok_json(tmp_path, "state", "history", "order:42")
    assert [r["version"] for r in history] == [1, 2]
    assert [r["writer"]["step_path"] for r in history] == [
        "passing_ships/open_case",
        f"passing_ships/ships/{winner}",
    ]
    assert all(r["writer"]["run_id"] == "r1" and not r["deleted"] for r in history)

    table = typedmesh(tmp_path, "state", "history", "order:42")
    assert table.returncode == 0, table.stderr
    for text in ("r1", "passing_ships/open_case", "open_case@1.0.0", f"{agent}@1.0.0"):
        assert text in table.stdout
    for column in ("version", "when", "deleted", "run", "step", "agent", "value"):
        assert column in table.stdout

    human = typedmesh(tmp_path, "state", "get", "order:42")
    assert human.returncode == 0 and "order:42 version 2" in human.stdout
    assert f"agent {agent}@1.0.0, run r1" in human.stdout and '"total": 329.0' in human.stdout


def test_with_claims_exactly_one_acts_over_several_runs(tmp_path: Path) -> None:
    store = str(tmp_path / "state.db")
    journal = ["--journal", str(tmp_path / "runs.db"), "--store", store]
    reports = [run_ships(tmp_path, f"r{i}", "42", True, *journal) for i in range(3)]
    assert all(r["output"]["ok"] for r in reports)
    assert sum(acted(r).count(True) for r in reports) == 1
    assert acted(reports[0]).count(True) == 1
    for later in reports[1:]:  # the first run's claim is still held: nobody acts again
        notes = [later["output"]["input"][b]["note"] for b in ("refund", "replacement")]
        assert all("already claimed" in n and "run r0" in n for n in notes)

    history = ok_json(tmp_path, "state", "history", "order:42", "--store", store)
    assert len(history) == 2  # the seed, then exactly one action
    [claim] = ok_json(tmp_path, "state", "claims", "--store", store)
    assert claim["key"] == "order:42" and claim["holder"]["run_id"] == "r0"
    assert claim["action"] in ("refund", "replacement") and claim["expires_at"] is None

    # another order each run: each time exactly one of the two acts
    for i in range(2):
        fresh = run_ships(tmp_path, f"o{i}", f"o-{i}", True, *journal)
        assert acted(fresh).count(True) == 1 and fresh["output"]["ok"]


def test_with_claims_off_reconcile_reports_the_conflict_and_both_writers(
    tmp_path: Path,
) -> None:
    report = run_ships(tmp_path, "nc", "42", False)["output"]
    assert not report["ok"] and acted({"output": report}) == [True, True]
    [conflict] = report["conflicts"]
    assert conflict["field"] == "order:42"
    assert conflict["note"].startswith("at most one of refund / replacement per order")
    writers = " ".join(conflict["values"])
    assert "refunder@1.0.0 (passing_ships/ships/refund, run nc)" in writers
    assert "warehouse@1.0.0 (passing_ships/ships/replacement, run nc)" in writers

    history = ok_json(tmp_path, "state", "history", "order:42")
    assert [r["writer"].get("agent", {}).get("name") for r in history] == [
        "open_case",
        "refunder",
        "warehouse",
    ]
    assert ok_json(tmp_path, "state", "claims") == []


def test_keys_put_and_delete_by_an_operator(tmp_path: Path) -> None:
    run_ships(tmp_path, "r1")
    keys = ok_json(tmp_path, "state", "keys")
    assert keys == ["case:r1", "order:42"]
    assert ok_json(tmp_path, "state", "keys", "order:") == ["order:42"]
    listed = typedmesh(tmp_path, "state", "keys", "ord")
    assert listed.returncode == 0 and listed.stdout.split() == ["order:42"]

    current = ok_json(tmp_path, "state", "get", "order:42")
    fixed = {**current["value"], "refunded": 0.0, "replaced": False}
    value = tmp_path / "fixed.json"
    value.write_text(json.dumps(fixed))
    put = ok_json(
        tmp_path,
        "state",
        "put",
        "order:42",
        "--value",
        f"@{value}",
        "--expected-version",
        str(current["version"]),
        "--by",
        "ops:dana",
    )
    assert put == {"key": "order:42", "version": 3, "value": fixed, "writer": {"by": "ops:dana"}}
    last = ok_json(tmp_path, "state", "history", "order:42")[-1]
    assert last["writer"] == {"by": "ops:dana"} and last["value"] == fixed
    table = typedmesh(tmp_path, "state", "history", "order:42")
    assert "ops:dana" in table.stdout

    created = typedmesh(
        tmp_path, "state", "put", "note:1", "--value", '"hi"', "--create", "--by", "ops"
    )
    assert created.returncode == 0 and "note:1: version 1 written (by ops)" in created.stdout
    deleted = ok_json(
        tmp_path, "state", "delete", "note:1", "--expected-version", "1", "--by", "ops"
    )
    assert deleted == {"key": "note:1", "version": 2, "deleted": True, "by": "ops"}
    gone = typedmesh(tmp_path, "state", "get", "note:1")
    assert "deleted at version 2 (by ops)" in one_line_error(gone, 1)
    history = ok_json(tmp_path, "state", "history", "note:1")
    assert [r["deleted"] for r in history] == [False, True]


# -- careless input -------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory whose default store holds order:42 at version 2 (one run of the example)."""
    cwd = tmp_path_factory.mktemp("seeded")
    run_ships(cwd, "r1")
    (cwd / "big.json").write_text(json.dumps("x" * (1 << 20)))  # over the 1 MiB limit
    return cwd


BAD = [
    (["get", "order:404"], 1, "no value for 'order:404' in state store"),
    (["history", "order:404"], 1, "no value for 'order:404' in state store"),
    (["get", ""], 2, "invalid state key '': a key must be a non-empty string"),
    (["get", "x" * 513], 2, "a key is at most 512 characters"),
    (["get", "__claim__:order:42"], 2, "reserved for claims"),
    (["history", "a\tb"], 2, "control characters"),
    (
        ["put", "order:42", "--value", "{oops", "--expected-version", "2", "--by", "ops"],
        2,
        "--value is not valid JSON",
    ),
    (["put", "order:42", "--value", "@missing.json", "--create", "--by", "ops"], 2, "no such file"),
    (["put", "order:42", "--value", "1", "--by", "ops"], 2, "exactly one of --expected-version"),
    (
        ["put", "order:42", "--value", "1", "--create", "--expected-version", "2", "--by", "x"],
        2,
        "exactly one of --expected-version",
    ),
    (
        ["put", "order:42", "--value", "1", "--expected-version", "0", "--by", "ops"],
        2,
        "--expected-version must be a version >= 1",
    ),
    (
        ["put", "order:42", "--value", "1", "--expected-version", "1", "--by", "ops"],
        1,
        "stale version for 'order:42': expected version 1, found version 2; nothing written: "
        "order:42 is at version 2 now",
    ),
    (
        ["put", "order:42", "--value", "1", "--create", "--by", "ops"],
        1,
        "expected no value, found version 2",
    ),
    (["put", "big", "--value", "@big.json", "--create", "--by", "ops"], 2, "at most 1048576"),
    (["get", "order:42", "--store", "nowhere.db"], 2, "no state store at nowhere.db"),
]


@pytest.mark.parametrize(
    ("args", "code", "message"), BAD, ids=[" ".join(a)[:40] for a, _, _ in BAD]
)
def test_a_careless_state_command_gets_one_line_and_an_exit_code(
    seeded: Path, args: list[str], code: int, message: str
) -> None:
    line = one_line_error(typedmesh(seeded, "state", *args), code)
    assert message in line


def test_errors_as_json_carry_their_fields(seeded: Path) -> None:
    stale = typedmesh(
        seeded, "state", "put", "order:42", "--value", "1", "--expected-version", "1",
        "--by", "ops", "--json",
    )  # fmt: skip
    assert stale.returncode == 1 and stale.stderr == ""
    document = json.loads(stale.stdout)
    assert document["error"] == "StaleVersion" and document["key"] == "order:42"
    assert (document["expected"], document["actual"]) == (1, 2)
    assert document["current"]["total"] == 329.0  # the value now, to decide without a read

    missing = typedmesh(seeded, "state", "get", "order:404", "--json")
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["error"] == "StateNotFound"
    bad_key = typedmesh(seeded, "state", "get", "", "--json")
    assert bad_key.returncode == 2
    assert json.loads(bad_key.stdout)["error"] == "InvalidStateValue"


@pytest.mark.parametrize("scheme", ["redis", "postgresql"])
def test_a_store_that_is_down_is_named_with_why_and_never_its_password(
    tmp_path: Path, closed_port: int, scheme: str
) -> None:
    url = f"{scheme}://ops:hunter2@127.0.0.1:{closed_port}/" + ("0" if scheme == "redis" else "db")
    shown = f"{scheme}://ops@127.0.0.1:{closed_port}/"
    for args in (["state", "get", "order:42"], ["state", "keys"], ["state", "history", "k"]):
        done = typedmesh(tmp_path, *args, "--store", url)
        line = one_line_error(done, 2)
        assert "hunter2" not in done.stdout + done.stderr
        assert f"error: state store {scheme}://" in line and f"127.0.0.1:{closed_port}/" in line
        assert "is unavailable" in line and "refused" in line.lower()
    if scheme == "postgresql":
        assert shown in line
    as_json = typedmesh(tmp_path, "state", "get", "k", "--store", url, "--json")
    assert as_json.returncode == 2 and "hunter2" not in as_json.stdout
    assert json.loads(as_json.stdout)["error"] == "StateUnavailable"

    # a run given that store stops before anything runs: one line, exit 2
    ran = typedmesh(tmp_path, "run", EXAMPLE, "-i", '{"order_id": "42"}', "--store", url)
    assert "is unavailable" in one_line_error(ran, 2)
    assert "hunter2" not in ran.stdout + ran.stderr


def test_resume_takes_the_recorded_store_or_another(tmp_path: Path, closed_port: int) -> None:
    store = tmp_path / "state.db"
    run_ships(tmp_path, "r1", "42", True, "--store", f"sqlite:///{store}")
    started = ok_json(tmp_path, "trace", "r1")
    assert started  # the run is journaled in the default journal
    again = ok_json(tmp_path, "resume", "r1")  # finished: its recorded output
    assert again["output"]["ok"]
    down = typedmesh(tmp_path, "resume", "r1", "--store", f"redis://127.0.0.1:{closed_port}/0")
    assert "is unavailable" in one_line_error(down, 2)


def test_state_in_the_journals_postgresql_database(tmp_path: Path, pg_schema_url: str) -> None:
    """``run --journal postgresql://...`` keeps the state in the same database by default."""
    result = run_ships(tmp_path, "pg1", "42", True, "--journal", pg_schema_url)
    assert acted(result).count(True) == 1
    history = ok_json(tmp_path, "state", "history", "order:42", "--store", pg_schema_url)
    assert [r["writer"]["run_id"] for r in history] == ["pg1", "pg1"]


def test_state_commands_on_redis(tmp_path: Path, redis_db_url: str) -> None:
    run_ships(tmp_path, "rd1", "42", False, "--store", redis_db_url)
    history = ok_json(tmp_path, "state", "history", "order:42", "--store", redis_db_url)
    assert [r["writer"]["agent"]["name"] for r in history] == ["open_case", "refunder", "warehouse"]
    assert ok_json(tmp_path, "state", "keys", "order:", "--store", redis_db_url) == ["order:42"]
