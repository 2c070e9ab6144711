"""Local OTLP receivers (http/json, http/protobuf, grpc) that record what arrives.

Each receiver listens on an ephemeral 127.0.0.1 port and appends one ``Export``
per request to ``receiver.exports``, in one shape whatever the protocol:

    Export(signal="metrics" | "logs", protocol=..., headers={lower-case name: value},
           resource={attr: value}, metrics=[metric names], events=[LogEvent(...)],
           accepted=True | False)

Auth: ``require_token="t"`` answers requests without ``authorization: Bearer t``
with HTTP 401 / gRPC UNAUTHENTICATED; ``reject_token="t"`` refuses exactly that
token. Refused requests are still recorded, with ``accepted=False``.

TLS: ``tls=(cert_pem, key_pem)`` serves https (or grpc over TLS) with that
certificate; ``endpoint`` then starts with ``https://``.

Usage::

    with make_receiver("grpc") as rx:
        ... point OTEL_EXPORTER_OTLP_ENDPOINT at rx.endpoint ...
        rx.wait_for(lambda r: "claude_code.session.count" in r.metric_names(), timeout=30)
"""

from __future__ import annotations

import base64
import gzip
import json
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

from .loopback import LoopbackHTTPServer

PROTOCOLS = ("http/json", "http/protobuf", "grpc")

_REQUEST_TYPES = {
    "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
    "logs": logs_service_pb2.ExportLogsServiceRequest,
}


@dataclass
class LogEvent:
    # The full name, e.g. "claude_code.user_prompt": the record's eventName if set,
    # else its body. Claude Code 2.1.328 sets no eventName; it sends the full name
    # as the body and the short one ("user_prompt") as attributes["event.name"].
    name: str
    attributes: dict[str, Any]
    body: Any


@dataclass
class Export:
    signal: str  # "metrics" or "logs"
    protocol: str
    headers: dict[str, str]  # lower-cased names; for grpc, the call metadata
    resource: dict[str, Any]
    metrics: list[str] = field(default_factory=list)
    events: list[LogEvent] = field(default_factory=list)
    accepted: bool = True


# --- decoding: everything goes through the OTLP/JSON shape -------------------------


def _any_value(v: dict) -> Any:
    """OTLP AnyValue (JSON mapping) -> plain Python value."""
    if "stringValue" in v:
        return v["stringValue"]
    if "boolValue" in v:
        return v["boolValue"]
    if "intValue" in v:
        return int(v["intValue"])  # int64 is a string in proto3 JSON, a number from some exporters
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "arrayValue" in v:
        return [_any_value(x) for x in v["arrayValue"].get("values", [])]
    if "kvlistValue" in v:
        return _attributes(v["kvlistValue"].get("values", []))
    if "bytesValue" in v:
        return base64.b64decode(v["bytesValue"])
    return None


def _attributes(kvs: list[dict]) -> dict[str, Any]:
    return {kv["key"]: _any_value(kv.get("value", {})) for kv in kvs}


def normalise(
    signal: str, protocol: str, headers: dict[str, str], payload: dict, accepted: bool
) -> Export:
    """Turn one OTLP/JSON-shaped export request into an ``Export``."""
    export = Export(signal, protocol, headers, resource={}, accepted=accepted)
    key = "resourceMetrics" if signal == "metrics" else "resourceLogs"
    for res in payload.get(key, []):
        export.resource.update(_attributes(res.get("resource", {}).get("attributes", [])))
        if signal == "metrics":
            for scope in res.get("scopeMetrics", []):
                export.metrics += [m["name"] for m in scope.get("metrics", [])]
        else:
            for scope in res.get("scopeLogs", []):
                for rec in scope.get("logRecords", []):
                    attrs = _attributes(rec.get("attributes", []))
                    body = _any_value(rec["body"]) if "body" in rec else None
                    name = rec.get("eventName") or body
                    export.events.append(LogEvent(str(name), attrs, body))
    return export


def _protobuf_to_dict(signal: str, raw: bytes) -> dict:
    msg = _REQUEST_TYPES[signal].FromString(raw)
    return MessageToDict(msg)


# --- the receivers -------------------------------------------------------------------


class Receiver:
    """Common part: recorded exports, auth decision, waiting, context manager."""

    protocol: str

    def __init__(
        self,
        require_token: str | None = None,
        reject_token: str | None = None,
        tls: tuple[bytes, bytes] | None = None,
    ) -> None:
        self.require_token = require_token
        self.reject_token = reject_token
        self.tls = tls  # (certificate PEM, private key PEM), or None for plain text
        self.exports: list[Export] = []
        self.errors: list[str] = []  # requests that could not be decoded
        self._cond = threading.Condition()

    # what the test reads
    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def accepted(self) -> list[Export]:
        with self._cond:
            return [e for e in self.exports if e.accepted]

    def metric_names(self) -> set[str]:
        return {m for e in self.accepted() for m in e.metrics}

    def events(self, name: str | None = None) -> list[LogEvent]:
        return [ev for e in self.accepted() for ev in e.events if name is None or ev.name == name]

    def wait_for(self, predicate: Callable[[Receiver], bool], timeout: float) -> bool:
        """Poll ``predicate(self)`` until it is true or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    # used by the servers
    def authorised(self, authorization: str | None) -> bool:
        if self.reject_token is not None and authorization == f"Bearer {self.reject_token}":
            return False
        return self.require_token is None or authorization == f"Bearer {self.require_token}"

    def record(self, export: Export) -> None:
        with self._cond:
            self.exports.append(export)
            self._cond.notify_all()

    def record_error(self, message: str) -> None:
        with self._cond:
            self.errors.append(message)
            self._cond.notify_all()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Receiver:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class HttpReceiver(Receiver):
    """OTLP over HTTP: POST /v1/metrics and /v1/logs, JSON or protobuf bodies."""

    def __init__(self, protocol: str, **options: Any) -> None:
        assert protocol in ("http/json", "http/protobuf"), protocol
        super().__init__(**options)
        self.protocol = protocol
        wrap = None
        if self.tls:
            # The handshake runs on the first read, in the request's thread, so a client
            # that refuses our certificate cannot stall the accept loop.
            context = _server_context(self.tls)

            def wrap(sock):
                return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self._http = LoopbackHTTPServer(_http_handler(self), wrap)
        self.port = self._http.port

    def start(self) -> HttpReceiver:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()


def _http_handler(rx: HttpReceiver) -> type[BaseHTTPRequestHandler]:
    json_wanted = rx.protocol == "http/json"
    ctype = "application/json" if json_wanted else "application/x-protobuf"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _reply(self, status: int, body: bytes, content_type: str = ctype) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            signal = {"/v1/metrics": "metrics", "/v1/logs": "logs"}.get(self.path.split("?", 1)[0])
            raw = self._read_body()
            if signal is None:
                return self._reply(404, b"{}", "application/json")
            headers = {k.lower(): v for k, v in self.headers.items()}
            got_json = headers.get("content-type", "").startswith("application/json")
            if got_json != json_wanted:
                rx.record_error(
                    f"{self.path}: expected {ctype}, got {headers.get('content-type')!r}"
                )
                return self._reply(415, b"{}", "application/json")
            ok = rx.authorised(headers.get("authorization"))
            try:
                payload = (
                    json.loads(raw or b"{}") if json_wanted else _protobuf_to_dict(signal, raw)
                )
            except Exception as exc:
                rx.record_error(f"{self.path}: cannot decode: {exc!r}")
                return self._reply(400, b"{}", "application/json")
            rx.record(normalise(signal, rx.protocol, headers, payload, accepted=ok))
            if not ok:
                return self._reply(401, b'{"message": "unauthenticated"}', "application/json")
            # An empty Export*ServiceResponse: "{}" in JSON, zero bytes in protobuf.
            self._reply(200, b"{}" if json_wanted else b"")

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                raw = b""
                while (size := int(self.rfile.readline().strip() or b"0", 16)) > 0:
                    raw += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()  # blank line after the last chunk
            else:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                raw = gzip.decompress(raw)
            return raw

    return Handler


class GrpcReceiver(Receiver):
    """OTLP over gRPC: opentelemetry-proto's MetricsService and LogsService."""

    protocol = "grpc"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _MetricsServicer(self), self._server
        )
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsServicer(self), self._server)
        if self.tls:
            cert, key = self.tls
            credentials = grpc.ssl_server_credentials([(key, cert)])
            self.port = self._server.add_secure_port("127.0.0.1:0", credentials)
        else:
            self.port = self._server.add_insecure_port("127.0.0.1:0")

    def start(self) -> GrpcReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None).wait(5)

    def handle(self, signal: str, request: Any, context: grpc.ServicerContext) -> None:
        headers = {k.lower(): v for k, v in context.invocation_metadata() if isinstance(v, str)}
        ok = self.authorised(headers.get("authorization"))
        self.record(normalise(signal, self.protocol, headers, MessageToDict(request), accepted=ok))
        if not ok:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unauthenticated")


class _MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, rx: GrpcReceiver) -> None:
        self.rx = rx

    def Export(self, request, context):
        self.rx.handle("metrics", request, context)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _LogsServicer(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, rx: GrpcReceiver) -> None:
        self.rx = rx

    def Export(self, request, context):
        self.rx.handle("logs", request, context)
        return logs_service_pb2.ExportLogsServiceResponse()


def _server_context(tls: tuple[bytes, bytes]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:  # load_cert_chain only reads files
        cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert.write_bytes(tls[0])
        key.write_bytes(tls[1])
        context.load_cert_chain(cert, key)
    return context


def make_receiver(
    protocol: str,
    *,
    require_token: str | None = None,
    reject_token: str | None = None,
    tls: tuple[bytes, bytes] | None = None,
) -> Receiver:
    """A not-yet-started receiver for ``protocol`` (one of ``PROTOCOLS``)."""
    options = {"require_token": require_token, "reject_token": reject_token, "tls": tls}
    if protocol == "grpc":
        return GrpcReceiver(**options)
    return HttpReceiver(protocol, **options)
