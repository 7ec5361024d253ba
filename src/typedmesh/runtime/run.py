"""Running a flow: ``run`` / ``arun`` and their ``RunResult``.

A journaled run is owned: ``arun`` registers the run id with a lease before
anything executes (a second process starting the same id is refused), a
heartbeat keeps the lease while the run waits on slow calls, and every
append is conditional on it. The run's end (finished, failed, waiting) is
appended and the lease released with that status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from ..contracts import Intent, is_text
from ..errors import (
    ConfigurationError,
    DeadlineExceeded,
    InputValidationError,
    RunError,
    RunWaiting,
    StepFailed,
    TypedMeshError,
)
from ..journal.base import DEFAULT_LEASE_TTL, new_owner
from ..journal.events import canonical_json, digest
from ..journal.sqlite import Durability
from ..journal.writer import EventSink, JournalSink
from ..models.base import ModelSettings, Usage
from ..state import StateStore, open_store
from ..step import Step
from ..validation import error_lines
from .budget import Budget
from .context import RunContext, RunState, invoke_traced
from .deps import check_deps
from .effects import Suspend
from .executor import Executor
from .trace import EffectCall, TraceNode

if TYPE_CHECKING:
    from ..journal.base import Journal
    from .cost import CostReport
    from .history import SessionTurn

__all__ = ["RunResult", "arun", "run"]

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)
T = TypeVar("T")


@dataclass(slots=True)
class RunResult(Generic[Out]):
    """What a finished run gives back: the typed output and how it came about.

    ``trace``, ``usage`` and ``cost_usd`` are derived from the run's events by
    the same reducer that ``typedmesh trace`` and ``cost`` use on the journal.
    """

    output: Out
    run_id: str
    usage: Usage
    cost_usd: float
    trace: TraceNode
    intent: Intent | None = None
    journal: str | None = None
    calls: tuple[EffectCall, ...] = field(default=(), repr=False)
    """Every model call, priced when it was made (what ``cost()`` attributes)."""

    def cost(self) -> CostReport:
        """The run's cost report, as ``tm.run_cost`` gives it from a journal (a run
        without a journal has one too)."""
        from .cost import cost_report

        return cost_report(self.trace, self.calls, self.run_id)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view, as ``typedmesh run --json`` prints it."""
        return {
            "run_id": self.run_id,
            "output": self.output.model_dump(mode="json"),
            "usage": self.usage.model_dump(),
            "cost_usd": self.cost_usd,
            "intent": self.intent.model_dump() if self.intent else None,
            "journal": self.journal,
            "trace": self.trace.to_dict(),
        }


def coerce_input(flow: Step[In, Any], value: Any) -> In:
    """Validate a run input against the flow's input model, before any model call."""
    expected = flow.input_type
    try:
        if type(value) is expected:
            validated = value
        elif isinstance(value, str) and is_text(expected):  # a plain-text flow takes the text
            validated = expected.model_validate({"text": value})
        elif isinstance(value, BaseModel):
            validated = expected.model_validate(value.model_dump())
        elif isinstance(value, str | bytes):
            validated = expected.model_validate_json(value)
        else:
            validated = expected.model_validate(value)
        validated.model_dump_json()  # refuses text that cannot be stored (lone surrogates)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise InputValidationError(
            f"input for {flow.name!r} does not fit {expected.__name__}: "
            + "; ".join(error_lines(exc)),
            errors=json.loads(json.dumps(errors, default=str)),
        ) from exc
    except (UnicodeEncodeError, PydanticSerializationError) as exc:
        raise InputValidationError(
            f"input for {flow.name!r} holds text that is not valid Unicode: {exc}",
            errors=[{"msg": str(exc)}],
        ) from exc
    return validated


async def drive(
    flow: Step[Any, Out],
    validated: BaseModel,
    state: RunState,
    intent: Intent | None,
    first: tuple[str, dict[str, Any]],
    journal_name: str | None = None,
    deadline: float | None = None,
) -> RunResult[Out]:
    """Drive the root step in a prepared RunState; record its end however it ends."""
    if state.swaps and flow.name in state.swaps:  # a what-if may swap the root itself
        flow = state.swaps[flow.name]
        state.live_paths.add(flow.name)
    ctx = RunContext(state, flow.name, flow)
    ctx.emit(*first)
    sink = state.sink
    if sink is not None:
        sink.flush()  # the run's first event is on disk before anything runs
    heartbeat = asyncio.ensure_future(_heartbeat(sink)) if sink is not None else None
    if deadline is not None:
        state.deadline = time.monotonic() + deadline
    try:
        async with asyncio.timeout(deadline):
            output = await invoke_traced(flow, validated, ctx, None)
    except Suspend as suspended:
        waiting = [suspended.key]
        _finish(ctx, state, "run.suspended", {"waiting": waiting}, "waiting")
        error = RunWaiting(
            f"run {state.run_id!r} is waiting for {', '.join(waiting)}: record a result, "
            "then resume it",
            waiting=waiting,
        )
        _attach(error, state)
        raise error from None
    except BaseException as caught:
        exc = caught
        if isinstance(caught, TimeoutError) and deadline is not None:
            exc = DeadlineExceeded(f"the run's deadline of {deadline:g} s passed")
        elif isinstance(caught, Exception) and not isinstance(caught, TypedMeshError):
            exc = StepFailed.wrap(caught, step_path=flow.name)
        _finish(
            ctx,
            state,
            "run.failed",
            {
                "type": type(exc).__name__,
                "message": str(exc),
                "step_path": getattr(exc, "step_path", None),
                "usage": state.usage.model_dump(),
            },
            "failed",
        )
        if isinstance(exc, RunError):
            _attach(exc, state)
        if exc is caught:
            raise
        raise exc from caught
    finally:
        if heartbeat is not None:
            heartbeat.cancel()
    dumped = output.model_dump(mode="json")
    _finish(
        ctx,
        state,
        "run.finished",
        {
            "output": dumped,
            "output_digest": digest(canonical_json(dumped)),
            "usage": state.usage.model_dump(),
        },
        "finished",
    )
    root = state.reducer.root
    assert root is not None
    return RunResult(
        output=output,
        run_id=state.run_id,
        usage=state.usage,
        cost_usd=state.usage.cost_usd,
        trace=root,
        intent=intent,
        journal=journal_name,
        calls=tuple(state.reducer.calls),
    )


def _attach(exc: RunError, state: RunState) -> None:
    exc.run_id = state.run_id
    exc.partial = state.reducer.root
    exc.partial_calls = tuple(state.reducer.calls)


def _finish(
    ctx: RunContext, state: RunState, type: str, payload: dict[str, Any], status: str
) -> None:
    """Record the run's end and give up its lease; a fenced-out writer records nothing."""
    sink = state.sink
    if sink is not None and sink.lost is not None:
        return
    ctx.emit(type, payload)
    if sink is not None:
        with contextlib.suppress(TypedMeshError):
            sink.flush(release=status)  # the end and the lease's release: one transaction


async def _heartbeat(sink: JournalSink | None) -> None:
    """Keep the lease alive while the run waits on slow calls."""
    if sink is None:
        return
    interval = max(sink.ttl / 3, 0.05)
    while True:
        await asyncio.sleep(interval)
        if time.monotonic() - sink.last_append >= interval:
            try:
                sink.heartbeat()
            except TypedMeshError:
                return  # the next commit or live effect raises LeaseLost


async def arun(
    flow: Step[In, Out],
    input: In | dict[str, Any] | str,
    *,
    intent: Intent | None = None,
    run_id: str | None = None,
    budget: Budget | None = None,
    grant: Iterable[str] | None = None,
    journal: str | Path | Journal | None = None,
    deadline: float | None = None,
    durability: Durability = "normal",
    executor: Executor | None = None,
    subscribers: Sequence[EventSink] = (),
    target: str | None = None,
    lease_ttl: float = DEFAULT_LEASE_TTL,
    state: StateStore | str | Path | None = None,
    deps: Any = None,
    model_settings: ModelSettings | dict[str, Any] | None = None,
    session: SessionTurn | None = None,
) -> RunResult[Out]:
    """Run ``flow`` on ``input`` and return its typed result.

    ``intent`` reaches every agent's prompt and every evaluator; ``budget``
    caps tokens, dollars, model calls and plan steps; ``grant`` narrows the
    scopes every step may use (None: each step's own scopes); ``deadline``
    (seconds) stops the run. ``journal`` (a SQLite path or a Journal)
    records every boundary crossing so the run can be resumed, replayed and
    verified; ``durability`` is its fsync level (see ``docs/durability.md``).
    ``subscribers`` receive every event as it is made; ``target`` (e.g.
    ``"examples/bull_bear.py:flow"``) is recorded so ``typedmesh resume`` can
    find the flow again. ``state`` is the shared state store steps reach as
    ``ctx.state`` (a ``StateStore`` or a URL: ``sqlite:///state.db``,
    ``postgresql://...``, ``redis://...``); its URL is recorded for resume.
    ``deps`` is what steps and tools reach as ``ctx.deps`` (checked against the
    flow's declared deps type before anything runs; never journaled, its type
    name is recorded; see ``docs/deps.md``). ``model_settings`` (a
    ``ModelSettings`` or a dict of its fields) is laid over every agent's own
    settings. ``session`` is set by ``tm.Session`` (``docs/sessions.md``).
    On failure the ``RunError`` carries ``run_id`` and ``partial`` (the trace
    so far, with the output of every finished step).
    """
    if not isinstance(flow, Step):
        raise ConfigurationError(f"run() needs a Step, got {type(flow).__name__}")
    if deadline is not None and deadline <= 0:
        raise ConfigurationError(f"deadline must be > 0 seconds, got {deadline}")
    validated = coerce_input(flow, input)
    deps_type = check_deps(flow, deps)
    settings = coerce_settings(model_settings)
    run_state = RunState(
        run_id=run_id or os.urandom(16).hex(),  # as random as uuid4, without its import
        intent=intent,
        budget=budget,
        grant=None if grant is None else frozenset(grant),
        store=None if state is None else open_store(state),
        deps=deps,
        model_settings=settings,
        history=None if session is None else session.history,
    )
    if executor is not None:
        run_state.executor = executor
    for subscriber in subscribers:
        run_state.log.add_sink(subscriber)
    started = run_started_payload(
        flow,
        validated,
        run_state,
        target,
        deps_type=deps_type,
        session=None if session is None else session.record,
    )
    if journal is None:
        return await drive(
            flow, validated, run_state, intent, ("run.started", started), None, deadline
        )
    from ..journal import open_journal

    store = open_journal(journal, durability=durability)
    lease = store.create_run(run_state.run_id, new_owner(), flow=flow.name, ttl=lease_ttl)
    attach_journal(run_state, store, JournalSink(store, lease, ttl=lease_ttl))
    return await drive(
        flow,
        validated,
        run_state,
        intent,
        ("run.started", started),
        journal_label(journal),
        deadline,
    )


def attach_journal(state: RunState, store: Journal, sink: JournalSink) -> None:
    state.journal = store
    state.sink = sink
    state.reducer.journal = store
    state.effects.journal = store
    state.log.add_sink(sink)


def coerce_settings(value: ModelSettings | dict[str, Any] | None) -> ModelSettings | None:
    """A run's ``model_settings=`` as ``ModelSettings`` (None when empty); a typo is a
    ``ConfigurationError`` before anything runs."""
    try:
        settings = ModelSettings.coerce(value)
    except ValidationError as exc:
        raise ConfigurationError("model_settings: " + "; ".join(error_lines(exc))) from exc
    return None if settings.is_empty() else settings


def run_started_payload(
    flow: Step[Any, Any],
    validated: BaseModel,
    state: RunState,
    target: str | None = None,
    *,
    deps_type: str | None = None,
    session: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What resume needs to run the flow again: its input, its target and the settings.

    ``deps_type``, ``model_settings`` and ``session`` are there only when set.
    """
    from .._version import __version__

    budget = state.budget
    extra: dict[str, Any] = {}
    if deps_type is not None:
        extra["deps_type"] = deps_type
    if state.model_settings is not None:
        extra["model_settings"] = state.model_settings.model_dump(mode="json")
    if session is not None:
        extra["session"] = session
    return {
        "flow": flow.name,
        "kind": flow.kind,
        "target": target,
        "cwd": os.getcwd() if target else None,
        "input": validated.model_dump(mode="json"),
        "intent": state.intent.model_dump(mode="json") if state.intent else None,
        "budget": None if budget is None else budget.to_dict(),
        "grant": None if state.grant is None else sorted(state.grant),
        "state_store": None if state.store is None else state.store.url,
        "typedmesh": __version__,
        **extra,
    }


def journal_label(journal: Any) -> str | None:
    if journal is None:
        return None
    from ..journal import describe_journal  # a URL's password is never in a label

    return describe_journal(journal)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from synchronous code; refuse inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass  # no loop: ours to run
    else:
        coro.close()
        raise ConfigurationError(
            "called inside an event loop: use the async twin (arun, aresume, areplay)"
        )
    return asyncio.run(coro)


def run(
    flow: Step[In, Out],
    input: In | dict[str, Any] | str,
    *,
    intent: Intent | None = None,
    run_id: str | None = None,
    budget: Budget | None = None,
    grant: Iterable[str] | None = None,
    journal: str | Path | Journal | None = None,
    deadline: float | None = None,
    durability: Durability = "normal",
    executor: Executor | None = None,
    subscribers: Sequence[EventSink] = (),
    target: str | None = None,
    lease_ttl: float = DEFAULT_LEASE_TTL,
    state: StateStore | str | Path | None = None,
    deps: Any = None,
    model_settings: ModelSettings | dict[str, Any] | None = None,
    session: SessionTurn | None = None,
) -> RunResult[Out]:
    """Synchronous twin of ``arun``, for scripts; inside an event loop use ``arun``."""
    return run_sync(
        arun(
            flow,
            input,
            intent=intent,
            run_id=run_id,
            budget=budget,
            grant=grant,
            journal=journal,
            deadline=deadline,
            durability=durability,
            executor=executor,
            subscribers=subscribers,
            target=target,
            lease_ttl=lease_ttl,
            state=state,
            deps=deps,
            model_settings=model_settings,
            session=session,
        )
    )
