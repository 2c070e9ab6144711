"""A fake Claude Code Analytics Admin API on loopback, written from ``shared/reference/analytics-api.md``
(§ numbers below), not from mdmgen's client.

* ``GET /v1/organizations/usage_report/claude_code`` only; any other method or path is a 404
  ``not_found_error`` in the API's error envelope, with a ``request-id`` header (§5, §8.1).
* Auth (§1, §8.2): ``x-api-key`` equal to the admin key, or ``Authorization: Bearer`` with the OAuth
  token; otherwise 401 ``authentication_error``. A workspace key gets 403 ``permission_error``.
  ``anthropic-version`` is required (400 without it).
* Parameters (§2, §8.3): ``starting_at`` ``YYYY-MM-DD`` (required), ``limit`` 1-1000 (default 20),
  ``page`` an opaque cursor (``page_`` + base64 of the offset and the day): a garbage cursor, or one
  used with another ``starting_at``, is a 400 ``invalid_request_error``.
* Pages hold at most ``page_size`` records, however large the ``limit`` (§4: a client must follow
  ``has_more``, not count records). ``next_page`` is null on the last page (§8.4).
* ``date`` in either format (§3): ``date_format = "rfc3339"`` (now) or ``"date"`` (before 2026-08-05).
* Freshness (§4, §8.6): ``today`` is injected; a day on or after it has no rows yet.
* Faults (§5, §8.7): :meth:`fail_next` queues 429 ``rate_limit_error`` (with ``retry-after``), 500
  ``api_error`` or 529 ``overloaded_error`` answers. An organisation with no rows is empty ``data``.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PATH = "/v1/organizations/usage_report/claude_code"
ORG_ID = "dc9f6c26-b22c-4831-8d01-0446bada88f1"
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}


def user_row(email: str, sessions: int, *, remote: bool = False, terminal: str = "vscode",
             subscription: str | None = None) -> dict[str, Any]:
    """One ``user_actor`` record (§3) without its date; ``subscription`` "team"/"enterprise" makes it a
    subscription customer's row, else an API customer's (``subscription_type: null``)."""
    return _row({"type": "user_actor", "email_address": email}, sessions, remote, terminal, subscription)


def api_row(key_name: str, sessions: int) -> dict[str, Any]:
    """One ``api_actor`` record: an API key, no email (§3)."""
    return _row({"type": "api_actor", "api_key_name": key_name}, sessions, False, "tmux", None)


def _row(actor: dict[str, str], sessions: int, remote: bool, terminal: str, subscription: str | None) -> dict:
    return {
        "actor": actor, "organization_id": ORG_ID,
        "customer_type": "subscription" if subscription else "api", "subscription_type": subscription,
        "terminal_type": terminal, "is_remote": remote,
        "core_metrics": {"num_sessions": sessions, "lines_of_code": {"added": 10 * sessions, "removed": sessions},
                         "commits_by_claude_code": sessions, "pull_requests_by_claude_code": 0},
        # an empty entry and a tool key the reference does not list (§8.5)
        "tool_actions": {"edit_tool": {"accepted": 3, "rejected": 1}, "write_tool": {},
                         "future_tool": {"accepted": 1, "rejected": 0}},
        "model_breakdown": [
            {"model": "claude-opus-5",
             "tokens": {"input": 1000, "output": 350, "cache_read": 100, "cache_creation": 50},
             "estimated_cost": {"currency": "USD", "amount": 141}},
            {"model": "claude-sonnet-5", "tokens": {"input": 10, "output": 5, "cache_read": 0, "cache_creation": 0},
             "estimated_cost": {"currency": "USD", "amount": 2}}],
    }


@dataclass
class Fault:
    status: int
    retry_after: str | None = None


@dataclass
class FakeAnthropicServer:
    admin_key: str
    today: date
    oauth_token: str | None = None
    workspace_key: str | None = None
    page_size: int = 3
    date_format: str = "rfc3339"
    rows: dict[date, list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    _faults: list[Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: Iterable[int] = field(default_factory=itertools.count)
    _httpd: ThreadingHTTPServer | None = None

    def add(self, day: date, *records: dict[str, Any]) -> None:
        self.rows.setdefault(day, []).extend(records)

    def fail_next(self, count: int, status: int, retry_after: str | None = None) -> None:
        with self._lock:
            self._faults.extend(Fault(status, retry_after) for _ in range(count))

    # --- lifecycle ---

    def start(self) -> FakeAnthropicServer:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # port 0: the socket is kept, no race
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeAnthropicServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # --- the API ---

    def answer(self, method: str, target: str, headers: dict[str, str]) -> tuple[int, dict[str, str], dict]:
        parts = urlsplit(target)
        with self._lock:
            self.requests.append({"method": method, "path": parts.path, "query": parts.query,
                                  "headers": dict(headers)})
            fault = self._faults.pop(0) if self._faults and parts.path == PATH else None
        if method != "GET" or parts.path != PATH:
            return _error(404, f"{method} {parts.path} not found")
        if fault is not None:
            extra = {"retry-after": fault.retry_after} if fault.retry_after is not None else {}
            status, head, body = _error(fault.status, {429: "Rate limited", 500: "Internal server error",
                                                       529: "Overloaded"}.get(fault.status, "error"))
            return status, {**head, **extra}, body
        key, bearer = headers.get("x-api-key"), headers.get("authorization", "")
        if key is not None and key == self.workspace_key:
            return _error(403, "This API key does not have permission to read usage reports")
        if not (key == self.admin_key or (self.oauth_token and bearer == f"Bearer {self.oauth_token}")):
            return _error(401, "invalid x-api-key")
        if not headers.get("anthropic-version"):
            return _error(400, "anthropic-version: header is required")
        return self._page(parse_qs(parts.query, keep_blank_values=True))

    def _page(self, query: dict[str, list[str]]) -> tuple[int, dict[str, str], dict]:
        starting = query.get("starting_at", [""])[0]
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", starting):
            return _error(400, "starting_at: expected a date YYYY-MM-DD")
        day = date.fromisoformat(starting)
        limit_text = query.get("limit", ["20"])[0]
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 1000:
            return _error(400, "limit: must be an integer between 1 and 1000")
        offset = 0
        if "page" in query:
            offset = _offset(query["page"][0], starting)
            if offset is None:
                return _error(400, "page: invalid cursor")
        rows = self.rows.get(day, []) if day < self.today else []  # a day not over has no rows yet
        size = min(int(limit_text), self.page_size)
        chunk = rows[offset:offset + size]
        stamp = starting if self.date_format == "date" else f"{starting}T00:00:00Z"
        more = offset + size < len(rows)
        cursor = "page_" + base64.b64encode(json.dumps({"o": offset + size, "d": starting}).encode()).decode()
        return 200, _request_id(), {"data": [{"date": stamp, **row} for row in chunk], "has_more": more,
                                    "next_page": cursor if more else None}


def _offset(cursor: str, starting: str) -> int | None:
    if not cursor.startswith("page_"):
        return None
    try:
        value = json.loads(base64.b64decode(cursor[5:], validate=True))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(value, dict) or value.get("d") != starting or not isinstance(value.get("o"), int):
        return None  # a cursor of another day (or made up)
    return value["o"]


_REQUEST_IDS = itertools.count(1)


def _request_id() -> dict[str, str]:
    return {"request-id": f"req_{next(_REQUEST_IDS):012d}"}


def _error(status: int, message: str) -> tuple[int, dict[str, str], dict]:
    head = _request_id()
    return status, head, {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
                          "request_id": head["request-id"]}


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeAnthropicServer
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, head, body = self.server_fake.answer(self.command, self.path, headers)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in head.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass
