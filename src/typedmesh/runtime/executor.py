"""Executors: how patterns run branches and plan steps side by side.

Patterns never call ``asyncio.gather`` or ``TaskGroup`` themselves; they hand
their calls to the run's executor (``ctx.run_all``), so another engine (Ray)
can be plugged in without touching them. Every executor keeps one rule: the
first call that fails cancels its siblings, and that failure is raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

__all__ = ["AsyncioExecutor", "Executor"]

T = TypeVar("T")


class Executor(Protocol):
    """Runs a batch of calls concurrently; the first failure cancels the rest."""

    async def run_all(self, calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]: ...


class AsyncioExecutor:
    """The default: tasks on the running event loop."""

    __slots__ = ()

    async def run_all(self, calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
        if len(calls) == 1:
            return [await calls[0]()]
        tasks = [asyncio.ensure_future(call()) for call in calls]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except BaseException:  # we were cancelled: so are our calls
            await _cancel(tasks)
            raise
        failed = _first_failure(tasks)
        if failed is not None:
            await _cancel(tasks)
            raise failed
        return [task.result() for task in tasks]


def _first_failure(tasks: Sequence[asyncio.Future[Any]]) -> BaseException | None:
    """The failure to report: a real error before a suspension, then call order."""
    errors = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception()]
    real = [e for e in errors if isinstance(e, Exception)]
    found = real or errors
    return found[0] if found else None


async def _cancel(tasks: Sequence[asyncio.Future[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
