"""The Model protocol and the wire types every provider speaks.

A model sees a ``ModelRequest`` (messages, the output JSON schema, tool
schemas) and answers a ``ModelResponse`` (text content or tool calls, and
token usage). Providers translate these to and from their SDKs; the runtime
never sees a provider type, which is what lets a journal replay any of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from typedmesh.contracts import Conflict

__all__ = [
    "ContextNote",
    "Denial",
    "Message",
    "Model",
    "ModelRequest",
    "ModelResponse",
    "ModelSettings",
    "RequestContext",
    "ToolCall",
    "ToolSchema",
    "Usage",
    "WorkerInfo",
]


class ToolCall(BaseModel):
    """One tool call a model asked for.

    ``arguments`` is None when the model sent arguments that are not a JSON
    object; ``raw_arguments`` then keeps what it sent so the error can quote it.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    arguments: dict[str, Any] | None = None
    raw_arguments: str | None = None


class Message(BaseModel):
    """One chat message. ``tool`` messages answer the call named by ``tool_call_id``."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None


class ToolSchema(BaseModel):
    """A tool as a model sees it: name, description and a JSON schema of arguments."""

    name: str
    description: str = ""
    parameters: dict[str, Any]


def _unset(value: Any) -> bool:
    return value is None


def _empty(value: Any) -> bool:
    return not value


class ModelSettings(BaseModel):
    """Provider settings of a model call: sampling, limits, reasoning, extras.

    Every field is optional; an unset field leaves the provider's default and
    is left out of the request's identity (its JSON). ``extra`` holds
    provider-specific body fields (``{"logit_bias": {...}}``,
    ``{"thinking": {...}}``), sent as they are. A provider skips a setting it
    has no such thing for (Anthropic has no ``seed``, OpenAI no ``top_k``).
    ``merge`` lays one set over another: its set fields win, ``extra`` is merged.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float | None = Field(default=None, exclude_if=_unset)
    max_tokens: int | None = Field(default=None, exclude_if=_unset)
    top_p: float | None = Field(default=None, exclude_if=_unset)
    top_k: int | None = Field(default=None, exclude_if=_unset)
    seed: int | None = Field(default=None, exclude_if=_unset)
    stop: tuple[str, ...] | None = Field(default=None, exclude_if=_unset)
    reasoning_effort: str | None = Field(default=None, exclude_if=_unset)
    """OpenAI ``reasoning_effort``; Anthropic ``output_config.effort``."""
    extra: dict[str, Any] = Field(default_factory=dict, exclude_if=_empty)

    @classmethod
    def coerce(cls, value: ModelSettings | Mapping[str, Any] | None) -> ModelSettings:
        """A ``ModelSettings`` from one, a dict of its fields, or None (no settings)."""
        if value is None:
            return EMPTY_SETTINGS
        if isinstance(value, ModelSettings):
            return value
        return cls.model_validate(dict(value))

    def merge(self, over: ModelSettings | Mapping[str, Any] | None) -> ModelSettings:
        """These settings with ``over``'s set fields laid on top (``extra`` merged)."""
        top = ModelSettings.coerce(over)
        if top.is_empty():
            return self
        if self.is_empty():
            return top
        fields = {**self.model_dump(exclude={"extra"}), **top.model_dump(exclude={"extra"})}
        return ModelSettings(**fields, extra={**self.extra, **top.extra})

    def is_empty(self) -> bool:
        return not self.model_dump()

    def without_limits(self) -> ModelSettings | None:
        """The settings a ``ModelRequest`` carries in ``settings``: all but
        ``temperature`` and ``max_tokens`` (the request's own fields); None if none."""
        rest = self.model_dump(exclude={"temperature", "max_tokens"})
        return ModelSettings(**rest) if rest else None


EMPTY_SETTINGS = ModelSettings()


class WorkerInfo(BaseModel):
    """A worker an ``orchestrate`` planner may use: its name, what it does, the
    JSON schema of its input and the names of its output fields."""

    name: str
    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=dict)
    output_fields: list[str] = Field(default_factory=list)


class Denial(BaseModel):
    """A tool call of this step refused for want of scopes (the model was told)."""

    tool: str
    missing: list[str]


class RequestContext(BaseModel):
    """What the framework tells a model besides its input, as data.

    The same facts are in the system prompt as prose (a real model reads
    that); an offline ``ScriptedModel`` function reads them here instead:

    - ``conflicts``: a ``parallel`` merge step's detected conflicts (field and
      each branch's value); the answer gives a note per field in ``conflict_notes``.
    - ``round``, ``feedback``, ``score``, ``previous_draft``: a ``loop``
      generator's round (from 1) and, from round two, the evaluator's last
      feedback and score and the previous draft (as a dict).
    - ``workers``: an ``orchestrate`` planner's worker catalog.
    - ``denials``: tool calls of this step refused for want of scopes.

    ``request.context`` is None when there is nothing to tell. It is not part
    of the request's identity (its JSON): the prompt already carries it.
    """

    conflicts: list[Conflict] = Field(default_factory=list)
    round: int | None = None
    feedback: str | None = None
    score: float | None = None
    previous_draft: dict[str, Any] | None = None
    workers: list[WorkerInfo] = Field(default_factory=list)
    denials: list[Denial] = Field(default_factory=list)

    def merge(self, other: RequestContext) -> RequestContext:
        """This context with ``other``'s set fields laid on top (lists concatenated)."""
        data = self.model_dump(exclude_defaults=True)
        for name, value in other.model_dump(exclude_defaults=True).items():
            data[name] = [*data.get(name, []), *value] if isinstance(value, list) else value
        return RequestContext.model_validate(data)


class ContextNote(str):
    """A note a pattern tells a step (prose, as any note) that also carries its
    facts as a ``RequestContext``, for the agent to put in ``ModelRequest.context``."""

    context: RequestContext

    def __new__(cls, text: str, context: RequestContext) -> ContextNote:
        note = super().__new__(cls, text)
        note.context = context
        return note


class ModelRequest(BaseModel):
    """Everything a model needs for one call.

    ``output_schema`` is the JSON schema of the structured output (None for
    free text) and ``output_name`` its title, used by providers whose
    structured-output mode needs a name. ``settings`` are the provider
    settings beyond ``temperature`` and ``max_tokens``; unset, they are not
    in the request's JSON, so requests made before they existed keep their
    identity (and their journals replay). ``context`` holds, as data, what the
    enclosing pattern told the agent in prose (see ``RequestContext``); it is
    never in the request's JSON.
    """

    messages: list[Message]
    output_schema: dict[str, Any] | None = None
    output_name: str = "output"
    tools: list[ToolSchema] = Field(default_factory=list)
    temperature: float | None = None
    max_tokens: int | None = None
    settings: ModelSettings | None = Field(default=None, exclude_if=_unset)
    history: int = Field(default=0, exclude_if=_empty)
    """How many messages after the system message replay earlier turns of a session
    (``tm.Session``); the step's own input follows them."""
    context: RequestContext | None = Field(default=None, exclude=True)
    """The framework's notes to the model as data (None when there are none)."""

    @property
    def system(self) -> str:
        """The system message (an Agent's identity, instructions, intent and notes)."""
        return next((m.content for m in self.messages if m.role == "system"), "")

    def input_data(self) -> dict[str, Any]:
        """The step input, decoded from the first user message after a session's
        history (as an Agent sends it).

        Handy for offline ``ScriptedModel`` functions that answer from the input.
        A plain-text input (``input=str``) is sent as the text itself and comes
        back as ``{"text": ...}``, the fields of ``tm.Text``.
        """
        import json

        rest = [m for m in self.messages if m.role != "system"][self.history :]
        first = next((m for m in rest if m.role == "user"), None)
        if first is None:
            return {}
        try:
            data = json.loads(first.content)
        except json.JSONDecodeError:
            return {"text": first.content}
        return data if isinstance(data, dict) else {"text": first.content}


class Usage(BaseModel):
    """Tokens and calls, additive: ``a + b`` sums every counter."""

    input_tokens: int = 0
    output_tokens: int = 0
    model_calls: int = 0
    tool_calls: int = 0
    cost_usd: float = 0.0
    estimated_calls: int = Field(default=0, exclude_if=lambda n: not n)
    """Model calls whose provider reported no usage: their tokens are estimated
    from the text (about four characters a token), so budgets and costs still count them."""

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            model_calls=self.model_calls + other.model_calls,
            tool_calls=self.tool_calls + other.tool_calls,
            cost_usd=self.cost_usd + other.cost_usd,
            estimated_calls=self.estimated_calls + other.estimated_calls,
        )


class ModelResponse(BaseModel):
    """A model's answer: ``content`` text, or ``tool_calls``; always with usage.

    ``model`` names what actually answered (it keys the price table).
    ``truncated`` says the provider stopped it at the token limit
    (``finish_reason="length"``, ``stop_reason="max_tokens"``): the text is
    cut off, so an agent never takes it as a complete answer.
    """

    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    model: str = ""
    truncated: bool = Field(default=False, exclude_if=lambda cut: not cut)
    """(Left out of the JSON when False: a whole answer is journaled as before.)"""


@runtime_checkable
class Model(Protocol):
    """Anything that turns a ``ModelRequest`` into a ``ModelResponse``.

    ``name`` is the model's name as the price table knows it (e.g.
    ``gpt-4o-mini``); ``provider`` says who serves it.
    """

    name: str
    provider: str

    async def generate(self, request: ModelRequest) -> ModelResponse: ...
