"""Effects: the single door every nondeterministic act goes through.

A model call, a tool call, the clock and a random draw are each performed by
an ``Effects`` object under a deterministic key (``path/kind#n``). The live
implementation just executes; a journaling implementation records request and
result under the key, serves recorded results on resume, and refuses live
execution on strict replay. Keys come from step paths plus a per-path counter,
never from arrival order, so parallel branches get the same keys whichever
finishes first.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from .context import RunContext

__all__ = ["EffectKind", "Effects", "LiveEffects"]

EffectKind = Literal["model", "tool", "clock", "random"]


class Effects(Protocol):
    """Performs effects; may serve them from a record instead of executing."""

    async def perform(
        self,
        ctx: RunContext,
        key: str,
        kind: EffectKind,
        request: Any,
        execute: Callable[[], Awaitable[Any]],
        meta: dict[str, Any] | None = None,
    ) -> Any:
        """Return the effect's result: recorded, or by awaiting ``execute()``.

        ``meta`` is journaled with the request but is not part of its identity
        (e.g. which model served it: a what-if may swap the model).
        """
        ...

    def perform_sync(
        self, ctx: RunContext, key: str, kind: EffectKind, execute: Callable[[], Any]
    ) -> Any:
        """The same for effects that need no await (clock, random)."""
        ...


class LiveEffects:
    """Executes every effect as it comes; nothing is recorded."""

    __slots__ = ()

    async def perform(
        self,
        ctx: RunContext,
        key: str,
        kind: EffectKind,
        request: Any,
        execute: Callable[[], Awaitable[Any]],
        meta: dict[str, Any] | None = None,
    ) -> Any:
        return await execute()

    def perform_sync(
        self, ctx: RunContext, key: str, kind: EffectKind, execute: Callable[[], Any]
    ) -> Any:
        return execute()


def utc_now() -> datetime:
    return datetime.now(UTC)


def random_draw() -> float:
    return random.random()
