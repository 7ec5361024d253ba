"""Step: the one abstraction. Everything runnable is a typed Step.

An Agent is a Step, a decorated function is a Step, and each pattern is a
Step made of Steps, so patterns nest and the runtime has one thing to run.
"""

from __future__ import annotations

import inspect
import sys
import typing
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from pydantic import BaseModel

from .contracts import AgentIdentity, Text
from .errors import ConfigurationError, ContractError, GateError

if TYPE_CHECKING:
    from .runtime.context import RunContext

__all__ = ["FunctionStep", "Gate", "Step", "step"]

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)
In_contra = TypeVar("In_contra", bound=BaseModel, contravariant=True)


@dataclass(frozen=True, slots=True)
class Gate:
    """A framework check on a step's output, beyond its model.

    ``check`` returns the problems it finds (empty when the output passes);
    ``guidance`` is told to an agent up front, and the problems are sent back
    to it for another try, at most ``max_attempts`` tries in all (None: the
    agent's ``output_retries`` + 1). A step that cannot be re-asked fails at once.
    """

    check: Callable[[Any], list[str]]
    guidance: str = ""
    error: type[GateError] = GateError
    max_attempts: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Step(ABC, Generic[In, Out]):
    """A typed unit of work: ``invoke(input: In, ctx) -> Out``.

    ``kind`` says what it is for the trace (``agent``, ``function``,
    ``sequential``...); ``identity`` is stamped on every trace node and
    provenance; ``scopes`` are the permissions its tool calls may use.
    """

    name: str
    input_type: type[In]
    output_type: type[Out]
    kind: str = "step"
    identity: AgentIdentity
    scopes: frozenset[str] = frozenset()

    @abstractmethod
    async def invoke(self, input: In, ctx: RunContext) -> Out:
        """Run the step once on a validated input."""

    async def invoke_gated(self, input: In, ctx: RunContext, gate: Gate) -> Out:
        """Run the step and apply ``gate``; a plain step gets one chance."""
        output = await self.invoke(input, ctx)
        problems = gate.check(output)
        if problems:
            raise gate.error(
                f"{self.name!r} failed its gate", step=self.name, problems=problems, output=output
            )
        return output

    @property
    def description(self) -> str:
        """One line on what the step does, for planners choosing workers."""
        return ""

    def children(self) -> Sequence[Step[Any, Any]]:
        """The steps this step is made of (patterns); empty for a leaf."""
        return ()

    def walk(self) -> Iterator[Step[Any, Any]]:
        """This step and every step inside it, depth first."""
        yield self
        for child in self.children():
            yield from child.walk()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name!r}: "
            f"{self.input_type.__name__} -> {self.output_type.__name__}>"
        )


class FunctionStep(Step[In, Out]):
    """Deterministic code as a Step: enrich, score, format.

    The function takes the input model and, optionally, a ``ctx`` parameter
    (the RunContext) for tools, the clock and random draws. ``str`` in place
    of a model is plain text: the step's contract is ``Text``, the function
    gets and returns the bare string. ``deps`` declares the type of the run's
    ``ctx.deps`` it needs (checked before a run starts).
    """

    kind = "function"

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        version: str = "0.1.0",
        scopes: set[str] | frozenset[str] = frozenset(),
        localns: dict[str, Any] | None = None,
        deps: type[Any] | None = None,
    ) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        self.identity = AgentIdentity(name=self.name, version=version)
        self.scopes = frozenset(scopes)
        if deps is not None and not isinstance(deps, type):
            raise ConfigurationError(f"step {self.name!r}: deps must be a class, got {deps!r}")
        self.deps_type = deps
        input_type, output_type, self._wants_ctx = _signature_types(fn, self.name, localns)
        self._text_in = input_type is str
        self._text_out = output_type is str
        self.input_type = typing.cast("type[In]", Text if input_type is str else input_type)
        self.output_type = typing.cast("type[Out]", Text if output_type is str else output_type)
        self._is_async = inspect.iscoroutinefunction(fn)

    @property
    def description(self) -> str:
        return (inspect.getdoc(self.fn) or "").split("\n")[0]

    async def invoke(self, input: In, ctx: RunContext) -> Out:
        given: Any = input.text if self._text_in and isinstance(input, Text) else input
        args: tuple[Any, ...] = (given, ctx) if self._wants_ctx else (given,)
        result = await self.fn(*args) if self._is_async else self.fn(*args)
        if type(result) is self.output_type:
            return result
        if self._text_out and isinstance(result, str):
            return self.output_type.model_validate({"text": result})
        return self.output_type.model_validate(result)


def _signature_types(
    fn: Callable[..., Any], name: str, localns: dict[str, Any] | None
) -> tuple[type[Any], type[Any], bool]:
    try:
        hints = typing.get_type_hints(fn, localns=localns)
    except Exception as exc:  # an unresolvable forward reference
        raise ContractError(f"step {name!r}: cannot resolve its type hints ({exc})") from exc
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        raise ContractError(f"step {name!r} must take its input model as first parameter")
    input_type = hints.get(params[0].name)
    output_type = hints.get("return")
    for label, tp in (("input", input_type), ("return", output_type)):
        if tp is not str and not (isinstance(tp, type) and issubclass(tp, BaseModel)):
            raise ContractError(
                f"step {name!r}: its {label} annotation must be a pydantic model or str, got {tp!r}"
            )
    if len(params) > 2:
        raise ContractError(f"step {name!r} takes (input) or (input, ctx), not {len(params)} args")
    assert isinstance(input_type, type) and isinstance(output_type, type)
    return input_type, output_type, len(params) == 2


@overload
def step(fn: Callable[[In], Out | Awaitable[Out]], /) -> FunctionStep[In, Out]: ...
@overload
def step(fn: Callable[[In, RunContext], Out | Awaitable[Out]], /) -> FunctionStep[In, Out]: ...
@overload
def step(fn: Callable[[In], str | Awaitable[str]], /) -> FunctionStep[In, Text]: ...
@overload
def step(fn: Callable[[In, RunContext], str | Awaitable[str]], /) -> FunctionStep[In, Text]: ...
@overload
def step(fn: Callable[[str], Out | Awaitable[Out]], /) -> FunctionStep[Text, Out]: ...
@overload
def step(fn: Callable[[str, RunContext], Out | Awaitable[Out]], /) -> FunctionStep[Text, Out]: ...
@overload
def step(fn: Callable[[str], str | Awaitable[str]], /) -> FunctionStep[Text, Text]: ...
@overload
def step(fn: Callable[[str, RunContext], str | Awaitable[str]], /) -> FunctionStep[Text, Text]: ...
@overload
def step(
    *,
    name: str | None = None,
    version: str = "0.1.0",
    scopes: set[str] | frozenset[str] = frozenset(),
    deps: type[Any] | None = None,
) -> Callable[[Callable[..., Any]], FunctionStep[Any, Any]]: ...


def step(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    version: str = "0.1.0",
    scopes: set[str] | frozenset[str] = frozenset(),
    deps: type[Any] | None = None,
) -> Any:
    """Turn a typed function ``(In[, ctx]) -> Out`` (sync or async) into a Step.

    Use bare (``@tm.step``) or with options (``@tm.step(name="enrich", deps=Db)``).
    ``str`` for ``In`` or ``Out`` makes that side plain ``Text``.
    """
    # the caller's locals resolve models defined inside a function body
    localns = dict(sys._getframe(1).f_locals)
    if fn is not None:
        if not callable(fn):
            raise ConfigurationError("@step takes a function")
        return FunctionStep(fn, name=name, version=version, scopes=scopes, localns=localns)

    def decorate(f: Callable[..., Any]) -> FunctionStep[Any, Any]:
        return FunctionStep(
            f,
            name=name,
            version=version,
            scopes=scopes,
            localns={**localns, **sys._getframe(1).f_locals},
            deps=deps,
        )

    return decorate
