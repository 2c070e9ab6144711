"""Publish each Mac's profile to Jamf Pro: one computer-level profile per Mac, scoped to that Mac.

Facts about Jamf come from ``shared/reference/jamf-pro-api.md`` (sections as ``§``). What this
module does, and why:

* **Names.** A Mac's profile is called ``mdmgen - Claude Code - <SERIAL>`` (:func:`profile_name`).
  Jamf names are unique per server, case-insensitively (§2.1), and serials are unique in the
  inventory, so the name is the key: an existing profile is found by name and updated in place.
  Profiles with other names are never read, changed or deleted.
* **Scope.** Level computer, installed automatically, not removable, scoped to exactly the
  computer(s) whose serial number is the Mac's (§3, §4.1: looked up with the Jamf Pro API
  inventory filter, 50 serials per request). Nothing else is in scope: no groups, no
  limitations, no exclusions. A Mac not enrolled in Jamf gets no profile and is reported; a
  profile it already has is left as it is (see :attr:`JamfPublisher.notes`).
* **Change detection** compares what the Mac would see, not bytes: the settings and the
  profile's display name, organization, type and scope keys (:func:`semantic_content`), plus
  the profile's Jamf metadata (name, description, category, level, scope). It ignores every
  ``PayloadUUID`` and ``PayloadIdentifier`` (Jamf rewrites the top-level ones on create, §6.1)
  and the keys Jamf injects on read-back (``PayloadEnabled``, ``PayloadRemovalDisallowed``).
  So a profile whose settings did not change is not written at all, and no Mac gets a redeploy.
* **Identifiers on update.** The stored top-level ``PayloadIdentifier``/``PayloadUUID`` (and the
  nested ones, by payload type and position) are copied into the profile sent, so macOS
  replaces the installed profile instead of installing a second one beside it (the "ghost
  profile" of §6.1-6.2).
* **Redeploy.** A PUT whose settings changed sends ``redeploy_on_update`` ``All``, so every
  scoped Mac gets the new settings; a PUT of metadata or scope only sends ``Newly Assigned``,
  so only a newly scoped Mac receives the profile (§6.3).
* **Reading back.** Every created profile is read back (which also rides out Jamf Cloud's
  404-right-after-create, §8) and must compare equal to what was sent; otherwise the next run
  would rewrite it forever, so the publish stops with the difference named.
* **HTTP.** :class:`JamfClient`: OAuth client credentials (§1.1) renewed ahead of expiry and once
  on a 401, at most 5 keep-alive connections (§8), the load balancer's sticky cookies kept for
  the run, retries with backoff on 5xx, timeouts and dropped connections (``base.retry``), and
  one-line messages from Jamf's HTML, JSON and OAuth error bodies (§7). Tokens and the client
  secret are never logged or printed.
"""

from __future__ import annotations

import copy
import hashlib
import html
import http.client
import json
import logging
import os
import plistlib
import re
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from .. import __version__
from ..emit import registry
from ..endpoints import check_url as check_url_shared
from ..models import Platform
from ..output import CheckedFile as LocalFile
from ..output import CheckedOutput as LocalOutput
from ..output import device_path
from ..progress import NO_PROGRESS, Progress
from .base import (
    Action,
    Desired,
    LocalOutputError,
    Note,
    Plan,
    PlanItem,
    Remote,
    RemoteError,
    Transient,
    build_plan,
    retry,
    run_bounded,
)

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 5
"""Jamf's guidance: at most 5 concurrent connections (§8)."""
DEFAULT_TIMEOUT = 60.0
TOKEN_PATHS = ("/api/oauth/token", "/api/v1/oauth/token")
"""Both are in use (§1.1); the second is tried when the first is not served."""
INVENTORY_VERSIONS = ("v3", "v2", "v1")
"""``computers-inventory`` versions tried, newest first, until one is served (§4.1)."""
SERIALS_PER_LOOKUP = 50
PROFILES = "/JSSResource/osxconfigurationprofiles"
NAME_PREFIX = "mdmgen - Claude Code - "
DISTRIBUTION = "Install Automatically"
LEVEL = "computer"
ENV_CLIENT_ID = "JAMF_CLIENT_ID"
ENV_CLIENT_SECRET = "JAMF_CLIENT_SECRET"

_NAME = re.compile(rf"^{re.escape(NAME_PREFIX)}([A-Za-z0-9_-][A-Za-z0-9._-]*)$", re.IGNORECASE)
_PROFILE_KEYS = ("PayloadType", "PayloadVersion", "PayloadScope", "PayloadDisplayName", "PayloadOrganization")
_PAYLOAD_KEYS = ("PayloadType", "PayloadVersion", "PayloadDisplayName", "PayloadOrganization", "PayloadContent")
_SCOPE_TARGETS = ("computer_groups", "buildings", "departments", "jss_users", "jss_user_groups")
_LIMITATIONS = ("users", "user_groups", "network_segments", "ibeacons")
_EXCLUSIONS = ("computers", "computer_groups", "buildings", "departments", "users", "user_groups",
               "network_segments", "ibeacons", "jss_users", "jss_user_groups")
_PRIVILEGES = {"GET": "Read", "POST": "Create", "PUT": "Update", "DELETE": "Delete"}


def profile_name(serial: str) -> str:
    """The Jamf profile name of a Mac: ``mdmgen - Claude Code - <SERIAL>``."""
    return f"{NAME_PREFIX}{serial}"


def serial_of(name: str) -> str | None:
    """The serial in one of our profile names (upper-cased), or None for any other profile."""
    match = _NAME.match(name)
    return match.group(1).upper() if match else None


def description(serial: str) -> str:
    return (f"Claude Code managed settings for {serial}, published by mdmgen from the compiled output. "
            "Changes made here are overwritten by the next publish.")


def check_url(url: str) -> str:
    """The Jamf Pro base URL without a trailing slash. ValueError with a message for the user when
    credentials could leak (:func:`mdmgen.endpoints.check_url`: https, plain http only to loopback,
    no user:password) or when it has a query or fragment."""
    url = url.strip()
    check_url_shared(url, credentials_go=f"in {ENV_CLIENT_ID} and {ENV_CLIENT_SECRET}")
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment; give https://HOST[:PORT]")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def credentials_from(environ: Mapping[str, str]) -> tuple[str, str]:
    """``(client id, client secret)`` of a Jamf Pro API client, from the environment only."""
    client_id, secret = environ.get(ENV_CLIENT_ID, ""), environ.get(ENV_CLIENT_SECRET, "")
    missing = [name for name, value in ((ENV_CLIENT_ID, client_id), (ENV_CLIENT_SECRET, secret)) if not value]
    if missing:
        raise RemoteError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: create an API "
                          "client in Jamf Pro (Settings > System > API roles and clients) and export its client ID "
                          "and secret; mdmgen reads them only from the environment")
    return client_id, secret


# --- HTTP ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class JamfHTTPError(RemoteError):
    """Jamf answered with an error status; the message is one line for the user."""

    def __init__(self, message: str, status: int = 0, reason: str = ""):
        super().__init__(message)
        self.status = status
        self.reason = reason


def error_reason(content_type: str, body: bytes) -> str:
    """One line from a Jamf error body: the ``Error: ...`` of a Classic HTML status page (§7.1),
    the first error of the Jamf Pro API's JSON (§7.2), or an OAuth ``error`` (§1.1)."""
    text = body.decode("utf-8", "replace")
    reason = ""
    if "json" in content_type:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            if "error" in data:  # RFC 6749
                reason = " ".join(str(data.get(k) or "") for k in ("error", "error_description"))
            elif isinstance(data.get("errors"), list) and data["errors"]:
                first = data["errors"][0] if isinstance(data["errors"][0], dict) else {}
                reason = str(first.get("description") or first.get("code") or "")
    elif "<" in text:
        found = re.search(r"<p>\s*Error:(.*?)</p>", text, re.S | re.I)
        if found is None:  # no Jamf message: Restlet's own description, the second paragraph
            paragraphs = re.findall(r"<p[^>]*>(.*?)</p>", text, re.S | re.I)
            found_text = paragraphs[1] if len(paragraphs) > 1 else (paragraphs[0] if paragraphs else "")
        else:
            found_text = found.group(1)
        reason = html.unescape(re.sub(r"<[^>]+>", " ", found_text))
    else:
        reason = text
    reason = " ".join(reason.split())
    return reason[:200] + ("..." if len(reason) > 200 else "")


class JamfClient:
    """Talks to one Jamf Pro server: the access token, a pool of at most ``max_connections``
    keep-alive connections, the load balancer's cookies, and retries.

    Thread-safe: the publisher calls it from up to ``max_connections`` workers. The token is
    requested once and renewed by whichever thread first needs it within ``min(60 s, a fifth of
    its lifetime)`` of expiry, and once more if the server answers 401 anyway (expired early,
    revoked). Token requests use the same pool, so the cap holds for every connection made.
    """

    def __init__(self, base_url: str, client_id: str, client_secret: str, *,
                 max_connections: int = MAX_CONNECTIONS, timeout: float = DEFAULT_TIMEOUT,
                 attempts: int = 5, base_delay: float = 0.5, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, ssl_context: ssl.SSLContext | None = None):
        parts = urlsplit(check_url(base_url))
        self.base_url = f"{parts.scheme}://{parts.netloc}{parts.path}"
        self._scheme, self._host, self._port = parts.scheme, parts.hostname or "", parts.port
        self._root = parts.path
        self._client_id = client_id
        self._secret = client_secret
        self.max_connections = min(max_connections, MAX_CONNECTIONS)
        self.timeout = timeout
        self.attempts = attempts
        self._base_delay = base_delay
        self._sleep = sleep
        self._clock = clock
        self._ssl = ssl_context or (ssl.create_default_context() if parts.scheme == "https" else None)
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self._idle: list[http.client.HTTPConnection] = []
        self._pool_lock = threading.Lock()
        self._cookies: dict[str, str] = {}
        self._token_lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        self._token_paths = TOKEN_PATHS
        self._spent: list[str] = []  # tokens issued to this client, to keep them out of messages

    @classmethod
    def from_environment(cls, base_url: str, environ: Mapping[str, str] | None = None, **kwargs) -> JamfClient:
        client_id, secret = credentials_from(os.environ if environ is None else environ)
        return cls(base_url, client_id, secret, **kwargs)

    # -- requests --

    def request(self, method: str, path: str, *, doing: str, body: bytes | None = None,
                content_type: str | None = None, accept: str = "application/json",
                retry_404: bool = False) -> Response:
        """One authorised request; the 2xx response, or RemoteError (JamfHTTPError for an error
        status) with a one-line message saying what was being done.

        Retried with backoff: 5xx, timeouts, dropped connections, and with ``retry_404`` a 404
        (a profile just created that another Jamf Cloud node has not seen yet, §8).
        """
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type

        def attempt() -> Response:
            token = self._access_token()
            response = self._send(method, path, body, {**headers, "Authorization": f"Bearer {token}"})
            if response.status == 401:  # expired early or revoked: renew once
                self._forget(token)
                token = self._access_token()
                response = self._send(method, path, body, {**headers, "Authorization": f"Bearer {token}"})
                if response.status == 401:
                    raise JamfHTTPError(f"Jamf Pro refused a fresh access token (401) while {doing}; check that "
                                        "the API client is enabled and has an API role", 401)
            if not 200 <= response.status < 300:
                raise self._http_error(method, path, response, doing)
            return response

        return self._with_retries(attempt, doing, retry_404=retry_404)

    def close(self) -> None:
        """Close the idle connections (a later request opens new ones)."""
        with self._pool_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _with_retries(self, call: Callable[[], Response], doing: str, *, retry_404: bool = False) -> Response:
        def classify(exc: BaseException) -> Transient | None:
            if isinstance(exc, JamfHTTPError):
                return Transient() if exc.status >= 500 or (retry_404 and exc.status == 404) else None
            if isinstance(exc, ssl.SSLError | RemoteError):
                return None
            if isinstance(exc, TimeoutError | ConnectionResetError | ConnectionAbortedError | BrokenPipeError
                          | http.client.IncompleteRead | http.client.BadStatusLine):
                return Transient()
            return None

        try:
            return retry(call, classify=classify, attempts=self.attempts, base_delay=self._base_delay,
                         sleep=self._sleep)
        except JamfHTTPError as exc:
            if classify(exc) is not None:
                raise JamfHTTPError(f"{exc} (gave up after {self.attempts} attempts)", exc.status,
                                    exc.reason) from None
            raise
        except RemoteError:
            raise
        except ssl.SSLCertVerificationError as exc:
            raise RemoteError(f"TLS: the certificate of {self._host} is not trusted ({exc.verify_message}) "
                              f"while {doing}; to trust a private CA, set SSL_CERT_FILE") from None
        except ssl.SSLError as exc:
            raise RemoteError(f"TLS error talking to {self._host} while {doing}: {exc.reason or exc}") from None
        except TimeoutError:
            raise RemoteError(f"Jamf Pro at {self.base_url} did not answer within {self.timeout:g} s while {doing} "
                              f"(gave up after {self.attempts} attempts); try a larger --timeout") from None
        except socket.gaierror:
            raise RemoteError(f"cannot reach {self.base_url} while {doing}: the name {self._host} does not "
                              "resolve") from None
        except OSError as exc:
            why = exc.strerror or str(exc) or type(exc).__name__
            raise RemoteError(f"cannot reach {self.base_url} while {doing}: {why}") from None
        except http.client.HTTPException as exc:
            raise RemoteError(f"Jamf Pro at {self.base_url} sent a malformed answer while {doing} "
                              f"({type(exc).__name__})") from None

    def _http_error(self, method: str, path: str, response: Response, doing: str) -> JamfHTTPError:
        reason = self._redact(error_reason(response.content_type, response.body))
        phrase = http.client.responses.get(response.status, "")
        message = f"Jamf Pro answered {response.status} {phrase} while {doing}"
        if response.status == 403:
            what = ("Computers" if "computers-inventory" in path else "macOS Configuration Profiles")
            privilege = "Read" if "computers-inventory" in path else _PRIVILEGES.get(method, method)
            message += f": the API client's role needs the '{privilege} {what}' privilege"
        elif reason:
            message += f": {reason}"
        return JamfHTTPError(message, response.status, reason)

    def _send(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Response:
        """One HTTP exchange on a pooled connection. A reused keep-alive connection that the server
        had already closed is replaced once, at no cost to the retry budget."""
        headers = {**headers, "User-Agent": f"mdmgen/{__version__}"}
        cookie = self._cookie_header()
        if cookie:
            headers["Cookie"] = cookie
        target = self._root + path
        started = time.monotonic()
        for _ in range(2):
            with self._slots:
                conn, reused = self._checkout()
                try:
                    conn.request(method, target, body=body, headers=headers)
                    reply = conn.getresponse()
                    data = reply.read()
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                        ConnectionAbortedError):
                    conn.close()
                    if reused:
                        continue
                    raise
                except BaseException:
                    conn.close()
                    raise
                if reply.will_close:
                    conn.close()
                else:
                    self._checkin(conn)
            self._remember_cookies(reply.headers.get_all("Set-Cookie") or [])
            log.debug("jamf: %s %s -> %d in %.3f s", method, path.split("?")[0], reply.status,
                      time.monotonic() - started)
            return Response(reply.status, reply.headers.get("Content-Type", ""), data)
        raise AssertionError("unreachable")  # pragma: no cover

    def _checkout(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._pool_lock:
            if self._idle:
                return self._idle.pop(), True
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout, context=self._ssl), False
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout), False

    def _checkin(self, conn: http.client.HTTPConnection) -> None:
        with self._pool_lock:
            self._idle.append(conn)

    # -- sticky sessions (§8): keep the load balancer's cookies, so every request hits one node --

    def _remember_cookies(self, values: Iterable[str]) -> None:
        for value in values:
            name, sep, rest = value.split(";", 1)[0].partition("=")
            if sep and name.strip():
                with self._pool_lock:
                    self._cookies[name.strip()] = rest.strip()

    def _cookie_header(self) -> str:
        with self._pool_lock:
            return "; ".join(f"{name}={value}" for name, value in self._cookies.items())

    # -- the access token (§1.1) --

    def _access_token(self) -> str:
        with self._token_lock:
            if self._token is None or self._clock() >= self._renew_at:
                self._token, lifetime = self._request_token()
                self._spent.append(self._token)
                self._renew_at = self._clock() + lifetime - min(60.0, lifetime / 5)
                log.info("jamf: obtained an access token (valid for %g s)", lifetime)
            return self._token

    def _forget(self, token: str) -> None:
        with self._token_lock:
            if self._token == token:
                self._token = None

    def _request_token(self) -> tuple[str, float]:
        form = urlencode({"grant_type": "client_credentials", "client_id": self._client_id,
                          "client_secret": self._secret}).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        doing = "requesting an access token"
        for path in self._token_paths:

            def call(path: str = path) -> Response:
                response = self._send("POST", path, form, headers)
                if response.status >= 500:
                    raise self._http_error("POST", path, response, doing)
                return response

            response = self._with_retries(call, doing)
            if response.status in (404, 405) and path != self._token_paths[-1]:
                continue  # this server serves the other path (§1.1)
            if response.status == 200:
                try:
                    data = response.json()
                    token, lifetime = str(data["access_token"]), float(data["expires_in"])
                except (ValueError, KeyError, TypeError):
                    raise RemoteError(f"Jamf Pro at {self.base_url} sent an unexpected answer to the token "
                                      f"request on {path}") from None
                self._token_paths = (path,)
                return token, max(lifetime, 1.0)
            reason = self._redact(error_reason(response.content_type, response.body))
            if response.status in (400, 401) and "invalid_client" in reason:
                raise RemoteError(f"Jamf Pro rejected the API client credentials (invalid_client): check "
                                  f"{ENV_CLIENT_ID} and {ENV_CLIENT_SECRET}, and that the API client is enabled")
            if response.status in (404, 405):
                raise RemoteError(f"no OAuth token endpoint at {self.base_url} (tried {' and '.join(TOKEN_PATHS)}): "
                                  "is this Jamf Pro 10.49 or later?")
            phrase = http.client.responses.get(response.status, "")
            raise RemoteError(f"Jamf Pro refused the token request ({response.status} {phrase}: {reason})")
        raise AssertionError("unreachable")  # pragma: no cover

    def _redact(self, text: str) -> str:
        for secret in (self._secret, *self._spent):
            if secret:
                text = text.replace(secret, "***")
        return text


# --- what is compared ----------------------------------------------------------------------------


def semantic_content(profile: dict[str, Any]) -> dict[str, Any]:
    """What a Mac sees of a profile: its type, scope, display name and organization, and each
    payload's type, names and content (the settings), without any PayloadUUID or
    PayloadIdentifier (Jamf rewrites them, §6.1) and without keys Jamf adds on read-back."""
    payloads = profile.get("PayloadContent")
    return {**{key: profile.get(key) for key in _PROFILE_KEYS},
            "payloads": [{key: p.get(key) for key in _PAYLOAD_KEYS} if isinstance(p, dict) else p
                         for p in (payloads if isinstance(payloads, list) else [])]}


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_digest(profile: dict[str, Any]) -> str:
    return _digest(semantic_content(profile))


@dataclass(frozen=True)
class Identifiers:
    """The identifiers a stored profile carries: top-level, and per nested payload (type, position
    among payloads of that type, identifier, UUID)."""

    identifier: Any
    uuid: Any
    nested: tuple[tuple[Any, int, Any, Any], ...]

    @classmethod
    def of(cls, profile: dict[str, Any]) -> Identifiers:
        nested, seen = [], {}
        for payload in profile.get("PayloadContent") or []:
            if isinstance(payload, dict):
                kind = payload.get("PayloadType")
                seen[kind] = seen.get(kind, -1) + 1
                nested.append((kind, seen[kind], payload.get("PayloadIdentifier"), payload.get("PayloadUUID")))
        return cls(profile.get("PayloadIdentifier"), profile.get("PayloadUUID"), tuple(nested))

    def apply(self, profile: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``profile`` carrying these identifiers, so macOS updates the installed profile
        and its payloads in place (§6.2 rule 2)."""
        out = copy.deepcopy(profile)
        if self.identifier and self.uuid:
            out["PayloadIdentifier"], out["PayloadUUID"] = self.identifier, self.uuid
        stored = {(kind, index): (ident, uid) for kind, index, ident, uid in self.nested}
        seen: dict[Any, int] = {}
        for payload in out.get("PayloadContent") or []:
            if isinstance(payload, dict):
                kind = payload.get("PayloadType")
                seen[kind] = seen.get(kind, -1) + 1
                ident, uid = stored.get((kind, seen[kind]), (None, None))
                if ident and uid:
                    payload["PayloadIdentifier"], payload["PayloadUUID"] = ident, uid
        return out


@dataclass(frozen=True)
class Wanted:
    """What one Mac's profile should be."""

    serial: str
    name: str
    file: LocalFile
    content: str
    meta: dict[str, Any]
    computer_ids: tuple[int, ...]

    @property
    def sha256(self) -> str:
        return _digest({"content": self.content, "meta": self.meta})


@dataclass(frozen=True)
class Stored:
    """One of our profiles as Jamf holds it; ``content`` is None when its payload does not parse."""

    id: int
    serial: str
    content: str | None
    meta: dict[str, Any]
    identifiers: Identifiers | None

    @property
    def sha256(self) -> str | None:
        return None if self.content is None else _digest({"content": self.content, "meta": self.meta})


def _meta(name: str, desc: str, category: str | None, level: str, distribution: str, removable: Any,
          scope: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": name, "description": desc, "level": level.lower(), "distribution_method": distribution,
            "user_removable": removable, "scope": scope}
    if category is not None:  # compared only when --category is given
        meta["category"] = category.lower()
    return meta


def _entries(value: Any) -> list[dict[str, Any]]:
    """The entries of a Classic JSON list, tolerating the ``{"size": n, "computer": {...}}`` forms."""
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    if isinstance(value, dict):
        return [e for key, v in value.items() if key != "size" for e in _entries(v if isinstance(v, list) else [v])]
    return []


def _stored_scope(scope: Any) -> dict[str, Any]:
    """A scope reduced to what decides who gets the profile: the computer ids, and anything else."""
    scope = scope if isinstance(scope, dict) else {}
    other = [key for key in ("all_computers", "all_jss_users") if scope.get(key) in (True, "true")]
    for key in _SCOPE_TARGETS:
        other += [f"{key}:{e.get('id', e.get('name'))}" for e in _entries(scope.get(key))]
    for section, keys in (("limitations", _LIMITATIONS), ("exclusions", _EXCLUSIONS)):
        block = scope.get(section) if isinstance(scope.get(section), dict) else {}
        for key in keys:
            other += [f"{section}.{key}:{e.get('id', e.get('name'))}" for e in _entries(block.get(key))]
    ids = sorted(int(e["id"]) for e in _entries(scope.get("computers")) if str(e.get("id", "")).lstrip("-").isdigit())
    return {"computers": ids, "other": sorted(other)}


def _scope_xml(computer_ids: Iterable[int]) -> ET.Element:
    """Exactly these computers and nothing else, every list stated so nothing stays from before."""
    scope = ET.Element("scope")
    ET.SubElement(scope, "all_computers").text = "false"
    ET.SubElement(scope, "all_jss_users").text = "false"
    computers = ET.SubElement(scope, "computers")
    for cid in computer_ids:
        ET.SubElement(ET.SubElement(computers, "computer"), "id").text = str(cid)
    for key in _SCOPE_TARGETS:
        ET.SubElement(scope, key)
    for section, keys in (("limitations", _LIMITATIONS), ("exclusions", _EXCLUSIONS)):
        block = ET.SubElement(scope, section)
        for key in keys:
            ET.SubElement(block, key)
    return scope


# --- the publisher -------------------------------------------------------------------------------


class JamfPublisher:
    """Plans and applies a publish of every Mac's profile to one Jamf Pro server.

    Holds the client and what planning learnt: the desired profiles, the stored ones (with the
    identifiers to send back), and the notes for the summary.
    """

    noun = "profile"

    def __init__(self, client: JamfClient, *, category: str | None = None, workers: int = MAX_CONNECTIONS):
        self.client = client
        self.category = category
        self.workers = max(1, min(workers, client.max_connections))
        self.notes: list[Note] = []
        self._wanted: dict[str, Wanted] = {}
        self._stored: dict[str, Stored] = {}
        self._ids: dict[str, int] = {}
        self._inventory_version: str | None = None

    # -- plan --

    def plan(self, local: LocalOutput, *, prune: bool, progress: Progress = NO_PROGRESS) -> Plan:
        macs = _macs(local)
        listed = self._list_profiles()
        computers = self._computers(sorted(macs), progress)
        enrolled = {serial: ids for serial, ids in computers.items() if ids}
        unenrolled = sorted(set(macs) - set(enrolled))
        for serial, file in macs.items():
            if serial in enrolled:
                self._wanted[profile_name(serial)] = self._want(serial, file, enrolled[serial])
        to_read = [(serial, pid) for serial, (pid, _name) in sorted(listed.items()) if serial in enrolled]
        stored = run_bounded(to_read, lambda entry: self._read(entry[1], entry[0]), workers=self.workers,
                             progress=progress, label="Reading Jamf Pro profiles")
        self._stored = {profile_name(s.serial): s for s in stored}
        remote = []
        for serial, (pid, _name) in sorted(listed.items()):
            if serial in macs and serial not in enrolled:
                continue  # in the inventory but not enrolled: its profile is left as it is
            key = profile_name(serial)
            self._ids[key] = pid
            found = self._stored.get(key)
            remote.append(Remote(key, serial, found.sha256 if found else None))
        self._note(unenrolled, listed, computers)
        return build_plan([Desired(w.name, w.sha256, w.file.size, w.serial, w.file) for w in self._wanted.values()],
                          remote, prune=prune, notes=self.notes)

    def _want(self, serial: str, file: LocalFile, computer_ids: list[int]) -> Wanted:
        profile = _parse_plist(file.read(), f"{file.path}")
        name = profile_name(serial)
        meta = _meta(name, description(serial), self.category, LEVEL, DISTRIBUTION, False,
                     {"computers": sorted(computer_ids), "other": []})
        return Wanted(serial, name, file, content_digest(profile), meta, tuple(sorted(computer_ids)))

    def _list_profiles(self) -> dict[str, tuple[int, str]]:
        """Our profiles on the server, by serial: ``{serial: (id, name)}``."""
        data = self.client.request("GET", PROFILES, doing="listing macOS configuration profiles").json()
        found: dict[str, tuple[int, str]] = {}
        for entry in _entries(data.get("os_x_configuration_profiles") if isinstance(data, dict) else None):
            serial = serial_of(str(entry.get("name", "")))
            if serial is not None and str(entry.get("id", "")).isdigit():
                found[serial] = (int(entry["id"]), str(entry["name"]))
        log.info("jamf: %d profile(s) named %s<SERIAL> on the server", len(found), NAME_PREFIX)
        return found

    def _computers(self, serials: list[str], progress: Progress) -> dict[str, list[int]]:
        """Computer ids by serial (upper-cased), through the Jamf Pro API inventory filter (§4.1)."""
        batches = [serials[i:i + SERIALS_PER_LOOKUP] for i in range(0, len(serials), SERIALS_PER_LOOKUP)]
        if not batches:
            return {}
        results = [self._lookup(batches[0])]  # alone first: it finds the inventory version served
        results += run_bounded(batches[1:], self._lookup, workers=self.workers, progress=progress,
                               label="Looking up Macs in Jamf Pro")
        found: dict[str, list[int]] = {}
        for batch in results:
            for serial, ids in batch.items():
                found.setdefault(serial, []).extend(ids)
        return {serial: sorted(set(ids)) for serial, ids in found.items()}

    def _lookup(self, batch: list[str]) -> dict[str, list[int]]:
        rsql = ",".join(f'hardware.serialNumber=="{serial}"' for serial in batch)
        found: dict[str, list[int]] = {}
        page = 0
        while True:
            query = urlencode([("section", "HARDWARE"), ("filter", rsql), ("page", page), ("page-size", 100)],
                              quote_via=quote)
            data = self._inventory(query)
            results = data.get("results") if isinstance(data, dict) else None
            for record in results if isinstance(results, list) else []:
                hardware = record.get("hardware") if isinstance(record, dict) else None
                serial = str((hardware or {}).get("serialNumber") or "").upper()
                if serial and str(record.get("id", "")).isdigit():
                    found.setdefault(serial, []).append(int(record["id"]))
            total = data.get("totalCount", 0) if isinstance(data, dict) else 0
            page += 1
            if not isinstance(total, int) or page * 100 >= total or not results:
                return found

    def _inventory(self, query: str) -> Any:
        versions = (self._inventory_version,) if self._inventory_version else INVENTORY_VERSIONS
        for version in versions:
            try:
                data = self.client.request("GET", f"/api/{version}/computers-inventory?{query}",
                                           doing="looking up Macs by serial number").json()
            except JamfHTTPError as exc:
                if exc.status == 404 and version != versions[-1]:
                    continue
                if exc.status == 404:
                    raise RemoteError(f"Jamf Pro at {self.client.base_url} serves none of "
                                      f"/api/{{{','.join(INVENTORY_VERSIONS)}}}/computers-inventory") from None
                raise
            except ValueError:
                raise RemoteError("Jamf Pro sent an inventory answer that is not JSON") from None
            self._inventory_version = version
            return data
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, profile_id: int, serial: str, *, just_created: bool = False) -> Stored:
        """GET one profile and reduce it to what is compared."""
        response = self.client.request("GET", f"{PROFILES}/id/{profile_id}", retry_404=just_created,
                                       doing=f"reading profile {profile_name(serial)!r} (id {profile_id})")
        try:
            data = response.json()["os_x_configuration_profile"]
            general, scope = data.get("general") or {}, data.get("scope") or {}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise RemoteError(f"Jamf Pro sent an unreadable profile {profile_name(serial)!r} "
                              f"(id {profile_id})") from None
        category = general.get("category") if isinstance(general.get("category"), dict) else {}
        meta = _meta(str(general.get("name", "")), str(general.get("description") or ""),
                     str(category.get("name", "")) if self.category is not None else None,
                     str(general.get("level", "")), str(general.get("distribution_method", "")),
                     general.get("user_removable") in (True, "true"), _stored_scope(scope))
        try:
            profile = plistlib.loads(str(general.get("payloads") or "").strip().encode("utf-8"))
            if not isinstance(profile, dict):
                raise ValueError
        except Exception:  # plistlib raises several types; an unreadable payload is simply rewritten
            log.warning("jamf: the payload of %r (id %d) does not parse; it will be rewritten",
                        profile_name(serial), profile_id)
            return Stored(profile_id, serial, None, meta, None)
        return Stored(profile_id, serial, content_digest(profile), meta, Identifiers.of(profile))

    def _note(self, unenrolled: list[str], listed: dict[str, tuple[int, str]],
              computers: dict[str, list[int]]) -> None:
        if unenrolled:
            kept = [serial for serial in unenrolled if serial in listed]
            message = (f"{len(unenrolled)} Mac(s) are not enrolled in Jamf Pro (no computer has the serial): "
                       f"{_some(unenrolled)}; no profile was made for them")
            if kept:
                message += f", and the existing profile of {len(kept)} of them was left as it is"
            self.notes.append(Note("unenrolled", message + ".", tuple(unenrolled)))
        shared = sorted(serial for serial, ids in computers.items() if len(ids) > 1)
        if shared:
            self.notes.append(Note("duplicate_serials", f"{len(shared)} serial(s) match several computers in "
                                   f"Jamf Pro, and each profile is scoped to all of them: {_some(shared)}.",
                                   tuple(shared)))

    # -- apply --

    def write(self, item: PlanItem) -> None:
        want = self._wanted[item.key]
        if item.action is Action.CREATE:
            self._create(want)
        else:
            self._update(want, self._stored.get(item.key), self._ids[item.key])

    def delete(self, item: PlanItem) -> None:
        try:
            self.client.request("DELETE", f"{PROFILES}/id/{self._ids[item.key]}", accept="application/xml",
                                doing=f"deleting profile {item.key!r}")
        except JamfHTTPError as exc:
            if exc.status != 404:  # already gone
                raise

    def close(self) -> None:
        self.client.close()

    def _create(self, want: Wanted) -> None:
        body = self._body(want, payload=want.file.read().decode("utf-8"), redeploy=None)
        doing = f"creating profile {want.name!r}"
        try:
            reply = self.client.request("POST", f"{PROFILES}/id/0", body=body, content_type="application/xml",
                                        accept="application/xml", doing=doing)
        except JamfHTTPError as exc:
            if exc.status == 409 and "duplicate name" in exc.reason.lower():
                # It exists after all: an earlier attempt that timed out went through, or the listing
                # came from a Jamf Cloud node that had not seen it yet. Re-read it and update it (§8).
                self._adopt(want)
                return
            raise self._explain(exc) from None
        try:
            profile_id = int(ET.fromstring(reply.body).findtext("id") or "")
        except (ET.ParseError, ValueError):
            raise RemoteError(f"Jamf Pro did not return the id of the new profile {want.name!r}") from None
        stored = self._read(profile_id, want.serial, just_created=True)
        self._check_stored(want, stored)

    def _adopt(self, want: Wanted) -> None:
        response = self.client.request("GET", f"{PROFILES}/name/{quote(want.name, safe='')}", retry_404=True,
                                       doing=f"reading profile {want.name!r}")
        try:
            profile_id = int(response.json()["os_x_configuration_profile"]["general"]["id"])
        except (ValueError, KeyError, TypeError):
            raise RemoteError(f"Jamf Pro sent an unreadable profile {want.name!r}") from None
        stored = self._read(profile_id, want.serial, just_created=True)
        if stored.sha256 != want.sha256:
            self._update(want, stored, profile_id)

    def _update(self, want: Wanted, stored: Stored | None, profile_id: int) -> None:
        settings_changed = stored is None or stored.content != want.content
        payload = None
        if settings_changed:
            profile = _parse_plist(want.file.read(), f"{want.file.path}")
            if stored is not None and stored.identifiers is not None:
                profile = stored.identifiers.apply(profile)
            payload = plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True).decode("utf-8")
        body = self._body(want, payload=payload, redeploy="All" if settings_changed else "Newly Assigned")
        try:
            self.client.request("PUT", f"{PROFILES}/id/{profile_id}", body=body, content_type="application/xml",
                                accept="application/xml", doing=f"updating profile {want.name!r} (id {profile_id})")
        except JamfHTTPError as exc:
            if exc.status == 404:
                raise RemoteError(f"profile {want.name!r} (id {profile_id}) was deleted from Jamf Pro during the "
                                  "publish") from None
            raise self._explain(exc) from None

    def _check_stored(self, want: Wanted, stored: Stored) -> None:
        """A created profile must read back as sent, or every later run would rewrite it."""
        if stored.sha256 == want.sha256:
            return
        differs = ["the settings or profile names"] if stored.content != want.content else []
        differs += [key for key in sorted(want.meta) if stored.meta.get(key) != want.meta[key]]
        raise RemoteError(f"Jamf Pro stored profile {want.name!r} (id {stored.id}) differently from what was sent "
                          f"({', '.join(differs)}), so every publish would rewrite it; please report this")

    def _explain(self, exc: JamfHTTPError) -> JamfHTTPError:
        if exc.status == 409 and self.category is not None and "categor" in exc.reason.lower():
            return JamfHTTPError(f"{exc}; does the category {self.category!r} exist in Jamf Pro "
                                 "(Settings > Global > Categories)?", exc.status, exc.reason)
        return exc

    def _body(self, want: Wanted, *, payload: str | None, redeploy: str | None) -> bytes:
        root = ET.Element("os_x_configuration_profile")
        general = ET.SubElement(root, "general")
        ET.SubElement(general, "name").text = want.name
        ET.SubElement(general, "description").text = description(want.serial)
        if self.category is not None:
            ET.SubElement(ET.SubElement(general, "category"), "name").text = self.category
        ET.SubElement(general, "distribution_method").text = DISTRIBUTION
        ET.SubElement(general, "user_removable").text = "false"
        ET.SubElement(general, "level").text = LEVEL
        if redeploy is not None:
            ET.SubElement(general, "redeploy_on_update").text = redeploy
        if payload is not None:
            ET.SubElement(general, "payloads").text = payload  # escaped by ElementTree (§2.2)
        root.append(_scope_xml(want.computer_ids))
        return ('<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(root, encoding="unicode")).encode("utf-8")


def _macs(local: LocalOutput) -> dict[str, LocalFile]:
    """Each macOS device's profile file, by serial."""
    files = {f.relpath: f for f in local.files}
    macs = {}
    for serial, device in local.manifest.devices.items():
        if device.platform is Platform.MACOS and registry.MAC_PROFILE.name in device.files:
            macs[serial] = files[device_path(serial, registry.MAC_PROFILE.name)]
    return macs


def _parse_plist(data: bytes, where: str) -> dict[str, Any]:
    try:
        profile = plistlib.loads(data)
    except Exception as exc:  # plistlib raises several types for broken XML
        raise LocalOutputError(f"{where}: not a readable profile ({exc})") from None
    if not isinstance(profile, dict):
        raise LocalOutputError(f"{where}: not a configuration profile")
    return profile


def _some(serials: list[str], shown: int = 10) -> str:
    more = f" (and {len(serials) - shown} more)" if len(serials) > shown else ""
    return ", ".join(serials[:shown]) + more
