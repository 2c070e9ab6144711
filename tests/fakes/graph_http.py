"""Plumbing shared by the fake identity platform and the fake Graph: HTTPS server, records, errors, OData.

Split from ``graph_server.py`` so each file stays readable: this one knows nothing about Intune.
Facts come from ``shared/reference/intune-graph.md`` (the "reference"; ``§`` numbers point into it).
Where the reference is silent the choice made here is flagged ``CHOICE:``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import socketserver
import ssl
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

JSON_CONTENT_TYPE = "application/json"
# CHOICE: Graph answers ``application/json;odata.metadata=minimal;...``; clients must parse by media type.
GRAPH_CONTENT_TYPE = ("application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;"
                      "charset=utf-8")
SECRET_FORM_FIELDS = ("client_secret", "client_assertion")


class ManualClock:
    """An injectable monotonic clock: tests move time with :meth:`advance`, never by sleeping."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


@dataclass
class RequestRecord:
    """One request as the fake saw it.  Secrets are redacted before the record exists.

    ``authorization`` is ``"Bearer <sha256:xxxxxxxx>"`` (a fingerprint, so tests can tell two tokens
    apart without the token being stored), ``""`` when absent.  ``batch_id`` is the inner id for a
    request that arrived inside ``$batch``.
    """

    seq: int
    method: str
    path: str
    query: str
    authorization: str
    headers: dict[str, str]
    body: str
    status: int = 0
    fault: str | None = None
    batch_id: str | None = None


def fingerprint(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:8]


def redact_authorization(value: str | None) -> str:
    if not value:
        return ""
    scheme, _, credential = value.partition(" ")
    return f"{scheme} <{fingerprint(credential)}>" if credential else "<redacted>"


def redact_form(body: str) -> str:
    """The token request body with every secret value replaced, so a record can be printed."""
    pattern = "|".join(SECRET_FORM_FIELDS)
    return re.sub(rf"(^|&)({pattern})=[^&]*", r"\1\2=<redacted>", body)


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class HttpError(Exception):
    """Raised by a handler to answer with ``response``."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def json_response(status: int, obj: Any, content_type: str = GRAPH_CONTENT_TYPE) -> Response:
    return Response(status, json.dumps(obj).encode("utf-8"), content_type)


def utc_now_text() -> str:
    # §5.1: innerError.date is "2022-11-24T01:31:47" (no zone, no fraction).
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def iso_timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def graph_error(status: int, code: str, message: str, *, client_request_id: str | None = None,
                headers: list[tuple[str, str]] | None = None) -> HttpError:
    """§5.1 Graph error body: ``{"error": {"code", "message", "innerError": {...}}}``."""
    request_id = str(uuid.uuid4())
    inner: dict[str, str] = {"date": utc_now_text(), "request-id": request_id}
    if client_request_id:
        inner["client-request-id"] = client_request_id
    body = {"error": {"code": code, "message": message, "innerError": inner}}
    response = json_response(status, body)
    response.headers.append(("request-id", request_id))
    response.headers.extend(headers or [])
    return HttpError(response)


# ------------------------------------------------------------------------------------------- requests


@dataclass
class GraphRequest:
    """A Graph request as handlers see it: version stripped from the path, query decoded."""

    version: str  # "beta" | "v1.0"
    method: str
    path: str  # after the version, e.g. "/deviceManagement/deviceConfigurations"
    query: dict[str, str]
    raw_query: str
    headers: Any
    body: bytes
    token: Any  # graph_identity.Token
    client_request_id: str | None

    def json_body(self) -> dict[str, Any]:
        media = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if media != "application/json":
            raise graph_error(415, "UnsupportedMediaType", "Content-Type must be application/json.")
        try:
            data = json.loads(self.body or b"null")
        except ValueError:
            raise graph_error(400, "BadRequest", "The request body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise graph_error(400, "BadRequest", "The request body must be a JSON object.")
        return data



# ------------------------------------------------------------------------------------------- OData

_FILTER_TERM = re.compile(r"\s*([A-Za-z][A-Za-z0-9/]*)\s+eq\s+'((?:[^']|'')*)'\s*")


def parse_filter(text: str, allowed: tuple[str, ...]) -> list[tuple[str, str]]:
    """``prop eq 'value' [and prop eq 'value' ...]``, with ``''`` as an escaped quote (§4.1).

    CHOICE: only ``eq`` on string properties joined by ``and``; anything else is a 400, so a client
    that relies on more of OData than this fails loudly here instead of passing by accident.
    """
    terms: list[tuple[str, str]] = []
    for part in re.split(r"\s+and\s+", text.strip()):
        match = _FILTER_TERM.fullmatch(part)
        if match is None:
            raise ValueError(f"Invalid filter clause: {text}")
        prop, value = match.group(1), match.group(2).replace("''", "'")
        if prop not in allowed:
            raise ValueError(f"Invalid filter clause: property '{prop}' is not filterable here")
        terms.append((prop, value))
    return terms


def filter_matches(obj: dict[str, Any], terms: list[tuple[str, str]]) -> bool:
    # CHOICE: Graph string comparison in $filter is case-insensitive for these directory properties.
    return all(str(obj.get(prop) or "").lower() == value.lower() for prop, value in terms)


def apply_select(obj: dict[str, Any], select: str | None) -> dict[str, Any]:
    if not select:
        return obj
    wanted = {s.strip() for s in select.split(",") if s.strip()}
    return {k: v for k, v in obj.items() if k in wanted or k.startswith("@odata.")}


# ------------------------------------------------------------------------------------------ server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeGraph/1.0"
    sys_version = ""
    timeout = 30
    disable_nagle_algorithm = True
    server: HttpsServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        response = self.server.process(self.command, self.path, self.headers, body)
        self.send_response(response.status)
        if response.content_type:
            self.send_header("Content-Type", response.content_type)
        for name, value in response.headers:
            self.send_header(name, value)
        if response.status != 204:
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if response.status != 204 and self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


class HttpsServer(socketserver.ThreadingMixIn, HTTPServer):
    """A threaded HTTPS server on 127.0.0.1 that hands every request to ``process``.

    The TLS handshake runs in the connection's thread, so a client that never shakes hands cannot
    block the accept loop; connections are tracked so ``close`` can drop idle keep-alive ones.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, context: ssl.SSLContext,
                 process: Callable[[str, str, Any, bytes], Response]) -> None:
        self.context = context
        self.process = process
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # no getfqdn(): it may do a slow reverse lookup
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(10)
        secured = self.context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        with self._lock:
            self._connections.add(secured)
        try:
            secured.do_handshake()
            super().finish_request(secured, client_address)
        except (OSError, ssl.SSLError):
            pass  # failed handshakes (an untrusting client), resets, shutdown
        finally:
            with self._lock:
                self._connections.discard(secured)
            with contextlib.suppress(OSError):
                secured.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass

    def close_all(self) -> None:
        with self._lock:
            sockets = list(self._connections)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.server_close()
