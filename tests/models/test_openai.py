"""OpenAIModel against the real ``openai`` SDK over real HTTP to a loopback fake."""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncIterator

import openai
import pytest
from fake_provider_server import (
    FakeProviderServer,
    openai_completion,
    openai_error,
)
from pydantic import BaseModel

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
from typedmesh.models.openai import OpenAIModel


class Report(BaseModel):
    title: str
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
async def model(server: FakeProviderServer) -> AsyncIterator[OpenAIModel]:
    m = OpenAIModel("gpt-4o-mini", base_url=server.openai_base_url)
    yield m
    await m.aclose()


def ask(text: str = "hi", **kwargs: object) -> ModelRequest:
    return ModelRequest(messages=[Message(role="user", content=text)], **kwargs)


async def test_plain_text_request_and_response(
    model: OpenAIModel, server: FakeProviderServer
) -> None:
    server.queue(openai_completion("hello there", prompt_tokens=21, completion_tokens=4))
    request = ModelRequest(
        messages=[
            Message(role="system", content="Be brief."),
            Message(role="user", content="Say hello", name="alice"),
        ],
        temperature=0.2,
        max_tokens=50,
    )

    response = await model.generate(request)

    assert response.content == "hello there"
    assert response.tool_calls == []
    assert response.model == "gpt-4o-mini-2024-07-18"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (21, 4)
    assert response.usage.model_calls == 1
    [sent] = server.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer not-needed"
    assert sent.body == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello", "name": "alice"},
        ],
        "temperature": 0.2,
        "max_tokens": 50,
    }


async def test_structured_output_sends_json_schema(
    model: OpenAIModel, server: FakeProviderServer
) -> None:
    server.queue(openai_completion('{"title": "t", "score": 3}'))
    schema = Report.model_json_schema()

    response = await model.generate(
        ask("rate it", output_schema=schema, output_name="Weekly report.v2")
    )

    assert Report.model_validate_json(response.content or "") == Report(title="t", score=3)
    assert server.bodies[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Weekly_report_v2", "schema": schema, "strict": False},
    }
    assert "tools" not in server.bodies[0]


async def test_tools_sent_as_function_tools(model: OpenAIModel, server: FakeProviderServer) -> None:
    server.queue(openai_completion("no tools needed"))
    bare = ToolSchema(name="now", parameters={"type": "object", "properties": {}})

    await model.generate(ask(tools=[WEATHER, bare]))

    assert server.bodies[0]["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city.",
                "parameters": WEATHER.parameters,
            },
        },
        {"type": "function", "function": {"name": "now", "parameters": bare.parameters}},
    ]


async def test_tool_calls_parsed_including_malformed_arguments(
    model: OpenAIModel, server: FakeProviderServer
) -> None:
    server.queue(
        openai_completion(
            None,
            tool_calls=[
                ("call_1", "get_weather", '{"city": "Oslo"}'),
                ("call_2", "get_weather", '{"city": "Oslo"'),
                ("call_3", "get_weather", "[1, 2]"),
                ("call_4", "now", ""),
            ],
        )
    )

    response = await model.generate(ask(tools=[WEATHER]))

    assert response.content is None
    assert response.tool_calls == [
        ToolCall(id="call_1", name="get_weather", arguments={"city": "Oslo"}),
        ToolCall(id="call_2", name="get_weather", raw_arguments='{"city": "Oslo"'),
        ToolCall(id="call_3", name="get_weather", raw_arguments="[1, 2]"),
        ToolCall(id="call_4", name="now", arguments={}),
    ]


async def test_multi_turn_with_tool_result_is_encoded(
    model: OpenAIModel, server: FakeProviderServer
) -> None:
    server.queue(openai_completion("It is 4 degrees in Oslo."))
    history = [
        Message(role="system", content="You are a weather bot."),
        Message(role="user", content="Weather in Oslo?"),
        Message(
            role="assistant",
            tool_calls=[
                ToolCall(id="call_1", name="get_weather", arguments={"city": "Oslo"}),
                ToolCall(id="call_2", name="get_weather", raw_arguments="{oops"),
            ],
        ),
        Message(role="tool", tool_call_id="call_1", content='{"celsius": 4}'),
        Message(role="tool", tool_call_id="call_2", content="error: bad arguments"),
    ]

    response = await model.generate(ModelRequest(messages=history, tools=[WEATHER]))

    assert response.content == "It is 4 degrees in Oslo."
    assert server.bodies[0]["messages"] == [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{oops"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 4}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "error: bad arguments"},
    ]


async def test_missing_usage_and_model_fall_back(
    model: OpenAIModel, server: FakeProviderServer
) -> None:
    body = openai_completion("ok", model="")
    del body["usage"]  # some compatible servers omit it
    server.queue(body)

    response = await model.generate(ask())

    assert response.model == "gpt-4o-mini"
    assert response.usage.total_tokens == 0
    assert response.usage.model_calls == 1


async def test_refusal_is_a_model_error(model: OpenAIModel, server: FakeProviderServer) -> None:
    body = openai_completion(None)
    body["choices"][0]["message"]["refusal"] = "I can't help with that."
    server.queue(body)

    with pytest.raises(ModelError, match="can't help") as caught:
        await model.generate(ask(output_schema=Report.model_json_schema()))

    error = caught.value
    assert not isinstance(error, TransientModelError)
    assert (error.status, error.error_type, error.provider) == (200, "refusal", "openai")
    assert (error.usage.input_tokens, error.usage.output_tokens) == (11, 7)  # billed all the same


async def test_no_choices_is_a_model_error_with_the_usage(
    model: OpenAIModel, server: FakeProviderServer
) -> None:
    body = openai_completion("unused", prompt_tokens=30, completion_tokens=0)
    body["choices"] = []
    server.queue(body)

    with pytest.raises(ModelError, match="no choices") as caught:
        await model.generate(ask())

    assert caught.value.usage.input_tokens == 30


@pytest.mark.parametrize(
    ("status", "sdk_error"),
    [
        (408, openai.APIStatusError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
async def test_retryable_statuses_are_transient_and_not_retried_by_the_sdk(
    model: OpenAIModel, server: FakeProviderServer, status: int, sdk_error: type[Exception]
) -> None:
    server.queue(openai_error("slow down", type="server_error"), status=status)

    with pytest.raises(TransientModelError) as caught:
        await model.generate(ask())

    assert isinstance(caught.value.__cause__, sdk_error)
    assert (caught.value.status, caught.value.error_type) == (status, "server_error")
    assert caught.value.provider == "openai"
    assert caught.value.retry_after is None  # the server did not say
    assert len(server.requests) == 1  # max_retries=0: typedmesh's RetryPolicy retries


@pytest.mark.parametrize("status", [400, 401, 404])
async def test_client_errors_are_permanent(
    model: OpenAIModel, server: FakeProviderServer, status: int
) -> None:
    server.queue(openai_error("bad request"), status=status)

    with pytest.raises(ModelError) as caught:
        await model.generate(ask())

    assert not isinstance(caught.value, TransientModelError)
    assert isinstance(caught.value.__cause__, openai.APIStatusError)
    assert caught.value.__cause__.status_code == status
    assert (caught.value.status, caught.value.error_type) == (status, "invalid_request_error")
    assert caught.value.provider == "openai"
    assert len(server.requests) == 1


async def test_connection_refused_is_transient() -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    m = OpenAIModel("gpt-4o-mini", base_url=f"http://127.0.0.1:{port}/v1")
    try:
        with pytest.raises(TransientModelError) as caught:
            await m.generate(ask())
        assert isinstance(caught.value.__cause__, openai.APIConnectionError)
        assert (caught.value.status, caught.value.error_type) == (None, "connection_error")
    finally:
        await m.aclose()


async def test_resolve_model_returns_a_working_model(server: FakeProviderServer) -> None:
    server.queue(openai_completion("resolved"))
    m = resolve_model("openai:gpt-4o-mini", base_url=server.openai_base_url)
    assert isinstance(m, OpenAIModel)
    try:
        assert isinstance(m, Model)
        assert (m.name, m.provider) == ("gpt-4o-mini", "openai")
        assert (await m.generate(ask())).content == "resolved"
    finally:
        await m.aclose()
    assert server.bodies[0]["model"] == "gpt-4o-mini"


async def test_env_base_url_and_key(
    server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    server.queue(openai_completion("from env"))
    m = OpenAIModel("gpt-4o-mini")
    try:
        assert (await m.generate(ask())).content == "from env"
    finally:
        await m.aclose()
    assert server.requests[0].headers["authorization"] == "Bearer sk-from-env"


async def test_injected_client_is_used_and_left_open(server: FakeProviderServer) -> None:
    client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="sk-own", max_retries=0)
    server.queue(openai_completion("injected"))
    m = OpenAIModel("gpt-4o-mini", client=client)
    try:
        assert (await m.generate(ask())).content == "injected"
        await m.aclose()
        assert not client.is_closed()
    finally:
        await client.close()
    assert server.requests[0].headers["authorization"] == "Bearer sk-own"


@pytest.mark.parametrize("base_url", [None, "https://llm.example.com/v1"])
async def test_kill_switch_refuses_remote_hosts_before_any_request(
    monkeypatch: pytest.MonkeyPatch, base_url: str | None
) -> None:
    monkeypatch.setattr(typedmesh.models, "ALLOW_NETWORK", False)
    m = OpenAIModel("gpt-4o-mini", base_url=base_url, api_key="sk-test")
    try:
        with pytest.raises(ModelError, match="network calls are disabled") as caught:
            await m.generate(ask())
        assert not isinstance(caught.value, TransientModelError)
        assert caught.value.__cause__ is None  # refused before the SDK ran
    finally:
        await m.aclose()


async def test_kill_switch_allows_loopback(
    model: OpenAIModel, server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(typedmesh.models, "ALLOW_NETWORK", False)
    server.queue(openai_completion("local is fine"))

    assert (await model.generate(ask())).content == "local is fine"


def test_hosted_endpoint_without_key_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="gpt-4o-mini"):
        OpenAIModel("gpt-4o-mini")


def test_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)  # makes `import openai` fail

    with pytest.raises(MissingExtraError, match=r"typedmesh\[openai\]"):
        OpenAIModel("gpt-4o-mini", base_url="http://127.0.0.1:1/v1")
