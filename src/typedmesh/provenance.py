"""Provenance is stamped by the framework, never written by a model.

``model_facing_schema`` removes every ``Provenance`` field from the JSON
schema a model is shown; ``stamp`` fills those fields on the validated output.
"""

from __future__ import annotations

import copy
import types
import typing
from functools import cache
from typing import Any, get_args, get_origin

from pydantic import BaseModel

from .contracts import Provenance
from .errors import ContractError

__all__ = ["carries_provenance", "is_provenance_annotation", "model_facing_schema", "stamp"]

_REF = "#/$defs/Provenance"


def _mentions(annotation: Any, target: type, depth: int = 0) -> bool:
    if annotation is target:
        return True
    if depth > 10:
        return False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return any(
            _mentions(f.annotation, target, depth + 1) for f in annotation.model_fields.values()
        )
    return any(_mentions(a, target, depth + 1) for a in get_args(annotation))


@cache
def carries_provenance(model: type[BaseModel]) -> bool:
    """Whether any field at any depth of ``model`` holds a Provenance."""
    return _mentions(model, Provenance)


def _check_defaults(model: type[BaseModel], seen: set[type]) -> None:
    if model in seen:
        return
    seen.add(model)
    for name, field in model.model_fields.items():
        if is_provenance_annotation(field.annotation) and field.is_required():
            raise ContractError(
                f"{model.__name__}.{name} holds a Provenance, which the framework "
                "stamps after the model answers: give it a default (e.g. None)"
            )
        for arg in (field.annotation, *get_args(field.annotation)):
            for inner in (arg, *get_args(arg)):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    _check_defaults(inner, seen)


def is_provenance_annotation(annotation: Any) -> bool:
    if annotation is Provenance:
        return True
    origin = get_origin(annotation)
    return origin in (typing.Union, types.UnionType) and Provenance in get_args(annotation)


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            dropped = [k for k, v in props.items() if _refers(v)]
            for k in dropped:
                del props[k]
            if dropped and "required" in node:
                node["required"] = [r for r in node["required"] if r not in dropped]
        for value in node.values():
            _strip(value)
    elif isinstance(node, list):
        for item in node:
            _strip(item)
    return node


def _refers(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return False
    if schema.get("$ref") == _REF:
        return True
    options = schema.get("anyOf") or schema.get("oneOf") or []
    return any(isinstance(o, dict) and o.get("$ref") == _REF for o in options)


def model_facing_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema without any Provenance field (checked to have defaults)."""
    schema: dict[str, Any] = model.model_json_schema()
    if not carries_provenance(model):
        return schema
    _check_defaults(model, set())
    schema = _strip(copy.deepcopy(schema))
    defs = schema.get("$defs", {})
    for name in ("Provenance", "AgentIdentity"):
        if name in defs and f'"#/$defs/{name}"' not in str(schema).replace("'", '"'):
            del defs[name]
    if not defs:
        schema.pop("$defs", None)
    return schema


def stamp(value: Any, provenance: Provenance) -> None:
    """Fill every Provenance field reachable from ``value`` in place."""
    if isinstance(value, BaseModel):
        for name, field in type(value).model_fields.items():
            if is_provenance_annotation(field.annotation):
                object.__setattr__(value, name, provenance)
            elif _mentions(field.annotation, Provenance):
                stamp(getattr(value, name), provenance)
    elif isinstance(value, list | tuple):
        for item in value:
            stamp(item, provenance)
    elif isinstance(value, dict):
        for item in value.values():
            stamp(item, provenance)
