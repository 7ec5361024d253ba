"""Surviving model failures: fallback lists, cascades and circuit breakers.

These are descriptions; the runtime acts on them and journals every decision
(which model was tried, why the next one was, whether a breaker let a call
through), so a replay takes the same path without calling anything.

- ``Fallback(a, b, on=...)``: try ``a``; on one of the named errors (after
  its own retries), try ``b``; and so on.
- ``Cascade(cheap, expensive)``: answer with ``cheap``; escalate to the next
  model only when an answer fails validation or a gate (the seed's "90/10
  routing rule").
- ``CircuitBreaker(failures=5, window_s=60, cooldown_s=30)``: after that many
  failures of one provider/model within the window, calls fail fast (or go to
  the next fallback) until a half-open probe succeeds. The state is one per
  model per process, shared by every agent and event loop (guarded by a
  thread lock, timed by the monotonic clock).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import CircuitOpen, ConfigurationError, ModelError
from .base import Model, ModelRequest, ModelResponse

__all__ = [
    "BREAKERS",
    "BreakerRegistry",
    "Cascade",
    "CircuitBreaker",
    "CircuitOpen",
    "Fallback",
    "model_key",
]

BreakerState = Literal["closed", "open", "half_open"]


def model_key(model: Any) -> str:
    """The breaker key of a model: ``provider:name``."""
    return f"{getattr(model, 'provider', 'model')}:{getattr(model, 'name', type(model).__name__)}"


class _ModelList:
    """A non-empty list of models (strings resolved on first use)."""

    kind = "models"

    def __init__(self, models: Sequence[str | Model]) -> None:
        if not models:
            raise ConfigurationError(f"{type(self).__name__}() needs at least one model")
        if isinstance(models, str):
            raise ConfigurationError(f"{type(self).__name__}() takes models, not one string")
        self.specs = list(models)
        self._resolved: list[Model] | None = None
        names = [m if isinstance(m, str) else getattr(m, "name", "?") for m in self.specs]
        self.name: str = f"{self.kind}({', '.join(str(n) for n in names)})"
        self.provider: str = self.kind

    @property
    def models(self) -> list[Model]:
        if self._resolved is None:
            from . import resolve_model

            self._resolved = [resolve_model(m) for m in self.specs]
        return self._resolved

    async def generate(self, request: ModelRequest) -> ModelResponse:
        """Outside a run (no journal), the first model answers."""
        return await self.models[0].generate(request)

    def __repr__(self) -> str:
        return self.name


class Fallback(_ModelList):
    """Models tried in order: the next one only when the last failed with ``on``."""

    kind = "fallback"

    def __init__(
        self,
        *models: str | Model,
        on: Sequence[type[BaseException]] = (ModelError,),
    ) -> None:
        super().__init__(models)
        on = tuple(on)
        if not on:
            raise ConfigurationError("Fallback(on=...) needs at least one error type")
        for kind in on:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise ConfigurationError(f"Fallback(on=...): {kind!r} is not an exception type")
        self.on = on

    def falls_back(self, error: BaseException) -> bool:
        return isinstance(error, self.on)


class Cascade(_ModelList):
    """Cheap first; the next model only after an answer failed validation or a gate."""

    kind = "cascade"

    def __init__(self, *models: str | Model) -> None:
        super().__init__(models)
        if len(models) < 2:
            raise ConfigurationError("Cascade() needs at least two models (cheap, then better)")


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    """When to stop calling a failing model, and when to probe it again."""

    failures: int = 5
    """Failures within ``window_s`` that open the circuit."""
    window_s: float = 60.0
    cooldown_s: float = 30.0
    """How long an open circuit refuses calls before one half-open probe."""

    def __post_init__(self) -> None:
        if self.failures < 1:
            raise ConfigurationError(f"CircuitBreaker.failures must be >= 1, got {self.failures}")
        for name in ("window_s", "cooldown_s"):
            value = getattr(self, name)
            if not (value > 0 and value < float("inf")):
                raise ConfigurationError(f"CircuitBreaker.{name} must be > 0 s, got {value}")


@dataclass(slots=True)
class _Circuit:
    failures: deque[float] = field(default_factory=deque)
    opened_at: float | None = None
    probing: bool = False


class BreakerRegistry:
    """One circuit per model key per process (thread-safe; not tied to an event loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._circuits: dict[str, _Circuit] = {}

    def admit(self, key: str, policy: CircuitBreaker, now: float | None = None) -> BreakerState:
        """Whether a call may go: ``closed`` (yes), ``half_open`` (yes, as the probe),
        ``open`` (no)."""
        at = time.monotonic() if now is None else now
        with self._lock:
            circuit = self._circuits.setdefault(key, _Circuit())
            if circuit.opened_at is None:
                return "closed"
            if at - circuit.opened_at >= policy.cooldown_s and not circuit.probing:
                circuit.probing = True
                return "half_open"
            return "open"

    def success(self, key: str) -> None:
        with self._lock:
            circuit = self._circuits.setdefault(key, _Circuit())
            circuit.failures.clear()
            circuit.opened_at, circuit.probing = None, False

    def failure(self, key: str, policy: CircuitBreaker, now: float | None = None) -> None:
        at = time.monotonic() if now is None else now
        with self._lock:
            circuit = self._circuits.setdefault(key, _Circuit())
            if circuit.probing:  # the probe failed: open again for a full cooldown
                circuit.opened_at, circuit.probing = at, False
                return
            circuit.failures.append(at)
            while circuit.failures and at - circuit.failures[0] > policy.window_s:
                circuit.failures.popleft()
            if len(circuit.failures) >= policy.failures:
                circuit.opened_at = at

    def state(self, key: str) -> BreakerState:
        with self._lock:
            circuit = self._circuits.get(key)
            if circuit is None or circuit.opened_at is None:
                return "closed"
            return "half_open" if circuit.probing else "open"

    def reset(self, key: str | None = None) -> None:
        """Forget one circuit (or all): for tests and operators."""
        with self._lock:
            if key is None:
                self._circuits.clear()
            else:
                self._circuits.pop(key, None)


BREAKERS = BreakerRegistry()
"""The process's circuits, shared by every agent."""
