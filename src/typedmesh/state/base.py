"""Shared state with optimistic locking: versioned values, history, claims.

Every key holds a JSON value and a version that only goes up (a delete is a
version too, so a key's history is one strictly increasing sequence). A
write names the version it read (``expected_version``; None: "there is no
value") and is applied only if that is still the version stored: a lost race
is a ``StaleVersion`` carrying what is stored now, never a silent overwrite.

Writes are idempotent by ``Writer.write_id``: a write retried with the same
id (after a crash left it in doubt) returns the version it made instead of
applying it again. That is how a run resumed after a kill between a store
write and its journal record knows, by reading the store back, whether the
write happened.

Backends implement five primitives (``_read``, ``_write``, ``_history``,
``_writes``, ``_keys``); everything else (typed namespaces, ``update``,
claims) is built here on them, so every backend behaves the same. The
conformance suite in ``typedmesh.testing.state_conformance`` checks it.
"""

from __future__ import annotations

import json
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Generic, Self, TypeVar, cast, overload

from pydantic import BaseModel, ValidationError

from ..errors import AlreadyClaimed, InvalidStateValue, StaleVersion, StateNotFound

__all__ = [
    "CLAIM_PREFIX",
    "MAX_KEY_LENGTH",
    "MAX_VALUE_BYTES",
    "Claim",
    "Namespace",
    "StateRecord",
    "StateStore",
    "TypedKeys",
    "Versioned",
    "Writer",
    "check_key",
    "encode_checked",
    "encode_value",
]

MAX_KEY_LENGTH = 512
MAX_VALUE_BYTES = 1 << 20
"""Default size limit of one value's JSON (1 MiB); a store may be given another."""

CLAIM_PREFIX = "__claim__:"
"""Claims live beside the keys they claim, under this reserved prefix."""

V = TypeVar("V")
M = TypeVar("M", bound=BaseModel)
_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class Writer:
    """Who made a version: stamped by the framework, never by a model.

    Inside a run: the run id, the step's path, the agent identity (name,
    version, deployment) and a ``write_id`` derived from the effect key.
    Outside one: ``by`` says who (``"cli"``, a user name).
    """

    run_id: str | None = None
    step_path: str | None = None
    agent: dict[str, str] | None = None
    write_id: str | None = None
    by: str | None = None

    def describe(self) -> str:
        """The writer in words, for messages and the CLI."""
        parts = []
        if self.agent:
            name = self.agent.get("name", "?")
            version = self.agent.get("version")
            parts.append(f"agent {name}" + (f"@{version}" if version else ""))
        if self.run_id:
            parts.append(f"run {self.run_id}")
        if self.step_path:
            parts.append(f"step {self.step_path}")
        if self.by:
            parts.append(f"by {self.by}")
        return ", ".join(parts) or "unknown writer"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Writer:
        data = data or {}
        agent = data.get("agent")
        return cls(
            run_id=data.get("run_id"),
            step_path=data.get("step_path"),
            agent=dict(agent) if isinstance(agent, dict) else None,
            write_id=data.get("write_id"),
            by=data.get("by"),
        )

    def same_holder(self, other: Writer) -> bool:
        """Whether two writers are the same claimant (one step of one run, or one ``by``)."""
        if self.run_id or other.run_id:
            return self.run_id == other.run_id and self.step_path == other.step_path
        return self.by == other.by


@dataclass(frozen=True, slots=True)
class Versioned(Generic[V]):
    """A value as stored, with the version to name when writing it back."""

    key: str
    value: V
    version: int


@dataclass(frozen=True, slots=True)
class StateRecord:
    """One version in a key's history: what was written, when, by whom."""

    key: str
    version: int
    value: Any
    """The JSON value written; None for a delete."""
    deleted: bool
    written_at: float
    """Seconds since the epoch, by the writer's clock."""
    writer: Writer = field(default_factory=Writer)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "version": self.version,
            "value": self.value,
            "deleted": self.deleted,
            "written_at": self.written_at,
            "writer": self.writer.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StateRecord:
        return cls(
            key=data["key"],
            version=int(data["version"]),
            value=data.get("value"),
            deleted=bool(data.get("deleted", False)),
            written_at=float(data.get("written_at", 0.0)),
            writer=Writer.from_dict(data.get("writer")),
        )


@dataclass(frozen=True, slots=True)
class Claim:
    """The right to act on a key: one holder at a time, until released or expired."""

    key: str
    action: str
    holder: Writer
    claimed_at: float
    expires_at: float | None
    version: int
    """The claim record's version (its release names it)."""

    def live(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now

    def to_value(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "holder": self.holder.to_dict(),
            "claimed_at": self.claimed_at,
            "expires_at": self.expires_at,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "version": self.version, **self.to_value()}

    @classmethod
    def from_value(cls, key: str, value: dict[str, Any], version: int) -> Claim:
        expires = value.get("expires_at")
        return cls(
            key=key,
            action=str(value.get("action", "")),
            holder=Writer.from_dict(value.get("holder")),
            claimed_at=float(value.get("claimed_at", 0.0)),
            expires_at=None if expires is None else float(expires),
            version=version,
        )

    def refusal(self) -> AlreadyClaimed:
        return AlreadyClaimed(
            self.key,
            owner=self.holder.describe(),
            action=self.action,
            holder=self.holder.to_dict(),
            expires_at=self.expires_at,
        )


def encode_value(value: Any) -> str:
    """A value's stored JSON: a Pydantic model as its JSON, anything else as JSON."""
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class StateStore(ABC):
    """A versioned key-value store with compare-and-swap writes (sync, thread-safe).

    ``url`` names the store in errors and the CLI (never with a password).
    """

    url: str = ""
    max_value_bytes: int = MAX_VALUE_BYTES

    # -- primitives a backend implements ---------------------------------------------

    @abstractmethod
    def _read(self, key: str) -> tuple[int, str] | None:
        """The live value's (version, JSON text), or None (never written or deleted)."""

    @abstractmethod
    def _write(
        self, key: str, text: str | None, expected: int | None, writer: Writer, now: float
    ) -> tuple[int, bool]:
        """Atomically apply one write; ``text`` None deletes.

        Applied only if the live version is ``expected`` (None: no live value).
        If ``writer.write_id`` already made a version of ``key``, return that
        version and True, applying nothing. Else return (new version, False);
        the new version is one more than the key's last version, a delete's
        included. A lost race raises ``StaleVersion`` with the live version (0
        if none) and its value as ``current`` (the stored JSON parsed; None if
        none), applying nothing.
        """

    @abstractmethod
    def _history(self, key: str) -> list[StateRecord]:
        """Every version of ``key``, oldest first."""

    @abstractmethod
    def _writes(self, run_ids: Sequence[str] | None, prefix: str) -> list[StateRecord]:
        """Versions of keys under ``prefix`` written by any of ``run_ids`` (None:
        by anyone), in the order they were written."""

    @abstractmethod
    def _keys(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` with a live value, sorted."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default has none."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the API -------------------------------------------------------------------

    def get(self, key: str) -> Versioned[Any] | None:
        """The value of ``key`` and its version, or None if it has none."""
        self.check_key(key)
        found = self._read(key)
        if found is None:
            return None
        return Versioned(key, json.loads(found[1]), found[0])

    def put(
        self, key: str, value: Any, *, expected_version: int | None, writer: Writer | None = None
    ) -> Versioned[Any]:
        """Write ``value`` if ``key`` is still at ``expected_version`` (None: has no
        value); else ``StaleVersion`` with the version and value found."""
        self.check_key(key)
        text = self.encode(key, value)
        version, _ = self._write_checked(key, text, expected_version, writer)
        return Versioned(key, value, version)

    def write(
        self,
        key: str,
        text: str | None,
        *,
        expected_version: int | None,
        writer: Writer | None = None,
    ) -> tuple[int, bool]:
        """``put`` (or, with ``text`` None, ``delete``) of JSON text already encoded;
        returns (version, already_applied). The runtime's door to ``_write``."""
        self.check_key(key, internal=True)
        if text is not None:
            self.check_size(key, text)
        return self._write_checked(key, text, expected_version, writer)

    def create(self, key: str, value: Any, *, writer: Writer | None = None) -> Versioned[Any]:
        """Write ``value`` only if ``key`` has none (``StaleVersion`` if it has)."""
        return self.put(key, value, expected_version=None, writer=writer)

    def delete(self, key: str, *, expected_version: int, writer: Writer | None = None) -> int:
        """Delete ``key`` at ``expected_version``; returns the delete's version."""
        self.check_key(key)
        version, _ = self._write_checked(key, None, expected_version, writer)
        return version

    def update(
        self,
        key: str,
        fn: Callable[[Any], Any],
        *,
        default: Any = _MISSING,
        max_attempts: int = 10,
        writer: Writer | None = None,
    ) -> Versioned[Any]:
        """Read, apply ``fn``, write back at the version read; re-read and retry on a
        lost race, up to ``max_attempts`` (then the last ``StaleVersion``). Between
        tries it waits a random moment that doubles each time (up to 50 ms), so
        writers racing on one key spread out instead of colliding again.

        A key with no value gives ``fn`` the ``default`` (``StateNotFound`` without one).
        """
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        last: StaleVersion | None = None
        for attempt in range(max_attempts):
            if attempt:
                time.sleep(random.uniform(0, min(0.05, 0.0005 * 2**attempt)))
            current = self.get(key)
            if current is None and default is _MISSING:
                raise StateNotFound(
                    f"{key!r} has no value to update (give default= to create it)",
                    store=self.url,
                    key=key,
                )
            new = fn(default if current is None else current.value)
            try:
                return self.put(
                    key,
                    new,
                    expected_version=None if current is None else current.version,
                    writer=writer,
                )
            except StaleVersion as exc:
                last = exc
        assert last is not None
        raise last

    def history(self, key: str) -> list[StateRecord]:
        """Every version of ``key`` with who wrote it (run, step, agent), oldest first."""
        self.check_key(key, internal=True)
        return self._history(key)

    def writes(
        self, *, run_ids: Sequence[str] | None = None, prefix: str = ""
    ) -> list[StateRecord]:
        """What the given runs (None: anyone) wrote under ``prefix``, in write order."""
        return self._writes(None if run_ids is None else list(run_ids), prefix)

    def keys(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix`` that have a value (claims excluded unless asked for)."""
        found = self._keys(prefix)
        if prefix.startswith(CLAIM_PREFIX):
            return found
        return [k for k in found if not k.startswith(CLAIM_PREFIX)]

    @overload
    def namespace(self, name: str) -> Namespace[Any]: ...
    @overload
    def namespace(self, name: str, model: type[M]) -> Namespace[M]: ...
    def namespace(self, name: str, model: type[Any] | None = None) -> Namespace[Any]:
        """A typed view of the keys ``name:...``: values validated by ``model``."""
        return Namespace(self, name, model)

    # -- claims ----------------------------------------------------------------------

    def claim(
        self,
        key: str,
        *,
        action: str,
        writer: Writer,
        ttl: float | None = None,
        now: float | None = None,
    ) -> Claim:
        """Claim ``key`` for ``action``: exactly one of concurrent claimants wins,
        the others get ``AlreadyClaimed`` naming the holder. Claiming again as the
        same holder returns the claim held; an expired claim can be taken."""
        self.check_key(key)
        if ttl is not None and ttl <= 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl}")
        ckey = CLAIM_PREFIX + key
        while True:
            at = time.time() if now is None else now
            found = self.claim_of(key, now=at, include_expired=True)
            if found is not None and found.live(at):
                if found.holder.same_holder(writer) and found.action == action:
                    return found
                raise found.refusal()
            claim = Claim(key, action, writer, at, None if ttl is None else at + ttl, 0)
            try:
                version, applied = self._write_checked(
                    ckey,
                    encode_value(claim.to_value()),
                    None if found is None else found.version,
                    writer,
                )
            except StaleVersion:
                continue  # someone claimed (or released) in between: look again
            if not applied:
                return Claim(key, action, writer, at, claim.expires_at, version)
            # a retried write (same write_id) returns the version it made earlier
            held = self.claim_of(key, now=at, include_expired=True)
            if held is not None and held.version == version and held.live(at):
                return held
            # the claim that write_id made was released or has expired since: claim
            # afresh (the holder, not the write id, is what makes a claim idempotent)
            writer = replace(writer, write_id=None)

    def release(self, key: str, *, writer: Writer) -> bool:
        """Give up a claim held by ``writer``; False if it holds none (nothing changes)."""
        self.check_key(key)
        found = self.claim_of(key, include_expired=True)
        if found is None or not found.holder.same_holder(writer):
            return False
        if writer.write_id is not None:
            # the claim was written under this write_id: reusing it would make the
            # release a "retry" of the claim, which applies nothing
            writer = replace(writer, write_id=f"{writer.write_id}:release@{found.version}")
        try:
            self._write_checked(CLAIM_PREFIX + key, None, found.version, writer)
        except StaleVersion:
            return False
        return True

    def claim_of(
        self, key: str, *, now: float | None = None, include_expired: bool = False
    ) -> Claim | None:
        """The claim on ``key``, if one is held (and live, unless ``include_expired``)."""
        found = self._read(CLAIM_PREFIX + key)
        if found is None:
            return None
        claim = Claim.from_value(key, json.loads(found[1]), found[0])
        if include_expired or claim.live(time.time() if now is None else now):
            return claim
        return None

    # -- checks ----------------------------------------------------------------------

    def check_key(self, key: str, *, internal: bool = False) -> None:
        """Refuse a key the store cannot hold (empty, too long, control characters)."""
        check_key(key, internal=internal, store=self.url)

    def check_size(self, key: str, text: str) -> None:
        check_size(key, text, limit=self.max_value_bytes, store=self.url)

    def encode(self, key: str, value: Any) -> str:
        """A value's JSON, checked: encodable, valid Unicode, within the size limit."""
        return encode_checked(key, value, limit=self.max_value_bytes, store=self.url)

    def _write_checked(
        self, key: str, text: str | None, expected: int | None, writer: Writer | None
    ) -> tuple[int, bool]:
        if expected is not None and (isinstance(expected, bool) or expected < 1):
            raise InvalidStateValue(
                f"expected_version for {key!r} must be a version >= 1 (or None for "
                f"'no value'), got {expected!r}",
                store=self.url,
                key=key,
            )
        return self._write(key, text, expected, writer or Writer(), time.time())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def check_key(key: str, *, internal: bool = False, store: str = "") -> None:
    """Refuse a key no store holds: empty, too long, control characters, reserved."""
    problem = None
    if not isinstance(key, str) or not key:
        problem = "a key must be a non-empty string"
    elif len(key) > MAX_KEY_LENGTH:
        problem = f"a key is at most {MAX_KEY_LENGTH} characters, this one has {len(key)}"
    elif any(ord(c) < 32 or ord(c) == 127 for c in key):
        problem = "a key may not contain control characters"
    elif not internal and key.startswith(CLAIM_PREFIX):
        problem = f"keys starting with {CLAIM_PREFIX!r} are reserved for claims"
    else:
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            problem = "a key must be valid Unicode text"
    if problem:
        raise InvalidStateValue(f"invalid state key {str(key)[:80]!r}: {problem}", store=store)


def check_size(key: str, text: str, *, limit: int = MAX_VALUE_BYTES, store: str = "") -> None:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidStateValue(
            f"value for {key!r} is not valid Unicode text ({exc.reason})", store=store, key=key
        ) from exc
    if size > limit:
        raise InvalidStateValue(
            f"value for {key!r} is {size} bytes of JSON; the store holds at most {limit} per value",
            store=store,
            key=key,
        )


def encode_checked(key: str, value: Any, *, limit: int = MAX_VALUE_BYTES, store: str = "") -> str:
    """A value's JSON, checked: encodable, valid Unicode, within ``limit`` bytes."""
    try:
        text = encode_value(value)
        text.encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InvalidStateValue(
            f"value for {key!r} cannot be stored as JSON: {exc}", store=store, key=key
        ) from exc
    check_size(key, text, limit=limit, store=store)
    return text


class TypedKeys(Generic[V]):
    """The keys ``name:...`` and the model their values must fit: what a namespace over
    a store (``Namespace``) and one inside a run (``ctx.state.namespace``) share."""

    __slots__ = ("model", "name")

    def __init__(self, name: str, model: type[Any] | None) -> None:
        self.name = name
        self.model = model

    def key(self, key: str) -> str:
        return f"{self.name}:{key}"

    def validate(self, key: str, value: Any, store: str = "") -> V:
        """``value`` as this namespace's model (a stored value that no longer fits it,
        or a value written that does not, is an ``InvalidStateValue``)."""
        checked: V = validate_value(self.model, value, key=key, store=store)
        return checked

    def typed(self, full: Versioned[Any]) -> Versioned[V]:
        """A stored value, validated."""
        return Versioned(full.key, self.validate(full.key, full.value), full.version)

    def checked(self, full: str, fn: Callable[[V], V]) -> Callable[[Any], Any]:
        """``fn`` for ``update``: given the value as the model, its result checked."""

        def typed(value: Any) -> Any:
            new = fn(self.validate(full, value))
            self.validate(full, new)
            return new

        return typed


class Namespace(TypedKeys[V]):
    """Keys ``name:...`` of one store, with values validated by one model."""

    __slots__ = ("store",)

    def __init__(self, store: StateStore, name: str, model: type[Any] | None) -> None:
        super().__init__(name, model)
        self.store = store

    def get(self, key: str) -> Versioned[V] | None:
        found = self.store.get(self.key(key))
        return None if found is None else self.typed(found)

    def put(
        self, key: str, value: V, *, expected_version: int | None, writer: Writer | None = None
    ) -> Versioned[V]:
        full = self.key(key)
        self.validate(full, value)
        written = self.store.put(full, value, expected_version=expected_version, writer=writer)
        return Versioned(full, value, written.version)

    def create(self, key: str, value: V, *, writer: Writer | None = None) -> Versioned[V]:
        return self.put(key, value, expected_version=None, writer=writer)

    def delete(self, key: str, *, expected_version: int, writer: Writer | None = None) -> int:
        return self.store.delete(self.key(key), expected_version=expected_version, writer=writer)

    def update(
        self,
        key: str,
        fn: Callable[[V], V],
        *,
        default: Any = _MISSING,
        max_attempts: int = 10,
        writer: Writer | None = None,
    ) -> Versioned[V]:
        full = self.key(key)
        written = self.store.update(
            full, self.checked(full, fn), default=default, max_attempts=max_attempts, writer=writer
        )
        return self.typed(written)

    def history(self, key: str) -> list[StateRecord]:
        return self.store.history(self.key(key))

    def keys(self) -> list[str]:
        """The keys of this namespace, without the ``name:`` prefix."""
        cut = len(self.name) + 1
        return [k[cut:] for k in self.store.keys(self.name + ":")]

    def validate(self, key: str, value: Any, store: str = "") -> V:
        return super().validate(key, value, store or self.store.url)


def validate_value(model: type[Any] | None, value: Any, *, key: str, store: str) -> Any:
    if model is None:
        return value
    if isinstance(value, model):
        return value
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"a namespace's model must be a pydantic BaseModel, got {model!r}")
    try:
        return cast(Any, model).model_validate(value)
    except ValidationError as exc:
        from ..validation import error_lines

        problems = error_lines(exc)
        raise InvalidStateValue(
            f"value for {key!r} does not fit {model.__name__}: " + "; ".join(problems),
            store=store,
            key=key,
            problems=problems,
        ) from exc
