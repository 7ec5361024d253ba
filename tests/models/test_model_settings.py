"""Model settings: on the agent, overridable per run, in the request, through the providers.

``ModelSettings`` (top_p, seed, stop, reasoning effort, provider extras) are
part of a ``ModelRequest`` and so of its identity: a replay compares them.
Unset, they are not in the request's JSON at all, so journals made before
they existed keep replaying. The OpenAI and Anthropic providers pass them
through to the real SDKs, checked here against the keep-alive fake server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fake_provider_server import FakeProviderServer, anthropic_message, openai_completion
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.errors import ConfigurationError, NonDeterminismError, RunWaiting
from typedmesh.journal import open_journal
from typedmesh.models.anthropic import AnthropicModel
from typedmesh.models.base import Message, ModelRequest, ModelSettings
from typedmesh.models.offline import ScriptedModel
from typedmesh.models.openai import OpenAIModel
from typedmesh.runtime.approval import approve


class Task(BaseModel):
    text: str


class Answer(BaseModel):
    reply: str


ALL = ModelSettings(
    top_p=0.5,
    top_k=40,
    seed=11,
    stop=("END",),
    reasoning_effort="low",
    extra={"logit_bias": {"50256": -100}},
)


def ask(**kwargs: Any) -> ModelRequest:
    return ModelRequest(messages=[Message(role="user", content="hi")], **kwargs)


# -- the request ---------------------------------------------------------------------


def test_unset_settings_leave_the_request_json_as_it_was() -> None:
    request = ask(temperature=0.2)
    assert "settings" not in request.model_dump()
    assert request.model_dump_json(exclude={"messages"}) == (
        '{"output_schema":null,"output_name":"output","tools":[],"temperature":0.2,'
        '"max_tokens":null}'
    )


def test_set_settings_are_in_the_request_json_without_unset_fields() -> None:
    request = ask(settings=ModelSettings(seed=3))
    assert request.model_dump()["settings"] == {"seed": 3}
    assert ModelRequest.model_validate_json(request.model_dump_json()) == request


def test_merge_lays_set_fields_over_and_merges_extras() -> None:
    base = ModelSettings(temperature=0.1, top_p=0.9, extra={"a": 1, "b": 1})
    merged = base.merge({"top_p": 0.2, "seed": 5, "extra": {"b": 2}})
    assert merged.model_dump() == {
        "temperature": 0.1,
        "top_p": 0.2,
        "seed": 5,
        "extra": {"a": 1, "b": 2},
    }
    assert base.merge(None) is base
    assert ModelSettings().merge(base) is base
    assert merged.without_limits() == ModelSettings(top_p=0.2, seed=5, extra={"a": 1, "b": 2})
    assert ModelSettings(temperature=1.0).without_limits() is None


def test_a_typo_is_refused() -> None:
    with pytest.raises(ValueError, match="top_q"):
        ModelSettings.coerce({"top_q": 0.3})
    with pytest.raises(ConfigurationError, match=r"agent 'a': model_settings: .*top_q"):
        tm.Agent("a", input=Task, output=Answer, model="schema", model_settings={"top_q": 1})
    with pytest.raises(ConfigurationError, match=r"model_settings: .*top_q"):
        tm.run(
            tm.Agent("a", input=Task, output=Answer, model="schema"),
            {"text": "x"},
            model_settings={"top_q": 1},
        )


# -- agents and runs ------------------------------------------------------------------


def agent(model: ScriptedModel, **kwargs: Any) -> tm.Agent[Task, Answer]:
    return tm.Agent("writer", input=Task, output=Answer, model=model, **kwargs)


def echo() -> ScriptedModel:
    return ScriptedModel(lambda request: Answer(reply="ok"))


def test_the_agents_settings_go_into_every_request() -> None:
    model = echo()
    writer = agent(model, temperature=0.3, model_settings={"seed": 1, "stop": ["x"]})
    tm.run(writer, {"text": "a"})
    request = model.calls[0]
    assert request.temperature == 0.3
    assert request.settings == ModelSettings(seed=1, stop=("x",))


def test_a_runs_settings_are_merged_over_the_agents() -> None:
    model = echo()
    writer = agent(model, temperature=0.3, model_settings={"seed": 1, "top_p": 0.9})
    tm.run(writer, {"text": "a"}, model_settings=ModelSettings(temperature=0.0, seed=2))
    request = model.calls[0]
    assert request.temperature == 0.0
    assert request.settings == ModelSettings(seed=2, top_p=0.9)
    tm.run(writer, {"text": "a"})  # the next run has the agent's own again
    assert model.calls[1].temperature == 0.3 and model.calls[1].settings.seed == 1  # type: ignore[union-attr]


def test_the_runs_settings_are_recorded_and_replayed(tmp_path: Path) -> None:
    journal = tmp_path / "runs.db"
    tm.run(agent(echo()), {"text": "a"}, model_settings={"seed": 9}, journal=journal, run_id="r")
    started = open_journal(journal).read("r")[0].payload
    assert started["model_settings"] == {"seed": 9}
    model = echo()
    assert tm.replay("r", agent(model), journal=journal).identical
    assert model.calls == []


def test_settings_are_part_of_the_requests_identity(tmp_path: Path) -> None:
    journal = tmp_path / "runs.db"
    tm.run(agent(echo(), model_settings={"seed": 1}), {"text": "a"}, journal=journal, run_id="r")
    with pytest.raises(NonDeterminismError) as caught:
        tm.replay("r", agent(echo(), model_settings={"seed": 2}), journal=journal)
    assert '"seed":1' in str(caught.value.expected)


def test_a_run_without_settings_records_none(tmp_path: Path) -> None:
    journal = tmp_path / "runs.db"
    tm.run(agent(echo()), {"text": "a"}, journal=journal, run_id="r")
    assert "model_settings" not in open_journal(journal).read("r")[0].payload


def test_a_resume_keeps_the_recorded_settings(tmp_path: Path) -> None:
    @tm.tool(requires_approval=True)
    def publish(text: str) -> str:
        """Publish it."""
        return "published"

    def answer(request: ModelRequest) -> Any:
        if not any(m.role == "tool" for m in request.messages):
            return {"tool_calls": [{"name": "publish", "arguments": {"text": "t"}}]}
        return Answer(reply="done")

    journal = tmp_path / "runs.db"
    first = ScriptedModel(answer)
    with pytest.raises(RunWaiting):
        tm.run(
            agent(first, tools=[publish]),
            {"text": "a"},
            model_settings={"seed": 4},
            journal=journal,
            run_id="w",
        )
    approve("w", "writer/tool#0", by="test", journal=open_journal(journal))
    second = ScriptedModel(answer)
    assert tm.resume("w", agent(second, tools=[publish]), journal=journal).output.reply == "done"
    assert [c.settings for c in second.calls] == [ModelSettings(seed=4)]


# -- providers ------------------------------------------------------------------------


@pytest.fixture
async def openai_model(server: FakeProviderServer) -> AsyncIterator[OpenAIModel]:
    model = OpenAIModel("gpt-4o-mini", base_url=server.openai_base_url)
    yield model
    await model.aclose()


@pytest.fixture
async def anthropic_model(server: FakeProviderServer) -> AsyncIterator[AnthropicModel]:
    model = AnthropicModel("claude-haiku-4-5", base_url=server.anthropic_base_url)
    yield model
    await model.aclose()


async def test_openai_gets_every_setting_it_has(
    openai_model: OpenAIModel, server: FakeProviderServer
) -> None:
    server.queue(openai_completion("hi"))
    await openai_model.generate(ask(temperature=0.2, max_tokens=9, settings=ALL))
    body = server.bodies[0]
    assert body["temperature"] == 0.2 and body["max_tokens"] == 9
    assert body["top_p"] == 0.5
    assert body["seed"] == 11
    assert body["stop"] == ["END"]
    assert body["reasoning_effort"] == "low"
    assert body["logit_bias"] == {"50256": -100}  # an extra goes in the body as it is
    assert "top_k" not in body  # OpenAI has none


async def test_openai_without_settings_sends_none(
    openai_model: OpenAIModel, server: FakeProviderServer
) -> None:
    server.queue(openai_completion("hi"))
    await openai_model.generate(ask())
    assert set(server.bodies[0]) == {"model", "messages"}


async def test_openai_streaming_sends_them_too(
    openai_model: OpenAIModel, server: FakeProviderServer
) -> None:
    server.queue_stream(openai_completion("streamed"))
    pieces: list[str] = []
    response = await openai_model.generate_stream(ask(settings=ALL), pieces.append)
    assert response.content == "streamed" and "".join(pieces) == "streamed"
    body = server.bodies[0]
    assert body["stream"] is True
    assert (body["seed"], body["top_p"], body["stop"]) == (11, 0.5, ["END"])


async def test_anthropic_gets_every_setting_it_has(
    anthropic_model: AnthropicModel, server: FakeProviderServer
) -> None:
    server.queue(anthropic_message('{"reply": "ok"}'))
    request = ask(
        temperature=0.2,
        output_schema=Answer.model_json_schema(),
        output_name="Answer",
        settings=ALL.merge({"extra": {"thinking": {"type": "adaptive"}}}),
    )
    await anthropic_model.generate(request)
    body = server.bodies[0]
    assert body["temperature"] == 0.2
    assert body["top_p"] == 0.5 and body["top_k"] == 40
    assert body["stop_sequences"] == ["END"]
    assert body["output_config"]["effort"] == "low"
    assert body["output_config"]["format"]["type"] == "json_schema"  # kept beside the effort
    assert body["thinking"] == {"type": "adaptive"}
    assert body["logit_bias"] == {"50256": -100}
    assert "seed" not in body  # Anthropic has none


async def test_anthropic_streaming_sends_them_too(
    anthropic_model: AnthropicModel, server: FakeProviderServer
) -> None:
    server.queue_stream(anthropic_message("streamed"))
    response = await anthropic_model.generate_stream(ask(settings=ALL), lambda text: None)
    assert response.content == "streamed"
    body = server.bodies[0]
    assert body["stream"] is True
    assert (body["top_p"], body["stop_sequences"]) == (0.5, ["END"])


async def test_an_agent_run_reaches_the_provider(
    openai_model: OpenAIModel, server: FakeProviderServer
) -> None:
    server.queue(openai_completion('{"reply": "ok"}'))
    writer = tm.Agent(
        "writer",
        input=Task,
        output=Answer,
        model=openai_model,
        model_settings={"seed": 1, "reasoning_effort": "high"},
    )
    result = await tm.arun(writer, {"text": "a"}, model_settings={"seed": 2})
    assert result.output.reply == "ok"
    body = server.bodies[0]
    assert body["seed"] == 2 and body["reasoning_effort"] == "high"
