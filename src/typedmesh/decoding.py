"""From a model's raw text to the JSON value its output is validated from.

Real models answer sloppily even under JSON-schema constrained decoding: a
Markdown code fence around the JSON, a sentence before or after it, a raw
newline inside a string that holds code. ``decode_json`` repairs exactly
those (and says which it repaired); text with no decodable JSON object in it
is the only thing a model must be asked to send again.

``OutputView`` is how a pattern changes what a model writes for a step's
output without changing the step's contract: it narrows the model-facing
schema and stamps what the framework already holds into the decoded answer
(as ``parallel`` does with the conflicts it detected). An agent finds a view
in its gate's ``extra`` under ``OUTPUT_VIEW``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .step import Gate

__all__ = [
    "CODE_FENCE",
    "CONTROL_CHARACTERS",
    "OUTPUT_VIEW",
    "SURROUNDING_TEXT",
    "Decoded",
    "OutputView",
    "decode_json",
    "output_view",
]

CODE_FENCE = "code fence"
SURROUNDING_TEXT = "text around the JSON"
CONTROL_CHARACTERS = "raw control characters in strings"

OUTPUT_VIEW = "output_view"
"""The key of a ``Gate.extra`` entry holding an ``OutputView`` for the gated step."""

_STRICT = json.JSONDecoder()
_LAX = json.JSONDecoder(strict=False)  # raw control characters allowed inside strings


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded answer: the JSON ``value``, and what was repaired to get it.

    ``repairs`` is empty when the text was clean JSON; otherwise it names each
    repair (``CODE_FENCE``, ``SURROUNDING_TEXT``, ``CONTROL_CHARACTERS``).
    """

    value: Any
    repairs: tuple[str, ...] = ()

    @property
    def repaired(self) -> bool:
        return bool(self.repairs)

    def text(self) -> str:
        """The value as clean JSON text (what is validated when a repair was needed)."""
        return json.dumps(self.value, ensure_ascii=False, allow_nan=True)


def decode_json(text: str) -> Decoded:
    """The JSON value in a model's ``text``, leniently.

    Clean JSON (any value) decodes as is. Otherwise the largest JSON object in
    the text is taken — whatever surrounds it (a code fence, a sentence before
    or after) is dropped — and raw control characters inside its strings are
    read as the characters they are (a raw newline in a string means a newline).
    Raises ``json.JSONDecodeError`` when the text holds no decodable JSON object.
    """
    body = text.strip()
    try:
        return Decoded(_STRICT.decode(body))
    except json.JSONDecodeError as exc:
        first_error = exc
    try:
        return Decoded(_LAX.decode(body), (CONTROL_CHARACTERS,))
    except json.JSONDecodeError:
        pass
    best: tuple[int, int, Any, bool] | None = None
    for start, end in _object_spans(body):
        if best is not None and end - start <= best[1] - best[0]:
            continue
        candidate = body[start:end]
        try:
            best = (start, end, _STRICT.decode(candidate), False)
        except json.JSONDecodeError:
            try:
                best = (start, end, _LAX.decode(candidate), True)
            except json.JSONDecodeError:
                continue
    if best is None:
        raise first_error
    start, end, value, lax = best
    outside = body[:start] + body[end:]
    repairs = []
    if "```" in outside:
        repairs.append(CODE_FENCE)
        outside = _drop_fences(outside)
    if outside.strip():
        repairs.append(SURROUNDING_TEXT)
    if lax:
        repairs.append(CONTROL_CHARACTERS)
    return Decoded(value, tuple(repairs))


def _object_spans(text: str) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of every balanced top-level ``{...}`` in ``text``.

    Outside an object the text is prose and its quotes mean nothing; inside,
    braces in JSON strings (escapes honoured) do not count. An object still
    open at the end of the text (truncated) yields nothing, nor do the objects
    nested in it: they are parts, not the answer.
    """
    i, n = 0, len(text)
    while True:
        start = text.find("{", i)
        if start < 0:
            return
        depth, in_string, escaped = 0, False, False
        j = start
        while j < n:
            ch = text[j]
            if in_string:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == '"':
                    in_string = False
            elif ch == '"':
                in_string = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        if j >= n:
            return
        yield start, j + 1
        i = j + 1


def _drop_fences(text: str) -> str:
    """``text`` without Markdown fence markers and their info strings (```json)."""
    kept = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            rest = stripped[3:].strip()
            if rest.isidentifier() or not rest:
                continue
        kept.append(line)
    return "\n".join(kept)


@runtime_checkable
class OutputView(Protocol):
    """A pattern's view of what a model writes for a step's output.

    ``schema`` turns the output's model-facing JSON schema into the one the
    model is shown; ``apply`` turns the model's decoded answer into the data
    the output is validated from, stamping what the framework holds;
    ``problems`` lists what a validated output left unaddressed (sent back to
    the model like a gate's problems, counted against the same gate).
    """

    def schema(self, schema: dict[str, Any]) -> dict[str, Any]: ...

    def apply(self, value: Any) -> Any: ...

    def problems(self, output: BaseModel) -> list[str]: ...


def output_view(gate: Gate | None) -> OutputView | None:
    """The ``OutputView`` a gate carries for the step it gates, if any."""
    if gate is None:
        return None
    view = gate.extra.get(OUTPUT_VIEW)
    return view if isinstance(view, OutputView) else None
