"""Shared state: versioned values with optimistic locking, history and claims.

``open_store(url)`` picks a backend from a URL: ``memory:``, a SQLite path or
``sqlite:///path``, ``postgresql://...`` (extra ``postgres``), ``redis://...``
(extra ``redis``).
"""

from __future__ import annotations

from pathlib import Path

from .base import (
    CLAIM_PREFIX,
    MAX_KEY_LENGTH,
    MAX_VALUE_BYTES,
    Claim,
    Namespace,
    StateRecord,
    StateStore,
    Versioned,
    Writer,
    encode_value,
)
from .memory import MemoryStateStore

__all__ = [
    "CLAIM_PREFIX",
    "MAX_KEY_LENGTH",
    "MAX_VALUE_BYTES",
    "Claim",
    "MemoryStateStore",
    "Namespace",
    "StateRecord",
    "StateStore",
    "Versioned",
    "Writer",
    "encode_value",
    "open_store",
]


def open_store(store: str | Path | StateStore) -> StateStore:
    """A StateStore from a URL or path (a StateStore is returned as is)."""
    if isinstance(store, StateStore):
        return store
    text = str(store)
    if text in ("memory:", "memory://"):
        return MemoryStateStore()
    if text.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStateStore

        return PostgresStateStore(text)
    if text.startswith(("redis://", "rediss://", "unix://")):
        from .redis import RedisStateStore

        return RedisStateStore(text)
    from .sqlite import SQLiteStateStore

    if text.startswith("sqlite:"):
        rest = text.removeprefix("sqlite:")
        if rest.startswith("///"):  # sqlite:///abs/path (and SQLAlchemy's sqlite:////abs)
            text = "/" + rest.lstrip("/")
        elif rest.startswith("//"):
            from ..errors import ConfigurationError

            raise ConfigurationError(
                f"{store!r}: a SQLite store has no host; write sqlite:///abs/path.db "
                "or sqlite:relative/path.db"
            )
        else:
            text = rest
    return SQLiteStateStore(text)
