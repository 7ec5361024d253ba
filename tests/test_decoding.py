"""Lenient decoding: what real models send around and inside their JSON, repaired."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.decoding import (
    CODE_FENCE,
    CONTROL_CHARACTERS,
    SURROUNDING_TEXT,
    decode_json,
)
from typedmesh.models.offline import SloppyModel, sloppy_json

# -- decode_json ----------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=6)
prose = st.text(st.characters(blacklist_characters="{}", blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    value=json_objects,
    seed=st.integers(0, 2**32),
    lead=st.booleans(),
    fence=st.booleans(),
    tail=st.booleans(),
    before=prose,
    after=prose,
)
def test_any_json_object_in_prose_fences_and_raw_controls_decodes_to_itself(
    value: dict[str, Any],
    seed: int,
    lead: bool,
    fence: bool,
    tail: bool,
    before: str,
    after: str,
) -> None:
    text = sloppy_json(value, random.Random(seed), lead=lead, fence=fence, tail=tail)
    decoded = decode_json(f"{before}{text}{after}")
    assert decoded.value == value


@settings(max_examples=200, deadline=None)
@given(value=json_values)
def test_clean_json_decodes_unrepaired(value: Any) -> None:
    decoded = decode_json(json.dumps(value))
    assert decoded.value == value and not decoded.repaired
    assert json.loads(decoded.text()) == value


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [*value, *(s for v in value.values() for s in _strings(v))]
    return []


@settings(max_examples=200, deadline=None)
@given(value=json_objects)
def test_raw_control_characters_inside_strings_are_the_characters(value: dict[str, Any]) -> None:
    text = sloppy_json(value, random.Random(0), lead=False, fence=False)
    decoded = decode_json(text)
    assert decoded.value == value
    controls = any(ch < " " for s in _strings(value) for ch in s)
    assert decoded.repairs == ((CONTROL_CHARACTERS,) if controls else ())


def test_each_repair_is_named() -> None:
    obj = {"code": "def f():\n    return 1\n", "n": 1}
    raw_newline = '{"code": "def f():\n    return 1\n", "n": 1}'
    assert decode_json(raw_newline).repairs == (CONTROL_CHARACTERS,)
    fenced = f"```json\n{json.dumps(obj)}\n```"
    assert decode_json(fenced).repairs == (CODE_FENCE,)
    chatty = f"Sure! Here it is:\n```json\n{raw_newline}\n```\nAnything else?"
    decoded = decode_json(chatty)
    assert decoded.value == obj
    assert decoded.repairs == (CODE_FENCE, SURROUNDING_TEXT, CONTROL_CHARACTERS)
    assert decode_json(f"The answer: {json.dumps(obj)}").repairs == (SURROUNDING_TEXT,)


def test_the_largest_object_wins_over_braces_in_prose() -> None:
    answer = {"summary": "s", "nested": {"a": [1, {"b": "}{"}]}}
    text = f'Use a shape like {{"x": 1}} or {{}}; mine: {json.dumps(answer)} (not {{"y": 2}}).'
    assert decode_json(text).value == answer


def test_fences_and_braces_inside_strings_do_not_confuse_it() -> None:
    answer = {"notes": "```python\nx = {1: 2}\n```", "ok": True}
    assert decode_json(f"```json\n{json.dumps(answer)}\n```").value == answer


@pytest.mark.parametrize(
    "text",
    [
        "not json at all",
        "",
        '{"answer": "truncated", "confidence": ',
        'Here: {"a": 1, "b": {"c": 2}',  # the nested object alone is not the answer
        "```json\n```",
    ],
)
def test_undecodable_text_raises(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        decode_json(text)


# -- agents decode leniently ----------------------------------------------------------


class Spec(BaseModel):
    name: str


class Draft(BaseModel):
    code: str
    notes: str


def writer(model: tm.Model, **options: Any) -> tm.Agent[Spec, Draft]:
    return tm.Agent("writer", input=Spec, output=Draft, model=model, **options)


CODE = "def f() -> int:\n\treturn 1\n"
RAW_NEWLINES = '{"code": "def f() -> int:\n\treturn 1\n", "notes": "first"}'


def test_raw_newlines_in_a_string_are_valid_output_and_recorded_as_repaired() -> None:
    model = tm.ScriptedModel([RAW_NEWLINES])
    journal = tm.MemoryJournal()
    result = tm.run(writer(model, output_retries=0), {"name": "f"}, journal=journal)
    assert result.output == Draft(code=CODE, notes="first")
    assert len(model.calls) == 1
    events = result.trace.find("writer").events
    assert [e["repairs"] for e in events if e["event"] == "output.repaired"] == [
        [CONTROL_CHARACTERS]
    ]
    assert not [e for e in events if e["event"] == "output.invalid"]
    # the journal keeps the text as the model sent it, and the repair
    recorded = journal.read(result.run_id)
    responses = [e.payload["response"]["content"] for e in recorded if e.type == "model.response"]
    assert responses == [RAW_NEWLINES]
    assert [e.payload for e in recorded if e.type == "output.repaired"] == [
        {"repairs": [CONTROL_CHARACTERS]}
    ]


def test_a_sentence_and_a_fence_around_the_json_are_accepted() -> None:
    text = f"Here is the draft you asked for:\n\n```json\n{RAW_NEWLINES}\n```\nCheers."
    result = tm.run(writer(tm.ScriptedModel([text]), output_retries=0), {"name": "f"})
    assert result.output.code == CODE
    [repaired] = [e for e in result.trace.find("writer").events if e["event"] == "output.repaired"]
    assert repaired["repairs"] == [CODE_FENCE, SURROUNDING_TEXT, CONTROL_CHARACTERS]


def test_only_undecodable_text_is_sent_back() -> None:
    model = tm.ScriptedModel(["I cannot do that.", RAW_NEWLINES])
    result = tm.run(writer(model), {"name": "f"})
    assert result.output.notes == "first"
    assert len(model.calls) == 2
    assert "Invalid JSON" in model.calls[1].messages[-1].content
    events = [e["event"] for e in result.trace.find("writer").events]
    assert events.count("output.invalid") == 1 and events.count("output.repaired") == 1


def test_a_repaired_answer_that_breaks_the_schema_is_sent_back_with_schema_errors() -> None:
    broken = 'Sure:\n{"code": "x\ny"}'
    model = tm.ScriptedModel([broken, RAW_NEWLINES])
    tm.run(writer(model), {"name": "f"})
    feedback = model.calls[1].messages[-1].content
    assert "notes" in feedback and "Invalid JSON" not in feedback


def test_every_raw_output_is_kept_as_received() -> None:
    raws = ["nope", 'Sure: {"code": "x\ny"}', "```json\n{}\n```"]
    with pytest.raises(tm.OutputValidationError) as info:
        tm.run(writer(tm.ScriptedModel(list(raws))), {"name": "f"})
    assert info.value.raw_outputs == raws


# -- SloppyModel ----------------------------------------------------------------------


def test_sloppy_model_output_decodes_to_the_inner_models_value() -> None:
    inner = tm.ScriptedModel(lambda r: {"code": CODE, "notes": "n"})
    sloppy = SloppyModel(inner, seed=1)
    result = tm.run(writer(sloppy, output_retries=0), {"name": "f"})
    assert result.output == Draft(code=CODE, notes="n")
    assert result.trace.find("writer").models == ["scripted"]
