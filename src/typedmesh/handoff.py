"""Contract checks between steps, done when a flow is built.

``handoff_problems(src, dst)`` says in words why ``dst`` cannot accept what
``src`` returns; ``Handoff`` turns one step's output into the next step's
input. A ``dst`` that declares fewer fields than ``src`` gives is a
summary-only handoff: only the declared fields pass on, which is how a chain
keeps each agent's prompt (and token bill) to what it needs.

The rules follow what Pydantic accepts in its default (lax) mode:

* every member of a union, and every value of a ``Literal``, must fit;
* containers convert where Pydantic converts them (``list`` -> ``tuple``,
  ``set`` -> ``list``, ...), and every item type is compared, each position of
  a fixed-length ``tuple[A, B]`` included;
* a ``Literal`` value fits an ``Enum`` that has it as a value, and a str
  ``Enum`` fits ``str``;
* declared constraints (``ge``, ``lt``, ``min_length``, ``pattern``, ...) on a
  target field must be promised by the source field (or by each ``Literal``
  value); validator functions cannot be compared and are run at the handoff,
  where a failure is a ``HandoffError`` with the run id and partial results;
* fields are matched by name, then by alias (``Field(alias="orderId")``);
* models are compared field by field; recursive models terminate (a pair
  already being compared is assumed to fit).
"""

from __future__ import annotations

import collections
import collections.abc as abc
import enum
import re
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from .errors import HandoffError
from .validation import error_lines

__all__ = [
    "Handoff",
    "annotation_problem",
    "field_annotation",
    "handoff_problems",
    "source_field",
    "type_name",
    "validate_input",
]

_UNION_TYPES: tuple[Any, ...] = (Union, types.UnionType)
_NONE = type(None)
# container kinds: what Pydantic turns into what (lax mode)
_CONCRETE: dict[Any, str] = {list: "list", tuple: "tuple", set: "set", frozenset: "frozenset"}
_ABSTRACT: dict[Any, str] = {
    abc.Sequence: "sequence",
    abc.MutableSequence: "sequence",
    abc.Set: "abstract-set",
    abc.MutableSet: "abstract-set",
    abc.Collection: "iterable",
    abc.Iterable: "iterable",
    collections.deque: "deque",
}
_ACCEPTS: dict[str, frozenset[str]] = {
    "list": frozenset({"list", "tuple", "set", "frozenset", "sequence", "abstract-set", "deque"}),
    "tuple": frozenset({"list", "tuple", "set", "frozenset", "sequence", "abstract-set", "deque"}),
    "set": frozenset({"list", "tuple", "set", "frozenset", "sequence", "abstract-set", "deque"}),
    "frozenset": frozenset(
        {"list", "tuple", "set", "frozenset", "sequence", "abstract-set", "deque"}
    ),
    "abstract-set": frozenset({"list", "tuple", "set", "frozenset", "abstract-set", "deque"}),
    "sequence": frozenset({"list", "tuple", "sequence", "deque"}),
    "deque": frozenset({"list", "tuple", "set", "frozenset", "sequence", "deque"}),
    "iterable": frozenset(
        {"list", "tuple", "set", "frozenset", "sequence", "abstract-set", "deque", "iterable"}
    ),
}
_MAPPINGS = (dict, abc.Mapping, abc.MutableMapping)

_Seen = frozenset[tuple[type[BaseModel], type[BaseModel]]]


def type_name(annotation: Any) -> str:
    """A short readable name for an annotation, for error messages."""
    if get_origin(annotation) is Annotated:
        base, *metadata = get_args(annotation)
        limits = _Limits.of(metadata)
        return f"{type_name(base)} ({limits})" if limits else type_name(base)
    if isinstance(annotation, type) and not get_args(annotation):
        return annotation.__name__
    return repr(annotation).replace("typing.", "")


# --- constraints -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Limits:
    """The declarative constraints of an annotation (validators are not comparable)."""

    lower: tuple[Any, bool] | None = None  # (bound, inclusive)
    upper: tuple[Any, bool] | None = None
    min_len: int | None = None
    max_len: int | None = None
    multiple_of: Any = None
    pattern: str | None = None

    @classmethod
    def of(cls, metadata: Iterable[Any]) -> _Limits:
        found: dict[str, Any] = {}
        for item in _flatten(metadata):
            if isinstance(item, at.Ge):
                found["lower"] = _tighter(found.get("lower"), (item.ge, True), low=True)
            elif isinstance(item, at.Gt):
                found["lower"] = _tighter(found.get("lower"), (item.gt, False), low=True)
            elif isinstance(item, at.Le):
                found["upper"] = _tighter(found.get("upper"), (item.le, True), low=False)
            elif isinstance(item, at.Lt):
                found["upper"] = _tighter(found.get("upper"), (item.lt, False), low=False)
            elif isinstance(item, at.MinLen):
                found["min_len"] = max(item.min_length, found.get("min_len") or 0)
            elif isinstance(item, at.MaxLen):
                previous = found.get("max_len")
                found["max_len"] = (
                    item.max_length if previous is None else min(item.max_length, previous)
                )
            elif isinstance(item, at.MultipleOf):
                found["multiple_of"] = item.multiple_of
            elif isinstance(getattr(item, "pattern", None), str):
                found["pattern"] = item.pattern
        return cls(**found)

    def __bool__(self) -> bool:
        return self != _Limits()

    def __str__(self) -> str:
        parts: list[str] = []
        if self.lower is not None:
            parts.append(f"{'>=' if self.lower[1] else '>'} {self.lower[0]!r}")
        if self.upper is not None:
            parts.append(f"{'<=' if self.upper[1] else '<'} {self.upper[0]!r}")
        if self.min_len is not None:
            parts.append(f"min_length={self.min_len}")
        if self.max_len is not None:
            parts.append(f"max_length={self.max_len}")
        if self.multiple_of is not None:
            parts.append(f"multiple_of={self.multiple_of!r}")
        if self.pattern is not None:
            parts.append(f"pattern={self.pattern!r}")
        return ", ".join(parts)

    def implied_by(self, src: _Limits) -> bool:
        """Whether every value meeting ``src`` meets these limits too."""
        try:
            return (
                _bound_ok(self.lower, src.lower, low=True)
                and _bound_ok(self.upper, src.upper, low=False)
                and (self.min_len is None or (src.min_len or 0) >= self.min_len)
                and (
                    self.max_len is None
                    or (src.max_len is not None and src.max_len <= self.max_len)
                )
                and (
                    self.multiple_of is None
                    or (src.multiple_of is not None and src.multiple_of % self.multiple_of == 0)
                )
                and (self.pattern is None or src.pattern == self.pattern)
            )
        except TypeError:  # bounds of types that do not compare
            return False

    def admit(self, value: Any) -> bool:
        """Whether one known value meets these limits."""
        try:
            if self.lower is not None:
                bound, inclusive = self.lower
                if not (value >= bound if inclusive else value > bound):
                    return False
            if self.upper is not None:
                bound, inclusive = self.upper
                if not (value <= bound if inclusive else value < bound):
                    return False
            if self.min_len is not None and len(value) < self.min_len:
                return False
            if self.max_len is not None and len(value) > self.max_len:
                return False
            if self.multiple_of is not None and value % self.multiple_of != 0:
                return False
            return self.pattern is None or re.search(self.pattern, value) is not None
        except TypeError:
            return False


def _flatten(metadata: Iterable[Any]) -> Iterable[Any]:
    for item in metadata:
        if isinstance(item, FieldInfo):
            yield from _flatten(item.metadata)
        elif isinstance(item, at.GroupedMetadata):
            yield from _flatten(item)
        else:
            yield item


def _tighter(old: tuple[Any, bool] | None, new: tuple[Any, bool], *, low: bool) -> tuple[Any, bool]:
    if old is None:
        return new
    return new if _bound_ok(old, new, low=low) else old


def _bound_ok(want: tuple[Any, bool] | None, have: tuple[Any, bool] | None, *, low: bool) -> bool:
    """Whether bound ``have`` is at least as tight as bound ``want``."""
    if want is None:
        return True
    if have is None:
        return False
    (w, w_incl), (h, h_incl) = want, have
    if h == w:
        return w_incl or not h_incl
    return bool(h > w) if low else bool(h < w)


def _split(annotation: Any) -> tuple[Any, tuple[Any, ...]]:
    """``Annotated[T, *meta]`` -> ``(T, meta)``; any other annotation -> ``(it, ())``."""
    if get_origin(annotation) is Annotated:
        base, *metadata = get_args(annotation)
        inner, more = _split(base)
        return inner, (*more, *metadata)
    return annotation, ()


def _with(base: Any, metadata: tuple[Any, ...]) -> Any:
    return Annotated[(base, *metadata)] if metadata else base


def field_annotation(field: FieldInfo) -> Any:
    """A field's annotation with its constraints (Pydantic moves them to ``metadata``)."""
    return _with(field.annotation, tuple(field.metadata))


# --- annotations -----------------------------------------------------------------------


def _union_members(annotation: Any) -> tuple[Any, ...] | None:
    return get_args(annotation) if get_origin(annotation) in _UNION_TYPES else None


def annotation_problem(src: Any, dst: Any, depth: int = 0) -> str | None:
    """None when a value typed ``src`` is always accepted by a field typed ``dst``."""
    return _problem(src, dst, frozenset(), depth)


def _problem(src: Any, dst: Any, seen: _Seen, depth: int) -> str | None:
    if src == dst or dst is Any:
        return None
    if depth > 64:
        return f"{type_name(src)} is nested too deeply to compare with {type_name(dst)}"
    src_base, src_meta = _split(src)
    dst_base, dst_meta = _split(dst)

    members = _union_members(src_base)
    if members is None and get_origin(src_base) is Literal and len(get_args(src_base)) > 1:
        members = tuple(Literal[value] for value in get_args(src_base))
    if members is not None:  # every member of the source must fit
        for member in members:
            problem = _problem(_with(member, src_meta), dst, seen, depth + 1)
            if problem is not None:
                return problem
        return None

    dst_members = _union_members(dst_base)
    if dst_members is not None:  # one member of the target must fit
        found: list[tuple[Any, str]] = []
        for member in dst_members:
            problem = _problem(src, _with(member, dst_meta), seen, depth + 1)
            if problem is None:
                return None
            found.append((member, problem))
        same_kind = [
            p for m, p in found if (get_origin(m) or m) == (get_origin(src_base) or src_base)
        ]
        if len(same_kind) == 1:  # e.g. str -> constrained `str | None`: say why the str fails
            return same_kind[0]
        return f"{type_name(src)} is not one of {type_name(dst)}"

    if dst_meta and dst_base is not _NONE:
        wanted = _Limits.of(dst_meta)
        if wanted:
            if get_origin(src_base) is Literal:
                values = get_args(src_base)
                if not all(wanted.admit(_plain(v)) for v in values):
                    return f"{type_name(src_base)} is not {wanted}"
            elif not wanted.implied_by(_Limits.of(src_meta)):
                have = _Limits.of(src_meta)
                return f"wants {type_name(dst_base)} ({wanted}), gets {type_name(src_base)} " + (
                    f"({have})" if have else "with no such constraint"
                )
    return _base_problem(src_base, dst_base, seen, depth)


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def _base_problem(src: Any, dst: Any, seen: _Seen, depth: int) -> str | None:
    if src == dst or dst is Any:
        return None
    if get_origin(src) is Literal:
        return _literal_problem(get_args(src), dst)
    if isinstance(src, type) and issubclass(src, enum.Enum) and get_origin(dst) is Literal:
        allowed = get_args(dst)
        extra = [m.value for m in src if m not in allowed and m.value not in allowed]
        return f"{src.__name__} values {extra} not allowed by {type_name(dst)}" if extra else None

    src_kind, dst_kind = _container_kind(src), _container_kind(dst)
    if src_kind is not None and dst_kind is not None:
        return _container_problem(src, src_kind, dst, dst_kind, seen, depth)
    src_origin, dst_origin = get_origin(src) or src, get_origin(dst) or dst
    if src_origin in _MAPPINGS and dst_origin in _MAPPINGS:
        src_args = get_args(src) or (Any, Any)
        dst_args = get_args(dst) or (Any, Any)
        for s, d in zip(src_args, dst_args, strict=False):
            problem = _problem(s, d, seen, depth + 1)
            if problem is not None:
                return f"dict: {problem}"
        return None
    if isinstance(src, type) and isinstance(dst, type):
        if issubclass(src, dst) or (src is int and dst is float):
            return None
        if issubclass(src, BaseModel) and issubclass(dst, BaseModel):
            if (src, dst) in seen:  # already being compared further up: assume it fits
                return None
            problems = _model_problems(src, dst, (), seen | {(src, dst)}, depth + 1)
            return (
                None
                if not problems
                else f"{src.__name__} -> {dst.__name__}: " + "; ".join(problems)
            )
    return f"gives {type_name(src)}, wants {type_name(dst)}"


def _literal_problem(values: tuple[Any, ...], dst: Any) -> str | None:
    """A single-valued Literal (the caller splits the rest) against a non-union target."""
    (value,) = values
    if get_origin(dst) is Literal:
        allowed = get_args(dst)
        if value in allowed or _plain(value) in allowed:
            return None
        return f"values {[value]} not allowed"
    if isinstance(dst, type):
        if issubclass(dst, enum.Enum):
            if isinstance(value, dst) or value in {m.value for m in dst}:
                return None
            return f"{value!r} is not a value of {dst.__name__}"
        if isinstance(value, dst) or (dst is float and isinstance(value, int)):
            return None
    return f"Literal[{value!r}] does not fit {type_name(dst)}"


def _container_kind(annotation: Any) -> str | None:
    origin = get_origin(annotation) or annotation
    if not isinstance(origin, type):
        return None
    return _CONCRETE.get(origin) or _ABSTRACT.get(origin)


def _items(annotation: Any, kind: str) -> tuple[tuple[Any, ...], bool]:
    """The item types of a container annotation, and whether its length is open."""
    args = get_args(annotation)
    if kind == "tuple" and get_origin(annotation) is not None:
        if not args:  # tuple[()]
            return (), False
        if args[-1] is Ellipsis:
            return (args[0],), True
        return args, False
    return (args[0] if args else Any,), True


def _container_problem(
    src: Any, src_kind: str, dst: Any, dst_kind: str, seen: _Seen, depth: int
) -> str | None:
    if src_kind not in _ACCEPTS[dst_kind]:
        return f"{type_name(src)} is not {type_name(dst)}"
    src_items, src_open = _items(src, src_kind)
    dst_items, dst_open = _items(dst, dst_kind)
    if dst_open:
        for position, item in enumerate(src_items):
            problem = _problem(item, dst_items[0], seen, depth + 1)
            if problem is not None:
                where = "items" if src_open else f"item {position}"
                return f"{where}: {problem}"
        return None
    if src_open:
        return f"{type_name(src)} has no fixed length; {type_name(dst)} needs {len(dst_items)}"
    if len(src_items) != len(dst_items):
        return (
            f"{type_name(src)} has {len(src_items)} items; {type_name(dst)} needs {len(dst_items)}"
        )
    for position, (s, d) in enumerate(zip(src_items, dst_items, strict=True)):
        problem = _problem(s, d, seen, depth + 1)
        if problem is not None:
            return f"item {position}: {problem}"
    return None


# --- models ----------------------------------------------------------------------------


def _aliases(field: FieldInfo) -> list[str]:
    names: list[str] = []
    validation = field.validation_alias
    if isinstance(validation, str):
        names.append(validation)
    elif validation is not None:  # AliasChoices: its plain-string choices
        names.extend(c for c in getattr(validation, "choices", ()) if isinstance(c, str))
    if isinstance(field.alias, str):
        names.append(field.alias)
    return names


def source_field(src: type[BaseModel], name: str, field: FieldInfo) -> str | None:
    """The ``src`` field that feeds ``dst`` field ``name``: same name, else by alias."""
    src_fields = src.model_fields
    if name in src_fields:
        return name
    aliases = _aliases(field)
    for alias in aliases:
        if alias in src_fields:
            return alias
    for src_name, src_field in src_fields.items():
        if any(alias in aliases for alias in _aliases(src_field)):
            return src_name
    return None


def handoff_problems(
    src: type[BaseModel], dst: type[BaseModel], filled: Iterable[str] = ()
) -> list[str]:
    """Every reason ``dst`` cannot be built from an instance of ``src``.

    ``filled`` names ``dst`` fields the framework fills itself (e.g. ``intent``).
    """
    return _model_problems(src, dst, filled, frozenset({(src, dst)}), 0)


def _model_problems(
    src: type[BaseModel], dst: type[BaseModel], filled: Iterable[str], seen: _Seen, depth: int
) -> list[str]:
    if src is dst or issubclass(src, dst):
        return []
    skip = set(filled)
    problems: list[str] = []
    src_fields = src.model_fields
    for name, field in dst.model_fields.items():
        if name in skip:
            continue
        feeder = source_field(src, name, field)
        if feeder is None:
            if field.is_required():
                problems.append(f"missing field {name!r} ({type_name(field.annotation)})")
            continue
        problem = _problem(
            field_annotation(src_fields[feeder]), field_annotation(field), seen, depth
        )
        if problem is not None:
            via = "" if feeder == name else f" (from {feeder!r})"
            problems.append(f"field {name!r}{via}: {problem}")
    return problems


def _input_key(dst: type[BaseModel], name: str, field: FieldInfo) -> str:
    """The key under which ``dst`` validates field ``name`` from a dict."""
    if dst.model_config.get("validate_by_alias", True) is False:
        return name
    aliases = _aliases(field)
    return aliases[0] if aliases else name


def _validation_problems(exc: ValidationError) -> list[str]:
    return error_lines(exc)


def validate_input(
    dst: type[BaseModel], data: Mapping[str, Any], *, source: str, target: str
) -> BaseModel:
    """Build ``dst`` from ``data`` keyed by field name; a failure is a ``HandoffError``.

    Values may be models of other (compatible) classes: they are read by attribute.
    """
    fields = dst.model_fields
    keyed = {
        _input_key(dst, name, fields[name]) if name in fields else name: value
        for name, value in data.items()
    }
    try:
        return dst.model_validate(keyed, from_attributes=True)
    except ValidationError as exc:
        raise _handoff_error(exc, dst, source, target) from exc


def _handoff_error(
    exc: ValidationError, dst: type[BaseModel], source: str, target: str
) -> HandoffError:
    return HandoffError(
        f"handoff from {source!r} to {target!r}: the value does not fit {dst.__name__}",
        source=source,
        target=target,
        problems=_validation_problems(exc),
    )


class Handoff:
    """Converts one step's output into the next step's input, as cheaply as it can.

    A value the target's validators reject raises ``HandoffError`` (a
    ``RunError``: the run fails with its id and partial results), never a raw
    ``ValidationError``. ``source`` and ``target`` name the two steps in it.
    """

    __slots__ = ("_convert", "source", "target")

    def __init__(
        self, src: type[BaseModel], dst: type[BaseModel], *, source: str = "", target: str = ""
    ) -> None:
        self.source = source or src.__name__
        self.target = target or dst.__name__
        self._convert: Callable[[BaseModel], BaseModel]
        if src is dst or issubclass(src, dst):
            self._convert = _identity
            return
        fields = dst.model_fields
        if not fields and dst.model_config.get("extra") == "allow":
            # a target that takes anything (a reconcile step): every field passes on
            def carry(value: BaseModel) -> BaseModel:
                return dst.model_validate(value.model_dump())

            self._convert = carry
            return
        pairs = [(name, source_field(src, name, field)) for name, field in fields.items()]
        mapping = {_input_key(dst, d, fields[d]): s for d, s in pairs if s is not None}
        include = set(mapping.values())

        def convert(value: BaseModel) -> BaseModel:
            dumped = value.model_dump(include=include, by_alias=False)
            data = {key: dumped[s] for key, s in mapping.items() if s in dumped}
            try:
                return dst.model_validate(data)
            except ValidationError as exc:
                raise _handoff_error(exc, dst, self.source, self.target) from exc

        self._convert = convert

    def __call__(self, value: BaseModel) -> BaseModel:
        return self._convert(value)


def _identity(value: BaseModel) -> BaseModel:
    return value
