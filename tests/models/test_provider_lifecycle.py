"""SDK providers over keep-alive connections: many runs, many event loops, pickling.

The real APIs keep connections alive. ``tm.run`` makes a new event loop for
each call, so a provider that kept one SDK client (and its pooled connection)
across loops broke on the second run with ``Event loop is closed``, after the
request was sent and billed. These tests share one agent across sync runs,
async runs in one loop and in several loops, against the keep-alive fake.
"""

from __future__ import annotations

import asyncio
import gc
import pickle
from collections.abc import Callable
from typing import Any

import pytest
from fake_provider_server import (
    FakeProviderServer,
    anthropic_message,
    openai_completion,
)
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.models import Message, ModelRequest, resolve_model


class Question(BaseModel):
    text: str


class Answer(BaseModel):
    answer: str


PROVIDERS = ["openai", "anthropic"]


def configure(provider: str, server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the provider's SDK at the fake through the environment; the model string."""
    if provider == "openai":
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        return "openai:gpt-4o-mini"
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.anthropic_base_url)
    return "anthropic:claude-haiku-4-5"


def answer(provider: str, text: str, **usage: int) -> dict[str, Any]:
    content = Answer(answer=text).model_dump_json()
    if provider == "openai":
        return openai_completion(content, **usage)
    return anthropic_message(content, **usage)


def ask() -> ModelRequest:
    return ModelRequest(messages=[Message(role="user", content="q")])


def agent(model: str) -> tm.Agent[Question, Answer]:
    return tm.Agent("answerer", input=Question, output=Answer, model=model, instructions="Answer.")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_sequential_sync_runs_share_one_agent(
    provider: str, server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = agent(configure(provider, server, monkeypatch))
    for i in range(4):
        server.queue(answer(provider, f"a{i}"))

    outputs = [tm.run(step, Question(text=f"q{i}")).output.answer for i in range(4)]

    assert outputs == ["a0", "a1", "a2", "a3"]
    assert len(server.requests) == 4  # nothing failed and was retried behind the scenes
    # each run's loop got its own client, closed when the loop ended
    assert server.wait_closed(), f"{server.open_connections} connection(s) left open"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_usage_is_counted_on_every_sync_run(
    provider: str, server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = agent(configure(provider, server, monkeypatch))
    tokens = {"openai": {"prompt_tokens": 10, "completion_tokens": 3}}.get(
        provider, {"input_tokens": 10, "output_tokens": 3}
    )
    for i in range(3):
        server.queue(answer(provider, f"a{i}", **tokens))

    usages = [tm.run(step, Question(text="q")).usage for _ in range(3)]

    assert [(u.input_tokens, u.output_tokens, u.model_calls) for u in usages] == [(10, 3, 1)] * 3


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_async_runs_in_one_loop_reuse_the_connection(
    provider: str, server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = agent(configure(provider, server, monkeypatch))
    for i in range(3):
        server.queue(answer(provider, f"a{i}"))

    outputs = [(await tm.arun(step, Question(text="q"))).output.answer for _ in range(3)]

    assert outputs == ["a0", "a1", "a2"]
    assert server.connections == 1  # one pooled keep-alive connection served all three
    assert {r.connection for r in server.requests} == {1}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_async_runs_across_event_loops(
    provider: str, server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = agent(configure(provider, server, monkeypatch))

    async def two_runs(tag: str) -> list[str]:
        server.queue(answer(provider, f"{tag}1"))
        server.queue(answer(provider, f"{tag}2"))
        return [(await tm.arun(step, Question(text="q"))).output.answer for _ in range(2)]

    first = asyncio.run(two_runs("x"))
    second = asyncio.run(two_runs("y"))
    third = asyncio.run(two_runs("z"))

    assert (first, second, third) == (["x1", "x2"], ["y1", "y2"], ["z1", "z2"])
    assert len(server.requests) == 6
    # one connection per loop, reused inside it
    assert [r.connection for r in server.requests] == [1, 1, 2, 2, 3, 3]
    assert server.wait_closed()


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.filterwarnings("ignore::ResourceWarning")  # asyncio's, for the loop closed by hand
def test_model_used_by_a_loop_that_was_closed_without_cleanup(
    provider: str, server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loop closed by hand (no shutdown_asyncgens) leaves its client behind: it is dropped."""
    model = resolve_model(configure(provider, server, monkeypatch))
    server.queue(answer(provider, "first"))
    server.queue(answer(provider, "second"))
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(model.generate(ask())).content is not None
    finally:
        loop.close()

    assert asyncio.run(model.generate(ask())).content is not None
    assert [r.connection for r in server.requests] == [1, 2]
    del model
    gc.collect()  # the dead loop's socket can only be reclaimed by the collector
    assert server.wait_closed()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_concurrent_runs_in_threads_share_one_agent(
    provider: str, server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    step = agent(configure(provider, server, monkeypatch))
    for _ in range(6):
        server.queue(answer(provider, "same"))

    with ThreadPoolExecutor(max_workers=3) as pool:
        outputs = list(pool.map(lambda _: tm.run(step, Question(text="q")).output.answer, range(6)))

    assert outputs == ["same"] * 6
    assert server.wait_closed()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_used_agent_pickles_and_runs_elsewhere(
    provider: str, server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = agent(configure(provider, server, monkeypatch))
    server.queue(answer(provider, "before"))
    server.queue(answer(provider, "after"))
    assert tm.run(step, Question(text="q")).output.answer == "before"

    shipped: tm.Agent[Question, Answer] = pickle.loads(pickle.dumps(step))

    assert shipped.model.name == step.model.name
    assert tm.run(shipped, Question(text="q")).output.answer == "after"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_model_pickled_inside_a_loop_keeps_no_client(
    provider: str, server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = resolve_model(configure(provider, server, monkeypatch), timeout=7)
    server.queue(answer(provider, "one"))
    server.queue(answer(provider, "two"))

    async def use_and_pickle() -> bytes:
        await model.generate(ask())
        return pickle.dumps(model)  # while this loop's client is live

    data = asyncio.run(use_and_pickle())
    copy = pickle.loads(data)

    assert b"AsyncOpenAI" not in data and b"AsyncAnthropic" not in data
    assert copy.timeout == 7
    assert asyncio.run(copy.generate(ask())).content is not None


def test_explicit_api_key_travels_but_one_from_the_environment_does_not(
    server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typedmesh.models.openai import OpenAIModel

    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    from_env = OpenAIModel("gpt-4o-mini", base_url=server.openai_base_url)
    explicit = OpenAIModel("gpt-4o-mini", base_url=server.openai_base_url, api_key="sk-given")

    assert b"sk-from-env" not in pickle.dumps(from_env)
    assert b"sk-given" in pickle.dumps(explicit)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_injected_client_cannot_be_pickled(
    provider: str, server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory: Callable[..., Any]
    if provider == "openai":
        import openai

        from typedmesh.models.openai import OpenAIModel

        client: Any = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="k")
        factory = OpenAIModel
    else:
        import anthropic

        from typedmesh.models.anthropic import AnthropicModel

        client = anthropic.AsyncAnthropic(base_url=server.anthropic_base_url, api_key="k")
        factory = AnthropicModel
    model = factory("m", client=client)

    with pytest.raises(TypeError, match="client="):
        pickle.dumps(model)
