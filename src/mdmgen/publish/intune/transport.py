"""azure-identity's requests go through mdmgen's HTTP layer, so Entra ID is bounded like Graph.

azure-identity sends its token requests (and MSAL's metadata requests) through an azure-core
pipeline whose default transport is ``requests``: its timeouts bound each read, not the request,
and it reads any body whole. This transport hands each request to a
:class:`mdmgen.http.Connection` (one per host it talks to), so the token request has the
same deadline for the whole exchange, the same size caps, proxies and TLS as every other request.

Failures become azure-core's own errors, which azure-identity expects (and its pipeline retries a
bounded number of times): ``ServiceResponseError`` when the server may have seen the request (a
timeout, a dropped connection), ``ServiceRequestError`` otherwise. Either carries the one-line
:class:`~mdmgen.http.TransportFailure` as ``inner_exception``, whose ``kind`` says what
went wrong (timeout, dns, tls, proxy, too large...).
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Any
from urllib.parse import urlencode, urlsplit

from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest._http_response_impl import RestHttpClientTransportResponse

from ... import __version__
from ...endpoints import is_loopback
from ...http import MAX_SMALL_BODY, Connection, TransportFailure, reason_phrase

log = logging.getLogger("mdmgen.publish.intune")
SERVICE = "Microsoft Entra ID"
MAX_CONNECTIONS = 2


class BoundedTransport(HttpTransport):
    """An azure-core transport over :class:`Connection`: ``timeout`` seconds for each whole request,
    at most :data:`MAX_SMALL_BODY` bytes of answer (a token or a metadata document)."""

    def __init__(self, *, timeout: float, ssl_context: ssl.SSLContext | None = None) -> None:
        self.timeout = timeout
        self._ssl_context = ssl_context
        self._connections: dict[str, Connection] = {}
        self._lock = threading.Lock()

    def send(self, request: Any, **kwargs: Any) -> RestHttpClientTransportResponse:
        parts = urlsplit(request.url)
        if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback(parts.hostname or "")):
            raise ServiceRequestError(f"{SERVICE} at {parts.scheme}://{parts.hostname}: only https is used for "
                                      "credentials (plain http only to loopback); check AZURE_AUTHORITY_HOST")
        connection = self._connection(f"{parts.scheme}://{parts.netloc}")
        doing = "requesting an access token" if request.method == "POST" else "reading Entra ID's configuration"
        try:
            answer = connection.send(request.method, parts.path + (f"?{parts.query}" if parts.query else ""),
                                     doing=doing, headers=dict(request.headers), content=_body(request.content),
                                     max_body=MAX_SMALL_BODY)
        except TransportFailure as exc:
            error = ServiceResponseError if exc.transient else ServiceRequestError
            raise error(str(exc), error=exc) from None
        response = RestHttpClientTransportResponse(request=request, internal_response=_Answer(answer))
        response.read()
        return response

    def open(self) -> None:
        """Connections open on first use."""

    def close(self) -> None:
        with self._lock:
            connections, self._connections = list(self._connections.values()), {}
        for connection in connections:
            connection.close()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _connection(self, origin: str) -> Connection:
        with self._lock:
            if origin not in self._connections:
                self._connections[origin] = Connection(
                    origin, service=SERVICE, max_connections=MAX_CONNECTIONS, timeout=self.timeout,
                    user_agent=f"mdmgen/{__version__}", log=log, log_prefix="entra: ",
                    ssl_context=self._ssl_context if origin.startswith("https:") else None,
                    max_body=MAX_SMALL_BODY)
            return self._connections[origin]


def _body(content: Any) -> bytes | None:
    """The request body as bytes: azure-core keeps a form as a dict for its transport to encode."""
    if content is None or isinstance(content, bytes):
        return content
    if isinstance(content, str):
        return content.encode("utf-8")
    if isinstance(content, dict):
        return urlencode(content, doseq=True).encode("ascii")
    raise ServiceRequestError(f"a request body azure-identity built that mdmgen cannot send ({type(content).__name__})")


class _Answer:
    """The little of an ``http.client`` response azure-core's response class reads."""

    def __init__(self, answer: Any) -> None:
        self.status = answer.status
        self.reason = reason_phrase(answer.status)
        self._headers = list(answer.headers.multi_items())
        self._body = answer.body

    def getheaders(self) -> list[tuple[str, str]]:
        return self._headers

    def read(self) -> bytes:
        return self._body
