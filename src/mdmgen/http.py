"""The one HTTP layer: every publisher that speaks HTTP (Jamf, Intune), preflight's HTTP checks and
the adoption report go through it, so pooling, proxies, TLS, error pages and retries behave the
same everywhere and are fixed in one place. It sits below all of them (of mdmgen it imports only
:mod:`mdmgen.remote`), so talking HTTP never loads a publisher.

It is a thin layer over httpx (a maintained, thread-safe client) that adds what httpx leaves
to its caller:

* **Connections.** One :class:`Connection` per server and run: a bounded pool of keep-alive
  connections (Jamf's guidance is at most 5) and one cookie jar, so a load balancer's sticky
  session cookie (Domain, Path and expiry honoured) keeps every request on one node.
* **Proxies.** ``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` are honoured as curl, pip and git
  honour them (httpx's ``trust_env``). Plain http is only ever allowed to loopback
  (:mod:`mdmgen.endpoints`), and such a request never goes through a proxy: the proxy would see
  the credentials in clear, and could not reach this machine's loopback anyway.
* **TLS.** Certificates are checked against the system's CAs, or ``SSL_CERT_FILE`` /
  ``SSL_CERT_DIR`` when set (httpx's own default would be certifi's bundle, which ignores a
  private CA the system trusts). ``MDMGEN_TRUSTSTORE=1`` uses the operating system's trust store
  instead (the ``truststore`` package: the macOS keychain, the Windows certificate store).
* **Deadlines.** ``timeout`` is a deadline for the whole request: pool wait, connect, TLS
  handshake, sending, the headers and the body. httpx's own timeouts bound each socket
  operation, so a server or proxy that drips a byte every few seconds would never time out;
  here every connect, read, write and handshake of the request's connection gets at most the
  time left (:class:`DeadlineBackend`, an httpcore network backend), and none starts past it.
  Name resolution is the system resolver's (bounded by its own timeout and attempts).
* **Size caps.** An answer is read as a stream and given up past ``max_body`` bytes (after
  decoding, so a compressed bomb is cut too); headers are capped by h11 at 100 KiB. Either is a
  one-line :class:`TransportFailure` naming the server, never retried.
* **One-line errors.** Transport failures (timeouts, refused or dropped connections, DNS, TLS, a
  proxy that refuses) become :class:`TransportFailure`; an HTML page or a truncated body where
  JSON or XML was expected becomes :class:`UnexpectedAnswer`. Both are RemoteErrors (exit 7).
* **One retry policy** (:class:`RetryPolicy`, on :func:`mdmgen.remote.retry`): 429, 503 and
  529 (Anthropic's overloaded) wait what ``Retry-After`` says (seconds or an HTTP date); other 5xx, timeouts and dropped
  connections back off exponentially with jitter; every wait is capped and the number of
  attempts is bounded. An error that already went through the policy is marked ``exhausted``
  and never retried again by an outer caller, so retries never nest.
* **A transport seam.** ``Connection(transport=...)`` answers from any httpx transport instead of
  the network (tests script their answers with ``httpx.MockTransport``); the deadline and the size
  caps still hold (:class:`_DeadlineTransport`). Production never passes one.
* **Secrets.** httpx and httpcore log request and response headers at debug level; their
  loggers are held at WARNING, so ``-vv`` shows this layer's own one-line request log, which
  carries no header, body or query string.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import os
import random
import re
import socket
import ssl
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpcore
import httpx

from .remote import RemoteError, Transient, copy_with_message, retry

T = TypeVar("T")

DEFAULT_ATTEMPTS = 5
DEFAULT_BASE_DELAY = 0.5
DEFAULT_MAX_DELAY = 60.0
"""The longest single wait, a server's Retry-After included."""
RETRY_AFTER_STATUSES = (429, 503, 529)
"""Too Many Requests, Service Unavailable, and Anthropic's Overloaded (529, analytics-api.md §5): wait
what ``Retry-After`` says, when it says."""
PERMANENT_5XX = (501, 505)
"""Not Implemented and HTTP Version Not Supported: asking again gets the same answer."""
TRUSTSTORE_VARIABLE = "MDMGEN_TRUSTSTORE"
MAX_BODY = 32 << 20
"""The largest answer read by default: a page of Jamf or Graph JSON is a few MiB at most."""
MAX_SMALL_BODY = 1 << 20
"""For answers that are small by nature: a token, an OTLP export's reply."""
MAX_HEADERS = 100 << 10
"""httpcore's h11 limit on the response line and headers together (``MAX_INCOMPLETE_EVENT_SIZE``)."""
WRITE_PIECE = 64 << 10
"""A request body is sent in pieces this large, the deadline checked before each."""

for _library in ("httpx", "httpcore"):  # their debug logs carry Authorization and Set-Cookie headers
    logging.getLogger(_library).setLevel(logging.WARNING)


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class HTTPStatusError(RemoteError):
    """The server answered with an error status. ``reason`` is the one line read from the error
    body; ``retry_after`` the seconds its ``Retry-After`` header asked for, if any."""

    def __init__(self, message: str, status: int = 0, reason: str = "", retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after
        self.exhausted = False


class TransportFailure(RemoteError):
    """No usable HTTP answer: timeout, refused or dropped connection, DNS, TLS, proxy.

    ``kind`` is one of timeout, proxy, tls, dns, connect, dropped, protocol, too large, request
    and other; ``transient`` says whether trying again can help; ``hint`` is what the user can do, kept
    last in the message even after ``(gave up after N attempts)`` is added."""

    def __init__(self, message: str, *, kind: str, transient: bool, hint: str = ""):
        super().__init__(message)
        self.kind = kind
        self.transient = transient
        self.hint = hint
        self.exhausted = False

    def __str__(self) -> str:
        return self.with_progress(f"{self.args[0]}; {self.hint}" if self.hint else str(self.args[0]))


class UnexpectedAnswer(RemoteError):
    """A 2xx answer that is not what was asked for: an HTML page (a proxy or a sign-in portal)
    where JSON or XML was expected, or a body that does not parse (truncated)."""


# --- TLS and proxies ---------------------------------------------------------------------------


def tls_context() -> ssl.SSLContext:
    """The system's trusted CAs (``SSL_CERT_FILE``/``SSL_CERT_DIR`` honoured by OpenSSL), or the
    operating system's trust store with ``MDMGEN_TRUSTSTORE=1``."""
    if os.environ.get(TRUSTSTORE_VARIABLE, "") not in ("", "0"):
        try:
            import truststore
        except ImportError:
            raise RemoteError(f"{TRUSTSTORE_VARIABLE} is set but the truststore package is not installed: "
                              "pip install 'mdmgen[truststore]', or unset it") from None
        return truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return ssl.create_default_context()


def proxy_url(url: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The proxy a request to ``url`` goes through, as configured (credentials included), or None.

    ``https_proxy``/``HTTPS_PROXY``, else ``all_proxy``/``ALL_PROXY``, unless ``NO_PROXY`` names
    the host: urllib's rules, which httpx applies too. Plain http never uses one. A Connection
    talks to one server, so this one answer routes all its requests, and its messages name the
    same proxy the requests really went through."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        return None
    environ = os.environ if environ is None else environ
    # https_proxy wins over HTTPS_PROXY, as in urllib (whose rules httpx applies): lower case last.
    proxies = {key.lower()[:-6]: value for key, value in sorted(environ.items(), key=lambda kv: kv[0].islower())
               if key.lower().endswith("_proxy") and value}
    proxy = proxies.get("https") or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def proxy_for(url: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The proxy a request to ``url`` goes through, without any user:password, or None (for messages)."""
    proxy = proxy_url(url, environ)
    return None if proxy is None else proxy_for_display(proxy)


# --- deadlines ---------------------------------------------------------------------------------


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, with a deadline for the request the calling thread is sending.

    httpcore gives every socket operation its own timeout; under :meth:`deadline` each connect,
    TLS handshake, read and write gets ``min(its timeout, the time left)`` and none starts once
    the deadline has passed (it raises httpcore's timeout, which httpx maps to its own). A read
    returns as soon as any byte arrives, so a drip costs at most the deadline. Python's TLS
    handshake honours its socket timeout as a deadline across all its steps. The deadline is
    per thread (a Connection is shared by worker threads) and read at each operation, so a
    pooled connection reused by another request obeys that request's deadline. ``clock`` is
    injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 inner: httpcore.NetworkBackend | None = None) -> None:
        self.clock = clock
        self._inner = inner or httpcore.SyncBackend()
        self._local = threading.local()

    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Everything this thread sends or receives inside ends within ``seconds``."""
        previous = getattr(self._local, "at", None)
        self._local.at = self.clock() + seconds
        try:
            yield
        finally:
            self._local.at = previous

    def left(self, timeout: float | None, expired: type[Exception]) -> float | None:
        """``timeout`` cut to the time left before the deadline (unchanged outside one); ``expired``
        is raised once it has passed."""
        at = getattr(self._local, "at", None)
        if at is None:
            return timeout
        left = at - self.clock()
        if left <= 0:
            raise expired("the deadline of the request has passed")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, self.left(timeout, httpcore.ConnectTimeout), local_address,
                                         socket_options)
        return _DeadlineStream(stream, self)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:  # pragma: no cover
        raise httpcore.ConnectError("unix sockets are not used")

    def sleep(self, seconds: float) -> None:  # pragma: no cover - httpcore's retries are off
        self._inner.sleep(seconds)


class SlowAnswer(httpcore.ReadTimeout):
    """The deadline passed after part of the answer had arrived: the server is up but sends too
    slowly (a drip). Unlike a server that says nothing at all, asking again cannot help, so it is
    not retried and a run ends within about ``--timeout`` of it."""


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: DeadlineBackend) -> None:
        self._inner = inner
        self._backend = backend
        self._answered = False
        """Whether any byte of the current answer arrived (reset by each request's write)."""

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            data = self._inner.read(max_bytes, self._backend.left(timeout, httpcore.ReadTimeout))
        except httpcore.ReadTimeout as exc:
            if self._answered:
                raise SlowAnswer(str(exc)) from exc
            raise
        self._answered = self._answered or bool(data)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._answered = False
        for start in range(0, len(buffer), WRITE_PIECE):  # a peer that reads slowly stops at the deadline
            self._inner.write(buffer[start:start + WRITE_PIECE], self._backend.left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        # The sync backend sets the socket timeout and shakes hands: one deadline for the handshake.
        left = self._backend.left(timeout, httpcore.ConnectTimeout)
        stream = self._inner.start_tls(ssl_context, server_hostname, left)
        return _DeadlineStream(stream, self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Transport(httpx.HTTPTransport):
    """httpx's transport with the deadline backend underneath.

    ``httpx.HTTPTransport`` builds its httpcore pool without a way to pass a network backend, so
    the same pool (or proxy pool) is built here with httpcore's public constructor; everything
    else (request and response conversion, exception mapping) is httpx's own."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None, limits: httpx.Limits, proxy: str | None,
                 backend: DeadlineBackend) -> None:
        pool_options: dict[str, Any] = {
            "ssl_context": ssl_context, "max_connections": limits.max_connections,
            "max_keepalive_connections": limits.max_keepalive_connections,
            "keepalive_expiry": limits.keepalive_expiry, "network_backend": backend}
        if proxy is None:
            self._pool = httpcore.ConnectionPool(**pool_options)
            return
        scheme = urlsplit(proxy).scheme
        if scheme not in ("http", "https"):  # before httpx reads it: its errors repeat the URL, password too
            raise RemoteError(f"the proxy {proxy_for_display(proxy)} is a {scheme} proxy; mdmgen goes through "
                              "http or https proxies only: check HTTPS_PROXY and ALL_PROXY")
        configured = httpx.Proxy(url=proxy)
        self._pool = httpcore.HTTPProxy(
            proxy_url=httpcore.URL(scheme=configured.url.raw_scheme, host=configured.url.raw_host,
                                   port=configured.url.port, target=configured.url.raw_path),
            proxy_auth=configured.raw_auth, proxy_headers=configured.headers.raw,
            proxy_ssl_context=configured.ssl_context, **pool_options)


class _DeadlineTransport(httpx.BaseTransport):
    """A given transport under the request's deadline, as :class:`DeadlineBackend` puts the
    sockets under it: no request starts once it has passed, an answer whose headers come after it
    is a timeout (retried), and one whose body is still arriving after it is a slow answer (not
    retried). The deadline is checked between the pieces the transport hands over, so a scripted
    answer that moves the injected clock shows exactly what a drip over a socket would."""

    def __init__(self, inner: httpx.BaseTransport, backend: DeadlineBackend) -> None:
        self._inner = inner
        self._backend = backend

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._check(httpx.ConnectTimeout, request)
        response = self._inner.handle_request(request)
        try:
            self._check(httpx.ReadTimeout, request)
        except httpx.ReadTimeout:
            response.close()
            raise
        return httpx.Response(response.status_code, headers=response.headers, request=request,
                              stream=_DeadlineBody(response, request, self._backend), extensions=response.extensions)

    def _check(self, expired: type[httpx.TimeoutException], request: httpx.Request) -> None:
        try:
            self._backend.left(None, httpcore.ReadTimeout)
        except httpcore.ReadTimeout as exc:
            raise expired(str(exc), request=request) from exc

    def close(self) -> None:
        self._inner.close()


class _DeadlineBody(httpx.SyncByteStream):
    def __init__(self, response: httpx.Response, request: httpx.Request, backend: DeadlineBackend) -> None:
        self._response = response
        self._request = request
        self._backend = backend

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._response.stream:
            try:
                self._backend.left(None, SlowAnswer)
            except SlowAnswer as exc:  # part of the answer came, the rest too late: as a socket's drip
                raise httpx.ReadTimeout(str(exc), request=self._request) from exc
            yield chunk

    def close(self) -> None:
        self._response.close()


def proxy_for_display(proxy: str) -> str:
    shown = urlsplit(proxy)
    return f"{shown.scheme}://{shown.hostname}" + (f":{shown.port}" if shown.port else "")


# --- answers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    """A complete HTTP answer, and what was being done, for one-line messages."""

    status: int
    headers: httpx.Headers
    body: bytes
    doing: str = ""
    server: str = ""

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    def retry_after(self, now: float) -> float | None:
        """Seconds the ``Retry-After`` header asks for (a number or an HTTP date), or None."""
        return parse_retry_after(self.headers.get("Retry-After"), now=now)

    def json(self) -> Any:
        """The JSON body; UnexpectedAnswer (one line) for an HTML page or JSON that does not parse."""
        self._refuse_html("JSON")
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
            raise UnexpectedAnswer(f"{self.server} sent an answer that is not valid JSON while {self.doing} "
                                   f"({len(self.body)} bytes of {self.content_type or 'no type'}; "
                                   "truncated?)") from None

    def xml(self) -> ET.Element:
        """The XML body; UnexpectedAnswer (one line) for an HTML page or XML that does not parse."""
        self._refuse_html("XML")
        try:
            return ET.fromstring(self.body)
        except ET.ParseError:
            raise UnexpectedAnswer(f"{self.server} sent an answer that is not valid XML while {self.doing} "
                                   f"({len(self.body)} bytes; truncated?)") from None

    def _refuse_html(self, wanted: str) -> None:
        head = self.body[:512].lstrip().lower()
        if "html" in self.content_type.lower() or head.startswith((b"<!doctype html", b"<html")):
            title = re.search(rb"<title[^>]*>(.*?)</title>", self.body[:4096], re.S | re.I)
            named = " ".join(title.group(1).decode("utf-8", "replace").split())[:80] if title else ""
            raise UnexpectedAnswer(
                f"{self.server} answered with an HTML page{f' ({named!r})' if named else ''} instead of "
                f"{wanted} while {self.doing}: is a proxy or a sign-in portal in the way? Check the URL, "
                "and HTTPS_PROXY/NO_PROXY")


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """``Retry-After`` in seconds: delay-seconds, or an HTTP date minus ``now`` (wall clock,
    seconds since the epoch); never negative. None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT
        return None
    return max(0.0, when.timestamp() - now)


# --- the retry policy --------------------------------------------------------------------------


def classify(exc: BaseException, *, retry_404: bool = False) -> Transient | None:
    """Whether a failure is worth another attempt, and how long the server asked to wait.

    Retried: 429, 503 and 529 (honouring Retry-After), other 5xx except 501/505, timeouts, dropped
    connections, and a 404 only when the caller knows the object was just created (Jamf Cloud's
    cluster lag). Never: 400, 401, 403, 404, 409 and the like, TLS, DNS, a refused connection,
    and anything that already went through a retry loop (``exhausted``)."""
    if getattr(exc, "exhausted", False):
        return None
    if isinstance(exc, HTTPStatusError):
        if exc.status in RETRY_AFTER_STATUSES:
            return Transient(after=exc.retry_after)
        if 500 <= exc.status < 600 and exc.status not in PERMANENT_5XX:
            return Transient()
        if retry_404 and exc.status == 404:
            return Transient()
        return None
    if isinstance(exc, TransportFailure) and exc.transient:
        return Transient()
    return None


@dataclass
class RetryPolicy:
    """How often and how long to try. ``sleep`` and ``jitter`` are injectable for tests."""

    attempts: int = DEFAULT_ATTEMPTS
    base_delay: float = DEFAULT_BASE_DELAY
    max_delay: float = DEFAULT_MAX_DELAY
    sleep: Callable[[float], None] = time.sleep
    jitter: Callable[[], float] = random.random

    def run(self, call: Callable[[], T], *, retry_404: bool = False) -> T:
        """``call()`` under the policy. A failure that was retried until the attempts ran out is
        raised with ``(gave up after N attempts)`` in its message, its attributes kept, and
        marked ``exhausted``; any other failure is raised unchanged."""
        try:
            return retry(call, classify=lambda exc: classify(exc, retry_404=retry_404), attempts=self.attempts,
                         base_delay=self.base_delay, max_delay=self.max_delay, sleep=self.sleep,
                         jitter=self.jitter)
        except (HTTPStatusError, TransportFailure) as exc:
            if classify(exc, retry_404=retry_404) is None or self.attempts < 2:
                raise
            raise gave_up(exc, self.attempts) from None


def gave_up(exc: HTTPStatusError | TransportFailure, attempts: int) -> HTTPStatusError | TransportFailure:
    """A copy of ``exc`` (same class, same attributes) that says the attempts ran out."""
    final = copy_with_message(exc, f"{exc.args[0]} (gave up after {attempts} attempts)")
    final.exhausted = True
    return final


# --- the connection ----------------------------------------------------------------------------


@dataclass
class Connection:
    """One run's HTTP client for one server: pool, cookie jar, proxies, TLS and one-line errors.

    ``service`` names the server in messages ("Jamf Pro"); ``timeout_hint`` is appended to a
    timeout's message ("try a larger --timeout"). Thread-safe, as httpx's Client is.
    """

    base_url: str
    service: str
    max_connections: int
    timeout: float
    user_agent: str
    log: logging.Logger
    timeout_hint: str = ""
    log_prefix: str = ""
    ssl_context: ssl.SSLContext | None = None
    use_proxy: bool = True
    """False: connect directly whatever the proxy variables say (preflight probes the direct path)."""
    max_body: int = MAX_BODY
    """The largest answer read (``send`` can ask for less); larger is a one-line failure."""
    clock: Callable[[], float] = time.monotonic
    """The deadlines' clock; tests move it instead of waiting."""
    transport: httpx.BaseTransport | None = field(default=None, repr=False)
    """Answers requests instead of the network (tests give an ``httpx.MockTransport``); None, the
    default and the only production choice, is the deadline-aware socket stack. The deadline and
    the size caps hold either way (:class:`_DeadlineTransport`); proxies and TLS are then the
    transport's business."""
    host: str = field(init=False)
    proxy: str | None = field(init=False)
    """The proxy requests go through (for messages), or None."""
    backend: DeadlineBackend = field(init=False, repr=False)
    _client: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        self.host = parts.hostname or ""
        secure = parts.scheme == "https"
        # plain http (loopback only) never goes through a proxy
        proxy = proxy_url(self.base_url) if self.use_proxy and secure else None
        self.proxy = proxy_for_display(proxy) if proxy else None
        self.backend = DeadlineBackend(self.clock)
        transport: httpx.BaseTransport
        if self.transport is not None:
            self.proxy = None  # nothing goes through one: messages must not name it
            transport = _DeadlineTransport(self.transport, self.backend)
        else:
            limits = httpx.Limits(max_connections=self.max_connections,
                                  max_keepalive_connections=self.max_connections)
            transport = _Transport(ssl_context=(self.ssl_context or tls_context()) if secure else None,
                                   limits=limits, proxy=proxy, backend=self.backend)
        self._client = httpx.Client(
            base_url=self.base_url,
            transport=transport,
            timeout=httpx.Timeout(self.timeout),
            trust_env=False,  # the proxy is chosen above, from the same variables
            headers={"User-Agent": self.user_agent},
            follow_redirects=False,  # a redirect is an answer; the credentials never follow it elsewhere
        )

    def send(self, method: str, path: str, *, doing: str, headers: Mapping[str, str] | None = None,
             content: bytes | None = None, max_body: int | None = None) -> Response:
        """One HTTP exchange (no retry), all of it within ``timeout`` seconds; a Response whatever its
        status, or TransportFailure (a timeout, an answer larger than ``max_body``...)."""
        started = time.monotonic()
        cap = self.max_body if max_body is None else max_body
        try:
            with self.backend.deadline(self.timeout), \
                    self._client.stream(method, path, headers=dict(headers or {}), content=content) as reply:
                body = self._read(reply, cap, doing)
        except httpx.HTTPError as exc:
            raise self._failure(exc, doing) from None
        self.log.debug("%s%s %s -> %d in %.3f s", self.log_prefix, method, path.split("?")[0], reply.status_code,
                       time.monotonic() - started)
        return Response(reply.status_code, reply.headers, body, doing, self.service)

    def _read(self, reply: httpx.Response, cap: int, doing: str) -> bytes:
        """The body, decoded, read in chunks and given up as soon as it passes ``cap`` bytes."""
        declared = reply.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > cap and not reply.headers.get("Content-Encoding"):
            raise self._too_large(cap, doing)
        chunks: list[bytes] = []
        size = 0
        for chunk in reply.iter_bytes():
            size += len(chunk)
            if size > cap:
                raise self._too_large(cap, doing)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, cap: int, doing: str) -> TransportFailure:
        return TransportFailure(f"{self.service} at {self.base_url} sent an answer larger than {_size(cap)} while "
                                f"{doing}; it was not read further", kind="too large", transient=False)

    def close(self) -> None:
        self._client.close()

    def _failure(self, exc: httpx.HTTPError, doing: str) -> TransportFailure:
        where = f"{self.service} at {self.base_url}"
        via = f" through the proxy {self.proxy}" if self.proxy else ""
        cause = _root_cause(exc)
        if isinstance(exc, httpx.TimeoutException) and _caused_by(exc, SlowAnswer):
            return TransportFailure(f"{where} did not send its whole answer within {self.timeout:g} s while {doing} "
                                    "(it sends too slowly; not retried)", kind="timeout", transient=False,
                                    hint=self.timeout_hint)
        if isinstance(exc, httpx.TimeoutException):
            return TransportFailure(f"{where} did not answer within {self.timeout:g} s while {doing}",
                                    kind="timeout", transient=True, hint=self.timeout_hint)
        if isinstance(exc, httpx.ProxyError):
            return TransportFailure(f"the proxy {self.proxy or ''} refused to connect to {self.host} while {doing} "
                                    f"({_first_line(exc)}); check HTTPS_PROXY and NO_PROXY",
                                    kind="proxy", transient=False)
        if isinstance(cause, ssl.SSLCertVerificationError):
            return TransportFailure(f"TLS: the certificate of {self.host} is not trusted "
                                    f"({cause.verify_message or cause.reason}) while {doing}; to trust a private "
                                    f"CA, set SSL_CERT_FILE (or {TRUSTSTORE_VARIABLE}=1 for the system's store)",
                                    kind="tls", transient=False)
        if isinstance(cause, ssl.SSLError):
            return TransportFailure(f"TLS error talking to {self.host}{via} while {doing}: {cause.reason or cause}",
                                    kind="tls", transient=False)
        if isinstance(cause, socket.gaierror):
            return TransportFailure(f"cannot reach {self.base_url}{via} while {doing}: the name "
                                    f"{self.proxy or self.host} does not resolve", kind="dns", transient=False)
        if isinstance(exc, httpx.ConnectError):
            why = cause.strerror if isinstance(cause, OSError) and cause.strerror else _first_line(exc)
            dropped = isinstance(cause, ConnectionResetError | ConnectionAbortedError)
            return TransportFailure(f"cannot reach {self.base_url}{via} while {doing}: {why}",
                                    kind="dropped" if dropped else "connect", transient=dropped)
        if getattr(cause, "error_status_hint", None) == 431:  # h11: the headers passed MAX_HEADERS
            return TransportFailure(f"{where} sent response headers larger than {_size(MAX_HEADERS)} while {doing}",
                                    kind="too large", transient=False)
        if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError):
            kind = "protocol" if isinstance(exc, httpx.RemoteProtocolError) else "dropped"
            return TransportFailure(f"{where} dropped the connection or sent an incomplete answer while {doing}: "
                                    f"{_first_line(exc)}", kind=kind, transient=True)
        if isinstance(exc, httpx.LocalProtocolError):  # e.g. a header value HTTP does not allow
            return TransportFailure(f"the request to {where} could not be sent while {doing}: {_first_line(exc)}",
                                    kind="request", transient=False)
        return TransportFailure(f"{where} could not be talked to while {doing}: {_first_line(exc)}",
                                kind="other", transient=False)


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``exc`` or anything it wraps (httpx wraps httpcore's errors) is a ``kind``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception httpx and httpcore wrapped (an ssl or socket error, usually)."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    return exc


def _size(count: int) -> str:
    return f"{count >> 20} MiB" if count >= 1 << 20 else f"{count >> 10} KiB"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
