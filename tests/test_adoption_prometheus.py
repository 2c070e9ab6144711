"""``mdmgen adoption --prometheus-url`` against the real Prometheus (Debian's ``prometheus`` server),
fed by ``promtool tsdb create-blocks-from openmetrics`` with the series the devices' telemetry becomes:
the queries, labels and days are Prometheus' own answers, not a fake's."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from mdmgen import secrets
from mdmgen.adoption import prometheus
from mdmgen.adoption.models import AdoptionUsageError
from mdmgen.emit.collector.fleet import SESSION_METRIC
from mdmgen.exitcodes import ExitCode

from .conftest import require_tool, run, write_inventory
from .test_adoption import INVENTORY, TODAY, WINDOW, teams_of

GUARD = 60.0
"""A hang guard for the server's start, not a speed assertion."""


def _at(day: date, hour: int) -> int:
    return int(datetime(day.year, day.month, day.day, hour, tzinfo=UTC).timestamp())


def series(label: str, pseudonym=lambda email: email) -> str:
    """The session counters the collector exports, by team label and person, at chosen hours."""
    samples = [
        # alice: one series per device, the 13th and the 14th
        ("Platform Eng", "alice.nguyen@example.com", [(WINDOW[0], 9, 1), (WINDOW[1], 10, 2)]),
        # bob: the device's attribute and Claude Code's own user.email, joined with ';' (collector-side §1.3)
        ("Mobile", f"{pseudonym('bob.smith@example.com')};Bob.Smith@Example.com", [(WINDOW[3], 8, 1)]),
        # dmitri: only before the window
        ("Platform Eng", "dmitri.petrov@example.com", [(date(2026, 8, 10), 12, 1)]),
        # a contractor, not in the inventory
        ("Partners", "contractor@partner.example", [(WINDOW[6], 23, 4)]),
    ]
    lines = [f"# TYPE {SESSION_METRIC.removesuffix('_total')} counter"]
    for team, person, points in samples:
        person = pseudonym(person) if ";" not in person else person
        for day, hour, value in points:
            lines.append(f'{SESSION_METRIC}{{{label}="{team}",user_email="{person}"}} {value} {_at(day, hour)}')
    return "\n".join([*lines, "# EOF", ""])


@pytest.fixture
def real_prometheus(tmp_path):
    """Start Prometheus on port 0 (it reports the port it got) over blocks made from ``data.om``."""
    binary = require_tool("prometheus", "Debian's prometheus package: the real server answers the queries")
    promtool = require_tool("promtool", "Debian's prometheus package: it writes the server's blocks")
    started: list[subprocess.Popen] = []

    def start(om_text: str) -> str:
        folder = tmp_path / "prometheus"
        folder.mkdir()
        (folder / "data.om").write_text(om_text)
        subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", "data.om", "tsdb"], cwd=folder,
                       check=True, capture_output=True, timeout=GUARD)
        (folder / "prometheus.yml").write_text("global: {}\n")
        log = (folder / "log.txt").open("wb")
        process = subprocess.Popen([binary, "--config.file=prometheus.yml", "--storage.tsdb.path=tsdb",
                                    "--storage.tsdb.retention.time=100y", "--web.listen-address=127.0.0.1:0"],
                                   cwd=folder, stdout=log, stderr=subprocess.STDOUT)
        started.append(process)
        give_up = time.monotonic() + GUARD
        while time.monotonic() < give_up and process.poll() is None:
            found = re.search(r'msg="Listening on" address=127\.0\.0\.1:(\d+)', (folder / "log.txt").read_text())
            if found:
                url = f"http://127.0.0.1:{found.group(1)}"
                try:
                    with urllib.request.urlopen(f"{url}/-/ready", timeout=5) as ready:
                        if ready.status == 200:
                            return url
                except OSError:
                    pass
            time.sleep(0.1)
        pytest.fail(f"prometheus did not start: {(folder / 'log.txt').read_text()[-2000:]}")

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=GUARD)


def collector_policy(workdir: Path, *, pseudonymise: bool = False) -> None:
    """The devices send their team as ``department``; the collector side is generated."""
    policy = workdir / "profiles" / "policy.yaml"
    text = policy.read_text().replace('  team: "{{ team }}"', '  department: "{{ team }}"')
    text += "\ncollector:\n  token_env: OTEL_TOKEN\n" + ("pseudonymise_email: true\n" if pseudonymise else "")
    policy.write_text(text)


def test_per_team_figures_from_the_real_prometheus_by_the_label_the_devices_send(workdir, real_prometheus,
                                                                                  monkeypatch):
    collector_policy(workdir)
    write_inventory(workdir, INVENTORY)
    assert run(workdir, "compile").exit_code == 0
    monkeypatch.delenv("ANTHROPIC_ADMIN_KEY", raising=False)
    url = real_prometheus(series("department"))
    result = run(workdir, "adoption", "--prometheus-url", url, "--today", TODAY.isoformat(), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert teams_of(data) == {"Platform Eng": (2, 1), "Mobile": (2, 1), "=SUM(A1) $x$ Café": (1, 0)}
    platform = next(t for t in data["teams"] if t["team"] == "Platform Eng")
    assert platform["daily_active"] == {d.isoformat(): (1 if d in WINDOW[:2] else 0) for d in WINDOW}
    assert platform["not_reporting"]["people"] == ["dmitri.petrov@example.com"]
    assert data["active_not_enrolled"] == [{"user": "contractor@partner.example", "days_active": 1, "sessions": None,
                                            "team": "Partners", "sources": ["prometheus"]}]
    assert [s["name"] for s in data["sources"]] == ["prometheus"] and "API-key" in data["sources"][0]["cannot_see"]


def test_pseudonymised_telemetry_joins_and_no_raw_email_is_printed(workdir, real_prometheus, monkeypatch):
    key = "adoption-prometheus-pseudonym-key-0001"
    monkeypatch.setenv(secrets.KEY_ENV, key)
    collector_policy(workdir, pseudonymise=True)
    write_inventory(workdir, INVENTORY)
    assert run(workdir, "compile").exit_code == 0
    monkeypatch.delenv("ANTHROPIC_ADMIN_KEY", raising=False)
    pseudonymiser = secrets.Pseudonymiser(key.encode())
    url = real_prometheus(series("department", pseudonymiser.pseudonym))
    result = run(workdir, "adoption", "--prometheus-url", url, "--today", TODAY.isoformat(), "--json")
    assert result.exit_code == 0, result.output
    assert teams_of(json.loads(result.stdout)) == {"Platform Eng": (2, 1), "Mobile": (2, 1),
                                                   "=SUM(A1) $x$ Café": (1, 0)}
    text = run(workdir, "adoption", "--prometheus-url", url, "--today", TODAY.isoformat())
    assert "@" not in result.output + text.output


def test_an_unreachable_prometheus_is_one_line_exit_7(workdir, monkeypatch):
    write_inventory(workdir, INVENTORY)
    assert run(workdir, "compile").exit_code == 0
    monkeypatch.delenv("ANTHROPIC_ADMIN_KEY", raising=False)
    monkeypatch.setenv(prometheus.TOKEN_ENV, "prom-token-that-must-not-show")
    result = run(workdir, "adoption", "--prometheus-url", "http://127.0.0.1:1", "--timeout", "2")
    assert result.exit_code == ExitCode.REMOTE_FAILED
    assert len(result.stderr.strip().splitlines()) == 1 and "prom-token" not in result.output


def test_prometheus_credentials_come_from_the_environment_one_kind_at_a_time():
    assert prometheus.credentials({}) == ({}, ())
    headers, hidden = prometheus.credentials({prometheus.TOKEN_ENV: "t0ken"})
    assert headers == {"Authorization": "Bearer t0ken"} and "t0ken" in hidden
    headers, hidden = prometheus.credentials({prometheus.USERNAME_ENV: "u", prometheus.PASSWORD_ENV: "pw"})
    assert headers == {"Authorization": "Basic dTpwdw=="} and "pw" in hidden and "dTpwdw==" in hidden
    for env in ({prometheus.TOKEN_ENV: "t", prometheus.USERNAME_ENV: "u"}, {prometheus.USERNAME_ENV: "u"}):
        with pytest.raises(AdoptionUsageError):
            prometheus.credentials(env)
