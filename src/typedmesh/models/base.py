"""The Model protocol and the wire types every provider speaks.

A model sees a ``ModelRequest`` (messages, the output JSON schema, tool
schemas) and answers a ``ModelResponse`` (text content or tool calls, and
token usage). Providers translate these to and from their SDKs; the runtime
never sees a provider type, which is what lets a journal replay any of them.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Message",
    "Model",
    "ModelRequest",
    "ModelResponse",
    "ToolCall",
    "ToolSchema",
    "Usage",
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


class ModelRequest(BaseModel):
    """Everything a model needs for one call.

    ``output_schema`` is the JSON schema of the structured output (None for
    free text) and ``output_name`` its title, used by providers whose
    structured-output mode needs a name.
    """

    messages: list[Message]
    output_schema: dict[str, Any] | None = None
    output_name: str = "output"
    tools: list[ToolSchema] = Field(default_factory=list)
    temperature: float | None = None
    max_tokens: int | None = None

    @property
    def system(self) -> str:
        """The system message (an Agent's identity, instructions, intent and notes)."""
        return next((m.content for m in self.messages if m.role == "system"), "")

    def input_data(self) -> dict[str, Any]:
        """The step input, decoded from the first user message (as an Agent sends it).

        Handy for offline ``ScriptedModel`` functions that answer from the input.
        """
        import json

        first = next((m for m in self.messages if m.role == "user"), None)
        data = json.loads(first.content) if first is not None else {}
        return data if isinstance(data, dict) else {"input": data}


class Usage(BaseModel):
    """Tokens and calls, additive: ``a + b`` sums every counter."""

    input_tokens: int = 0
    output_tokens: int = 0
    model_calls: int = 0
    tool_calls: int = 0
    cost_usd: float = 0.0

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
        )


class ModelResponse(BaseModel):
    """A model's answer: ``content`` text, or ``tool_calls``; always with usage.

    ``model`` names what actually answered (it keys the price table).
    """

    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    model: str = ""


@runtime_checkable
class Model(Protocol):
    """Anything that turns a ``ModelRequest`` into a ``ModelResponse``.

    ``name`` is the model's name as the price table knows it (e.g.
    ``gpt-4o-mini``); ``provider`` says who serves it.
    """

    name: str
    provider: str

    async def generate(self, request: ModelRequest) -> ModelResponse: ...
