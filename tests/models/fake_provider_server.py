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
from collections.abc import Callable
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


@dataclass
class StreamCanned(Canned):
    """A canned 200 answer and how to stream it (see ``FakeProviderServer.queue_stream``)."""

    piece: int = 4
    gap: float = 0.0
    hold: threading.Event | None = None
    hold_after: int = 1
    cut_after: int | None = None


class FakeProviderServer:
    """Serve ``POST /v1/chat/completions`` and ``POST /v1/messages`` on 127.0.0.1."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.connections = 0
        """TCP connections accepted so far."""
        self._open: dict[int, socket.socket] = {}
        self._queue: deque[Canned] = deque()
        self._lock = threading.Lock()
        self.batches = FakeBatches(self)
        """The fake batch endpoints (OpenAI files + batches, Anthropic message batches)."""
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

    def queue_stream(
        self,
        body: Any,
        *,
        piece: int = 4,
        gap: float = 0.0,
        hold: threading.Event | None = None,
        hold_after: int = 1,
        cut_after: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next request with ``body`` (a completion or message), streamed.

        A request with ``stream: true`` gets ``body`` as server-sent events: its
        text and tool arguments in pieces of ``piece`` characters, ``gap``
        seconds apart. ``hold`` pauses the stream after ``hold_after`` deltas
        until the test sets it; ``cut_after`` drops the connection after that
        many deltas. (Any canned 200 answer is streamed to a streaming request;
        this only sets how.)
        """
        canned = StreamCanned(
            200, body, dict(headers or {}), 0.0, piece, gap, hold, hold_after, cut_after
        )
        with self._lock:
            self._queue.append(canned)

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

            def _reply(self, status: int, payload: bytes, content_type: str) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    self.close_connection = True

            def _batch_route(self, method: str, raw: bytes) -> bool:
                headers = {k.lower(): v for k, v in self.headers.items()}
                answer = server.batches.route(method, self.path, headers, raw)
                if answer is None:
                    return False
                self._reply(*answer)
                return True

            def do_GET(self) -> None:
                if not self._batch_route("GET", b""):
                    self._reply(404, b'{"error": {"message": "no route"}}', "application/json")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self._batch_route("POST", raw):
                    return
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                headers = {k.lower(): v for k, v in self.headers.items()}
                canned = server._next(Recorded(self.path, headers, body, self.number))
                if canned.delay:
                    time.sleep(canned.delay)
                if canned.status == 200 and wants_stream(body):
                    self._stream(canned, body)
                    return
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

            def _stream(self, canned: Canned, body: dict[str, Any]) -> None:
                """Answer a ``stream: true`` request as server-sent events (chunked)."""
                options = canned if isinstance(canned, StreamCanned) else StreamCanned(200, None)
                events = sse_events(self.path, canned.body, body, options.piece)
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    for name, value in canned.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    deltas = 0
                    for event in events:
                        if options.cut_after is not None and deltas >= options.cut_after:
                            self.close_connection = True  # the connection drops mid-stream
                            self.connection.shutdown(socket.SHUT_RDWR)
                            return
                        if options.hold is not None and deltas == options.hold_after:
                            options.hold.wait(timeout=10)  # until the test has seen a delta
                        self.wfile.write(_chunk(event))
                        self.wfile.flush()
                        if event.is_delta:
                            deltas += 1
                            if options.gap:
                                time.sleep(options.gap)
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except OSError:  # the client went away mid-stream
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


# -- provider batch endpoints ----------------------------------------------------

BatchResponder = Callable[[str, str, dict[str, Any]], Canned]
"""``(provider, custom_id, params) -> Canned``: the answer to one request of a batch."""


@dataclass
class FakeBatch:
    """One provider batch: its requests (custom_id, params) and, once ended, its answers."""

    id: str
    provider: str
    requests: list[tuple[str, dict[str, Any]]]
    status: str = "in_progress"
    """in_progress, completed (OpenAI) / ended (Anthropic), failed, expired."""
    answers: dict[str, Canned] = field(default_factory=dict)
    created_at: int = 1_700_000_000


class FakeBatches:
    """The batch routes of a ``FakeProviderServer``.

    OpenAI: ``POST /v1/files`` (multipart, purpose=batch), ``POST /v1/batches``,
    ``GET /v1/batches/{id}``, ``GET /v1/files/{id}/content``. Anthropic:
    ``POST /v1/messages/batches``, ``GET /v1/messages/batches/{id}`` and its
    ``/results``. A batch stays ``in_progress`` until ``complete()`` answers
    every request (from the server's canned queue, in order, or a responder);
    ``auto`` completes each batch as it is created. Every call is recorded in
    ``calls`` as ``(method, path)``; batch requests never touch ``requests``.
    """

    def __init__(self, server: FakeProviderServer) -> None:
        self._server = server
        self._lock = threading.Lock()
        self.files: dict[str, bytes] = {}
        self.by_id: dict[str, FakeBatch] = {}
        self.calls: list[tuple[str, str]] = []
        self.auto: BatchResponder | None = None
        self._count = 0

    # -- the test's side ---------------------------------------------------------

    def complete(
        self,
        responder: BatchResponder | None = None,
        *,
        ids: list[str] | None = None,
        status: str | None = None,
    ) -> int:
        """End the running batches (or those in ``ids``); how many requests were answered.

        Each request is answered by ``responder`` or, without one, by the next
        canned answer queued on the server. ``status`` ends them another way
        (``failed``, ``expired``: no answers).
        """
        answered = 0
        with self._lock:
            running = [
                b
                for b in self.by_id.values()
                if b.status == "in_progress" and (ids is None or b.id in ids)
            ]
        for batch in running:
            if status is None:
                for custom_id, params in batch.requests:
                    batch.answers[custom_id] = (
                        responder(batch.provider, custom_id, params)
                        if responder is not None
                        else self._server._queue.popleft()
                    )
                    answered += 1
            batch.status = status or ("completed" if batch.provider == "openai" else "ended")
        return answered

    @property
    def requests(self) -> list[tuple[str, dict[str, Any]]]:
        """Every request submitted in any batch: (custom_id, params)."""
        return [r for b in self.by_id.values() for r in b.requests]

    # -- the wire's side ---------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        with self._lock:
            self._count += 1
            return f"{prefix}{self._count:04d}"

    def route(
        self, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, bytes, str] | None:
        path = path.split("?", 1)[0]
        parts = path.strip("/").split("/")
        handled: tuple[int, Any] | tuple[int, bytes, str] | None = None
        if method == "POST" and path == "/v1/files":
            handled = self._upload(headers, raw)
        elif method == "POST" and path == "/v1/batches":
            handled = self._create_openai(json.loads(raw or b"{}"))
        elif method == "GET" and parts[:2] == ["v1", "batches"] and len(parts) == 3:
            handled = self._openai_batch(parts[2])
        elif method == "GET" and parts[:2] == ["v1", "files"] and parts[3:] == ["content"]:
            data = self.files.get(parts[2])
            handled = (200, data, "application/octet-stream") if data is not None else (404, {})
        elif method == "POST" and path == "/v1/messages/batches":
            handled = self._create_anthropic(json.loads(raw or b"{}"))
        elif method == "GET" and parts[:3] == ["v1", "messages", "batches"] and len(parts) == 4:
            handled = self._anthropic_batch(parts[3])
        elif (
            method == "GET"
            and parts[:3] == ["v1", "messages", "batches"]
            and parts[4:] == ["results"]
        ):
            handled = self._anthropic_results(parts[3])
        if handled is None:
            return None
        with self._lock:
            self.calls.append((method, path))
        if len(handled) == 3:
            return handled
        status, body = handled
        return status, json.dumps(body).encode(), "application/json"

    def _upload(self, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
        from email.parser import BytesParser
        from email.policy import HTTP

        message = BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {headers.get('content-type', '')}\r\n\r\n".encode() + raw
        )
        content, purpose = b"", ""
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            if name == "file":
                content = data
            elif name == "purpose":
                purpose = data.decode()
        file_id = self._new_id("file-")
        self.files[file_id] = content
        return 200, {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": 1_700_000_000,
            "filename": "batch.jsonl",
            "purpose": purpose,
            "status": "processed",
        }

    def _create_openai(self, body: dict[str, Any]) -> tuple[int, Any]:
        data = self.files.get(str(body.get("input_file_id")))
        if data is None:
            return 400, {"error": {"message": "no such file", "type": "invalid_request_error"}}
        requests = []
        for line in data.decode().splitlines():
            if line.strip():
                entry = json.loads(line)
                requests.append((entry["custom_id"], entry["body"]))
        batch = FakeBatch(self._new_id("batch_"), "openai", requests)
        with self._lock:
            self.by_id[batch.id] = batch
        if self.auto is not None:
            self.complete(self.auto, ids=[batch.id])
        return self._openai_batch(batch.id)

    def _openai_batch(self, batch_id: str) -> tuple[int, Any]:
        batch = self.by_id.get(batch_id)
        if batch is None:
            return 404, {"error": {"message": "no such batch", "type": "invalid_request_error"}}
        output_id = error_id = None
        if batch.status in ("completed", "expired") and batch.answers:
            ok = [(c, a) for c, a in batch.answers.items() if a.status == 200]
            bad = [(c, a) for c, a in batch.answers.items() if a.status != 200]
            output_id = self._file_of(batch.id, "out", ok) if ok else None
            error_id = self._file_of(batch.id, "err", bad) if bad else None
        return 200, {
            "id": batch.id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "input_file_id": "file-in",
            "completion_window": "24h",
            "status": batch.status,
            "created_at": batch.created_at,
            "output_file_id": output_id,
            "error_file_id": error_id,
            "errors": {"object": "list", "data": [{"code": "invalid", "message": "bad file"}]}
            if batch.status == "failed"
            else None,
            "request_counts": {
                "total": len(batch.requests),
                "completed": sum(a.status == 200 for a in batch.answers.values()),
                "failed": sum(a.status != 200 for a in batch.answers.values()),
            },
        }

    def _file_of(self, batch_id: str, kind: str, answers: list[tuple[str, Canned]]) -> str:
        file_id = f"file-{batch_id}-{kind}"
        lines = [
            json.dumps(
                {
                    "id": f"batch_req_{n}",
                    "custom_id": custom_id,
                    "response": {
                        "status_code": answer.status,
                        "request_id": f"req_{n}",
                        "body": answer.body,
                    },
                    "error": None,
                }
            )
            for n, (custom_id, answer) in enumerate(answers)
        ]
        self.files[file_id] = ("\n".join(lines) + "\n").encode()
        return file_id

    def _create_anthropic(self, body: dict[str, Any]) -> tuple[int, Any]:
        requests = [(r["custom_id"], r["params"]) for r in body.get("requests", [])]
        batch = FakeBatch(self._new_id("msgbatch_"), "anthropic", requests)
        with self._lock:
            self.by_id[batch.id] = batch
        if self.auto is not None:
            self.complete(self.auto, ids=[batch.id])
        return self._anthropic_batch(batch.id)

    def _anthropic_batch(self, batch_id: str) -> tuple[int, Any]:
        batch = self.by_id.get(batch_id)
        if batch is None:
            return 404, anthropic_error("no such batch", type="not_found_error")
        ended = batch.status != "in_progress"
        return 200, {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": {
                "processing": 0 if ended else len(batch.requests),
                "succeeded": sum(a.status == 200 for a in batch.answers.values()),
                "errored": sum(a.status != 200 for a in batch.answers.values()),
                "canceled": 0,
                "expired": len(batch.requests) - len(batch.answers) if ended else 0,
            },
            "created_at": "2026-01-01T00:00:00Z",
            "expires_at": "2026-01-02T00:00:00Z",
            "ended_at": "2026-01-01T01:00:00Z" if ended else None,
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": f"{self._server.url}/v1/messages/batches/{batch.id}/results"
            if ended
            else None,
        }

    def _anthropic_results(self, batch_id: str) -> tuple[int, bytes, str] | tuple[int, Any]:
        batch = self.by_id.get(batch_id)
        if batch is None or batch.status == "in_progress":
            return 404, anthropic_error("no results yet", type="not_found_error")
        lines = []
        for custom_id, _ in batch.requests:
            answer = batch.answers.get(custom_id)
            if answer is None:
                result: dict[str, Any] = {"type": "expired"}
            elif answer.status == 200:
                result = {"type": "succeeded", "message": answer.body}
            else:
                result = {"type": "errored", "error": answer.body}
            lines.append(json.dumps({"custom_id": custom_id, "result": result}))
        return 200, ("\n".join(lines) + "\n").encode(), "application/binary"


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


def message_text(content: Any) -> str:
    """A sent message's text: a string, or the text of its first content block."""
    return content if isinstance(content, str) else str(content[0]["text"])


def anthropic_error(message: str, *, type: str = "invalid_request_error") -> dict[str, Any]:
    return {"type": "error", "error": {"type": type, "message": message}}


# -- streaming: server-sent events ----------------------------------------------


@dataclass
class SSE:
    """One server-sent event; ``is_delta`` when it carries a piece of text or arguments."""

    data: str
    event: str | None = None
    is_delta: bool = False

    def encode(self) -> bytes:
        head = f"event: {self.event}\n" if self.event else ""
        return f"{head}data: {self.data}\n\n".encode()


def wants_stream(body: Any) -> bool:
    """Whether a request asked for a streamed answer (``"stream": true``)."""
    return isinstance(body, dict) and body.get("stream") is True


def _chunk(event: SSE) -> bytes:
    data = event.encode()
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _pieces(text: str, size: int) -> list[str]:
    size = max(1, size)
    return [text[i : i + size] for i in range(0, len(text), size)]


def sse_events(path: str, answer: Any, request: dict[str, Any], piece: int = 4) -> list[SSE]:
    """``answer`` (a canned completion or message) as the provider would stream it."""
    if path == OPENAI_PATH:
        return openai_chunks(answer, request, piece)
    return anthropic_events(answer, piece)


def openai_chunks(completion: dict[str, Any], request: dict[str, Any], piece: int) -> list[SSE]:
    """A chat.completion as chat.completion.chunk events, then ``[DONE]``.

    Usage comes in a last chunk without choices, and only when the request
    asked for it (``stream_options.include_usage``), as the API does.
    """
    base = {
        "id": completion.get("id", "chatcmpl-fake"),
        "object": "chat.completion.chunk",
        "created": completion.get("created", 1_700_000_000),
        "model": completion.get("model"),
    }

    def chunk(delta: dict[str, Any], finish: str | None = None, *, is_delta: bool = False) -> SSE:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return SSE(json.dumps({**base, "choices": [choice]}), is_delta=is_delta)

    out: list[SSE] = []
    for choice in completion.get("choices") or []:
        message = choice.get("message") or {}
        content = message.get("content")
        first: dict[str, Any] = {"role": "assistant", "content": "" if content else None}
        out.append(chunk({**first, "refusal": None}))
        out.extend(chunk({"content": p}, is_delta=True) for p in _pieces(content or "", piece))
        if message.get("refusal"):
            out.append(chunk({"refusal": message["refusal"]}))
        for index, call in enumerate(message.get("tool_calls") or []):
            function = call["function"]
            head = {"index": index, "id": call["id"], "type": "function"}
            out.append(
                chunk(
                    {
                        "tool_calls": [
                            {**head, "function": {"name": function["name"], "arguments": ""}}
                        ]
                    }
                )
            )
            out.extend(
                chunk(
                    {"tool_calls": [{"index": index, "function": {"arguments": p}}]}, is_delta=True
                )
                for p in _pieces(function.get("arguments") or "", piece)
            )
        out.append(chunk({}, choice.get("finish_reason") or "stop"))
    usage = completion.get("usage")
    if usage and (request.get("stream_options") or {}).get("include_usage"):
        out.append(SSE(json.dumps({**base, "choices": [], "usage": usage})))
    out.append(SSE("[DONE]"))
    return out


def anthropic_events(message: dict[str, Any], piece: int) -> list[SSE]:
    """A Messages API message as its stream: message_start, blocks, message_delta, stop."""

    def event(type: str, *, is_delta: bool = False, **fields: Any) -> SSE:
        return SSE(json.dumps({"type": type, **fields}), event=type, is_delta=is_delta)

    usage = message.get("usage") or {}
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": usage.get("input_tokens", 0), "output_tokens": 1},
    }
    out = [event("message_start", message=start)]
    for index, block in enumerate(message.get("content") or []):
        if block["type"] == "text":
            out.append(
                event(
                    "content_block_start", index=index, content_block={"type": "text", "text": ""}
                )
            )
            out.extend(
                event(
                    "content_block_delta",
                    index=index,
                    delta={"type": "text_delta", "text": p},
                    is_delta=True,
                )
                for p in _pieces(block["text"], piece)
            )
        elif block["type"] == "tool_use":
            opened = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            out.append(event("content_block_start", index=index, content_block=opened))
            out.extend(
                event(
                    "content_block_delta",
                    index=index,
                    delta={"type": "input_json_delta", "partial_json": p},
                    is_delta=True,
                )
                for p in _pieces(json.dumps(block["input"]), piece)
            )
        out.append(event("content_block_stop", index=index))
        if index == 0:
            out.append(event("ping"))
    out.append(
        event(
            "message_delta",
            delta={"stop_reason": message.get("stop_reason"), "stop_sequence": None},
            usage={"output_tokens": usage.get("output_tokens", 0)},
        )
    )
    out.append(event("message_stop"))
    return out


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
