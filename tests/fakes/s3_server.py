"""moto's S3 as a real HTTP server on 127.0.0.1, with a WSGI middleware in front.

boto3 talks HTTP to it as to AWS, so the real client code (signing, retries, checksums, error
parsing) runs. The middleware sits between the socket and moto and:

* records every request the server saw (method, bucket/key, query, x-amz-* headers, body
  digest), so tests count real HTTP requests rather than client-side hooks;
* checks ``x-amz-checksum-sha256`` against the body and answers 400 ``BadDigest`` like real S3
  (moto accepts a wrong checksum, see shared/reference/intune-graph.md §8.4);
* injects faults on request: an error status/code for matching requests, a slow PUT (so a
  publish can be killed midway), or a body corrupted in transit.

Usage::

    with S3Server() as s3:
        s3.url                      # "http://127.0.0.1:<port>"
        s3.client().create_bucket(Bucket="fleet")
        s3.reset_counts()
        ...                         # run the code under test against s3.url
        s3.requests("PUT")          # what the server saw
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import re
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import unquote

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    method: str
    path: str  # "bucket/key" (unquoted), or "bucket" for bucket-level requests
    query: str
    headers: dict[str, str]
    body: bytes

    @property
    def key(self) -> str:
        return self.path.partition("/")[2]

    @property
    def is_list(self) -> bool:
        return self.method == "GET" and not self.key and "list-type" in self.query


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    code: str
    remaining: int


@dataclass
class _State:
    seen: list[Seen] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    put_delay: float = 0.0
    corrupt_puts: int = 0


class S3Server:
    """moto S3 on a free loopback port; state is reset when it starts."""

    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._lock = threading.Lock()
        self._state = _State()
        self.url = ""

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        # ThreadedMotoServer builds its WSGI app inside start(); werkzeug's server calls
        # ``server.app`` per request, so wrapping it here puts us in front of every request.
        wsgi_server = self._server._server
        assert wsgi_server is not None and hasattr(wsgi_server, "app")
        wsgi_server.app = self._middleware(wsgi_server.app)
        # moto's backends are per process: start every server from an empty S3.
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")).read()

    def stop(self) -> None:
        self._server.stop()

    def client(self):
        """An admin client for test setup and inspection (its requests are counted too)."""
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing",
                            config=Config(request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required"))

    # --- what the server saw -----------------------------------------------------------------

    def requests(self, method: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self._state.seen if method is None or s.method == method]

    def lists(self) -> list[Seen]:
        return [s for s in self.requests("GET") if s.is_list]

    def gets(self) -> list[Seen]:
        return [s for s in self.requests("GET") if not s.is_list]

    def reset_counts(self) -> None:
        with self._lock:
            self._state.seen.clear()

    # --- faults ------------------------------------------------------------------------------

    def fail(self, method: str, path_regex: str, *, status: int = 403, code: str = "AccessDenied",
             times: int = 1_000_000) -> None:
        """Answer matching requests (``bucket/key`` searched with the regex) with an S3 error."""
        with self._lock:
            self._state.faults.append(Fault(method, re.compile(path_regex), status, code, times))

    def slow_puts(self, seconds: float) -> None:
        with self._lock:
            self._state.put_delay = seconds

    def corrupt_next_puts(self, count: int = 1) -> None:
        """Flip a byte of the next PUT bodies before the checksum check, as a bad network would."""
        with self._lock:
            self._state.corrupt_puts = count

    def clear_faults(self) -> None:
        with self._lock:
            self._state.faults.clear()
            self._state.put_delay = 0.0
            self._state.corrupt_puts = 0

    # --- the middleware ----------------------------------------------------------------------

    def _middleware(self, app):
        def middleware(environ, start_response):
            path = unquote(environ.get("PATH_INFO", "")).lstrip("/")
            if path.startswith("moto-api"):
                return app(environ, start_response)
            method = environ["REQUEST_METHOD"]
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items()
                       if k.startswith("HTTP_X_AMZ") or k.startswith("HTTP_IF")}
            if "CONTENT_TYPE" in environ:
                headers["content-type"] = environ["CONTENT_TYPE"]
            with self._lock:
                self._state.seen.append(Seen(method, path, environ.get("QUERY_STRING", ""), headers, body))
                fault = next((f for f in self._state.faults if f.remaining > 0 and f.method == method
                              and f.pattern.search(path)), None)
                if fault:
                    fault.remaining -= 1
                delay = self._state.put_delay if method == "PUT" else 0.0
                if method == "PUT" and body and self._state.corrupt_puts > 0:
                    self._state.corrupt_puts -= 1
                    body = bytes([body[0] ^ 0x01]) + body[1:]
            if delay:
                time.sleep(delay)
            if fault:
                return _error(start_response, fault.status, fault.code, "injected by the test server")
            sent = headers.get("x-amz-checksum-sha256")
            if sent is not None and sent != base64.b64encode(hashlib.sha256(body).digest()).decode():
                return _error(start_response, 400, "BadDigest",
                              "The SHA256 you specified did not match the calculated checksum.")
            environ["wsgi.input"] = io.BytesIO(body)
            return app(environ, start_response)

        return middleware


def _error(start_response, status: int, code: str, message: str):
    reasons = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 500: "Internal Server Error",
               503: "Service Unavailable"}
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>fake</RequestId></Error>").encode()
    start_response(f"{status} {reasons.get(status, 'Error')}",
                   [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body]
