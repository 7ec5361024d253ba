"""AnthropicModel against the real ``anthropic`` SDK over real HTTP to a loopback fake."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import pytest
from fake_provider_server import (
    FakeProviderServer,
    anthropic_error,
    anthropic_message,
)
from pydantic import BaseModel, Field

import typedmesh.models
from typedmesh.errors import (
    ConfigurationError,
    MissingExtraError,
    ModelError,
    TransientModelError,
)
from typedmesh.models import (
    Message,
    Model,
    ModelRequest,
    ToolCall,
    ToolSchema,
    resolve_model,
)
from typedmesh.models.anthropic import DEFAULT_MAX_TOKENS, AnthropicModel

MODEL = "claude-haiku-4-5"


class Report(BaseModel):
    title: str = Field(min_length=1)
    score: int


WEATHER = ToolSchema(
    name="get_weather",
    description="Current weather for a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)


@pytest.fixture
async def model(server: FakeProviderServer) -> AsyncIterator[AnthropicModel]:
    m = AnthropicModel(MODEL, base_url=server.anthropic_base_url)
    yield m
    await m.aclose()


def ask(text: str = "hi", **kwargs: object) -> ModelRequest:
    return ModelRequest(messages=[Message(role="user", content=text)], **kwargs)


async def test_plain_text_request_and_response(
    model: AnthropicModel, server: FakeProviderServer
) -> None:
    server.queue(anthropic_message("hello there", input_tokens=21, output_tokens=4))
    request = ModelRequest(
        messages=[
            Message(role="system", content="Be brief."),
            Message(role="system", content="Be kind."),
            Message(role="user", content="Say hello"),
        ],
        temperature=0.2,
    )

    response = await model.generate(request)

    assert response.content == "hello there"
    assert response.tool_calls == []
    assert response.model == "claude-haiku-4-5-20251001"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (21, 4)
    assert response.usage.model_calls == 1
    [sent] = server.requests
    assert sent.path == "/v1/messages"
    assert (
        sent.headers["authorization"] == "Bearer not-needed"
    )  # anthropic>=2 sends the key as a bearer token
    assert "anthropic-version" in sent.headers
    assert sent.body == {
        "model": MODEL,
        "max_tokens": DEFAULT_MAX_TOKENS,
        "system": "Be brief.\n\nBe kind.",
        "messages": [{"role": "user", "content": "Say hello"}],
        "temperature": 0.2,
    }


async def test_request_max_tokens_wins_over_default(
    model: AnthropicModel, server: FakeProviderServer
) -> None:
    server.queue(anthropic_message("ok"))

    await model.generate(ask(max_tokens=77))

    assert server.bodies[0]["max_tokens"] == 77


async def test_structured_output_uses_native_json_schema(
    model: AnthropicModel, server: FakeProviderServer
) -> None:
    server.queue(anthropic_message('{"title": "t", "score": 3}'))

    response = await model.generate(ask(output_schema=Report.model_json_schema()))

    assert Report.model_validate_json(response.content or "") == Report(title="t", score=3)
    body = server.bodies[0]
    assert "tools" not in body and "tool_choice" not in body
    fmt = body["output_config"]["format"]
    assert fmt["type"] == "json_schema"
    schema = fmt["schema"]
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False  # the API requires it
    assert schema["required"] == ["title", "score"]
    assert schema["properties"]["score"] == {"type": "integer", "title": "Score"}
    # minLength is not accepted by the API: the SDK moves it into the description
    assert "minLength" not in schema["properties"]["title"]
    assert "minLength: 1" in schema["properties"]["title"]["description"]


async def test_structured_output_with_tools_keeps_both(
    model: AnthropicModel, server: FakeProviderServer
) -> None:
    server.queue(anthropic_message('{"title": "t", "score": 1}'))

    await model.generate(ask(output_schema=Report.model_json_schema(), tools=[WEATHER]))

    body = server.bodies[0]
    assert [t["name"] for t in body["tools"]] == ["get_weather"]
    assert body["output_config"]["format"]["type"] == "json_schema"
    assert "tool_choice" not in body  # the model may call tools before answering


async def test_schema_the_native_mode_cannot_express(
    model: AnthropicModel, server: FakeProviderServer
) -> None:
    schema = {"type": "object", "properties": {"anything": {}}}  # a field typed Any

    with pytest.raises(ConfigurationError, match="JSON-schema mode"):
        await model.generate(ask(output_schema=schema))

    assert server.requests == []


async def test_tools_sent_with_input_schema(
    model: AnthropicModel, server: FakeProviderServer
) -> None:
    server.queue(anthropic_message("no tools needed"))
    bare = ToolSchema(name="now", parameters={"type": "object", "properties": {}})

    await model.generate(ask(tools=[WEATHER, bare]))

    assert server.bodies[0]["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "input_schema": WEATHER.parameters,
        },
        {"name": "now", "input_schema": bare.parameters},
    ]


async def test_tool_use_parsed_including_malformed_input(
    model: AnthropicModel, server: FakeProviderServer
) -> None:
    server.queue(
        anthropic_message(
            "Let me check.",
            tool_uses=[
                ("toolu_1", "get_weather", {"city": "Oslo"}),
                ("toolu_2", "get_weather", "city=Oslo"),
                ("toolu_3", "get_weather", [1, 2]),
            ],
        )
    )

    response = await model.generate(ask(tools=[WEATHER]))

    assert response.content == "Let me check."
    assert response.tool_calls == [
        ToolCall(id="toolu_1", name="get_weather", arguments={"city": "Oslo"}),
        ToolCall(id="toolu_2", name="get_weather", raw_arguments='"city=Oslo"'),
        ToolCall(id="toolu_3", name="get_weather", raw_arguments="[1, 2]"),
    ]


async def test_multi_turn_with_tool_results_is_encoded(
    model: AnthropicModel, server: FakeProviderServer
) -> None:
    server.queue(anthropic_message("It is 4 degrees in Oslo and 9 in Rome."))
    history = [
        Message(role="system", content="You are a weather bot."),
        Message(role="user", content="Weather in Oslo and Rome?"),
        Message(
            role="assistant",
            content="Checking both.",
            tool_calls=[
                ToolCall(id="toolu_1", name="get_weather", arguments={"city": "Oslo"}),
                ToolCall(id="toolu_2", name="get_weather", raw_arguments="{oops"),
            ],
        ),
        Message(role="tool", tool_call_id="toolu_1", content='{"celsius": 4}'),
        Message(role="tool", tool_call_id="toolu_2", content='{"celsius": 9}'),
        Message(role="user", content="Answer in one line."),
    ]

    await model.generate(ModelRequest(messages=history, tools=[WEATHER]))

    body = server.bodies[0]
    assert body["system"] == "You are a weather bot."
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking both."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": '{"celsius": 4}'},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": '{"celsius": 9}'},
                {"type": "text", "text": "Answer in one line."},
            ],
        },
    ]


async def test_pure_tool_turn_has_no_empty_text_block(
    model: AnthropicModel, server: FakeProviderServer
) -> None:
    server.queue(anthropic_message("done"))
    history = [
        Message(role="user", content="Weather?"),
        Message(role="assistant", tool_calls=[ToolCall(id="t1", name="now", arguments={})]),
        Message(role="tool", tool_call_id="t1", content="noon"),
    ]

    await model.generate(ModelRequest(messages=history))

    assert server.bodies[0]["messages"][1:] == [
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "now", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "noon"}],
        },
    ]


async def test_refusal_is_a_model_error(model: AnthropicModel, server: FakeProviderServer) -> None:
    server.queue(anthropic_message("", stop_reason="refusal", input_tokens=40, output_tokens=2))

    with pytest.raises(ModelError, match="refused") as caught:
        await model.generate(ask())

    error = caught.value
    assert not isinstance(error, TransientModelError)
    assert (error.status, error.error_type, error.provider) == (200, "refusal", "anthropic")
    assert (error.usage.input_tokens, error.usage.output_tokens) == (40, 2)  # billed all the same


@pytest.mark.parametrize(
    ("status", "error_type", "sdk_error"),
    [
        (408, "timeout_error", anthropic.APIStatusError),
        (429, "rate_limit_error", anthropic.RateLimitError),
        (500, "api_error", anthropic.InternalServerError),
        (529, "overloaded_error", anthropic.InternalServerError),
    ],
)
async def test_retryable_statuses_are_transient_and_not_retried_by_the_sdk(
    model: AnthropicModel,
    server: FakeProviderServer,
    status: int,
    error_type: str,
    sdk_error: type[Exception],
) -> None:
    server.queue(anthropic_error("try later", type=error_type), status=status)

    with pytest.raises(TransientModelError) as caught:
        await model.generate(ask())

    assert isinstance(caught.value.__cause__, sdk_error)
    assert (caught.value.status, caught.value.error_type) == (status, error_type)
    assert caught.value.provider == "anthropic"
    assert len(server.requests) == 1  # max_retries=0: typedmesh's RetryPolicy retries


@pytest.mark.parametrize("status", [400, 401, 404])
async def test_client_errors_are_permanent(
    model: AnthropicModel, server: FakeProviderServer, status: int
) -> None:
    server.queue(anthropic_error("bad request"), status=status)

    with pytest.raises(ModelError) as caught:
        await model.generate(ask())

    assert not isinstance(caught.value, TransientModelError)
    assert isinstance(caught.value.__cause__, anthropic.APIStatusError)
    assert caught.value.__cause__.status_code == status
    assert (caught.value.status, caught.value.error_type) == (status, "invalid_request_error")
    assert caught.value.provider == "anthropic"
    assert len(server.requests) == 1


async def test_resolve_model_returns_a_working_model(server: FakeProviderServer) -> None:
    server.queue(anthropic_message("resolved"))
    m = resolve_model(f"anthropic:{MODEL}", base_url=server.anthropic_base_url)
    assert isinstance(m, AnthropicModel)
    try:
        assert isinstance(m, Model)
        assert (m.name, m.provider) == (MODEL, "anthropic")
        assert (await m.generate(ask())).content == "resolved"
    finally:
        await m.aclose()
    assert server.bodies[0]["model"] == MODEL


async def test_env_base_url_and_key(
    server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.anthropic_base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-env")
    server.queue(anthropic_message("from env"))
    m = AnthropicModel(MODEL)
    try:
        assert (await m.generate(ask())).content == "from env"
    finally:
        await m.aclose()
    assert server.requests[0].headers["authorization"] == "Bearer sk-ant-from-env"


async def test_injected_client_is_used_and_left_open(server: FakeProviderServer) -> None:
    client = anthropic.AsyncAnthropic(
        base_url=server.anthropic_base_url, api_key="sk-ant-own", max_retries=0
    )
    server.queue(anthropic_message("injected"))
    m = AnthropicModel(MODEL, client=client)
    try:
        assert (await m.generate(ask())).content == "injected"
        await m.aclose()
        assert not client.is_closed()
    finally:
        await client.close()
    assert server.requests[0].headers["authorization"] == "Bearer sk-ant-own"


@pytest.mark.parametrize("base_url", [None, "https://llm.example.com"])
async def test_kill_switch_refuses_remote_hosts_before_any_request(
    monkeypatch: pytest.MonkeyPatch, base_url: str | None
) -> None:
    monkeypatch.setattr(typedmesh.models, "ALLOW_NETWORK", False)
    m = AnthropicModel(MODEL, base_url=base_url, api_key="sk-ant-test")
    try:
        with pytest.raises(ModelError, match="network calls are disabled") as caught:
            await m.generate(ask())
        assert not isinstance(caught.value, TransientModelError)
        assert caught.value.__cause__ is None  # refused before the SDK ran
    finally:
        await m.aclose()


async def test_kill_switch_allows_loopback(
    model: AnthropicModel, server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(typedmesh.models, "ALLOW_NETWORK", False)
    server.queue(anthropic_message("local is fine"))

    assert (await model.generate(ask())).content == "local is fine"


def test_hosted_endpoint_without_credentials_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/anthropic profiles either

    with pytest.raises(ConfigurationError, match="ANTHROPIC_API_KEY"):
        AnthropicModel(MODEL)


def test_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "anthropic", None)  # makes `import anthropic` fail

    with pytest.raises(MissingExtraError, match=r"typedmesh\[anthropic\]"):
        AnthropicModel(MODEL, base_url="http://127.0.0.1:1")
