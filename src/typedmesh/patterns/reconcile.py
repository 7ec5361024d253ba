"""reconcile(...): check declared invariants over what runs changed in shared state.

The seed's "passing ships": two agents read one order in parallel and both act.
Claims stop that before it happens; ``reconcile`` is the step that confirms
it did not, or catches it when it did. It reads what the runs in scope wrote
(every version, with the writer the framework stamped on it), hands that to
each ``Invariant``, and returns the violations as typed ``Conflict``s whose
values (who wrote what) come from the store, never from a model. Where a
compensating step is given, it runs on the report, and the invariants are
checked again afterwards.

It accepts any input, so it can close any pattern: ``sequential(flow, reconcile(...))``.
The previous step's output is carried in the report (``input``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..contracts import AgentIdentity, Conflict
from ..errors import ConfigurationError
from ..runtime.context import RunContext
from ..state.base import CLAIM_PREFIX, StateRecord
from ..step import Step

__all__ = [
    "AnyOutput",
    "Changes",
    "Invariant",
    "Reconcile",
    "ReconcileReport",
    "StateChange",
    "Violation",
    "invariant",
    "reconcile",
]


@dataclass(frozen=True, slots=True)
class Violation:
    """One breach of an invariant: on which key, why, and the versions involved."""

    key: str
    message: str
    records: Sequence[StateRecord] = ()


@dataclass(frozen=True, slots=True)
class Invariant:
    """A named rule over what runs changed; ``check`` yields the violations."""

    name: str
    check: Callable[[Changes], Iterable[Violation]]


def invariant(name: str) -> Callable[[Callable[[Changes], Iterable[Violation]]], Invariant]:
    """Decorate ``check(changes) -> violations`` as an ``Invariant`` called ``name``."""

    def decorate(check: Callable[[Changes], Iterable[Violation]]) -> Invariant:
        return Invariant(name, check)

    return decorate


@dataclass(slots=True)
class Changes:
    """Every version the runs in scope wrote, in write order (claims included)."""

    records: list[StateRecord] = field(default_factory=list)

    def __iter__(self) -> Iterator[StateRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def by_key(self, prefix: str = "") -> dict[str, list[StateRecord]]:
        """Versions grouped by key (claims left out unless ``prefix`` asks for them)."""
        grouped: dict[str, list[StateRecord]] = {}
        for record in self.records:
            key = record.key
            if key.startswith(prefix) and (
                prefix.startswith(CLAIM_PREFIX) or not key.startswith(CLAIM_PREFIX)
            ):
                grouped.setdefault(key, []).append(record)
        return grouped

    def latest(self, key: str) -> StateRecord | None:
        """The last version of ``key`` the runs wrote."""
        found = [r for r in self.records if r.key == key]
        return found[-1] if found else None

    def claims(self) -> list[StateRecord]:
        """The claims taken (and released: a delete) by the runs in scope."""
        return [r for r in self.records if r.key.startswith(CLAIM_PREFIX)]

    def writers(self, key: str) -> list[str]:
        """Who wrote ``key``, in words, in order, without repeats."""
        seen: list[str] = []
        for record in self.records:
            if record.key == key:
                label = writer_label(record)
                if label not in seen:
                    seen.append(label)
        return seen


class StateChange(BaseModel):
    """One version a run wrote, as the report lists it."""

    key: str
    version: int
    deleted: bool = False
    value: Any = None
    run_id: str | None = None
    step_path: str | None = None
    agent: str | None = None


class ReconcileReport(BaseModel):
    """What a reconcile step found: the invariants checked and every breach."""

    ok: bool
    checked: list[str]
    conflicts: list[Conflict] = Field(default_factory=list)
    """Each breach: ``field`` is the key, ``values`` who wrote what (from the store),
    ``note`` the invariant and its message."""
    changes: list[StateChange] = Field(default_factory=list)
    compensated: bool = False
    compensation: dict[str, Any] | None = None
    remaining: list[Conflict] = Field(default_factory=list)
    """Breaches still there after the compensating step ran (empty: it fixed them)."""
    input: dict[str, Any] | None = None
    """The previous step's output, carried through so nothing is lost."""


RunsOf = Callable[[BaseModel], Sequence[str]]


class AnyOutput(BaseModel):
    """What a reconcile step takes: any previous output, every field carried through."""

    model_config = ConfigDict(extra="allow")


class Reconcile(Step[AnyOutput, ReconcileReport]):
    """The step ``reconcile(...)`` builds."""

    kind = "reconcile"

    def __init__(
        self,
        invariants: Sequence[Invariant],
        *,
        prefix: str = "",
        runs: RunsOf | Sequence[str] | None = None,
        compensate: Step[Any, Any] | None = None,
        name: str = "reconcile",
    ) -> None:
        if not invariants:
            raise ConfigurationError("reconcile() needs at least one invariant to check")
        for inv in invariants:
            if not isinstance(inv, Invariant):
                raise ConfigurationError(
                    f"reconcile(): {inv!r} is not an Invariant (use tm.Invariant(name, check) "
                    "or @tm.invariant(name))"
                )
        names = [inv.name for inv in invariants]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"reconcile(): invariant names repeat: {names}")
        if compensate is not None and not issubclass(ReconcileReport, compensate.input_type):
            from ..handoff import handoff_problems

            problems = handoff_problems(ReconcileReport, compensate.input_type)
            if problems:
                from ..errors import ContractError

                raise ContractError(
                    f"reconcile: compensate step {compensate.name!r} must accept a "
                    f"ReconcileReport, it takes {compensate.input_type.__name__}",
                    source=name,
                    target=compensate.name,
                    problems=problems,
                )
        self.invariants = tuple(invariants)
        self.prefix = prefix
        self.runs = runs
        self.compensate = compensate
        self.name = name
        self.identity = AgentIdentity(name=name)
        self.input_type = AnyOutput
        self.output_type = ReconcileReport

    def children(self) -> tuple[Step[Any, Any], ...]:
        return () if self.compensate is None else (self.compensate,)

    def run_ids(self, input: AnyOutput, ctx: RunContext) -> list[str]:
        if self.runs is None:
            return [ctx.run_id]
        if callable(self.runs):
            return list(self.runs(input))
        return list(self.runs)

    async def check(self, input: AnyOutput, ctx: RunContext) -> tuple[Changes, list[Conflict]]:
        records = await ctx.state.changes(runs=self.run_ids(input, ctx), prefix=self.prefix)
        changes = Changes(records)
        conflicts: list[Conflict] = []
        for inv in self.invariants:
            for violation in inv.check(changes):
                conflicts.append(to_conflict(inv, violation, changes))
        return changes, conflicts

    async def invoke(self, input: AnyOutput, ctx: RunContext) -> ReconcileReport:
        changes, conflicts = await self.check(input, ctx)
        for conflict in conflicts:
            ctx.record("reconcile.conflict", key=conflict.field, note=conflict.note)
        report = ReconcileReport(
            ok=not conflicts,
            checked=[inv.name for inv in self.invariants],
            conflicts=conflicts,
            changes=[state_change(r) for r in changes if not r.key.startswith(CLAIM_PREFIX)],
            input=input.model_dump(mode="json") or None,
        )
        if conflicts and self.compensate is not None:
            done = await ctx.run(self.compensate, report, label="compensate")
            _, remaining = await self.check(input, ctx)
            report = report.model_copy(
                update={
                    "compensated": True,
                    "compensation": done.model_dump(mode="json"),
                    "remaining": remaining,
                }
            )
        return report


def reconcile(
    *invariants: Invariant,
    prefix: str = "",
    runs: RunsOf | Sequence[str] | None = None,
    compensate: Step[Any, Any] | None = None,
    name: str = "reconcile",
) -> Reconcile:
    """A step that checks ``invariants`` over what runs wrote under ``prefix``.

    ``runs``: whose writes (default: this run; a list of run ids; or a function
    of the step's input). ``compensate``: a step run on the report when there
    are breaches (it takes a ``ReconcileReport``); the invariants are checked
    again after it, and what is left is in ``remaining``.
    """
    return Reconcile(invariants, prefix=prefix, runs=runs, compensate=compensate, name=name)


def writer_label(record: StateRecord) -> str:
    """Who wrote a version, as a conflict's ``values`` key: agent, then step and run."""
    w = record.writer
    who = w.agent.get("name") if w.agent else None
    if w.agent and w.agent.get("version"):
        who = f"{who}@{w.agent['version']}"
    where = w.step_path or w.by or "?"
    run = f", run {w.run_id}" if w.run_id else ""
    return f"{who or where} ({where}{run})" if who else f"{where}{run}"


def to_conflict(inv: Invariant, violation: Violation, changes: Changes) -> Conflict:
    """A breach as a ``Conflict``: the values are what each writer wrote (stamped)."""
    records = list(violation.records) or changes.by_key(violation.key).get(violation.key, [])
    values: dict[str, Any] = {}
    for record in records:
        values[f"{writer_label(record)} v{record.version}"] = (
            None if record.deleted else record.value
        )
    return Conflict(field=violation.key, values=values, note=f"{inv.name}: {violation.message}")


def state_change(record: StateRecord) -> StateChange:
    w = record.writer
    return StateChange(
        key=record.key,
        version=record.version,
        deleted=record.deleted,
        value=record.value,
        run_id=w.run_id,
        step_path=w.step_path,
        agent=w.agent.get("name") if w.agent else w.by,
    )
