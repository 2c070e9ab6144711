"""``mdmgen adoption`` against the fake Admin API (tests/fakes/anthropic_server.py), as a new user runs it:
a compiled hostile inventory, pages of 3, two 429s first, the exact figures per team, no key or raw
email anywhere, and a chart an image library opens."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import date
from pathlib import Path

import httpx
import pytest

from mdmgen import secrets
from mdmgen.adoption import anthropic, chart, join
from mdmgen.adoption.identity import Identities
from mdmgen.adoption.models import Activity, Device, Fleet
from mdmgen.exitcodes import ExitCode
from mdmgen.http import HTTPStatusError

from .conftest import run, write_inventory
from .fakes.anthropic_server import FakeAnthropicServer, api_row, user_row
from .fakes.hostile import MODES, HostileServer
from .scripted import Script

KEY = "sk-ant-admin01-" + "k3y" * 20
PSEUDONYM_KEY = "adoption-test-pseudonym-key-0123456789"
TODAY = date(2026, 8, 20)
WINDOW = [date(2026, 8, d) for d in range(13, 20)]

# A person with two devices (alice), a team spelled two ways (Mobile/mobile), an email whose case differs
# from what the API sends (Bob), a team name a spreadsheet or matplotlib would read as code, a person
# with a zero-session row only (dmitri), and one with no row at all (erin).
INVENTORY = """serial_number,platform,user_email,team,status
C02AAAAAAAA1,macos,alice.nguyen@example.com,Platform Eng,active
LNX-ALICE-02,linux,Alice.Nguyen@example.com,Platform Eng,active
C02DDDDDDDD4,macos,dmitri.petrov@example.com,Platform Eng,active
C02BBBBBBBB2,macos,Bob.Smith@example.com,Mobile,active
WIN-ERIN-005,windows,erin.ko@example.com,mobile,active
LNX-CARLA-03,linux,carla.jones@example.com,=SUM(A1) $x$ Café,active
"""
EMAILS = ["alice.nguyen@example.com", "dmitri.petrov@example.com", "bob.smith@example.com", "erin.ko@example.com",
          "carla.jones@example.com", "contractor@partner.example"]


def feed(fake: FakeAnthropicServer | Usage) -> None:
    """Usage over the window (and around it, which must not count)."""
    fake.add(date(2026, 8, 12), user_row("erin.ko@example.com", 4))  # before the window
    fake.add(WINDOW[0],
             user_row("alice.nguyen@example.com", 2, remote=True), user_row("ALICE.NGUYEN@example.com", 1),
             user_row("BOB.SMITH@EXAMPLE.COM", 3, terminal="iTerm.app"), user_row("dmitri.petrov@example.com", 0),
             user_row("Contractor@Partner.example", 6), api_row("ci-bot", 5), api_row("idle-key", 0))
    fake.add(WINDOW[1], user_row("alice.nguyen@example.com", 1), user_row("dmitri.petrov@example.com", 0))
    fake.add(WINDOW[6], user_row("carla.jones@example.com", 1, subscription="team"), api_row("ci-bot", 2))
    fake.add(TODAY, user_row("erin.ko@example.com", 9))  # today is not over: not served, not counted


@pytest.fixture
def fake():
    server = FakeAnthropicServer(admin_key=KEY, today=TODAY, page_size=3)
    feed(server)
    with server:
        yield server


@pytest.fixture
def compiled(workdir, monkeypatch):
    write_inventory(workdir, INVENTORY)
    result = run(workdir, "compile")
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("ANTHROPIC_ADMIN_KEY", KEY)
    return workdir


def adoption(workdir: Path, fake: FakeAnthropicServer, *args: str):
    return run(workdir, "adoption", "--anthropic-url", fake.url, "--today", TODAY.isoformat(), *args)


def teams_of(data: dict) -> dict[str, tuple[int, int]]:
    return {t["team"]: (t["enrolled"], t["active"]) for t in data["teams"]}


def test_done_when_exact_figures_per_team_through_pages_and_429s(compiled, fake, tmp_path):
    fake.fail_next(2, 429, retry_after="0")
    result = adoption(compiled, fake, "--days", "7", "--json", "--chart", "adoption.png", "--csv", "adoption.csv",
                      "-vv")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert teams_of(data) == {"Platform Eng": (2, 1), "Mobile": (2, 1), "=SUM(A1) $x$ Café": (1, 1)}
    platform = next(t for t in data["teams"] if t["team"] == "Platform Eng")
    assert platform["not_reporting"] == {"people": ["dmitri.petrov@example.com"], "devices": ["C02DDDDDDDD4"]}
    assert platform["ratio"] == 0.5
    assert platform["daily_active"] == {d.isoformat(): (1 if d in WINDOW[:2] else 0) for d in WINDOW}
    mobile = next(t for t in data["teams"] if t["team"] == "Mobile")
    assert mobile["not_reporting"] == {"people": ["erin.ko@example.com"], "devices": ["WIN-ERIN-005"]}
    assert [o["user"] for o in data["active_not_enrolled"]] == ["contractor@partner.example"]
    assert data["api_key_usage"] == [{"api_key_name": "ci-bot", "sessions": 7}]
    assert data["window"] == {"days": 7, "from": "2026-08-13", "to": "2026-08-19"}
    # every day asked once, each paged to its end; two 429s asked again
    asked = [r["query"] for r in fake.requests]
    assert len(asked) == 2 + 7 + 2  # two 429s, one first page per day, pages 2 and 3 of the 13th (7 rows)
    assert all("limit=1000" in q for q in asked) and not any("2026-08-20" in q for q in asked)
    assert all(r["headers"].get("anthropic-version") == "2023-06-01" for r in fake.requests)
    everything = result.output + (compiled / "adoption.csv").read_text()
    assert KEY not in everything and "k3yk3y" not in everything
    from PIL import Image

    with Image.open(compiled / "adoption.png") as image:
        image.verify()
        assert image.format == "PNG"
    rows = list(csv.DictReader(io.StringIO((compiled / "adoption.csv").read_text())))
    assert {r["team"]: (r["enrolled"], r["active"]) for r in rows}["'=SUM(A1) $x$ Café"] == ("1", "1")


def test_the_text_report_is_sorted_by_ratio_and_names_what_the_source_cannot_see(compiled, fake):
    result = adoption(compiled, fake)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    table = lines[2:5]
    assert [line.split()[0] for line in table] == ["Mobile", "Platform", "=SUM(A1)"]  # 50%, 50%, 100%
    assert any(line.startswith("  Mobile: 1 person: erin.ko@example.com; devices: WIN-ERIN-005") for line in lines)
    assert any("Active but not enrolled (1): contractor@partner.example" in line for line in lines)
    source = [line for line in lines if line.startswith("source: anthropic")]
    assert len(source) == 1 and "Bedrock" in source[0] and "subscription" in source[0] and "last hour" in source[0]


def compile_pseudonymised(workdir, monkeypatch) -> None:
    """The inventory compiled with pseudonymise_email on, and the admin key set, as a nightly job has it."""
    policy = workdir / "profiles" / "policy.yaml"
    policy.write_text(policy.read_text() + "\npseudonymise_email: true\n")
    monkeypatch.setenv(secrets.KEY_ENV, PSEUDONYM_KEY)
    write_inventory(workdir, INVENTORY)
    assert run(workdir, "compile").exit_code == 0
    monkeypatch.setenv("ANTHROPIC_ADMIN_KEY", KEY)


def test_pseudonymised_no_raw_email_in_any_output_and_the_same_figures(workdir, fake, monkeypatch):
    compile_pseudonymised(workdir, monkeypatch)
    as_json = adoption(workdir, fake, "--json", "--csv", "a.csv", "--chart", "a.svg")
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert teams_of(data) == {"Platform Eng": (2, 1), "Mobile": (2, 1), "=SUM(A1) $x$ Café": (1, 1)}
    pseudonymiser = secrets.Pseudonymiser(PSEUDONYM_KEY.encode())
    assert [o["user"] for o in data["active_not_enrolled"]] == [pseudonymiser.pseudonym("contractor@partner.example")]
    text = adoption(workdir, fake, "-v")
    everything = (as_json.output + text.output + (workdir / "a.csv").read_text() + (workdir / "a.svg").read_text())
    lowered = everything.casefold()
    assert not [e for e in EMAILS if e.split("@")[0] in lowered]
    assert "@" not in everything.replace("@font-face", "")


def test_a_wrong_pseudonym_key_is_said(workdir, fake, monkeypatch):
    compile_pseudonymised(workdir, monkeypatch)
    monkeypatch.setenv(secrets.KEY_ENV, "another-key-of-enough-length-000")
    result = adoption(workdir, fake)
    assert result.exit_code == 0
    assert "is MDMGEN_PSEUDONYM_KEY the key the output folder was compiled with?" in result.stdout
    monkeypatch.delenv(secrets.KEY_ENV)
    missing = adoption(workdir, fake)
    assert missing.exit_code == ExitCode.USAGE and "MDMGEN_PSEUDONYM_KEY" in missing.stderr


@pytest.mark.parametrize(("status", "words"), [(401, "check ANTHROPIC_ADMIN_KEY"), (403, "workspace keys")])
def test_a_refused_key_is_one_line_exit_7_without_the_key(compiled, fake, monkeypatch, status, words):
    wrong = "sk-ant-admin01-wrong-" + "z" * 30
    if status == 403:
        fake.workspace_key = wrong
    monkeypatch.setenv("ANTHROPIC_ADMIN_KEY", wrong)
    result = adoption(compiled, fake, "--json")
    assert result.exit_code == ExitCode.REMOTE_FAILED
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and words in errors[0] and f"answered {status}" in errors[0]
    assert wrong not in result.output and "request-id req_" in errors[0]
    assert json.loads(result.stdout)["exit_code"] == 7


def test_a_storm_gives_up_in_one_line_exit_7(compiled, fake):
    fake.fail_next(100, 529, retry_after="0")
    result = adoption(compiled, fake)
    assert result.exit_code == ExitCode.REMOTE_FAILED
    [line] = result.stderr.strip().splitlines()
    assert "529" in line and "overloaded_error" in line and "gave up after 5 attempts" in line
    assert len(fake.requests) == 5


def test_usage_errors_exit_2_before_any_request(compiled, fake, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_ADMIN_KEY")
    no_key = adoption(compiled, fake)
    assert no_key.exit_code == ExitCode.USAGE and "ANTHROPIC_ADMIN_KEY is not set" in no_key.stderr
    no_source = run(compiled, "adoption")
    assert no_source.exit_code == ExitCode.USAGE and "no source" in no_source.stderr
    monkeypatch.setenv("ANTHROPIC_ADMIN_KEY", KEY)
    plain = run(compiled, "adoption", "--anthropic-url", "http://api.example.com")
    assert plain.exit_code == ExitCode.USAGE and "plain http" in plain.stderr
    bad_chart = adoption(compiled, fake, "--chart", "adoption.pdf")
    assert bad_chart.exit_code == ExitCode.USAGE and ".png or .svg" in bad_chart.stderr
    assert fake.requests == []


def test_a_missing_output_folder_is_exit_1_and_an_empty_organisation_a_result(compiled, fake, tmp_path):
    missing = adoption(compiled, fake, "--out", str(tmp_path / "nowhere"))
    assert missing.exit_code == ExitCode.INVALID_INPUT and len(missing.stderr.strip().splitlines()) == 1
    fake.rows.clear()
    empty = adoption(compiled, fake, "--json")
    assert empty.exit_code == 0
    assert teams_of(json.loads(empty.stdout)) == {"Platform Eng": (2, 0), "Mobile": (2, 0), "=SUM(A1) $x$ Café": (1, 0)}


# --- the client against the fake, with the clock and the sleeps injected ----------------------------


class Usage:
    """What :func:`feed` adds, served as the Admin API pages it (3 rows a page, a cursor per page)."""

    def __init__(self, date_format: str) -> None:
        self.rows: dict[date, list[dict]] = {}
        self.date_format = date_format

    def add(self, day: date, *rows: dict) -> None:
        self.rows.setdefault(day, []).extend(rows)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        day = date.fromisoformat(request.url.params["starting_at"])
        offset = int(request.url.params.get("page", "page_0").removeprefix("page_"))
        rows = self.rows.get(day, []) if day < TODAY else []
        more = offset + 3 < len(rows)
        stamp = day.isoformat() if self.date_format == "date" else f"{day}T00:00:00Z"
        return httpx.Response(200, json={"data": [{"date": stamp, **row} for row in rows[offset:offset + 3]],
                                         "has_more": more, "next_page": f"page_{offset + 3}" if more else None})


@pytest.mark.parametrize("date_format", ["date", "rfc3339"])
def test_the_client_pages_each_day_to_its_end_and_honours_retry_after(date_format):
    usage = Usage(date_format)
    feed(usage)
    script = (Script().on("GET", anthropic.PATH, 429, json={"error": {"type": "rate_limit_error"}},
                          headers=[("retry-after", "2")])
              .on("GET", anthropic.PATH, 500).on("GET", anthropic.PATH, 529, headers=[("retry-after", "3")])
              .on("GET", anthropic.PATH, answer=usage, times=3 + 3 + 1 + 4 + 1))  # pages: 7 rows, then the window
    waits: list[float] = []
    api = anthropic.AdminAPI("https://api.anthropic.example", KEY, timeout=5, sleep=waits.append,
                             wall_clock=lambda: 0.0, transport=script)
    try:
        rows = api.day(WINDOW[0])
        activity = api.activity(WINDOW, Identities())
    finally:
        api.close()
    script.assert_done()  # every page asked for once, none after the last
    assert len(rows) == 7
    assert waits[0] == 2.0 and waits[2] == 3.0 and len(waits) == 3
    assert activity.people == {"alice.nguyen@example.com": WINDOW[:2], "bob.smith@example.com": [WINDOW[0]],
                               "contractor@partner.example": [WINDOW[0]], "carla.jones@example.com": [WINDOW[6]]}
    assert activity.sessions["alice.nguyen@example.com"] == 4  # remote + local + the next day
    assert activity.api_keys == {"ci-bot": 7, "idle-key": 0}
    assert {r.headers["x-api-key"] for r in script.requests} == {KEY}


def test_a_server_that_repeats_its_cursor_is_stopped():
    def page(next_page: str) -> dict:
        return {"data": [{**user_row("alice.nguyen@example.com", 1), "date": "2026-08-13T00:00:00Z"}],
                "has_more": True, "next_page": next_page}

    script = (Script().on("GET", f"{anthropic.PATH}?starting_at=2026-08-13&limit=1000", json=page("page_1"))
              .on("GET", f"{anthropic.PATH}?starting_at=2026-08-13&limit=1000&page=page_1", json=page("page_1")))
    api = anthropic.AdminAPI("https://api.anthropic.example", KEY, timeout=5, sleep=lambda _s: None, transport=script)
    try:
        with pytest.raises(anthropic.SourceError, match="gave an already used cursor"):
            api.day(WINDOW[0])
    finally:
        api.close()
    script.assert_done()  # the third page was never asked for


def test_the_shared_policy_retries_529_with_its_retry_after():
    from mdmgen.http import classify

    told = classify(HTTPStatusError("overloaded", 529, retry_after=4.0))
    assert told is not None and told.after == 4.0


def test_both_date_formats_parse_and_others_are_refused():
    assert anthropic.parse_day("2025-08-08") == anthropic.parse_day("2025-08-08T00:00:00Z") == date(2025, 8, 8)
    with pytest.raises(ValueError):
        anthropic.parse_day("2025-08-08T05:00:00Z")


# --- the join and the chart, pure ---------------------------------------------------------------------


def test_the_chart_has_one_bar_and_one_line_per_team(tmp_path):
    fleet = Fleet(devices=(Device(serial="A", team="One", person="a@x"), Device(serial="B", team="Two $y$",
                                                                                    person="b@x"),
                           Device(serial="C", team="Three", person="c@x")))
    activity = Activity(source="anthropic", cannot_see="x", people={"a@x": [WINDOW[0]], "c@x": WINDOW[:3]})
    report = join.build(fleet, [activity], WINDOW, ["http://127.0.0.1"])
    figure = chart.figure(report)
    bars, lines = figure.axes
    assert len(bars.patches) == 3 and len(lines.get_lines()) == 3
    assert [round(p.get_width()) for p in bars.patches] == [100, 100, 0]  # One, Three, Two $y$ (by name)
    svg = chart.render(figure, ".svg").decode()
    assert len(re.findall(r'<g id="patch_\d+">', svg)) >= 3 and "<dc:date>" not in svg
    assert chart.render(chart.figure(report), ".svg").decode() == svg  # deterministic: the same bytes again


@pytest.mark.parametrize("mode", MODES)
def test_a_hostile_admin_api_is_one_line_exit_7_and_not_retried(compiled, mode):
    with HostileServer(mode) as server:
        result = run(compiled, "adoption", "--anthropic-url", server.url, "--timeout", "2", "-vv")
    assert result.exit_code == ExitCode.REMOTE_FAILED, result.output
    errors = [line for line in result.stderr.splitlines() if not line.startswith("mdmgen: DEBUG")]
    assert len(errors) == 1 and errors[0].startswith("error: the Anthropic Admin API"), result.stderr
    assert server.requests == 1 and KEY not in result.output


def test_the_join_counts_a_person_in_each_of_their_teams_and_sources_merge():
    fleet = Fleet(devices=tuple(Device(serial=serial, team=team, person=person) for serial, team, person in (
        ("A1", "Ops", "ann@x"), ("A2", "Dev", "ann@x"), ("B1", "Dev", "bob@x"), ("N1", "Lab", None))))
    admin = Activity(source="anthropic", cannot_see="x", people={"ann@x": [WINDOW[0]]}, api_keys={"ci": 0})
    prom = Activity(source="prometheus", cannot_see="y", people={"bob@x": [WINDOW[1]], "eve@x": [date(2026, 1, 1)]})
    report = join.build(fleet, [admin, prom], WINDOW, ["u1", "u2"])
    assert {t.team: (t.enrolled, t.active, t.ratio) for t in report.teams} == {
        "Dev": (2, 2, 1.0), "Lab": (0, 0, None), "Ops": (1, 1, 1.0)}
    assert report.unidentified_devices == ["N1"] and report.active_not_enrolled == []  # eve: outside the window
    assert report.api_key_usage == []  # a key with no session is not usage


def test_a_link_planted_where_the_csv_is_written_is_not_followed(workdir, fake, monkeypatch, tmp_path):
    write_inventory(workdir, INVENTORY)
    assert run(workdir, "compile").exit_code == 0
    monkeypatch.setenv("ANTHROPIC_ADMIN_KEY", KEY)
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    (workdir / ".a.csv.mdmgen-tmp").symlink_to(victim)  # the temporary name an older writer used
    assert adoption(workdir, fake, "--csv", "a.csv").exit_code == 0
    assert victim.read_text() == "untouched" and (workdir / "a.csv").read_text().startswith("team")
