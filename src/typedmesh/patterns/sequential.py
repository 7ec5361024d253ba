"""sequential(a, b, c): A then B then C, each handoff checked when built."""

from __future__ import annotations

import itertools
from typing import Any, TypeVar, overload

from pydantic import BaseModel

from ..contracts import AgentIdentity
from ..errors import ConfigurationError, ContractError
from ..handoff import Handoff, handoff_problems
from ..runtime.context import RunContext
from ..step import Step

__all__ = ["Sequential", "sequential"]

A = TypeVar("A", bound=BaseModel)
B = TypeVar("B", bound=BaseModel)
C = TypeVar("C", bound=BaseModel)
D = TypeVar("D", bound=BaseModel)


class Sequential(Step[Any, Any]):
    """Steps in a fixed order; each output becomes the next input.

    When the next step's input model declares fewer fields than the previous
    output has, only the declared fields pass on (a summary-only handoff).
    """

    kind = "sequential"

    def __init__(self, steps: tuple[Step[Any, Any], ...], *, name: str = "sequential") -> None:
        if not steps:
            raise ConfigurationError("sequential() needs at least one step")
        for previous, following in itertools.pairwise(steps):
            problems = handoff_problems(previous.output_type, following.input_type)
            if problems:
                raise ContractError(
                    f"sequential: {following.name!r} ({following.input_type.__name__}) cannot "
                    f"accept the output of {previous.name!r} ({previous.output_type.__name__})",
                    source=previous.name,
                    target=following.name,
                    problems=problems,
                )
        self.steps = steps
        self.name = name
        self.identity = AgentIdentity(name=name)
        self.input_type = steps[0].input_type
        self.output_type = steps[-1].output_type
        self._handoffs = [
            Handoff(p.output_type, f.input_type, source=p.name, target=f.name)
            for p, f in itertools.pairwise(steps)
        ]

    def children(self) -> tuple[Step[Any, Any], ...]:
        return self.steps

    async def invoke(self, input: BaseModel, ctx: RunContext) -> BaseModel:
        value: BaseModel = await ctx.run(self.steps[0], input)
        for handoff, step in zip(self._handoffs, self.steps[1:], strict=True):
            value = await ctx.run(step, handoff(value))
        return value


@overload
def sequential(a: Step[A, Any], b: Step[Any, B], /, *, name: str = ...) -> Step[A, B]: ...
@overload
def sequential(
    a: Step[A, Any], b: Step[Any, Any], c: Step[Any, C], /, *, name: str = ...
) -> Step[A, C]: ...
@overload
def sequential(
    a: Step[A, Any], b: Step[Any, Any], c: Step[Any, Any], d: Step[Any, D], /, *, name: str = ...
) -> Step[A, D]: ...
@overload
def sequential(*steps: Step[Any, Any], name: str = ...) -> Step[Any, Any]: ...


def sequential(*steps: Step[Any, Any], name: str = "sequential") -> Step[Any, Any]:
    """Run ``steps`` in order. Raises ``ContractError`` now if a handoff cannot work."""
    return Sequential(steps, name=name)
