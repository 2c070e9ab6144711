"""The Claude Code Analytics Admin API (``GET /v1/organizations/usage_report/claude_code``) as a source.

Facts from ``shared/reference/analytics-api.md`` (sections as ``§``): one UTC day per call, paged by an
opaque cursor until ``has_more`` is false (§2, §4); ``date`` as ``YYYY-MM-DD`` or RFC 3339 midnight
(§3); ``user_actor`` rows carry an email, ``api_actor`` rows only a key name; remote and local usage
are separate rows (§3). Errors use the API's envelope (§5); 429, 5xx and 529 are retried by the shared
policy (:mod:`mdmgen.http`). The Admin key comes from ``ANTHROPIC_ADMIN_KEY`` only and never
appears in a message or a log line.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import __version__
from ..environment import text
from ..http import Connection, HTTPStatusError, Response, RetryPolicy, reason_phrase
from ..messages import redact, shorten
from .identity import Identities
from .models import Activity, SourceError, source_url

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("mdmgen.adoption.anthropic")

KEY_ENV = "ANTHROPIC_ADMIN_KEY"
PATH = "/v1/organizations/usage_report/claude_code"
API_VERSION = "2023-06-01"
PAGE_LIMIT = 1000
"""The most records a page may hold (§2): the fewest requests."""
MAX_PAGES_PER_DAY = 10_000
"""Ten million rows in one day: a server that never says ``has_more: false`` is stopped here."""
MAX_PAGE_BYTES = 16 << 20
CANNOT_SEE = ("Anthropic Admin API: Claude API usage only (not Bedrock, Vertex or Foundry), may miss "
              "subscription (claude.ai) sign-ins, API-key usage has no person, and the last hour is not in it yet")
SERVICE = "the Anthropic Admin API"


def admin_key(environ: Mapping[str, str]) -> str | None:
    """``ANTHROPIC_ADMIN_KEY``, or None when unset or empty."""
    return text(environ, KEY_ENV).strip() or None


def checked_url(url: str) -> str:
    """The Admin API's base URL; AdoptionUsageError (exit 2) when the key could leak."""
    return source_url(url, "--anthropic-url", credentials_go=f"in {KEY_ENV}", shape="https://HOST[:PORT]")


class _Actor(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str = Field(max_length=64)
    email_address: str | None = Field(default=None, max_length=320)
    api_key_name: str | None = Field(default=None, max_length=500)


class _CoreMetrics(BaseModel):
    model_config = ConfigDict(extra="ignore")

    num_sessions: int = Field(default=0, ge=0)


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")

    date: str = Field(max_length=40)
    actor: _Actor
    is_remote: bool | None = None
    core_metrics: _CoreMetrics = Field(default_factory=_CoreMetrics)


class _Page(BaseModel):
    model_config = ConfigDict(extra="ignore")

    data: list[_Record]
    has_more: bool = False
    next_page: str | None = Field(default=None, max_length=4096)


def parse_day(value: str) -> date:
    """A record's ``date``: ``YYYY-MM-DD`` (before 2026-08-05) or RFC 3339 at midnight UTC (§3)."""
    if len(value) == 10:
        return date.fromisoformat(value)
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.utcoffset() is None or moment.utcoffset().total_seconds() != 0 or moment.time() != datetime.min.time():
        raise ValueError(f"{value!r} is not midnight UTC")
    return moment.date()


class AdminAPI:
    """Reads Claude Code usage per UTC day. ``sleep`` and ``wall_clock`` are injectable for tests."""

    def __init__(self, base_url: str, key: str, *, timeout: float, attempts: int = 5,
                 sleep: Callable[[float], None] = time.sleep, wall_clock: Callable[[], float] = time.time,
                 ssl_context=None, transport: httpx.BaseTransport | None = None):
        self.base_url = checked_url(base_url)
        self._key = key
        self._wall_clock = wall_clock
        self._policy = RetryPolicy(attempts=attempts, sleep=sleep)
        self._http = Connection(self.base_url, service=SERVICE, max_connections=1, timeout=timeout,
                                user_agent=f"mdmgen/{__version__}", log=log, timeout_hint="try a larger --timeout",
                                log_prefix="anthropic: ", ssl_context=ssl_context, max_body=MAX_PAGE_BYTES,
                                transport=transport)

    def close(self) -> None:
        self._http.close()

    def activity(self, days: Iterable[date], identities: Identities) -> Activity:
        """Who had sessions on which day, API-key usage, over ``days``; rows of one person (remote and
        local, several terminals, several spellings of the email) are merged, zero-session rows ignored."""
        found = Activity(source="anthropic", cannot_see=CANNOT_SEE)
        for day in days:
            for record in self.day(day):
                sessions = record.core_metrics.num_sessions
                if record.actor.type == "api_actor":
                    name = record.actor.api_key_name or "(unnamed key)"
                    found.api_keys[name] = found.api_keys.get(name, 0) + sessions
                elif record.actor.type == "user_actor" and record.actor.email_address:
                    if sessions <= 0:
                        continue  # a row with no session is not activity
                    person = identities.of_email(record.actor.email_address)
                    seen = found.people.setdefault(person, [])
                    if day not in seen:
                        seen.append(day)
                    found.sessions[person] = found.sessions.get(person, 0) + sessions
                else:
                    log.info("anthropic: a row of %s with an actor of type %r was skipped", day, record.actor.type)
        return found

    def day(self, day: date) -> list[_Record]:
        """Every record of one UTC day, paged to its end."""
        records: list[_Record] = []
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES_PER_DAY):
            page = self._page(day, cursor)
            for record in page.data:
                try:
                    when = parse_day(record.date)
                except ValueError:
                    raise SourceError(f"{SERVICE} sent a row dated {shorten(record.date, 40)!r} for {day}, which is "
                                      "not a UTC day") from None
                if when != day:
                    raise SourceError(f"{SERVICE} sent a row of {when} when asked for {day}")
                records.append(record)
            if not page.has_more:
                return records
            if not page.next_page or page.next_page in seen:
                raise SourceError(f"{SERVICE} said more rows of {day} follow but gave "
                                  f"{'no' if not page.next_page else 'an already used'} cursor")
            seen.add(page.next_page)
            cursor = page.next_page
        raise SourceError(f"{SERVICE} sent more than {MAX_PAGES_PER_DAY} pages for {day}; stopped")

    def _page(self, day: date, cursor: str | None) -> _Page:
        query = {"starting_at": day.isoformat(), "limit": PAGE_LIMIT, **({"page": cursor} if cursor else {})}
        doing = f"reading the Claude Code usage of {day}"
        headers = {"x-api-key": self._key, "anthropic-version": API_VERSION, "Accept": "application/json"}

        def attempt() -> Response:
            response = self._http.send("GET", f"{PATH}?{urlencode(query)}", doing=doing, headers=headers)
            if not 200 <= response.status < 300:
                raise self._error(response)
            return response

        body = self._policy.run(attempt).json()
        try:
            return _Page.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise SourceError(f"{SERVICE} sent an unexpected answer while {doing}: {where}: {first['msg']}") from None

    def _error(self, response: Response) -> HTTPStatusError:
        kind, reason = _envelope(response.body)
        reason = shorten(" ".join(redact(reason, (self._key,)).split()), 200, (self._key,))
        request_id = shorten(response.headers.get("request-id", ""), 80)
        message = (f"{SERVICE} answered {response.status} {reason_phrase(response.status) or ''}".rstrip()
                   + f" while {response.doing}" + (f" ({kind}: {reason})" if kind or reason else ""))
        hint = {401: f"check {KEY_ENV}: it must be an Admin API key (sk-ant-admin01-...) of the organisation",
                403: "the key may not read usage reports: use an Admin API key (workspace keys do not work)",
                404: "is --anthropic-url the API's base URL (https://api.anthropic.com)?"}.get(response.status)
        if hint:
            message += f"; {hint}"
        if request_id:
            message += f" [request-id {request_id}]"
        return HTTPStatusError(message, response.status, reason, response.retry_after(self._wall_clock()))


def _envelope(body: bytes) -> tuple[str, str]:
    """``(error.type, error.message)`` of the API's error envelope (§5), or what can be read."""
    try:
        data = json.loads(body[:65536])
    except (ValueError, RecursionError):
        return "", ""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return "", ""
    kind = error.get("type")
    message = error.get("message")
    return (str(kind)[:60] if isinstance(kind, str) else "", str(message) if isinstance(message, str) else "")

