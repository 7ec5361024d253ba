"""Tool-call arguments streamed as the model writes them (``ToolCallDelta``).

Through the real OpenAI and Anthropic SDKs against keep-alive fakes, and from
the offline models: each call's pieces join to the JSON it is called with,
text deltas stay text, and the journal is the same as for a plain call.
"""

from __future__ import annotations

import json
from typing import Any

from fake_provider_server import FakeProviderServer, anthropic_message, openai_completion
from pydantic import BaseModel

import typedmesh as tm


class Order(BaseModel):
    order_id: str


class Outcome(BaseModel):
    note: str


ARGS = {"order_id": "ORD-1042", "amount": 329.0, "reason": "arrived cracked"}


@tm.tool
def refund(order_id: str, amount: float, reason: str) -> str:
    """Refund an order."""
    return f"refunded {order_id}"


@tm.tool
def note(text: str) -> str:
    """Leave a note."""
    return "noted"


def tool_answer(provider: str) -> dict[str, Any]:
    if provider == "openai":
        calls = [
            ("call_1", "refund", json.dumps(ARGS)),
            ("call_2", "note", json.dumps({"text": "refund asked"})),
        ]
        return openai_completion("Refunding now.", tool_calls=calls)
    uses = [("tu_1", "refund", ARGS), ("tu_2", "note", {"text": "refund asked"})]
    return anthropic_message("Refunding now.", tool_uses=uses)


def final_answer(provider: str) -> dict[str, Any]:
    text = '{"note": "done"}'
    return openai_completion(text) if provider == "openai" else anthropic_message(text)


async def test_tool_arguments_stream_call_by_call(
    provider: tuple[str, Any], server: FakeProviderServer
) -> None:
    name, model = provider
    desk = tm.Agent("desk", input=Order, output=Outcome, model=model, tools=[refund, note])
    server.queue_stream(tool_answer(name), piece=6)
    server.queue_stream(final_answer(name), piece=6)
    items = tm.stream(desk, {"order_id": "ORD-1042"})
    seen = [i async for i in items]
    result = await items

    assert result.output == Outcome(note="done")
    tool_deltas = [i for i in seen if isinstance(i, tm.ToolCallDelta)]
    text = "".join(i.text for i in seen if isinstance(i, tm.TokenDelta))
    assert text == "Refunding now." + '{"note": "done"}'  # arguments never mixed into text
    by_call: dict[int, list[tm.ToolCallDelta]] = {}
    for delta in tool_deltas:
        by_call.setdefault(delta.call, []).append(delta)
    assert sorted(by_call) == [0, 1]
    assert {d.tool for d in by_call[0]} == {"refund"} and {d.tool for d in by_call[1]} == {"note"}
    assert json.loads("".join(d.arguments for d in by_call[0])) == ARGS
    assert json.loads("".join(d.arguments for d in by_call[1])) == {"text": "refund asked"}
    assert len(by_call[0]) > 3  # really in pieces
    first_call = [i for i in seen if isinstance(i, tm.TokenDelta | tm.ToolCallDelta)]
    key = first_call[0].key
    indexes = [d.index for d in first_call if d.key == key]
    assert indexes == list(range(len(indexes)))  # one counter for text and tool pieces
    started = [i for i in seen if isinstance(i, tm.RunEvent) and i.type == "tool.started"]
    last_piece = max(seen.index(d) for d in tool_deltas)
    assert all(seen.index(e) > last_piece for e in started)  # no tool ran mid-answer


async def test_tool_deltas_from_the_offline_model_and_in_follow_output() -> None:
    import io

    from typedmesh.cli_follow import arun_following

    def desk_model(request: tm.ModelRequest) -> Any:
        if any(m.role == "tool" for m in request.messages):
            return {"note": "done"}
        return {"tool_calls": [{"name": "refund", "arguments": ARGS}]}

    desk = tm.Agent(
        "desk", input=Order, output=Outcome, model=tm.ScriptedModel(desk_model), tools=[refund]
    )
    items = tm.stream(desk, {"order_id": "ORD-1042"})
    pieces = [i async for i in items if isinstance(i, tm.ToolCallDelta)]
    await items
    assert json.loads("".join(p.arguments for p in pieces)) == ARGS
    assert {(p.tool, p.call) for p in pieces} == {("refund", 0)}

    out = io.StringIO()
    await arun_following(desk, {"order_id": "ORD-1042"}, out=out)
    lines = out.getvalue().splitlines()
    [shown] = [line for line in lines if "> refund " in line]
    assert (
        shown.strip().startswith("desk > refund {")
        and json.loads(shown.split("> refund ", 1)[1]) == ARGS
    )

    out = io.StringIO()
    await arun_following(desk, {"order_id": "ORD-1042"}, out=out, json_lines=True)
    kinds = [json.loads(line)["kind"] for line in out.getvalue().splitlines()]
    assert "tool_delta" in kinds
