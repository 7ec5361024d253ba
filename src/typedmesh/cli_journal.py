"""Helpers of the journal commands of the CLI (``cli.py`` holds the commands).

Flow targets: the journal records a run's flow *name*; ``resume`` and
``replay`` need the flow itself. ``typedmesh run`` therefore writes a small
sidecar next to the journal, ``<journal>.targets.json``, mapping each run id
to the ``MODULE:ATTR`` it ran (file targets as absolute paths, with the
working directory for dotted module names), so ``typedmesh resume RUN_ID``
needs no ``--flow`` after ``typedmesh run``.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from .errors import ConfigurationError, NonDeterminismError, RunNotFound
from .journal import open_journal
from .journal.base import Journal
from .journal.events import Event
from .runtime.replay import ReplayResult
from .step import Step

__all__ = [
    "is_file_target",
    "print_replay",
    "recorded_target",
    "refuse_existing_run",
    "replay_dict",
    "request_diff",
    "resolved_target",
    "run_status",
    "targets_file",
]


def is_file_target(module_part: str) -> bool:
    """Whether the module part of ``MODULE:ATTR`` names a file rather than a dotted module."""
    return module_part.endswith(".py") or "/" in module_part or os.sep in module_part


def targets_file(journal: str | Path) -> Path:
    """The sidecar of a journal file: run id -> flow target."""
    path = Path(journal)
    return path.with_name(path.name + ".targets.json")


def _read_targets(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def resolved_target(spec: str) -> str:
    """A flow target as recorded in the journal: a file target made absolute."""
    module_part, _, attr = spec.rpartition(":")
    if is_file_target(module_part):
        return f"{Path(module_part).resolve()}:{attr}"
    return spec


def recorded_target(journal: str | Path | Journal, run_id: str) -> str | None:
    """The ``MODULE:ATTR`` that ``typedmesh run`` recorded for a run, if any.

    It is in the run's ``run.started`` event (hash-chained, exported with the
    run); journals written before that keep it in a ``.targets.json`` sidecar.
    """
    store = journal if isinstance(journal, Journal) else open_journal(journal, readonly=True)
    started = store.read(run_id)[0].payload
    if isinstance(started.get("target"), str):
        cwd = started.get("cwd")
        if isinstance(cwd, str) and cwd not in sys.path:
            sys.path.insert(0, cwd)
        recorded: str = started["target"]
        return recorded
    if isinstance(journal, Journal):
        return None
    entry = _read_targets(targets_file(journal)).get(run_id)
    if not isinstance(entry, dict) or not isinstance(entry.get("target"), str):
        return None
    cwd = entry.get("cwd")
    if isinstance(cwd, str) and cwd not in sys.path:
        sys.path.insert(0, cwd)
    target: str = entry["target"]
    return target


def refuse_existing_run(store: Journal, run_id: str) -> None:
    """A new run must not reuse an id the journal already holds (its events would clash)."""
    try:
        store.read(run_id)
    except RunNotFound:
        return
    raise ConfigurationError(
        f"run {run_id!r} is already in the journal: continue it with "
        f"`typedmesh resume {run_id}`, or choose another --run-id"
    )


def run_status(events: list[Event]) -> str:
    """finished, failed, or incomplete (crashed or still running)."""
    last = events[-1].type
    return {"run.finished": "finished", "run.failed": "failed"}.get(last, "incomplete")


def _pretty(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return str(value)
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _recorded_request(exc: NonDeterminismError, events: list[Event]) -> Any:
    """What the journal holds for the effect (tool requests are the tool.started payload)."""
    if exc.expected is not None:
        return exc.expected
    started = next(
        (e for e in events if e.key == exc.effect_key and e.type == "tool.started"), None
    )
    if started is None:
        return None
    return {k: v for k, v in started.payload.items() if k != "request_digest"}


def request_diff(exc: NonDeterminismError, store: Journal, run_id: str) -> tuple[str, str, str]:
    """The recorded and new requests, pretty-printed, and a unified diff of the two."""
    expected = _recorded_request(exc, store.read(run_id))
    recorded = "(nothing recorded)" if expected is None else _pretty(expected)
    new = _pretty(exc.actual)
    diff = "".join(
        difflib.unified_diff(
            recorded.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=f"recorded {exc.effect_key}",
            tofile=f"new {exc.effect_key}",
        )
    )
    if diff and not diff.endswith("\n"):
        diff += "\n"
    return recorded, new, diff


def replay_dict(result: ReplayResult[Any]) -> dict[str, Any]:
    """A JSON-ready view of a replay, as ``typedmesh replay --json`` prints it."""
    return {
        "run_id": result.run_id,
        "identical": result.identical,
        "output_digest": result.output_digest,
        "recorded_digest": result.recorded_digest,
        "served": result.served,
        "executed": result.executed,
        "swapped": result.swapped,
        "changes": [{"path": c.path, "before": c.before, "after": c.after} for c in result.changes],
        "output": result.output.model_dump(mode="json"),
    }


def print_replay(
    console: Console, result: ReplayResult[Any], swaps: dict[str, Step[Any, Any]]
) -> None:
    """The human report of a strict or what-if replay."""
    from .render import changes_table

    counts = f"effects served from the journal: {result.served}, executed live: {result.executed}"
    if swaps:
        names = ", ".join(
            f"{name} -> {step.identity.name}@{step.identity.version}"
            for name, step in sorted(swaps.items())
        )
        console.print(f"[bold]what-if replay[/] of run {escape(result.run_id)}")
        console.print(f"swapped: {escape(names)}")
        console.print(counts)
    elif result.identical:
        console.print(f"[green bold]identical[/]: replay of run {escape(result.run_id)}")
        console.print(f"output digest: {result.output_digest}")
        console.print(counts)
        return
    elif result.recorded_digest is None:
        console.print(
            f"[red bold]no recorded output[/]: run {escape(result.run_id)} never finished, "
            "so there is nothing to compare the replay with"
        )
        console.print(f"replay output digest: {result.output_digest}")
        console.print(counts)
        return
    else:
        console.print(
            f"[red bold]differs[/]: replay of run {escape(result.run_id)} gives another output"
        )
        console.print(f"recorded digest: {result.recorded_digest}")
        console.print(f"replay digest:   {result.output_digest}")
        console.print(counts)
    if result.changes:
        console.print(changes_table(result.changes))
    else:
        console.print("no change in the output")
