"""A tiny offline stand-in for the Anthropic Messages API.

Enough for ``claude -p "say hello"`` to complete against
``ANTHROPIC_BASE_URL=http://127.0.0.1:<port>``:

* ``POST /v1/messages``: answers "Hello!" as a streaming SSE response (or as
  one JSON message when the request does not ask for ``stream``). With ``tool_turn`` set, a
  streamed request without a tool result is answered with a ``Read`` tool call instead, and the
  one carrying its result gets "Hello!" once ``tool_turn()`` returns: two API requests in one
  session, with whatever the caller waits for in between.
* ``POST /v1/messages/count_tokens``: a token count.
* ``HEAD``/``GET`` anything else: 404 with an Anthropic-style error body, which
  the client treats as "feature not available" and carries on.
* ``CONNECT``: refused with 403. The harness points ``HTTPS_PROXY`` here, so any
  attempt to reach a host other than loopback ends at this stub instead of
  leaving the machine; such attempts are recorded in ``proxy_attempts``.

Every request is recorded in ``requests`` (method, path, lower-cased headers).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from .loopback import LoopbackHTTPServer

REPLY_TEXT = "Hello!"


@dataclass
class StubRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict | None = None


@dataclass
class MessagesStub:
    """Start with ``with MessagesStub() as stub: ... stub.base_url``."""

    requests: list[StubRequest] = field(default_factory=list)
    proxy_attempts: list[str] = field(default_factory=list)
    tool_turn: Callable[[], object] | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._http = LoopbackHTTPServer(_make_handler(self))

    @property
    def base_url(self) -> str:
        return f"http://{self._http.host}:{self._http.port}"

    def record(self, req: StubRequest) -> None:
        with self._lock:
            self.requests.append(req)

    def paths(self) -> list[str]:
        with self._lock:
            return [f"{r.method} {r.path}" for r in self.requests]

    def __enter__(self) -> MessagesStub:
        self._http.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.stop()


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _message(model: str, content: list, stop_reason: str | None, output_tokens: int) -> dict:
    return {
        "id": "msg_stub_0001",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 12,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def _has_tool_result(body: dict) -> bool:
    messages = body.get("messages") or []
    content = messages[-1].get("content") if messages and isinstance(messages[-1], dict) else None
    return isinstance(content, list) and any(isinstance(block, dict) and block.get("type") == "tool_result"
                                             for block in content)


def _tool_call(model: str) -> bytes:
    """A streamed answer asking to read a file that does not exist: the client answers with an error
    tool result in a second request."""
    block = {"type": "tool_use", "id": "toolu_stub_0001", "name": "Read", "input": {}}
    return b"".join([
        _sse("message_start", {"type": "message_start", "message": _message(model, [], None, 1)}),
        _sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}),
        _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
            "type": "input_json_delta", "partial_json": json.dumps({"file_path": "/nonexistent/mdmgen-stub"})}}),
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                               "usage": {"output_tokens": 3}}),
        _sse("message_stop", {"type": "message_stop"}),
    ])


def _make_handler(stub: MessagesStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep pytest output quiet
            pass

        def _record(self, body: dict | None = None) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            stub.record(StubRequest(self.command, self.path, headers, body))

        def _read_json(self) -> dict | None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                return json.loads(raw) if raw else None
            except ValueError:
                return None

        def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("request-id", "req_stub")
            self.end_headers()
            self.wfile.write(body)

        def _not_found(self) -> None:
            err = {
                "type": "error",
                "error": {"type": "not_found_error", "message": f"stub: no {self.path}"},
            }
            self._send(404, json.dumps(err).encode())

        def do_CONNECT(self) -> None:
            self._record()
            with stub._lock:
                stub.proxy_attempts.append(self.path)
            self.close_connection = True
            with contextlib.suppress(OSError):  # the client may hang up first
                self._send(403, b"", "text/plain")

        def do_HEAD(self) -> None:
            self._record()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            self._record()
            self._not_found()

        def do_POST(self) -> None:
            body = self._read_json()
            self._record(body)
            path = self.path.split("?", 1)[0]
            if path == "/v1/messages/count_tokens":
                self._send(200, b'{"input_tokens": 12}')
            elif path == "/v1/messages":
                self._messages(body or {})
            else:
                self._not_found()

        def _messages(self, body: dict) -> None:
            model = body.get("model", "claude-stub")
            if body.get("stream") and stub.tool_turn is not None:
                if not _has_tool_result(body):
                    self._send(200, _tool_call(model), "text/event-stream")
                    return
                stub.tool_turn()
            if not body.get("stream"):
                msg = _message(model, [{"type": "text", "text": REPLY_TEXT}], "end_turn", 3)
                self._send(200, json.dumps(msg).encode())
                return
            events = [
                _sse(
                    "message_start",
                    {"type": "message_start", "message": _message(model, [], None, 1)},
                ),
                _sse(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                ),
                _sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": REPLY_TEXT},
                    },
                ),
                _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
                _sse(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                        "usage": {"output_tokens": 3},
                    },
                ),
                _sse("message_stop", {"type": "message_stop"}),
            ]
            self._send(200, b"".join(events), "text/event-stream")

    return Handler
