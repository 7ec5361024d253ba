"""Opening a SQLite file that other processes may be opening at the same moment.

Processes that open a new file at once race to switch it to WAL and create its
tables. SQLite answers some of them "database is locked" at once, without asking
the busy handler (that wait could deadlock), so ``busy_timeout`` does not cover
it. The open is tried again for a while instead of failing.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["is_locked", "open_when_free"]

T = TypeVar("T")


def is_locked(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused for a lock another connection holds (worth another try)."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def open_when_free(open_once: Callable[[], T], *, timeout_s: float) -> T:
    """``open_once()``, tried again while it fails on a lock, for up to ``timeout_s``.

    ``open_once`` must leave nothing open when it raises.
    """
    give_up = time.monotonic() + timeout_s
    while True:
        try:
            return open_once()
        except sqlite3.OperationalError as exc:
            if not is_locked(exc) or time.monotonic() >= give_up:
                raise
        time.sleep(random.uniform(0.005, 0.05))
