"""Tools: typed Python functions a model may call, with declared scopes.

``@tm.tool(requires={"orders:refund"}, idempotent=False)`` turns a function
into a ``Tool``: its parameters become a pydantic model (the JSON schema the
model sees, and the validator of what the model sends), ``requires`` names
the scopes a caller must hold, and ``idempotent`` says whether the tool may be
retried safely with the same ``ctx.idempotency_key`` after a crash.

``requires_approval=True`` (or a predicate on the call's arguments, such as
``lambda args: args["amount"] > 100``) makes a call wait for a person's
decision: the run suspends, ``typedmesh approve`` records who decided, and
``resume`` runs the tool (once) or tells the model it was denied
(``docs/approval.md``).
"""

from __future__ import annotations

import inspect
import json
import sys
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias, overload

from pydantic import BaseModel, ConfigDict, TypeAdapter, create_model

from .errors import ConfigurationError
from .models.base import ToolSchema

if TYPE_CHECKING:
    from .runtime.context import RunContext

__all__ = ["ApprovalRule", "Tool", "tool"]

ApprovalRule: TypeAlias = bool | Callable[[dict[str, Any]], bool]
"""``requires_approval``: always, never, or a predicate on the call's validated
arguments (a dict, by parameter name, the values as the tool receives them)."""


class Tool:
    """A callable a model may use, with a typed argument model and required scopes."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        requires: set[str] | frozenset[str] = frozenset(),
        idempotent: bool = True,
        retry_on: tuple[type[Exception], ...] = (),
        requires_approval: ApprovalRule = False,
        timeout: float | None = None,
        localns: dict[str, Any] | None = None,
    ) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        doc = inspect.getdoc(fn) or ""
        self.description = description if description is not None else doc.split("\n\n")[0]
        self.requires = frozenset(requires)
        self.idempotent = idempotent
        self.retry_on = tuple(retry_on)
        """Exceptions (besides ``ToolError``) told to the model so it can try again;
        any other exception is a bug and fails the step."""
        if not (isinstance(requires_approval, bool) or callable(requires_approval)):
            raise ConfigurationError(
                f"tool {self.name!r}: requires_approval must be True, False or a predicate "
                f"on the arguments, got {requires_approval!r}"
            )
        self.requires_approval: ApprovalRule = requires_approval
        if timeout is not None and not (0 < timeout < float("inf")):
            raise ConfigurationError(f"tool {self.name!r}: timeout must be > 0 s, got {timeout}")
        self.timeout = timeout
        """Seconds a call may take; past it the model is told the tool timed out."""
        """Whether a call waits for a person's decision (``needs_approval``)."""
        self._is_async = inspect.iscoroutinefunction(fn)
        hints = typing.get_type_hints(fn, localns=localns)
        self.args_model, self._ctx_param = _arguments_model(fn, self.name, hints)
        self._result_adapter: TypeAdapter[Any] = TypeAdapter(hints.get("return", Any))
        self.schema = ToolSchema(
            name=self.name,
            description=self.description,
            parameters=self.args_model.model_json_schema(),
        )

    def parse_arguments(self, arguments: dict[str, Any]) -> BaseModel:
        """Validate what a model sent; raises pydantic's ValidationError."""
        return self.args_model.model_validate(arguments)

    async def execute(self, arguments: BaseModel, ctx: RunContext) -> Any:
        """Run the tool on validated arguments."""
        kwargs = {name: getattr(arguments, name) for name in type(arguments).model_fields}
        if self._ctx_param is not None:
            kwargs[self._ctx_param] = ctx
        if self._is_async:
            return await self.fn(**kwargs)
        return self.fn(**kwargs)

    def needs_approval(self, arguments: BaseModel) -> bool:
        """Whether this call, on these validated arguments, waits for a person's decision."""
        rule = self.requires_approval
        if isinstance(rule, bool):
            return rule
        values = {name: getattr(arguments, name) for name in type(arguments).model_fields}
        return bool(rule(values))

    def to_jsonable(self, value: Any) -> Any:
        """The tool's result as plain JSON data, for the journal and the model."""
        return self._result_adapter.dump_python(value, mode="json")

    def from_jsonable(self, data: Any) -> Any:
        """The typed result back from its JSON form: live and replayed calls agree."""
        return self._result_adapter.validate_python(data)

    def result_text(self, value: Any) -> str:
        """The tool's result as the model will read it."""
        if isinstance(value, str):
            return value
        return json.dumps(self.to_jsonable(value), separators=(",", ":"))

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function directly, outside any run (tests, scripts)."""
        result = self.fn(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result

    def __repr__(self) -> str:
        approval = "" if self.requires_approval is False else " requires_approval"
        return f"<Tool {self.name!r} requires={sorted(self.requires)}{approval}>"


def _arguments_model(
    fn: Callable[..., Any], name: str, hints: dict[str, Any]
) -> tuple[type[BaseModel], str | None]:
    from .runtime.context import RunContext

    fields: dict[str, Any] = {}
    ctx_param: str | None = None
    for param in inspect.signature(fn).parameters.values():
        annotation = hints.get(param.name, Any)
        if annotation is RunContext or param.name == "ctx":
            ctx_param = param.name
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigurationError(f"tool {name!r}: *args/**kwargs cannot be typed for a model")
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (annotation, default)
    model = create_model(f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
    return typing.cast(type[BaseModel], model), ctx_param


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    requires: set[str] | frozenset[str] = frozenset(),
    idempotent: bool = True,
    retry_on: tuple[type[Exception], ...] = (),
    requires_approval: ApprovalRule = False,
    timeout: float | None = None,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    requires: set[str] | frozenset[str] = frozenset(),
    idempotent: bool = True,
    retry_on: tuple[type[Exception], ...] = (),
    requires_approval: ApprovalRule = False,
    timeout: float | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Turn a typed function into a Tool; bare or with options.

    A ``ToolError`` the tool raises on purpose, or an exception in ``retry_on``,
    is told to the model; any other exception is a bug and fails the step.
    ``requires_approval`` (True, or a predicate on the arguments dict) makes a
    call wait for a recorded human decision before the tool runs. ``timeout``
    (seconds) bounds a call: past it the call is cancelled and the model told.
    """
    localns = dict(sys._getframe(1).f_locals)  # models defined in a function body
    if fn is not None:
        return Tool(
            fn,
            name=name,
            description=description,
            requires=requires,
            idempotent=idempotent,
            retry_on=retry_on,
            requires_approval=requires_approval,
            timeout=timeout,
            localns=localns,
        )

    def decorate(f: Callable[..., Any]) -> Tool:
        return Tool(
            f,
            name=name,
            description=description,
            requires=requires,
            idempotent=idempotent,
            retry_on=retry_on,
            requires_approval=requires_approval,
            timeout=timeout,
            localns={**localns, **sys._getframe(1).f_locals},
        )

    return decorate
