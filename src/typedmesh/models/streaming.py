"""Token deltas: how a model's text reaches whoever listens while it is written.

The ``Model`` protocol stays ``generate(request) -> ModelResponse``: a model
that can stream asks ``wants_deltas()`` and, when someone listens, streams
from its provider, hands each piece of text to ``emit_delta(text)`` as it
arrives, and still returns the complete response at the end. That response,
not the deltas, is what the runtime journals, validates and replays, so a
streamed call and a plain one leave the same journal.

Who listens is held in a context variable the runtime sets for the duration
of one model call (``typedmesh.runtime.stream``): concurrent calls in
parallel branches each see their own listener, and a call made where nobody
listens is an ordinary non-streamed request. A listener must not raise and
must not block; ``emit_delta`` drops anything a broken listener raises, so
a consumer can never break the call it is watching.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from ..errors import ModelError, TransientModelError

__all__ = [
    "DeltaListener",
    "broken_stream",
    "delta_listener",
    "emit_delta",
    "emit_tool_delta",
    "listening",
    "safe_listener",
    "wants_deltas",
]

DeltaListener = Callable[[str], None]
"""Receives one piece of a model's text, in order, while the call runs."""

_LISTENER: ContextVar[DeltaListener | None] = ContextVar("typedmesh_deltas", default=None)


def delta_listener() -> DeltaListener | None:
    """The listener of the current model call, or None when nobody listens."""
    return _LISTENER.get()


def wants_deltas() -> bool:
    """Whether the current call has a listener: stream from the provider if you can."""
    return _LISTENER.get() is not None


def emit_delta(text: str) -> None:
    """Hand one piece of text to the current listener (nothing when nobody listens)."""
    listener = _LISTENER.get()
    if listener is None or not text:
        return
    try:
        listener(text)
    except Exception:  # a listener's failure is its own: the call goes on
        return


def emit_tool_delta(call: int, name: str, arguments: str) -> None:
    """Hand a piece of a tool call's JSON arguments (call ``call`` of the answer,
    tool ``name`` once known) to the current listener, if it takes them (a
    listener with a ``tool_delta(call, name, arguments)`` method)."""
    listener = _LISTENER.get()
    take = getattr(listener, "tool_delta", None)
    if take is None or not arguments:
        return
    try:
        take(call, name, arguments)
    except Exception:  # a listener's failure is its own: the call goes on
        return


def set_listener(listener: DeltaListener | None) -> None:
    """Make ``listener`` the current context's listener (the runtime's hook)."""
    _LISTENER.set(listener)


@contextmanager
def listening(listener: DeltaListener | None) -> Iterator[None]:
    """Within the block, deltas of model calls made here go to ``listener``."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


def safe_listener(listener: DeltaListener) -> DeltaListener:
    """``listener``, made unable to break the call it listens to."""
    if listener is emit_delta:
        return listener

    def guarded(text: str) -> None:
        if not text:
            return
        try:
            listener(text)
        except Exception:  # the listener's problem, not the call's
            return

    return guarded


def broken_stream(exc: BaseException, *, provider: str, model: str) -> ModelError | None:
    """A stream the network broke mid-way, as a retryable error (None: not that).

    An SDK reads a stream lazily, so a connection that drops or stalls after
    the answer began surfaces as the HTTP library's own exception, not the
    SDK's. Retrying asks again from the start: nothing of a broken answer is
    kept, so the journal only ever holds complete responses.
    """
    kind = type(exc)
    if not (isinstance(exc, OSError) or kind.__module__.split(".")[0] in _TRANSPORTS):
        return None
    timeout = "Timeout" in kind.__name__ or isinstance(exc, TimeoutError)
    return TransientModelError(
        f"{model}: the stream broke: {kind.__name__}: {exc}",
        error_type="timeout" if timeout else "connection_error",
        provider=provider,
    )


_TRANSPORTS = {"httpx", "httpx2", "httpcore", "httpcore2", "h11", "anyio"}
