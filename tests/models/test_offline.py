"""Offline models: scripted playback, schema-valid fakes, deterministic token counts."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import enum
import itertools
import json
import uuid
from typing import Annotated, Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, Json, create_model

from typedmesh.decoding import CODE_FENCE, CONTROL_CHARACTERS, decode_json
from typedmesh.errors import ConfigurationError, ModelError, ScriptExhausted
from typedmesh.models.base import (
    Message,
    Model,
    ModelRequest,
    ModelResponse,
    ToolCall,
    ToolSchema,
    Usage,
)
from typedmesh.models.offline import (
    SchemaModel,
    ScriptedModel,
    SloppyModel,
    count_tokens,
    request_tokens,
    response_tokens,
)


def _request(text: str = "hello", schema: dict[str, Any] | None = None) -> ModelRequest:
    return ModelRequest(messages=[Message(role="user", content=text)], output_schema=schema)


def _run(model: Model, request: ModelRequest) -> ModelResponse:
    return asyncio.run(model.generate(request))


# -- token counting -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tokens"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100)]
)
def test_count_tokens(text: str, tokens: int) -> None:
    assert count_tokens(text) == tokens


def test_request_tokens_counts_messages_tool_calls_schema_and_tools() -> None:
    call = ToolCall(id="call_0", name="search", arguments={"q": "x"})
    tool = ToolSchema(name="search", parameters={"type": "object"})
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    request = ModelRequest(
        messages=[
            Message(role="system", content="be brief"),
            Message(role="assistant", tool_calls=[call]),
            Message(role="tool", content="result", tool_call_id="call_0"),
        ],
        output_schema=schema,
        tools=[tool],
    )
    calls_json = json.dumps([call.model_dump(mode="json", exclude_none=True)], sort_keys=True)
    expected = (
        count_tokens("be brief")
        + count_tokens(calls_json)
        + count_tokens("result")
        + 3 * 4
        + count_tokens(json.dumps(schema, sort_keys=True))
        + count_tokens(json.dumps(tool.model_dump(mode="json"), sort_keys=True))
    )
    assert request_tokens(request) == expected
    assert request_tokens(_request("")) == 4


def test_response_tokens_counts_content_or_tool_calls() -> None:
    assert response_tokens(ModelResponse(content="abcdefgh")) == 2
    call = ToolCall(id="call_0", name="f", arguments={})
    calls_json = json.dumps([call.model_dump(mode="json", exclude_none=True)], sort_keys=True)
    assert response_tokens(ModelResponse(tool_calls=[call])) == count_tokens(calls_json)
    assert response_tokens(ModelResponse()) == 0


# -- ScriptedModel ------------------------------------------------------------


class Answer(BaseModel):
    text: str
    score: int


def test_scripted_model_is_a_model() -> None:
    model = ScriptedModel([])
    assert isinstance(model, Model)
    assert (model.name, model.provider) == ("scripted", "offline")
    assert ScriptedModel.__test__ is False
    assert SchemaModel.__test__ is False


def test_scripted_text_model_and_dict_items() -> None:
    script: list[Any] = [
        "free text",
        Answer(text="hi", score=3),
        {"a": [1, 2]},
        {"when": datetime.date(2024, 1, 2), "who": Answer(text="x", score=1)},
    ]
    model = ScriptedModel(script, name="m1")
    request = _request("question")
    texts = [_run(model, request) for _ in range(4)]
    assert texts[0].content == "free text"
    assert Answer.model_validate_json(texts[1].content or "") == Answer(text="hi", score=3)
    assert json.loads(texts[2].content or "") == {"a": [1, 2]}
    assert json.loads(texts[3].content or "") == {
        "when": "2024-01-02",
        "who": {"text": "x", "score": 1},
    }
    for response in texts:
        assert response.model == "m1"
        assert response.tool_calls == []
        assert response.usage == Usage(
            input_tokens=request_tokens(request),
            output_tokens=response_tokens(response),
            model_calls=1,
        )
    assert model.calls == [request] * 4


def test_scripted_tool_call_ids_count_calls_in_the_conversation() -> None:
    script: list[Any] = [
        {"tool_calls": [{"name": "a", "arguments": {"x": 1}}, {"name": "b"}]},
        {"tool_calls": [{"name": "c", "arguments": {}}], "content": "thinking"},
        {"tool_calls": [{"name": "d", "arguments": {}, "id": "mine"}]},
        {"tool_calls": [{"name": "e", "arguments": "{not json"}]},
        {"tool_calls": [{"name": "f", "arguments": "[1, 2]"}, {"name": "g", "arguments": "{}"}]},
    ]
    model = ScriptedModel(script)
    responses = [_run(model, _request()) for _ in script]
    assert [c.id for c in responses[0].tool_calls] == ["call_0", "call_1"]
    assert responses[0].tool_calls[0].arguments == {"x": 1}
    assert responses[0].tool_calls[1].arguments == {}
    assert responses[0].content is None
    # ids restart for each request: they count the calls already in its messages
    assert [c.id for c in responses[1].tool_calls] == ["call_0"]
    assert responses[1].content == "thinking"
    assert responses[2].tool_calls[0].id == "mine"
    bad = responses[3].tool_calls[0]
    assert (bad.id, bad.arguments, bad.raw_arguments) == ("call_0", None, "{not json")
    not_object, empty = responses[4].tool_calls
    assert (not_object.arguments, not_object.raw_arguments) == (None, "[1, 2]")
    assert (empty.arguments, empty.raw_arguments) == ({}, "{}")
    assert all(r.usage.output_tokens == response_tokens(r) > 0 for r in responses)
    # a conversation that already holds two tool calls continues the count
    prior = Message(
        role="assistant",
        tool_calls=[ToolCall(id="call_0", name="a"), ToolCall(id="call_1", name="b")],
    )
    later = _request()
    later.messages.append(prior)
    other = ScriptedModel([{"tool_calls": [{"name": "a"}]}])
    assert _run(other, later).tool_calls[0].id == "call_2"


def test_scripted_model_response_used_as_is_with_usage_filled_when_zero() -> None:
    given_usage = Usage(input_tokens=7, output_tokens=9, model_calls=1)
    script = [
        ModelResponse(content="as is", model="gpt-x", usage=given_usage),
        ModelResponse(content="no usage"),
    ]
    model = ScriptedModel(script)
    first, second = _run(model, _request()), _run(model, _request())
    assert first == script[0]
    assert first is not script[0]
    assert second.content == "no usage"
    assert second.model == "scripted"
    assert second.usage.model_calls == 1
    assert second.usage.input_tokens == request_tokens(_request())
    assert script[1].usage == Usage()  # the scripted object is not mutated


def test_scripted_exceptions_are_raised() -> None:
    model = ScriptedModel([TimeoutError("slow"), ModelError, "ok"])
    with pytest.raises(TimeoutError, match="slow"):
        _run(model, _request())
    with pytest.raises(ModelError):
        _run(model, _request())
    assert _run(model, _request()).content == "ok"
    assert len(model.calls) == 3


def test_scripted_exhaustion_names_model_and_calls() -> None:
    model = ScriptedModel(["one"], name="planner")
    _run(model, _request())
    with pytest.raises(ScriptExhausted, match=r"'planner' was called 2 times.*only 1") as info:
        _run(model, _request("what next?"))
    assert "what next?" in str(info.value)
    assert len(model.calls) == 2


def test_remaining_and_assert_consumed() -> None:
    model = ScriptedModel(["a", "b"])
    assert model.remaining == 2
    with pytest.raises(AssertionError, match="2 unused"):
        model.assert_consumed()
    _run(model, _request())
    assert model.remaining == 1
    _run(model, _request())
    assert model.remaining == 0
    model.assert_consumed()


def test_scripted_callable_sync_and_async() -> None:
    def sync_fn(request: ModelRequest) -> Any:
        text = request.messages[-1].content
        if text == "tool":
            return {"tool_calls": [{"name": "lookup", "arguments": {"q": text}}]}
        if text == "fail":
            return ValueError("scripted failure")
        return {"echo": text}

    async def async_fn(request: ModelRequest) -> Any:
        await asyncio.sleep(0)
        return Answer(text=request.messages[-1].content, score=len(request.messages))

    model = ScriptedModel(sync_fn)
    assert json.loads(_run(model, _request("hi")).content or "") == {"echo": "hi"}
    assert _run(model, _request("tool")).tool_calls[0].id == "call_0"
    with pytest.raises(ValueError, match="scripted failure"):
        _run(model, _request("fail"))
    assert len(model.calls) == 3
    assert model.remaining == 0
    model.assert_consumed()

    amodel = ScriptedModel(async_fn)
    response = _run(amodel, _request("yo"))
    assert Answer.model_validate_json(response.content or "") == Answer(text="yo", score=1)
    assert response.usage.model_calls == 1


def test_scripted_rejects_unplayable_items() -> None:
    with pytest.raises(ConfigurationError, match="cannot script a int"):
        ScriptedModel(["ok", 42])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="tool_calls"):
        ScriptedModel([{"tool_calls": [{"arguments": {}}]}])
    with pytest.raises(ConfigurationError):
        ScriptedModel(42)  # type: ignore[arg-type]
    model = ScriptedModel(lambda request: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigurationError):
        _run(model, _request())


def test_concurrent_calls_consume_in_call_order() -> None:
    model = ScriptedModel([str(i) for i in range(5)])

    async def main() -> list[str | None]:
        results = await asyncio.gather(*(model.generate(_request()) for _ in range(5)))
        return [r.content for r in results]

    assert asyncio.run(main()) == ["0", "1", "2", "3", "4"]


# -- SchemaModel: fixed models ------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Address(BaseModel):
    street: Annotated[str, Field(min_length=3, max_length=40)]
    zip_code: Annotated[str, Field(pattern=r"^\d{5}$")]


class Person(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=12)]
    age: Annotated[int, Field(ge=0, le=130)]
    height: Annotated[float, Field(gt=0.5, lt=2.5)]
    color: Color
    level: Level = Level.LOW
    kind: Literal["human", "robot"]
    tags: Annotated[list[str], Field(min_length=2, max_length=4)]
    ids: set[int]
    home: Address
    others: list[Address] = []
    nickname: str | None = None
    scores: dict[str, int]
    weights: Annotated[dict[str, float], Field(min_length=1, max_length=2)]
    born: datetime.date
    seen: datetime.datetime
    key: uuid.UUID
    price: decimal.Decimal
    pair: tuple[int, str]
    payload: Json[list[int]]
    step: Annotated[int, Field(multiple_of=5, gt=0, lt=100)]
    ratio: Annotated[float, Field(multiple_of=0.25, ge=-1, le=1)]
    anything: Any = None


class Node(BaseModel):
    value: int
    children: list[Node] = []
    next: Node | None


class Tree(BaseModel):
    label: str
    forest: Forest | None = None


class Forest(BaseModel):
    trees: list[Tree]


Tree.model_rebuild()


class Loop(BaseModel):
    again: Loop


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@pytest.mark.parametrize("model_cls", [Person, Address, Node, Tree, Forest])
def test_schema_model_output_validates_for_many_seeds(model_cls: type[BaseModel]) -> None:
    request = _request("fill it in", model_cls.model_json_schema())
    depths = []
    for seed in range(150):
        response = _run(SchemaModel(seed), request)
        model_cls.model_validate_json(response.content or "")
        depths.append(_depth(json.loads(response.content or "")))
    assert max(depths) <= 20  # the depth guard stops recursive models


def test_schema_model_recursion_goes_deep_sometimes_but_ends() -> None:
    schema = Node.model_json_schema()
    depths = {_depth(SchemaModel(seed).generate_value(schema)) for seed in range(200)}
    assert max(depths) > 4
    assert max(depths) <= 20


def test_schema_model_readable_strings() -> None:
    value = SchemaModel(4).generate_value({"type": "string"})
    assert value and all(word.isalpha() and word.islower() for word in value.split(" "))


def test_unsatisfiable_schema_raises_model_error() -> None:
    with pytest.raises(ModelError, match="cannot produce"):
        _run(SchemaModel(), _request(schema=Loop.model_json_schema()))
    with pytest.raises(ValueError):
        SchemaModel().generate_value({"type": "integer", "minimum": 5, "maximum": 4})


def test_untrivial_pattern_is_skipped_not_fatal() -> None:
    value = SchemaModel().generate_value({"type": "string", "pattern": r"^[A-Z]{2}-\d{4}$"})
    assert isinstance(value, str)


@pytest.mark.parametrize(
    ("schema", "check"),
    [
        ({"const": 5}, lambda v: v == 5),
        ({"enum": ["a", "b"]}, lambda v: v in ("a", "b")),
        ({"type": "null"}, lambda v: v is None),
        ({"type": ["integer", "null"]}, lambda v: v is None or isinstance(v, int)),
        ({"type": "boolean"}, lambda v: isinstance(v, bool)),
        ({"type": "string", "maxLength": 0}, lambda v: v == ""),
        ({"type": "string", "minLength": 300}, lambda v: len(v) >= 300 and v == v.strip()),
        ({"type": "string", "format": "email"}, lambda v: v.endswith("@example.com")),
        ({"type": "string", "format": "uri"}, lambda v: v.startswith("https://")),
        ({"type": "string", "format": "uuid"}, lambda v: uuid.UUID(v).version == 4),
        (
            {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1e-9},
            lambda v: 0 < v < 1e-9,
        ),
        ({"type": "integer", "minimum": 10**20}, lambda v: v >= 10**20),
        ({"type": "array", "maxItems": 0}, lambda v: v == []),
        ({"type": "object", "properties": {}}, lambda v: v == {}),
        ({"allOf": [{"$ref": "#/$defs/A"}], "$defs": {"A": {"const": 1}}}, lambda v: v == 1),
        ({"type": "string", "pattern": "^fixed-literal$"}, lambda v: v == "fixed-literal"),
        (
            {"type": "array", "items": {"type": "boolean"}, "uniqueItems": True, "minItems": 2},
            lambda v: sorted(v) == [False, True],
        ),
    ],
)
def test_generate_value_schema_forms(schema: dict[str, Any], check: Any) -> None:
    for seed in range(30):
        assert check(SchemaModel(seed).generate_value(schema))


def test_schema_model_without_schema_answers_text_and_never_calls_tools() -> None:
    request = ModelRequest(
        messages=[Message(role="user", content="hi")],
        tools=[ToolSchema(name="search", parameters={"type": "object"})],
    )
    response = _run(SchemaModel(1), request)
    assert response.tool_calls == []
    assert response.content and response.content.startswith("Offline answer:")
    assert response.model == "schema"
    assert isinstance(SchemaModel(), Model)


# -- SchemaModel: determinism and usage ---------------------------------------


def test_schema_model_is_deterministic_whatever_the_call_order() -> None:
    a = _request("first", Person.model_json_schema())
    b = _request("second", Person.model_json_schema())
    one, two = SchemaModel(7), SchemaModel(7)
    forward = [_run(one, a).content, _run(one, b).content]
    backward = [_run(two, b).content, _run(two, a).content]
    assert forward == backward[::-1]
    assert forward[0] != forward[1]  # the request is part of the seed
    assert _run(one, a) == _run(SchemaModel(7), a)


def test_schema_model_different_seeds_usually_differ() -> None:
    request = _request("x", Person.model_json_schema())
    outputs = {_run(SchemaModel(seed), request).content for seed in range(20)}
    assert len(outputs) >= 18


def test_schema_model_usage_is_deterministic() -> None:
    request = _request("x", Address.model_json_schema())
    first, second = _run(SchemaModel(3), request), _run(SchemaModel(3), request)
    assert first.usage == second.usage
    assert first.usage == Usage(
        input_tokens=request_tokens(request),
        output_tokens=count_tokens(first.content or ""),
        model_calls=1,
    )


def test_generate_value_is_deterministic_per_seed_and_schema() -> None:
    schema = Person.model_json_schema()
    assert SchemaModel(5).generate_value(schema) == SchemaModel(5).generate_value(schema)


# -- SchemaModel: property-based ----------------------------------------------

_names = itertools.count()


@st.composite
def _int_types(draw: st.DrawFn) -> Any:
    lo = draw(st.integers(-(10**6), 10**6))
    width = draw(st.integers(2, 10**4))
    style = draw(st.sampled_from(["ge_le", "gt_lt", "ge", "lt", "mult", "plain", "huge"]))
    if style == "ge_le":
        return Annotated[int, Field(ge=lo, le=lo + width)]
    if style == "gt_lt":
        return Annotated[int, Field(gt=lo, lt=lo + width)]
    if style == "ge":
        return Annotated[int, Field(ge=lo)]
    if style == "lt":
        return Annotated[int, Field(lt=lo)]
    if style == "mult":
        step = draw(st.integers(1, 50))
        return Annotated[int, Field(ge=lo, le=lo + width + step, multiple_of=step)]
    if style == "huge":
        return Annotated[int, Field(ge=10**30)]
    return int


@st.composite
def _float_types(draw: st.DrawFn) -> Any:
    lo = draw(st.floats(-1e6, 1e6, allow_nan=False))
    width = draw(st.floats(1e-3, 1e6))
    style = draw(st.sampled_from(["ge_le", "gt_lt", "gt", "le", "mult", "plain"]))
    if style == "ge_le":
        return Annotated[float, Field(ge=lo, le=lo + width)]
    if style == "gt_lt":
        return Annotated[float, Field(gt=lo, lt=lo + width)]
    if style == "gt":
        return Annotated[float, Field(gt=lo)]
    if style == "le":
        return Annotated[float, Field(le=lo)]
    if style == "mult":
        step = draw(st.sampled_from([0.1, 0.25, 0.5, 2.5, 3.0]))
        return Annotated[float, Field(gt=lo, lt=lo + width + 2 * step, multiple_of=step)]
    return float


@st.composite
def _str_types(draw: st.DrawFn) -> Any:
    lo = draw(st.integers(0, 60))
    hi = lo + draw(st.integers(0, 40))
    style = draw(st.sampled_from(["both", "min", "max", "plain", "slug"]))
    if style == "both":
        return Annotated[str, Field(min_length=lo, max_length=hi)]
    if style == "min":
        return Annotated[str, Field(min_length=lo)]
    if style == "max":
        return Annotated[str, Field(max_length=hi)]
    if style == "slug":
        return Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]*$", max_length=max(hi, 1))]
    return str


_scalars = st.one_of(
    _int_types(),
    _float_types(),
    _str_types(),
    st.sampled_from(
        [bool, Color, Level, Literal["a"], Literal["x", "y", 3], datetime.date, uuid.UUID]
    ),
)


def _model_of(fields: list[tuple[Any, bool]]) -> type[BaseModel]:
    spec: dict[str, Any] = {
        f"f{i}": ((t | None, None) if optional else (t, ...))
        for i, (t, optional) in enumerate(fields)
    }
    return create_model(f"Gen{next(_names)}", **spec)


def _extend(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    bounds = st.tuples(st.integers(0, 3), st.integers(0, 3)).map(lambda p: (p[0], p[0] + p[1]))
    return st.one_of(
        st.tuples(inner, bounds).map(
            lambda p: Annotated[list[p[0]], Field(min_length=p[1][0], max_length=p[1][1])]  # type: ignore[name-defined]
        ),
        inner.map(lambda t: t | None),
        inner.map(lambda t: dict[str, t]),  # type: ignore[valid-type]
        st.lists(st.tuples(inner, st.booleans()), min_size=1, max_size=4).map(_model_of),
        st.lists(st.tuples(inner, st.booleans()), min_size=1, max_size=3).map(
            lambda fields: list[_model_of(fields)]  # type: ignore[misc]
        ),
    )


_field_types = st.recursive(_scalars, _extend, max_leaves=8)
_models = st.lists(st.tuples(_field_types, st.booleans()), min_size=1, max_size=5).map(_model_of)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_cls=_models, seed=st.integers(0, 2**64))
def test_schema_model_output_validates_for_generated_models(
    model_cls: type[BaseModel], seed: int
) -> None:
    response = _run(SchemaModel(seed), _request("generate", model_cls.model_json_schema()))
    model_cls.model_validate_json(response.content or "")


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**64), ints=st.sets(st.integers(0, 5), min_size=1))
def test_schema_model_validates_sets_and_recursion(seed: int, ints: set[int]) -> None:
    holder = create_model(
        f"Holder{next(_names)}",
        choices=(Annotated[set[Literal[tuple(ints)]], Field(max_length=len(ints))], ...),  # type: ignore[valid-type]
        node=(Node, ...),
        tree=(Tree | None, None),
    )
    value = SchemaModel(seed).generate_value(holder.model_json_schema())
    holder.model_validate(value)


def test_request_helpers_for_offline_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    from typedmesh.models import model_from_env

    request = ModelRequest(
        messages=[
            Message(role="system", content="be brief"),
            Message(role="user", content='{"ticker": "ACME"}'),
        ]
    )
    assert request.system == "be brief" and request.input_data() == {"ticker": "ACME"}
    offline = SchemaModel()
    assert model_from_env(offline) is offline
    monkeypatch.setenv("TYPEDMESH_MODEL", "openai:gpt-4o-mini")
    assert model_from_env(offline) == "openai:gpt-4o-mini"


# -- SloppyModel --------------------------------------------------------------

SLOPPY_VALUE = {"code": "def f():\n\treturn 1\n", "notes": 'a "quoted" \\n word', "n": [1, 2]}


def test_sloppy_model_wraps_json_in_prose_fences_and_raw_newlines() -> None:
    inner = ScriptedModel(lambda r: SLOPPY_VALUE, name="gpt-4o-mini")
    sloppy = SloppyModel(inner, seed=3)
    assert (sloppy.name, sloppy.provider) == ("gpt-4o-mini", "offline")
    response = _run(sloppy, _request())
    text = response.content or ""
    assert "```json" in text and not text.startswith(("{", "`"))
    assert "def f():\n\treturn 1\n" in text  # raw newline and tab inside the string
    assert '\\"quoted\\"' in text and "\\\\n word" in text  # other escapes stay escaped
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    decoded = decode_json(text)
    assert decoded.value == SLOPPY_VALUE
    assert {CODE_FENCE, CONTROL_CHARACTERS} <= set(decoded.repairs)
    assert response.usage.output_tokens == count_tokens(text)
    assert response.model == "gpt-4o-mini"


def test_sloppy_model_is_deterministic_in_seed_and_request() -> None:
    inner = ScriptedModel(lambda r: SLOPPY_VALUE)

    def text(seed: int, message: str = "hello") -> str:
        return _run(SloppyModel(inner, seed=seed), _request(message)).content or ""

    assert text(1) == text(1)
    assert len({text(s) for s in range(12)}) > 1
    assert len({text(0, f"m{i}") for i in range(12)}) > 1


def test_sloppy_model_rate_zero_changes_nothing() -> None:
    inner = ScriptedModel(lambda r: SLOPPY_VALUE)
    text = _run(SloppyModel(inner, rate=0), _request()).content or ""
    assert json.loads(text) == SLOPPY_VALUE
    assert decode_json(text).repairs == ()


def test_sloppy_model_passes_tool_calls_and_plain_text_through() -> None:
    tool = {"tool_calls": [{"name": "search", "arguments": {"q": "x"}}]}
    inner = ScriptedModel([tool, "just words", "[1, 2]"])
    sloppy = SloppyModel(inner)
    calls = _run(sloppy, _request())
    assert calls.tool_calls[0].name == "search" and calls.content is None
    assert _run(sloppy, _request()).content == "just words"
    assert _run(sloppy, _request()).content == "[1, 2]"
    with pytest.raises(ConfigurationError):
        SloppyModel(inner, rate=1.5)


def test_sloppy_schema_model_drives_an_agent_to_the_same_output() -> None:
    import typedmesh as tm

    class In(BaseModel):
        text: str

    class Out(BaseModel):
        lines: list[str]
        body: str
        score: float = Field(ge=0, le=1)

    def agent(model: Model) -> tm.Agent[In, Out]:
        return tm.Agent("a", input=In, output=Out, model=model, output_retries=0)

    for seed in range(5):
        clean = tm.run(agent(SchemaModel(seed)), {"text": "x"}).output
        sloppy = tm.run(agent(SloppyModel(SchemaModel(seed), seed=seed)), {"text": "x"}).output
        assert sloppy == clean


def test_scripted_list_may_hold_functions_of_the_request() -> None:
    async def later(request: ModelRequest) -> Any:
        await asyncio.sleep(0)
        return {"second": request.messages[-1].content}

    model = ScriptedModel(
        [
            lambda request: {"echo": request.messages[-1].content},
            later,
            ValueError,  # an exception class is an answer, not a function
            "fixed",
        ]
    )
    assert model.remaining == 4
    assert json.loads(_run(model, _request("one")).content or "") == {"echo": "one"}
    assert json.loads(_run(model, _request("two")).content or "") == {"second": "two"}
    with pytest.raises(ValueError):
        _run(model, _request("three"))
    assert _run(model, _request("four")).content == "fixed"
    model.assert_consumed()
    with pytest.raises(ScriptExhausted):
        _run(model, _request("five"))


def test_scripted_list_function_must_answer_a_playable_item() -> None:
    nested = ScriptedModel([lambda request: lambda r: "x"])  # type: ignore[list-item,return-value]
    with pytest.raises(ConfigurationError, match="cannot script a function"):
        _run(nested, _request())
