"""OpenAI chat-completions provider, also for any OpenAI-compatible server.

One class covers api.openai.com and local servers (vLLM, llama.cpp, Ollama)
reached through ``base_url`` / ``OPENAI_BASE_URL``, so it sticks to the chat
completions API that they all speak. The SDK's own retries are off: typedmesh's
RetryPolicy owns retrying, and this module only sorts SDK errors into
``TransientModelError`` (worth retrying) and ``ModelError`` (not), with the
status, the provider's error type and any ``Retry-After`` as fields. The
model keeps settings, not a client: each event loop gets its own client
(see ``models/_sdk.py``), so it survives many ``tm.run`` calls and pickling.

When someone listens for token deltas (``tm.stream``, ``typedmesh run
--follow``; see ``models/streaming.py``) the call is made with ``stream=True``
and ``stream_options.include_usage``; the chunks are put back together into
the same ``ModelResponse`` a plain call returns, so the journal cannot tell
the two apart. Servers that send no usage in a stream leave it at zero.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError, MissingExtraError, ModelError
from . import check_network_allowed
from ._sdk import LOOPBACK_KEY, SDKModel, is_loopback, map_sdk_error, shared_ssl_context
from .base import Message, ModelRequest, ModelResponse, ModelSettings, ToolCall, Usage
from .streaming import broken_stream, emit_delta, emit_tool_delta, safe_listener, wants_deltas

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

        if wants_deltas():  # someone is watching: stream, answer the same response
            return await self.generate_stream(request)
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

    async def generate_stream(
        self, request: ModelRequest, on_delta: Callable[[str], None] = emit_delta
    ) -> ModelResponse:
        """Stream the answer, handing each piece of text to ``on_delta`` as it arrives;
        return the complete response, as ``generate`` would."""
        import openai

        client = await self._client()
        check_network_allowed(str(client.base_url))
        listener = safe_listener(on_delta)
        parts = _Chunks()
        try:
            stream = await client.chat.completions.create(
                **self._params(request),
                stream=True,
                stream_options={"include_usage": True},
                **self._request_options(),
            )
            tools = on_delta is emit_delta  # a run's listener hears tool arguments too
            async with stream:
                async for chunk in stream:
                    text = parts.add(chunk)
                    if text:
                        listener(text)
                    for call, name, piece in parts.drain_tool_pieces():
                        if tools:
                            emit_tool_delta(call, name, piece)
        except openai.OpenAIError as exc:
            raise map_sdk_error(
                openai, exc, provider=self.provider, model=self.name, usage_of=_usage_of_body
            ) from exc
        except Exception as exc:
            broken = broken_stream(exc, provider=self.provider, model=self.name)
            if broken is None:
                raise
            raise broken from exc
        return self._answer(
            parts.chosen,
            parts.content(),
            "".join(parts.refusal) or None,
            parts.tool_calls(),
            _usage(parts.usage),
            parts.model,
            parts.finish_reason == "length",
        )

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
        if request.settings is not None:
            _apply_settings(params, request.settings)
        return params

    # -- response ----------------------------------------------------------

    def _response(self, completion: Any) -> ModelResponse:
        usage = _usage(completion.usage)
        if not completion.choices:
            return self._answer(False, None, None, [], usage, completion.model)
        message = completion.choices[0].message
        calls = [
            _tool_call(call.id, call.function.name, call.function.arguments)
            for call in message.tool_calls or []
            if getattr(call, "function", None) is not None
        ]
        refusal = getattr(message, "refusal", None)
        cut = completion.choices[0].finish_reason == "length"
        return self._answer(True, message.content, refusal, calls, usage, completion.model, cut)

    def _answer(
        self,
        chosen: bool,
        content: str | None,
        refusal: str | None,
        calls: list[ToolCall],
        usage: Usage,
        model: str | None,
        truncated: bool = False,
    ) -> ModelResponse:
        """The response from its parts, whether they came in one body or in chunks."""
        if not chosen:
            raise self._unusable("the response has no choices", usage)
        if refusal and not content:
            raise self._unusable(f"refused: {refusal}", usage, error_type="refusal")
        return ModelResponse(
            content=content,
            tool_calls=calls,
            usage=usage,
            model=model or self.name,
            truncated=truncated,
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


@dataclass(slots=True)
class _Call:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Chunks:
    """A streamed chat completion put back together, chunk by chunk (first choice only)."""

    chosen: bool = False
    texts: list[str] | None = None
    refusal: list[str] = field(default_factory=list)
    calls: dict[int, _Call] = field(default_factory=dict)
    usage: Any = None
    model: str | None = None
    finish_reason: str | None = None
    pieces: list[tuple[int, str, str]] = field(default_factory=list)
    """Tool-argument pieces not yet handed on: (call, tool name, text)."""

    def drain_tool_pieces(self) -> list[tuple[int, str, str]]:
        pieces, self.pieces = self.pieces, []
        return pieces

    def add(self, chunk: Any) -> str:
        """Take one chunk in; the text it adds to the answer."""
        if chunk.model and not self.model:
            self.model = chunk.model
        if getattr(chunk, "usage", None) is not None:
            self.usage = chunk.usage
        added = ""
        for choice in chunk.choices or []:
            if choice.index != 0:
                continue
            self.chosen = True
            if getattr(choice, "finish_reason", None):
                self.finish_reason = choice.finish_reason
            delta = choice.delta
            if delta is None:
                continue
            if delta.content is not None:
                if self.texts is None:
                    self.texts = []
                self.texts.append(delta.content)
                added += delta.content
            if getattr(delta, "refusal", None):
                self.refusal.append(delta.refusal)
            for piece in delta.tool_calls or []:
                call = self.calls.setdefault(piece.index, _Call())
                if piece.id:
                    call.id = piece.id
                function = piece.function
                if function is not None:
                    if function.name and not call.name:
                        call.name = function.name
                    if function.arguments:
                        call.arguments.append(function.arguments)
                        self.pieces.append((piece.index, call.name, function.arguments))
        return added

    def content(self) -> str | None:
        return None if self.texts is None else "".join(self.texts)

    def tool_calls(self) -> list[ToolCall]:
        return [
            _tool_call(call.id, call.name, "".join(call.arguments))
            for _, call in sorted(self.calls.items())
            if call.name
        ]


def _apply_settings(params: dict[str, Any], settings: ModelSettings) -> None:
    """Provider settings into the request: what the API names as keywords, the
    provider-specific extras in the body (OpenAI has no ``top_k``: it is skipped)."""
    if settings.top_p is not None:
        params["top_p"] = settings.top_p
    if settings.seed is not None:
        params["seed"] = settings.seed
    if settings.stop is not None:
        params["stop"] = list(settings.stop)
    if settings.reasoning_effort is not None:
        params["reasoning_effort"] = settings.reasoning_effort
    if settings.extra:
        params["extra_body"] = dict(settings.extra)


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
