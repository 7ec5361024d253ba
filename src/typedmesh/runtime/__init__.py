"""The runtime: run context, effects, budgets, retries, traces and running flows."""

from .approval import APPROVAL as APPROVAL  # registers the approval kind: resume must know it
from .batch_calls import provider_batch as provider_batch  # registers the batch kinds
from .budget import Budget
from .context import RunContext
from .effects import Effects
from .executor import AsyncioExecutor, Executor
from .kinds import PENDING, EffectKind, register_kind
from .replay import FieldChange, ReplayResult, areplay, aresume, replay, resume
from .retry import RetryPolicy
from .run import RunResult, arun, run
from .state_effects import RunStateAccess  # registers the state kinds: resume must know them
from .trace import TraceNode
from .waits import record_result, waiting_effects

__all__ = [
    "PENDING",
    "AsyncioExecutor",
    "Budget",
    "EffectKind",
    "Effects",
    "Executor",
    "FieldChange",
    "ReplayResult",
    "RetryPolicy",
    "RunContext",
    "RunResult",
    "RunStateAccess",
    "TraceNode",
    "areplay",
    "aresume",
    "arun",
    "record_result",
    "register_kind",
    "replay",
    "resume",
    "run",
    "waiting_effects",
]
