"""agent_tool(): an agent called as a typed tool, run as a child step under its own
identity and scopes, its failures told to the caller, replayed and resumed exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.agent_tools import AgentTool, agent_tool
from typedmesh.models.base import ModelRequest, ModelResponse


class RefundAsk(BaseModel):
    order_id: str
    amount: float


class Receipt(BaseModel):
    refund_id: str
    amount: float


class Ticket(BaseModel):
    order_id: str
    text: str


class Reply(BaseModel):
    message: str


PAID: list[str] = []


@pytest.fixture(autouse=True)
def _fresh_ledger() -> None:
    PAID.clear()


@tm.tool(requires={"orders:refund"}, idempotent=False)
def issue_refund(order_id: str, amount: float) -> Receipt:
    """Move money back to the customer's card."""
    PAID.append(order_id)
    return Receipt(refund_id=f"RF-{order_id}", amount=amount)


def tool_answers(request: ModelRequest) -> list[str]:
    return [m.content for m in request.messages if m.role == "tool"]


def billing_model(request: ModelRequest) -> Any:
    ask = request.input_data()
    answers = tool_answers(request)
    if not answers:
        return {"tool_calls": [{"name": "issue_refund", "arguments": ask}]}
    if answers[-1].startswith("Error"):
        return {"refund_id": "none", "amount": 0}
    return json.loads(answers[-1])


def desk_model(tool: str = "billing", amount: float = 12.5) -> tm.ScriptedModel:
    def answer(request: ModelRequest) -> Any:
        ticket = request.input_data()
        answers = tool_answers(request)
        if not answers:
            arguments = {"order_id": ticket["order_id"], "amount": amount}
            return {"tool_calls": [{"name": tool, "arguments": arguments}]}
        return {"message": answers[-1]}

    return tm.ScriptedModel(answer)


def billing_agent(model: tm.Model | None = None) -> tm.Agent[RefundAsk, Receipt]:
    return tm.Agent(
        "billing",
        version="3.0.0",
        deployment="payments",
        instructions="Refund orders the desk hands over.\nMore detail.",
        input=RefundAsk,
        output=Receipt,
        model=model or tm.ScriptedModel(billing_model),
        tools=[issue_refund],
        scopes={"orders:refund"},
    )


def desk_agent(
    *tools: tm.Tool, model: tm.Model | None = None, scopes: set[str] | None = None
) -> tm.Agent[Ticket, Reply]:
    return tm.Agent(
        "desk",
        version="1.0.0",
        input=Ticket,
        output=Reply,
        model=model or desk_model(),
        tools=tools or [agent_tool(billing_agent())],
        scopes=scopes or set(),
        withheld_scopes={"orders:refund", "desk:delegate"},  # denied at run time, on purpose
    )


TICKET = {"order_id": "O-9", "text": "refund please"}


def test_the_tool_takes_the_agents_input_and_returns_its_output() -> None:
    billing = billing_agent()
    tool = agent_tool(billing)
    assert isinstance(tool, AgentTool) and isinstance(tool, tm.Tool)
    assert tool.name == "billing" and tool.requires == frozenset()
    assert tool.description.startswith(
        "Refund orders the desk hands over. (delegates to billing@3.0.0"
    )
    assert tool.schema.parameters == RefundAsk.model_json_schema()
    assert tool.parse_arguments({"order_id": "O-1", "amount": 3}) == RefundAsk(
        order_id="O-1", amount=3
    )
    named = agent_tool(billing, name="refunds", description="Refund an order.")
    assert named.name == named.schema.name == "refunds"
    assert named.schema.description == "Refund an order."
    assert "billing@3.0.0" in repr(named)
    with pytest.raises(tm.ConfigurationError):
        agent_tool(issue_refund)  # type: ignore[arg-type]


def test_the_child_runs_under_its_own_path_identity_and_scopes() -> None:
    model = desk_model()
    desk = desk_agent(model=model)
    journal = tm.MemoryJournal()
    result = tm.run(desk, TICKET, journal=journal)

    assert PAID == ["O-9"]  # billing holds orders:refund; the desk does not, and needs not
    assert json.loads(result.output.message) == {"refund_id": "RF-O-9", "amount": 12.5}
    assert json.loads(model.calls[1].messages[-1].content) == {
        "refund_id": "RF-O-9",
        "amount": 12.5,
    }
    child = result.trace.find("desk/tool#0/billing")
    assert child is not None and child.kind == "agent"
    assert child.identity == tm.AgentIdentity(
        name="billing", version="3.0.0", deployment="payments"
    )
    assert child.usage.model_calls == 2 and child.usage.tool_calls == 1
    assert [n.path for n in result.trace.children] == ["desk/tool#0/billing"]
    desk_node = result.trace
    assert desk_node.usage.model_calls == 2 and desk_node.usage.tool_calls == 1
    stored = journal.read(result.run_id)
    calls = {
        (e.type, e.key, (e.agent or {}).get("name"))
        for e in stored
        if e.type in ("model.request", "tool.started")
    }
    assert calls == {
        ("model.request", "desk/model#0", "desk"),
        ("tool.started", "desk/tool#0", "desk"),
        ("model.request", "desk/tool#0/billing/model#0", "billing"),
        ("tool.started", "desk/tool#0/billing/tool#0", "billing"),
        ("model.request", "desk/tool#0/billing/model#1", "billing"),
        ("model.request", "desk/model#1", "desk"),
    }
    started = next(e for e in stored if e.type == "step.started" and e.path.endswith("billing"))
    assert started.parent_span_id == tm.runtime.context.span_id(result.run_id, "desk/tool#0")
    assert tm.verify_run(journal, result.run_id).ok


def test_the_caller_cannot_use_the_childs_tool_itself() -> None:
    desk = desk_agent(agent_tool(billing_agent()), issue_refund, model=desk_model("issue_refund"))
    result = tm.run(desk, TICKET)
    assert PAID == []
    assert result.output.message.startswith("Error: not allowed. Tool 'issue_refund' needs")
    assert result.trace.children == []


def test_the_child_is_refused_what_its_own_scopes_do_not_allow() -> None:
    """The caller's scopes do not leak into the child: the desk holds orders:refund here,
    billing does not, so billing's refund is denied (and told to billing's model)."""
    billing = billing_agent()
    billing.scopes = frozenset()
    desk = desk_agent(agent_tool(billing), scopes={"orders:refund"})
    result = tm.run(desk, TICKET)
    assert PAID == []
    assert json.loads(result.output.message) == {"refund_id": "none", "amount": 0.0}
    child = result.trace.find("desk/tool#0/billing")
    assert child is not None
    assert [e["event"] for e in child.events] == ["tool.denied"]


def test_requires_is_what_the_caller_needs_to_delegate() -> None:
    guarded = agent_tool(billing_agent(), requires={"desk:delegate"})
    result = tm.run(desk_agent(guarded), TICKET)
    assert PAID == [] and result.trace.children == []
    assert "needs scope(s) ['desk:delegate']" in result.output.message
    allowed = tm.run(desk_agent(guarded, scopes={"desk:delegate"}), TICKET)
    assert PAID == ["O-9"] and len(allowed.trace.children) == 1


def test_invalid_arguments_are_told_to_the_caller_and_the_child_never_runs() -> None:
    def bad(request: ModelRequest) -> Any:
        if not tool_answers(request):
            return {"tool_calls": [{"name": "billing", "arguments": {"order_id": "O-9"}}]}
        return {"message": tool_answers(request)[-1]}

    result = tm.run(desk_agent(model=tm.ScriptedModel(bad)), TICKET)
    assert result.output.message.startswith("Error: invalid arguments for tool 'billing'")
    assert "amount" in result.output.message
    assert result.trace.children == [] and PAID == []


def test_a_child_failure_is_a_tool_error_told_to_the_caller() -> None:
    billing = billing_agent(tm.ScriptedModel(["not json", "still not", "nope"]))
    model = desk_model()
    result = tm.run(desk_agent(agent_tool(billing), model=model), TICKET)
    told = model.calls[1].messages[-1].content
    assert told.startswith("Error: agent 'billing' failed (OutputValidationError): ")
    assert result.output.message == told
    child = result.trace.find("desk/tool#0/billing")
    assert child is not None and child.status == "failed"
    assert result.trace.status == "ok"
    errors = [e for e in result.trace.events if e["event"] == "tool.error"]
    assert len(errors) == 1 and errors[0]["tool"] == "billing"


def test_a_budget_exhausted_in_the_child_stops_the_run() -> None:
    with pytest.raises(tm.BudgetExceeded):
        tm.run(desk_agent(), TICKET, budget=tm.Budget(max_model_calls=2))
    assert PAID == ["O-9"]


def test_a_bug_in_the_childs_code_fails_the_run() -> None:
    @tm.step
    def broken(ask: RefundAsk) -> Receipt:
        raise KeyError("oops")

    with pytest.raises(tm.StepFailed):
        tm.run(desk_agent(agent_tool(broken, name="billing")), TICKET)


class Exploding:
    name = "exploding"
    provider = "offline"

    async def generate(self, request: ModelRequest) -> ModelResponse:
        raise AssertionError("a replay called a model")


@pytest.mark.parametrize("fails", [False, True])
def test_replay_is_exact(fails: bool) -> None:
    billing = billing_agent(tm.ScriptedModel(["x", "y", "z"]) if fails else None)
    desk = desk_agent(agent_tool(billing))
    journal = tm.MemoryJournal()
    result = tm.run(desk, TICKET, journal=journal)
    desk._model = Exploding()
    billing._model = Exploding()
    replayed = tm.replay(result.run_id, desk, journal=journal)
    assert replayed.identical and replayed.executed == 0
    assert replayed.output == result.output
    expected: list[str] = [] if fails else ["O-9"]
    assert expected == PAID


def test_a_crash_inside_the_child_resumes_without_repeating_its_refund(tmp_path: Path) -> None:
    class Crash(BaseException):
        """The process dies: nothing after this point is journaled."""

    crash = [True]

    def dies_after_refunding(request: ModelRequest) -> Any:
        if tool_answers(request) and crash[0]:
            raise Crash
        return billing_model(request)

    desk = desk_agent(agent_tool(billing_agent(tm.ScriptedModel(dies_after_refunding))))
    db = tmp_path / "runs.db"
    with pytest.raises(Crash):
        tm.run(desk, TICKET, journal=db, run_id="r1")
    assert PAID == ["O-9"]
    crash[0] = False
    resumed = tm.resume("r1", desk, journal=db)
    assert PAID == ["O-9"]  # the child's refund was served from the journal, not repeated
    assert json.loads(resumed.output.message) == {"refund_id": "RF-O-9", "amount": 12.5}
    [in_doubt] = [e for e in resumed.trace.events if e["event"] == "tool.in_doubt"]
    assert in_doubt["tool"] == "billing" and in_doubt["resolution"] == "retried"


def test_a_delegation_may_wait_for_approval() -> None:
    gated = agent_tool(billing_agent(), requires_approval=lambda args: args["amount"] > 10)
    with pytest.raises(tm.RunWaiting):
        tm.run(desk_agent(gated), TICKET, journal=tm.MemoryJournal())
    assert PAID == []
    small = tm.run(desk_agent(gated, model=desk_model(amount=5)), TICKET)
    assert PAID == ["O-9"] and small.trace.children[0].name == "billing"
