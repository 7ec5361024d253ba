"""typedmesh: multi-agent LLM systems built like distributed microservices.

Every agent is a Step with a typed contract and an identity; four patterns
compose Steps; every model and tool call passes through one run context.
"""

from __future__ import annotations

from . import errors
from .agent import Agent
from .contracts import (
    AgentIdentity,
    Claim,
    Conflict,
    Evaluation,
    Intent,
    LoopResult,
    Orchestrated,
    Plan,
    PlanExecution,
    PlanStep,
    Provenance,
    SynthesizedReport,
    WorkerResult,
)
from .errors import (
    AlreadyClaimed,
    BudgetExceeded,
    ConfigurationError,
    ConflictsDropped,
    ContractError,
    GateError,
    InDoubtError,
    InputValidationError,
    ModelError,
    NonDeterminismError,
    OutputValidationError,
    PlanRejected,
    RunError,
    StaleVersion,
    ToolDenied,
    ToolError,
    ToolLoopExceeded,
    TransientModelError,
    TypedMeshError,
)
from .models.base import Message, Model, ModelRequest, ModelResponse, ToolCall, Usage
from .models.offline import SchemaModel, ScriptedModel
from .patterns import detect_conflicts, loop, orchestrate, parallel, sequential
from .runtime import Budget, RetryPolicy, RunContext, RunResult, TraceNode, arun, run
from .step import FunctionStep, Gate, Step, step
from .tools import Tool, tool

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentIdentity",
    "AlreadyClaimed",
    "Budget",
    "BudgetExceeded",
    "Claim",
    "ConfigurationError",
    "Conflict",
    "ConflictsDropped",
    "ContractError",
    "Evaluation",
    "FunctionStep",
    "Gate",
    "GateError",
    "InDoubtError",
    "InputValidationError",
    "Intent",
    "LoopResult",
    "Message",
    "Model",
    "ModelError",
    "ModelRequest",
    "ModelResponse",
    "NonDeterminismError",
    "Orchestrated",
    "OutputValidationError",
    "Plan",
    "PlanExecution",
    "PlanRejected",
    "PlanStep",
    "Provenance",
    "RetryPolicy",
    "RunContext",
    "RunError",
    "RunResult",
    "SchemaModel",
    "ScriptedModel",
    "StaleVersion",
    "Step",
    "SynthesizedReport",
    "Tool",
    "ToolCall",
    "ToolDenied",
    "ToolError",
    "ToolLoopExceeded",
    "TraceNode",
    "TransientModelError",
    "TypedMeshError",
    "Usage",
    "WorkerResult",
    "arun",
    "detect_conflicts",
    "errors",
    "loop",
    "orchestrate",
    "parallel",
    "run",
    "sequential",
    "step",
    "tool",
]
