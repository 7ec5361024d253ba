"""RunContext: what a step holds of its run, and the door to every effect.

The work is split by job: ``RunState`` is what one run shares (its event log
and sinks, effects engine, budget, executor); child steps are dispatched
here; model calls live in ``model_calls``, tool calls in ``tool_calls``;
what is recorded and served is the effects engine's business. The trace is
not kept here: it is derived from the run's events by the reducer.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..contracts import Intent
from ..errors import ContractError, RunError, StepFailed, TypedMeshError
from ..journal.events import GENESIS_HASH
from ..journal.writer import EventLog, JournalSink
from ..models.base import Message, Model, ModelRequest, ModelResponse, ModelSettings, Usage
from .budget import Budget, BudgetTracker
from .effects import Effects, Suspend
from .executor import AsyncioExecutor, Executor
from .kinds import CLOCK, RANDOM, TIMER, EffectKind
from .reducer import TraceReducer
from .retry import NO_RETRY, RetryPolicy
from .trace import TraceNode

if TYPE_CHECKING:
    from ..journal.base import Journal
    from ..models.resilience import CircuitBreaker
    from ..state.base import StateStore
    from ..step import Gate, Step
    from ..tools import Tool
    from .history import History
    from .state_effects import RunStateAccess

__all__ = ["RunContext", "RunState"]

Out = TypeVar("Out", bound=BaseModel)
T = TypeVar("T")
D = TypeVar("D")


@dataclass(slots=True)
class RunState:
    """What all contexts of one run share."""

    run_id: str
    intent: Intent | None = None
    budget: Budget | None = None
    grant: frozenset[str] | None = None
    journal: Journal | None = None
    effects: Effects = field(default_factory=Effects)
    log: EventLog = field(default=None)  # type: ignore[assignment]
    reducer: TraceReducer = field(default_factory=TraceReducer)
    sink: JournalSink | None = None
    """The journal sink, when the run is journaled."""
    completed: dict[str, Any] | None = None
    """On resume: output JSON of steps the journal shows finished, by path."""
    swaps: dict[str, Step[Any, Any]] = field(default_factory=dict)
    """On what-if replay: steps to run instead of the flow's, by name."""
    live_paths: set[str] = field(default_factory=set)
    """On what-if replay: paths of swapped steps, whose effects always run live."""
    identities: dict[int, dict[str, str]] = field(default_factory=dict)
    executor: Executor = field(default_factory=AsyncioExecutor)
    tracker: BudgetTracker | None = None
    deadline: float | None = None
    """``time.monotonic()`` past which no new model or tool call starts."""
    message_json: dict[int, tuple[Message, str]] = field(default_factory=dict)
    store: StateStore | None = None
    """The shared state store ``ctx.state`` works on (None: the run has none)."""
    deps: Any = None
    """What the run's steps and tools reach as ``ctx.deps`` (never journaled)."""
    model_settings: ModelSettings | None = None
    """Provider settings for every agent of the run, laid over each agent's own."""
    history: History | None = None
    """In a session turn: the earlier turns, rebuilt from the journal."""

    def __post_init__(self) -> None:
        if self.log is None:
            self.log = EventLog(self.run_id, prev_hash=GENESIS_HASH, sinks=[self.reducer])
        if self.budget is not None and self.tracker is None:
            self.tracker = BudgetTracker(self.budget, self.reducer.usage)

    @property
    def usage(self) -> Usage:
        return self.reducer.usage

    def agent_dict(self, step: Step[Any, Any] | None) -> dict[str, str] | None:
        if step is None:
            return None
        found = self.identities.get(id(step))
        if found is None:
            found = self.identities[id(step)] = step.identity.model_dump()
        return found


class RunContext:
    """The context of one step invocation: its path and effect counters."""

    __slots__ = (
        "_children",
        "_counters",
        "_origin",
        "_run",
        "idempotency_key",
        "notes",
        "path",
        "step",
    )

    def __init__(
        self,
        run: RunState,
        path: str,
        step: Step[Any, Any] | None,
        *,
        idempotency_key: str | None = None,
        notes: tuple[str, ...] = (),
        origin: tuple[str, str | None, dict[str, str] | None] | None = None,
    ) -> None:
        self._run = run
        self.path = path
        self.step = step
        self.idempotency_key = idempotency_key
        """Set while a tool runs: stable across retries of the same call after a crash."""
        self.notes = notes
        """What the enclosing pattern tells this step (loop feedback, merge conflicts)."""
        self._counters: dict[str, int] = {}
        self._children: dict[str, int] = {}
        self._origin = origin

    @property
    def run_id(self) -> str:
        return self._run.run_id

    @property
    def intent(self) -> Intent | None:
        return self._run.intent

    @property
    def budget(self) -> Budget | None:
        return self._run.budget

    @property
    def usage(self) -> Usage:
        """What the whole run has spent so far."""
        return self._run.usage

    @property
    def state(self) -> RunStateAccess:
        """The run's shared state store; every operation is a journaled effect."""
        from .state_effects import RunStateAccess

        return RunStateAccess(self)

    @property
    def state_store(self) -> StateStore | None:
        return self._run.store

    @property
    def deps(self) -> Any:
        """The run's dependencies (``deps=`` on run, resume, replay); ``DepsError`` if none."""
        deps = self._run.deps
        if deps is None:
            from .deps import DepsError

            raise DepsError(
                f"run {self.run_id!r} has no deps (step {self.path!r} asked for them): pass "
                "deps= to run, and again to resume or replay (deps are not journaled)",
                expected=None,
                got=None,
            )
        return deps

    def deps_as(self, type_: type[D]) -> D:
        """``ctx.deps``, checked to be a ``type_`` (and typed as one for the type checker)."""
        deps = self.deps
        if not isinstance(deps, type_):
            from .deps import DepsError, type_name

            raise DepsError(
                f"step {self.path!r} wants deps of type {type_name(type_)}, the run has "
                f"{type_name(type(deps))}",
                expected=type_name(type_),
                got=type_name(type(deps)),
            )
        return deps

    @property
    def model_settings(self) -> ModelSettings | None:
        """Provider settings given to the whole run (``model_settings=`` on ``tm.run``)."""
        return self._run.model_settings

    @property
    def history(self) -> History | None:
        """In a session turn (``tm.Session``): the earlier turns; None outside a session."""
        return self._run.history

    @property
    def replaying(self) -> bool:
        """Whether every effect is served from the journal (nothing may run live)."""
        return self._run.effects.mode == "replay" and not self.runs_live

    def agent_identity(self) -> dict[str, str] | None:
        """The identity (name, version, deployment) of the step this context serves."""
        return self._run.agent_dict(self.step)

    @property
    def node(self) -> TraceNode:
        """This step's trace node, as the reducer derived it from the events so far."""
        reducer = self._run.reducer
        node = reducer.owner(self.path)
        assert node is not None, "a step's node exists once its step.started was emitted"
        return node

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

    # -- events ------------------------------------------------------------------

    def emit(
        self,
        type: str,
        payload: dict[str, Any],
        *,
        key: str | None = None,
        raw: dict[str, str] | None = None,
        parts: dict[str, list[str]] | None = None,
        attachment: Any = None,
    ) -> None:
        """Make one event at this step (the journal, the reducer and subscribers get it)."""
        span, parent, agent = self.event_origin()
        self._run.log.emit(
            type,
            self.path,
            payload,
            key=key,
            span_id=span,
            parent_span_id=parent,
            agent=agent,
            raw=raw,
            parts=parts,
            attachment=attachment,
        )

    def record(self, event: str, **data: Any) -> None:
        """Note a boundary event on this step (journaled; shown on its trace node)."""
        self.emit(event, data, key=data.get("key"))

    async def commit(self) -> None:
        """Make every event so far durable (a no-op for a run without a journal)."""
        sink = self._run.sink
        if sink is not None:
            await sink.commit()

    def unsaved(self) -> None:
        """A result was recorded that must be durable before this run acts on it."""
        sink = self._run.sink
        if sink is not None:
            sink.unsaved = True

    async def settle(self) -> None:
        """Commit if a recorded result is still waiting to be made durable."""
        sink = self._run.sink
        if sink is not None and sink.unsaved:
            await sink.commit()

    def ensure_owned(self) -> None:
        """Before a live effect: the run is still ours (a fenced-out zombie stops here)."""
        sink = self._run.sink
        if sink is not None:
            sink.ensure_owned()

    def event_origin(self) -> tuple[str, str | None, dict[str, str] | None]:
        """Span id, parent span id and agent identity for an event from here."""
        origin = self._origin
        if origin is None:
            parent_path = self.path.rpartition("/")[0]
            origin = self._origin = (
                span_id(self.run_id, self.path),
                span_id(self.run_id, parent_path) if parent_path else None,
                self._run.agent_dict(self.step),
            )
        return origin

    @property
    def keeps_requests(self) -> bool:
        """Whether requests must be recorded in full: the run is journaled, resumed or
        replayed (a run without a journal compares nothing and stores nothing)."""
        run = self._run
        return run.sink is not None or run.effects.mode != "live"

    def message_texts(self, messages: Sequence[Message]) -> list[str]:
        """Each message's JSON, cached per message object (a conversation is re-sent)."""
        cache = self._run.message_json
        texts = []
        for message in messages:
            hit = cache.get(id(message))
            if hit is None or hit[0] is not message:
                hit = cache[id(message)] = (message, message.model_dump_json())
            texts.append(hit[1])
        return texts

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
        child = RunContext(run, path, step, notes=notes)
        if run.completed is not None and path in run.completed:
            return restore(step, child, run.completed[path])
        return await invoke_traced(step, input, child, gate)

    async def run_all(self, calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
        """Run calls (child steps) side by side on the run's executor; the first
        failure cancels the others and is raised."""
        return await self._run.executor.run_all(calls)

    # -- models, tools, clock ------------------------------------------------------

    async def call_model(
        self,
        model: Model,
        request: ModelRequest,
        *,
        retry: RetryPolicy = NO_RETRY,
        breaker: CircuitBreaker | None = None,
        attempt_timeout: float | None = None,
    ) -> ModelResponse:
        """Call a model: budget-reserved, retried on transient errors, priced, journaled.

        A ``Fallback`` model tries its models in order; ``breaker`` fails fast (or
        falls back) while the model's circuit is open; ``attempt_timeout`` bounds each try.
        """
        from .model_calls import call_model

        return await call_model(
            self, self._run, model, request, retry, breaker=breaker, attempt_timeout=attempt_timeout
        )

    async def perform(
        self,
        kind: EffectKind,
        request: Any,
        execute: Callable[[], Awaitable[Any]],
        *,
        key: str | None = None,
    ) -> Any:
        """Perform an effect of any registered kind: journaled, resumed and replayed
        as its descriptor says (a waiting kind may suspend the run here)."""
        return await self._run.effects.perform(
            self, kind, key or self.effect_key(kind.name), request, execute
        )

    def allowed_scopes(self) -> frozenset[str]:
        """This step's scopes, narrowed by the run's grant when one was given."""
        scopes = self.step.scopes if self.step is not None else frozenset()
        grant = self._run.grant
        return scopes if grant is None else scopes & grant

    async def call_tool(self, tool: Tool, /, **arguments: Any) -> Any:
        """Call a tool with scope check and argument validation; returns its result.

        Raises ``ToolDenied`` (nothing ran) when a required scope is missing and
        ``ToolError`` for invalid arguments or a failure the tool reports on purpose.
        """
        from .tool_calls import call_tool

        return await call_tool(self, self._run, tool, arguments)

    def now(self) -> datetime:
        """The current UTC time, as an effect: a replay sees the recorded time."""
        value: datetime = self._run.effects.perform_sync(
            self, CLOCK, self.effect_key("clock"), _utc_now
        )
        return value

    def random(self) -> float:
        """A uniform draw in [0, 1), as an effect: a replay sees the recorded draw."""
        value: float = self._run.effects.perform_sync(
            self, RANDOM, self.effect_key("random"), _random_draw
        )
        return value

    async def sleep(self, seconds: float, *, key: str | None = None) -> None:
        """Wait, as a timer effect: a replay does not wait at all."""

        async def wait() -> None:
            await asyncio.sleep(seconds)

        await self._run.effects.perform(self, TIMER, key or self.effect_key("timer"), seconds, wait)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _random_draw() -> float:
    import random

    return random.random()


def span_id(run_id: str, path: str) -> str:
    """A deterministic span id: the same step of the same run always gets the same id."""
    return hashlib.sha256(f"{run_id}/{path}".encode()).hexdigest()[:16]


def restore(step: Step[Any, Out], ctx: RunContext, recorded: Any) -> Out:
    """A step the journal shows finished: its recorded output, without running it again."""
    try:
        output = step.output_type.model_validate(recorded)
    except ValidationError as exc:
        from ..validation import error_lines

        raise ContractError(
            f"resume: step {ctx.path!r} finished with an output that no longer fits "
            f"{step.output_type.__name__} (the flow's types changed since the run was "
            "journaled); replay it with the old flow, or start a new run",
            source=ctx.path,
            target=step.output_type.__name__,
            problems=error_lines(exc),
        ) from exc
    ctx.record("step.restored")
    return output


async def invoke_traced(
    step: Step[Any, Out], input: BaseModel, ctx: RunContext, gate: Gate | None
) -> Out:
    """Invoke ``step`` in ``ctx``, its start and end as events, however it ends."""
    ctx.emit("step.started", {"kind": step.kind, "name": ctx.path.rpartition("/")[2]})
    started = time.perf_counter()
    try:
        if gate is None:
            output = await step.invoke(input, ctx)
        else:
            output = await step.invoke_gated(input, ctx, gate)
    except (asyncio.CancelledError, Suspend):
        ctx.emit("step.cancelled", {"duration_ms": _ms(started)})
        raise
    except BaseException as caught:
        exc = caught
        if isinstance(caught, Exception) and not isinstance(caught, TypedMeshError):
            exc = StepFailed.wrap(caught, step_path=ctx.path)  # a bug in user code
        elif isinstance(exc, RunError) and exc.step_path is None:
            exc.step_path = ctx.path
        ctx.emit(
            "step.failed",
            {"type": type(exc).__name__, "message": str(exc), "duration_ms": _ms(started)},
        )
        if exc is caught:
            raise
        raise exc from caught
    ctx.emit(
        "step.completed",
        {"duration_ms": _ms(started)},
        # the typed output rides along; its JSON only when the event is stored
        raw={"output": output.model_dump_json()} if ctx._run.log.serializing() else None,
        attachment=output,
    )
    await ctx.commit()  # a finished step is durable before the next one starts
    return output


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
