"""What the SDK-backed providers share: settings, client lifetime and error mapping.

**One client per event loop.** An SDK's async client pools keep-alive
connections, and a pooled connection belongs to the event loop that opened
it. ``tm.run`` makes a new loop for each call, so a client kept across loops
would send the next request on a dead loop's connection and fail with
``Event loop is closed`` after the request went out (and was billed). An
``SDKModel`` therefore holds only its settings and builds a client lazily for
each running loop, reused by every call in that loop (one connection pool per
run). The client is closed when its loop shuts down: ``asyncio.run`` and
``asyncio.Runner`` finalise async generators before closing the loop, and each
client is tied to one that closes it. ``aclose()`` closes the current loop's
client at once.

**Picklable.** A model carries no client, lock or SDK module across
``pickle``: a flow can be shipped to another worker, which builds its own
clients. Settings given explicitly (``base_url=``, ``api_key=``,
``timeout=``) travel with it; settings read from the environment are read
again in each process. A model built around an injected ``client=`` cannot
be pickled (the client is the caller's).

**Errors carry fields.** ``map_sdk_error`` turns an SDK exception into a
``ModelError`` with the HTTP status, the provider's error type and the
provider name; the ones worth retrying (timeouts, connection failures, 408,
409, 429, 5xx including 529 overloaded, or whatever ``x-should-retry`` says)
become ``TransientModelError`` with the ``Retry-After`` wait the provider asked
for. The SDKs' own retries are off (``max_retries=0``), so every attempt goes
through typedmesh's RetryPolicy and the run context, which journals and counts
each one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import math
import os
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from ..errors import ConfigurationError, ModelError, TransientModelError

__all__ = [
    "DEFAULT_TIMEOUT",
    "LOOPBACK_KEY",
    "TIMEOUT_ENV",
    "SDKModel",
    "default_timeout",
    "is_loopback",
    "map_sdk_error",
    "parse_retry_after",
    "set_default_timeout",
    "shared_ssl_context",
]

LOOPBACK_KEY = "not-needed"
"""A stand-in API key for local servers, which ignore it though the SDKs insist on one."""

_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}

DEFAULT_TIMEOUT = 60.0
"""Seconds a provider request may take when neither the model nor the process sets one."""

TIMEOUT_ENV = "TYPEDMESH_MODEL_TIMEOUT"
"""Environment variable with the default provider timeout in seconds."""

_default_timeout: float | None = None


def is_loopback(url: str | None) -> bool:
    """Whether ``url`` points at this machine."""
    return bool(url) and urlparse(url).hostname in _LOOPBACK_HOSTS


def _check_timeout(seconds: float, origin: str) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ConfigurationError(f"{origin} must be a number of seconds, got {seconds!r}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigurationError(f"{origin} must be a positive number of seconds, got {seconds!r}")
    return float(seconds)


def set_default_timeout(seconds: float | None) -> None:
    """Set the timeout of every provider model that was not given ``timeout=``.

    ``None`` goes back to ``TYPEDMESH_MODEL_TIMEOUT`` or ``DEFAULT_TIMEOUT``.
    It applies to the next request of models already built too. It is this
    process's setting: for worker processes set ``TYPEDMESH_MODEL_TIMEOUT``.
    """
    global _default_timeout
    _default_timeout = None if seconds is None else _check_timeout(seconds, "the model timeout")


def default_timeout() -> float:
    """The timeout of a model built without ``timeout=``, in seconds.

    ``set_default_timeout(...)`` if called, else ``TYPEDMESH_MODEL_TIMEOUT``,
    else ``DEFAULT_TIMEOUT`` (60 s).
    """
    if _default_timeout is not None:
        return _default_timeout
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    return _check_timeout(value, TIMEOUT_ENV)


# -- clients, one per event loop --------------------------------------------------


@functools.cache
def shared_ssl_context() -> Any:
    """The TLS context every client of this process shares.

    Building one loads the CA bundle (tens of milliseconds), and a client per
    event loop would pay that on every ``tm.run``. It is the context the SDKs'
    HTTP library builds by default, made once.
    """
    for name in ("httpx2", "httpx"):  # whichever HTTP library the SDKs run on
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return module.create_ssl_context()
    return True  # let the SDK build its own


class _Closer:
    """Closes one loop's client when that loop finalises its async generators."""

    __slots__ = ("abandoned", "finished")

    def __init__(self) -> None:
        self.abandoned = False  # its loop is gone: nothing can be awaited any more
        self.finished = False


async def _close_with_loop(client: Any, closer: _Closer) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        closer.finished = True
        if not closer.abandoned:
            with contextlib.suppress(Exception):  # a failed close leaves nothing to act on
                await client.close()


@dataclass(eq=False)
class _Binding:
    """The client of one event loop, and the async generator that closes it."""

    loop: weakref.ref[asyncio.AbstractEventLoop]
    client: Any
    closer: _Closer = field(default_factory=_Closer)
    generator: AsyncGenerator[None, None] | None = None

    def usable_in(self, loop: asyncio.AbstractEventLoop) -> bool:
        return self.loop() is loop and not self.closer.finished

    def dead(self) -> bool:
        loop = self.loop()
        return loop is None or loop.is_closed() or self.closer.finished

    def abandon(self) -> None:
        """Forget a client whose loop closed without finalising it (no ``shutdown_asyncgens``).

        Nothing can be awaited on a closed loop: the generator is ended and the
        client marked closed here, synchronously, so no finaliser later touches
        the dead loop. Its sockets are reclaimed by the garbage collector (with
        asyncio's ResourceWarning for a loop closed with open transports).
        """
        if self.closer.finished:
            return
        self.closer.abandoned = True
        generator, self.generator = self.generator, None
        if generator is not None:
            _drive(generator.aclose())  # runs the finally, which awaits nothing now
        _drive(self.client.close())


def _drive(coroutine: Any) -> None:
    """Run a coroutine that needs no event loop to its end, here; give up at its first wait."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    except Exception:  # e.g. "Event loop is closed" from a dead loop's transport
        return
    finally:
        coroutine.close()


def _abandon_dead(bindings: dict[int, _Binding]) -> None:
    """When a model goes: abandon the clients of loops already closed (live loops close theirs)."""
    for binding in list(bindings.values()):
        if binding.dead():
            binding.abandon()
    bindings.clear()


class SDKModel:
    """Base of models served through an official SDK client.

    Subclasses implement ``_build_client()`` (a new client from the settings,
    with ``max_retries=0``) and call ``await self._client()`` in ``generate``.
    """

    provider: str
    name: str
    _injected: Any  # a client the caller passed in: used as is, never closed here
    _spare: Any  # a client built but not yet used by any loop
    _bindings: dict[int, _Binding]  # id(loop) -> that loop's client
    _lock: threading.Lock

    def __init__(
        self,
        name: str,
        *,
        base_url: str | None,
        api_key: str | None,
        client: Any,
        timeout: float | None,
    ) -> None:
        self.name = name
        self._base_url_arg = base_url
        self._api_key_arg = api_key
        self._timeout_arg = None if timeout is None else _check_timeout(timeout, "timeout")
        self._injected = client
        self._setup()
        if client is None:
            self._spare = self._build_client()  # checks the settings (credentials) now

    def _setup(self) -> None:
        self._lock = threading.Lock()
        self._bindings = {}
        self._spare = None
        weakref.finalize(self, _abandon_dead, self._bindings)

    def _build_client(self) -> Any:
        raise NotImplementedError

    # -- settings ------------------------------------------------------------------

    @property
    def timeout(self) -> float:
        """Seconds one request may take: ``timeout=`` if given, else ``default_timeout()``."""
        return self._timeout_arg if self._timeout_arg is not None else default_timeout()

    @property
    def base_url(self) -> str:
        """Where requests go, as the SDK resolved it (what the kill switch checks)."""
        if self._injected is not None:
            return str(self._injected.base_url)
        with self._lock:
            if self._spare is None:
                self._spare = self._build_client()
            return str(self._spare.base_url)

    def _request_options(self) -> dict[str, Any]:
        """Per-request SDK options: the timeout, read at each call so a new default applies."""
        if self._injected is not None and self._timeout_arg is None:
            return {}  # an injected client keeps its own timeout
        return {"timeout": self.timeout}

    # -- client lifetime -----------------------------------------------------------

    async def _client(self) -> Any:
        """The SDK client of the running event loop, built on its first use there."""
        if self._injected is not None:
            return self._injected
        loop = asyncio.get_running_loop()
        with self._lock:
            binding = self._bindings.get(id(loop))
            if binding is not None and binding.usable_in(loop):
                return binding.client
            stale = [k for k, b in self._bindings.items() if b is binding or b.dead()]
            dropped = [self._bindings.pop(k) for k in stale]
            client, self._spare = self._spare, None
            if client is None:
                client = self._build_client()
            binding = _Binding(weakref.ref(loop), client)
            binding.generator = _close_with_loop(client, binding.closer)
            self._bindings[id(loop)] = binding
        for old in dropped:
            old.abandon()
        # started here, the generator is this loop's to finalise when it shuts down
        await anext(binding.generator)
        return client

    async def aclose(self) -> None:
        """Close the running loop's client (an injected client is the caller's to close)."""
        if self._injected is not None:
            return
        loop = asyncio.get_running_loop()
        with self._lock:
            binding = self._bindings.get(id(loop))
            if binding is not None and binding.loop() is loop:
                del self._bindings[id(loop)]
            else:
                binding = None
            spare, self._spare = self._spare, None
        if binding is not None and binding.generator is not None:
            await binding.generator.aclose()  # closes the client
        if spare is not None:
            await spare.close()

    # -- pickling: settings only ---------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        if self._injected is not None:
            raise TypeError(
                f"{type(self).__name__}({self.name!r}) was given a ready SDK client "
                "(client=), which cannot be pickled: pass base_url=/api_key= instead so "
                "each process builds its own"
            )
        state = dict(self.__dict__)
        for runtime in ("_lock", "_bindings", "_spare", "_injected"):
            state.pop(runtime, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._injected = None
        self._setup()


# -- errors ----------------------------------------------------------------------


def parse_retry_after(
    headers: Mapping[str, str] | None, *, now: float | None = None
) -> float | None:
    """Seconds to wait that a response asked for, or None.

    ``retry-after-ms`` (milliseconds, sent by OpenAI and Anthropic) wins over
    ``Retry-After`` (seconds, or an HTTP date). Negative waits count as 0;
    unreadable values as absent.
    """
    if not headers:
        return None
    milliseconds = _number(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return max(0.0, milliseconds / 1000)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    seconds = _number(raw)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        from email.utils import parsedate_to_datetime  # rare: only for an HTTP date

        when = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _error_type(exc: Exception) -> str | None:
    """The provider's error type: ``error.type`` in the body (OpenAI, Anthropic)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error")
        kind = inner.get("type") if isinstance(inner, dict) else None
        if isinstance(kind, str):
            return kind
        kind = body.get("type")  # the OpenAI SDK keeps only the inner ``error`` object
        if isinstance(kind, str) and kind != "error":
            return kind
    kind = getattr(exc, "type", None)
    return kind if isinstance(kind, str) else None


def _transient_status(status: int, headers: Mapping[str, str]) -> bool:
    """Worth retrying, as the SDKs' own retry rules would judge it."""
    override = (headers.get("x-should-retry") or "").strip().lower()
    if override in ("true", "false"):
        return override == "true"
    return status in (408, 409, 429) or status >= 500


def map_sdk_error(
    sdk: Any,
    exc: Exception,
    *,
    provider: str,
    model: str,
    usage_of: Callable[[object], Any] | None = None,
) -> ModelError:
    """Sort an SDK exception into ``TransientModelError`` (retry) or ``ModelError`` (don't).

    ``sdk`` is the SDK module (its exception classes); ``usage_of`` reads the
    usage out of a response body the SDK could not use, so it is not lost.
    """
    if isinstance(exc, sdk.APITimeoutError):
        return TransientModelError(
            f"{model}: request timed out", error_type="timeout", provider=provider
        )
    if isinstance(exc, sdk.APIConnectionError):
        return TransientModelError(
            f"{model}: {exc}", error_type="connection_error", provider=provider
        )
    status = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    headers: Mapping[str, str] = getattr(response, "headers", None) or {}
    error_type = _error_type(exc)
    if isinstance(exc, sdk.APIResponseValidationError):  # an answer arrived (and was billed)
        usage = usage_of(getattr(exc, "body", None)) if usage_of is not None else None
        return ModelError(
            f"{model}: unreadable response: {exc}",
            status=status,
            error_type=error_type or "invalid_response",
            provider=provider,
            usage=usage,
        )
    if isinstance(status, int) and _transient_status(status, headers):
        return TransientModelError(
            f"{model}: {exc}",
            status=status,
            error_type=error_type,
            provider=provider,
            retry_after=parse_retry_after(headers),
        )
    return ModelError(
        f"{model}: {exc}",
        status=status if isinstance(status, int) else None,
        error_type=error_type,
        provider=provider,
    )
