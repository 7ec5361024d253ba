"""Plain-text contracts: ``output=str`` / ``input=str`` on agents, ``str`` in steps.

Prose is still a typed value (``tm.Text``): checked at every boundary, journaled,
replayed, resumed, and carried through sessions as the text the agent saw.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import typedmesh as tm
from doc_examples import run_doc_example
from typedmesh.errors import (
    ConfigurationError,
    ContractError,
    InputValidationError,
    OutputValidationError,
)
from typedmesh.models.base import ModelRequest


class Ticket(BaseModel):
    subject: str
    body: str


class Category(BaseModel):
    category: str


def recording(answers: list[Any]) -> tuple[tm.ScriptedModel, list[ModelRequest]]:
    seen: list[ModelRequest] = []
    it = iter(answers)

    def answer(request: ModelRequest) -> str:
        seen.append(request)
        value = next(it)
        return value(request) if callable(value) else str(value)

    return tm.ScriptedModel([answer] * len(answers)), seen


def test_a_text_agent_asks_for_prose_and_returns_text() -> None:
    model, seen = recording(["  Dear customer,\nyour refund is on its way.\n\n"])
    writer = tm.Agent("writer", input=Ticket, output=str, model=model, instructions="Reply.")
    assert writer.output_type is tm.Text and writer.output_schema is None

    result = tm.run(writer, Ticket(subject="refund", body="where is it?"))

    assert isinstance(result.output, tm.Text)
    assert str(result.output) == "Dear customer,\nyour refund is on its way."
    request = seen[0]
    assert request.output_schema is None
    system = request.messages[0].content
    assert "plain text" in system and "JSON object" not in system
    assert json.loads(request.messages[-1].content) == {"subject": "refund", "body": "where is it?"}


def test_a_text_input_is_sent_as_the_text_itself() -> None:
    model, seen = recording(['{"category": "billing"}'])
    classify = tm.Agent("classify", input=str, output=Category, model=model)
    assert classify.input_type is tm.Text

    result = tm.run(classify, "I was charged twice")

    assert result.output == Category(category="billing")
    assert seen[0].messages[-1].content == "I was charged twice"
    assert seen[0].output_schema is not None  # the structured side keeps its schema


def test_a_blank_answer_is_sent_back_and_then_refused() -> None:
    model, seen = recording(["   \n", "Now with words."])
    writer = tm.Agent("writer", input=str, output=str, model=model)
    assert str(tm.run(writer, "go").output) == "Now with words."
    feedback = seen[1].messages[-1].content
    assert "at least 1 character" in feedback and "corrected answer only" in feedback
    assert "JSON" not in feedback

    blank, _ = recording(["", " ", "\t"])
    mute = tm.Agent("mute", input=str, output=str, model=blank, output_retries=2)
    with pytest.raises(OutputValidationError) as failed:
        tm.run(mute, "go")
    assert failed.value.raw_outputs == ["", " ", "\t"]


def test_json_looking_prose_is_kept_verbatim() -> None:
    """A text answer is never decoded: braces, fences and control text are content."""
    answer = '```json\n{"not": "parsed"}\n```'
    writer = tm.Agent("writer", input=str, output=str, model=tm.ScriptedModel([answer]))
    assert tm.run(writer, "go").output.text == answer


def test_text_contracts_are_checked_when_the_flow_is_built() -> None:
    writer = tm.Agent("writer", input=Ticket, output=str, model=tm.SchemaModel())
    editor = tm.Agent("editor", input=str, output=str, model=tm.SchemaModel())
    tm.sequential(writer, editor)  # Text -> Text fits

    classify = tm.Agent("classify", input=Ticket, output=Category, model=tm.SchemaModel())
    with pytest.raises(ContractError) as refused:
        tm.sequential(writer, classify)
    assert "Text" in str(refused.value)


def test_a_text_flow_takes_a_str_and_refuses_other_input() -> None:
    echo = tm.Agent("echo", input=str, output=str, model=tm.ScriptedModel(["ok"]))
    assert tm.run(echo, tm.Text(text="x")).output.text == "ok"
    echo2 = tm.Agent("echo", input=str, output=str, model=tm.ScriptedModel(["ok"]))
    assert tm.run(echo2, {"text": "x"}).output.text == "ok"
    with pytest.raises(InputValidationError):
        tm.run(echo2, {"words": "x"})


def test_steps_take_and_return_bare_strings() -> None:
    @tm.step
    def title(t: Ticket) -> str:
        return t.subject.title()

    @tm.step
    async def shout(s: str) -> str:
        return s.upper() + "!"

    @tm.step
    def wrap(s: str, ctx: tm.RunContext) -> Category:
        return Category(category=s)

    assert (title.output_type, shout.input_type, wrap.input_type) == (tm.Text, tm.Text, tm.Text)
    result = tm.run(tm.sequential(title, shout, wrap), Ticket(subject="late parcel", body=""))
    assert result.output == Category(category="LATE PARCEL!")

    with pytest.raises(ContractError, match="pydantic model or str"):

        @tm.step
        def bad(n: int) -> str:
            return str(n)


def test_a_text_run_is_journaled_replayed_and_verified(tmp_path: Path) -> None:
    journal = tmp_path / "runs.db"
    writer = tm.Agent(
        "writer",
        input=Ticket,
        output=str,
        model=tm.ScriptedModel(["Draft one."]),
    )
    editor = tm.Agent("editor", input=str, output=str, model=tm.ScriptedModel(["Final text."]))
    flow = tm.sequential(writer, editor)
    result = tm.run(flow, Ticket(subject="s", body="b"), journal=journal)

    replayed = tm.replay(result.run_id, flow, journal=journal)
    assert replayed.output == result.output == tm.Text(text="Final text.")
    assert tm.resume(result.run_id, flow, journal=journal).output == result.output
    with pytest.raises(ConfigurationError, match="swapped"):
        tm.replay(flow, result.run_id, journal=journal)  # type: ignore[arg-type]


class Review(BaseModel):
    draft: tm.Text
    round: int


def test_a_loop_refines_prose_under_its_cap() -> None:
    drafter, drafts_seen = recording(["short", "a longer draft"])
    drafts = tm.Agent("drafter", input=str, output=str, model=drafter)

    def judge(request: ModelRequest) -> str:
        draft = json.loads(request.messages[-1].content)["draft"]["text"]
        passed = len(draft) > 10
        return json.dumps({"passed": passed, "score": 1.0 if passed else 0.2, "feedback": "longer"})

    critic = tm.Agent(
        "critic", input=Review, output=tm.Evaluation, model=tm.ScriptedModel([judge, judge])
    )
    result = tm.run(tm.loop(drafts, critic, max_rounds=3), "write a note")

    assert result.output.passed and result.output.rounds == 2
    assert result.output.output == tm.Text(text="a longer draft")
    told = drafts_seen[1].messages[0].content
    assert "short" in told and "longer" in told  # round two sees its draft and the feedback


def test_a_session_shows_earlier_text_turns_as_text(tmp_path: Path) -> None:
    model, seen = recording(["Hello! How can I help?", "Your order ships today."])
    chat = tm.Agent("chat", input=str, output=str, model=model)
    session = tm.Session("s-1", journal=tmp_path / "runs.db")
    session.run(chat, "hi")
    session.run(chat, "where is my order?")

    second = [(m.role, m.content) for m in seen[1].messages[1:]]
    assert second == [
        ("user", "hi"),
        ("assistant", "Hello! How can I help?"),
        ("user", "where is my order?"),
    ]


def test_streamed_deltas_of_a_text_answer_are_the_answer() -> None:
    async def main() -> tuple[list[str], tm.Text]:
        agent = tm.Agent("writer", input=str, output=str, model=tm.SchemaModel())
        pieces: list[str] = []
        async for event in tm.stream(agent, "go"):
            if isinstance(event, tm.TokenDelta):
                pieces.append(event.text)
        return pieces, (await tm.arun(agent, "go")).output

    pieces, final = asyncio.run(main())
    assert len(pieces) > 2 and "".join(pieces) == final.text


def test_agent_overloads_type_text_sides(tmp_path: Path) -> None:
    """mypy infers Agent[In, Text], Agent[Text, Out] and FunctionStep[Text, Text]."""
    source = tmp_path / "typed.py"
    source.write_text(
        "from pydantic import BaseModel\n"
        "import typedmesh as tm\n"
        "class Q(BaseModel):\n    q: str\n"
        "a = tm.Agent('a', input=Q, output=str, model='openai:x')\n"
        "b = tm.Agent('b', input=str, output=Q, model='openai:x', scopes=['s'])\n"
        "@tm.step\n"
        "def s(x: str) -> str:\n    return x\n"
        "ta: tm.Agent[Q, tm.Text] = a\n"
        "tb: tm.Agent[tm.Text, Q] = b\n"
        "ts: tm.FunctionStep[tm.Text, tm.Text] = s\n"
        "bad: tm.Agent[Q, Q] = a\n"
        "typo = tm.Agent('c', input=Q, output=str, model='openai:x', output_retrie=1)\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(source)],
        capture_output=True,
        text=True,
    )
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert [int(line.split(":")[1]) for line in errors] == [13, 14, 14], out.stdout


def test_the_docs_example_runs_as_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    run_doc_example("text.md", capsys)


def test_routing_on_a_text_answer_sends_an_unknown_route_back() -> None:
    classifier, seen = recording(["Weather", " Refund \n"])
    triage = tm.Agent("triage", input=Ticket, output=str, model=classifier)
    refunds = tm.Agent("refunds", input=str, output=str, model=tm.ScriptedModel(["refunded"]))
    faq = tm.Agent("faq", input=str, output=str, model=tm.ScriptedModel(["see the FAQ"]))
    flow = tm.route(triage, routes={"refund": refunds, "faq": faq}, key=lambda t: t.text.lower())

    result = tm.run(flow, Ticket(subject="broken", body="money back"))

    assert result.output.route == "refund" and result.output.output == tm.Text(text="refunded")
    assert "weather" in seen[1].messages[-1].content.lower()  # told which key was unknown


def test_a_text_agent_as_a_tool_answers_the_caller_in_text(tmp_path: Path) -> None:
    drafter = tm.Agent(
        "drafter",
        input=str,
        output=str,
        model=tm.ScriptedModel(["Sorry about the mug: a new one ships today."]),
        instructions="Draft a reply to the customer.",
    )
    draft_tool = tm.agent_tool(drafter)
    assert draft_tool.schema.parameters["required"] == ["text"]
    assert "returns plain text" in draft_tool.schema.description

    def desk(request: ModelRequest) -> Any:
        told = [m.content for m in request.messages if m.role == "tool"]
        if told:
            return {"category": told[-1]}
        return {"tool_calls": [{"name": "drafter", "arguments": {"text": "mug broke"}}]}

    seen: list[ModelRequest] = []

    def watching(request: ModelRequest) -> Any:
        seen.append(request)
        return desk(request)

    support = tm.Agent(
        "support",
        input=Ticket,
        output=Category,
        model=tm.ScriptedModel([watching, watching]),
        tools=[draft_tool],
    )
    journal = tmp_path / "runs.db"
    result = tm.run(support, Ticket(subject="mug", body="broke"), journal=journal)

    assert result.output.category == "Sorry about the mug: a new one ships today."
    assert seen[1].messages[-1].content == "Sorry about the mug: a new one ships today."
    assert tm.replay(result.run_id, support, journal=journal).identical
