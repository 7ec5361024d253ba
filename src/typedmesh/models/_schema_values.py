"""Readable, schema-valid values for the JSON schemas pydantic writes.

``ValueGenerator`` walks a ``Model.model_json_schema()`` document and builds a
value that validates against it, drawing every choice from one
``random.Random`` so the caller controls determinism.

Handled: ``$ref``/``$defs``, ``allOf`` (merged), ``anyOf``/``oneOf``,
``enum``, ``const``, ``type`` lists, numeric bounds and ``multipleOf``,
string lengths and common formats, JSON-in-a-string (``Json[...]``),
arrays (``prefixItems``, ``uniqueItems``, item counts), objects with
``required``/optional properties, ``additionalProperties`` and
``propertyNames``.

Known gaps, by design:

* ``pattern`` is honoured only when one of a few readable candidates (words,
  a slug, digits, a literal) matches it; otherwise it is ignored and the value
  may fail validation.
* Constraints a schema cannot express are not met: ``dict[int, X]`` keys come
  out as words, future/past dates are not checked, ``FilePath`` needs a file.
* For ``anyOf`` of a number and a plain string (pydantic's ``Decimal``) the
  number is chosen, since a word would not parse as a decimal.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

__all__ = ["WORDS", "UnsatisfiableSchema", "ValueGenerator"]

WORDS: tuple[str, ...] = (
    "amber", "anchor", "apple", "arrow", "autumn", "basil", "beacon", "birch",
    "bramble", "breeze", "brook", "cedar", "cinder", "clover", "comet", "copper",
    "coral", "crystal", "dawn", "delta", "ember", "falcon", "fern", "garnet",
    "glacier", "harbor", "hazel", "heron", "indigo", "island", "ivory", "jasper",
    "juniper", "lantern", "lemon", "linen", "maple", "meadow", "meteor", "mint",
    "nectar", "oak", "ocean", "olive", "orchid", "pebble", "pepper", "pine",
    "quartz", "raven", "river", "saffron", "sage", "silver", "sparrow", "spruce",
    "summit", "thistle", "timber", "velvet", "willow", "winter", "zephyr",
)  # fmt: skip

SOFT_DEPTH = 5
"""Past this nesting depth every choice takes the shortest option."""
HARD_DEPTH = 40
"""Past this depth the schema has no finite instance (a required cycle)."""

_NOT_TYPED = ("const", "enum", "anyOf", "oneOf")


class UnsatisfiableSchema(ValueError):
    """No value can be built: contradictory bounds or an unbounded required cycle."""


class ValueGenerator:
    """Builds values for sub-schemas of one root document, which holds the ``$defs``."""

    def __init__(self, root: Mapping[str, Any] | bool, rng: random.Random) -> None:
        self.root = root
        self.rng = rng

    # -- schema plumbing ------------------------------------------------------

    def resolve(self, schema: Any) -> dict[str, Any]:
        """Follow ``$ref`` (siblings override the target) and merge ``allOf``."""
        if schema is True or schema is None:
            return {}
        if schema is False:
            raise UnsatisfiableSchema("the schema `false` admits no value")
        result = dict(schema)
        for _ in range(64):
            if "$ref" in result:
                target = self._lookup(result.pop("$ref"))
                result = {**target, **result}
            elif "allOf" in result:
                parts = result.pop("allOf")
                for part in parts:
                    for key, value in self.resolve(part).items():
                        if key == "properties":
                            result["properties"] = {**value, **result.get("properties", {})}
                        elif key == "required":
                            result["required"] = sorted({*result.get("required", []), *value})
                        else:
                            result.setdefault(key, value)
            else:
                return result
        raise UnsatisfiableSchema("$ref chain does not end")

    def _lookup(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#"):
            raise UnsatisfiableSchema(f"only local $ref is supported, got {ref!r}")
        node: Any = self.root
        for raw in filter(None, ref[1:].split("/")):
            key = raw.replace("~1", "/").replace("~0", "~")
            node = node[int(key)] if isinstance(node, list) else node[key]
        return {} if node is True else dict(node)

    # -- values ---------------------------------------------------------------

    def value(self, schema: Any, depth: int = 0) -> Any:
        """A value that validates against ``schema``."""
        if depth > HARD_DEPTH:
            raise UnsatisfiableSchema(
                f"nesting passed depth {HARD_DEPTH}: the schema has a required cycle "
                "with no finite instance"
            )
        s = self.resolve(schema)
        deep = depth > SOFT_DEPTH
        if "const" in s:
            return copy.deepcopy(s["const"])
        if "enum" in s:
            return copy.deepcopy(self.rng.choice(s["enum"]))
        for key in ("anyOf", "oneOf"):
            if key in s:
                return self.value(self._choose_branch(s[key], deep), depth)
        kind = self._kind(s, deep)
        if kind == "null":
            return None
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "integer":
            return self._integer(s)
        if kind == "number":
            return self._number(s)
        if kind == "array":
            return self._array(s, depth)
        if kind == "object":
            return self._object(s, depth)
        return self._string(s, depth)

    def _kind(self, s: dict[str, Any], deep: bool) -> str:
        kind = s.get("type")
        if isinstance(kind, list):
            if "null" in kind and (deep or len(kind) == 1 or self.rng.random() < 0.2):
                return "null"
            options = [k for k in kind if k != "null"]
            if "number" in options or "integer" in options:
                options = [k for k in options if k != "string"]
            return str(self.rng.choice(options))
        if isinstance(kind, str):
            return kind
        if "properties" in s or "additionalProperties" in s:
            return "object"
        if "items" in s or "prefixItems" in s:
            return "array"
        return "string"

    def _choose_branch(self, branches: list[Any], deep: bool) -> dict[str, Any]:
        resolved = [self.resolve(b) for b in branches]
        if deep:
            return min(resolved, key=self._cost)
        options = [b for b in resolved if self._feasible(b)] or resolved
        if any(b.get("type") in ("number", "integer") for b in options):
            plain = [b for b in options if b.get("type") != "string" or "format" in b]
            options = plain or options
        nulls = [b for b in options if b.get("type") == "null"]
        others = [b for b in options if b.get("type") != "null"]
        if nulls and (not others or self.rng.random() < 0.2):
            return nulls[0]
        return self.rng.choice(others)

    def _cost(self, s: dict[str, Any]) -> int:
        """How big the smallest value of ``s`` is, roughly; drives the depth guard."""
        kind = s.get("type")
        if kind == "null" or (isinstance(kind, list) and "null" in kind):
            return 0
        if "const" in s or "enum" in s or kind in ("boolean", "integer", "number", "string"):
            return 1
        if kind == "array" or "items" in s:
            return 2 if not s.get("minItems") else 10
        if any(k in s for k in _NOT_TYPED):
            return 3
        return 4 + len(s.get("required", []))

    def _feasible(self, s: dict[str, Any]) -> bool:
        """False for a string branch whose pattern none of our candidates match."""
        if s.get("type") != "string" or "pattern" not in s or "format" in s:
            return True
        return self._pattern_match(s) is not None

    # -- numbers --------------------------------------------------------------

    def _integer(self, s: dict[str, Any]) -> int:
        lo: int | None = _num(s, "minimum", math.ceil)
        hi: int | None = _num(s, "maximum", math.floor)
        ex_lo = _num(s, "exclusiveMinimum", math.floor)
        ex_hi = _num(s, "exclusiveMaximum", math.ceil)
        if ex_lo is not None:
            lo = ex_lo + 1 if lo is None else max(lo, ex_lo + 1)
        if ex_hi is not None:
            hi = ex_hi - 1 if hi is None else min(hi, ex_hi - 1)
        lo, hi = _span(lo, hi)
        step = abs(Fraction(str(s["multipleOf"])).numerator) if "multipleOf" in s else 1
        k_lo, k_hi = -(-lo // step), hi // step
        if k_lo > k_hi:
            raise UnsatisfiableSchema(f"no integer in [{lo}, {hi}] is a multiple of {step}")
        return self.rng.randint(k_lo, k_hi) * step

    def _number(self, s: dict[str, Any]) -> float:
        lows = [s[k] for k in ("minimum", "exclusiveMinimum") if _is_kind(s.get(k), "number")]
        highs = [s[k] for k in ("maximum", "exclusiveMaximum") if _is_kind(s.get(k), "number")]
        lo, hi = _span(max(lows, default=None), min(highs, default=None))
        lo, hi = float(lo), float(hi)
        if "multipleOf" in s:
            m = float(s["multipleOf"])
            k_lo, k_hi = math.ceil(lo / m), math.floor(hi / m)
            while not _in_bounds(k_lo * m, s) and k_lo <= k_hi:
                k_lo += 1
            while not _in_bounds(k_hi * m, s) and k_hi >= k_lo:
                k_hi -= 1
            if k_lo > k_hi:
                raise UnsatisfiableSchema(f"no multiple of {m} in ({lo}, {hi})")
            return self.rng.randint(k_lo, k_hi) * m
        x = lo + (hi - lo) * self.rng.random() if math.isfinite(hi - lo) else lo / 2 + hi / 2
        for candidate in (round(x, 2), x, lo / 2 + hi / 2):
            if _in_bounds(candidate, s):
                return candidate
        raise UnsatisfiableSchema(f"no number fits between {lo} and {hi}")

    # -- strings --------------------------------------------------------------

    def _string(self, s: dict[str, Any], depth: int) -> str:
        if s.get("contentMediaType") == "application/json":
            return json.dumps(self.value(s.get("contentSchema", {}), depth + 1))
        maker = _FORMATS.get(str(s.get("format")))
        if maker is not None:
            return maker(self.rng)
        if "pattern" in s:
            matched = self._pattern_match(s)
            if matched is not None:
                return matched
        return self.words(s.get("minLength", 0), s.get("maxLength"), short=depth > SOFT_DEPTH)

    def words(self, lo: int = 0, hi: int | None = None, *, short: bool = False) -> str:
        """Words joined by spaces, cut to ``[lo, hi]`` characters without edge spaces."""
        if hi == 0:
            return ""
        count = 1 if short else self.rng.randint(1, 3)
        parts = [self.rng.choice(WORDS) for _ in range(count)]
        text = " ".join(parts)
        while len(text) < lo:
            text += " " + self.rng.choice(WORDS)
        if hi is not None and len(text) > hi:
            text = text[:hi]
            if text.endswith(" "):
                text = text[:-1] + "s"
        return text

    def _pattern_match(self, s: dict[str, Any]) -> str | None:
        try:
            regex = re.compile(s["pattern"])
        except (re.error, TypeError):
            return None
        lo, hi = s.get("minLength", 0), s.get("maxLength")
        word, other = self.rng.choice(WORDS), self.rng.choice(WORDS)
        digits = "".join(str(self.rng.randint(1, 9)) for _ in range(max(lo, 8)))
        candidates = [
            self.words(lo, hi),
            word,
            f"{word}-{other}",
            f"{word}_{other}",
            word.capitalize(),
            word.upper(),
            f"{word}{digits[:3]}",
            *(digits[:n] for n in range(max(lo, 1), len(digits) + 1)),
        ]
        body = s["pattern"].removeprefix("^").removesuffix("$")
        if not any(c in body for c in "\\.^$*+?{}[]|()"):
            candidates.insert(0, body)
        for text in candidates:
            if lo <= len(text) and (hi is None or len(text) <= hi) and regex.search(text):
                return text
        return None

    # -- containers -----------------------------------------------------------

    def _array(self, s: dict[str, Any], depth: int) -> list[Any]:
        prefix: list[Any] = s.get("prefixItems", [])
        items = s.get("items", {} if not prefix else False)
        min_items: int = s.get("minItems", 0)
        max_items: int | None = s.get("maxItems")
        if items is False:
            max_items = len(prefix) if max_items is None else min(max_items, len(prefix))
        if depth > SOFT_DEPTH:
            count = min_items
        else:
            hi = max_items if max_items is not None else max(min_items, 3)
            count = self.rng.randint(min(max(min_items, 1), hi), hi)
        out: list[Any] = []
        seen: set[str] = set()
        attempts = 0
        while len(out) < count and attempts < count * 20:
            attempts += 1
            sub = prefix[len(out)] if len(out) < len(prefix) else items
            item = self.value(sub, depth + 1)
            if s.get("uniqueItems"):
                key = json.dumps(item, sort_keys=True)
                if key in seen:
                    continue
                seen.add(key)
            out.append(item)
        return out

    def _object(self, s: dict[str, Any], depth: int) -> dict[str, Any]:
        deep = depth > SOFT_DEPTH
        props: dict[str, Any] = s.get("properties", {})
        required = set(s.get("required", []))
        out: dict[str, Any] = {}
        for name, sub in props.items():
            if name in required:
                out[name] = self.value(sub, depth + 1)
                continue
            roll = self.rng.random()
            if deep or roll < 0.35:
                continue  # omitted: the model's default applies
            if roll < 0.6 and isinstance(sub, dict) and "default" in sub:
                default = sub["default"]
                if self.fits(default, sub):
                    out[name] = copy.deepcopy(default)
                    continue
            out[name] = self.value(sub, depth + 1)
        extra = s.get("additionalProperties")
        if "properties" in s or extra is False:
            return out
        lo: int = s.get("minProperties", 0)
        hi: int = s.get("maxProperties", max(lo, 3))
        count = lo if deep else self.rng.randint(min(max(lo, 1), hi), hi)
        names = self.resolve(s.get("propertyNames", {}))
        plain = not any(k in names for k in ("const", "enum", "pattern", "format", "maxLength"))
        for _ in range(count * 20):
            if len(out) >= count:
                break
            key = self.rng.choice(WORDS) if plain else str(self.value(names, depth + 1))
            out.setdefault(key, self.value(extra if isinstance(extra, dict) else {}, depth + 1))
        return out

    # -- checks ---------------------------------------------------------------

    def fits(self, value: Any, schema: Any) -> bool:
        """Conservative check: True only when ``value`` surely fits (used for defaults)."""
        try:
            s = self.resolve(schema)
        except (UnsatisfiableSchema, KeyError, IndexError):
            return False
        if "const" in s:
            return bool(value == s["const"])
        if "enum" in s:
            return value in s["enum"]
        for key in ("anyOf", "oneOf"):
            if key in s:
                return any(self.fits(value, b) for b in s[key])
        kinds = s.get("type")
        if kinds is None or any(k in s for k in ("pattern", "format", "multipleOf")):
            return False
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is_kind(value, k) for k in kinds):
            return False
        if isinstance(value, str):
            return bool(s.get("minLength", 0) <= len(value) <= s.get("maxLength", len(value)))
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _in_bounds(value, s)
        if isinstance(value, list):
            ok_len = s.get("minItems", 0) <= len(value) <= s.get("maxItems", len(value))
            return (
                ok_len
                and "prefixItems" not in s
                and all(self.fits(v, s.get("items", True)) for v in value)
            )
        if isinstance(value, dict):
            return not value and not s.get("required") and not s.get("minProperties")
        return True


def _num(s: dict[str, Any], key: str, rounding: Callable[[float], int]) -> int | None:
    value = s.get(key)
    if value is None or isinstance(value, bool):
        return None
    return rounding(value)


def _span(lo: Any, hi: Any) -> tuple[Any, Any]:
    """Fill a missing bound so the range is 100 wide (0 to 100 with neither)."""
    if lo is None and hi is None:
        return 0, 100
    if lo is None:
        return hi - 100, hi
    if hi is None:
        return lo, lo + 100
    return lo, hi


def _in_bounds(x: float, s: dict[str, Any]) -> bool:
    if not math.isfinite(x):
        return False
    lo, hi = s.get("minimum"), s.get("maximum")
    ex_lo, ex_hi = s.get("exclusiveMinimum"), s.get("exclusiveMaximum")
    return (
        (lo is None or x >= lo)
        and (hi is None or x <= hi)
        and (ex_lo is None or x > ex_lo)
        and (ex_hi is None or x < ex_hi)
    )


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    expected = {"null": type(None), "boolean": bool, "string": str, "array": list, "object": dict}
    return kind in expected and isinstance(value, expected[kind])


def _uuid(version: int) -> Callable[[random.Random], str]:
    def make(rng: random.Random) -> str:
        n = rng.getrandbits(128)
        n = (n & ~(0xF000 << 64)) | (version << 76)  # version nibble
        n = (n & ~(0xC000 << 48)) | (0x8000 << 48)  # RFC 4122 variant
        h = f"{n:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    return make


def _date(rng: random.Random) -> str:
    return f"{rng.randint(2020, 2025)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _time(rng: random.Random) -> str:
    return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"


def _uri(rng: random.Random) -> str:
    return f"https://example.com/{rng.choice(WORDS)}"


def _ipv4(rng: random.Random) -> str:
    return f"192.0.2.{rng.randint(1, 254)}"


def _ipv6(rng: random.Random) -> str:
    return f"2001:db8::{rng.randint(1, 0xFFFF):x}"


_FORMATS: dict[str, Callable[[random.Random], str]] = {
    "date-time": lambda r: f"{_date(r)}T{_time(r)}Z",
    "date": _date,
    "time": _time,
    "duration": lambda r: f"PT{r.randint(1, 23)}H{r.randint(0, 59)}M",
    "email": lambda r: f"{r.choice(WORDS)}.{r.choice(WORDS)}@example.com",
    "name-email": lambda r: (lambda w: f"{w.capitalize()} <{w}@example.com>")(r.choice(WORDS)),
    "uuid": _uuid(4),
    **{f"uuid{v}": _uuid(v) for v in range(1, 9)},
    **dict.fromkeys(("uri", "url", "iri", "uri-reference", "multi-host-uri"), _uri),
    "hostname": lambda r: f"{r.choice(WORDS)}.example.com",
    "ipv4": _ipv4,
    "ipvanyaddress": _ipv4,
    "ipv6": _ipv6,
    "ipv4network": lambda r: "192.0.2.0/24",
    "ipvanynetwork": lambda r: "192.0.2.0/24",
    "ipv6network": lambda r: "2001:db8::/32",
    "ipv4interface": lambda r: f"{_ipv4(r)}/24",
    "ipvanyinterface": lambda r: f"{_ipv4(r)}/24",
    "ipv6interface": lambda r: f"{_ipv6(r)}/64",
    "path": lambda r: f"{r.choice(WORDS)}/{r.choice(WORDS)}.txt",
    "directory-path": lambda r: ".",
}
