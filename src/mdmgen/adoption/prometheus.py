"""The org's Prometheus as a source: the series the generated collector rules count.

The rules (``emit/collector/prometheus_rules.py``) call a person active when a
``claude_code_session_count_total`` series with their ``user_email`` label has a sample in the window
(``last_over_time``: a counter's first sample is invisible to ``increase``). The same test is asked
here once per UTC day, through the HTTP API's instant query (``GET /api/v1/query``), grouped by the
rules' team label and ``user_email``: the label values are what the devices send, so with
``pseudonymise_email`` they are pseudonyms already.

Credentials come from the environment only: ``PROMETHEUS_BEARER_TOKEN``, or ``PROMETHEUS_USERNAME``
and ``PROMETHEUS_PASSWORD`` (basic auth). They never appear in a message or a log line.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import __version__, secrets
from ..emit.collector.fleet import SESSION_METRIC
from ..environment import text
from ..http import Connection, HTTPStatusError, Response, RetryPolicy, UnexpectedAnswer, reason_phrase
from ..messages import redact, shorten
from .identity import Identities
from .models import Activity, AdoptionUsageError, SourceError, source_url

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("mdmgen.adoption.prometheus")

TOKEN_ENV = "PROMETHEUS_BEARER_TOKEN"
USERNAME_ENV = "PROMETHEUS_USERNAME"
PASSWORD_ENV = "PROMETHEUS_PASSWORD"
PERSON_LABEL = "user_email"
MAX_LABEL = 1024
CANNOT_SEE = ("Prometheus: only devices whose Claude Code telemetry reaches the collector (telemetry on, "
              "client 2.1.161+ for team and user_email labels), no sessions count, and no API-key usage")
SERVICE = "Prometheus"


def checked_url(url: str) -> str:
    """The Prometheus base URL (a path prefix kept); AdoptionUsageError (exit 2) when credentials could leak."""
    return source_url(url, "--prometheus-url", credentials_go=f"in {TOKEN_ENV}, or {USERNAME_ENV} and {PASSWORD_ENV}",
                      shape="https://HOST[:PORT][/PATH]")


def credentials(environ: Mapping[str, str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """The Authorization header (if any) and the secret values to keep out of messages."""
    token = text(environ, TOKEN_ENV).strip()
    user, password = text(environ, USERNAME_ENV), text(environ, PASSWORD_ENV)
    if token and (user or password):
        raise AdoptionUsageError(f"{TOKEN_ENV} and {USERNAME_ENV}/{PASSWORD_ENV} are both set; set one of them")
    if token:
        return {"Authorization": f"Bearer {token}"}, (token,)
    if bool(user) != bool(password):
        raise AdoptionUsageError(f"{USERNAME_ENV} and {PASSWORD_ENV} go together; set both, or neither")
    if user:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {basic}"}, (password, f"{user}:{password}", basic)
    return {}, ()


class _Sample(BaseModel):
    model_config = ConfigDict(extra="ignore")

    metric: dict[str, str]
    value: tuple[float, str]


class _Data(BaseModel):
    model_config = ConfigDict(extra="ignore")

    resultType: str  # Prometheus' own name
    result: list[_Sample] = Field(default_factory=list)


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    status: str
    data: _Data | None = None


def day_query(team_label: str) -> str:
    """Per team and person, whether a session series has a sample in the day ending at the query's time."""
    return f"count by ({team_label}, {PERSON_LABEL}) (last_over_time({SESSION_METRIC}[1d]))"


class PrometheusAPI:
    """Instant queries against one Prometheus. ``sleep`` and ``wall_clock`` are injectable for tests."""

    def __init__(self, base_url: str, headers: Mapping[str, str], secrets_: tuple[str, ...], *, timeout: float,
                 attempts: int = 5, sleep: Callable[[float], None] = time.sleep,
                 wall_clock: Callable[[], float] = time.time, ssl_context=None,
                 transport: httpx.BaseTransport | None = None):
        self.base_url = checked_url(base_url)
        self._headers = {"Accept": "application/json", **headers}
        self._secrets = secrets_
        self._wall_clock = wall_clock
        self._policy = RetryPolicy(attempts=attempts, sleep=sleep)
        self._http = Connection(self.base_url, service=SERVICE, max_connections=1, timeout=timeout,
                                user_agent=f"mdmgen/{__version__}", log=log, timeout_hint="try a larger --timeout",
                                log_prefix="prometheus: ", ssl_context=ssl_context,
                                transport=transport)

    def close(self) -> None:
        self._http.close()

    def activity(self, days: Iterable[date], identities: Identities, team_label: str) -> Activity:
        found = Activity(source="prometheus", cannot_see=CANNOT_SEE)
        for day in days:
            end = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
            for sample in self.query(day_query(team_label), end.timestamp() - 0.001, f"the sessions of {day}"):
                sent = _person(sample.metric.get(PERSON_LABEL, ""), identities.pseudonymised)
                if sent is None:
                    continue
                person = identities.of_sent(sent)
                seen = found.people.setdefault(person, [])
                if day not in seen:
                    seen.append(day)
                team = sample.metric.get(team_label)
                if team and len(team) <= MAX_LABEL:
                    found.teams.setdefault(person, team)
        return found

    def query(self, promql: str, at: float, what: str) -> list[_Sample]:
        doing = f"querying {what}"

        def attempt() -> Response:
            path = "/api/v1/query?" + urlencode({"query": promql, "time": f"{at:.3f}"})
            response = self._http.send("GET", path, doing=doing, headers=self._headers)
            if not 200 <= response.status < 300:
                raise self._error(response)
            return response

        body = self._policy.run(attempt).json()
        try:
            answer = _Answer.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise SourceError(f"{SERVICE} at {self.base_url} sent an unexpected answer while {doing}: {where}: "
                              f"{first['msg']}") from None
        if answer.status != "success" or answer.data is None or answer.data.resultType != "vector":
            raise SourceError(f"{SERVICE} at {self.base_url} did not answer with a vector while {doing}")
        return answer.data.result

    def _error(self, response: Response) -> HTTPStatusError:
        reason = ""
        try:
            data = response.json() if "json" in response.content_type else None
        except UnexpectedAnswer:  # an HTML error page: no reason to read
            data = None
        if isinstance(data, dict):
            reason = " ".join(str(data.get(k) or "") for k in ("errorType", "error")).strip()
        reason = shorten(" ".join(redact(reason, self._secrets).split()), 200, self._secrets)
        message = (f"{SERVICE} at {self.base_url} answered {response.status} {reason_phrase(response.status)} "
                   f"while {response.doing}" + (f": {reason}" if reason else ""))
        if response.status in (401, 403):
            message += f"; check {TOKEN_ENV}, or {USERNAME_ENV} and {PASSWORD_ENV}"
        return HTTPStatusError(message, response.status, reason, response.retry_after(self._wall_clock()))


def _person(value: str, pseudonymised: bool) -> str | None:
    """The person of a ``user_email`` label. Claude Code's own ``user.email`` becomes the same label,
    and colliding values are joined with ``;`` (collector-side.md §1.3): the device's attribute is
    taken (a pseudonym when pseudonymised, else an address), never the other half."""
    parts = [p.strip() for p in value.split(";") if p.strip() and len(p.strip()) <= MAX_LABEL]
    wanted = (lambda p: bool(secrets.PSEUDONYM_RE.match(p))) if pseudonymised else (lambda p: "@" in p)
    chosen = [p for p in parts if wanted(p)]
    return chosen[0] if chosen else (parts[0] if parts else None)
