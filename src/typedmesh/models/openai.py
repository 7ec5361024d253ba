"""OpenAI chat-completions provider, also for any OpenAI-compatible server.

One class covers api.openai.com and local servers (vLLM, llama.cpp, Ollama)
reached through ``base_url`` / ``OPENAI_BASE_URL``, so it sticks to the chat
completions API that they all speak. The SDK's own retries are off: typedmesh's
RetryPolicy owns retrying, and this module only sorts SDK errors into
``TransientModelError`` (worth retrying) and ``ModelError`` (not), with the
status, the provider's error type and any ``Retry-After`` as fields. The
model keeps settings, not a client: each event loop gets its own client
(see ``models/_sdk.py``), so it survives many ``tm.run`` calls and pickling.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from ..errors import ConfigurationError, MissingExtraError, ModelError
from . import check_network_allowed
from ._sdk import LOOPBACK_KEY, SDKModel, is_loopback, map_sdk_error, shared_ssl_context
from .base import Message, ModelRequest, ModelResponse, ToolCall, Usage

__all__ = ["OpenAIModel"]


def _schema_name(name: str) -> str:
    """``json_schema.name`` must match ``^[a-zA-Z0-9_-]{1,64}$`` or the API answers 400."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:64] or "output"


class OpenAIModel(SDKModel):
    """A Model served through ``AsyncOpenAI().chat.completions.create``.

    ``base_url`` / ``api_key`` default to ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``
    (read in each process); ``timeout`` (seconds per request) defaults to
    ``typedmesh.models.default_timeout()``. A client is built for each event
    loop that calls, with ``max_retries=0``, and closed when the loop ends;
    ``aclose()`` closes the current loop's client at once. ``client`` injects a
    ready ``AsyncOpenAI`` instead (its own settings win over ``base_url`` /
    ``api_key``; an explicit ``timeout`` still applies per request); it is the
    caller's to close, and such a model cannot be pickled.
    """

    provider = "openai"

    def __init__(
        self,
        name: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: Any = None,
        timeout: float | None = None,
    ) -> None:
        try:
            import openai  # noqa: F401
        except ImportError:
            raise MissingExtraError("openai", "OpenAIModel") from None
        super().__init__(name, base_url=base_url, api_key=api_key, client=client, timeout=timeout)

    def _build_client(self) -> Any:
        import openai

        base_url = self._base_url_arg or os.environ.get("OPENAI_BASE_URL") or None
        api_key = self._api_key_arg or os.environ.get("OPENAI_API_KEY") or None
        if api_key is None and is_loopback(base_url):
            api_key = LOOPBACK_KEY
        timeout = self.timeout
        try:
            return openai.AsyncOpenAI(
                base_url=base_url,
                api_key=api_key,
                timeout=timeout,
                max_retries=0,
                http_client=openai.DefaultAsyncHttpxClient(
                    verify=shared_ssl_context(), timeout=timeout
                ),
            )
        except openai.OpenAIError as exc:  # e.g. no API key for a hosted endpoint
            raise ConfigurationError(f"OpenAIModel({self.name!r}): {exc}") from exc

    async def generate(self, request: ModelRequest) -> ModelResponse:
        import openai

        client = await self._client()
        check_network_allowed(str(client.base_url))
        try:
            completion = await client.chat.completions.create(
                **self._params(request), **self._request_options()
            )
        except openai.OpenAIError as exc:
            raise map_sdk_error(
                openai, exc, provider=self.provider, model=self.name, usage_of=_usage_of_body
            ) from exc
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
        usage = _usage(completion.usage)
        if not completion.choices:
            raise self._unusable("the response has no choices", usage)
        message = completion.choices[0].message
        if getattr(message, "refusal", None) and not message.content:
            raise self._unusable(f"refused: {message.refusal}", usage, error_type="refusal")
        calls = [
            _tool_call(call.id, call.function.name, call.function.arguments)
            for call in message.tool_calls or []
            if getattr(call, "function", None) is not None
        ]
        return ModelResponse(
            content=message.content,
            tool_calls=calls,
            usage=usage,
            model=completion.model or self.name,
        )

    def _unusable(self, what: str, usage: Usage, *, error_type: str | None = None) -> ModelError:
        """An answer that arrived, and was billed, but cannot be used: its usage goes along."""
        return ModelError(
            f"{self.name}: {what}",
            status=200,
            error_type=error_type,
            provider=self.provider,
            usage=usage,
        )


def _usage(usage: Any) -> Usage:
    return Usage(
        input_tokens=(getattr(usage, "prompt_tokens", 0) or 0) if usage else 0,
        output_tokens=(getattr(usage, "completion_tokens", 0) or 0) if usage else 0,
        model_calls=1,
    )


def _usage_of_body(body: object) -> Usage | None:
    """The usage in a raw chat.completion body the SDK could not read, if any."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return Usage(
        input_tokens=prompt if isinstance(prompt, int) else 0,
        output_tokens=completion if isinstance(completion, int) else 0,
        model_calls=1,
    )


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
