"""Running a flow: ``run`` / ``arun`` and their ``RunResult``."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from ..contracts import Intent
from ..errors import ConfigurationError, InputValidationError, RunError
from ..models.base import Usage
from ..step import Step
from .budget import Budget
from .context import RunContext, RunState, invoke_traced
from .trace import TraceNode

__all__ = ["RunResult", "arun", "run"]

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)


@dataclass(slots=True)
class RunResult(Generic[Out]):
    """What a finished run gives back: the typed output and how it came about."""

    output: Out
    run_id: str
    usage: Usage
    cost_usd: float
    trace: TraceNode
    intent: Intent | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view, as ``typedmesh run --json`` prints it."""
        return {
            "run_id": self.run_id,
            "output": self.output.model_dump(mode="json"),
            "usage": self.usage.model_dump(),
            "cost_usd": self.cost_usd,
            "intent": self.intent.model_dump() if self.intent else None,
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


async def arun(
    flow: Step[In, Out],
    input: In | dict[str, Any] | str,
    *,
    intent: Intent | None = None,
    run_id: str | None = None,
    budget: Budget | None = None,
    grant: Iterable[str] | None = None,
) -> RunResult[Out]:
    """Run ``flow`` on ``input`` and return its typed result.

    ``intent`` reaches every agent's prompt and every evaluator; ``budget``
    caps tokens, dollars and model calls; ``grant`` narrows the scopes every
    step may use (None: each step's own scopes). On failure the ``RunError``
    carries ``run_id`` and ``partial`` (the trace so far, with the output of
    every step that finished).
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
    root = TraceNode(name=flow.name, kind=flow.kind, path=flow.name, identity=flow.identity)
    ctx = RunContext(state, flow.name, root, flow)
    try:
        output = await invoke_traced(flow, validated, ctx, None)
    except RunError as exc:
        exc.run_id = state.run_id
        exc.partial = root
        raise
    return RunResult(
        output=output,
        run_id=state.run_id,
        usage=state.usage,
        cost_usd=state.usage.cost_usd,
        trace=root,
        intent=intent,
    )


def run(
    flow: Step[In, Out],
    input: In | dict[str, Any] | str,
    *,
    intent: Intent | None = None,
    run_id: str | None = None,
    budget: Budget | None = None,
    grant: Iterable[str] | None = None,
) -> RunResult[Out]:
    """Synchronous twin of ``arun``, for scripts; inside an event loop use ``arun``."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(
            arun(flow, input, intent=intent, run_id=run_id, budget=budget, grant=grant)
        )
    raise ConfigurationError("run() was called inside an event loop: use 'await arun(...)'")
