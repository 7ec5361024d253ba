"""Plain-text agents (``output=str``) through the real OpenAI and Anthropic SDKs.

A text answer asks for no JSON mode, streams token by token, and is kept as
written; the journal is the same streamed or not, and replay makes no call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fake_provider_server import (
    FakeProviderServer,
    anthropic_message,
    message_text,
    openai_completion,
)

import typedmesh as tm
from typedmesh.runtime.stream import TokenDelta, stream

LETTER = "Dear Ada,\n\nyour refund of {42} EUR is on its way.\n\n— Support"


def body(provider: str, text: str) -> dict[str, Any]:
    return openai_completion(text) if provider == "openai" else anthropic_message(text)


async def test_a_text_agent_streams_prose_and_replays_it(
    provider: tuple[str, Any], server: FakeProviderServer, tmp_path: Path
) -> None:
    name, model = provider
    writer = tm.Agent("writer", input=str, output=str, model=model, instructions="Write.")
    journal = tmp_path / "runs.db"
    server.queue_stream(body(name, LETTER), piece=5)
    items = stream(writer, "refund for Ada", journal=journal, run_id="letter")
    deltas = [i.text async for i in items if isinstance(i, TokenDelta)]
    result = await items

    assert result.output == tm.Text(text=LETTER.strip())
    assert "".join(deltas) == LETTER and len(deltas) == -(-len(LETTER) // 5)
    sent = server.bodies[0]
    assert sent["stream"] is True
    assert "response_format" not in sent and "output_format" not in sent
    assert "tool_choice" not in sent
    user = sent["messages"][-1]
    assert user["role"] == "user" and message_text(user["content"]) == "refund for Ada"

    calls = len(server.requests)
    replayed = await tm.areplay("letter", writer, journal=journal)
    assert replayed.output == result.output and len(server.requests) == calls
    assert server.connections == 1  # one kept-alive connection for the whole run


async def test_a_blank_text_answer_is_asked_again(
    provider: tuple[str, Any], server: FakeProviderServer
) -> None:
    name, model = provider
    writer = tm.Agent("writer", input=str, output=str, model=model)
    server.queue(body(name, "  \n "))
    server.queue(body(name, "A real answer."))
    result = await tm.arun(writer, "go")
    assert result.output.text == "A real answer."
    again = server.bodies[1]["messages"][-1]
    text = message_text(again["content"])
    assert "at least 1 character" in text and "corrected answer only" in text
