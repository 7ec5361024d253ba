"""An answer the provider cut at its token limit is never taken as complete.

Plain text is the dangerous case: a reply cut mid-sentence is still valid
text. ``finish_reason="length"`` (OpenAI and compatible servers) and
``stop_reason="max_tokens"`` (Anthropic) mark the response ``truncated``; the
agent sends it back asking for a shorter answer, and after its retries fails
with ``OutputValidationError`` naming the cut.
"""

from __future__ import annotations

from typing import Any

import pytest
from fake_provider_server import (
    FakeProviderServer,
    anthropic_message,
    message_text,
    openai_completion,
)
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.errors import OutputValidationError
from typedmesh.runtime.stream import stream


class Ask(BaseModel):
    text: str


class Verdict(BaseModel):
    verdict: str


def answer(provider: str, text: str, *, cut: bool = False) -> dict[str, Any]:
    if provider == "openai":
        body = openai_completion(text)
        if cut:
            body["choices"][0]["finish_reason"] = "length"
        return body
    return anthropic_message(text, stop_reason="max_tokens" if cut else None)


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_cut_text_answer_is_sent_back_not_taken(
    provider: tuple[str, Any], server: FakeProviderServer, streamed: bool
) -> None:
    name, model = provider
    writer = tm.Agent("writer", input=Ask, output=str, model=model, max_tokens=40)
    cut = answer(name, "Dear customer, we are sorry that your order", cut=True)
    whole = answer(name, "Sorry: a new one ships today.")
    if streamed:
        server.queue_stream(cut)
        server.queue_stream(whole)
        items = stream(writer, {"text": "my mug broke"})
        _ = [i async for i in items]
        result = await items
    else:
        server.queue(cut)
        server.queue(whole)
        result = await tm.arun(writer, {"text": "my mug broke"})

    assert result.output.text == "Sorry: a new one ships today."
    invalid = [e for e in result.trace.events if e["event"] == "output.invalid"]
    assert len(invalid) == 1 and "cut off at the token limit (max_tokens=40)" in str(invalid[0])
    again = server.bodies[1]["messages"][-1]
    text = message_text(again["content"])
    assert "cut off" in text and "shorter" in text


async def test_cut_every_time_fails_naming_the_cut(
    provider: tuple[str, Any], server: FakeProviderServer
) -> None:
    name, model = provider
    judge = tm.Agent("judge", input=Ask, output=Verdict, model=model, output_retries=1)
    for _ in range(2):
        server.queue(answer(name, '{"verdict": "the product is fine"}', cut=True))
    with pytest.raises(OutputValidationError) as failed:
        await tm.arun(judge, {"text": "is it fine?"})
    assert all("cut off" in " ".join(errors) for errors in failed.value.errors)
    assert len(failed.value.raw_outputs) == 2


async def test_a_whole_answer_is_not_marked(
    provider: tuple[str, Any], server: FakeProviderServer
) -> None:
    name, model = provider
    server.queue(answer(name, "fine"))
    response = await model.generate(
        tm.ModelRequest(messages=[tm.Message(role="user", content="hi")])
    )
    assert response.truncated is False and "truncated" not in response.model_dump_json()
