"""Streaming through the real OpenAI and Anthropic SDKs, over HTTP, to keep-alive fakes.

A call streams only when someone listens (``tm.stream``, ``--follow``, a
``StreamSink``): the fake server then answers with server-sent events. The
response put back together must be the one a plain call returns, so the
journal, the validation and the replay cannot tell the two apart.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fake_provider_server import (
    FakeProviderServer,
    anthropic_message,
    openai_completion,
)
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.errors import ModelError, TransientModelError
from typedmesh.journal.events import Event
from typedmesh.models.anthropic import AnthropicModel
from typedmesh.models.base import Message, ModelRequest, ToolSchema
from typedmesh.models.openai import OpenAIModel
from typedmesh.models.streaming import listening
from typedmesh.runtime.stream import RunEvent, StreamEvent, TokenDelta, stream

PROVIDERS = ["openai", "anthropic"]


class Question(BaseModel):
    text: str


class Report(BaseModel):
    title: str
    score: int


REPORT = '{"title": "streams are fine", "score": 7}'


def answer_body(provider: str, text: str | None, **options: Any) -> dict[str, Any]:
    if provider == "openai":
        return openai_completion(text, **options)
    return anthropic_message(text, **options)


def make_model(provider: str, server: FakeProviderServer) -> OpenAIModel | AnthropicModel:
    if provider == "openai":
        return OpenAIModel("gpt-4o-mini", base_url=server.openai_base_url)
    return AnthropicModel("claude-haiku-4-5", base_url=server.anthropic_base_url)


@pytest.fixture(params=PROVIDERS)
async def provider(
    request: pytest.FixtureRequest, server: FakeProviderServer
) -> AsyncIterator[tuple[str, OpenAIModel | AnthropicModel]]:
    model = make_model(request.param, server)
    yield request.param, model
    await model.aclose()


def ask(text: str = "hi", **options: Any) -> ModelRequest:
    return ModelRequest(messages=[Message(role="user", content=text)], **options)


def reporter(model: Any, **options: Any) -> tm.Agent[Question, Report]:
    return tm.Agent("reporter", input=Question, output=Report, model=model, **options)


def comparable(events: list[Event]) -> list[tuple[str, str, str | None, Any]]:
    """Events without their times, hashes or run ids: what a run recorded, not when."""
    timeless = [
        {k: v for k, v in e.payload.items() if k not in ("duration_ms", "ts")} for e in events
    ]
    return [
        (e.type, e.path, e.key, payload)
        for e, payload in zip(events, timeless, strict=True)
        if e.type != "run.started"
    ]


# -- the provider call --------------------------------------------------------------


async def test_a_call_streams_only_when_someone_listens(
    provider: tuple[str, Any], server: FakeProviderServer
) -> None:
    name, model = provider
    server.queue(answer_body(name, "plain"))
    server.queue(answer_body(name, "streamed"))
    heard: list[str] = []

    plain = await model.generate(ask())
    with listening(heard.append):
        streamed = await model.generate(ask())

    assert "stream" not in server.bodies[0]
    assert server.bodies[1]["stream"] is True
    if name == "openai":  # usage comes in the stream only when asked for
        assert server.bodies[1]["stream_options"] == {"include_usage": True}
    assert plain.content == "plain" and streamed.content == "streamed"
    assert "".join(heard) == "streamed" and len(heard) == 2
    assert streamed.usage == plain.usage and streamed.model == plain.model


@pytest.mark.parametrize("shape", ["text", "tools", "text_and_tools"])
async def test_a_streamed_response_equals_the_plain_one(
    provider: tuple[str, Any], server: FakeProviderServer, shape: str
) -> None:
    name, model = provider
    text = None if shape == "tools" else REPORT
    if name == "openai":
        calls = [("call_1", "get_weather", '{"city": "Paris"}'), ("call_2", "get_time", "{}")]
        body = openai_completion(text, tool_calls=None if shape == "text" else calls)
    else:
        uses = [("tu_1", "get_weather", {"city": "Paris"}), ("tu_2", "get_time", {})]
        body = anthropic_message(text, tool_uses=None if shape == "text" else uses)
    tools = [
        ToolSchema(name="get_weather", parameters={"type": "object", "properties": {}}),
        ToolSchema(name="get_time", parameters={"type": "object", "properties": {}}),
    ]
    request = ask(tools=tools, output_schema=Report.model_json_schema(), output_name="Report")
    server.queue(body)
    server.queue_stream(body, piece=3)
    pieces: list[str] = []

    plain = await model.generate(request)
    streamed = await model.generate_stream(request, pieces.append)

    assert streamed == plain
    assert "".join(pieces) == (text or "")
    assert server.connections == 1, "the streamed answer ended cleanly on a kept-alive connection"


async def test_a_refusal_streamed_is_the_same_model_error(server: FakeProviderServer) -> None:
    model = OpenAIModel("gpt-4o-mini", base_url=server.openai_base_url)
    body = openai_completion(None)
    body["choices"][0]["message"]["refusal"] = "I can't help with that."
    server.queue_stream(body)
    with pytest.raises(ModelError) as refused:
        await model.generate_stream(ask(), lambda _: None)
    assert refused.value.error_type == "refusal" and refused.value.usage is not None
    assert refused.value.usage.input_tokens == 11
    await model.aclose()


async def test_an_anthropic_refusal_streamed_is_the_same_model_error(
    server: FakeProviderServer,
) -> None:
    model = AnthropicModel("claude-haiku-4-5", base_url=server.anthropic_base_url)
    server.queue_stream(anthropic_message("", stop_reason="refusal"))
    with pytest.raises(ModelError) as refused:
        await model.generate_stream(ask(), lambda _: None)
    assert refused.value.error_type == "refusal"
    await model.aclose()


async def test_an_error_status_on_a_streaming_request_is_sorted_as_usual(
    provider: tuple[str, Any], server: FakeProviderServer
) -> None:
    name, model = provider
    server.queue_error(429, "rate_limit_error", provider=name, retry_after="2")
    with pytest.raises(TransientModelError) as limited:
        await model.generate_stream(ask(), lambda _: None)
    assert limited.value.status == 429 and limited.value.retry_after == 2.0


async def test_a_stream_cut_mid_way_is_transient(
    provider: tuple[str, Any], server: FakeProviderServer
) -> None:
    name, model = provider
    server.queue_stream(answer_body(name, REPORT), cut_after=2)
    heard: list[str] = []
    with pytest.raises(TransientModelError) as broken:
        await model.generate_stream(ask(), heard.append)
    assert broken.value.error_type in ("connection_error", "timeout")
    assert broken.value.provider == name
    assert heard == [REPORT[:4], REPORT[4:8]]


async def test_a_listener_that_raises_does_not_break_the_call(
    provider: tuple[str, Any], server: FakeProviderServer
) -> None:
    name, model = provider
    server.queue_stream(answer_body(name, REPORT))

    def broken(text: str) -> None:
        raise RuntimeError("the consumer's bug")

    response = await model.generate_stream(ask(), broken)
    assert response.content == REPORT


# -- through tm.stream --------------------------------------------------------------


async def test_deltas_arrive_before_the_provider_call_ends(
    provider: tuple[str, Any], server: FakeProviderServer
) -> None:
    name, model = provider
    hold = threading.Event()  # the server sends the rest only once this is set
    server.queue_stream(answer_body(name, REPORT), hold=hold, hold_after=1)
    items = stream(reporter(model), {"text": "q"})
    started = time.monotonic()
    seen: list[StreamEvent] = []
    try:
        async for item in items:
            if isinstance(item, TokenDelta) and not hold.is_set():
                assert time.monotonic() - started < 5, "the delta came only when the call ended"
                assert not any(isinstance(i, RunEvent) and i.type == "model.response" for i in seen)
                hold.set()
            seen.append(item)
    finally:
        hold.set()
    result = await items
    assert result.output == Report(title="streams are fine", score=7)
    deltas = [i for i in seen if isinstance(i, TokenDelta)]
    assert "".join(d.text for d in deltas) == REPORT
    assert {d.model for d in deltas} == {model.name} and {d.path for d in deltas} == {"reporter"}


async def test_the_streamed_structured_output_is_validated_at_the_end(
    provider: tuple[str, Any], server: FakeProviderServer
) -> None:
    name, model = provider
    server.queue_stream(answer_body(name, '{"title": "no score"}'))  # streamed, then refused
    server.queue_stream(answer_body(name, REPORT))
    items = stream(reporter(model), {"text": "q"})
    seen = [item async for item in items]
    types = [i.type for i in seen if isinstance(i, RunEvent)]
    assert types.count("model.response") == 2 and "output.invalid" in types
    assert (await items).output.score == 7
    assert all(body["stream"] is True for body in server.bodies)
    # the validation errors went back to the model, as without streaming
    assert "score" in server.bodies[1]["messages"][-1]["content"]


async def test_an_invalid_streamed_output_fails_with_the_typed_error(
    provider: tuple[str, Any], server: FakeProviderServer
) -> None:
    name, model = provider
    server.queue_stream(answer_body(name, "not json at all"))
    items = stream(reporter(model, output_retries=0), {"text": "q"})
    with pytest.raises(tm.OutputValidationError):
        async for _ in items:
            pass


async def test_the_journal_is_the_same_streamed_or_not_and_replay_does_not_stream(
    provider: tuple[str, Any], server: FakeProviderServer, tmp_path: Path
) -> None:
    name, model = provider
    journal = tmp_path / "runs.db"
    flow = reporter(model)
    server.queue(answer_body(name, REPORT))
    plain = await tm.arun(flow, {"text": "q"}, journal=journal, run_id="plain")
    server.queue_stream(answer_body(name, REPORT), piece=2)
    items = stream(flow, {"text": "q"}, journal=journal, run_id="streamed")
    deltas = [i async for i in items if isinstance(i, TokenDelta)]
    streamed = await items

    assert len(deltas) == (len(REPORT) + 1) // 2 and "stream" not in server.bodies[0]
    assert streamed.output == plain.output and streamed.usage == plain.usage
    with tm.SQLiteJournal(journal) as store:
        plain_events, streamed_events = store.read("plain"), store.read("streamed")
        [response] = [e for e in streamed_events if e.type == "model.response"]
        assert response.refs is None or "response" not in response.refs  # small: inline
    assert comparable(streamed_events) == comparable(plain_events)  # event for event

    requests = len(server.requests)
    heard: list[str] = []
    with listening(heard.append):
        replayed = await tm.areplay("streamed", flow, journal=journal)
    assert replayed.output == plain.output
    assert len(server.requests) == requests and heard == []  # no call, nothing streamed


async def test_a_retried_stream_shows_both_attempts_and_journals_only_the_answer(
    provider: tuple[str, Any], server: FakeProviderServer, tmp_path: Path
) -> None:
    name, model = provider
    server.queue_stream(answer_body(name, REPORT), cut_after=3)
    server.queue_stream(answer_body(name, REPORT))
    flow = reporter(model, retry=tm.RetryPolicy(max_attempts=2, backoff=0.0))
    items = stream(flow, {"text": "q"}, journal=tmp_path / "runs.db")
    seen = [i async for i in items]
    by_key: dict[str, str] = {}
    for delta in (i for i in seen if isinstance(i, TokenDelta)):
        by_key[delta.key] = by_key.get(delta.key, "") + delta.text
    assert by_key == {"reporter/model#0": REPORT[:12], "reporter/model#0.2": REPORT}
    errors = [i for i in seen if isinstance(i, RunEvent) and i.type == "model.error"]
    assert errors[0].payload["transient"] is True
    assert (await items).output.score == 7


async def test_parallel_provider_calls_stream_side_by_side(server: FakeProviderServer) -> None:
    class Both(BaseModel):
        left: Report
        right: Report

    @tm.step(name="join")
    async def join(both: Both) -> tm.SynthesizedReport:
        return tm.SynthesizedReport(summary=f"{both.left.score}+{both.right.score}")

    with FakeProviderServer() as other:  # one server per provider: each has its own queue
        openai_model = make_model("openai", server)
        anthropic_model = make_model("anthropic", other)
        left = tm.Agent("left", input=Question, output=Report, model=openai_model)
        right = tm.Agent("right", input=Question, output=Report, model=anthropic_model)
        server.queue_stream(answer_body("openai", REPORT), gap=0.005)
        other.queue_stream(answer_body("anthropic", REPORT), gap=0.005)
        items = stream(tm.parallel(left=left, right=right, merge=join, name="both"), {"text": "q"})
        seen = [i async for i in items]
        await openai_model.aclose()
        await anthropic_model.aclose()
    texts: dict[str, str] = {}
    order: list[str] = []
    for delta in (i for i in seen if isinstance(i, TokenDelta)):
        texts[delta.path] = texts.get(delta.path, "") + delta.text
        order.append(delta.path)
    assert texts == {"both/left": REPORT, "both/right": REPORT}
    switches = sum(1 for a, b in itertools.pairwise(order) if a != b)
    assert switches > 1, "the two calls streamed interleaved, not one after the other"
    assert (await items).output.summary == "7+7"


async def test_a_slow_consumer_does_not_hold_the_provider_stream(
    server: FakeProviderServer,
) -> None:
    model = make_model("openai", server)
    long_text = '{"title": "' + "x" * 400 + '", "score": 1}'
    server.queue_stream(openai_completion(long_text), piece=2)
    items = stream(reporter(model), {"text": "q"}, max_deltas=5)
    started = time.monotonic()
    finished: list[float] = []

    async def watch() -> None:
        await items.result()
        finished.append(time.monotonic() - started)

    watcher = asyncio.ensure_future(watch())
    seen = []
    async for item in items:
        seen.append(item)
        await asyncio.sleep(0.02)
    await watcher
    consumer = time.monotonic() - started
    assert finished[0] < 2.0 and consumer > finished[0]
    assert items.dropped > 0 and (await items).output.score == 1
    await model.aclose()
