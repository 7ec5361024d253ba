"""Offline models: scripted answers and schema-valid fakes, no network, no keys.

``ScriptedModel`` plays back a script, so a test states exactly what "the
model" says, tool calls and failures included. ``SchemaModel`` invents output
that fits the requested schema, so a whole flow runs end to end in a demo or
a property test. Both count tokens the same deterministic way, so budgets and
usage reports behave as they would against a real provider. ``SloppyModel``
wraps either and answers the way small real models do: a sentence, a code
fence, raw newlines inside JSON strings.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import random
import re
import typing
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, TypeAlias

from pydantic import BaseModel
from pydantic_core import to_json

from ..errors import ConfigurationError, ModelError, ScriptExhausted
from ._schema_values import WORDS, UnsatisfiableSchema, ValueGenerator
from .base import Model, ModelRequest, ModelResponse, ToolCall, Usage
from .streaming import emit_delta, emit_tool_delta, listening, wants_deltas

__all__ = [
    "SchemaModel",
    "ScriptItem",
    "ScriptedModel",
    "SloppyModel",
    "count_tokens",
    "request_tokens",
    "response_tokens",
    "sloppy_json",
]

ScriptItem: TypeAlias = (
    str | BaseModel | dict[str, Any] | ModelResponse | BaseException | type[BaseException]
)
"""One scripted answer: text, a model or dict (as JSON), tool calls, a response, or an error."""

Responder: TypeAlias = Callable[[ModelRequest], ScriptItem | Awaitable[ScriptItem]]
"""A function of the request (sync or async) that answers with a ``ScriptItem``."""

ScriptEntry: TypeAlias = ScriptItem | Responder
"""One entry of a scripted list: an answer, or a function asked for the answer then."""

_TOOL_CALL_KEYS = frozenset({"tool_calls", "content"})


# -- token counting -----------------------------------------------------------


def count_tokens(text: str) -> int:
    """A deterministic token estimate: about four characters a token, 0 for empty text."""
    return (len(text) + 3) // 4


def _tool_calls_json(calls: Sequence[ToolCall]) -> str:
    return json.dumps([c.model_dump(mode="json", exclude_none=True) for c in calls], sort_keys=True)


def request_tokens(request: ModelRequest) -> int:
    """Input tokens of a request: messages (+4 each), output schema and tool schemas."""
    total = 0
    for message in request.messages:
        total += count_tokens(message.content) + 4
        if message.tool_calls:
            total += count_tokens(_tool_calls_json(message.tool_calls))
    if request.output_schema is not None:
        total += count_tokens(json.dumps(request.output_schema, sort_keys=True))
    for tool in request.tools:
        total += count_tokens(json.dumps(tool.model_dump(mode="json"), sort_keys=True))
    return total


def response_tokens(response: ModelResponse) -> int:
    """Output tokens of a response: its content, plus its tool calls as JSON."""
    total = count_tokens(response.content or "")
    if response.tool_calls:
        total += count_tokens(_tool_calls_json(response.tool_calls))
    return total


def _usage(request: ModelRequest, response: ModelResponse) -> Usage:
    return Usage(
        input_tokens=request_tokens(request),
        output_tokens=response_tokens(response),
        model_calls=1,
    )


# -- ScriptedModel ------------------------------------------------------------


def _is_tool_script(item: dict[str, Any]) -> bool:
    return "tool_calls" in item and set(item) <= _TOOL_CALL_KEYS


def _check_item(item: object, *, responder: bool = False) -> None:
    """Reject what ``ScriptedModel`` cannot play, at the point the script is written.

    ``responder``: a function ``fn(request) -> item`` is allowed too (a list entry).
    """
    if isinstance(item, str | BaseModel | BaseException):
        return
    if isinstance(item, type) and issubclass(item, BaseException):
        return
    if isinstance(item, dict):
        if _is_tool_script(item):
            calls = item["tool_calls"]
            if not isinstance(calls, list) or not all(
                isinstance(c, ToolCall) or (isinstance(c, dict) and "name" in c) for c in calls
            ):
                raise ConfigurationError(
                    "scripted tool_calls must be a list of {'name': ..., 'arguments': {...}} "
                    f"dicts, got {calls!r}"
                )
        return
    if responder and callable(item):
        return
    raise ConfigurationError(
        f"cannot script a {type(item).__name__} ({item!r}): use a str, a pydantic model, a "
        "dict, a ModelResponse, an exception"
        + (", or a function of the request" if responder else "")
    )


_PIECES = re.compile(r"\s*\S+")


async def stream_offline(response: ModelResponse) -> None:
    """Hand an offline answer to whoever listens, a word at a time, as a provider
    streams it: its text, then each tool call's arguments (nothing when nobody
    listens); the response itself is unchanged."""
    if not wants_deltas():
        return
    for piece in _pieces(response.content or ""):
        emit_delta(piece)
        await asyncio.sleep(0)  # let a consumer see each piece as it comes
    for number, call in enumerate(response.tool_calls):
        arguments = call.raw_arguments
        if arguments is None:
            arguments = json.dumps(call.arguments or {}, ensure_ascii=False)
        for piece in _pieces(arguments):
            emit_tool_delta(number, call.name, piece)
            await asyncio.sleep(0)


def _pieces(text: str) -> list[str]:
    """``text`` cut before each run of whitespace: the pieces join back to it."""
    pieces = [m.group() for m in _PIECES.finditer(text)]
    rest = text[sum(map(len, pieces)) :]
    return [*pieces, rest] if rest else pieces


def _is_responder(item: object) -> bool:
    """A function among a script's entries (an exception class is an answer, not one)."""
    if isinstance(item, type) and issubclass(item, BaseException):
        return False
    return callable(item) and not isinstance(item, BaseModel | ModelResponse)


async def _respond(responder: Responder, request: ModelRequest) -> ScriptItem:
    item: Any = responder(request)
    if inspect.isawaitable(item):
        item = await item
    _check_item(item)
    return typing.cast(ScriptItem, item)


class ScriptedModel:
    """Answers from a script, in order, and fails loudly when the script runs out.

    ``responses`` is a list of items or a callable ``fn(request) -> item`` (sync
    or async) asked once per request; a list entry may itself be such a
    function, asked only for the request that reaches it (to compute one
    answer from the input among fixed ones). An item is a str (the content as is), a
    pydantic model or a plain dict (its JSON), ``{"tool_calls": [{"name": ...,
    "arguments": {...}}]}`` (ids ``call_0``, ``call_1``... counted per model;
    ``arguments`` may be a str to script malformed arguments; an optional
    ``content`` key rides along), a ``ModelResponse`` (used as is), or an
    exception instance or class (raised, to script a provider failure).

    A dict whose keys are ``tool_calls`` (and maybe ``content``) is always a
    tool-call script; to return such an object as content, pass its JSON text.
    A callable script never runs out, so ``remaining`` is 0 for it.
    """

    __test__: ClassVar[bool] = False
    provider: str = "offline"

    def __init__(
        self, responses: Sequence[ScriptEntry] | Responder, *, name: str = "scripted"
    ) -> None:
        self.name = name
        self.calls: list[ModelRequest] = []
        self._script: list[ScriptEntry] | None = None
        self._responder: Responder | None = None
        self._position = 0
        if isinstance(responses, Sequence) and not isinstance(responses, str):
            for item in responses:
                _check_item(item, responder=True)
            self._script = list(responses)
        elif callable(responses):
            self._responder = responses
        else:
            raise ConfigurationError(
                f"ScriptedModel needs a list of responses or a callable, got {responses!r}"
            )

    def __repr__(self) -> str:
        return f"ScriptedModel(name={self.name!r}, calls={len(self.calls)})"

    @property
    def remaining(self) -> int:
        """Scripted items not yet used (0 for a callable script)."""
        return 0 if self._script is None else len(self._script) - self._position

    def assert_consumed(self) -> None:
        """Fail a test that scripted more answers than the code under test asked for."""
        if self.remaining:
            raise AssertionError(
                f"ScriptedModel {self.name!r} has {self.remaining} unused response(s) "
                f"after {len(self.calls)} call(s)"
            )

    async def generate(self, request: ModelRequest) -> ModelResponse:
        self.calls.append(request)
        if self._script is None:
            assert self._responder is not None
            item: Any = await _respond(self._responder, request)
        else:
            if self._position >= len(self._script):
                raise ScriptExhausted(self._exhausted_message(request))
            item = self._script[self._position]
            self._position += 1
            if _is_responder(item):
                item = await _respond(item, request)
        response = self._play(item, request)
        await stream_offline(response)
        return response

    def _exhausted_message(self, request: ModelRequest) -> str:
        last = request.messages[-1].content if request.messages else ""
        snippet = last if len(last) <= 80 else last[:77] + "..."
        return (
            f"ScriptedModel {self.name!r} was called {len(self.calls)} times but only "
            f"{len(self._script or [])} response(s) were scripted; last message: {snippet!r}"
        )

    def _play(self, item: ScriptItem, request: ModelRequest) -> ModelResponse:
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, type):
            raise item()
        if isinstance(item, ModelResponse):
            response = item.model_copy(deep=True)
            if not response.model:
                response.model = self.name
            if response.usage == Usage():
                response.usage = _usage(request, response)
            return response
        if isinstance(item, str):
            response = ModelResponse(content=item, model=self.name)
        elif isinstance(item, BaseModel):
            response = ModelResponse(content=item.model_dump_json(), model=self.name)
        elif _is_tool_script(item):
            # ids count the calls already in the conversation: the same run gives the same ids
            start = sum(len(m.tool_calls) for m in request.messages)
            calls = [self._tool_call(c, start + i) for i, c in enumerate(item["tool_calls"])]
            response = ModelResponse(content=item.get("content"), tool_calls=calls, model=self.name)
        else:
            response = ModelResponse(content=to_json(item).decode(), model=self.name)
        response.usage = _usage(request, response)
        return response

    def _tool_call(self, spec: ToolCall | dict[str, Any], number: int) -> ToolCall:
        if isinstance(spec, ToolCall):
            return spec
        call_id = spec.get("id") or f"call_{number}"
        arguments = spec.get("arguments", {})
        if isinstance(arguments, str):
            try:
                parsed = json.loads(arguments)
            except json.JSONDecodeError:
                parsed = None
            return ToolCall(
                id=call_id,
                name=spec["name"],
                arguments=parsed if isinstance(parsed, dict) else None,
                raw_arguments=arguments,
            )
        return ToolCall(id=call_id, name=spec["name"], arguments=arguments)


# -- SchemaModel --------------------------------------------------------------


class SchemaModel:
    """Invents output that validates against ``request.output_schema``.

    The output depends only on ``seed`` and the request's JSON: each call
    draws from a ``random.Random`` seeded with their sha256, so parallel
    branches and replays see the same answer whatever the call order. Without
    an output schema it answers a short sentence. It never calls tools.
    See ``_schema_values`` for what the schema walker honours and skips.
    """

    __test__: ClassVar[bool] = False
    provider: str = "offline"

    def __init__(self, seed: int = 0, *, name: str = "schema") -> None:
        self.seed = seed
        self.name = name

    def __repr__(self) -> str:
        return f"SchemaModel(seed={self.seed}, name={self.name!r})"

    def _rng(self, material: str) -> random.Random:
        digest = hashlib.sha256(f"{self.seed}\x00{material}".encode()).digest()
        return random.Random(int.from_bytes(digest[:16], "big"))

    def generate_value(
        self, schema: dict[str, Any] | bool, *, rng: random.Random | None = None
    ) -> Any:
        """A value valid for ``schema``; deterministic in (seed, schema) unless ``rng`` is given.

        Raises ``UnsatisfiableSchema`` (a ValueError) for a schema no value fits.
        """
        if rng is None:
            rng = self._rng(json.dumps(schema, sort_keys=True, default=str))
        return ValueGenerator(schema, rng).value(schema)

    async def generate(self, request: ModelRequest) -> ModelResponse:
        rng = self._rng(request.model_dump_json())
        if request.output_schema is None:
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6)))
            content = f"Offline answer: {words}."
        else:
            try:
                value = self.generate_value(request.output_schema, rng=rng)
            except UnsatisfiableSchema as exc:
                raise ModelError(
                    f"SchemaModel cannot produce {request.output_name!r}: {exc}"
                ) from exc
            value = self._fit_gates(request, value, rng)
            content = json.dumps(value)
        response = ModelResponse(content=content, model=self.name)
        response.usage = _usage(request, response)
        await stream_offline(response)
        return response

    def _fit_gates(self, request: ModelRequest, value: Any, rng: random.Random) -> Any:
        """``value`` made to pass the framework's own gates, not only the schema.

        A ``parallel`` merge: a non-blank note for every field its schema's
        ``conflict_notes`` requires. An ``orchestrate`` planner: a plan of one
        independent step per worker the planner was briefed on, each with an
        input generated from that worker's input schema.
        """
        if not isinstance(value, dict):
            return value
        schema = request.output_schema or {}
        props = schema.get("properties") if isinstance(schema, dict) else None
        if not isinstance(props, dict):
            return value
        notes_schema = props.get(_NOTES_FIELD)
        if isinstance(notes_schema, dict):
            value[_NOTES_FIELD] = _notes(notes_schema, value.get(_NOTES_FIELD), rng)
        if request.output_name == "Plan" and {"goal", "steps"} <= set(props):
            workers = _briefed_workers(request)
            if workers:
                value["steps"] = [
                    {
                        "id": f"step_{i}",
                        "worker": name,
                        "input": self.generate_value(worker_schema, rng=rng),
                        "depends_on": [],
                    }
                    for i, (name, worker_schema) in enumerate(workers.items(), start=1)
                ]
        return value


def _notes(schema: dict[str, Any], given: Any, rng: random.Random) -> dict[str, Any]:
    """``conflict_notes`` with a non-blank note on every field the schema names."""
    notes = dict(given) if isinstance(given, dict) else {}
    fields = [*schema.get("required", [])]
    fields += [f for f in schema.get("properties", {}) if f not in fields]
    for field in fields:
        note = notes.get(field)
        if not isinstance(note, str) or not note.strip():
            words = " ".join(rng.choice(WORDS) for _ in range(3))
            notes[field] = f"the branches disagree on {field}: {words}"
    return notes


_NOTES_FIELD = "conflict_notes"  # patterns.conflicts.NOTES_FIELD (importing it is circular)


def _briefed_workers(request: ModelRequest) -> dict[str, dict[str, Any]]:
    """``{worker: input schema}`` from the worker catalog the framework hands a planner
    as data (``request.context.workers``), never from its prompt's prose."""
    context = request.context
    if context is None:
        return {}
    return {worker.name: worker.input_schema for worker in context.workers}


# -- SloppyModel --------------------------------------------------------------

_LEADS = (
    "Here is the JSON you asked for:",
    "Sure! Here's my answer.",
    "Certainly. Below is the requested output in JSON format.",
    "Okay, here is the result:",
)
_TAILS = (
    "Let me know if you need anything else.",
    "I hope this helps!",
    "Note: all fields follow the schema above.",
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.S)
_RAW = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


def _raw_escapes(match: re.Match[str]) -> str:
    code = match.group(1)
    if code in _RAW:
        return _RAW[code]
    if code[0] == "u" and int(code[1:], 16) < 0x20:
        return chr(int(code[1:], 16))
    return match.group(0)


def sloppy_json(
    value: Any,
    rng: random.Random,
    *,
    lead: bool = True,
    fence: bool = True,
    raw_controls: bool = True,
    tail: bool = False,
) -> str:
    """``value`` as JSON the way a sloppy model writes it.

    ``raw_controls``: control characters inside strings written raw (a newline
    in a string is a line break, not ``\\n``); ``fence``: a Markdown code fence
    around the JSON; ``lead`` / ``tail``: a sentence before / after it. ``rng``
    picks the sentences and the indentation. The value is unchanged: a lenient
    decoder gets exactly ``value`` back.
    """
    text = json.dumps(value, ensure_ascii=False, indent=rng.choice((None, 2)))
    if raw_controls:
        text = _STRING.sub(lambda m: _ESCAPE.sub(_raw_escapes, m.group(0)), text)
    if fence:
        text = f"```json\n{text}\n```"
    if lead:
        text = f"{rng.choice(_LEADS)}\n\n{text}"
    if tail:
        text = f"{text}\n\n{rng.choice(_TAILS)}"
    return text


class SloppyModel:
    """Wraps a model and makes its JSON answers look like a sloppy real model's.

    What small instruction-tuned models do even under JSON-schema constrained
    decoding: a sentence before the JSON, a code fence around it, raw newlines
    (and tabs) inside strings, sometimes a sentence after it. Each trick is
    applied with probability ``rate`` (1.0: every answer has all of them but
    the closing sentence, which comes at half the rate), deterministically in
    ``seed`` and the request. Tool calls and answers that are not a JSON object
    pass through unchanged; the value inside is never changed, so a flow that
    decodes leniently gives the same result as with ``inner`` itself.
    """

    __test__: ClassVar[bool] = False

    def __init__(self, inner: Model, *, seed: int = 0, rate: float = 1.0) -> None:
        if not 0 <= rate <= 1:
            raise ConfigurationError(f"SloppyModel rate must be in [0, 1], got {rate!r}")
        self.inner = inner
        self.seed = seed
        self.rate = rate
        self.name = inner.name
        self.provider = inner.provider

    def __repr__(self) -> str:
        return f"SloppyModel({self.inner!r}, seed={self.seed}, rate={self.rate})"

    async def generate(self, request: ModelRequest) -> ModelResponse:
        with listening(None):  # a listener hears the sloppy text, not the clean one
            response = await self.inner.generate(request)
        sloppy = self._sloppy(request, response)
        await stream_offline(sloppy)
        return sloppy

    def _sloppy(self, request: ModelRequest, response: ModelResponse) -> ModelResponse:
        if response.tool_calls or not response.content:
            return response
        try:
            value = json.loads(response.content)
        except json.JSONDecodeError:
            return response
        if not isinstance(value, dict):
            return response
        material = f"{self.seed}\x00{request.model_dump_json()}".encode()
        rng = random.Random(int.from_bytes(hashlib.sha256(material).digest()[:16], "big"))
        rate = self.rate
        content = sloppy_json(
            value,
            rng,
            lead=rng.random() < rate,
            fence=rng.random() < rate,
            raw_controls=rng.random() < rate,
            tail=rng.random() < rate / 2,
        )
        sloppy = response.model_copy(update={"content": content}, deep=True)
        if self.provider == "offline":  # offline usage is counted from the text: recount it
            sloppy.usage.output_tokens = response_tokens(sloppy)
        return sloppy
