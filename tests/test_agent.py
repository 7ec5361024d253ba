"""Agents: structured output, re-asking on invalid output, tools, scopes, provenance."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, Field

import typedmesh as tm
from typedmesh.models.base import ModelRequest


class Question(BaseModel):
    text: str


class Answer(BaseModel):
    answer: str
    confidence: float = Field(ge=0, le=1)


class Cited(BaseModel):
    claims: list[tm.Claim]


def agent(model: tm.Model, **kwargs: object) -> tm.Agent[Question, Answer]:
    return tm.Agent(
        "answerer",
        input=Question,
        output=Answer,
        model=model,
        instructions="Answer briefly.",
        **kwargs,
    )  # type: ignore[arg-type]


def test_structured_output_is_validated_and_schema_sent() -> None:
    model = tm.ScriptedModel(['{"answer": "42", "confidence": 0.9}'])
    result = tm.run(agent(model), {"text": "meaning?"})
    assert result.output == Answer(answer="42", confidence=0.9)
    request = model.calls[0]
    assert request.output_schema == Answer.model_json_schema()
    assert request.output_name == "Answer"
    assert json.loads(request.messages[1].content) == {"text": "meaning?"}
    assert result.usage.model_calls == 1 and result.usage.input_tokens > 0


def test_invalid_output_is_sent_back_with_errors_then_accepted() -> None:
    model = tm.ScriptedModel(
        [
            "not json at all",
            '{"answer": "x", "confidence": 7}',
            '{"answer": "x", "confidence": 0.5}',
        ]
    )
    result = tm.run(agent(model), {"text": "q"})
    assert result.output.confidence == 0.5
    second, third = model.calls[1], model.calls[2]
    assert second.messages[-2].content == "not json at all"
    assert "Invalid JSON" in second.messages[-1].content
    assert "confidence" in third.messages[-1].content
    events = [e["event"] for e in result.trace.events]
    assert events.count("output.invalid") == 2


def test_output_validation_error_keeps_every_raw_output() -> None:
    raws = ["nope", '{"answer": 3}', '{"confidence": 2}']
    with pytest.raises(tm.OutputValidationError) as info:
        tm.run(agent(tm.ScriptedModel(list(raws))), {"text": "q"})
    err = info.value
    assert err.raw_outputs == raws
    assert len(err.errors) == 3 and err.agent == "answerer"
    assert any("confidence" in e for e in err.errors[2])
    assert err.run_id is not None and err.partial is not None
    assert err.partial.status == "failed"


def test_output_retries_zero_fails_on_first_invalid_output() -> None:
    with pytest.raises(tm.OutputValidationError):
        tm.run(agent(tm.ScriptedModel(["{}"]), output_retries=0), {"text": "q"})


def test_code_fenced_json_is_accepted() -> None:
    fenced = '```json\n{"answer": "a", "confidence": 0.1}\n```'
    assert tm.run(agent(tm.ScriptedModel([fenced])), {"text": "q"}).output.answer == "a"


def test_bad_run_input_raises_before_any_model_call() -> None:
    model = tm.ScriptedModel([])
    with pytest.raises(tm.InputValidationError) as info:
        tm.run(agent(model), {"txt": "q"})
    assert model.calls == []
    assert info.value.errors[0]["loc"] == ["text"] or info.value.errors[0]["loc"] == ("text",)


lookups: list[str] = []
refunds: list[str] = []


@tm.tool
def lookup_order(order_id: str) -> dict[str, str]:
    """Find an order by id."""
    lookups.append(order_id)
    return {"order_id": order_id, "status": "shipped"}


@tm.tool(requires={"orders:refund"}, idempotent=False)
def refund(order_id: str, ctx: tm.RunContext) -> str:
    """Refund an order."""
    refunds.append(f"{order_id}:{ctx.idempotency_key}")
    return "refunded"


def test_tool_loop_with_bad_calls_answered_to_the_model() -> None:
    lookups.clear()
    refunds.clear()
    model = tm.ScriptedModel(
        [
            {
                "tool_calls": [
                    {"name": "lookup_order", "arguments": {"order_id": "A1"}},
                    {"name": "lookup_order", "arguments": {"order": 1}},
                    {"name": "delete_db", "arguments": {}},
                    {"name": "refund", "arguments": {"order_id": "A1"}},
                ]
            },
            '{"answer": "shipped", "confidence": 1}',
        ]
    )
    flow = agent(model, tools=[lookup_order, refund], withheld_scopes={"orders:refund"})
    result = tm.run(flow, {"text": "where is A1?"})
    assert result.output.answer == "shipped"
    assert lookups == ["A1"] and refunds == []  # invalid, unknown and denied calls ran nothing
    tool_messages = [m for m in model.calls[1].messages if m.role == "tool"]
    assert json.loads(tool_messages[0].content)["status"] == "shipped"
    assert "order_id" in tool_messages[1].content and tool_messages[1].content.startswith("Error")
    assert "no tool named 'delete_db'" in tool_messages[2].content
    assert "not allowed" in tool_messages[3].content
    events = [e["event"] for e in result.trace.events]
    assert "tool.denied" in events and "tool.unknown" in events
    assert result.usage.tool_calls == 1
    tool_names = [t.name for t in model.calls[0].tools]
    assert tool_names == ["lookup_order", "refund"]


def test_scoped_tool_runs_with_idempotency_key_and_grant_narrows() -> None:
    refunds.clear()
    script = [
        {"tool_calls": [{"name": "refund", "arguments": {"order_id": "B2"}}]},
        '{"answer": "done", "confidence": 1}',
    ]
    flow = agent(tm.ScriptedModel(list(script)), tools=[refund], scopes={"orders:refund"})
    tm.run(flow, {"text": "refund B2"}, run_id="r1")
    assert len(refunds) == 1 and refunds[0].startswith("B2:") and len(refunds[0]) == 3 + 32
    refunds.clear()
    flow = agent(tm.ScriptedModel(list(script)), tools=[refund], scopes={"orders:refund"})
    tm.run(flow, {"text": "refund B2"}, grant=set())
    assert refunds == []


def test_tool_loop_is_capped() -> None:
    call = {"tool_calls": [{"name": "lookup_order", "arguments": {"order_id": "A"}}]}
    model = tm.ScriptedModel(lambda request: call)
    with pytest.raises(tm.ToolLoopExceeded):
        tm.run(agent(model, tools=[lookup_order], max_tool_rounds=3), {"text": "q"})
    assert len(model.calls) == 4


def test_provenance_is_hidden_from_the_model_and_stamped() -> None:
    model = tm.ScriptedModel(['{"claims": [{"statement": "s", "evidence": ["e"]}]}'])
    cited = tm.Agent(
        "analyst", version="2.0.1", deployment="eu-1", input=Question, output=Cited, model=model
    )
    result = tm.run(cited, {"text": "q"}, run_id="run-7")
    assert "Provenance" not in json.dumps(model.calls[0].output_schema)
    assert "provenance" not in json.dumps(model.calls[0].output_schema)
    provenance = result.output.claims[0].provenance
    assert provenance is not None
    assert provenance.agent == tm.AgentIdentity(name="analyst", version="2.0.1", deployment="eu-1")
    assert provenance.run_id == "run-7" and provenance.step_path == "analyst"
    assert provenance.input_digest.startswith("sha256:") and provenance.model == "scripted"


def test_required_provenance_field_is_a_contract_error() -> None:
    class Forged(BaseModel):
        provenance: tm.Provenance

    with pytest.raises(tm.ContractError, match="give it a default"):
        tm.Agent("x", input=Question, output=Forged, model=tm.SchemaModel())


def test_intent_reaches_the_prompt() -> None:
    model = tm.ScriptedModel(['{"answer": "a", "confidence": 0.2}'])
    intent = tm.Intent(goal="Explain to a child", constraints=["no jargon"])
    tm.run(agent(model), {"text": "q"}, intent=intent)
    system = model.calls[0].messages[0].content
    assert "Explain to a child" in system and "no jargon" in system
    assert "Answer briefly." in system


def test_transient_errors_are_retried_per_policy() -> None:
    model = tm.ScriptedModel(
        [tm.TransientModelError("429"), TimeoutError(), '{"answer": "a", "confidence": 0.2}']
    )
    policy = tm.RetryPolicy(max_attempts=3, backoff=0)
    result = tm.run(agent(model, retry=policy), {"text": "q"})
    assert result.output.answer == "a"
    assert [e["event"] for e in result.trace.events] == ["model.retry", "model.retry"]


def test_non_transient_errors_are_not_retried() -> None:
    model = tm.ScriptedModel([RuntimeError("boom"), '{"answer": "a", "confidence": 0.2}'])
    with pytest.raises(tm.ModelError, match="boom"):
        tm.run(agent(model, retry=tm.RetryPolicy(backoff=0)), {"text": "q"})
    assert len(model.calls) == 1


def test_budget_stops_before_the_call_that_would_cross_it() -> None:
    model = tm.ScriptedModel(
        lambda r: {"tool_calls": [{"name": "lookup_order", "arguments": {"order_id": "A"}}]}
    )
    with pytest.raises(tm.BudgetExceeded) as info:
        tm.run(
            agent(model, tools=[lookup_order]), {"text": "q"}, budget=tm.Budget(max_model_calls=2)
        )
    assert len(model.calls) == 2 and info.value.limit == "max_model_calls"
    assert info.value.partial.events[-1]["event"] == "budget.exceeded"


def test_model_string_resolves_lazily() -> None:
    a = tm.Agent("a", input=Question, output=Answer, model="openai:gpt-4o-mini")
    assert a.model_spec == "openai:gpt-4o-mini"
    with pytest.raises(tm.ConfigurationError):
        tm.Agent("b", input=Question, output=Answer, model="nope:x").model  # noqa: B018


def test_offline_model_named_after_a_priced_model_is_costed() -> None:
    model = tm.ScriptedModel(['{"answer": "a", "confidence": 0.2}'], name="gpt-4o")
    result = tm.run(agent(model), {"text": "q"})
    usage = result.usage
    expected = (usage.input_tokens * 2.5 + usage.output_tokens * 10) / 1e6
    assert result.cost_usd == pytest.approx(expected) and expected > 0


def test_requests_are_model_requests() -> None:
    model = tm.SchemaModel(seed=3)
    result = tm.run(agent(model), {"text": "q"})
    assert isinstance(result.output, Answer)
    assert isinstance(ModelRequest(messages=[]), ModelRequest)
