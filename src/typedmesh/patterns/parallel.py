"""parallel(merge=m, **branches): fan out, then a merge that surfaces conflicts."""

from __future__ import annotations

import functools
import typing
from typing import Any, Literal

from pydantic import BaseModel

from ..contracts import AgentIdentity, BranchFailure
from ..decoding import OUTPUT_VIEW
from ..errors import (
    BudgetExceeded,
    ConfigurationError,
    ConflictsDropped,
    ContractError,
    DeadlineExceeded,
    InDoubtError,
    NonDeterminismError,
    RunError,
    RunWaiting,
)
from ..handoff import Handoff, annotation_problem, handoff_problems, validate_input
from ..models.base import ContextNote, RequestContext
from ..runtime.context import RunContext
from ..step import Gate, Step
from .conflicts import (
    Compare,
    CompareSpec,
    ConflictView,
    check_stampable,
    detect_conflicts,
)

__all__ = ["Parallel", "parallel"]

FILLED = {"conflicts", "intent"}
BranchErrorPolicy = Literal["fail", "degrade"]


class Parallel(Step[Any, Any]):
    """Independent branches run concurrently on the same input, then one merge.

    Before the merge runs, the branch outputs are compared on their shared
    fields (``compare`` sets per-field options, see ``Compare``); every
    disagreement becomes a ``Conflict``. The framework stamps them, each
    branch's values verbatim, into the merge output's ``conflicts``: a merge
    cannot drop or alter one. A merge agent writes only its note on each
    (``conflict_notes``); a missing note is sent back, then
    ``ConflictsDropped``. A merge input field named ``conflicts`` is filled
    with them too.
    """

    kind = "parallel"

    def __init__(
        self,
        branches: dict[str, Step[Any, Any]],
        merge: Step[Any, Any],
        *,
        name: str = "parallel",
        compare: CompareSpec | None = None,
        on_branch_error: BranchErrorPolicy = "fail",
    ) -> None:
        if on_branch_error not in ("fail", "degrade"):
            raise ConfigurationError(
                f"parallel: on_branch_error must be 'fail' or 'degrade', got {on_branch_error!r}"
            )
        if len(branches) < 2:
            raise ConfigurationError("parallel() needs at least two branches")
        if merge.name in branches:
            raise ConfigurationError(f"merge step name {merge.name!r} clashes with a branch")
        first = next(iter(branches.values()))
        self.input_type = first.input_type
        for label, branch in branches.items():
            problems = handoff_problems(self.input_type, branch.input_type)
            if problems:
                raise ContractError(
                    f"parallel: branch {label!r} cannot take the input "
                    f"{self.input_type.__name__} the other branches take",
                    source="input",
                    target=label,
                    problems=problems,
                )
        _check_merge_input(branches, merge)
        _check_merge_output(merge)
        if on_branch_error == "degrade":
            _check_degradable(branches, merge)
        self.on_branch_error = on_branch_error
        _check_compare(branches, compare)
        self.compare = compare
        self.branches = branches
        self.merge = merge
        self.name = name
        self.identity = AgentIdentity(name=name)
        self.output_type = merge.output_type
        self._inputs = {
            label: Handoff(self.input_type, b.input_type, source=name, target=label)
            for label, b in branches.items()
        }
        fields = merge.input_type.model_fields
        self._fills = {k for k in FILLED if k in fields}

    def children(self) -> tuple[Step[Any, Any], ...]:
        return (*self.branches.values(), self.merge)

    async def invoke(self, input: BaseModel, ctx: RunContext) -> BaseModel:
        labels = list(self.branches)
        run = (
            functools.partial(self._degrading, ctx)
            if self.on_branch_error == "degrade"
            else ctx.run
        )
        results = await ctx.run_all(
            [
                functools.partial(
                    run, self.branches[label], self._inputs[label](input), label=label
                )
                for label in labels
            ]
        )
        everything = dict(zip(labels, typing.cast(list[BaseModel], results), strict=True))
        outputs = {k: v for k, v in everything.items() if not isinstance(v, BranchFailure)}
        missing = sorted(k for k, v in everything.items() if isinstance(v, BranchFailure))
        for label in missing:
            failure = typing.cast(BranchFailure, everything[label])
            ctx.record("branch.degraded", **failure.model_dump(mode="json"))
        conflicts = detect_conflicts(outputs, self.compare) if len(outputs) > 1 else []
        if conflicts:
            ctx.record(
                "conflicts.detected", conflicts=[c.model_dump(mode="json") for c in conflicts]
            )
        data: dict[str, Any] = dict(everything)
        if "conflicts" in self._fills:
            data["conflicts"] = conflicts
        if "intent" in self._fills:
            data["intent"] = ctx.intent
        merge_input = validate_input(
            self.merge.input_type, data, source=", ".join(labels), target=self.merge.name
        )
        view = ConflictView(conflicts)
        gate = Gate(
            check=view.stamp,
            guidance=ContextNote(view.guidance(), RequestContext(conflicts=conflicts)),
            error=ConflictsDropped,
            extra={OUTPUT_VIEW: view},
        )
        merged: BaseModel = await ctx.run(self.merge, merge_input, gate=gate)
        if self.on_branch_error == "degrade":  # stamped: the merge cannot hide a gap
            merged = merged.model_copy(update={"missing_branches": missing})
        return merged

    async def _degrading(
        self, ctx: RunContext, step: Step[Any, Any], input: BaseModel, *, label: str
    ) -> BaseModel:
        """Run a branch; a failure it may degrade on comes back as a ``BranchFailure``."""
        try:
            output: BaseModel = await ctx.run(step, input, label=label)
            return output
        except RunError as exc:
            if isinstance(exc, NOT_DEGRADABLE):  # hard limits and replay errors stop the run
                raise
            return BranchFailure(
                branch=label,
                step_path=getattr(exc, "step_path", None) or f"{ctx.path}/{label}",
                agent=step.identity,
                error_type=type(exc).__name__,
                message=str(exc),
            )


def _check_merge_input(branches: dict[str, Step[Any, Any]], merge: Step[Any, Any]) -> None:
    fields = merge.input_type.model_fields
    problems = []
    for label, branch in branches.items():
        if label not in fields:
            problems.append(
                f"missing field {label!r} for branch {label!r} ({branch.output_type.__name__})"
            )
            continue
        problem = annotation_problem(branch.output_type, fields[label].annotation)
        if problem:
            problems.append(f"field {label!r}: {problem}")
    for extra, field in fields.items():
        if extra not in branches and extra not in FILLED and field.is_required():
            problems.append(f"required field {extra!r} matches no branch")
    if problems:
        raise ContractError(
            f"parallel: merge {merge.name!r} ({merge.input_type.__name__}) needs one field per "
            f"branch with that branch's output type",
            source=", ".join(branches),
            target=merge.name,
            problems=problems,
        )


def _check_merge_output(merge: Step[Any, Any]) -> None:
    problem = check_stampable(merge.output_type)
    if problem:
        raise ContractError(
            f"parallel: merge {merge.name!r} must be able to carry conflicts: its output "
            f"{merge.output_type.__name__} needs a 'conflicts: list[Conflict]' field "
            "(or use SynthesizedReport)",
            source="merge",
            target=merge.name,
            problems=[problem],
        )


NOT_DEGRADABLE = (
    BudgetExceeded,
    DeadlineExceeded,
    RunWaiting,
    NonDeterminismError,
    InDoubtError,
)


def _check_degradable(branches: dict[str, Step[Any, Any]], merge: Step[Any, Any]) -> None:
    """With ``on_branch_error="degrade"``: the merge can take a ``BranchFailure`` for every
    branch, and its output can say which branches were missing."""
    fields = merge.input_type.model_fields
    problems = []
    for label in branches:
        field = fields.get(label)
        if field is not None and annotation_problem(BranchFailure, field.annotation):
            problems.append(
                f"field {label!r} must also accept a BranchFailure "
                f"(e.g. `{label}: {branches[label].output_type.__name__} | BranchFailure`)"
            )
    missing = merge.output_type.model_fields.get("missing_branches")
    if missing is None or annotation_problem(list[str], missing.annotation):
        problems.append(
            f"output {merge.output_type.__name__} needs a 'missing_branches: list[str]' field "
            "(or use DegradedReport)"
        )
    if problems:
        raise ContractError(
            f"parallel: with on_branch_error='degrade', merge {merge.name!r} must take a "
            "failed branch's BranchFailure and say which branches were missing",
            source=", ".join(branches),
            target=merge.name,
            problems=problems,
        )


def _check_compare(branches: dict[str, Step[Any, Any]], compare: CompareSpec | None) -> None:
    if compare is None or isinstance(compare, Compare):
        return
    known = {f for b in branches.values() for f in b.output_type.model_fields}
    unknown = sorted(p for p in compare if p.split(".")[0] not in known)
    if unknown:
        raise ConfigurationError(
            f"parallel: compare names fields no branch returns: {unknown}; "
            f"branch output fields are {sorted(known)}"
        )
    for path, rule in compare.items():
        if not isinstance(rule, Compare):
            raise ConfigurationError(f"parallel: compare[{path!r}] must be a Compare(...)")


def parallel(
    *,
    merge: Step[Any, Any],
    name: str = "parallel",
    compare: CompareSpec | None = None,
    on_branch_error: BranchErrorPolicy = "fail",
    **branches: Step[Any, Any],
) -> Step[Any, Any]:
    """Run ``branches`` concurrently on one input and merge them, conflicts stamped.

    ``compare`` sets how fields are compared: ``tm.Compare(tolerance=0.05)``
    for every field, or ``{"confidence": tm.Compare(tolerance=0.05), "risks":
    tm.Compare(unordered=True)}`` per dotted field path. ``on_branch_error``:
    ``"fail"`` (the first failure cancels the others and fails the run) or
    ``"degrade"`` (a failed branch reaches the merge as a typed ``BranchFailure``,
    and the merge output's ``missing_branches`` is stamped with its name; budget,
    deadline and replay errors still stop the run).
    """
    return Parallel(branches, merge, name=name, compare=compare, on_branch_error=on_branch_error)
