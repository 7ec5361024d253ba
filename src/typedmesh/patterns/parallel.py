"""parallel(merge=m, **branches): fan out, then a merge that surfaces conflicts."""

from __future__ import annotations

import asyncio
import typing
from typing import Any, get_args

from pydantic import BaseModel

from ..contracts import AgentIdentity, Conflict
from ..errors import ConfigurationError, ConflictsDropped, ContractError
from ..handoff import Handoff, annotation_problem, handoff_problems
from ..runtime.context import RunContext
from ..step import Gate, Step
from .conflicts import detect_conflicts, missing_conflicts, render_conflicts

__all__ = ["Parallel", "parallel"]

FILLED = {"conflicts", "intent"}


class Parallel(Step[Any, Any]):
    """Independent branches run concurrently on the same input, then one merge.

    Before the merge runs, the branch outputs are compared on their shared
    fields; every disagreement becomes a ``Conflict`` the merge is told about
    and must carry in its ``conflicts`` output (re-asked, then
    ``ConflictsDropped``). A merge input field named ``conflicts`` is filled
    with them too.
    """

    kind = "parallel"

    def __init__(
        self, branches: dict[str, Step[Any, Any]], merge: Step[Any, Any], *, name: str = "parallel"
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
        self.branches = branches
        self.merge = merge
        self.name = name
        self.identity = AgentIdentity(name=name)
        self.output_type = merge.output_type
        self._inputs = {
            label: Handoff(self.input_type, b.input_type) for label, b in branches.items()
        }
        fields = merge.input_type.model_fields
        self._fills = {k for k in FILLED if k in fields}

    def children(self) -> tuple[Step[Any, Any], ...]:
        return (*self.branches.values(), self.merge)

    async def invoke(self, input: BaseModel, ctx: RunContext) -> BaseModel:
        labels = list(self.branches)
        results = await asyncio.gather(
            *(
                ctx.run(self.branches[label], self._inputs[label](input), label=label)
                for label in labels
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result  # the other branches' outputs stay in the trace
        outputs = dict(zip(labels, typing.cast(list[BaseModel], results), strict=True))
        conflicts = detect_conflicts(outputs)
        if conflicts:
            ctx.record(
                "conflicts.detected", conflicts=[c.model_dump(mode="json") for c in conflicts]
            )
        data: dict[str, Any] = dict(outputs)
        if "conflicts" in self._fills:
            data["conflicts"] = conflicts
        if "intent" in self._fills:
            data["intent"] = ctx.intent
        merge_input = self.merge.input_type.model_validate(data)
        gate = None
        if conflicts:
            gate = Gate(
                check=lambda out: missing_conflicts(conflicts, out),
                guidance=render_conflicts(conflicts),
                error=ConflictsDropped,
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
    field = merge.output_type.model_fields.get("conflicts")
    ok = field is not None and any(
        isinstance(a, type) and issubclass(a, Conflict) for a in get_args(field.annotation)
    )
    if not ok:
        raise ContractError(
            f"parallel: merge {merge.name!r} must be able to carry conflicts: its output "
            f"{merge.output_type.__name__} needs a 'conflicts: list[Conflict]' field "
            "(or use SynthesizedReport)",
            source="merge",
            target=merge.name,
            problems=["missing field 'conflicts' (list[Conflict])"],
        )


def parallel(
    *, merge: Step[Any, Any], name: str = "parallel", **branches: Step[Any, Any]
) -> Step[Any, Any]:
    """Run ``branches`` concurrently on one input and merge them, conflicts surfaced."""
    return Parallel(branches, merge, name=name)
