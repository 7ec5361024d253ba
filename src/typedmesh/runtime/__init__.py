"""The runtime: run context, effects, budgets, retries, traces and running flows."""

from .budget import Budget
from .context import RunContext
from .effects import Effects, LiveEffects
from .retry import RetryPolicy
from .run import RunResult, arun, run
from .trace import TraceNode

__all__ = [
    "Budget",
    "Effects",
    "LiveEffects",
    "RetryPolicy",
    "RunContext",
    "RunResult",
    "TraceNode",
    "arun",
    "run",
]
