"""Hard budgets under concurrency and hostile providers; each test failed before its fix."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, create_model

import typedmesh as tm
from typedmesh.models.base import ModelRequest, ModelResponse, Usage


class Q(BaseModel):
    q: str


class A(BaseModel):
    a: str


class Merged(BaseModel):
    conflicts: list[tm.Conflict] = []


class Counting:
    """A priced model that counts its calls and says it is someone else."""

    provider = "test"

    def __init__(self, name: str = "gpt-4o", served: str = "", usage: Usage | None = None):
        self.name = name
        self.served = served
        self.usage = usage or Usage(input_tokens=100, output_tokens=10)
        self.calls = 0

    async def generate(self, request: ModelRequest) -> ModelResponse:
        self.calls += 1
        return ModelResponse(
            content='{"a": "x"}', usage=self.usage.model_copy(), model=self.served or self.name
        )


def test_ten_concurrent_branches_under_three_calls_make_three() -> None:
    model = Counting()
    branches = {f"b{i}": tm.Agent(f"b{i}", input=Q, output=A, model=model) for i in range(10)}
    merge_in = create_model("MergeIn", **{name: (A, ...) for name in branches})  # type: ignore[call-overload]
    merger = tm.Agent("merge", input=merge_in, output=Merged, model=model)
    flow = tm.parallel(merge=merger, **branches)
    with pytest.raises(tm.BudgetExceeded) as caught:
        tm.run(flow, {"q": "x"}, budget=tm.Budget(max_model_calls=3))
    assert model.calls == 3  # reserved before sending: in-flight calls count
    assert caught.value.limit == "max_model_calls"


def test_a_three_hundred_step_plan_is_capped() -> None:
    class Task(BaseModel):
        topic: str

    class Report(BaseModel):
        summary: str

    worker_calls = Counting()
    worker = tm.Agent("worker", input=Q, output=A, model=worker_calls)
    steps = [{"id": f"s{i}", "worker": "worker", "input": {"q": str(i)}} for i in range(300)]
    plans: list[Any] = []

    def plan(request: ModelRequest) -> Any:
        plans.append(1)
        return {"goal": "g", "steps": steps}

    planner = tm.Agent("planner", input=Task, output=tm.Plan, model=tm.ScriptedModel(plan))
    synth = tm.Agent(
        "synth", input=tm.PlanExecution, output=Report, model=tm.ScriptedModel([{"summary": "s"}])
    )
    flow = tm.orchestrate(planner, workers=[worker], synthesizer=synth)
    with pytest.raises(tm.BudgetExceeded):
        tm.run(flow, {"topic": "t"}, budget=tm.Budget(max_model_calls=5))
    assert len(plans) + worker_calls.calls == 5  # not 301
    plans.clear()
    with pytest.raises(tm.PlanRejected) as rejected:
        tm.run(flow, {"topic": "t"}, budget=tm.Budget(max_plan_steps=20))
    assert worker_calls.calls == 4 and len(plans) == 3  # no worker ran a 300-step plan
    assert any("at most 20" in p for p in rejected.value.problems)


def test_an_unpriced_model_under_a_cost_budget_is_refused_before_any_request() -> None:
    model = Counting(name="my-local-model")
    agent = tm.Agent("a", input=Q, output=A, model=model)
    with pytest.raises(tm.UnpricedModel) as caught:
        tm.run(agent, {"q": "x"}, budget=tm.Budget(max_cost_usd=1.0))
    assert model.calls == 0 and "no known price" in str(caught.value)
    assert isinstance(caught.value, tm.BudgetExceeded)


def test_cost_is_priced_by_the_requested_model_not_the_name_the_server_gives() -> None:
    model = Counting(name="gpt-4o", served="my-free-model")
    journal = tm.MemoryJournal()
    result = tm.run(tm.Agent("a", input=Q, output=A, model=model), {"q": "x"}, journal=journal)
    expected = (100 * 2.50 + 10 * 10.00) / 1e6
    assert result.cost_usd == pytest.approx(expected)
    response = next(e for e in journal.read(result.run_id) if e.type == "model.response")
    assert response.payload["served_model"] == "my-free-model"
    assert response.payload["usage"]["cost_usd"] == pytest.approx(expected)


@pytest.mark.parametrize("tokens", [-5, 10**12])
def test_impossible_usage_is_rejected(tokens: int) -> None:
    model = Counting(usage=Usage.model_construct(input_tokens=tokens, output_tokens=1))
    with pytest.raises(tm.ModelError, match="impossible usage"):
        tm.run(tm.Agent("a", input=Q, output=A, model=model, retry=tm.RetryPolicy(1)), {"q": "x"})


def test_resume_takes_a_new_budget() -> None:
    first, second = Counting(), Counting()

    @tm.step
    def bridge(a: A) -> Q:
        return Q(q=a.a)

    flow = tm.sequential(
        tm.Agent("one", input=Q, output=A, model=first),
        bridge,
        tm.Agent("two", input=Q, output=A, model=second),
    )
    journal = tm.MemoryJournal()
    with pytest.raises(tm.BudgetExceeded):
        tm.run(flow, {"q": "x"}, journal=journal, run_id="r", budget=tm.Budget(max_model_calls=1))
    result = tm.resume("r", flow, journal=journal, budget=tm.Budget(max_model_calls=2))
    assert result.output == A(a="x") and (first.calls, second.calls) == (1, 1)
    assert result.usage.model_calls == 2  # the budget covers the whole run


def test_one_response_with_five_hundred_tool_calls_runs_none_of_them() -> None:
    ran: list[int] = []

    @tm.tool
    def poke(n: int) -> str:
        """Poke."""
        ran.append(n)
        return "ok"

    calls = [{"name": "poke", "arguments": {"n": i}} for i in range(500)]
    agent = tm.Agent(
        "a",
        input=Q,
        output=A,
        model=tm.ScriptedModel([{"tool_calls": calls}]),
        tools=[poke],
        max_tool_rounds=5,
    )
    with pytest.raises(tm.ToolLoopExceeded, match="500 tool calls"):
        tm.run(agent, {"q": "x"})
    assert ran == []


def test_an_attempt_billed_but_unusable_is_counted_live_and_after_resume() -> None:
    class Refuses(Counting):
        async def generate(self, request: ModelRequest) -> ModelResponse:
            self.calls += 1
            if self.calls == 1:
                raise tm.TransientModelError(
                    "refused", status=200, usage=Usage(input_tokens=40, output_tokens=4)
                )
            return await super().generate(request)

    model = Refuses()
    agent = tm.Agent(
        "a", input=Q, output=A, model=model, retry=tm.RetryPolicy(max_attempts=2, backoff=0)
    )
    journal = tm.MemoryJournal()
    result = tm.run(agent, {"q": "x"}, journal=journal, run_id="r")
    assert result.usage.model_calls == 2 and result.usage.input_tokens == 140
    assert result.cost_usd == pytest.approx((140 * 2.50 + 14 * 10.00) / 1e6)
    retry = next(e for e in journal.read("r") if e.type == "model.retry")
    assert retry.payload["status"] == 200
    from typedmesh.runtime.reducer import reduce_events

    assert reduce_events(journal.read("r"), journal).usage == result.usage
