"""A loopback HTTP server that speaks the OpenAI and Anthropic wire formats.

Provider tests drive the real SDKs over real HTTP against it, so a request
the SDK would reject, or a response it would misparse, fails here and not in
production. The server records every request body and answers from a queue of
canned responses (including error statuses) that the test sets.

Like the real APIs it speaks HTTP/1.1 and keeps connections alive (every
response has a Content-Length; a connection serves requests until the client
closes it). A server that closed each connection would hide every bug of a
client reused across event loops, which only shows on a pooled connection.
It counts connections and which connection served each request, so tests can
assert reuse within a run and recovery across runs.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"


@dataclass
class Recorded:
    """One request as the server saw it; ``connection`` numbers its TCP connection (from 1)."""

    path: str
    headers: dict[str, str]
    body: Any
    connection: int = 0


@dataclass
class Canned:
    """One scripted answer; ``delay`` seconds pass before it is sent (to provoke timeouts)."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class FakeProviderServer:
    """Serve ``POST /v1/chat/completions`` and ``POST /v1/messages`` on 127.0.0.1."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.connections = 0
        """TCP connections accepted so far."""
        self._open: dict[int, socket.socket] = {}
        self._queue: deque[Canned] = deque()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )  # a short poll keeps shutdown() (and so each test's teardown) fast

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"  # the OpenAI SDK appends /chat/completions

    @property
    def anthropic_base_url(self) -> str:
        return self.url  # the Anthropic SDK appends /v1/messages

    @property
    def bodies(self) -> list[Any]:
        return [r.body for r in self.requests]

    @property
    def open_connections(self) -> int:
        """Connections the client has not closed yet."""
        with self._lock:
            return len(self._open)

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """Wait until the client closed every connection; whether it did in time."""
        deadline = time.monotonic() + timeout
        while self.open_connections:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def queue(
        self,
        body: Any,
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer the next request with ``body`` (JSON) and ``status``, after ``delay`` s."""
        with self._lock:
            self._queue.append(Canned(status, body, dict(headers or {}), delay))

    def queue_error(
        self,
        status: int,
        error_type: str,
        *,
        provider: str,
        message: str = "scripted failure",
        retry_after: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next request with an error in ``provider``'s wire format.

        ``retry_after`` becomes a ``Retry-After`` header (seconds or an HTTP date).
        """
        body = (
            openai_error(message, type=error_type)
            if provider == "openai"
            else anthropic_error(message, type=error_type)
        )
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = retry_after
        self.queue(body, status=status, headers=extra)

    def _next(self, recorded: Recorded) -> Canned:
        with self._lock:
            self.requests.append(recorded)
            if recorded.path not in (OPENAI_PATH, ANTHROPIC_PATH):
                return Canned(404, {"error": {"message": f"no route {recorded.path}"}})
            if not self._queue:
                return Canned(501, {"error": {"message": "fake server: nothing queued"}})
            return self._queue.popleft()

    def _opened(self, sock: socket.socket) -> int:
        with self._lock:
            self.connections += 1
            self._open[self.connections] = sock
            return self.connections

    def _closed(self, number: int) -> None:
        with self._lock:
            self._open.pop(number, None)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real APIs
            timeout = 30  # an idle connection ends eventually even if nobody closes it
            number = 0

            def setup(self) -> None:
                super().setup()
                self.number = server._opened(self.connection)

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    server._closed(self.number)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                headers = {k.lower(): v for k, v in self.headers.items()}
                canned = server._next(Recorded(self.path, headers, body, self.number))
                if canned.delay:
                    time.sleep(canned.delay)
                payload = json.dumps(canned.body).encode()
                try:
                    self.send_response(canned.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in canned.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (a timeout) and closed the connection
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        return Handler

    def start(self) -> FakeProviderServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        with self._lock:  # end kept-alive connections: their threads block reading
            still_open = list(self._open.values())
        for sock in still_open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeProviderServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- canned bodies in each provider's wire format ----------------------------


def openai_completion(
    content: str | None = None,
    *,
    tool_calls: list[tuple[str, str, str]] | None = None,
    model: str = "gpt-4o-mini-2024-07-18",
    prompt_tokens: int = 11,
    completion_tokens: int = 7,
) -> dict[str, Any]:
    """A chat.completion; ``tool_calls`` are ``(id, name, arguments-as-sent)``."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
            for i, n, a in tool_calls
        ]
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if tool_calls else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def openai_error(message: str, *, type: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": None, "code": None}}


def anthropic_message(
    text: str | None = None,
    *,
    tool_uses: list[tuple[str, str, Any]] | None = None,
    model: str = "claude-haiku-4-5-20251001",
    input_tokens: int = 13,
    output_tokens: int = 5,
    stop_reason: str | None = None,
) -> dict[str, Any]:
    """A Messages API message; ``tool_uses`` are ``(id, name, input)``."""
    content: list[dict[str, Any]] = []
    if text is not None:
        content.append({"type": "text", "text": text})
    for i, n, inp in tool_uses or []:
        content.append({"type": "tool_use", "id": i, "name": n, "input": inp})
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason or ("tool_use" if tool_uses else "end_turn"),
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def anthropic_error(message: str, *, type: str = "invalid_request_error") -> dict[str, Any]:
    return {"type": "error", "error": {"type": type, "message": message}}


# -- never leave the machine ---------------------------------------------------

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def forbid_non_loopback(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make name resolution of any non-loopback host fail; return the hosts tried.

    Every outgoing connection of the SDKs resolves its host first, so this is a
    backstop: a broken kill switch shows up as a recorded host, never as traffic.
    """
    attempts: list[str] = []
    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in LOOPBACK_HOSTS:
            attempts.append(name)
            raise socket.gaierror(f"tests may not resolve {name!r}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    return attempts
