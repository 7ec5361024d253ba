"""OpenAI chat-completions provider, also for any OpenAI-compatible server.

One class covers api.openai.com and local servers (vLLM, llama.cpp, Ollama)
reached through ``base_url`` / ``OPENAI_BASE_URL``, so it sticks to the chat
completions API that they all speak. The SDK's own retries are off: typedmesh's
RetryPolicy owns retrying, and this module only sorts SDK errors into
``TransientModelError`` (worth retrying) and ``ModelError`` (not).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from ..errors import ConfigurationError, MissingExtraError, ModelError, TransientModelError
from . import check_network_allowed
from ._sdk import LOOPBACK_KEY, SDKModel, is_loopback
from .base import Message, ModelRequest, ModelResponse, ToolCall, Usage

__all__ = ["OpenAIModel"]


def _schema_name(name: str) -> str:
    """``json_schema.name`` must match ``^[a-zA-Z0-9_-]{1,64}$`` or the API answers 400."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:64] or "output"


class OpenAIModel(SDKModel):
    """A Model served through ``AsyncOpenAI().chat.completions.create``.

    ``client`` injects a ready ``AsyncOpenAI`` (its own settings win over
    ``base_url`` / ``api_key`` / ``timeout``); otherwise one is built with
    ``max_retries=0``. Call ``aclose()`` to release the connection pool.
    """

    provider = "openai"

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
            import openai
        except ImportError:
            raise MissingExtraError("openai", "OpenAIModel") from None
        self.name = name
        self._sdk: Any = openai
        self._owns_client = client is None
        if client is None:
            base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
            api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
            if api_key is None and is_loopback(base_url):
                api_key = LOOPBACK_KEY
            try:
                client = openai.AsyncOpenAI(
                    base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0
                )
            except openai.OpenAIError as exc:  # e.g. no API key for a hosted endpoint
                raise ConfigurationError(f"OpenAIModel({name!r}): {exc}") from exc
        self._client: Any = client

    async def generate(self, request: ModelRequest) -> ModelResponse:
        check_network_allowed(self.base_url)
        try:
            completion = await self._client.chat.completions.create(**self._params(request))
        except self._sdk.OpenAIError as exc:
            raise self._map_error(exc) from exc
        return self._response(completion)

    # -- request -----------------------------------------------------------

    def _params(self, request: ModelRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.name,
            "messages": [_message(m) for m in request.messages],
        }
        if request.tools:
            params["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        **({"description": tool.description} if tool.description else {}),
                        "parameters": tool.parameters,
                    },
                }
                for tool in request.tools
            ]
        if request.output_schema is not None:
            # strict=False: strict mode rejects ordinary pydantic schemas (it wants
            # every property required and additionalProperties false everywhere).
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": _schema_name(request.output_name),
                    "schema": request.output_schema,
                    "strict": False,
                },
            }
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.max_tokens is not None:
            # max_tokens, not max_completion_tokens: it is what compatible servers accept.
            params["max_tokens"] = request.max_tokens
        return params

    # -- response ----------------------------------------------------------

    def _response(self, completion: Any) -> ModelResponse:
        if not completion.choices:
            raise ModelError(f"{self.name}: the response has no choices")
        message = completion.choices[0].message
        if getattr(message, "refusal", None) and not message.content:
            raise ModelError(f"{self.name} refused: {message.refusal}")
        calls = [
            _tool_call(call.id, call.function.name, call.function.arguments)
            for call in message.tool_calls or []
            if getattr(call, "function", None) is not None
        ]
        usage = completion.usage
        return ModelResponse(
            content=message.content,
            tool_calls=calls,
            usage=Usage(
                input_tokens=(usage.prompt_tokens or 0) if usage else 0,
                output_tokens=(usage.completion_tokens or 0) if usage else 0,
                model_calls=1,
            ),
            model=completion.model or self.name,
        )

    def _map_error(self, exc: Exception) -> ModelError:
        sdk = self._sdk
        transient = (
            sdk.RateLimitError,
            sdk.APITimeoutError,
            sdk.APIConnectionError,
            sdk.InternalServerError,
        )
        status = getattr(exc, "status_code", None)  # 408: a server-side timeout
        if isinstance(exc, transient) or status == 408:
            return TransientModelError(f"{self.name}: {exc}")
        return ModelError(f"{self.name}: {exc}")


def _message(message: Message) -> dict[str, Any]:
    if message.role == "tool":
        return {
            "role": "tool",
            "tool_call_id": message.tool_call_id or "",
            "content": message.content,
        }
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name:
        out["name"] = message.name
    if message.role == "assistant" and message.tool_calls:
        out["content"] = message.content or None  # the API's own shape for a pure tool turn
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {
                    "name": call.name,
                    "arguments": json.dumps(call.arguments)
                    if call.arguments is not None
                    else (call.raw_arguments or "{}"),
                },
            }
            for call in message.tool_calls
        ]
    return out


def _tool_call(call_id: str, name: str, raw: str | None) -> ToolCall:
    """Parse arguments; keep the raw text when it is not a JSON object."""
    text = raw or ""
    if not text.strip():  # some servers send "" for a tool without parameters
        return ToolCall(id=call_id, name=name, arguments={})
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        return ToolCall(id=call_id, name=name, arguments=parsed)
    return ToolCall(id=call_id, name=name, arguments=None, raw_arguments=text)
