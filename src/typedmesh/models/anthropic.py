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

SDK retries are off (``max_retries=0``): typedmesh's RetryPolicy owns retrying,
and every attempt is journaled and counted by the run context. Errors carry the
status, the provider's error type (``overloaded_error``, ...) and any
``Retry-After`` as fields. The model keeps settings, not a client: each event
loop gets its own client (see ``models/_sdk.py``), so it survives many
``tm.run`` calls and pickling.

When someone listens for token deltas (``tm.stream``, ``typedmesh run
--follow``; see ``models/streaming.py``) the call goes through the SDK's
``messages.stream``: each ``text_delta`` is handed on as it arrives and the
SDK's final message becomes the same ``ModelResponse`` a plain call returns.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from ..errors import ConfigurationError, MissingExtraError, ModelError
from . import check_network_allowed
from ._sdk import LOOPBACK_KEY, SDKModel, is_loopback, map_sdk_error, shared_ssl_context
from .base import Message, ModelRequest, ModelResponse, ModelSettings, ToolCall, Usage
from .streaming import broken_stream, emit_delta, emit_tool_delta, safe_listener, wants_deltas

__all__ = ["AnthropicModel"]


DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires ``max_tokens``; used when the request leaves it unset."""


class AnthropicModel(SDKModel):
    """A Model served through ``AsyncAnthropic().messages.create``.

    ``base_url`` / ``api_key`` default to ``ANTHROPIC_BASE_URL`` /
    ``ANTHROPIC_API_KEY`` (or the SDK's other credentials; read in each
    process); ``timeout`` (seconds per request) defaults to
    ``typedmesh.models.default_timeout()``. A client is built for each event
    loop that calls, with ``max_retries=0``, and closed when the loop ends;
    ``aclose()`` closes the current loop's client at once. ``client`` injects a
    ready ``AsyncAnthropic`` instead (its own settings win over ``base_url`` /
    ``api_key``; an explicit ``timeout`` still applies per request); it is the
    caller's to close, and such a model cannot be pickled.
    """

    provider = "anthropic"

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
            import anthropic  # noqa: F401
        except ImportError:
            raise MissingExtraError("anthropic", "AnthropicModel") from None
        super().__init__(name, base_url=base_url, api_key=api_key, client=client, timeout=timeout)

    def _build_client(self) -> Any:
        import anthropic

        name = self.name
        base_url = self._base_url_arg or os.environ.get("ANTHROPIC_BASE_URL") or None
        api_key = self._api_key_arg or os.environ.get("ANTHROPIC_API_KEY") or None
        if api_key is None and not os.environ.get("ANTHROPIC_AUTH_TOKEN") and is_loopback(base_url):
            api_key = LOOPBACK_KEY
        # api_key=None lets the SDK find other credentials (auth token, profiles).
        timeout = self.timeout
        try:
            client = anthropic.AsyncAnthropic(
                base_url=base_url,
                api_key=api_key,
                timeout=timeout,
                max_retries=0,
                http_client=anthropic.DefaultAsyncHttpxClient(
                    verify=shared_ssl_context(), timeout=timeout
                ),
            )
        except anthropic.AnthropicError as exc:  # e.g. a broken credentials profile
            raise ConfigurationError(f"AnthropicModel({name!r}): {exc}") from exc
        if not any(getattr(client, a, None) for a in ("api_key", "auth_token", "credentials")):
            # the SDK would only fail at the first request, with a bare TypeError
            raise ConfigurationError(
                f"AnthropicModel({name!r}): no credentials; pass api_key= or set ANTHROPIC_API_KEY"
            )
        return client

    async def generate(self, request: ModelRequest) -> ModelResponse:
        import anthropic

        if wants_deltas():  # someone is watching: stream, answer the same response
            return await self.generate_stream(request)
        client = await self._client()
        check_network_allowed(str(client.base_url))
        params = self._params(request)
        try:
            message = await client.messages.create(**params, **self._request_options())
        except anthropic.AnthropicError as exc:
            raise map_sdk_error(
                anthropic, exc, provider=self.provider, model=self.name, usage_of=_usage_of_body
            ) from exc
        return self._response(message)

    async def generate_stream(
        self, request: ModelRequest, on_delta: Callable[[str], None] = emit_delta
    ) -> ModelResponse:
        """Stream the answer, handing each piece of text to ``on_delta`` as it arrives;
        return the complete response, as ``generate`` would."""
        import anthropic

        client = await self._client()
        check_network_allowed(str(client.base_url))
        params = self._params(request)
        listener = safe_listener(on_delta)
        try:
            tools = on_delta is emit_delta  # a run's listener hears tool arguments too
            names: dict[int, str] = {}
            async with client.messages.stream(**params, **self._request_options()) as stream:
                async for event in stream:
                    if event.type == "content_block_delta" and event.delta.type == "text_delta":
                        listener(event.delta.text)
                    elif not tools:
                        continue
                    elif event.type == "content_block_start":
                        block = event.content_block
                        if getattr(block, "type", None) == "tool_use":
                            names[event.index] = block.name
                    elif (
                        event.type == "content_block_delta"
                        and event.delta.type == "input_json_delta"
                        and event.index in names
                    ):
                        call = sorted(names).index(event.index)
                        emit_tool_delta(call, names[event.index], event.delta.partial_json)
                message = await stream.get_final_message()
        except anthropic.AnthropicError as exc:
            raise map_sdk_error(
                anthropic, exc, provider=self.provider, model=self.name, usage_of=_usage_of_body
            ) from exc
        except Exception as exc:
            broken = broken_stream(exc, provider=self.provider, model=self.name)
            if broken is None:
                raise
            raise broken from exc
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
            import anthropic

            try:
                schema = anthropic.transform_schema(request.output_schema)
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
        if request.settings is not None:
            _apply_settings(params, request.settings)
        return params

    # -- response ----------------------------------------------------------

    def _response(self, message: Any) -> ModelResponse:
        usage = _usage(message.usage)
        if message.stop_reason == "refusal":
            # billed all the same: the usage goes with the error so the run counts it
            raise ModelError(
                f"{self.name} refused to answer",
                status=200,
                error_type="refusal",
                provider=self.provider,
                usage=usage,
            )
        texts: list[str] = []
        calls: list[ToolCall] = []
        for block in message.content:
            if block.type == "text":
                texts.append(block.text)
            elif block.type == "tool_use":
                calls.append(_tool_call(block.id, block.name, block.input))
        return ModelResponse(
            content="".join(texts) if texts else None,
            tool_calls=calls,
            usage=usage,
            model=message.model or self.name,
            truncated=message.stop_reason == "max_tokens",
        )


def _apply_settings(params: dict[str, Any], settings: ModelSettings) -> None:
    """Provider settings into the request. ``top_p``/``top_k`` go in the body, as
    ``temperature`` does (the SDK dropped the keywords); ``stop`` is
    ``stop_sequences``; ``reasoning_effort`` is ``output_config.effort``; the
    extras go in the body as they are. Anthropic has no ``seed``: it is skipped."""
    body: dict[str, Any] = params.get("extra_body", {})
    if settings.top_p is not None:
        body["top_p"] = settings.top_p
    if settings.top_k is not None:
        body["top_k"] = settings.top_k
    if settings.stop is not None:
        params["stop_sequences"] = list(settings.stop)
    if settings.reasoning_effort is not None:
        params["output_config"] = {
            **params.get("output_config", {}),
            "effort": settings.reasoning_effort,
        }
    body.update(settings.extra)
    if body:
        params["extra_body"] = body


def _usage(usage: Any) -> Usage:
    return Usage(
        input_tokens=(getattr(usage, "input_tokens", 0) or 0) if usage else 0,
        output_tokens=(getattr(usage, "output_tokens", 0) or 0) if usage else 0,
        model_calls=1,
    )


def _usage_of_body(body: object) -> Usage | None:
    """The usage in a raw message body the SDK could not read, if any."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    given, produced = usage.get("input_tokens"), usage.get("output_tokens")
    return Usage(
        input_tokens=given if isinstance(given, int) else 0,
        output_tokens=produced if isinstance(produced, int) else 0,
        model_calls=1,
    )


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
