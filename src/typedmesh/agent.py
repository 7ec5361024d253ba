"""Agent: an LLM-backed service with a typed contract, identity and scopes.

An Agent is a Step. Its input is sent as JSON; its output must validate
against its output model through the provider's JSON-schema mode (or, for
``output=str``, is plain text). An answer cut at the token limit never counts. An output
that fails is sent back with the validation errors (``output_retries``
times), then ``OutputValidationError`` keeps every raw text and error. Tool
calls go through the run context, which checks scopes and journals them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict, TypeVar, Unpack, cast, overload

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from .contracts import AgentIdentity, Intent, Provenance, Text, is_text
from .decoding import OutputView, decode_json, output_view
from .errors import (
    ConfigurationError,
    ContractError,
    OutputValidationError,
    ToolDenied,
    ToolError,
    ToolLoopExceeded,
)
from .models import resolve_model
from .models.base import (
    ContextNote,
    Denial,
    Message,
    Model,
    ModelRequest,
    ModelSettings,
    RequestContext,
    ToolCall,
)
from .models.resilience import Cascade, CircuitBreaker, Fallback
from .provenance import carries_provenance, model_facing_schema, stamp
from .runtime.context import RunContext
from .runtime.overrides import overridden_model
from .runtime.retry import RetryPolicy
from .step import Gate, Step
from .tools import Tool
from .validation import error_lines

__all__ = ["Agent"]

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)


class AgentOptions(TypedDict, total=False):
    """``Agent``'s keyword options past its contract and model (see ``Agent``)."""

    instructions: str
    version: str
    deployment: str
    tools: Iterable[Tool]
    scopes: Iterable[str]
    output_retries: int
    retry: RetryPolicy | None
    max_tool_rounds: int
    max_tool_calls: int
    temperature: float | None
    max_tokens: int | None
    breaker: CircuitBreaker | None
    model_timeout: float | None
    model_settings: ModelSettings | Mapping[str, Any] | None
    deps: type[Any] | None
    withheld_scopes: Iterable[str]


class Agent(Step[In, Out]):
    """A model-backed Step: ``Agent("bull", input=Task, output=Verdict, model=...)``.

    ``output=str`` (or ``tm.Text``) asks for plain text, with no JSON mode: the
    answer, trimmed, is a ``tm.Text``; ``input=str`` sends the text itself.

    ``model`` is a ``Model`` or a string such as ``"openai:gpt-4o-mini"``
    (resolved on first use, so building a flow needs no SDK or key).
    ``scopes`` are the permissions its tool calls may use; ``retry`` covers
    transient model errors; ``max_tool_rounds`` caps the tool loop and
    ``max_tool_calls`` the tool calls of one step (one response may ask for many).
    A list of models (or ``tm.Fallback(...)``) is tried in order on model errors;
    ``tm.Cascade(cheap, better)`` escalates only after an invalid or gated answer;
    ``breaker`` fails fast while the model's circuit is open; ``model_timeout``
    bounds each model request (seconds). ``model_settings`` (a ``ModelSettings``
    or a dict: top_p, seed, stop, reasoning_effort, provider extras) go into
    every request, under a run's own ``model_settings=``; ``deps`` declares
    the type of the run's ``ctx.deps`` its tools need (checked before a run).
    A tool whose ``requires`` the agent's ``scopes`` do not cover is refused
    (``ContractError``) unless those scopes are listed in ``withheld_scopes``:
    the agent is then built, and every call needing them is denied at run time
    (the model is told). A run's ``grant=`` only narrows ``scopes``, it cannot add one.
    A ``tm.override(models=...)`` block swaps its model by name.
    """

    kind = "agent"

    @overload
    def __init__(
        self,
        name: str,
        *,
        input: type[In],
        output: type[Out],
        model: str | Model | Sequence[str | Model],
        **options: Unpack[AgentOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: Agent[In, Text],
        name: str,
        *,
        input: type[In],
        output: type[str],
        model: str | Model | Sequence[str | Model],
        **options: Unpack[AgentOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: Agent[Text, Out],
        name: str,
        *,
        input: type[str],
        output: type[Out],
        model: str | Model | Sequence[str | Model],
        **options: Unpack[AgentOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: Agent[Text, Text],
        name: str,
        *,
        input: type[str],
        output: type[str],
        model: str | Model | Sequence[str | Model],
        **options: Unpack[AgentOptions],
    ) -> None: ...

    def __init__(
        self,
        name: str,
        *,
        input: type[In] | type[str],
        output: type[Out] | type[str],
        model: str | Model | Sequence[str | Model],
        instructions: str = "",
        version: str = "0.1.0",
        deployment: str = "local",
        tools: Iterable[Tool] = (),
        scopes: Iterable[str] = (),
        output_retries: int = 2,
        retry: RetryPolicy | None = None,
        max_tool_rounds: int = 10,
        max_tool_calls: int = 50,
        temperature: float | None = None,
        max_tokens: int | None = None,
        breaker: CircuitBreaker | None = None,
        model_timeout: float | None = None,
        model_settings: ModelSettings | Mapping[str, Any] | None = None,
        deps: type[Any] | None = None,
        withheld_scopes: Iterable[str] = (),
    ) -> None:
        if output_retries < 0 or max_tool_rounds < 1 or max_tool_calls < 1:
            raise ConfigurationError(
                "output_retries must be >= 0, max_tool_rounds and max_tool_calls >= 1"
            )
        self.text_input = input is str or is_text(input)
        self.text_output = output is str or is_text(output)
        for label, tp in (("input", input), ("output", output)):
            if tp is not str and not (isinstance(tp, type) and issubclass(tp, BaseModel)):
                raise ConfigurationError(
                    f"agent {name!r}: {label} must be a pydantic model or str, got {tp!r}"
                )
        self.name = name
        self.input_type = cast(type[In], Text if input is str else input)
        self.output_type = cast(type[Out], Text if output is str else output)
        self.instructions = instructions
        self.identity = AgentIdentity(name=name, version=version, deployment=deployment)
        self.tools = {t.name: t for t in tools}
        self.scopes = frozenset(scopes)
        self.withheld_scopes = frozenset(withheld_scopes)
        _check_tool_scopes(name, self.tools.values(), self.scopes, self.withheld_scopes)
        self.output_retries = output_retries
        self.retry = retry or RetryPolicy()
        self.max_tool_rounds = max_tool_rounds
        self.max_tool_calls = max_tool_calls
        self.temperature = temperature
        self.max_tokens = max_tokens
        try:
            own = ModelSettings.coerce(model_settings)
        except ValidationError as exc:
            raise ConfigurationError(
                f"agent {name!r}: model_settings: " + "; ".join(error_lines(exc))
            ) from exc
        self.model_settings = ModelSettings(temperature=temperature, max_tokens=max_tokens).merge(
            own
        )
        if deps is not None and not isinstance(deps, type):
            raise ConfigurationError(f"agent {name!r}: deps must be a class, got {deps!r}")
        self.deps_type = deps
        if model_timeout is not None and not model_timeout > 0:
            raise ConfigurationError(f"agent {name!r}: model_timeout must be > 0 s")
        spec: str | Model
        if isinstance(model, str):
            spec = model
        elif isinstance(model, list | tuple):  # a fallback list: tried in order
            spec = Fallback(*model)
        else:
            spec = cast(Model, model)
        self.breaker = breaker
        self.model_timeout = model_timeout
        self.model_spec = spec
        self._model: Model | None = None if isinstance(spec, str) else spec
        self.output_schema = None if self.text_output else model_facing_schema(self.output_type)
        self._stamps = carries_provenance(self.output_type)
        self._tool_schemas = [t.schema for t in self.tools.values()]

    @property
    def description(self) -> str:
        return self.instructions.strip().split("\n")[0]

    @property
    def model(self) -> Model:
        """The resolved model (a string spec is resolved once, on first use), or the
        one an enclosing ``tm.override(models=...)`` block gives this agent."""
        swapped = overridden_model(self.name)
        if swapped is not None:
            return swapped
        if self._model is None:
            self._model = resolve_model(self.model_spec)
        return self._model

    def with_model(self, model: str | Model) -> Agent[In, Out]:
        """A copy of this agent served by another model (same contract and identity)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.model_spec = model
        clone._model = None if isinstance(model, str) else model
        return clone

    def system_prompt(self, intent: Intent | None, notes: Sequence[str] = ()) -> str:
        """The system message: identity, instructions, the user's intent, notes, format."""
        parts = [f'You are the agent "{self.name}" (version {self.identity.version}).']
        if self.instructions:
            parts.append(self.instructions.strip())
        if intent is not None:
            parts.append(render_intent(intent))
        parts.extend(n.strip() for n in notes if n)
        parts.append(
            "Answer in plain text."
            if self.text_output
            else f"Answer with one JSON object matching the {self.output_type.__name__} "
            "schema, and nothing else."
        )
        return "\n\n".join(parts)

    async def invoke(self, input: In, ctx: RunContext) -> Out:
        return await self._converse(input, ctx, None)

    async def invoke_gated(self, input: In, ctx: RunContext, gate: Gate) -> Out:
        return await self._converse(input, ctx, gate)

    async def _converse(self, input: In, ctx: RunContext, gate: Gate | None) -> Out:
        model = self.model
        cascade = model if isinstance(model, Cascade) else None
        level = 0
        if cascade is not None:
            model = cascade.models[0]
        notes = [*ctx.notes, gate.guidance] if gate is not None else ctx.notes
        told = _context_of(notes)
        denials: list[Denial] = []
        view = output_view(gate)
        output_schema = (
            view.schema(self.output_schema) if view and self.output_schema else self.output_schema
        )
        input_json = input.model_dump_json()
        history = ctx.history if "/" not in ctx.path else None  # a session's root agent
        if history is not None and history.summary:
            notes = [*notes, history.note() or ""]
        earlier = (
            history.messages(text_input=self.text_input, text_output=self.text_output)
            if history is not None
            else []
        )
        messages = [
            Message(role="system", content=self.system_prompt(ctx.intent, notes)),
            *earlier,
            Message(role="user", content=input.text if isinstance(input, Text) else input_json),
        ]
        settings = self.model_settings.merge(ctx.model_settings)
        raw_outputs: list[str] = []
        errors: list[list[str]] = []
        gate_failures = 0
        gate_cap = gate.max_attempts if gate and gate.max_attempts else self.output_retries + 1
        tool_rounds = 0
        tool_calls = 0
        tools_used: list[str] = []
        while True:
            request = ModelRequest(
                messages=list(messages),
                output_schema=output_schema,
                output_name=self.output_type.__name__,
                tools=self._tool_schemas,
                temperature=settings.temperature,
                max_tokens=settings.max_tokens,
                settings=settings.without_limits(),
                history=len(earlier),
                context=_with_denials(told, denials),
            )
            response = await ctx.call_model(
                model,
                request,
                retry=self.retry,
                breaker=self.breaker,
                attempt_timeout=self.model_timeout,
            )
            if response.tool_calls:
                tool_rounds += 1
                if tool_rounds > self.max_tool_rounds:
                    raise ToolLoopExceeded(
                        f"agent {self.name!r} asked for tools in more than "
                        f"{self.max_tool_rounds} rounds"
                    )
                tool_calls += len(response.tool_calls)
                if tool_calls > self.max_tool_calls:  # checked before any of them runs
                    raise ToolLoopExceeded(
                        f"agent {self.name!r} asked for {tool_calls} tool calls in this step; "
                        f"its cap is {self.max_tool_calls} (none of the last "
                        f"{len(response.tool_calls)} ran)"
                    )
                messages.append(
                    Message(
                        role="assistant",
                        content=response.content or "",
                        tool_calls=response.tool_calls,
                    )
                )
                for call in response.tool_calls:
                    text = await self._answer(call, ctx, tools_used, denials)
                    messages.append(
                        Message(role="tool", content=text, tool_call_id=call.id, name=call.name)
                    )
                continue
            raw = response.content or ""
            try:
                if response.truncated:  # cut at the token limit: never a whole answer
                    raise _truncated(self.output_type, raw, settings.max_tokens)
                output = self._decode(raw, view, ctx)
            except ValidationError as exc:
                problems = error_lines(exc)
                raw_outputs.append(raw)
                errors.append(problems)
                ctx.record("output.invalid", attempt=len(errors), errors=problems)
                if len(errors) > self.output_retries:
                    raise OutputValidationError(
                        f"agent {self.name!r} gave invalid {self.output_type.__name__} output "
                        f"{len(errors)} times; last errors: " + "; ".join(problems),
                        agent=self.name,
                        raw_outputs=raw_outputs,
                        errors=errors,
                    ) from exc
                messages += _feedback(
                    raw, "did not match the required schema", problems, self.text_output
                )
                if cascade is not None:
                    level, model = _escalate(ctx, cascade, level, "validation")
                continue
            if self._stamps:
                stamp(
                    output,
                    Provenance(
                        agent=self.identity,
                        step_path=ctx.path,
                        run_id=ctx.run_id,
                        model=response.model or model.name,
                        tool_calls=list(tools_used),
                        input_digest=_digest(input_json),
                    ),
                )
            if gate is not None:
                problems = gate.check(output)
                if view is not None:
                    problems = [*view.problems(output), *problems]
                if problems:
                    gate_failures += 1
                    ctx.record("output.gate_failed", attempt=gate_failures, problems=problems)
                    if gate_failures >= gate_cap:
                        raise gate.error(
                            f"agent {self.name!r} failed its gate {gate_failures} times",
                            step=self.name,
                            problems=problems,
                            output=output,
                        )
                    verdict = (
                        "was rejected" if self.text_output else "is valid JSON but was rejected"
                    )
                    messages += _feedback(raw, verdict, problems, self.text_output)
                    if cascade is not None:
                        level, model = _escalate(ctx, cascade, level, "gate")
                    continue
            if cascade is not None:  # every answer, escalated or not: the cost report counts them
                ctx.record(
                    "cascade.answered",
                    models=[m.name for m in cascade.models],
                    level=level,
                    model=model.name,
                )
            return output

    def _decode(self, raw: str, view: OutputView | None, ctx: RunContext) -> Out:
        """The output in a model's answer, decoded leniently; raises ``ValidationError``.

        Clean JSON is validated as is. Otherwise ``decode_json`` repairs what
        a real model gets wrong (a fence, text around the JSON, raw control
        characters in strings) and an ``output.repaired`` event says what; only
        text with no JSON object in it is invalid. A gate's ``OutputView``
        stamps what the framework holds into the answer before validation.
        """
        if self.text_output:
            return self.output_type.model_validate({"text": _plain_text(raw)})
        first: ValidationError | None = None
        if view is None:
            try:
                return self.output_type.model_validate_json(raw)
            except ValidationError as exc:
                if not any(e["type"] == "json_invalid" for e in exc.errors()):
                    raise
                first = exc
        try:
            decoded = decode_json(raw)
        except json.JSONDecodeError as exc:
            raise first or _invalid_json(self.output_type, raw, exc) from None
        if decoded.repaired:
            ctx.record("output.repaired", repairs=list(decoded.repairs))
        if view is None:
            return self.output_type.model_validate_json(decoded.text())
        value = view.apply(decoded.value)
        return self.output_type.model_validate_json(json.dumps(value, ensure_ascii=False))

    async def _answer(
        self, call: ToolCall, ctx: RunContext, tools_used: list[str], denials: list[Denial]
    ) -> str:
        """Run one tool call; any refusal or failure is told to the model, not raised."""
        tool = self.tools.get(call.name)
        if tool is None:
            ctx.record("tool.unknown", tool=call.name)
            return (
                f"Error: there is no tool named {call.name!r}. "
                f"Available tools: {sorted(self.tools) or 'none'}."
            )
        if call.arguments is None:
            ctx.record("tool.invalid_arguments", tool=call.name, raw=call.raw_arguments)
            return f"Error: the arguments must be a JSON object, got {call.raw_arguments!r}."
        try:
            result = await ctx.call_tool(tool, **call.arguments)
        except ToolDenied as exc:
            denials.append(Denial(tool=tool.name, missing=sorted(exc.missing)))
            return (
                f"Error: not allowed. Tool {tool.name!r} needs scope(s) "
                f"{sorted(exc.missing)} that this agent does not hold. Do not retry it."
            )
        except ToolError as exc:
            return f"Error: {exc}"
        tools_used.append(tool.name)
        return tool.result_text(result)


def _check_tool_scopes(
    name: str, tools: Iterable[Tool], scopes: frozenset[str], withheld: frozenset[str]
) -> None:
    """Refuse tools this agent could never call: their scopes are neither held nor
    declared withheld (a run's grant narrows scopes, it never adds one)."""
    problems = []
    for tool in tools:
        missing = sorted(tool.requires - scopes - withheld)
        if missing:
            problems.append(f"tool {tool.name!r} requires {missing}, which the agent does not hold")
    if problems:
        raise ContractError(
            f"agent {name!r} has tools it could never call: every call would be denied. "
            "Add the scopes to Agent(scopes=...) (and narrow a run with grant=...), or, "
            "to keep the tool deliberately uncallable, list them in "
            "Agent(withheld_scopes=...)",
            source=name,
            problems=problems,
        )


def _context_of(notes: Sequence[str]) -> RequestContext | None:
    """The facts the notes carry as data (``ContextNote``s), merged; None if none."""
    found: RequestContext | None = None
    for note in notes:
        if isinstance(note, ContextNote):
            found = note.context if found is None else found.merge(note.context)
    return found


def _with_denials(told: RequestContext | None, denials: list[Denial]) -> RequestContext | None:
    if not denials:
        return told
    return (told or RequestContext()).model_copy(update={"denials": list(denials)})


def _escalate(ctx: RunContext, cascade: Cascade, level: int, reason: str) -> tuple[int, Model]:
    """The cascade's next model after a rejected answer (the last one stays)."""
    models = cascade.models
    if level + 1 >= len(models):
        return level, models[level]
    ctx.record(
        "model.escalated",
        from_model=models[level].name,
        to_model=models[level + 1].name,
        reason=reason,
    )
    return level + 1, models[level + 1]


def render_intent(intent: Intent) -> str:
    """The user's intent as a prompt section every agent and evaluator sees."""
    lines = ["The user's intent (every answer must serve it):", f"- goal: {intent.goal}"]
    lines += [f"- constraint: {c}" for c in intent.constraints]
    lines += [f"- success criterion: {c}" for c in intent.success_criteria]
    if intent.audience:
        lines.append(f"- audience: {intent.audience}")
    return "\n".join(lines)


def _invalid_json(model: type[BaseModel], raw: str, exc: json.JSONDecodeError) -> ValidationError:
    """A pydantic ``json_invalid`` error for text ``decode_json`` could not read."""
    return ValidationError.from_exception_data(
        model.__name__,
        [{"type": "json_invalid", "loc": (), "input": raw, "ctx": {"error": exc.msg}}],
    )


def _feedback(raw: str, verdict: str, problems: list[str], text: bool = False) -> list[Message]:
    listing = "\n".join(f"- {p}" for p in problems)
    ask = (
        "Reply with the corrected answer only."
        if text
        else "Reply with a corrected JSON object only."
    )
    return [
        Message(role="assistant", content=raw),
        Message(role="user", content=f"Your last answer {verdict}:\n{listing}\n{ask}"),
    ]


def _truncated(model: type[BaseModel], raw: str, limit: int | None) -> ValidationError:
    """A ``truncated`` error for an answer the provider cut at its token limit."""
    where = f"the token limit (max_tokens={limit})" if limit else "the model's token limit"
    return ValidationError.from_exception_data(
        model.__name__,
        [
            InitErrorDetails(
                type=PydanticCustomError(
                    "truncated",
                    "the answer was cut off at {where}: give a complete, shorter answer",
                    {"where": where},
                ),
                loc=(),
                input=raw,
            )
        ],
    )


def _plain_text(raw: str) -> str:
    """A plain-text answer, trimmed; blank is invalid (sent back like a schema error)."""
    text = raw.strip()
    if not text:
        raise ValidationError.from_exception_data(
            "Text",
            [
                {
                    "type": "string_too_short",
                    "loc": ("text",),
                    "input": raw,
                    "ctx": {"min_length": 1},
                }
            ],
        )
    return text


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
