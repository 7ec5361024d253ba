"""Finding where parallel branches disagree, before any merge runs."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from ..contracts import Conflict
from ..provenance import is_provenance_annotation

__all__ = ["detect_conflicts", "missing_conflicts", "plain", "render_conflicts"]


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


def _compare(path: str, values: dict[str, Any], out: list[Conflict]) -> None:
    distinct = list(values.values())
    if all(v == distinct[0] for v in distinct[1:]):
        return
    if all(isinstance(v, dict) for v in distinct):
        keys = [k for k in distinct[0] if all(k in v for v in distinct[1:])]
        if keys:
            for key in keys:
                _compare(f"{path}.{key}", {b: v[key] for b, v in values.items()}, out)
            return
    out.append(Conflict(field=path, values=values))


def detect_conflicts(outputs: dict[str, BaseModel]) -> list[Conflict]:
    """Every field shared by two or more branches on which their values differ.

    Nested models are compared field by field (dotted paths); lists and
    scalars are compared whole. Fields only one branch has are not conflicts.
    """
    flat = {branch: plain(out) for branch, out in outputs.items()}
    order: list[str] = []
    for data in flat.values():
        order += [k for k in data if k not in order]
    conflicts: list[Conflict] = []
    for name in order:
        holders = {b: d[name] for b, d in flat.items() if name in d}
        if len(holders) >= 2:
            _compare(name, holders, conflicts)
    return conflicts


def missing_conflicts(detected: list[Conflict], output: BaseModel) -> list[str]:
    """Detected conflicts that a merge output does not carry (by field, or a parent field)."""
    reported = {
        c.field for c in getattr(output, "conflicts", None) or [] if isinstance(c, Conflict)
    }
    missing = []
    for conflict in detected:
        parts = conflict.field.split(".")
        if not any(".".join(parts[:i]) in reported for i in range(1, len(parts) + 1)):
            missing.append(
                f"conflict on {conflict.field!r} is missing from 'conflicts' "
                f"(values: {conflict.values})"
            )
    return missing


def render_conflicts(conflicts: list[Conflict]) -> str:
    """The merge step's briefing: every conflict it must carry, and the rule."""
    lines = [
        "The branches disagree. The framework detected these conflicts; your 'conflicts' "
        "list must carry every one (same 'field', the branches' values, and a note). "
        "Do not average them and do not silently pick a side:"
    ]
    for c in conflicts:
        values = ", ".join(f"{b}={json.dumps(v)}" for b, v in c.values.items())
        lines.append(f"- {c.field}: {values}")
    return "\n".join(lines)
