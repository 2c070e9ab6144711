"""The Microsoft Graph client: the token from azure-identity, requests on the shared HTTP layer.

Facts come from ``shared/reference/intune-graph.md`` (sections as ``§``). Transport, pooling,
proxies, TLS and the retry policy are :mod:`mdmgen.http`'s; what is Graph's own lives here:

* **The token** (§1.1, §1.2) comes from azure-identity, configured only by the standard ``AZURE_*``
  variables: ``EnvironmentCredential`` (a client secret or a certificate) or, when only
  ``AZURE_FEDERATED_TOKEN_FILE`` is given, ``WorkloadIdentityCredential`` (GitHub Actions OIDC).
  When ``AZURE_AUTHORITY_HOST`` is not a public Microsoft host, instance discovery is turned off,
  so no request goes to a public host (MSAL would otherwise ask login.microsoftonline.com first).
  The token library's requests go through mdmgen's HTTP layer (:mod:`.transport`), so they have
  the same deadline, size caps, proxies and TLS as Graph's; ``REQUESTS_CA_BUNDLE``, else
  ``SSL_CERT_FILE``, names the CAs it trusts (as ``requests`` would have it), so one private CA
  setting serves both. azure-identity renews a token ahead
  of its expiry; a 401 (expired early, revoked) gets a new credential, hence a new token, once.
* **Throttling** (§5.2): 429 and 503 wait ``Retry-After`` (the shared policy); writes are paced
  below Intune's budget (100 writes per 20 s per app) so a publish does not run into it at all.
* **Paging** (§5.3): ``@odata.nextLink`` is followed as given until absent, whatever the page
  size; a page can be empty. A next link to another host is refused: the token never leaves Graph.
* **``$batch``** (§5.4): at most 20 requests per batch; each inner answer is looked at on its
  own, and inner 429/503/5xx are sent again in a later batch after the wait they asked for.
* **Secrets**: the token, the client secret and the federated token never appear in a message
  or a log line (every message passes :meth:`GraphClient.redact`).
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ... import __version__
from ...endpoints import check_url as check_url_shared
from ...environment import HTTPX_CA, REQUESTS_CA, check_azure, check_network
from ...http import Connection, HTTPStatusError, Response, RetryPolicy, parse_retry_after, reason_phrase
from ...messages import redact, shorten
from ..base import RemoteError
from . import token_errors

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("mdmgen.publish.intune")
for _library in ("azure", "msal", "urllib3"):
    # azure-core logs request headers at INFO, azure-identity failures with tracebacks, MSAL token
    # cache details at DEBUG: none of it may reach -vv. Failures come back as one-line RemoteErrors.
    logging.getLogger(_library).setLevel(logging.CRITICAL)

DEFAULT_GRAPH_URL = "https://graph.microsoft.com"
DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
PUBLIC_AUTHORITIES = frozenset({"login.microsoftonline.com", "login.microsoftonline.us", "login.chinacloudapi.cn",
                                "login.microsoftonline.de"})
"""azure-identity's AzureAuthorityHosts: the public and sovereign clouds, where discovery is safe."""
SOVEREIGN_GRAPH = frozenset({"graph.microsoft.us", "dod-graph.microsoft.us", "microsoftgraph.chinacloudapi.cn"})
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
ENV_VARIABLES = ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
                 "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST")
MAX_BATCH = 20  # §5.4
GRAPH_ATTEMPTS = 8
"""Graph throttles in bursts (§5.2); a few more attempts than the shared default ride one out."""
WRITE_BUDGET = 90
WRITE_WINDOW = 20.0
"""Intune allows 100 writes per 20 s per app (§5.2); mdmgen keeps below it, leaving room for a retry."""
MAX_CONNECTIONS = 8
TIMEOUT = 60.0

_PERMISSIONS = (("deviceManagementScripts", "DeviceManagementConfiguration.ReadWrite.All"),
                ("deviceConfigurations", "DeviceManagementConfiguration.ReadWrite.All"),
                ("managedDevices", "DeviceManagementManagedDevices.Read.All"),
                ("memberOf", "GroupMember.Read.All"), ("groups", "GroupMember.Read.All"), ("users", "User.Read.All"))


def check_url(url: str) -> str:
    """The Graph base URL without a trailing slash; ValueError for the user (https, plain http only to
    loopback, no credentials, no path: the client adds ``/beta`` and ``/v1.0``)."""
    url = url.strip()
    check_url_shared(url, credentials_go="as the Graph access token")
    parts = urlsplit(url)
    if parts.query or parts.fragment or parts.path.strip("/"):
        raise ValueError("must be https://HOST[:PORT] without a path; the client adds /beta and /v1.0")
    return f"{parts.scheme}://{parts.netloc}"


def scope_for(graph_url: str) -> str:
    host = urlsplit(graph_url).hostname or ""
    return f"https://{host}/.default" if host in SOVEREIGN_GRAPH else GRAPH_SCOPE


class GraphError(HTTPStatusError):
    """Graph answered with an error status; ``code`` is the Graph error code (§5.1)."""

    def __init__(self, message: str, status: int = 0, reason: str = "", retry_after: float | None = None,
                 code: str = ""):
        super().__init__(message, status, reason, retry_after)
        self.code = code


def error_of(body: bytes) -> tuple[str, str]:
    """``(code, message)`` of a Graph error body (§5.1) or an OAuth one (§1.1); empty when unreadable.
    Whole, on one line: the caller redacts it before it cuts it."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested thousands deep
        return "", ""
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("code") or ""), " ".join(str(error.get("message") or "").split())
    if isinstance(error, str):
        return error, " ".join(str(data.get("error_description") or "").split())
    return "", ""


def credential_factory(environ: Mapping[str, str] | None = None, *, timeout: float = TIMEOUT) -> Callable[[], Any]:
    """What makes the azure-identity credential, built on demand (and again after a 401). Its
    requests go through :class:`~.transport.BoundedTransport`: each is over within ``timeout`` seconds.

    Malformed values are refused now (EnvironmentValueError, a usage error); missing credentials
    when the credential is first needed (a RemoteError naming the variables), so a publish whose
    output folder cannot be published (no ``intune/teams.json``) says that first."""
    env = os.environ if environ is None else environ
    check_azure(env)  # EnvironmentValueError naming the variable azure-identity would refuse
    check_network(env, ca_files=(*HTTPX_CA, *REQUESTS_CA))
    missing = [name for name in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID") if not env.get(name)]
    ways = ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_FEDERATED_TOKEN_FILE")
    absent = None
    if missing or not any(env.get(name) for name in ways):
        absent = RemoteError(
            f"no Azure credentials: {' and '.join(missing) or 'AZURE_TENANT_ID and AZURE_CLIENT_ID are set, but'} "
            f"{'not set; also set' if missing else 'set'} one of {', '.join(ways)} (an Entra app registration's "
            "secret, certificate, or a workload identity federated token); mdmgen reads them only from the environment")
    authority = env.get("AZURE_AUTHORITY_HOST") or DEFAULT_AUTHORITY
    host = urlsplit(authority if "://" in authority else f"https://{authority}").hostname or ""
    kwargs: dict[str, Any] = {}
    if host not in PUBLIC_AUTHORITIES:
        kwargs["disable_instance_discovery"] = True  # no request to a public Microsoft host
    ca_bundle = env.get("REQUESTS_CA_BUNDLE") or env.get("SSL_CERT_FILE")
    federated_only = env.get("AZURE_FEDERATED_TOKEN_FILE") and not (
        env.get("AZURE_CLIENT_SECRET") or env.get("AZURE_CLIENT_CERTIFICATE_PATH"))

    def make() -> Any:
        if absent is not None:
            raise absent
        from azure.identity import EnvironmentCredential, WorkloadIdentityCredential

        from .transport import BoundedTransport

        transport = BoundedTransport(timeout=timeout, ssl_context=_ca_context(ca_bundle))
        if federated_only:
            return WorkloadIdentityCredential(**kwargs, transport=transport)
        return EnvironmentCredential(**kwargs, transport=transport)

    return make


def _ca_context(ca_bundle: str | None) -> ssl.SSLContext | None:
    """Trust only ``ca_bundle`` (a file or a folder of CAs, as ``requests`` reads it); None: the HTTP
    layer's default (the system's CAs, or the OS trust store with ``MDMGEN_TRUSTSTORE=1``)."""
    if not ca_bundle:
        return None
    try:
        if os.path.isdir(ca_bundle):
            return ssl.create_default_context(capath=ca_bundle)
        return ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise RemoteError(f"the CA bundle {ca_bundle} (REQUESTS_CA_BUNDLE or SSL_CERT_FILE) cannot be read: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None


def secrets_of(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Values that must never be printed: the client secret and the federated token itself."""
    env = os.environ if environ is None else environ
    found = [env.get("AZURE_CLIENT_SECRET", ""), env.get("AZURE_CLIENT_CERTIFICATE_PASSWORD", "")]
    token_file = env.get("AZURE_FEDERATED_TOKEN_FILE")
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as handle:
                found.append(handle.read(64 << 10).strip())
        except OSError:
            pass
    return tuple(value for value in found if len(value) >= 4)


@dataclass(frozen=True)
class BatchAnswer:
    """One inner answer of a ``$batch``: its status and JSON body (None when empty)."""

    status: int
    body: Any


class GraphClient:
    """Talks to Microsoft Graph for one run. Thread-safe (the publisher writes from a few workers).

    ``clock`` and ``sleep`` are injectable so tests move time instead of waiting; ``write_budget``
    writes per ``write_window`` seconds are never exceeded by this client.
    """

    def __init__(self, graph_url: str, credential: Callable[[], Any], *, secrets: tuple[str, ...] = (),
                 attempts: int = GRAPH_ATTEMPTS, max_connections: int = MAX_CONNECTIONS, timeout: float = TIMEOUT,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, write_budget: int = WRITE_BUDGET,
                 write_window: float = WRITE_WINDOW, transport: httpx.BaseTransport | None = None) -> None:
        self.graph_url = check_url(graph_url)
        self.scope = scope_for(self.graph_url)
        self._make_credential = credential
        self._credential: Any = None
        self._secrets = secrets
        self._spent: set[str] = set()
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock
        self._policy = RetryPolicy(attempts=attempts, sleep=sleep)
        self._http = Connection(self.graph_url, service="Microsoft Graph", max_connections=max_connections,
                                timeout=timeout, user_agent=f"mdmgen/{__version__}", log=log, log_prefix="graph: ",
                                transport=transport)
        self._token_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._writes: deque[float] = deque()
        self.write_budget = write_budget
        self.write_window = write_window
        self.writes = 0
        """Writes sent (POST, PATCH, DELETE, ``$batch`` excluded): what "zero writes" is counted by."""
        self.tokens = 0

    # -- requests --

    def request(self, method: str, path: str, *, doing: str, body: Any = None) -> Response:
        """One authorised request under the retry policy: the 2xx Response, or RemoteError (GraphError
        for an error status) with one line saying what was being done. ``path`` is ``/beta/...`` or
        ``/v1.0/...``, or a next link Graph gave."""
        target = self._relative(path)
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode("utf-8")
        headers = {"Accept": "application/json"}
        if content is not None:
            headers["Content-Type"] = "application/json"
        counts = method in ("POST", "PATCH", "PUT", "DELETE") and not target.endswith("/$batch")

        def attempt() -> Response:
            if counts:
                self._pace()
            token = self._token()
            response = self._http.send(method, target, doing=doing, content=content,
                                       headers={**headers, "Authorization": f"Bearer {token}"})
            if response.status == 401:  # expired before its time, or revoked: a new token, once
                log.info("graph: the access token was refused (401); getting a new one")
                token = self._token(renew=True)
                response = self._http.send(method, target, doing=doing, content=content,
                                           headers={**headers, "Authorization": f"Bearer {token}"})
            if not 200 <= response.status < 300:
                raise self._error(method, target, response)
            return response

        response = self._policy.run(attempt)
        if counts:
            self.writes += 1
        return response

    def get_json(self, path: str, *, doing: str) -> Any:
        data = self.request("GET", path, doing=doing).json()
        if not isinstance(data, dict):
            raise RemoteError(f"Microsoft Graph sent an unexpected answer while {doing}")
        return data

    def pages(self, path: str, *, doing: str) -> Iterator[dict[str, Any]]:
        """Every item of a collection, following ``@odata.nextLink`` until it is absent (§5.3)."""
        url: str | None = path
        while url:
            data = self.get_json(url, doing=doing)
            values = data.get("value")
            if not isinstance(values, list):
                raise RemoteError(f"Microsoft Graph sent a collection without 'value' while {doing}")
            yield from (v for v in values if isinstance(v, dict))
            link = data.get("@odata.nextLink")
            url = link if isinstance(link, str) and link else None

    def batch(self, version: str, urls: Mapping[str, str], *, doing: str) -> dict[str, BatchAnswer]:
        """GET each relative url in ``urls`` (by id) through ``$batch``, 20 at a time (§5.4). Inner
        429/503/5xx are sent again after the longest wait they asked for, a bounded number of
        times; every other inner answer (200, 404, 403...) is returned for the caller to judge."""
        answers: dict[str, BatchAnswer] = {}
        todo = dict(urls)
        for attempt in range(self._policy.attempts):
            if not todo:
                break
            waits: list[float] = []
            retry: dict[str, str] = {}
            ids = list(todo)
            for start in range(0, len(ids), MAX_BATCH):
                chunk = ids[start:start + MAX_BATCH]
                body = {"requests": [{"id": key, "method": "GET", "url": todo[key]} for key in chunk]}
                data = self.request("POST", f"/{version}/$batch", body=body, doing=doing).json()
                responses = data.get("responses") if isinstance(data, dict) else None
                seen = set()
                for inner in responses if isinstance(responses, list) else []:
                    key = str(inner.get("id")) if isinstance(inner, dict) else ""
                    if key not in chunk:
                        continue
                    seen.add(key)
                    status = int(inner.get("status") or 0)
                    if status == 429 or (500 <= status < 600 and status not in (501, 505)):
                        retry[key] = todo[key]
                        headers = inner.get("headers") if isinstance(inner.get("headers"), dict) else {}
                        after = {k.lower(): v for k, v in headers.items()}.get("retry-after")
                        wait = parse_retry_after(str(after), now=self._wall_clock()) if after is not None else None
                        waits.append(wait or 0.0)
                    else:
                        answers[key] = BatchAnswer(status, inner.get("body"))
                for key in set(chunk) - seen:  # not answered at all: ask again
                    retry[key] = todo[key]
            todo = retry
            if todo and attempt < self._policy.attempts - 1:
                longest = max(waits or [0.0])
                self._sleep(min(60.0, max(longest, self._policy.base_delay * 2 ** attempt)))
        if todo:
            raise RemoteError(f"Microsoft Graph kept throttling {len(todo)} request(s) inside $batch while {doing} "
                              f"(gave up after {self._policy.attempts} attempts)")
        return answers

    def close(self) -> None:
        self._http.close()

    def redact(self, text: str) -> str:
        return redact(text, (*self._secrets, *self._spent))

    def _first_line(self, text: str) -> str:
        """The first line of a library's message, redacted before it is cut (never part of a secret)."""
        lines = text.strip().splitlines()
        return shorten(lines[0], 300, (*self._secrets, *self._spent)) if lines else ""

    # -- internals --

    def _relative(self, path: str) -> str:
        if path.startswith(("https://", "http://")):
            if not path.startswith(self.graph_url + "/"):
                raise RemoteError("Microsoft Graph sent a next link to another host; it was not followed, so the "
                                  "access token stays with Graph")
            return path[len(self.graph_url):]
        return path

    def _pace(self) -> None:
        """Wait until a write fits in the budget (a sliding window on ``clock``)."""
        with self._write_lock:
            while True:
                now = self._clock()
                while self._writes and self._writes[0] <= now - self.write_window:
                    self._writes.popleft()
                if len(self._writes) < self.write_budget:
                    self._writes.append(now)
                    return
                wait = self._writes[0] + self.write_window - now
                log.info("graph: pacing writes below Intune's budget; waiting %.1f s", wait)
                self._sleep(max(wait, 0.01))

    def _token(self, *, renew: bool = False) -> str:
        from azure.core.exceptions import AzureError, ClientAuthenticationError

        with self._token_lock:
            if renew or self._credential is None:
                self._credential = self._make_credential()
            try:
                token = self._credential.get_token(self.scope).token
            except (ClientAuthenticationError, AzureError, ValueError, OSError) as exc:
                # DNS, TLS, proxy, connection and a real refusal each get their own words (token_errors)
                text = str(exc.message if isinstance(exc, ClientAuthenticationError) else exc)
                reason = self._first_line(text.removeprefix("Authentication failed: ")) or type(exc).__name__
                authority = os.environ.get("AZURE_AUTHORITY_HOST") or DEFAULT_AUTHORITY
                raise RemoteError(token_errors.describe(
                    exc, authority if "://" in authority else f"https://{authority}", reason)) from None
            if token not in self._spent:
                self._spent.add(token)
                self.tokens += 1
                log.info("graph: obtained an access token")
            return token

    def _error(self, method: str, path: str, response: Response) -> GraphError:
        code, message = error_of(response.body)
        reason = shorten(f"{code}: {message}" if code and message else code or message, 200,
                         (*self._secrets, *self._spent))  # redacted before it is cut
        text = f"Microsoft Graph answered {response.status} {reason_phrase(response.status)} while {response.doing}"
        if response.status == 403:
            needed = next((perm for part, perm in _PERMISSIONS if part in path), "")
            text += (f": the app registration needs the application permission {needed} (admin consent), "
                     "and the tenant an Intune licence" if needed else ": permission denied")
            if reason:
                text += f" ({reason})"
        elif response.status == 401:
            text += f": a fresh access token was refused too ({reason or 'no reason given'})"
        elif reason:
            text += f": {reason}"
        return GraphError(text, response.status, reason, response.retry_after(self._wall_clock()), code)
