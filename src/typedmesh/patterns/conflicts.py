"""Finding where parallel branches disagree, and carrying it into the merge by construction.

``detect_conflicts`` compares branch outputs field by field (``Compare``
options per field: a float tolerance, lists as sets, ignored fields).
``ConflictView`` is the merge's side of it: the framework stamps the detected
conflicts, each branch's values verbatim, into the merge output's
``conflicts`` field, as it stamps provenance; a merge model is shown, instead
of ``conflicts``, a ``conflict_notes`` object with one required note per
conflicting field. A model never re-types a value and a merge cannot drop a
conflict; the only thing it can leave out is a note, and that is sent back.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeAlias, get_args

from pydantic import BaseModel, TypeAdapter
from pydantic_core import to_jsonable_python

from ..contracts import Conflict
from ..errors import ConfigurationError
from ..provenance import is_provenance_annotation

__all__ = [
    "NOTES_FIELD",
    "Compare",
    "CompareSpec",
    "ConflictView",
    "conflicts_annotation",
    "detect_conflicts",
    "plain",
    "stamp_conflicts",
]

NOTES_FIELD = "conflict_notes"
"""What a merge model writes instead of ``conflicts``: ``{field: note}``."""


@dataclass(frozen=True, slots=True)
class Compare:
    """How ``parallel`` compares one field (and everything under it) across branches.

    ``tolerance``: numbers at most this far apart are equal (``abs(a - b)``);
    ``relative``: numbers equal within this fraction of the larger magnitude;
    ``unordered``: lists are compared as sets (order and repeats ignored);
    ``ignore``: the field is never a conflict (an id, a timestamp, a draw).

    ``tm.parallel(..., compare={"confidence": tm.Compare(tolerance=0.05),
    "risks": tm.Compare(unordered=True)})``; keys are dotted field paths, and
    a single ``Compare`` applies to every field.
    """

    tolerance: float = 0.0
    relative: float = 0.0
    unordered: bool = False
    ignore: bool = False

    def __post_init__(self) -> None:
        for name in ("tolerance", "relative"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value >= 0 or math.isinf(value):
                raise ConfigurationError(f"Compare({name}=...) must be a finite number >= 0")

    def equal(self, a: Any, b: Any) -> bool:
        """Whether two JSON values count as the same under these options."""
        if self.unordered and isinstance(a, list) and isinstance(b, list):
            return _as_set(a) == _as_set(b)
        if _is_number(a) and _is_number(b):
            if a == b:
                return True
            if not (self.tolerance or self.relative):
                return False
            return math.isclose(a, b, rel_tol=self.relative, abs_tol=self.tolerance)
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(self.equal(x, y) for x, y in zip(a, b, strict=True))
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(self.equal(a[k], b[k]) for k in a)
        return bool(a == b)


EXACT = Compare()

CompareSpec: TypeAlias = Compare | Mapping[str, Compare]
"""Comparison options: one ``Compare`` for every field, or one per dotted field path."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_set(values: list[Any]) -> frozenset[str]:
    return frozenset(json.dumps(v, sort_keys=True) for v in values)


class _Rules:
    """The ``Compare`` that applies at each dotted path: the most specific one given."""

    def __init__(self, spec: CompareSpec | None) -> None:
        self.default = EXACT
        self.by_path: dict[str, Compare] = {}
        if isinstance(spec, Compare):
            self.default = spec
        elif spec is not None:
            for path, rule in spec.items():
                if not isinstance(rule, Compare):
                    raise ConfigurationError(
                        f"compare[{path!r}] must be a Compare(...), got {rule!r}"
                    )
                self.by_path[path] = rule

    def at(self, path: str) -> Compare:
        while True:
            rule = self.by_path.get(path)
            if rule is not None:
                return rule
            if "." not in path:
                return self.default
            path = path.rpartition(".")[0]


def plain(value: Any) -> Any:
    """``value`` as JSON data without Provenance fields (they always differ)."""
    if isinstance(value, BaseModel):
        return {
            name: plain(getattr(value, name))
            for name, field in type(value).model_fields.items()
            if not is_provenance_annotation(field.annotation)
        }
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return to_jsonable_python(value)


def _compare(path: str, values: dict[str, Any], rules: _Rules, out: list[Conflict]) -> None:
    rule = rules.at(path)
    if rule.ignore:
        return
    distinct = list(values.values())
    if rule.tolerance or rule.relative:  # closeness is not transitive: every pair
        same = all(rule.equal(a, b) for a, b in itertools.combinations(distinct, 2))
    else:  # equality is: one pass against the first value
        first = distinct[0]
        same = all(rule.equal(first, b) for b in distinct[1:])
    if same:
        return
    if all(isinstance(v, dict) for v in distinct):
        keys = [k for k in distinct[0] if all(k in v for v in distinct[1:])]
        if keys:
            for key in keys:
                _compare(f"{path}.{key}", {b: v[key] for b, v in values.items()}, rules, out)
            return
    out.append(Conflict(field=path, values=values))


def detect_conflicts(
    outputs: Mapping[str, BaseModel], compare: CompareSpec | None = None
) -> list[Conflict]:
    """Every field shared by two or more branches on which their values differ.

    Nested models are compared field by field (dotted paths); lists and
    scalars are compared whole, exactly unless ``compare`` says otherwise
    (see ``Compare``). Fields only one branch has are not conflicts.
    """
    rules = _Rules(compare)
    flat = {branch: plain(out) for branch, out in outputs.items()}
    order: list[str] = []
    for data in flat.values():
        order += [k for k in data if k not in order]
    conflicts: list[Conflict] = []
    for name in order:
        holders = {b: d[name] for b, d in flat.items() if name in d}
        if len(holders) >= 2:
            _compare(name, holders, rules, conflicts)
    return conflicts


# -- carrying conflicts into the merge output ------------------------------------------


def conflicts_annotation(model: type[BaseModel]) -> Any | None:
    """The annotation of ``model``'s ``conflicts`` field if it can hold ``Conflict`` s."""
    field = model.model_fields.get("conflicts")
    if field is None:
        return None
    args = get_args(field.annotation)
    holds = any(isinstance(a, type) and issubclass(a, Conflict) for a in args) or any(
        isinstance(a, type) and issubclass(a, Conflict) for arg in args for a in get_args(arg)
    )
    return field.annotation if holds else None


@cache
def _adapter(model: type[BaseModel]) -> TypeAdapter[Any]:
    annotation = conflicts_annotation(model)
    if annotation is None:
        raise ConfigurationError(f"{model.__name__} has no 'conflicts: list[Conflict]' field")
    return TypeAdapter(annotation)


def check_stampable(model: type[BaseModel]) -> str | None:
    """Why the framework cannot stamp conflicts into ``model`` (None when it can)."""
    if conflicts_annotation(model) is None:
        return "missing field 'conflicts' (list[Conflict])"
    try:
        _adapter(model).validate_python([{"field": "f", "values": {}, "note": ""}])
    except Exception as exc:
        return f"'conflicts' cannot hold the Conflict(field, values, note) stamped in: {exc}"
    return None


def _note_for(field: str, notes: Mapping[str, str]) -> str:
    """The note given for ``field``, or for the nearest parent field that has one."""
    path = field
    while True:
        note = notes.get(path, "")
        if note.strip():
            return note.strip()
        if "." not in path:
            return ""
        path = path.rpartition(".")[0]


def _notes_in(conflicts: Iterable[Any]) -> dict[str, str]:
    """``{field: note}`` from conflicts given as Conflict objects or plain dicts."""
    notes: dict[str, str] = {}
    for c in conflicts:
        data = c.model_dump() if isinstance(c, BaseModel) else c
        if isinstance(data, dict) and isinstance(data.get("field"), str):
            note = data.get("note")
            if isinstance(note, str) and note.strip():
                notes.setdefault(data["field"], note)
    return notes


def _stamped(detected: list[Conflict], notes: Mapping[str, str]) -> list[dict[str, Any]]:
    return [
        {"field": c.field, "values": c.values, "note": _note_for(c.field, notes)} for c in detected
    ]


def stamp_conflicts(output: BaseModel, detected: list[Conflict]) -> None:
    """Set ``output.conflicts`` to exactly the ``detected`` conflicts, in place.

    Values are the branches' own; each note is the one ``output`` already gave
    for that field (or for a parent field), else empty. Whatever else
    ``output`` listed as a conflict is dropped: conflicts are the framework's
    findings, not a model's.
    """
    notes = _notes_in(getattr(output, "conflicts", None) or [])
    stamped = _adapter(type(output)).validate_python(_stamped(detected, notes))
    object.__setattr__(output, "conflicts", stamped)
    output.__pydantic_fields_set__.add("conflicts")


class ConflictView:
    """What a merge model writes: a note per detected conflict, not the conflicts.

    An ``OutputView`` (see ``typedmesh.decoding``): ``schema`` replaces the
    output's ``conflicts`` property by ``conflict_notes`` with one required
    note per conflicting field (no ``conflicts`` at all when the branches
    agree, so a model cannot invent one); ``apply`` stamps the detected
    conflicts into the decoded answer with the model's notes; ``problems``
    names every conflict left without a note. ``stamp`` is the gate's check:
    it stamps any merge output, an agent's or plain code's.
    """

    def __init__(self, detected: list[Conflict]) -> None:
        self.detected = list(detected)
        self.fields = [c.field for c in self.detected]

    def schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(schema)
        props: dict[str, Any] = out.get("properties", {})
        required: list[str] = [r for r in out.get("required", []) if r != "conflicts"]
        rebuilt: dict[str, Any] = {}
        for name, prop in props.items():
            if name == "conflicts":
                if self.fields:
                    rebuilt[NOTES_FIELD] = self._notes_schema()
                continue
            rebuilt[name] = prop
        if self.fields and NOTES_FIELD not in rebuilt:
            rebuilt[NOTES_FIELD] = self._notes_schema()
        if self.fields:
            required.append(NOTES_FIELD)
        out["properties"] = rebuilt
        if required:
            out["required"] = required
        else:
            out.pop("required", None)
        _prune_defs(out)
        return out

    def _notes_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "title": "Conflict notes",
            "description": (
                "The branches disagree on these fields. The framework records each conflict "
                "with every branch's value itself: do not repeat the values. Write one note "
                "per field on what the disagreement turns on; do not average the values and "
                "do not silently pick a side."
            ),
            "properties": {
                f: {
                    "type": "string",
                    "minLength": 1,
                    "description": f"Your note on the disagreement over {f!r}.",
                }
                for f in self.fields
            },
            "required": list(self.fields),
            "additionalProperties": False,
        }

    def guidance(self) -> str:
        """What the merge model is told up front (empty when the branches agree)."""
        if not self.fields:
            return ""
        listed = ", ".join(repr(f) for f in self.fields)
        return (
            f"The branches disagree on {listed}. The framework records each of these "
            "conflicts with every branch's value; you do not repeat them. In "
            f"'{NOTES_FIELD}', write one note per field saying what the disagreement turns "
            "on. Do not average the values and do not silently pick a side."
        )

    def apply(self, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        value = dict(value)
        given = value.pop(NOTES_FIELD, None)
        notes: dict[str, str] = {}
        if isinstance(given, dict):
            notes = {str(k): v for k, v in given.items() if isinstance(v, str)}
        elif isinstance(given, list):  # [{"field": ..., "note": ...}]: the meaning is plain
            notes = _notes_in(given)
        earlier = value.get("conflicts")
        if isinstance(earlier, list):  # a model that wrote conflicts anyway: keep its notes
            for field, note in _notes_in(earlier).items():
                notes.setdefault(field, note)
        value["conflicts"] = _stamped(self.detected, notes)
        return value

    def problems(self, output: BaseModel) -> list[str]:
        carried = {c.field: c for c in getattr(output, "conflicts", None) or []}
        problems = []
        for conflict in self.detected:
            found = carried.get(conflict.field)
            if found is None or not str(getattr(found, "note", "")).strip():
                problems.append(
                    f"no note on the conflict over {conflict.field!r}: give "
                    f"{NOTES_FIELD}[{conflict.field!r}], what the disagreement turns on"
                )
        return problems

    def stamp(self, output: BaseModel) -> list[str]:
        """The gate's check: stamp the conflicts into ``output``; nothing can be missing."""
        stamp_conflicts(output, self.detected)
        return []


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            found.add(ref.removeprefix("#/$defs/"))
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for item in node:
            _refs(item, found)


def _prune_defs(schema: dict[str, Any]) -> None:
    """Drop ``$defs`` entries nothing reachable from the root refers to any more."""
    defs = schema.get("$defs")
    if not isinstance(defs, dict):
        return
    live: set[str] = set()
    _refs({k: v for k, v in schema.items() if k != "$defs"}, live)
    pending = list(live)
    while pending:
        name = pending.pop()
        more: set[str] = set()
        _refs(defs.get(name), more)
        for extra in more - live:
            live.add(extra)
            pending.append(extra)
    for name in list(defs):
        if name not in live:
            del defs[name]
    if not defs:
        del schema["$defs"]
