"""Shared state inside a run: every store operation is an effect.

``ctx.state`` is a ``RunStateAccess``: the store's API, async, with each
operation journaled through the effects engine as one of two kinds:

- ``state.read`` (get, history, changes, claim lookups): the value and
  version read are recorded; a replay is served them without touching the
  store, and so is a resume (the run sees what it saw before the crash).
- ``state.write`` (put, create, delete, claim, release): the start is
  committed before the store is touched, the outcome (the version written,
  or the conflict with what was found) before the run goes on. A replay
  serves the outcome; a resume never re-applies a write journaled as
  applied. A write in doubt (the process died between the store's commit and
  the journal's) is sent again with the same write id, which the store
  recognizes and answers with the version it already made: resolved by
  reading the store back, not by guessing.

Every version written carries its writer by construction: run id, step path
and agent identity, plus the write id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from pydantic import BaseModel

from ..errors import (
    AlreadyClaimed,
    ConfigurationError,
    InvalidStateValue,
    StaleVersion,
    StateError,
    StateNotFound,
    StateUnavailable,
)
from ..state.base import (
    MAX_VALUE_BYTES,
    Claim,
    StateRecord,
    StateStore,
    TypedKeys,
    Versioned,
    Writer,
    check_key,
    encode_checked,
)
from .kinds import EffectKind, InDoubtPolicy, Recorded, register_kind

if TYPE_CHECKING:
    from .context import RunContext

__all__ = ["STATE_READ", "STATE_WRITE", "RunNamespace", "RunStateAccess"]

M = TypeVar("M", bound=BaseModel)
V = TypeVar("V")
_MISSING: Any = object()


class StateReadKind(EffectKind):
    """A read of shared state: recorded, served on resume and replay."""

    name = "state.read"
    started_type = "state.read"
    completed_type = "state.value"
    failed_type = "state.read_failed"

    def error_from(self, error: dict[str, Any]) -> Exception:
        return _state_error(error)


class StateWriteKind(EffectKind):
    """A write to shared state: durable start, committed outcome, at most once."""

    name = "state.write"
    started_type = "state.write"
    completed_type = "state.written"
    failed_type = "state.conflict"
    durable_start = True
    commit_result = True

    def error_payload(self, exc: BaseException) -> dict[str, Any]:
        payload = super().error_payload(exc)
        if isinstance(exc, StaleVersion):
            payload.update(
                key=exc.key, expected=exc.expected, actual=exc.actual, current=exc.current
            )
        elif isinstance(exc, AlreadyClaimed):
            payload.update(
                key=exc.key,
                owner=exc.owner,
                action=exc.action,
                holder=exc.holder,
                expires_at=exc.expires_at,
            )
        elif isinstance(exc, StateError):
            payload.update(store=exc.store, key=exc.key)
        return payload

    def error_from(self, error: dict[str, Any]) -> Exception:
        return _state_error(error)

    def in_doubt(
        self, rec: Recorded, policy: InDoubtPolicy, ctx: RunContext, key: str
    ) -> Literal["retry"]:
        # sent again with the same write id: the store answers with the version it
        # made if the write landed before the crash, and applies it if it did not
        started = rec.started or {}
        ctx.record(
            "state.in_doubt",
            key=key,
            state_key=started.get("key"),
            resolution="re-sent with the same write id; the store applies it at most once",
        )
        return "retry"


def _state_error(error: dict[str, Any]) -> Exception:
    kind = error.get("type")
    message = str(error.get("message", "recorded state failure"))
    key = str(error.get("key") or "")
    if kind == "StaleVersion":
        return StaleVersion(
            key,
            expected=error.get("expected"),
            actual=int(error.get("actual") or 0),
            current=error.get("current"),
        )
    if kind == "AlreadyClaimed":
        return AlreadyClaimed(
            key,
            owner=str(error.get("owner", "")),
            action=str(error.get("action", "")),
            holder=error.get("holder"),
            expires_at=error.get("expires_at"),
        )
    if kind == "StateNotFound":
        return StateNotFound(message, store=str(error.get("store", "")), key=key or None)
    if kind == "InvalidStateValue":
        return InvalidStateValue(message, store=str(error.get("store", "")), key=key or None)
    return StateUnavailable(message, store=str(error.get("store", "")), key=key or None)


STATE_READ = register_kind(StateReadKind())
STATE_WRITE = register_kind(StateWriteKind())


class RunStateAccess:
    """``ctx.state``: the run's state store, each operation a journaled effect."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: RunContext) -> None:
        self._ctx = ctx

    # -- plumbing --------------------------------------------------------------------

    def _store(self) -> StateStore:
        store = self._ctx.state_store
        if store is None:
            raise ConfigurationError(
                "this run has no state store: pass state= to tm.run/tm.resume (a "
                "StateStore or a URL such as 'sqlite:///state.db'), or --store to the CLI"
            )
        return store

    def _writer(self, effect_key: str) -> Writer:
        ctx = self._ctx
        return Writer(
            run_id=ctx.run_id,
            step_path=step_path_of(ctx.path),
            agent=ctx.agent_identity(),
            write_id=f"{ctx.run_id}:{effect_key}",
        )

    async def _read(self, request: dict[str, Any], fn: Callable[[StateStore], Any]) -> Any:
        ctx = self._ctx
        store = None if ctx.replaying else self._store()

        async def execute() -> Any:
            assert store is not None
            return await _call(store, fn)

        return await ctx.perform(STATE_READ, request, execute)

    async def _write(self, request: dict[str, Any], fn: Callable[[StateStore, Writer], Any]) -> Any:
        ctx = self._ctx
        store = None if ctx.replaying else self._store()
        key = ctx.effect_key(STATE_WRITE.name)
        writer = self._writer(key)

        async def execute() -> Any:
            assert store is not None
            return await _call(store, lambda s: fn(s, writer))

        return await ctx.perform(STATE_WRITE, request, execute, key=key)

    # -- reads -----------------------------------------------------------------------

    async def get(self, key: str) -> Versioned[Any] | None:
        """The value of ``key`` and its version (None: no value), as an effect."""
        _check_key(key)
        found = await self._read({"op": "get", "key": key}, lambda s: _versioned(s.get(key)))
        if found is None:
            return None
        return Versioned(key, found["value"], int(found["version"]))

    async def history(self, key: str) -> list[StateRecord]:
        """Every version of ``key`` and who wrote it, as an effect."""
        _check_key(key)
        rows = await self._read(
            {"op": "history", "key": key},
            lambda s: [r.to_dict() for r in s.history(key)],
        )
        return [StateRecord.from_dict(r) for r in rows]

    async def changes(
        self, *, runs: list[str] | None = None, prefix: str = ""
    ) -> list[StateRecord]:
        """What the given runs wrote under ``prefix``, in write order (default: this run)."""
        run_ids = [self._ctx.run_id] if runs is None else list(runs)
        rows = await self._read(
            {"op": "changes", "runs": run_ids, "prefix": prefix},
            lambda s: [r.to_dict() for r in s.writes(run_ids=run_ids, prefix=prefix)],
        )
        return [StateRecord.from_dict(r) for r in rows]

    async def claim_of(self, key: str) -> Claim | None:
        """The live claim on ``key``, if any, as an effect."""
        _check_key(key)
        found = await self._read(
            {"op": "claim_of", "key": key},
            lambda s: None if (c := s.claim_of(key)) is None else c.to_dict(),
        )
        return None if found is None else _claim(found)

    # -- writes ----------------------------------------------------------------------

    async def put(self, key: str, value: Any, *, expected_version: int | None) -> Versioned[Any]:
        """Write ``value`` if ``key`` is still at ``expected_version`` (None: no value);
        a lost race is ``StaleVersion`` (journaled: a replay loses it the same way)."""
        _check_key(key)
        store = self._ctx.state_store
        text = encode_checked(key, value, limit=store.max_value_bytes if store else MAX_VALUE_BYTES)
        _check_expected(key, expected_version)
        result = await self._write(
            {"op": "put", "key": key, "expected_version": expected_version, "value": text},
            lambda s, w: _written(s.write(key, text, expected_version=expected_version, writer=w)),
        )
        return Versioned(key, value, int(result["version"]))

    async def create(self, key: str, value: Any) -> Versioned[Any]:
        """Write ``value`` only if ``key`` has none."""
        return await self.put(key, value, expected_version=None)

    async def delete(self, key: str, *, expected_version: int) -> int:
        """Delete ``key`` at ``expected_version``; returns the delete's version."""
        _check_key(key)
        _check_expected(key, expected_version)
        result = await self._write(
            {"op": "delete", "key": key, "expected_version": expected_version},
            lambda s, w: _written(s.write(key, None, expected_version=expected_version, writer=w)),
        )
        return int(result["version"])

    async def update(
        self,
        key: str,
        fn: Callable[[Any], Any],
        *,
        default: Any = _MISSING,
        max_attempts: int = 10,
    ) -> Versioned[Any]:
        """Read, apply ``fn``, write back at the version read; on a lost race read again
        and retry, up to ``max_attempts``. Each read and write is journaled, so a
        replay takes the same attempts."""
        if max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be >= 1, got {max_attempts}")
        last: StaleVersion | None = None
        for _ in range(max_attempts):
            current = await self.get(key)
            if current is None and default is _MISSING:
                raise StateNotFound(
                    f"{key!r} has no value to update (give default= to create it)", key=key
                )
            new = fn(default if current is None else current.value)
            try:
                return await self.put(
                    key, new, expected_version=None if current is None else current.version
                )
            except StaleVersion as exc:
                last = exc
        assert last is not None
        raise last

    async def claim(self, key: str, *, action: str, ttl: float | None = None) -> Claim:
        """Claim ``key`` before acting on it: of concurrent claimants exactly one
        wins; the others get ``AlreadyClaimed`` naming the holder (agent, run, step)."""
        _check_key(key)
        if not action:
            raise ConfigurationError("a claim needs an action (what the holder will do)")
        if ttl is not None and ttl <= 0:
            raise ConfigurationError(f"a claim's ttl must be > 0 seconds, got {ttl}")
        result = await self._write(
            {"op": "claim", "key": key, "action": action, "ttl": ttl},
            lambda s, w: s.claim(key, action=action, writer=w, ttl=ttl).to_dict(),
        )
        return _claim(result)

    async def release(self, key: str) -> bool:
        """Give up this step's claim on ``key``; False if it held none."""
        _check_key(key)
        result = await self._write(
            {"op": "release", "key": key},
            lambda s, w: {"released": s.release(key, writer=w)},
        )
        return bool(result["released"])

    # -- typed views -----------------------------------------------------------------

    @overload
    def namespace(self, name: str) -> RunNamespace[Any]: ...
    @overload
    def namespace(self, name: str, model: type[M]) -> RunNamespace[M]: ...
    def namespace(self, name: str, model: type[Any] | None = None) -> RunNamespace[Any]:
        """The keys ``name:...`` with values validated by ``model``, as effects."""
        return RunNamespace(self, name, model)


class RunNamespace(TypedKeys[V]):
    """``ctx.state.namespace("order", Order)``: typed keys ``order:...`` in a run."""

    __slots__ = ("_access",)

    def __init__(self, access: RunStateAccess, name: str, model: type[Any] | None) -> None:
        super().__init__(name, model)
        self._access = access

    async def get(self, key: str) -> Versioned[V] | None:
        found = await self._access.get(self.key(key))
        return None if found is None else self.typed(found)

    async def put(self, key: str, value: V, *, expected_version: int | None) -> Versioned[V]:
        full = self.key(key)
        self.validate(full, value)
        written = await self._access.put(full, value, expected_version=expected_version)
        return Versioned(full, value, written.version)

    async def create(self, key: str, value: V) -> Versioned[V]:
        return await self.put(key, value, expected_version=None)

    async def delete(self, key: str, *, expected_version: int) -> int:
        return await self._access.delete(self.key(key), expected_version=expected_version)

    async def update(
        self, key: str, fn: Callable[[V], V], *, default: Any = _MISSING, max_attempts: int = 10
    ) -> Versioned[V]:
        full = self.key(key)
        written = await self._access.update(
            full, self.checked(full, fn), default=default, max_attempts=max_attempts
        )
        return self.typed(written)

    async def history(self, key: str) -> list[StateRecord]:
        return await self._access.history(self.key(key))

    async def claim(self, key: str, *, action: str, ttl: float | None = None) -> Claim:
        return await self._access.claim(self.key(key), action=action, ttl=ttl)

    async def release(self, key: str) -> bool:
        return await self._access.release(self.key(key))


# -- helpers -------------------------------------------------------------------------


async def _call(store: StateStore, fn: Callable[[StateStore], Any]) -> Any:
    """Run a store operation off the event loop (a network store blocks)."""
    try:
        return await asyncio.to_thread(fn, store)
    except (StaleVersion, AlreadyClaimed, StateError):
        raise
    except (ConnectionError, TimeoutError, OSError) as exc:
        raise StateUnavailable(
            f"state store {store.url} failed: {type(exc).__name__}: {exc}", store=store.url
        ) from exc


def step_path_of(path: str) -> str:
    """The step a context belongs to: a tool's context path ends in its effect key."""
    head, _, last = path.rpartition("/")
    return head if head and "#" in last else path


def _versioned(found: Versioned[Any] | None) -> dict[str, Any] | None:
    return None if found is None else {"version": found.version, "value": found.value}


def _written(result: tuple[int, bool]) -> dict[str, Any]:
    version, already = result
    return {"version": version, "deduplicated": True} if already else {"version": version}


def _claim(data: dict[str, Any]) -> Claim:
    return Claim.from_value(str(data["key"]), data, int(data["version"]))


def _check_key(key: str) -> None:
    check_key(key)


def _check_expected(key: str, expected: int | None) -> None:
    if expected is not None and (
        isinstance(expected, bool) or not isinstance(expected, int) or expected < 1
    ):
        raise InvalidStateValue(
            f"expected_version for {key!r} must be a version >= 1 (or None for 'no value'), "
            f"got {expected!r}",
            key=key,
        )
