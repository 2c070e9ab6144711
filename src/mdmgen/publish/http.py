"""The one HTTP layer: every publisher that speaks HTTP (Jamf now, Intune next) and preflight's
HTTP checks go through it, so pooling, proxies, TLS, error pages and retries behave the same
everywhere and are fixed in one place.

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
* **One-line errors.** Transport failures (timeouts, refused or dropped connections, DNS, TLS, a
  proxy that refuses) become :class:`TransportFailure`; an HTML page or a truncated body where
  JSON or XML was expected becomes :class:`UnexpectedAnswer`. Both are RemoteErrors (exit 7).
* **One retry policy** (:class:`RetryPolicy`, on :func:`mdmgen.publish.base.retry`): 429 and 503
  wait what ``Retry-After`` says (seconds or an HTTP date); other 5xx, timeouts and dropped
  connections back off exponentially with jitter; every wait is capped and the number of
  attempts is bounded. An error that already went through the policy is marked ``exhausted``
  and never retried again by an outer caller, so retries never nest.
* **Secrets.** httpx and httpcore log request and response headers at debug level; their
  loggers are held at WARNING, so ``-vv`` shows this layer's own one-line request log, which
  carries no header, body or query string.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import re
import socket
import ssl
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from .base import RemoteError, Transient, copy_with_message, retry

T = TypeVar("T")

DEFAULT_ATTEMPTS = 5
DEFAULT_BASE_DELAY = 0.5
DEFAULT_MAX_DELAY = 60.0
"""The longest single wait, a server's Retry-After included."""
RETRY_AFTER_STATUSES = (429, 503)
PERMANENT_5XX = (501, 505)
"""Not Implemented and HTTP Version Not Supported: asking again gets the same answer."""
TRUSTSTORE_VARIABLE = "MDMGEN_TRUSTSTORE"

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

    ``kind`` is one of timeout, proxy, tls, dns, connect, dropped, protocol, request, other;
    ``transient`` says whether trying again can help; ``hint`` is what the user can do, kept
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


def proxy_for(url: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The proxy a request to ``url`` goes through, without any user:password, or None.

    Used for messages only; httpx itself applies the variables. Plain http never uses one."""
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
    shown = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
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

    Retried: 429 and 503 (honouring Retry-After), other 5xx except 501/505, timeouts, dropped
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
    host: str = field(init=False)
    proxy: str | None = field(init=False)
    """The proxy requests go through (for messages), or None."""
    _client: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        self.host = parts.hostname or ""
        secure = parts.scheme == "https"
        self.proxy = proxy_for(self.base_url) if self.use_proxy else None
        self._client = httpx.Client(
            base_url=self.base_url,
            verify=(self.ssl_context or tls_context()) if secure else True,
            limits=httpx.Limits(max_connections=self.max_connections,
                                max_keepalive_connections=self.max_connections),
            timeout=httpx.Timeout(self.timeout),
            trust_env=secure and self.use_proxy,  # proxy variables; plain http (loopback only) never uses one
            headers={"User-Agent": self.user_agent},
            follow_redirects=False,
        )

    def send(self, method: str, path: str, *, doing: str, headers: Mapping[str, str] | None = None,
             content: bytes | None = None) -> Response:
        """One HTTP exchange (no retry); a Response whatever its status, or TransportFailure."""
        started = time.monotonic()
        try:
            reply = self._client.request(method, path, headers=dict(headers or {}), content=content)
        except httpx.HTTPError as exc:
            raise self._failure(exc, doing) from None
        self.log.debug("%s%s %s -> %d in %.3f s", self.log_prefix, method, path.split("?")[0], reply.status_code,
                       time.monotonic() - started)
        return Response(reply.status_code, reply.headers, reply.content, doing, self.service)

    def close(self) -> None:
        self._client.close()

    def _failure(self, exc: httpx.HTTPError, doing: str) -> TransportFailure:
        where = f"{self.service} at {self.base_url}"
        via = f" through the proxy {self.proxy}" if self.proxy else ""
        cause = _root_cause(exc)
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
        if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError):
            kind = "protocol" if isinstance(exc, httpx.RemoteProtocolError) else "dropped"
            return TransportFailure(f"{where} dropped the connection or sent an incomplete answer while {doing}: "
                                    f"{_first_line(exc)}", kind=kind, transient=True)
        if isinstance(exc, httpx.LocalProtocolError):  # e.g. a header value HTTP does not allow
            return TransportFailure(f"the request to {where} could not be sent while {doing}: {_first_line(exc)}",
                                    kind="request", transient=False)
        return TransportFailure(f"{where} could not be talked to while {doing}: {_first_line(exc)}",
                                kind="other", transient=False)


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception httpx and httpcore wrapped (an ssl or socket error, usually)."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    return exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
