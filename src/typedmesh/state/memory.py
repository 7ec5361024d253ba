"""The in-process state store: a dict under a lock, for tests and single processes."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import replace

from ..errors import StaleVersion
from .base import StateRecord, StateStore, Writer

__all__ = ["MemoryStateStore"]


class MemoryStateStore(StateStore):
    """Every version of every key in memory; gone when the process ends."""

    def __init__(self, *, max_value_bytes: int | None = None) -> None:
        self.url = "memory:"
        if max_value_bytes is not None:
            self.max_value_bytes = max_value_bytes
        self._lock = threading.Lock()
        self._versions: dict[str, list[tuple[StateRecord, str | None]]] = {}
        self._by_write_id: dict[tuple[str, str], int] = {}
        self._order: list[tuple[StateRecord, str | None]] = []

    def _read(self, key: str) -> tuple[int, str] | None:
        with self._lock:
            versions = self._versions.get(key)
            if not versions:
                return None
            record, text = versions[-1]
            return None if text is None else (record.version, text)

    def _write(
        self, key: str, text: str | None, expected: int | None, writer: Writer, now: float
    ) -> tuple[int, bool]:
        with self._lock:
            versions = self._versions.setdefault(key, [])
            if writer.write_id is not None:
                done = self._by_write_id.get((key, writer.write_id))
                if done is not None:
                    return done, True
            last, last_text = versions[-1] if versions else (None, None)
            live = 0 if last is None or last_text is None else last.version
            if (expected is None and live) or (expected is not None and live != expected):
                current = None if last_text is None else json.loads(last_text)
                raise StaleVersion(key, expected=expected, actual=live, current=current)
            version = (last.version if last is not None else 0) + 1
            record = StateRecord(
                key=key,
                version=version,
                value=None,  # parsed afresh on every read: callers get copies
                deleted=text is None,
                written_at=now,
                writer=writer,
            )
            versions.append((record, text))
            if writer.write_id is not None:
                self._by_write_id[key, writer.write_id] = version
            self._order.append((record, text))
            return version, False

    def _history(self, key: str) -> list[StateRecord]:
        with self._lock:
            return [_copy(record, text) for record, text in self._versions.get(key, [])]

    def _writes(self, run_ids: Sequence[str] | None, prefix: str) -> list[StateRecord]:
        wanted = None if run_ids is None else set(run_ids)
        with self._lock:
            return [
                _copy(record, text)
                for record, text in self._order
                if record.key.startswith(prefix)
                and (wanted is None or record.writer.run_id in wanted)
            ]

    def _keys(self, prefix: str) -> list[str]:
        with self._lock:
            return sorted(
                key
                for key, versions in self._versions.items()
                if key.startswith(prefix) and versions and versions[-1][1] is not None
            )


def _copy(record: StateRecord, text: str | None) -> StateRecord:
    """The record with its value parsed from the stored text (a copy the caller may change)."""
    return record if text is None else replace(record, value=json.loads(text))
