"""``typedmesh run --follow``: the run's events and model token deltas, as they happen.

The run goes through ``tm.stream``; what it yields is written to stderr, so
stdout stays the run's output (one JSON document with ``--json``). One line
per event (seconds since the start, the type, the step path, a few words
from the payload); a model's text is written as it arrives, under the step
that asked for it. With ``--json`` each item is one JSON line instead.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import queue
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import IO, Any

from .runtime.run import RunResult, arun
from .runtime.stream import Lagged, RunEvent, StreamEvent, TokenDelta, ToolCallDelta, stream
from .step import Step

__all__ = ["Follower", "arun_following", "runner"]

Runner = Callable[..., Coroutine[Any, Any, RunResult[Any]]]


def runner(follow: bool, as_json: bool) -> Runner:
    """What ``typedmesh run`` calls instead of ``arun``: ``arun`` itself, or a followed run."""
    if not follow:
        return arun
    return functools.partial(arun_following, json_lines=as_json)


async def arun_following(
    flow: Step[Any, Any],
    input: Any,
    *,
    json_lines: bool = False,
    out: IO[str] | None = None,
    **options: Any,
) -> RunResult[Any]:
    """``arun`` with every stream item written to ``out`` (stderr) as it happens."""
    follower = Follower(out if out is not None else sys.stderr, json_lines=json_lines)
    async with stream(flow, input, **options) as events:
        try:
            async for item in events:
                follower.write(item)
        finally:
            follower.end()
    return await events


class Follower:
    """Writes stream items as text lines (or JSON lines), flushing each.

    The writing happens in a thread of its own, so a reader that is slow (a
    full pipe) never holds the run's event loop, and one that goes away (a
    closed pipe: ``| head``) only ends the following: the run goes on and is
    journaled. Past ``MAX_PENDING`` unwritten pieces, model text is dropped
    and a line says how much; event lines are always kept.
    """

    MAX_PENDING = 4096
    FLUSH_S = 5.0
    """How long ``end`` waits for a slow reader to take what is left."""

    def __init__(self, out: IO[str], *, json_lines: bool = False) -> None:
        self.out = out
        self.json_lines = json_lines
        self.started = time.monotonic()
        self.broken = False
        """The reader went away: nothing more is written."""
        self.dropped = 0
        self._dropped_chars = 0
        self._open_key: str | None = None  # the call whose text is being written
        self._pending: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None

    def write(self, item: StreamEvent) -> None:
        if self.broken:
            return
        if self.json_lines:
            delta = isinstance(item, TokenDelta | ToolCallDelta)
            self._emit(json.dumps(as_json(item), default=str) + "\n", delta=delta)
        elif isinstance(item, TokenDelta):
            if self._open_key != item.key:
                self._close_line()
                self._emit(f"{'':>8}  {item.path} > ")
                self._open_key = item.key
            self._emit(item.text, delta=True)
        elif isinstance(item, ToolCallDelta):
            opened = f"{item.key}#{item.call}"
            if self._open_key != opened:
                self._close_line()
                self._emit(f"{'':>8}  {item.path} > {item.tool} ")
                self._open_key = opened
            self._emit(item.arguments, delta=True)
        else:
            self._close_line()
            self._emit(self.line(item) + "\n")

    def end(self) -> None:
        """Close the last line and let the writer finish (a stalled reader: up to FLUSH_S)."""
        self._close_line()
        writer = self._writer
        if writer is not None:
            self._pending.put(None)
            writer.join(timeout=self.FLUSH_S)
            self._writer = None

    def line(self, item: StreamEvent) -> str:
        elapsed = f"{time.monotonic() - self.started:7.2f}s"
        if isinstance(item, Lagged):
            return (
                f"{elapsed}  lagged: {item.dropped} deltas ({item.chars} characters) not shown; "
                "each response below has its whole text"
            )
        assert isinstance(item, RunEvent)
        about = summary(item)
        return f"{elapsed}  {item.type:<16} {item.path}" + (f"  {about}" if about else "")

    def _close_line(self) -> None:
        if self._open_key is not None:
            self._open_key = None
            self._emit("\n")
        if self.dropped and not self.json_lines:
            self._emit(
                f"{'':>8}  ({self.dropped} pieces of model text, {self._dropped_chars} "
                "characters, not shown: the output was read too slowly)\n"
            )
            self.dropped = self._dropped_chars = 0

    def _emit(self, text: str, *, delta: bool = False) -> None:
        if self.broken:
            return
        if delta and self._pending.qsize() >= self.MAX_PENDING:
            self.dropped += 1
            self._dropped_chars += len(text)
            return
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_out, name="follow", daemon=True)
            self._writer.start()
        self._pending.put(text)

    def _write_out(self) -> None:
        """The writer thread: blocks on the reader, never on the run."""
        while True:
            text = self._pending.get()
            if text is None:
                return
            try:
                self.out.write(text)
                self.out.flush()
            except (OSError, ValueError):  # a closed pipe or file: stop following
                self.broken = True
                return


def summary(item: RunEvent) -> str:
    """A few words from an event's payload."""
    payload, kind = item.payload, item.type
    if kind == "step.started":
        return str(payload.get("kind", ""))
    if kind == "model.request":
        return str(payload.get("model", ""))
    if kind == "model.response":
        usage = payload.get("usage") or {}
        tokens = f"{usage.get('input_tokens', 0)}+{usage.get('output_tokens', 0)} tokens"
        if usage.get("estimated_calls"):  # the provider reported none: counted from the text
            tokens = f"~{tokens} (estimated)"
        return f"{payload.get('served_model') or ''} {tokens}".strip()
    if kind == "tool.started":
        return str(payload.get("tool", ""))
    if kind in ("model.error", "tool.error", "run.failed"):
        return f"{payload.get('type', '')}: {payload.get('message', '')}"
    if kind == "model.retry":
        return f"{payload.get('error', '')}; again in {payload.get('delay_s', 0):g} s"
    if kind == "run.suspended":
        return "waiting for " + ", ".join(payload.get("waiting") or [])
    if kind == "run.finished":
        usage = payload.get("usage") or {}
        return f"{usage.get('input_tokens', 0) + usage.get('output_tokens', 0)} tokens"
    return ""


def as_json(item: StreamEvent) -> dict[str, Any]:
    """One stream item as a JSON-ready dict (``--follow --json``)."""
    if isinstance(item, TokenDelta | ToolCallDelta):  # "delta" or "tool_delta", and its fields
        return {"kind": item.kind, **dataclasses.asdict(item)}
    if isinstance(item, Lagged):
        return {"kind": "lagged", "dropped": item.dropped, "chars": item.chars, "keys": item.keys}
    assert isinstance(item, RunEvent)
    return {
        "kind": "event",
        "seq": item.seq,
        "type": item.type,
        "path": item.path,
        "key": item.key,
        "ts": item.ts,
        "summary": summary(item),
    }
