"""Provider failures as typed errors, Retry-After, timeouts, and every attempt counted.

Real HTTP against the keep-alive fake (127.0.0.1 only), through the real SDKs.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Any

import pytest
from fake_provider_server import (
    FakeProviderServer,
    anthropic_message,
    openai_completion,
)
from pydantic import BaseModel

import typedmesh as tm
import typedmesh.models
from typedmesh.errors import ConfigurationError, ModelError, TransientModelError
from typedmesh.models import Message, Model, ModelRequest, resolve_model
from typedmesh.models._sdk import parse_retry_after

PROVIDERS = ["openai", "anthropic"]


class Question(BaseModel):
    text: str


class Answer(BaseModel):
    answer: str


def spec(provider: str, server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch) -> str:
    if provider == "openai":
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        return "openai:gpt-4o-mini"
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.anthropic_base_url)
    return "anthropic:claude-haiku-4-5"


def answer(provider: str, text: str = "ok") -> dict[str, Any]:
    content = Answer(answer=text).model_dump_json()
    if provider == "openai":
        return openai_completion(content, prompt_tokens=10, completion_tokens=4)
    return anthropic_message(content, input_tokens=10, output_tokens=4)


RATE_LIMIT = {"openai": "rate_limit_exceeded", "anthropic": "rate_limit_error"}
BAD_REQUEST = "invalid_request_error"


def ask() -> ModelRequest:
    return ModelRequest(messages=[Message(role="user", content="q")])


def generate(model: Model) -> Any:
    """Run one generate call in a loop of its own, as tm.run does."""
    import asyncio

    return asyncio.run(model.generate(ask()))


# -- typed errors -----------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "0.2"}, 0.2),
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),  # milliseconds win
        ({"Retry-After": "soon"}, None),  # unreadable: as if absent
        ({}, None),
    ],
)
def test_rate_limit_is_transient_with_retry_after(
    provider: str,
    server: FakeProviderServer,
    monkeypatch: pytest.MonkeyPatch,
    headers: dict[str, str],
    expected: float | None,
) -> None:
    model = resolve_model(spec(provider, server, monkeypatch))
    server.queue_error(429, RATE_LIMIT[provider], provider=provider, headers=headers)

    with pytest.raises(TransientModelError) as caught:
        generate(model)

    error = caught.value
    assert (error.status, error.error_type, error.provider) == (
        429,
        RATE_LIMIT[provider],
        provider,
    )
    assert error.retry_after == (pytest.approx(expected) if expected is not None else None)
    assert len(server.requests) == 1  # the SDK did not retry on its own


@pytest.mark.parametrize(
    ("provider", "status", "error_type"),
    [
        ("openai", 500, "server_error"),
        ("openai", 503, "service_unavailable"),
        ("anthropic", 500, "api_error"),
        ("anthropic", 529, "overloaded_error"),
    ],
)
def test_server_errors_are_transient_and_keep_the_provider_type(
    provider: str,
    status: int,
    error_type: str,
    server: FakeProviderServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = resolve_model(spec(provider, server, monkeypatch))
    server.queue_error(status, error_type, provider=provider, retry_after="3")

    with pytest.raises(TransientModelError) as caught:
        generate(model)

    assert (caught.value.status, caught.value.error_type) == (status, error_type)
    assert caught.value.retry_after == 3.0


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("status", [400, 401, 404])
def test_client_errors_are_permanent_with_status_and_type(
    provider: str, status: int, server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = resolve_model(spec(provider, server, monkeypatch))
    server.queue_error(status, BAD_REQUEST, provider=provider, retry_after="1")

    with pytest.raises(ModelError) as caught:
        generate(model)

    error = caught.value
    assert not isinstance(error, TransientModelError)
    assert (error.status, error.error_type, error.provider) == (status, BAD_REQUEST, provider)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_x_should_retry_overrides_the_status(
    provider: str, server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The providers' own hint, which their SDKs' retry rules follow."""
    model = resolve_model(spec(provider, server, monkeypatch))
    server.queue_error(500, "api_error", provider=provider, headers={"x-should-retry": "false"})
    server.queue_error(400, BAD_REQUEST, provider=provider, headers={"x-should-retry": "true"})

    with pytest.raises(ModelError) as first:
        generate(model)
    with pytest.raises(TransientModelError) as second:
        generate(model)

    assert not isinstance(first.value, TransientModelError)
    assert second.value.status == 400


def test_model_errors_pickle_with_their_fields() -> None:
    import pickle

    error = TransientModelError(
        "m: 429", status=429, error_type="rate_limit_error", provider="anthropic", retry_after=1.5
    )

    copy = pickle.loads(pickle.dumps(error))

    assert (copy.status, copy.error_type, copy.provider, copy.retry_after) == (
        429,
        "rate_limit_error",
        "anthropic",
        1.5,
    )
    assert str(copy) == "m: 429"
    assert TransientModelError().status is None  # raisable bare, as scripts do


# -- Retry-After parsing ------------------------------------------------------------


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    later = formatdate(now + 30, usegmt=True)
    earlier = formatdate(now - 30, usegmt=True)

    assert parse_retry_after({"retry-after": later}, now=now) == pytest.approx(30)
    assert parse_retry_after({"retry-after": earlier}, now=now) == 0.0
    assert parse_retry_after({"retry-after": "-5"}) == 0.0
    assert parse_retry_after({"retry-after": "nan"}) is None
    assert parse_retry_after(None) is None


# -- the run: retries go through typedmesh, each attempt counted --------------------


def agent(model: str, retry: tm.RetryPolicy) -> tm.Agent[Question, Answer]:
    return tm.Agent(
        "answerer", input=Question, output=Answer, model=model, instructions="Answer.", retry=retry
    )


@pytest.mark.parametrize("provider", PROVIDERS)
def test_run_waits_the_retry_after_the_server_asked_for(
    provider: str, server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = agent(spec(provider, server, monkeypatch), tm.RetryPolicy(max_attempts=2, backoff=5.0))
    server.queue_error(429, RATE_LIMIT[provider], provider=provider, retry_after="0.2")
    server.queue(answer(provider, "after the wait"))
    assert step.model.provider == provider  # resolved, SDK imported, before the clock starts

    started = time.monotonic()
    result = tm.run(step, Question(text="q"))
    waited = time.monotonic() - started

    assert result.output.answer == "after the wait"
    assert 0.2 <= waited < 2.5  # the server's 0.2 s, not the policy's 5 s backoff
    assert len(server.requests) == 2  # one retry, by typedmesh, not by the SDK
    assert [r.connection for r in server.requests] == [1, 1]  # kept alive across the 429
    assert (result.usage.model_calls, result.usage.input_tokens) == (1, 10)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_run_caps_a_long_retry_after(
    provider: str, server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = tm.RetryPolicy(max_attempts=2, backoff=5.0, max_retry_after=0.1)
    step = agent(spec(provider, server, monkeypatch), policy)
    server.queue_error(429, RATE_LIMIT[provider], provider=provider, retry_after="3600")
    server.queue(answer(provider))
    assert step.model.provider == provider  # resolved, SDK imported, before the clock starts

    started = time.monotonic()
    tm.run(step, Question(text="q"))

    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("provider", PROVIDERS)
def test_client_error_is_not_retried_by_the_run(
    provider: str, server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = agent(spec(provider, server, monkeypatch), tm.RetryPolicy(max_attempts=3, backoff=0))
    server.queue_error(400, BAD_REQUEST, provider=provider)

    with pytest.raises(ModelError) as caught:
        tm.run(step, Question(text="q"))

    assert not isinstance(caught.value, TransientModelError)
    assert (caught.value.status, caught.value.error_type) == (400, BAD_REQUEST)
    assert len(server.requests) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_answered_attempt_is_counted(
    provider: str, server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 5xx, an answer that fails its contract, then a good one: two billed calls."""
    step = agent(spec(provider, server, monkeypatch), tm.RetryPolicy(max_attempts=2, backoff=0))
    server.queue_error(503 if provider == "openai" else 529, "overloaded_error", provider=provider)
    bad = answer(provider)
    if provider == "openai":
        bad["choices"][0]["message"]["content"] = '{"wrong": 1}'
    else:
        bad["content"][0]["text"] = '{"wrong": 1}'
    server.queue(bad)
    server.queue(answer(provider, "good"))

    result = tm.run(step, Question(text="q"))

    assert result.output.answer == "good"
    assert len(server.requests) == 3
    usage = result.usage
    assert (usage.model_calls, usage.input_tokens, usage.output_tokens) == (2, 20, 8)


# -- timeouts -----------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("how", ["argument", "set_default_timeout", "environment"])
def test_timeout_is_settable_and_transient(
    provider: str, how: str, server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    if how == "argument":
        model = resolve_model(spec(provider, server, monkeypatch), timeout=0.3)
    else:
        model = resolve_model(spec(provider, server, monkeypatch))  # built before the setting
        if how == "set_default_timeout":
            typedmesh.models.set_default_timeout(0.3)
        else:
            monkeypatch.setenv("TYPEDMESH_MODEL_TIMEOUT", "0.3")
    server.queue(answer(provider), delay=2.0)

    started = time.monotonic()
    with pytest.raises(TransientModelError) as caught:
        generate(model)

    assert time.monotonic() - started < 1.5
    assert (caught.value.status, caught.value.error_type) == (None, "timeout")
    assert caught.value.provider == provider
    assert len(server.requests) == 1  # no hidden retry by the SDK


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_timed_out_attempt_is_retried_by_the_run(
    provider: str, server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = agent(spec(provider, server, monkeypatch), tm.RetryPolicy(max_attempts=2, backoff=0))
    typedmesh.models.set_default_timeout(0.3)
    server.queue(answer(provider, "late"), delay=2.0)
    server.queue(answer(provider, "in time"))

    result = tm.run(step, Question(text="q"))

    assert result.output.answer == "in time"
    assert result.usage.model_calls == 1


def test_timeout_defaults_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    from typedmesh.models.openai import OpenAIModel

    base = "http://127.0.0.1:9/v1"
    assert OpenAIModel("m", base_url=base).timeout == 60.0
    monkeypatch.setenv("TYPEDMESH_MODEL_TIMEOUT", "12.5")
    assert OpenAIModel("m", base_url=base).timeout == 12.5
    typedmesh.models.set_default_timeout(5)
    assert typedmesh.models.default_timeout() == 5.0
    assert OpenAIModel("m", base_url=base, timeout=2).timeout == 2.0  # explicit wins
    typedmesh.models.set_default_timeout(None)
    assert typedmesh.models.default_timeout() == 12.5

    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ConfigurationError, match="timeout"):
            OpenAIModel("m", base_url=base, timeout=bad)
        with pytest.raises(ConfigurationError):
            typedmesh.models.set_default_timeout(bad)
    monkeypatch.setenv("TYPEDMESH_MODEL_TIMEOUT", "soon")
    with pytest.raises(ConfigurationError, match="TYPEDMESH_MODEL_TIMEOUT"):
        typedmesh.models.default_timeout()
