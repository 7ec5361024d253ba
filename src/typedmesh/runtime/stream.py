"""Streaming a run: ``async for item in tm.stream(flow, input)``.

A stream runs the flow as ``arun`` would (same options, same journal) in a
task of its own and hands the consumer, as they happen:

- ``RunEvent``: every event of the run, the very events the journal records
  (``run.started``, ``step.started``, ``model.request``, ``model.response``,
  ``tool.started``, ..., ``run.finished``), in order;
- ``TokenDelta``: pieces of a model's text while the call runs, from providers
  that stream (OpenAI and Anthropic through their SDKs; a custom model calls
  ``typedmesh.models.streaming.emit_delta``). A delta is a preview: the
  complete response is the ``model.response`` event that follows, and that is
  what is validated, journaled and replayed. A replay serves responses from
  the journal and streams nothing;
- ``ToolCallDelta``: pieces of a tool call's JSON arguments as the model
  writes them (which call, which tool), so a UI can show "refund(order_id=…"
  before the call is complete; the call itself runs (or is refused) only
  after the whole answer arrived;
- ``Lagged``: the consumer fell behind and deltas were dropped (how many, how
  many characters, which calls).

**Overflow policy.** The consumer reads from a buffer the run writes to
without ever waiting. Journal events are never dropped. Deltas waiting to be
read are capped at ``max_deltas``: past the cap a new delta is dropped and
counted in a ``Lagged`` marker placed where it would have been, so the
consumer knows what it missed and that the call's ``model.response`` holds
the whole text. A slow consumer therefore never slows the run; memory is
bounded by the cap for deltas and by the run itself for events.

**How a stream ends.** After the run's last event (``run.finished``,
``run.failed``, ``run.suspended``) the iteration ends: normally when the run
finished (``await stream`` or ``stream.result()`` gives the ``RunResult``),
by raising the typed error ``arun`` would raise when it failed (a
``RunError``, ``RunWaiting`` for a run that waits on an approval).

**A consumer that leaves early** (``break``, an exception, dropping the
stream) never stops the run: it runs to completion as a task of the event
loop, and its journal is complete. Leaving an ``async with tm.stream(...)``
block after a ``break`` waits for the run to end (and raises its error, if
it failed); ``stream.cancel()`` cancels a run on purpose.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from ..journal.events import Event
from ..journal.writer import EventSink
from ..models.streaming import DeltaListener, delta_listener, set_listener
from .run import RunResult, arun

if TYPE_CHECKING:
    from ..step import Step

__all__ = [
    "DEFAULT_MAX_DELTAS",
    "Lagged",
    "RunEvent",
    "RunStream",
    "StreamEvent",
    "StreamSink",
    "TokenDelta",
    "ToolCallDelta",
    "stream",
]

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)

DEFAULT_MAX_DELTAS = 1024
"""Deltas a stream holds for a consumer that has not read them yet."""


class StreamEvent:
    """What a stream yields: a ``RunEvent``, a ``TokenDelta``, a ``ToolCallDelta``
    or a ``Lagged`` marker.

    ``kind`` says which (``"event"``, ``"delta"``, ``"lagged"``).
    """

    __slots__ = ()
    kind: ClassVar[str]


@dataclass(frozen=True, slots=True)
class RunEvent(StreamEvent):
    """One event of the run, as the journal records it."""

    kind: ClassVar[str] = "event"
    event: Event

    @property
    def type(self) -> str:
        return self.event.type

    @property
    def path(self) -> str:
        return self.event.path

    @property
    def seq(self) -> int:
        return self.event.seq

    @property
    def key(self) -> str | None:
        return self.event.key

    @property
    def payload(self) -> dict[str, Any]:
        """The payload; fields recorded as JSON text (a ``response``) stay text."""
        return self.event.payload

    @property
    def ts(self) -> str:
        return self.event.ts

    @property
    def agent(self) -> dict[str, str] | None:
        return self.event.agent


@dataclass(frozen=True, slots=True)
class TokenDelta(StreamEvent):
    """A piece of a model's text while its call runs.

    ``key`` is the call's effect key (a retry has its own, ``...#0.2``);
    ``index`` counts the call's deltas from 0, so a gap shows what was dropped.
    """

    kind: ClassVar[str] = "delta"
    path: str
    key: str
    model: str
    text: str
    index: int


@dataclass(frozen=True, slots=True)
class ToolCallDelta(StreamEvent):
    """A piece of a tool call's JSON arguments while the model writes them.

    ``call`` numbers the tool calls of one answer from 0 and ``tool`` names
    the tool; joined in order, a call's ``arguments`` are the JSON the
    tool is called with (after the answer is complete, and only if it is
    allowed: a delta is what the model wrote, not what ran). ``index``
    counts with the call's ``TokenDelta``s.
    """

    kind: ClassVar[str] = "tool_delta"
    path: str
    key: str
    model: str
    tool: str
    call: int
    arguments: str
    index: int

    @property
    def text(self) -> str:
        """The piece, as a ``TokenDelta`` has it (what a lag counts)."""
        return self.arguments


@dataclass(frozen=True, slots=True)
class Lagged(StreamEvent):
    """The consumer fell behind: ``dropped`` deltas (``chars`` characters) were not kept.

    ``keys`` names the model calls they belonged to; each call's complete
    text is in its ``model.response`` event, which is never dropped.
    """

    kind: ClassVar[str] = "lagged"
    dropped: int
    chars: int
    keys: tuple[str, ...]


# -- deltas: from the model call to every sink that listens ------------------------


class _CallListener:
    """The delta listener of one model call: stamps each piece and hands it to the sinks."""

    __slots__ = ("count", "key", "model", "outer", "path", "run_id", "sinks")

    def __init__(self, event: Event, sink: StreamSink, outer: DeltaListener | None) -> None:
        self.run_id = event.run_id
        self.path = event.path
        self.key = event.key or ""
        model = event.payload.get("model")
        self.model = model if isinstance(model, str) else ""
        self.sinks = [sink]
        self.outer = outer
        self.count = 0

    def __call__(self, text: str) -> None:
        self._deliver(TokenDelta(self.path, self.key, self.model, text, self.count))
        if self.outer is not None:
            self.outer(text)

    def tool_delta(self, call: int, tool: str, arguments: str) -> None:
        self._deliver(
            ToolCallDelta(self.path, self.key, self.model, tool, call, arguments, self.count)
        )
        take = getattr(self.outer, "tool_delta", None)
        if take is not None:
            take(call, tool, arguments)

    def _deliver(self, delta: TokenDelta | ToolCallDelta) -> None:
        self.count += 1
        for sink in self.sinks:
            try:
                sink.accept_delta(delta)
            except Exception:  # a sink's failure never reaches the model call
                continue


class StreamSink:
    """An event sink that also hears the token deltas of the run's model calls.

    Pass one in ``subscribers=`` of ``tm.run``/``tm.arun``: ``on_event``
    receives every event, ``on_delta`` every ``TokenDelta`` and ``ToolCallDelta``, both called in
    the run itself (they must be quick and must not block; ``tm.stream``
    buffers for you). When a model call starts, the sink makes itself the
    call's delta listener, which is what makes a provider stream.
    """

    wants_bytes = False  # events need no serializing for this sink's sake

    def __init__(
        self,
        on_event: Callable[[RunEvent], None] | None = None,
        on_delta: Callable[[TokenDelta | ToolCallDelta], None] | None = None,
    ) -> None:
        self._on_event = on_event
        self._on_delta = on_delta

    def listening(self) -> bool:
        """Whether deltas are wanted now (a detached consumer wants none)."""
        return self._on_delta is not None

    def accept(self, event: Event, blobs: Mapping[str, bytes]) -> None:
        kind = event.type
        if kind == "model.request" and event.key is not None:
            if self.listening():
                self._listen(event)
        elif kind in ("model.response", "model.error", "model.waiting"):
            current = delta_listener()
            if isinstance(current, _CallListener) and current.key == event.key:
                set_listener(current.outer)  # the call is over: nobody listens to it now
        self.on_event(RunEvent(event))

    def _listen(self, event: Event) -> None:
        # Emitted in the task that is about to make the call: the listener set
        # here is that call's, and parallel branches (their own tasks) have theirs.
        current = delta_listener()
        if (
            isinstance(current, _CallListener)
            and current.key == event.key
            and current.run_id == event.run_id
        ):
            if self not in current.sinks:
                current.sinks.append(self)  # another sink of this run listens already
            return
        set_listener(_CallListener(event, self, current))

    def on_event(self, event: RunEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)

    def accept_delta(self, delta: TokenDelta | ToolCallDelta) -> None:
        if self._on_delta is not None:
            self._on_delta(delta)


# -- the bounded buffer between the run and its consumer ---------------------------


class _Gap:
    """A ``Lagged`` marker being counted while it waits in the buffer."""

    __slots__ = ("chars", "dropped", "keys")

    def __init__(self) -> None:
        self.dropped = 0
        self.chars = 0
        self.keys: dict[str, None] = {}

    def freeze(self) -> Lagged:
        return Lagged(self.dropped, self.chars, tuple(self.keys))


class _Buffer:
    """Written by the run (never waits), read by the consumer (waits when empty)."""

    __slots__ = (
        "__weakref__",
        "_loop",
        "_thread",
        "_waiter",
        "dropped",
        "items",
        "max_deltas",
        "pending_deltas",
    )

    def __init__(self, max_deltas: int) -> None:
        self.items: deque[StreamEvent | _Gap] = deque()
        self.max_deltas = max_deltas
        self.pending_deltas = 0
        self.dropped = 0
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.get_ident()

    def push_event(self, event: RunEvent) -> None:
        self.items.append(event)
        self.wake()

    def push_delta(self, delta: TokenDelta | ToolCallDelta) -> None:
        items = self.items
        if self.pending_deltas < self.max_deltas:
            self.pending_deltas += 1
            items.append(delta)
        else:  # full: drop it, and say so where it would have been
            gap = items[-1] if items and isinstance(items[-1], _Gap) else None
            if gap is None:
                gap = _Gap()
                items.append(gap)
            gap.dropped += 1
            gap.chars += len(delta.text)
            gap.keys[delta.key] = None
            self.dropped += 1
        self.wake()

    def pop(self) -> StreamEvent:
        item = self.items.popleft()
        if isinstance(item, _Gap):
            return item.freeze()
        if isinstance(item, TokenDelta | ToolCallDelta):
            self.pending_deltas -= 1
        return item

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if threading.get_ident() == self._thread:
            waiter.set_result(None)
        elif self._loop is not None:  # an event made off the loop's thread
            self._loop.call_soon_threadsafe(_resolve, waiter)

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop, self._thread = loop, threading.get_ident()
        waiter = self._waiter = loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _BufferSink(StreamSink):
    """The stream's sink: it holds its buffer weakly, so a consumer that drops the
    stream stops the buffering, not the run."""

    def __init__(self, buffer: _Buffer) -> None:
        super().__init__()
        self._buffer = weakref.ref(buffer)

    def listening(self) -> bool:
        buffer = self._buffer()
        return buffer is not None and buffer.max_deltas > 0

    def on_event(self, event: RunEvent) -> None:
        buffer = self._buffer()
        if buffer is not None:
            buffer.push_event(event)

    def accept_delta(self, delta: TokenDelta | ToolCallDelta) -> None:
        buffer = self._buffer()
        if buffer is not None:
            buffer.push_delta(delta)


# -- the stream --------------------------------------------------------------------

_RUNNING: set[asyncio.Task[Any]] = set()
"""Runs whose consumer may have left: held here so the loop keeps them to the end."""


def _retrieve(task: asyncio.Task[Any]) -> None:
    _RUNNING.discard(task)
    if not task.cancelled():
        task.exception()  # the error is the consumer's to see, or the journal's


Starter = Callable[[Sequence[EventSink]], Coroutine[Any, Any, RunResult[Out]]]


class RunStream(Generic[Out]):
    """A run and the live view of it; see the module docstring.

    Iterate it (``async for item in stream``) for ``StreamEvent``s; await it
    (``await stream`` or ``await stream.result()``) for the ``RunResult``.
    The run starts on the first of these (or on entering ``async with``).
    """

    def __init__(self, start: Starter[Out], run_id: str, max_deltas: int) -> None:
        if max_deltas < 0:
            from ..errors import ConfigurationError

            raise ConfigurationError(f"max_deltas must be >= 0, got {max_deltas}")
        self.run_id = run_id
        """The run's id (its journal key), known before it starts."""
        self._start = start
        self._buffer: _Buffer | None = _Buffer(max_deltas)
        self._task: asyncio.Task[RunResult[Out]] | None = None
        self._delivered = False  # the run's error (or end) reached the consumer
        self._dropped = 0

    # -- state -------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Whether the run has ended (finished, failed, waiting or cancelled)."""
        return self._task is not None and self._task.done()

    @property
    def dropped(self) -> int:
        """Deltas dropped so far because the consumer fell behind."""
        return self._buffer.dropped if self._buffer is not None else self._dropped

    def started(self) -> asyncio.Task[RunResult[Out]]:
        """Start the run (once) and return its task."""
        if self._task is None:
            buffer = self._buffer
            assert buffer is not None, "a detached stream was never started"
            task = asyncio.get_running_loop().create_task(self._start([_BufferSink(buffer)]))
            _RUNNING.add(task)
            task.add_done_callback(_retrieve)
            ref = weakref.ref(buffer)
            task.add_done_callback(lambda _: _wake(ref))
            self._task = task
        return self._task

    def detach(self) -> None:
        """Stop receiving: nothing more is buffered; the run goes on."""
        buffer, self._buffer = self._buffer, None
        if buffer is not None:
            self._dropped = buffer.dropped
            buffer.items.clear()
            buffer.max_deltas = 0  # later model calls of this run need not stream

    def cancel(self) -> None:
        """Cancel the run (its journal records ``run.failed``, ``CancelledError``)."""
        if self._task is not None:
            self._task.cancel()

    # -- iteration -----------------------------------------------------------------

    def __aiter__(self) -> RunStream[Out]:
        self.started()
        return self

    async def __anext__(self) -> StreamEvent:
        task = self.started()
        while True:
            buffer = self._buffer
            if buffer is None:
                raise StopAsyncIteration
            if buffer.items:
                return buffer.pop()
            if task.done():
                if not self._delivered:
                    self._delivered = True
                    error = None if task.cancelled() else task.exception()
                    if error is not None:
                        raise error
                raise StopAsyncIteration
            await buffer.wait()

    # -- awaiting ------------------------------------------------------------------

    async def result(self) -> RunResult[Out]:
        """Wait for the run to end; its ``RunResult``, or the error it ended with.

        Cancelling the waiter does not cancel the run (``cancel()`` does).
        """
        task = self.started()
        try:
            return await asyncio.shield(task)
        except BaseException:
            if task.done():
                self._delivered = True
            raise

    def __await__(self) -> Generator[Any, None, RunResult[Out]]:
        return self.result().__await__()

    async def __aenter__(self) -> RunStream[Out]:
        self.started()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.detach()
        if exc_type is not None:
            return  # the block's own error (or the run's, already raised): the run goes on
        if not self._delivered:
            await self.result()  # left early: the run ends first; its error is raised


def _wake(ref: weakref.ref[_Buffer]) -> None:
    buffer = ref()
    if buffer is not None:
        buffer.wake()


def stream(
    flow: Step[In, Out],
    input: In | dict[str, Any] | str,
    *,
    max_deltas: int = DEFAULT_MAX_DELTAS,
    **options: Any,
) -> RunStream[Out]:
    """Run ``flow`` on ``input`` and watch it live: ``async for item in tm.stream(...)``.

    ``options`` are ``arun``'s (``journal=``, ``budget=``, ``intent=``,
    ``run_id=``, ``subscribers=``, ...). ``max_deltas`` caps the deltas held
    for a consumer that has not read them (0: no deltas, providers do not
    stream). Yields ``RunEvent``, ``TokenDelta``, ``ToolCallDelta`` and ``Lagged`` items; ends
    after the run's last event, raising the run's typed error if it failed.
    """
    extra: Sequence[EventSink] = tuple(options.pop("subscribers", ()) or ())
    run_id: str = options.pop("run_id", None) or os.urandom(16).hex()

    def start(sinks: Sequence[EventSink]) -> Coroutine[Any, Any, RunResult[Out]]:
        return arun(flow, input, run_id=run_id, subscribers=[*extra, *sinks], **options)

    return RunStream(start, run_id, max_deltas)
