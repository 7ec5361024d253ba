"""The framework's own typed contracts.

These are the shapes the patterns speak: the user's ``Intent`` (the first
contract of every run), ``Claim`` with a ``Provenance`` the framework stamps,
``Conflict`` and ``SynthesizedReport`` for merges that surface disagreement,
``Evaluation`` for loops, and ``Plan`` for orchestration.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AgentIdentity",
    "BranchFailure",
    "Claim",
    "Conflict",
    "DegradedReport",
    "Evaluation",
    "Intent",
    "LoopResult",
    "Orchestrated",
    "Plan",
    "PlanExecution",
    "PlanStep",
    "Provenance",
    "SynthesizedReport",
    "Text",
    "WorkerResult",
    "is_text",
]

T = TypeVar("T", bound=BaseModel)


class AgentIdentity(BaseModel):
    """Who produced something: a service name, its version and where it was deployed."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    name: str
    version: str = "0.1.0"
    deployment: str = "local"


class Text(BaseModel):
    """Plain text as a contract: what ``output=str`` (or ``input=str``) stands for.

    An agent whose answer is prose, not a record, still hands off a typed value:
    a ``Text`` is checked at every boundary like any model, journaled, replayed,
    and streamed token by token. ``str(text)`` is the text itself.
    """

    model_config = ConfigDict(frozen=True)

    text: str

    def __str__(self) -> str:
        return self.text


def is_text(tp: object) -> bool:
    """Whether a contract type is plain text (``Text`` itself: a subclass may add fields)."""
    return tp is Text


class Intent(BaseModel):
    """What the user actually wants, carried to every agent and every evaluator.

    Most failures of multi-agent systems trace to a misread intent; making it a
    typed contract means each agent is told the same goal and constraints.
    """

    model_config = ConfigDict(defer_build=True)

    goal: str
    constraints: list[str] = Field(default_factory=list)
    success_criteria: list[str] = Field(default_factory=list)
    audience: str | None = None


class Provenance(BaseModel):
    """Where a piece of output came from. Filled by the framework, never by a model.

    Fields of this type are removed from the JSON schema a model sees and
    stamped after validation, so a model cannot forge its own provenance.
    """

    model_config = ConfigDict(defer_build=True)

    agent: AgentIdentity
    step_path: str
    run_id: str
    model: str | None = None
    tool_calls: list[str] = Field(default_factory=list)
    input_digest: str = ""


class Claim(BaseModel):
    """One statement an agent makes, with the evidence it offers."""

    model_config = ConfigDict(defer_build=True)

    statement: str
    evidence: list[str] = Field(default_factory=list)
    provenance: Provenance | None = None


class Conflict(BaseModel):
    """A field on which parallel branches disagree.

    ``field`` is the dotted path of the field and ``values`` maps each branch
    to what it said: both are the framework's findings, stamped into a merge
    output verbatim, never re-typed by a model. ``note`` is the merge step's
    account of the disagreement (a merge agent writes it in ``conflict_notes``).
    """

    model_config = ConfigDict(defer_build=True)

    field: str
    values: dict[str, Any]
    note: str = ""


class SynthesizedReport(BaseModel):
    """A merge result that keeps disagreements visible instead of averaging them."""

    # The docstring above is the schema description a merge model reads. As a
    # ``parallel`` merge output, ``conflicts`` is exactly what the framework
    # detected (stamped, like provenance): the model writes the other fields
    # and, in ``conflict_notes``, a note on each conflict.

    model_config = ConfigDict(defer_build=True)

    summary: str
    agreements: list[str] = Field(default_factory=list)
    conflicts: list[Conflict] = Field(default_factory=list)
    recommendation: str | None = None


class BranchFailure(BaseModel):
    """A parallel branch that failed, handed to the merge in its place (``on_branch_error=
    "degrade"``): which branch, who it was, and the error, as the framework saw them."""

    model_config = ConfigDict(defer_build=True)

    branch: str
    step_path: str
    agent: AgentIdentity | None = None
    error_type: str
    message: str


class DegradedReport(SynthesizedReport):
    """A merge result that also says which branches were missing (stamped, not written)."""

    model_config = ConfigDict(defer_build=True)

    missing_branches: list[str] = Field(default_factory=list)


class Evaluation(BaseModel):
    """An evaluator's verdict on one draft."""

    model_config = ConfigDict(defer_build=True)

    passed: bool
    score: float = Field(ge=0, le=1)
    feedback: str


class PlanStep(BaseModel):
    """One unit of planned work: which worker runs it, on what input, after what.

    An input value ``{"$ref": "other_step"}`` passes that step's whole output;
    ``{"$ref": "other_step.field"}`` passes one of its fields. A referenced step
    must be listed in ``depends_on``.
    """

    model_config = ConfigDict(defer_build=True)

    id: str
    worker: str
    input: dict[str, Any]
    depends_on: list[str] = Field(default_factory=list)


class Plan(BaseModel):
    """An orchestrator's plan. It is journaled and returned: it is the audit trail."""

    model_config = ConfigDict(defer_build=True)

    goal: str
    steps: list[PlanStep]


class WorkerResult(BaseModel):
    """What one plan step produced."""

    model_config = ConfigDict(defer_build=True)

    step_id: str
    worker: str
    output: dict[str, Any]


class PlanExecution(BaseModel):
    """What a synthesizer receives: the plan and every step's result."""

    model_config = ConfigDict(defer_build=True)

    plan: Plan
    results: list[WorkerResult]


class Orchestrated(BaseModel, Generic[T]):
    """The result of ``orchestrate``: the synthesizer's output, with its plan."""

    model_config = ConfigDict(defer_build=True)

    output: T
    plan: Plan
    results: list[WorkerResult]
    plan_attempts: int = 1


class LoopResult(BaseModel, Generic[T]):
    """The result of ``loop``: the last draft, and whether it passed or hit the cap."""

    model_config = ConfigDict(defer_build=True)

    output: T
    passed: bool
    rounds: int
    evaluations: list[Evaluation]
