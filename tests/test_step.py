"""Steps and contract checks made when a flow is built."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.handoff import annotation_problem, handoff_problems


class Ticket(BaseModel):
    text: str


class Classified(BaseModel):
    category: Literal["billing", "shipping"]
    priority: int
    customer_id: str
    internal_notes: str


class Summary(BaseModel):  # narrower: only two of Classified's fields
    category: str
    priority: float


class NeedsOrder(BaseModel):
    order_id: str
    priority: str


@tm.step
def classify(t: Ticket) -> Classified:
    return Classified(category="billing", priority=2, customer_id="c1", internal_notes="vip")


@tm.step(name="summarize")
async def summarize(s: Summary, ctx: tm.RunContext) -> Summary:
    return Summary(category=s.category.upper(), priority=s.priority + ctx.random() * 0)


def test_step_decorator_reads_types() -> None:
    assert classify.name == "classify"
    assert classify.input_type is Ticket and classify.output_type is Classified
    assert summarize.name == "summarize" and summarize.kind == "function"


def test_step_rejects_untyped_function() -> None:
    def bad(x):  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(tm.ContractError, match="must be a pydantic model"):
        tm.step(bad)


def test_mismatched_sequence_names_both_steps_and_every_field() -> None:
    @tm.step
    def ship(o: NeedsOrder) -> Ticket:
        return Ticket(text=o.order_id)

    with pytest.raises(tm.ContractError) as info:
        tm.sequential(classify, ship)
    err = info.value
    assert err.source == "classify" and err.target == "ship"
    assert any("missing field 'order_id'" in p for p in err.problems)
    assert any("'priority'" in p and "int" in p and "str" in p for p in err.problems)
    assert "classify" in str(err) and "ship" in str(err)


def test_summary_only_handoff_passes_declared_fields_only() -> None:
    seen: list[dict[str, object]] = []

    @tm.step
    def record(s: Summary) -> Summary:
        seen.append(s.model_dump())
        return s

    flow = tm.sequential(classify, record, summarize)
    result = tm.run(flow, {"text": "refund please"})
    assert seen == [{"category": "billing", "priority": 2.0}]  # internal_notes did not pass on
    assert result.output == Summary(category="BILLING", priority=2.0)


def test_annotation_compatibility_rules() -> None:
    assert annotation_problem(Literal["a", "b"], str) is None
    assert annotation_problem(int, float) is None
    assert annotation_problem(list[int], list[float]) is None
    assert annotation_problem(str, str | None) is None
    assert annotation_problem(str | None, str) is not None
    assert annotation_problem(Literal["a", "c"], Literal["a", "b"]) is not None
    assert annotation_problem(dict[str, int], dict[str, str]) is not None
    assert handoff_problems(Classified, Summary) == []


def test_nested_structural_handoff() -> None:
    class InnerA(BaseModel):
        x: int
        y: str

    class InnerB(BaseModel):
        x: float

    class A(BaseModel):
        inner: InnerA

    class B(BaseModel):
        inner: InnerB

    class C(BaseModel):
        inner: int

    assert handoff_problems(A, B) == []
    assert handoff_problems(A, C) != []

    @tm.step
    def make(t: Ticket) -> A:
        return A(inner=InnerA(x=1, y="drop me"))

    @tm.step
    def take(b: B) -> B:
        return b

    assert tm.run(tm.sequential(make, take), Ticket(text="")).output == B(inner=InnerB(x=1.0))
