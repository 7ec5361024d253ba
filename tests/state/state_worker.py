"""A process that writes to a shared SQLite state store, for tests/state/test_concurrency.py.

    python state_worker.py update DB KEY COUNT NAME
        after "go" on stdin, increments KEY COUNT times through ``update``; every
        version it makes names it (run id NAME, ``by`` its pid, write id NAME:j)
    python state_worker.py claim DB PREFIX NAME
        for each line "i" on stdin, claims PREFIX + i and answers one JSON line
        {"i": i, "won": bool, "holder": {...}} (the holder it got or was refused by)

Both print "ready" once the store is open, and a JSON summary line at the end.
"""

from __future__ import annotations

import json
import os
import sys

from typedmesh.errors import AlreadyClaimed
from typedmesh.state import Writer
from typedmesh.state.sqlite import SQLiteStateStore


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def update(path: str, key: str, count: int, name: str) -> None:
    pid = os.getpid()
    with SQLiteStateStore(path, busy_timeout=30) as store:
        store.get(key)  # connected (and the schema in place) before the start
        say("ready")
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("expected go")
        versions = []
        for j in range(count):
            writer = Writer(
                run_id=name,
                step_path="worker/increment",
                agent={"name": "worker", "deployment": f"pid-{pid}"},
                write_id=f"{name}:{j}",
                by=f"pid:{pid}",
            )
            made = store.update(key, lambda n: n + 1, writer=writer, max_attempts=100_000)
            versions.append(made.version)
    say(json.dumps({"name": name, "pid": pid, "versions": versions}))


def claim(path: str, prefix: str, name: str) -> None:
    pid = os.getpid()
    writer = Writer(run_id=name, step_path="worker/ship", by=f"pid:{pid}")
    with SQLiteStateStore(path, busy_timeout=30) as store:
        store.claim_of(prefix + "warm-up")
        say("ready")
        rounds = 0
        for line in sys.stdin:
            i = int(line)
            try:
                got = store.claim(prefix + str(i), action="ship", writer=writer, ttl=600)
            except AlreadyClaimed as exc:
                say(json.dumps({"i": i, "won": False, "holder": exc.holder}))
            else:
                say(json.dumps({"i": i, "won": True, "holder": got.holder.to_dict()}))
            rounds += 1
    say(json.dumps({"name": name, "pid": pid, "rounds": rounds}))


def main(argv: list[str]) -> None:
    mode, path = argv[0], argv[1]
    if mode == "update":
        update(path, argv[2], int(argv[3]), argv[4])
    elif mode == "claim":
        claim(path, argv[2], argv[3])
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
