"""The runtime: run context, effects, budgets, retries, traces and running flows."""

from .budget import Budget
from .context import RunContext
from .effects import Effects, LiveEffects
from .replay import FieldChange, ReplayResult, areplay, aresume, replay, resume
from .retry import RetryPolicy
from .run import RunResult, arun, run
from .trace import TraceNode

__all__ = [
    "Budget",
    "Effects",
    "FieldChange",
    "LiveEffects",
    "ReplayResult",
    "RetryPolicy",
    "RunContext",
    "RunResult",
    "TraceNode",
    "areplay",
    "aresume",
    "arun",
    "replay",
    "resume",
    "run",
]
