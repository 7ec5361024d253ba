"""Contracts checked when a flow is built; the typed error when a handoff fails at run time."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field, field_validator

import typedmesh as tm
from typedmesh.errors import HandoffError
from typedmesh.handoff import Handoff, annotation_problem, handoff_problems


def identity_step(model: type[BaseModel], name: str) -> tm.Step[BaseModel, BaseModel]:
    """A step ``model -> model`` (a Step needs real annotations, not a generic function)."""

    async def body(value: BaseModel, ctx: tm.RunContext) -> BaseModel:
        return value

    body.__annotations__ = {"value": model, "ctx": tm.RunContext, "return": model}
    step: tm.Step[BaseModel, BaseModel] = tm.step(name=name)(body)
    return step


def producer(model: type[BaseModel], value: BaseModel, name: str = "make") -> tm.Step[Any, Any]:
    async def body(start: Start, ctx: tm.RunContext) -> BaseModel:
        return value

    body.__annotations__ = {"start": Start, "ctx": tm.RunContext, "return": model}
    step: tm.Step[Any, Any] = tm.step(name=name)(body)
    return step


class Start(BaseModel):
    go: bool = True


# --- recursive models --------------------------------------------------------------------


class NodeA(BaseModel):
    name: str
    children: list[NodeA] = []
    next: NodeA | None = None


class NodeB(BaseModel):
    name: str
    children: list[NodeB] = []
    next: NodeB | None = None


class NodeC(BaseModel):
    name: int
    children: list[NodeC] = []


class Ping(BaseModel):  # mutually recursive with Pong
    pong: Pong | None = None


class Pong(BaseModel):
    ping: Ping | None = None


class Ping2(BaseModel):
    pong: Pong2 | None = None


class Pong2(BaseModel):
    ping: Ping2 | None = None


for _model in (NodeA, NodeB, NodeC, Ping, Pong, Ping2, Pong2):
    _model.model_rebuild()


def test_two_compatible_recursive_models_pass_without_recursion_error() -> None:
    assert handoff_problems(NodeA, NodeB) == []
    assert handoff_problems(Ping, Ping2) == []
    value = NodeA(name="root", children=[NodeA(name="leaf")], next=NodeA(name="n"))
    flow = tm.sequential(producer(NodeA, value), identity_step(NodeB, "take"))
    out = tm.run(flow, Start()).output
    assert isinstance(out, NodeB) and out.children[0].name == "leaf" and out.next is not None


def test_two_incompatible_recursive_models_are_a_contract_error() -> None:
    with pytest.raises(tm.ContractError) as info:
        tm.sequential(identity_step(NodeA, "a"), identity_step(NodeC, "c"))
    assert any("'name'" in p and "str" in p and "int" in p for p in info.value.problems)


# --- tuples ------------------------------------------------------------------------------


class Pair(BaseModel):
    pair: tuple[int, str]


class IntPair(BaseModel):
    pair: tuple[int, int]


class OpenTuple(BaseModel):
    pair: tuple[int, ...]


class Triple(BaseModel):
    pair: tuple[int, str, str]


def test_every_tuple_item_type_is_compared() -> None:
    with pytest.raises(tm.ContractError) as info:
        tm.sequential(identity_step(Pair, "a"), identity_step(IntPair, "b"))
    assert info.value.problems == ["field 'pair': item 1: gives str, wants int"]
    assert annotation_problem(tuple[int, str], tuple[int, str]) is None
    assert annotation_problem(tuple[int, str], tuple[int, str, str]) is not None  # length
    assert annotation_problem(tuple[int, ...], tuple[int, int]) is not None  # open length
    assert annotation_problem(tuple[int, int], tuple[float, ...]) is None
    assert annotation_problem(tuple[int, str], list[int]) == "item 1: gives str, wants int"
    assert annotation_problem(tuple[()], tuple[int, ...]) is None
    with pytest.raises(tm.ContractError):
        tm.sequential(identity_step(Pair, "a"), identity_step(Triple, "b"))
    with pytest.raises(tm.ContractError):
        tm.sequential(identity_step(OpenTuple, "a"), identity_step(IntPair, "b"))


# --- container conversions and enums ---------------------------------------------------


class Color(enum.StrEnum):
    red = "red"
    blue = "blue"


class Given(BaseModel):
    tags: list[str]
    ids: set[int]
    color: Literal["red"]
    shade: Color


class Wanted(BaseModel):
    tags: tuple[str, ...]
    ids: list[int]
    color: Color
    shade: str


def test_list_to_tuple_set_to_list_literal_to_enum_are_accepted_and_run() -> None:
    assert handoff_problems(Given, Wanted) == []
    value = Given(tags=["a", "b"], ids={3}, color="red", shade=Color.blue)
    out = tm.run(tm.sequential(producer(Given, value), identity_step(Wanted, "take")), Start())
    assert out.output == Wanted(tags=("a", "b"), ids=[3], color=Color.red, shade="blue")


def test_conversions_pydantic_refuses_are_refused() -> None:
    assert annotation_problem(Literal["green"], Color) == "'green' is not a value of Color"
    assert annotation_problem(Literal["red", "green"], Color) is not None
    assert annotation_problem(Color, Literal["red"]) is not None  # 'blue' is not allowed
    assert annotation_problem(set[int], Sequence[int]) is not None  # a set is no Sequence
    assert annotation_problem(list[int], Sequence[int]) is None
    assert annotation_problem(list[str], tuple[int, ...]) == "items: gives str, wants int"


# --- aliases -----------------------------------------------------------------------------


class Order(BaseModel):
    order_id: str
    amount: float


class AliasedOrder(BaseModel):
    order_id: str = Field(alias="orderId")
    amount: float


class CamelOrder(BaseModel):
    orderId: str
    amount: float


def test_a_target_field_with_an_alias_is_filled_by_name() -> None:
    assert handoff_problems(Order, AliasedOrder) == []
    flow = tm.sequential(
        producer(Order, Order(order_id="o-1", amount=2.0)), identity_step(AliasedOrder, "take")
    )
    out = tm.run(flow, Start()).output
    assert isinstance(out, AliasedOrder) and out.order_id == "o-1"


def test_a_source_field_named_like_the_alias_fills_it() -> None:
    assert handoff_problems(CamelOrder, AliasedOrder) == []
    assert Handoff(CamelOrder, AliasedOrder)(CamelOrder(orderId="o-2", amount=1)) == (
        AliasedOrder(orderId="o-2", amount=1)
    )
    problems = handoff_problems(Start, AliasedOrder)
    assert "missing field 'order_id' (str)" in problems


# --- constraints -------------------------------------------------------------------------


class Scored(BaseModel):
    score: float


class Bounded(BaseModel):
    score: float = Field(ge=0, le=1)


class Probability(BaseModel):
    score: Annotated[float, Field(ge=0, le=1)]


class Tight(BaseModel):
    score: float = Field(gt=0.1, lt=0.9)


class Named(BaseModel):
    name: str | None = Field(default=None, min_length=1)


class Label(BaseModel):
    name: Literal["a", "bb"]


class Validated(BaseModel):
    score: float

    @field_validator("score")
    @classmethod
    def non_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("score must not be negative")
        return value


def test_a_target_constraint_the_source_does_not_promise_is_a_contract_error() -> None:
    with pytest.raises(tm.ContractError) as info:
        tm.sequential(identity_step(Scored, "score"), identity_step(Bounded, "bounded"))
    [problem] = info.value.problems
    assert problem == (
        "field 'score': wants float (>= 0, <= 1), gets float with no such constraint"
    )
    assert handoff_problems(Bounded, Probability) == []  # the same bounds, spelled otherwise
    assert handoff_problems(Tight, Bounded) == []  # tighter bounds imply looser ones
    assert handoff_problems(Bounded, Tight) != []
    assert handoff_problems(Label, Named) == []  # each literal value is checked
    assert annotation_problem(Literal[1, 2], Annotated[int, Field(ge=0, le=1)]) == (
        "Literal[2] is not >= 0, <= 1"
    )
    assert annotation_problem(list[float], list[Annotated[float, Field(ge=0)]]) is not None


def test_a_validator_that_fails_at_run_time_is_a_handoff_error_with_run_id_and_partial() -> None:
    assert handoff_problems(Scored, Validated) == []  # validators cannot be compared
    flow = tm.sequential(
        producer(Scored, Scored(score=-1.0)), identity_step(Validated, "check"), name="flow"
    )
    with pytest.raises(HandoffError) as info:
        tm.run(flow, Start(), run_id="h-1")
    err = info.value
    assert isinstance(err, tm.RunError)
    assert err.source in {"Scored", "make"} and err.target in {"Validated", "check"}
    assert err.problems == ["score: Value error, score must not be negative"]
    assert err.run_id == "h-1" and err.partial is not None
    made = err.partial.find("flow/make")
    assert made is not None and made.output == Scored(score=-1.0)


def test_handoff_names_its_steps_in_the_error() -> None:
    handoff = Handoff(Scored, Validated, source="scorer", target="checker")
    with pytest.raises(HandoffError) as info:
        handoff(Scored(score=-2))
    assert info.value.source == "scorer" and info.value.target == "checker"
    assert str(info.value).startswith("handoff from 'scorer' to 'checker'")
    assert Handoff(Scored, Validated)(Scored(score=0.5)) == Validated(score=0.5)
