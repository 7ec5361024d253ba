"""Agents as tools: one agent calls another as a typed tool, journaled as a child step.

``tm.agent_tool(billing)`` is a ``Tool`` whose arguments are the agent's
input model and whose result is its output model. A call runs the agent as a
child step of the caller (at ``<caller>/tool#n/<agent>``), under the called
agent's **own** identity, model, tools and scopes: what it calls is checked
against its scopes, never the caller's, and every model and tool call it makes
is journaled under its own path. The caller needs only the tool's
``requires`` (empty unless given) to delegate.

A failure of the called agent (invalid output, a failed gate, a tool loop, a
provider error) is told to the calling model as a tool error, so it can try
otherwise. Limits and bugs stop the run as anywhere else: budget and deadline,
replay divergence, a call in doubt, a waiting approval, a crash in user code.

The call is a tool call like any other: its result is journaled, so a resume
or a replay serves it without running the agent again (the agent's own calls
are consumed with it). A crash while the agent ran leaves the call in doubt;
it is retried (``idempotent``), and the retried agent is served from the
journal up to where it stopped, so nothing it did runs twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, TypeAdapter

from .contracts import Text, is_text
from .errors import (
    BudgetExceeded,
    ConfigurationError,
    DeadlineExceeded,
    InDoubtError,
    NonDeterminismError,
    RunError,
    RunWaiting,
    ScriptExhausted,
    StepFailed,
    ToolError,
)
from .models.base import ToolSchema
from .step import Step
from .tools import ApprovalRule, Tool

if TYPE_CHECKING:
    from .runtime.context import RunContext

__all__ = ["AgentTool", "agent_tool"]

STOPS_THE_RUN = (
    BudgetExceeded,
    DeadlineExceeded,
    InDoubtError,
    NonDeterminismError,
    RunWaiting,
    ScriptExhausted,
    StepFailed,
)
"""Failures of the called agent that are not the calling model's to handle."""


def _unused() -> None:
    """Stands in for the function a Tool wraps; an AgentTool runs its step instead."""


class AgentTool(Tool):
    """A Step (usually an Agent) offered to a model as a tool; see the module doc."""

    def __init__(
        self,
        step: Step[Any, Any],
        *,
        name: str | None = None,
        description: str | None = None,
        requires: set[str] | frozenset[str] = frozenset(),
        requires_approval: ApprovalRule = False,
        timeout: float | None = None,
    ) -> None:
        if not isinstance(step, Step):
            raise ConfigurationError(f"agent_tool() takes a Step (an Agent), got {step!r}")
        tool_name = name or step.name
        about = description if description is not None else _describe(step)
        super().__init__(
            _unused,
            name=tool_name,
            description=about,
            requires=requires,
            requires_approval=requires_approval,
            timeout=timeout,
        )
        self.step = step
        self.args_model = step.input_type
        self._result_adapter = TypeAdapter(step.output_type)
        self.schema = ToolSchema(
            name=tool_name,
            description=about,
            parameters=step.input_type.model_json_schema(),
        )

    async def execute(self, arguments: BaseModel, ctx: RunContext) -> Any:
        """Run the step as a child of the calling step, under its own identity and scopes."""
        step = self.step
        try:
            return await ctx.run(step, arguments)
        except RunError as exc:
            if isinstance(exc, STOPS_THE_RUN):
                raise
            raise ToolError(
                f"agent {step.name!r} failed ({type(exc).__name__}): {exc}", tool=self.name
            ) from exc

    def result_text(self, value: Any) -> str:
        """A plain-text agent's answer reaches the calling model as the text itself."""
        if isinstance(value, Text):
            return value.text
        return super().result_text(value)

    def __repr__(self) -> str:
        identity = self.step.identity
        return (
            f"<AgentTool {self.name!r} -> {identity.name}@{identity.version} "
            f"requires={sorted(self.requires)}>"
        )


def _describe(step: Step[Any, Any]) -> str:
    what = step.description or f"the {step.name!r} agent"
    return (
        f"{what} (delegates to {step.identity.name}@{step.identity.version}; "
        f"returns {'plain text' if is_text(step.output_type) else step.output_type.__name__})"
    )


def agent_tool(
    agent: Step[Any, Any],
    *,
    name: str | None = None,
    description: str | None = None,
    requires: set[str] | frozenset[str] = frozenset(),
    requires_approval: ApprovalRule = False,
    timeout: float | None = None,
) -> AgentTool:
    """Offer ``agent`` to another agent's model as a tool.

    The tool's arguments are the agent's input model, its result the agent's
    output. ``name`` defaults to the agent's name, ``description`` to the first
    line of its instructions. ``requires`` names the scopes the *calling* agent
    must hold to delegate; what the called agent does is checked against its
    own scopes. ``requires_approval`` and ``timeout`` work as on ``tm.tool``:
    a person's recorded decision before the agent runs; a cap (seconds) past
    which the agent is cancelled and the caller told it timed out.
    """
    return AgentTool(
        agent,
        name=name,
        description=description,
        requires=requires,
        requires_approval=requires_approval,
        timeout=timeout,
    )
