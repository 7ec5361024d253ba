"""RunContext: the run's choke point, handed to every step.

Every child step, model call, tool call, clock read and random draw passes
through here, so there is exactly one place that traces, prices, budgets,
checks scopes and (through ``Effects``) journals, resumes and replays.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..contracts import Intent
from ..errors import (
    BudgetExceeded,
    ModelError,
    RunError,
    ToolDenied,
    ToolError,
    TransientModelError,
    TypedMeshError,
)
from ..models.base import Model, ModelRequest, ModelResponse, Usage
from ..models.pricing import cost_of
from .budget import Budget
from .effects import Effects, LiveEffects, random_draw, utc_now
from .retry import NO_RETRY, RetryPolicy
from .trace import TraceNode

if TYPE_CHECKING:
    from ..journal.writer import RunWriter
    from ..step import Gate, Step
    from ..tools import Tool

__all__ = ["RunContext"]

Out = TypeVar("Out", bound=BaseModel)


@dataclass(slots=True)
class RunState:
    """What all contexts of one run share."""

    run_id: str
    intent: Intent | None = None
    budget: Budget | None = None
    grant: frozenset[str] | None = None
    effects: Effects = field(default_factory=LiveEffects)
    usage: Usage = field(default_factory=Usage)
    sink: RunWriter | None = None
    """The journal writer, when the run is journaled."""
    completed: dict[str, dict[str, Any]] | None = None
    """On resume: outputs of steps the journal shows finished, by path."""
    swaps: dict[str, Step[Any, Any]] = field(default_factory=dict)
    """On what-if replay: steps to run instead of the flow's, by name."""
    live_paths: set[str] = field(default_factory=set)
    """On what-if replay: paths of swapped steps, whose effects always run live."""
    identities: dict[int, dict[str, str]] = field(default_factory=dict)

    def agent_dict(self, step: Step[Any, Any] | None) -> dict[str, str] | None:
        if step is None:
            return None
        found = self.identities.get(id(step))
        if found is None:
            found = self.identities[id(step)] = step.identity.model_dump()
        return found


class RunContext:
    """The context of one step invocation: its path, trace node and effect counters."""

    __slots__ = (
        "_children",
        "_counters",
        "_run",
        "idempotency_key",
        "node",
        "notes",
        "path",
        "step",
    )

    def __init__(
        self,
        run: RunState,
        path: str,
        node: TraceNode,
        step: Step[Any, Any] | None,
        *,
        idempotency_key: str | None = None,
        notes: tuple[str, ...] = (),
    ) -> None:
        self._run = run
        self.path = path
        self.node = node
        self.step = step
        self.idempotency_key = idempotency_key
        """Set while a tool runs: stable across retries of the same call after a crash."""
        self.notes = notes
        """What the enclosing pattern tells this step (loop feedback, merge conflicts)."""
        self._counters: dict[str, int] = {}
        self._children: dict[str, int] = {}

    @property
    def run_id(self) -> str:
        return self._run.run_id

    @property
    def intent(self) -> Intent | None:
        return self._run.intent

    @property
    def usage(self) -> Usage:
        """What the whole run has spent so far."""
        return self._run.usage

    @property
    def runs_live(self) -> bool:
        """Whether this context is inside a step swapped in by a what-if replay."""
        live = self._run.live_paths
        return bool(live) and any(self.path == p or self.path.startswith(p + "/") for p in live)

    def effect_key(self, kind: str) -> str:
        """The next deterministic key for an effect of ``kind`` at this path."""
        n = self._counters.get(kind, 0)
        self._counters[kind] = n + 1
        return f"{self.path}/{kind}#{n}"

    def record(self, event: str, **data: Any) -> None:
        """Note a boundary event on this step's trace node (and in the journal)."""
        sink = self._run.sink
        if sink is not None:
            span, parent, agent = self.event_origin()
            sink.emit(
                event,
                self.path,
                dict(data),
                key=data.get("key"),
                span_id=span,
                parent_span_id=parent,
                agent=agent,
            )
        data["event"] = event
        self.node.events.append(data)

    def event_origin(self) -> tuple[str, str | None, dict[str, str] | None]:
        """Span id, parent span id and agent identity for a journal event from here."""
        parent_path = self.path.rpartition("/")[0]
        return (
            span_id(self.run_id, self.path),
            span_id(self.run_id, parent_path) if parent_path else None,
            self._run.agent_dict(self.step),
        )

    # -- child steps -------------------------------------------------------------

    async def run(
        self,
        step: Step[Any, Out],
        input: BaseModel,
        *,
        label: str | None = None,
        gate: Gate | None = None,
        notes: tuple[str, ...] = (),
    ) -> Out:
        """Run a child step under this one, traced, at path ``self.path/label``.

        ``gate`` checks its output beyond its model; ``notes`` are told to it
        (an agent puts them in its system prompt).
        """
        run = self._run
        swapped = bool(run.swaps) and step.name in run.swaps
        if swapped:
            step = run.swaps[step.name]
        label = label or step.name
        seen = self._children.get(label, 0)
        self._children[label] = seen + 1
        if seen:
            label = f"{label}~{seen + 1}"
        path = f"{self.path}/{label}"
        if swapped:
            run.live_paths.add(path)
        node = self.node.child(label, step.kind, path, step.identity)
        if run.completed is not None and path in run.completed:
            return restore(step, node, run, run.completed[path])
        child = RunContext(run, path, node, step, notes=notes)
        return await invoke_traced(step, input, child, gate)

    # -- models ------------------------------------------------------------------

    async def call_model(
        self, model: Model, request: ModelRequest, *, retry: RetryPolicy = NO_RETRY
    ) -> ModelResponse:
        """Call a model: budget-checked, retried on transient errors, priced, traced."""
        run = self._run
        attempt = 0
        while True:
            attempt += 1
            if run.budget is not None:
                try:
                    run.budget.check(run.usage)
                except BudgetExceeded as exc:
                    self.record(
                        "budget.exceeded", limit=exc.limit, value=exc.value, spent=exc.spent
                    )
                    raise
            key = self.effect_key("model")
            try:
                response: ModelResponse = await run.effects.perform(
                    self,
                    key,
                    "model",
                    request,
                    lambda: _generate(model, request),
                    {"model": model.name, "provider": model.provider},
                )
            except Exception as exc:
                if retry.should_retry(exc, attempt):
                    delay = retry.delay(attempt)
                    self.record(
                        "model.retry",
                        key=key,
                        attempt=attempt,
                        error=f"{type(exc).__name__}: {exc}",
                        delay_s=delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                raise
            self._account(model, response)
            return response

    def _account(self, model: Model, response: ModelResponse) -> None:
        """Add a priced response's usage to its step and to the run."""
        usage = response.usage
        name = response.model or model.name
        if not usage.cost_usd and usage.total_tokens:  # a journal from before per-call cost
            usage.__dict__["cost_usd"] = cost_of(name, usage.input_tokens, usage.output_tokens)
        usage.__dict__["model_calls"] = 1
        add_usage(self.node.usage, usage)
        add_usage(self._run.usage, usage)
        if name not in self.node.models:
            self.node.models.append(name)

    # -- tools -------------------------------------------------------------------

    def allowed_scopes(self) -> frozenset[str]:
        """This step's scopes, narrowed by the run's grant when one was given."""
        scopes = self.step.scopes if self.step is not None else frozenset()
        grant = self._run.grant
        return scopes if grant is None else scopes & grant

    async def call_tool(self, tool: Tool, /, **arguments: Any) -> Any:
        """Call a tool with scope check and argument validation; returns its result.

        Raises ``ToolDenied`` (nothing ran) when a required scope is missing and
        ``ToolError`` for invalid arguments or a tool that raised.
        """
        missing = tool.requires - self.allowed_scopes()
        if missing:
            self.record("tool.denied", tool=tool.name, missing=sorted(missing))
            raise ToolDenied(tool.name, missing=set(missing), step=self.path)
        try:
            parsed = tool.parse_arguments(arguments)
        except ValidationError as exc:
            self.record("tool.invalid_arguments", tool=tool.name, errors=_errors(exc))
            raise ToolError(
                f"invalid arguments for tool {tool.name!r}: " + "; ".join(_errors(exc)),
                tool=tool.name,
            ) from exc
        key = self.effect_key("tool")
        idempotency_key = hashlib.sha256(f"{self.run_id}:{key}".encode()).hexdigest()[:32]
        tool_ctx = RunContext(self._run, key, self.node, self.step, idempotency_key=idempotency_key)
        request = {
            "tool": tool.name,
            "arguments": parsed.model_dump(mode="json"),
            "idempotency_key": idempotency_key,
            "idempotent": tool.idempotent,
        }

        async def execute() -> Any:
            try:
                return tool.to_jsonable(await tool.execute(parsed, tool_ctx))
            except TypedMeshError:
                raise
            except Exception as exc:
                raise ToolError(
                    f"tool {tool.name!r} raised {type(exc).__name__}: {exc}", tool=tool.name
                ) from exc

        try:
            result = await self._run.effects.perform(self, key, "tool", request, execute)
        except ToolError as exc:
            # the journal holds the effect's own tool.error event: trace only here
            self.node.events.append(
                {"event": "tool.error", "key": key, "tool": tool.name, "error": str(exc)}
            )
            raise
        self.node.events.append({"event": "tool.result", "key": key, "tool": tool.name})
        self.node.usage.tool_calls += 1
        self._run.usage.tool_calls += 1
        return tool.from_jsonable(result)

    # -- clock and randomness ----------------------------------------------------

    def now(self) -> datetime:
        """The current UTC time, as an effect: a replay sees the recorded time."""
        value: datetime = self._run.effects.perform_sync(
            self, self.effect_key("clock"), "clock", utc_now
        )
        return value

    def random(self) -> float:
        """A uniform draw in [0, 1), as an effect: a replay sees the recorded draw."""
        value: float = self._run.effects.perform_sync(
            self, self.effect_key("random"), "random", random_draw
        )
        return value


async def _generate(model: Model, request: ModelRequest) -> ModelResponse:
    try:
        response = await model.generate(request)
    except TypedMeshError:
        raise
    except TimeoutError as exc:
        raise TransientModelError(f"model {model.name!r} timed out") from exc
    except Exception as exc:
        raise ModelError(f"model {model.name!r} failed: {type(exc).__name__}: {exc}") from exc
    usage = response.usage  # priced here so the journaled response carries its cost
    fields = usage.__dict__  # plain counters: skip pydantic's validating setattr
    fields["cost_usd"] = cost_of(
        response.model or model.name, usage.input_tokens, usage.output_tokens
    )
    fields["model_calls"] = 1
    return response


def add_usage(total: Usage, usage: Usage) -> None:
    """``total += usage`` in place; the counters are plain ints, so skip pydantic's setattr."""
    fields = total.__dict__
    fields["input_tokens"] += usage.input_tokens
    fields["output_tokens"] += usage.output_tokens
    fields["model_calls"] += usage.model_calls
    fields["tool_calls"] += usage.tool_calls
    fields["cost_usd"] += usage.cost_usd


def span_id(run_id: str, path: str) -> str:
    """A deterministic span id: the same step of the same run always gets the same id."""
    return hashlib.sha256(f"{run_id}/{path}".encode()).hexdigest()[:16]


def restore(step: Step[Any, Out], node: TraceNode, run: RunState, recorded: dict[str, Any]) -> Out:
    """A step the journal shows finished: its recorded output, without running it again."""
    output = step.output_type.model_validate(recorded["output"])
    usage = Usage.model_validate(recorded.get("usage") or {})
    node.usage = usage
    run.usage = run.usage + usage
    node.events.append({"event": "step.restored"})
    node.finish("ok", output=output)
    return output


async def invoke_traced(
    step: Step[Any, Out], input: BaseModel, ctx: RunContext, gate: Gate | None
) -> Out:
    """Invoke ``step`` in ``ctx`` and close its trace node however it ends."""
    node = ctx.node
    sink = ctx._run.sink
    span: str | None = None
    parent: str | None = None
    agent: dict[str, str] | None = None
    if sink is not None:
        span, parent, agent = ctx.event_origin()
        sink.emit(
            "step.started",
            ctx.path,
            {"kind": step.kind, "name": node.name},
            span_id=span,
            parent_span_id=parent,
            agent=agent,
        )
    try:
        if gate is None:
            output = await step.invoke(input, ctx)
        else:
            output = await step.invoke_gated(input, ctx, gate)
    except asyncio.CancelledError:
        node.finish("cancelled", error="cancelled")
        if sink is not None:
            sink.emit(
                "step.cancelled", ctx.path, {}, span_id=span, parent_span_id=parent, agent=agent
            )
        raise
    except BaseException as exc:
        node.finish("failed", error=f"{type(exc).__name__}: {exc}")
        if isinstance(exc, RunError) and exc.step_path is None:
            exc.step_path = ctx.path
        if sink is not None:
            sink.emit(
                "step.failed",
                ctx.path,
                {"type": type(exc).__name__, "message": str(exc)},
                span_id=span,
                parent_span_id=parent,
                agent=agent,
            )
        raise
    node.finish("ok", output=output)
    if sink is not None:
        sink.emit(
            "step.completed",
            ctx.path,
            {"usage": node.total_usage().model_dump(), "duration_ms": node.duration_ms},
            span_id=span,
            parent_span_id=parent,
            agent=agent,
            raw={"output": output.model_dump_json()},
        )
    return output


def _errors(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()]
