"""route(classifier, routes={...}, key=...): one step decides, the chosen step runs.

The classifier runs first; ``key`` reads the route's name from its output (a
function, the name of an output field, or nothing when the output is a
``Route``, whose ``route`` field is the name). The decision is journaled as a
``route.decided`` event on the router (the classifier's output already is, as
its step output), then the chosen step runs as a child under **its own**
identity and scopes: its model calls, tool calls and scope checks are its
own, not the classifier's.

Checked when the flow is built (``ContractError``): every route's input
accepts what it is given (the classifier's output, the router's request, or
both, see ``input=``); a key field whose type lists its values (a
``Literal`` or an ``Enum``) names only routes that exist, and every route can
be chosen; with ``output=``, every route's output converts to it.

At run time a key that names no route is a validation problem sent back to an
agent classifier (its gate), at most ``max_attempts`` tries, then
``UnknownRoute``. A classifier that cannot be re-asked (a function) fails at once.

The router's output: ``Routed[A | B]`` (the key taken, and the chosen route's
output, validated by the key so a resume or replay rebuilds the same type),
or, with ``output=Common``, the chosen output converted to ``Common``.
"""

from __future__ import annotations

import enum
import typing
from collections.abc import Callable, Mapping
from typing import Any, Generic, Literal, TypeAlias, TypeVar, cast, get_args, get_origin, overload

from pydantic import BaseModel, ConfigDict, create_model, model_validator

from ..contracts import AgentIdentity
from ..errors import ConfigurationError, ContractError, GateError
from ..handoff import Handoff, field_annotation, handoff_problems, source_field, validate_input
from ..runtime.context import RunContext
from ..step import Gate, Step

__all__ = [
    "InputSource",
    "Route",
    "Routed",
    "Router",
    "UnknownRoute",
    "route",
]

T = TypeVar("T")
A = TypeVar("A", bound=BaseModel)
O = TypeVar("O", bound=BaseModel)  # noqa: E741

InputSource: TypeAlias = Literal["decision", "request", "both"]
"""What a route's input is built from: the classifier's output (``decision``), the
router's own input (``request``), or both (a field the decision has, else the request's)."""

SOURCES: tuple[str, ...] = ("decision", "request", "both")

KeySpec: TypeAlias = str | Callable[[Any], object] | None


class Route(BaseModel):
    """A classifier's typed decision: ``route`` names the route to take.

    Subclass it, narrow ``route`` to the keys (``route: Literal["refund", "faq"]``,
    checked against the routes when the flow is built) and add what the routes need.
    """

    route: str


class Routed(BaseModel, Generic[T]):
    """What ``route(...)`` returns without ``output=``: the key taken and that route's output."""

    model_config = ConfigDict(defer_build=True)

    route: str
    output: T


class UnknownRoute(GateError):
    """The classifier kept naming a route that does not exist."""


def _routed_type(outputs: Mapping[str, type[BaseModel]]) -> type[BaseModel]:
    """``Routed[A | B]`` for these routes, its ``route`` a Literal of their keys and its
    ``output`` validated as the chosen route's output type (never guessed from its shape)."""
    members = tuple(dict.fromkeys(outputs.values()))
    union: Any = members[0] if len(members) == 1 else typing.Union[members]  # noqa: UP007
    base = cast(type[BaseModel], Routed[union])
    by_key = dict(outputs)

    def by_route(cls: type[Any], data: Any) -> Any:
        if isinstance(data, Mapping):
            target = by_key.get(str(data.get("route")))
            value = data.get("output")
            if target is not None and value is not None and not isinstance(value, target):
                if isinstance(value, BaseModel):  # another route's type: convert by fields
                    value = value.model_dump()
                return {**data, "output": target.model_validate(value)}
        return data

    keys = cast(Any, Literal[tuple(by_key)])
    model: type[BaseModel] = create_model(
        base.__name__,
        __base__=base,
        __validators__={"by_route": model_validator(mode="before")(by_route)},  # type: ignore[dict-item]
        route=(keys, ...),
    )
    return model


class Router(Step[Any, Any]):
    """A classifier, then exactly one of the routes it may choose (see the module doc)."""

    kind = "route"

    def __init__(
        self,
        classifier: Step[Any, Any],
        routes: Mapping[str, Step[Any, Any]],
        *,
        key: KeySpec = None,
        input: InputSource | Mapping[str, InputSource] = "decision",
        output: type[BaseModel] | None = None,
        max_attempts: int | None = None,
        name: str = "route",
    ) -> None:
        if not isinstance(classifier, Step):
            raise ConfigurationError(f"route: the classifier must be a Step, got {classifier!r}")
        if not routes:
            raise ConfigurationError("route() needs at least one route")
        for label, target in routes.items():
            if not isinstance(label, str) or not label:
                raise ConfigurationError(f"route: route keys must be non-empty str, got {label!r}")
            if not isinstance(target, Step):
                raise ConfigurationError(f"route {label!r} must be a Step, got {target!r}")
        if max_attempts is not None and max_attempts < 1:
            raise ConfigurationError("route(): max_attempts must be >= 1")
        if output is not None and not (isinstance(output, type) and issubclass(output, BaseModel)):
            raise ConfigurationError(f"route(): output must be a pydantic model, got {output!r}")
        self.classifier = classifier
        self.routes = dict(routes)
        self.name = name
        self.identity = AgentIdentity(name=name)
        self.input_type = classifier.input_type
        self.max_attempts = max_attempts
        self.key_field, self._key = _key_reader(classifier, key)
        self.sources = _sources(input, self.routes)
        self._check_key_values()
        self._inputs = {
            label: self._route_input(label, target) for label, target in self.routes.items()
        }
        self.common = output
        if output is None:
            self.output_type = _routed_type({k: s.output_type for k, s in self.routes.items()})
            self._outputs: dict[str, Handoff] = {}
        else:
            self.output_type = output
            self._outputs = {k: self._route_output(k, s, output) for k, s in self.routes.items()}

    # -- build-time checks ------------------------------------------------------------

    def _check_key_values(self) -> None:
        """A key field that lists its values names routes that exist, and reaches them all."""
        if self.key_field is None:
            return
        values = _listed_values(
            field_annotation(self.classifier.output_type.model_fields[self.key_field])
        )
        if values is None:
            return
        unknown = [v for v in values if v not in self.routes]
        unreachable = [k for k in self.routes if k not in values]
        field = self.key_field
        problems = [f"{field!r} may be {v!r}, which names no route" for v in unknown]
        problems += [
            f"route {k!r} can never be chosen: {field!r} is one of {values}" for k in unreachable
        ]
        if problems:
            raise ContractError(
                f"route: the values of {self.classifier.name!r}'s field {self.key_field!r} "
                f"do not match the routes {sorted(self.routes)}",
                source=self.classifier.name,
                target=self.name,
                problems=problems,
            )

    def _route_input(
        self, label: str, target: Step[Any, Any]
    ) -> Callable[[BaseModel, BaseModel], BaseModel]:
        source = self.sources[label]
        decision_type = self.classifier.output_type
        request_type = self.input_type
        dst = target.input_type
        if source == "decision":
            problems = handoff_problems(decision_type, dst)
            given = f"the output of {self.classifier.name!r} ({decision_type.__name__})"
        elif source == "request":
            problems = handoff_problems(request_type, dst)
            given = f"the router's input ({request_type.__name__})"
        else:
            fields = dst.model_fields
            from_decision = {
                n for n, f in fields.items() if source_field(decision_type, n, f) is not None
            }
            problems = handoff_problems(decision_type, dst, filled=set(fields) - from_decision)
            problems += handoff_problems(request_type, dst, filled=from_decision)
            given = (
                f"the output of {self.classifier.name!r} ({decision_type.__name__}) "
                f"with the router's input ({request_type.__name__})"
            )
        if problems:
            raise ContractError(
                f"route: route {label!r} ({target.name!r}, {dst.__name__}) cannot accept {given}",
                source=self.classifier.name if source != "request" else "input",
                target=target.name,
                problems=problems,
            )
        if source == "decision":
            handoff = Handoff(decision_type, dst, source=self.classifier.name, target=target.name)
            return lambda request, decision: handoff(decision)
        if source == "request":
            handoff = Handoff(request_type, dst, source=self.name, target=target.name)
            return lambda request, decision: handoff(request)
        plan: list[tuple[str, bool, str]] = []  # (target field, from the decision?, source field)
        for n, f in dst.model_fields.items():
            fed = source_field(decision_type, n, f)
            if fed is not None:
                plan.append((n, True, fed))
                continue
            fed = source_field(request_type, n, f)
            if fed is not None:
                plan.append((n, False, fed))
        sources = f"{self.classifier.name}, {self.name}"

        def merge(request: BaseModel, decision: BaseModel) -> BaseModel:
            data = {n: getattr(decision if d else request, s) for n, d, s in plan}
            return validate_input(dst, data, source=sources, target=target.name)

        return merge

    def _route_output(self, label: str, target: Step[Any, Any], output: type[BaseModel]) -> Handoff:
        problems = handoff_problems(target.output_type, output)
        if problems:
            raise ContractError(
                f"route: route {label!r} ({target.name!r}) returns "
                f"{target.output_type.__name__}, which does not convert to the router's "
                f"output {output.__name__}",
                source=target.name,
                target=self.name,
                problems=problems,
            )
        return Handoff(target.output_type, output, source=target.name, target=self.name)

    # -- running ----------------------------------------------------------------------

    def children(self) -> tuple[Step[Any, Any], ...]:
        unique = {id(s): s for s in (self.classifier, *self.routes.values())}
        return tuple(unique.values())

    def key_of(self, decision: BaseModel) -> str | None:
        """The route the decision names, or None when it names none."""
        value = self._key(decision)
        if isinstance(value, enum.Enum):
            value = value.value
        return value if isinstance(value, str) and value in self.routes else None

    def check(self, decision: BaseModel) -> list[str]:
        """The gate on the classifier: a decision must name a route."""
        if self.key_of(decision) is not None:
            return []
        value = self._key(decision)
        if isinstance(value, enum.Enum):
            value = value.value
        where = f"field {self.key_field!r}" if self.key_field else "the route key"
        return [f"{where} is {value!r}, which names no route; the routes are {sorted(self.routes)}"]

    def briefing(self) -> str:
        """What an agent classifier is told: its answer picks one of these routes."""
        field = f"the field {self.key_field!r}" if self.key_field else "your answer"
        lines = [f"Your answer is routed: {field} names the route, one of:"]
        for label, target in self.routes.items():
            about = f": {target.description}" if target.description else ""
            lines.append(f"- {label!r} -> {target.name}{about}")
        return "\n".join(lines)

    async def invoke(self, input: BaseModel, ctx: RunContext) -> BaseModel:
        gate = Gate(
            check=self.check,
            guidance=self.briefing(),
            error=UnknownRoute,
            max_attempts=self.max_attempts,
        )
        name = self.classifier.name
        decision: BaseModel = await ctx.run(self.classifier, input, gate=gate, label=name)
        label = self.key_of(decision)
        if label is None:  # restored on resume from a run whose routes were different
            raise UnknownRoute(
                f"route: {name!r}'s recorded decision names no route of this flow",
                step=name,
                problems=self.check(decision),
                output=decision,
            )
        target = self.routes[label]
        # counted from the classifier's journaled gate failures (resumed runs included)
        node = ctx.node.find(f"{ctx.path}/{name}")
        attempts = 1 + sum(
            e["event"] == "output.gate_failed" for e in (node.events if node else [])
        )
        ctx.emit(
            "route.decided",
            {
                "key": label,
                "route": target.name,
                "agent": target.identity.model_dump(),
                "classifier": self.classifier.name,
                "input": self.sources[label],
                "attempts": attempts,
            },
        )
        routed_input = self._inputs[label](input, decision)
        routed: BaseModel = await ctx.run(target, routed_input, label=target.name)
        if self.common is not None:
            return self._outputs[label](routed)
        wrapped: BaseModel = self.output_type.model_validate({"route": label, "output": routed})
        return wrapped


def _sources(
    spec: InputSource | Mapping[str, InputSource], routes: Mapping[str, Step[Any, Any]]
) -> dict[str, str]:
    if isinstance(spec, str):
        chosen: dict[str, str] = {label: spec for label in routes}
    elif isinstance(spec, Mapping):
        unknown = sorted(set(spec) - set(routes))
        if unknown:
            raise ConfigurationError(
                f"route: input= names routes that do not exist: {unknown}; "
                f"the routes are {sorted(routes)}"
            )
        chosen = {label: str(spec.get(label, "decision")) for label in routes}
    else:
        raise ConfigurationError(f"route: input= must be a source or a dict, got {spec!r}")
    for label, source in chosen.items():
        if source not in SOURCES:
            raise ConfigurationError(
                f"route: input for {label!r} is {source!r}; it must be one of {list(SOURCES)}"
            )
    return chosen


def _key_reader(
    classifier: Step[Any, Any], key: KeySpec
) -> tuple[str | None, Callable[[BaseModel], object]]:
    """(the output field the key is read from, when known; how to read it)."""
    output = classifier.output_type
    if key is None:
        if not issubclass(output, Route):
            raise ConfigurationError(
                f"route: give key= (a function or a field name of "
                f"{output.__name__}), or let {classifier.name!r} return a tm.Route"
            )
        key = "route"
    if isinstance(key, str):
        if key not in output.model_fields:
            raise ContractError(
                f"route: key {key!r} is not a field of {classifier.name!r}'s output "
                f"{output.__name__}",
                source=classifier.name,
                target="route",
                problems=[f"fields are {sorted(output.model_fields)}"],
            )
        name = key
        return name, lambda decision: getattr(decision, name)
    if not callable(key):
        raise ConfigurationError(f"route: key= must be a function or a field name, got {key!r}")
    return None, key


def _listed_values(annotation: Any) -> list[str] | None:
    """The str values a Literal / str-Enum annotation allows (None: not a closed set)."""
    args = get_args(annotation)
    if get_origin(annotation) is typing.Annotated:
        return _listed_values(args[0])
    if get_origin(annotation) is Literal:
        values = [a.value if isinstance(a, enum.Enum) else a for a in args]
        return [str(v) for v in values]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(m.value) for m in annotation]
    return None


@overload
def route(
    classifier: Step[A, Any],
    routes: Mapping[str, Step[Any, Any]],
    *,
    key: KeySpec = ...,
    input: InputSource | Mapping[str, InputSource] = ...,
    output: type[O],
    max_attempts: int | None = ...,
    name: str = ...,
) -> Step[A, O]: ...
@overload
def route(
    classifier: Step[A, Any],
    routes: Mapping[str, Step[Any, Any]],
    *,
    key: KeySpec = ...,
    input: InputSource | Mapping[str, InputSource] = ...,
    output: None = ...,
    max_attempts: int | None = ...,
    name: str = ...,
) -> Step[A, Routed[Any]]: ...


def route(
    classifier: Step[Any, Any],
    routes: Mapping[str, Step[Any, Any]],
    *,
    key: KeySpec = None,
    input: InputSource | Mapping[str, InputSource] = "decision",
    output: type[BaseModel] | None = None,
    max_attempts: int | None = None,
    name: str = "route",
) -> Step[Any, Any]:
    """Run ``classifier``, then the one route its output names.

    ``key``: a function of the classifier's output (``lambda d: d.category``),
    the name of one of its fields (``"category"``, checked when built), or
    nothing when the classifier returns a ``tm.Route``. ``input``: what each
    route is given: ``"decision"`` (the classifier's output), ``"request"``
    (the router's input) or ``"both"``; one for all routes or a dict by key.
    ``output``: a common model every route's output converts to; without it
    the router returns ``Routed[...]`` (the key and the route's own output).
    ``max_attempts`` caps the classifier's tries at naming a route (None: the
    agent's ``output_retries`` + 1). Raises ``ContractError`` or
    ``ConfigurationError`` now when the routes cannot work.
    """
    return Router(
        classifier,
        routes,
        key=key,
        input=input,
        output=output,
        max_attempts=max_attempts,
        name=name,
    )
