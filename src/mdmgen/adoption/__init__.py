"""``mdmgen adoption``: per team, who is enrolled, who uses Claude Code, and who never reports.

The stages, I/O at the edges and the join pure in the middle:

1. :mod:`.fleet` reads the compiled output folder through the one checked reader, under the shared
   lock: each device's team and the person it sends (an email, or a pseudonym).
2. The sources, each through the shared HTTP layer: the Anthropic Admin API (:mod:`.anthropic`)
   and the org's Prometheus (:mod:`.prometheus`). Each gives an :class:`~.models.Activity` keyed by
   the same identity keys (:mod:`.identity`).
3. :mod:`.join` builds the :class:`~.models.Report`; :mod:`.render` and :mod:`.chart` show it.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from ..environment import check_network
from ..publish.defaults import ANTHROPIC_URL
from . import anthropic, chart, fleet, join, prometheus, render
from .identity import Identities
from .models import Activity, AdoptionUsageError, FileWriteError, Fleet, Report, SourceError

__all__ = ["AdoptionUsageError", "FileWriteError", "Options", "Outcome", "Report", "SourceError", "run"]


@dataclass(frozen=True)
class Options:
    out: Path
    days: int = 7
    anthropic_url: str | None = None
    """None: the default URL, used when ``ANTHROPIC_ADMIN_KEY`` is set."""
    prometheus_url: str | None = None
    timeout: float = 30.0
    csv: Path | None = None
    chart: Path | None = None
    today: date | None = None
    """The day the window ends before (default: today in UTC): a past report, reproduced."""


@dataclass(frozen=True)
class Outcome:
    report: Report
    written: tuple[Path, ...]


@dataclass(frozen=True)
class _Plan:
    key: str | None
    anthropic_url: str | None
    prometheus_url: str | None
    prometheus_auth: tuple[dict[str, str], tuple[str, ...]]


def _plan(options: Options, environ: Mapping[str, str]) -> _Plan:
    """The sources to ask, checked before the output folder is read or anything is sent (exit 2)."""
    check_network(environ)
    if options.chart is not None:
        chart.check_path(options.chart)
    key = anthropic.admin_key(environ)
    if options.anthropic_url is not None and key is None:
        raise AdoptionUsageError(f"--anthropic-url is given but {anthropic.KEY_ENV} is not set: export an Admin API "
                                 "key (sk-ant-admin01-...); mdmgen reads it only from the environment")
    if key is None and options.prometheus_url is None:
        raise AdoptionUsageError(f"no source: set {anthropic.KEY_ENV} (an Admin API key) to read the Anthropic Admin "
                                 "API, or pass --prometheus-url, or both")
    url = anthropic.checked_url(options.anthropic_url or ANTHROPIC_URL) if key else None
    prom = prometheus.checked_url(options.prometheus_url) if options.prometheus_url is not None else None
    auth = prometheus.credentials(environ) if prom else ({}, ())
    return _Plan(key, url, prom, auth)


def run(options: Options, *, environ: Mapping[str, str] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC), sleep: Callable[[float], None] = time.sleep,
        ssl_context=None) -> Outcome:
    """The adoption report, and the ``--csv`` and ``--chart`` files written. Raises AdoptionUsageError
    (exit 2), ``output.OutputUnusable`` (1; ``OutputBusy`` 5), ``environment.EnvironmentValueError`` (2),
    RemoteError/SourceError (7) and FileWriteError (4)."""
    report = build(options, environ=environ, now=now, sleep=sleep, ssl_context=ssl_context)
    written = []
    if options.csv is not None:
        _write(options.csv, lambda: _atomic(options.csv, render.csv_bytes(report)))
        written.append(options.csv)
    if options.chart is not None:
        figure = chart.figure(report)
        _write(options.chart, lambda: _atomic(options.chart, chart.render(figure, options.chart.suffix)))
        written.append(options.chart)
    return Outcome(report, tuple(written))


def _write(path: Path, write: Callable[[], None]) -> None:
    try:
        write()
    except OSError as exc:
        raise FileWriteError(f"{path}: cannot write: {exc.strerror or exc}") from None


def _atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` in one step: a reader sees the old file or the new one. The
    temporary file is made new (``mkstemp``), so a link planted under a guessable name is never
    followed."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".mdmgen-tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def build(options: Options, *, environ: Mapping[str, str] | None = None,
          now: Callable[[], datetime] = lambda: datetime.now(UTC), sleep: Callable[[float], None] = time.sleep,
          ssl_context=None) -> Report:
    """The report alone (see :func:`run`)."""
    env = os.environ if environ is None else environ
    plan = _plan(options, env)
    enrolled = fleet.read(options.out)
    identities = Identities.for_fleet(enrolled.pseudonymised)
    enrolled = enrolled.keyed(identities.of_sent)
    moment = now()
    days = join.window(options.today or moment.date(), options.days)
    activities: list[Activity] = []
    urls: list[str] = []
    if plan.key and plan.anthropic_url:
        api = anthropic.AdminAPI(plan.anthropic_url, plan.key, timeout=options.timeout, sleep=sleep,
                                 wall_clock=lambda: moment.timestamp(), ssl_context=ssl_context)
        try:
            activities.append(api.activity(days, identities))
        finally:
            api.close()
        urls.append(plan.anthropic_url)
    if plan.prometheus_url:
        headers, hidden = plan.prometheus_auth
        prom = prometheus.PrometheusAPI(plan.prometheus_url, headers, hidden, timeout=options.timeout, sleep=sleep,
                                        wall_clock=lambda: moment.timestamp(), ssl_context=ssl_context)
        try:
            activities.append(prom.activity(days, identities, enrolled.team_label))
        finally:
            prom.close()
        urls.append(plan.prometheus_url)
    return join.build(enrolled, activities, days, urls, _notes(moment, days, activities, enrolled))


def _notes(moment: datetime, days, activities: list[Activity], enrolled: Fleet) -> list[str]:
    notes = []
    if days and any(a.source == "anthropic" for a in activities):
        end = datetime(days[-1].year, days[-1].month, days[-1].day, tzinfo=UTC) + timedelta(days=1)
        if moment - timedelta(hours=1) < end:
            notes.append(f"{days[-1]} may still miss its last hour: the Admin API has only data older than 1 hour")
    people = {d.person for d in enrolled.devices if d.person}
    for activity in activities:
        if enrolled.pseudonymised and activity.people and people and not set(activity.people) & people:
            notes.append(f"none of the {len(activity.people)} people {activity.source} saw is enrolled: is "
                         "MDMGEN_PSEUDONYM_KEY the key the output folder was compiled with?")
    return notes
