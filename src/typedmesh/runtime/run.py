"""Running a flow: ``run`` / ``arun`` and their ``RunResult``."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from ..contracts import Intent
from ..errors import ConfigurationError, InputValidationError, RunError
from ..models.base import Usage
from ..step import Step
from .budget import Budget
from .context import RunContext, RunState, invoke_traced
from .trace import TraceNode

if TYPE_CHECKING:
    from ..journal.base import Journal

__all__ = ["RunResult", "arun", "run"]

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)
T = TypeVar("T")


@dataclass(slots=True)
class RunResult(Generic[Out]):
    """What a finished run gives back: the typed output and how it came about."""

    output: Out
    run_id: str
    usage: Usage
    cost_usd: float
    trace: TraceNode
    intent: Intent | None = None
    journal: str | None = None

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
    if type(value) is expected:
        return value
    try:
        if isinstance(value, BaseModel):
            return expected.model_validate(value.model_dump())
        if isinstance(value, str | bytes):
            return expected.model_validate_json(value)
        return expected.model_validate(value)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        lines = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in errors)
        raise InputValidationError(
            f"input for {flow.name!r} does not fit {expected.__name__}: {lines}",
            errors=json.loads(json.dumps(errors, default=str)),
        ) from exc


async def execute(
    flow: Step[Any, Out],
    validated: BaseModel,
    state: RunState,
    intent: Intent | None,
    journal_name: str | None = None,
) -> RunResult[Out]:
    """Drive the root step in a prepared RunState; journal its end however it ends."""
    root = TraceNode(name=flow.name, kind=flow.kind, path=flow.name, identity=flow.identity)
    ctx = RunContext(state, flow.name, root, flow)
    sink = state.sink
    try:
        output = await invoke_traced(flow, validated, ctx, None)
    except BaseException as exc:
        if sink is not None:
            sink.emit(
                "run.failed",
                flow.name,
                {
                    "type": type(exc).__name__,
                    "message": str(exc),
                    "step_path": getattr(exc, "step_path", None),
                    "usage": state.usage.model_dump(),
                },
            )
            sink.flush()
        if isinstance(exc, RunError):
            exc.run_id = state.run_id
            exc.partial = root
        raise
    if sink is not None:
        from ..journal.events import canonical_json, digest

        dumped = output.model_dump(mode="json")
        sink.emit(
            "run.finished",
            flow.name,
            {
                "output": dumped,
                "output_digest": digest(canonical_json(dumped)),
                "usage": state.usage.model_dump(),
            },
        )
        sink.flush()
    return RunResult(
        output=output,
        run_id=state.run_id,
        usage=state.usage,
        cost_usd=state.usage.cost_usd,
        trace=root,
        intent=intent,
        journal=journal_name,
    )


async def arun(
    flow: Step[In, Out],
    input: In | dict[str, Any] | str,
    *,
    intent: Intent | None = None,
    run_id: str | None = None,
    budget: Budget | None = None,
    grant: Iterable[str] | None = None,
    journal: str | Path | Journal | None = None,
) -> RunResult[Out]:
    """Run ``flow`` on ``input`` and return its typed result.

    ``intent`` reaches every agent's prompt and every evaluator; ``budget``
    caps tokens, dollars and model calls; ``grant`` narrows the scopes every
    step may use (None: each step's own scopes). ``journal`` (a SQLite path or
    a Journal) records every boundary crossing so the run can be resumed,
    replayed and verified. On failure the ``RunError`` carries ``run_id`` and
    ``partial`` (the trace so far, with the output of every finished step).
    """
    if not isinstance(flow, Step):
        raise ConfigurationError(f"run() needs a Step, got {type(flow).__name__}")
    validated = coerce_input(flow, input)
    state = RunState(
        run_id=run_id or uuid.uuid4().hex,
        intent=intent,
        budget=budget,
        grant=None if grant is None else frozenset(grant),
    )
    if journal is None:
        return await execute(flow, validated, state, intent)
    from ..journal import open_journal
    from ..journal.writer import RunWriter
    from .durable import JournalEffects

    store = open_journal(journal)
    try:
        if run_id is not None and store.exists(run_id):
            raise ConfigurationError(
                f"run {run_id!r} is already in the journal: resume or replay it, "
                "or start a new run id"
            )
        writer = RunWriter(store, state.run_id)
        state.sink = writer
        state.effects = JournalEffects(writer, store)
        writer.emit("run.started", flow.name, run_started_payload(flow, validated, state))
        return await execute(flow, validated, state, intent, journal_label(journal))
    finally:
        if store is not journal:
            store.close()


def run_started_payload(
    flow: Step[Any, Any], validated: BaseModel, state: RunState
) -> dict[str, Any]:
    """What resume needs to run the flow again: its input and the run's settings."""
    from .. import __version__

    budget = state.budget
    return {
        "flow": flow.name,
        "kind": flow.kind,
        "input": validated.model_dump(mode="json"),
        "intent": state.intent.model_dump(mode="json") if state.intent else None,
        "budget": None
        if budget is None
        else {
            "max_tokens": budget.max_tokens,
            "max_cost_usd": budget.max_cost_usd,
            "max_model_calls": budget.max_model_calls,
        },
        "grant": None if state.grant is None else sorted(state.grant),
        "typedmesh": __version__,
    }


def journal_label(journal: Any) -> str | None:
    if journal is None:
        return None
    path = getattr(journal, "path", journal)
    return str(path) if isinstance(path, str | Path) else type(journal).__name__


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from synchronous code; refuse inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()
    raise ConfigurationError(
        "called inside an event loop: use the async twin (arun, aresume, areplay)"
    )


def run(
    flow: Step[In, Out],
    input: In | dict[str, Any] | str,
    *,
    intent: Intent | None = None,
    run_id: str | None = None,
    budget: Budget | None = None,
    grant: Iterable[str] | None = None,
    journal: str | Path | Journal | None = None,
) -> RunResult[Out]:
    """Synchronous twin of ``arun``, for scripts; inside an event loop use ``arun``."""
    return run_sync(
        arun(flow, input, intent=intent, run_id=run_id, budget=budget, grant=grant, journal=journal)
    )
