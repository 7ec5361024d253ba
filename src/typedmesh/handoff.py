"""Contract checks between steps, done when a flow is built.

``handoff_problems(src, dst)`` says in words why ``dst`` cannot accept what
``src`` returns; ``Handoff`` turns one step's output into the next step's
input. A ``dst`` that declares fewer fields than ``src`` gives is a
summary-only handoff: only the declared fields pass on, which is how a chain
keeps each agent's prompt (and token bill) to what it needs.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

__all__ = ["Handoff", "annotation_problem", "handoff_problems", "type_name"]

_UNION_TYPES: tuple[Any, ...] = (Union, types.UnionType)
_SEQUENCES = (list, tuple, set, frozenset, typing.Sequence, typing.Iterable)


def type_name(annotation: Any) -> str:
    """A short readable name for an annotation, for error messages."""
    if isinstance(annotation, type) and not get_args(annotation):
        return annotation.__name__
    return repr(annotation).replace("typing.", "")


def _union_members(annotation: Any) -> tuple[Any, ...] | None:
    return get_args(annotation) if get_origin(annotation) in _UNION_TYPES else None


def annotation_problem(src: Any, dst: Any, depth: int = 0) -> str | None:
    """None when a value typed ``src`` is always accepted by a field typed ``dst``."""
    if src == dst or dst is Any or depth > 8:
        return None
    dst_members = _union_members(dst)
    src_members = _union_members(src)
    if src_members is not None:
        for member in src_members:
            problem = annotation_problem(member, dst, depth + 1)
            if problem is not None:
                return problem
        return None
    if dst_members is not None:
        if any(annotation_problem(src, m, depth + 1) is None for m in dst_members):
            return None
        return f"{type_name(src)} is not one of {type_name(dst)}"
    if get_origin(src) is Literal:
        values = get_args(src)
        if get_origin(dst) is Literal:
            extra = [v for v in values if v not in get_args(dst)]
            return f"values {extra} not allowed" if extra else None
        if isinstance(dst, type) and all(isinstance(v, dst) for v in values):
            return None
        return f"{type_name(src)} does not fit {type_name(dst)}"
    src_origin, dst_origin = get_origin(src) or src, get_origin(dst) or dst
    if src_origin in _SEQUENCES and dst_origin in _SEQUENCES:
        if dst_origin is not src_origin and dst_origin not in (typing.Sequence, typing.Iterable):
            return f"{type_name(src)} is not {type_name(dst)}"
        src_item = (get_args(src) or (Any,))[0]
        dst_item = (get_args(dst) or (Any,))[0]
        problem = annotation_problem(src_item, dst_item, depth + 1)
        return None if problem is None else f"items: {problem}"
    if src_origin is dict and dst_origin is dict:
        src_args = get_args(src) or (Any, Any)
        dst_args = get_args(dst) or (Any, Any)
        for s, d in zip(src_args, dst_args, strict=False):
            problem = annotation_problem(s, d, depth + 1)
            if problem is not None:
                return f"dict: {problem}"
        return None
    if isinstance(src, type) and isinstance(dst, type):
        if issubclass(src, dst) or (src is int and dst is float):
            return None
        if issubclass(src, BaseModel) and issubclass(dst, BaseModel):
            problems = handoff_problems(src, dst)
            return (
                None
                if not problems
                else f"{src.__name__} -> {dst.__name__}: " + "; ".join(problems)
            )
    return f"gives {type_name(src)}, wants {type_name(dst)}"


def handoff_problems(
    src: type[BaseModel], dst: type[BaseModel], filled: Iterable[str] = ()
) -> list[str]:
    """Every reason ``dst`` cannot be built from an instance of ``src``.

    ``filled`` names ``dst`` fields the framework fills itself (e.g. ``intent``).
    """
    if src is dst or issubclass(src, dst):
        return []
    skip = set(filled)
    problems: list[str] = []
    src_fields = src.model_fields
    for name, field in dst.model_fields.items():
        if name in skip:
            continue
        if name not in src_fields:
            if field.is_required():
                problems.append(f"missing field {name!r} ({type_name(field.annotation)})")
            continue
        problem = annotation_problem(src_fields[name].annotation, field.annotation)
        if problem is not None:
            problems.append(f"field {name!r}: {problem}")
    return problems


class Handoff:
    """Converts one step's output into the next step's input, as cheaply as it can."""

    __slots__ = ("_convert",)

    def __init__(self, src: type[BaseModel], dst: type[BaseModel]) -> None:
        self._convert: Callable[[BaseModel], BaseModel]
        if src is dst or issubclass(src, dst):
            self._convert = _identity
        else:
            include = {n for n in dst.model_fields if n in src.model_fields}

            def convert(value: BaseModel) -> BaseModel:
                return dst.model_validate(value.model_dump(include=include))

            self._convert = convert

    def __call__(self, value: BaseModel) -> BaseModel:
        return self._convert(value)


def _identity(value: BaseModel) -> BaseModel:
    return value
