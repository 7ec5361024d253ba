"""A compatible server that reports no usage (llama.cpp's server leaves it out of a
stream even when ``stream_options.include_usage`` asks for it) must not make calls
free: the tokens are estimated from the text, marked, and the budget still holds."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_provider_server import FakeProviderServer, openai_completion
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.errors import BudgetExceeded
from typedmesh.models.openai import OpenAIModel
from typedmesh.runtime.stream import TokenDelta, stream


class Question(BaseModel):
    text: str


def no_usage(text: str) -> dict[str, object]:
    body = openai_completion(text)
    del body["usage"]
    return body


@pytest.mark.parametrize("streamed", [False, True])
async def test_calls_without_usage_are_estimated_and_marked(
    server: FakeProviderServer, streamed: bool
) -> None:
    model = OpenAIModel("gpt-4o-mini", base_url=server.openai_base_url)
    writer = tm.Agent("writer", input=Question, output=str, model=model)
    answer = "A reply long enough to count: " + "words " * 20
    if streamed:
        server.queue_stream(no_usage(answer))
        items = stream(writer, {"text": "hello"})
        deltas = [i async for i in items if isinstance(i, TokenDelta)]
        result = await items
        assert deltas and server.bodies[0]["stream"] is True
    else:
        server.queue(no_usage(answer))
        result = await tm.arun(writer, {"text": "hello"})
    usage = result.usage
    assert usage.estimated_calls == 1 and usage.model_calls == 1
    assert usage.output_tokens == (len(answer) + 3) // 4  # about four characters a token
    assert usage.input_tokens > 10 and usage.cost_usd > 0
    await model.aclose()


async def test_a_budget_holds_against_a_server_that_reports_no_usage(
    server: FakeProviderServer,
) -> None:
    model = OpenAIModel("gpt-4o-mini", base_url=server.openai_base_url)
    writer = tm.Agent("writer", input=Question, output=str, model=model)
    chain = tm.sequential(writer, tm.Agent("again", input=str, output=str, model=model))
    for _ in range(2):
        server.queue(no_usage("x" * 400))  # about 100 tokens each, reported as nothing
    with pytest.raises(BudgetExceeded):
        await tm.arun(chain, {"text": "go"}, budget=tm.Budget(max_tokens=150))
    assert len(server.requests) == 1  # the second call was refused before it was sent
    await model.aclose()


async def test_reported_usage_is_taken_as_is(server: FakeProviderServer) -> None:
    model = OpenAIModel("gpt-4o-mini", base_url=server.openai_base_url)
    writer = tm.Agent("writer", input=Question, output=str, model=model)
    server.queue(openai_completion("fine", prompt_tokens=11, completion_tokens=2))
    result = await tm.arun(writer, {"text": "hello"})
    assert (result.usage.input_tokens, result.usage.output_tokens) == (11, 2)
    assert result.usage.estimated_calls == 0
    await model.aclose()


async def test_the_trace_and_follow_mark_estimated_tokens(server: FakeProviderServer) -> None:
    import io

    from rich.console import Console

    from typedmesh.cli_follow import arun_following
    from typedmesh.render import tokens_text, trace_tree

    model = OpenAIModel("gpt-4o-mini", base_url=server.openai_base_url)
    writer = tm.Agent("writer", input=Question, output=str, model=model)
    server.queue_stream(no_usage("some prose"))
    out = io.StringIO()
    result = await arun_following(writer, {"text": "hi"}, out=out)
    assert "tokens (estimated)" in out.getvalue() and "~" in out.getvalue()
    console = Console(file=io.StringIO(), width=200)
    console.print(trace_tree(result.trace))
    assert "~" in console.file.getvalue()  # type: ignore[attr-defined]
    assert tokens_text(result.usage).startswith("~") and "1 call estimated" in tokens_text(
        result.usage
    )
    await model.aclose()


async def test_the_estimate_is_journaled_and_read_back(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    from typedmesh.runtime.reducer import reduce_events

    model = OpenAIModel("gpt-4o-mini", base_url=server.openai_base_url)
    writer = tm.Agent("writer", input=Question, output=str, model=model)
    server.queue(no_usage("some prose"))
    journal = tmp_path / "runs.db"
    result = await tm.arun(writer, {"text": "hi"}, journal=journal, run_id="est")
    with tm.SQLiteJournal(journal) as store:
        events = store.read("est")
        [response] = [e for e in events if e.type == "model.response"]
        assert response.payload["usage"]["estimated_calls"] == 1
        reducer = reduce_events(events, store)
        reducer.finish(events[-1])
        assert reducer.usage == result.usage and reducer.usage.estimated_calls == 1
    replayed = await tm.areplay("est", writer, journal=journal)
    assert replayed.identical and len(server.requests) == 1
    await model.aclose()
