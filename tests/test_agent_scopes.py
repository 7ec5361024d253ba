"""An agent with a tool whose scopes it does not hold is refused when built."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.errors import ContractError

refunds: list[str] = []


@tm.tool(requires={"orders:refund"})
def refund(order_id: str) -> str:
    """Refund an order."""
    refunds.append(order_id)
    return "refunded"


@tm.tool(requires={"orders:read"})
def lookup(order_id: str) -> str:
    """Look an order up."""
    return "shipped"


class Ask(BaseModel):
    order_id: str


class Reply(BaseModel):
    text: str


def _agent(model: tm.Model | None = None, **kwargs: object) -> tm.Agent[Ask, Reply]:
    return tm.Agent(
        "clerk",
        input=Ask,
        output=Reply,
        model=model or tm.ScriptedModel([{"text": "ok"}]),
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_tool_the_agent_cannot_call_is_refused_when_built() -> None:
    with pytest.raises(ContractError) as caught:
        _agent(tools=[lookup, refund], scopes={"orders:read"})
    message = str(caught.value)
    assert "'clerk'" in message and "withheld_scopes" in message and "scopes=" in message
    assert caught.value.problems == [
        "tool 'refund' requires ['orders:refund'], which the agent does not hold"
    ]


def test_held_scopes_build() -> None:
    agent = _agent(tools=[lookup, refund], scopes={"orders:read", "orders:refund"})
    assert set(agent.tools) == {"lookup", "refund"}


def test_withheld_scopes_build_and_every_call_is_denied_at_run_time() -> None:
    refunds.clear()
    model = tm.ScriptedModel(
        [{"tool_calls": [{"name": "refund", "arguments": {"order_id": "A1"}}]}, {"text": "no"}]
    )
    agent = _agent(model, tools=[refund], withheld_scopes={"orders:refund"})
    result = tm.run(agent, {"order_id": "A1"})
    assert refunds == []
    assert [e["tool"] for e in result.trace.events if e["event"] == "tool.denied"] == ["refund"]


def test_withholding_covers_only_the_scopes_named() -> None:
    with pytest.raises(ContractError, match="orders:read"):
        _agent(tools=[lookup, refund], withheld_scopes={"orders:refund"})
