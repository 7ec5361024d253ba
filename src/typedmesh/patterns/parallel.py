"""parallel(merge=m, **branches): fan out, then a merge that surfaces conflicts."""

from __future__ import annotations

import functools
import typing
from typing import Any

from pydantic import BaseModel

from ..contracts import AgentIdentity
from ..decoding import OUTPUT_VIEW
from ..errors import ConfigurationError, ConflictsDropped, ContractError
from ..handoff import Handoff, annotation_problem, handoff_problems, validate_input
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
    ) -> None:
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
        results = await ctx.run_all(
            [
                functools.partial(
                    ctx.run, self.branches[label], self._inputs[label](input), label=label
                )
                for label in labels
            ]
        )
        outputs = dict(zip(labels, typing.cast(list[BaseModel], results), strict=True))
        conflicts = detect_conflicts(outputs, self.compare)
        if conflicts:
            ctx.record(
                "conflicts.detected", conflicts=[c.model_dump(mode="json") for c in conflicts]
            )
        data: dict[str, Any] = dict(outputs)
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
            guidance=view.guidance(),
            error=ConflictsDropped,
            extra={OUTPUT_VIEW: view},
        )
        return await ctx.run(self.merge, merge_input, gate=gate)


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
    **branches: Step[Any, Any],
) -> Step[Any, Any]:
    """Run ``branches`` concurrently on one input and merge them, conflicts stamped.

    ``compare`` sets how fields are compared: ``tm.Compare(tolerance=0.05)``
    for every field, or ``{"confidence": tm.Compare(tolerance=0.05), "risks":
    tm.Compare(unordered=True)}`` per dotted field path.
    """
    return Parallel(branches, merge, name=name, compare=compare)
