"""Anthropic Messages API provider.

Structured output uses the native JSON-schema mode, not the forced-tool trick:
anthropic 2.14 takes ``output_config={"format": {"type": "json_schema",
"schema": ...}}`` on the plain (non-beta) ``messages.create``. The answer then
arrives as an ordinary text turn, the model can still call the user's tools
first, and no ``final_result`` tool call has to be turned back into content.
The schema goes through the SDK's ``transform_schema`` (as its ``parse()``
does) because the API requires ``additionalProperties: false`` and rejects some
constraints, which it moves into descriptions; typedmesh still validates the
output against the full contract. Schemas it cannot express (a field typed
``Any``) raise ConfigurationError.

SDK retries are off (``max_retries=0``): typedmesh's RetryPolicy owns retrying.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import ConfigurationError, MissingExtraError, ModelError, TransientModelError
from . import check_network_allowed
from ._sdk import LOOPBACK_KEY, SDKModel, is_loopback
from .base import Message, ModelRequest, ModelResponse, ToolCall, Usage

__all__ = ["AnthropicModel"]


DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires ``max_tokens``; used when the request leaves it unset."""


class AnthropicModel(SDKModel):
    """A Model served through ``AsyncAnthropic().messages.create``.

    ``client`` injects a ready ``AsyncAnthropic`` (its own settings win over
    ``base_url`` / ``api_key`` / ``timeout``); otherwise one is built with
    ``max_retries=0``. Call ``aclose()`` to release the connection pool.
    """

    provider = "anthropic"

    def __init__(
        self,
        name: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: Any = None,
        timeout: float = 60.0,
    ) -> None:
        try:
            import anthropic
        except ImportError:
            raise MissingExtraError("anthropic", "AnthropicModel") from None
        self.name = name
        self._sdk: Any = anthropic
        self._owns_client = client is None
        if client is None:
            base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
            api_key = api_key or os.environ.get("ANTHROPIC_API_KEY") or None
            if (
                api_key is None
                and not os.environ.get("ANTHROPIC_AUTH_TOKEN")
                and is_loopback(base_url)
            ):
                api_key = LOOPBACK_KEY
            # api_key=None lets the SDK find other credentials (auth token, profiles).
            try:
                client = anthropic.AsyncAnthropic(
                    base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0
                )
            except anthropic.AnthropicError as exc:  # e.g. a broken credentials profile
                raise ConfigurationError(f"AnthropicModel({name!r}): {exc}") from exc
            if not any(getattr(client, a, None) for a in ("api_key", "auth_token", "credentials")):
                # the SDK would only fail at the first request, with a bare TypeError
                raise ConfigurationError(
                    f"AnthropicModel({name!r}): no credentials; pass api_key= or set "
                    "ANTHROPIC_API_KEY"
                )
        self._client: Any = client

    async def generate(self, request: ModelRequest) -> ModelResponse:
        check_network_allowed(self.base_url)
        params = self._params(request)
        try:
            message = await self._client.messages.create(**params)
        except self._sdk.AnthropicError as exc:
            raise self._map_error(exc) from exc
        return self._response(message)

    # -- request -----------------------------------------------------------

    def _params(self, request: ModelRequest) -> dict[str, Any]:
        system = [m.content for m in request.messages if m.role == "system" and m.content]
        params: dict[str, Any] = {
            "model": self.name,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": _turns(request.messages),
        }
        if system:
            params["system"] = "\n\n".join(system)
        if request.tools:
            params["tools"] = [
                {
                    "name": tool.name,
                    **({"description": tool.description} if tool.description else {}),
                    "input_schema": tool.parameters,
                }
                for tool in request.tools
            ]
        if request.output_schema is not None:
            try:
                schema = self._sdk.transform_schema(request.output_schema)
            except ValueError as exc:  # e.g. a field typed Any: no "type" to constrain
                raise ConfigurationError(
                    f"{self.name}: output schema {request.output_name!r} cannot be "
                    f"expressed in Anthropic's JSON-schema mode: {exc}"
                ) from exc
            params["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        if request.temperature is not None:
            # anthropic>=1.0 dropped the keyword (newer models reject sampling
            # parameters); the API still takes it on models that support it.
            params["extra_body"] = {"temperature": request.temperature}
        return params

    # -- response ----------------------------------------------------------

    def _response(self, message: Any) -> ModelResponse:
        if message.stop_reason == "refusal":
            raise ModelError(f"{self.name} refused to answer")
        texts: list[str] = []
        calls: list[ToolCall] = []
        for block in message.content:
            if block.type == "text":
                texts.append(block.text)
            elif block.type == "tool_use":
                calls.append(_tool_call(block.id, block.name, block.input))
        usage = message.usage
        return ModelResponse(
            content="".join(texts) if texts else None,
            tool_calls=calls,
            usage=Usage(
                input_tokens=usage.input_tokens if usage else 0,
                output_tokens=usage.output_tokens if usage else 0,
                model_calls=1,
            ),
            model=message.model or self.name,
        )

    def _map_error(self, exc: Exception) -> ModelError:
        sdk = self._sdk
        transient = (
            sdk.RateLimitError,
            sdk.APITimeoutError,
            sdk.APIConnectionError,
            sdk.InternalServerError,  # 5xx, including OverloadedError (529) in anthropic 2.x
        )
        status = getattr(exc, "status_code", None)
        # 408 is a server-side timeout; 529 covers SDKs without an OverloadedError class.
        if isinstance(exc, transient) or status in (408, 529):
            return TransientModelError(f"{self.name}: {exc}")
        return ModelError(f"{self.name}: {exc}")


def _turns(messages: list[Message]) -> list[dict[str, Any]]:
    """Map messages to alternating turns; adjacent same-role blocks share one turn.

    That merge is what puts consecutive tool results into one user message,
    as the API requires after an assistant turn with several tool calls.
    """
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        role = "assistant" if message.role == "assistant" else "user"
        blocks: list[dict[str, Any]] = []
        if message.role == "tool":
            blocks.append(
                {
                    "type": "tool_result",
                    "tool_use_id": message.tool_call_id or "",
                    "content": message.content,
                }
            )
        else:
            if message.content or not message.tool_calls:  # the API rejects empty text
                blocks.append({"type": "text", "text": message.content})
            blocks.extend(
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.name,
                    "input": call.arguments if call.arguments is not None else {},
                }
                for call in message.tool_calls
            )
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:  # a lone text block reads better (and logs shorter) as a string
        content = turn["content"]
        if len(content) == 1 and content[0]["type"] == "text":
            turn["content"] = content[0]["text"]
    return turns


def _tool_call(call_id: str, name: str, arguments: object) -> ToolCall:
    """The API sends ``input`` as an object; anything else is kept as raw JSON."""
    if isinstance(arguments, dict):
        return ToolCall(id=call_id, name=name, arguments=arguments)
    return ToolCall(id=call_id, name=name, arguments=None, raw_arguments=json.dumps(arguments))
