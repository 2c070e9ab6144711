"""The Jamf Pro client: credentials, the OAuth access token, and Jamf's error pages.

Facts about Jamf come from ``shared/reference/jamf-pro-api.md`` (sections as ``§``). Transport,
pooling, proxies, TLS and the retry policy are the shared HTTP layer's (:mod:`..http`); what is
Jamf's own lives here:

* OAuth client credentials (§1.1) on ``/api/oauth/token``, else ``/api/v1/oauth/token``; the
  token is renewed ahead of expiry, and once more on a 401 (expired early, revoked). There is
  no refresh token, so a refresh is a new request.
* At most 5 connections (§8), token requests included: they share the one pool.
* One-line messages from Jamf's three error shapes: Classic HTML status pages (§7.1), the Jamf
  Pro API's JSON (§7.2) and RFC 6749 OAuth errors (§1.1), naming the missing privilege on a 403.
* The token and the client secret never appear in a message or a log line.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit

from ... import __version__
from ...endpoints import check_url as check_url_shared
from ...environment import check_network, text
from ...http import (
    DEFAULT_ATTEMPTS,
    DEFAULT_BASE_DELAY,
    DEFAULT_MAX_DELAY,
    MAX_SMALL_BODY,
    Connection,
    HTTPStatusError,
    Response,
    RetryPolicy,
    reason_phrase,
)
from ...messages import redact, shorten
from ..base import RemoteError
from ..defaults import JAMF_MAX_CONNECTIONS, JAMF_TIMEOUT

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("mdmgen.publish.jamf")

TOKEN_PATHS = ("/api/oauth/token", "/api/v1/oauth/token")
"""Both are in use (§1.1); the second is tried when the first is not served."""
ENV_CLIENT_ID = "JAMF_CLIENT_ID"
ENV_CLIENT_SECRET = "JAMF_CLIENT_SECRET"
_PRIVILEGES = {"GET": "Read", "POST": "Create", "PUT": "Update", "DELETE": "Delete"}


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
    client_id, secret = text(environ, ENV_CLIENT_ID), text(environ, ENV_CLIENT_SECRET)
    missing = [name for name, value in ((ENV_CLIENT_ID, client_id), (ENV_CLIENT_SECRET, secret)) if not value]
    if missing:
        raise RemoteError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: create an API "
                          "client in Jamf Pro (Settings > System > API roles and clients) and export its client ID "
                          "and secret; mdmgen reads them only from the environment")
    return client_id, secret


class JamfHTTPError(HTTPStatusError):
    """Jamf answered with an error status; the message is one line for the user."""


def error_reason(content_type: str, body: bytes, secrets: Iterable[str] = ()) -> str:
    """One line from a Jamf error body: the ``Error: ...`` of a Classic HTML status page (§7.1),
    the first error of the Jamf Pro API's JSON (§7.2), or an OAuth ``error`` (§1.1).

    ``secrets`` are redacted in every form, in the body as it came and again in the line taken
    from it (after JSON and HTML unescaping), and always before the line is cut short."""
    secrets = tuple(secrets)
    text = redact(body.decode("utf-8", "replace"), secrets)
    reason = ""
    if "json" in content_type:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nested thousands deep
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
    return shorten(" ".join(reason.split()), 200, secrets)


class JamfClient:
    """Talks to one Jamf Pro server: the access token, and requests through the shared HTTP layer.

    Thread-safe: the publisher calls it from up to ``max_connections`` workers. The token is
    requested once and renewed by whichever thread first needs it within ``min(60 s, a fifth of
    its lifetime)`` of expiry. If getting a token fails (after the retry policy), every later
    request fails with the same error at once: the run is over, and parallel workers must not
    each hammer a failing token endpoint again.
    """

    def __init__(self, base_url: str, client_id: str, client_secret: str, *,
                 max_connections: int = JAMF_MAX_CONNECTIONS, timeout: float = JAMF_TIMEOUT,
                 attempts: int = DEFAULT_ATTEMPTS, base_delay: float = DEFAULT_BASE_DELAY,
                 max_delay: float = DEFAULT_MAX_DELAY, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 ssl_context: ssl.SSLContext | None = None, transport: httpx.BaseTransport | None = None):
        self.base_url = check_url(base_url)
        self.max_connections = max(1, min(max_connections, JAMF_MAX_CONNECTIONS))
        self.timeout = timeout
        self.attempts = attempts
        self._client_id = client_id
        self._secret = client_secret
        self._clock = clock
        self._wall_clock = wall_clock
        self._policy = RetryPolicy(attempts=attempts, base_delay=base_delay, max_delay=max_delay, sleep=sleep)
        self._http = Connection(self.base_url, service="Jamf Pro", max_connections=self.max_connections,
                                timeout=timeout, user_agent=f"mdmgen/{__version__}", log=log,
                                timeout_hint="try a larger --timeout", log_prefix="jamf: ",
                                ssl_context=ssl_context, transport=transport)
        self._token_lock = threading.Lock()
        self._token: str | None = None
        self._token_failure: RemoteError | None = None
        self._renew_at = 0.0
        self._token_paths = TOKEN_PATHS
        self._spent: list[str] = []  # tokens issued to this client, to keep them out of messages

    @classmethod
    def from_environment(cls, base_url: str, environ: Mapping[str, str] | None = None, **kwargs) -> JamfClient:
        env = os.environ if environ is None else environ
        check_network(env)
        client_id, secret = credentials_from(env)
        return cls(base_url, client_id, secret, **kwargs)

    def request(self, method: str, path: str, *, doing: str, body: bytes | None = None,
                content_type: str | None = None, accept: str = "application/json",
                retry_404: bool = False) -> Response:
        """One authorised request under the retry policy; the 2xx response, or RemoteError
        (JamfHTTPError for an error status) with a one-line message saying what was being done.

        With ``retry_404`` a 404 is retried too: a profile just created that another Jamf Cloud
        node has not seen yet (§8). A 401 renews the token once; a second 401 is final.
        """
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type

        def attempt() -> Response:
            token = self._access_token()
            response = self._http.send(method, path, doing=doing, content=body,
                                       headers={**headers, "Authorization": f"Bearer {token}"})
            if response.status == 401:  # expired early or revoked: renew once
                self._forget(token)
                token = self._access_token()
                response = self._http.send(method, path, doing=doing, content=body,
                                           headers={**headers, "Authorization": f"Bearer {token}"})
                if response.status == 401:
                    raise JamfHTTPError(f"Jamf Pro refused a fresh access token (401) while {doing}; check that "
                                        "the API client is enabled and has an API role", 401)
            if not 200 <= response.status < 300:
                raise self._http_error(method, path, response)
            return response

        return self._policy.run(attempt, retry_404=retry_404)

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    def _http_error(self, method: str, path: str, response: Response) -> JamfHTTPError:
        reason = self._redact(error_reason(response.content_type, response.body, self._secrets()))
        message = f"Jamf Pro answered {response.status} {reason_phrase(response.status)} while {response.doing}"
        if 300 <= response.status < 400:  # Jamf's API does not redirect; a portal or proxy in front does
            location = urlsplit(response.headers.get("Location", ""))
            where = f" to {location.scheme}://{location.netloc}{location.path}" if location.netloc else ""
            message += f": redirected{where}; is a sign-in portal or a proxy in the way? Check --url and NO_PROXY"
        elif response.status == 403:
            what = ("Computers" if "computers-inventory" in path else "macOS Configuration Profiles")
            privilege = "Read" if "computers-inventory" in path else _PRIVILEGES.get(method, method)
            message += f": the API client's role needs the '{privilege} {what}' privilege"
        elif reason:
            message += f": {reason}"
        return JamfHTTPError(message, response.status, reason, response.retry_after(self._wall_clock()))

    # -- the access token (§1.1) --

    def _access_token(self) -> str:
        with self._token_lock:
            if self._token_failure is not None:
                raise self._token_failure
            if self._token is None or self._clock() >= self._renew_at:
                try:
                    self._token, lifetime = self._request_token()
                except RemoteError as exc:
                    self._token_failure = exc
                    raise
                self._spent.append(self._token)
                self._renew_at = self._clock() + lifetime - min(60.0, lifetime / 5)
                log.info("jamf: obtained an access token (valid for %g s)", lifetime)
            return self._token

    def _forget(self, token: str) -> None:
        with self._token_lock:
            if self._token == token:
                self._token = None

    def _request_token(self) -> tuple[str, float]:
        """A new token, under the retry policy once (never inside another retry loop: a token
        failure that used up its attempts is ``exhausted``, so a request does not retry it)."""
        form = urlencode({"grant_type": "client_credentials", "client_id": self._client_id,
                          "client_secret": self._secret}).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        doing = "requesting an access token"
        for path in self._token_paths:

            def call(path: str = path) -> Response:
                response = self._http.send("POST", path, doing=doing, headers=headers, content=form,
                                           max_body=MAX_SMALL_BODY)
                if response.status >= 500 or response.status == 429 or 300 <= response.status < 400:
                    raise self._http_error("POST", path, response)
                return response

            response = self._policy.run(call)
            if response.status in (404, 405) and path != self._token_paths[-1]:
                continue  # this server serves the other path (§1.1)
            if response.status == 200:
                data = response.json()
                try:
                    token, lifetime = str(data["access_token"]), float(data["expires_in"])
                except (KeyError, TypeError, ValueError):
                    raise RemoteError(f"Jamf Pro at {self.base_url} sent an unexpected answer to the token "
                                      f"request on {path}") from None
                self._token_paths = (path,)
                return token, max(lifetime, 1.0)
            reason = self._redact(error_reason(response.content_type, response.body, self._secrets()))
            if response.status in (400, 401) and "invalid_client" in reason:
                raise RemoteError(f"Jamf Pro rejected the API client credentials (invalid_client): check "
                                  f"{ENV_CLIENT_ID} and {ENV_CLIENT_SECRET}, and that the API client is enabled")
            if response.status in (404, 405):
                raise RemoteError(f"no OAuth token endpoint at {self.base_url} (tried {' and '.join(TOKEN_PATHS)}): "
                                  "is this Jamf Pro 10.49 or later?")
            raise RemoteError(f"Jamf Pro refused the token request ({response.status} "
                              f"{reason_phrase(response.status)}: {reason})")
        raise AssertionError("unreachable")  # pragma: no cover

    def _secrets(self) -> tuple[str, ...]:
        """The client secret (alone and as the ``id:secret`` of Basic auth) and every token obtained."""
        return (self._secret, f"{self._client_id}:{self._secret}", *self._spent)

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets())
