"""The seed's whole architecture with real components: Claude Code -> OpenTelemetry Collector ->
Prometheus -> the generated rules and dashboards.

One compile of a small fleet (three teams with hostile names, one device per OTLP protocol) writes
the device files and the collector side. The real collector (tests/collector/, built from the Go
module proxy) runs the generated config with the token in its environment, as an operator sets it;
Debian's real Prometheus scrapes the collector's prometheus exporter with the generated rules
loaded; the pinned real client runs on some devices only. Everything asserted is read back through
Prometheus's HTTP API and compared with this file's own literals (the inventory), and with the
client's own numbers (its ``api_request`` events, which reach a local OTLP receiver through the
collector's logs pipeline), never with values read from mdmgen's output.

The whole sequence runs once per variant (plain, and ``pseudonymise_email``) in a module fixture;
the tests then read what it left in Prometheus.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from ..conftest import missing, otelcol_path
from .harness import run_claude
from .messages_stub import MessagesStub
from .pipeline import PrometheusServer, Service, grafana_interpolate, listening, poll, start_on_free_ports
from .receivers import HttpReceiver, Receiver

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_POLICY = ROOT / "profiles" / "policy.yaml"
TOKEN = "e2e/Pipe1ine+token=="  # a fixture, shaped like a base64 token
WRONG_TOKEN = "e2e/not-the-collectors-token"
PSEUDONYM_KEY = "e2e-pipeline-pseudonym-key-0123456789"
RATIO = 0.5
TINY_SPEND = 0.000001  # USD; one "say hello" costs about a hundred times more

TEAM_COMMA = "R&D, Berlin"  # a comma: Grafana's custom-variable separator
TEAM_QUOTE = 'Zürich "Ops"'  # a double quote (PromQL's and YAML's string quote) and non-ASCII
TEAM_ACCENT = "Équipe d'été"  # non-ASCII and a single quote; nobody of it gets data through
# (serial, user_email, team, OTLP protocol), as written into the CSV; all Linux, so the client runs.
ROWS = [
    ("PIPE-A1", "ann+cc@example.com", TEAM_COMMA, "grpc"),
    ("PIPE-A2", "bob@example.com", TEAM_COMMA, "http/protobuf"),
    ("PIPE-B1", "zoe.o-brien@example.com", TEAM_QUOTE, "http/json"),
    ("PIPE-B2", "carl@example.com", TEAM_QUOTE, "http/protobuf"),
    ("PIPE-B3", "dora@example.com", TEAM_QUOTE, "grpc"),
    ("PIPE-C1", "eve@example.com", TEAM_ACCENT, "http/json"),
    ("PIPE-C2", "finn@example.com", TEAM_ACCENT, "grpc"),
]
HEADCOUNT = {TEAM_COMMA: 2, TEAM_QUOTE: 3, TEAM_ACCENT: 2}
FIRST_ROUND = ["PIPE-A1", "PIPE-A2", "PIPE-B1"]  # one device per protocol
AGAIN = "PIPE-A1"  # runs a second time: its team's counters must grow by that run's own numbers
WRONG = "PIPE-C1"  # runs with a wrong token: refused, counted nowhere
EMAIL = {serial: email for serial, email, _, _ in ROWS}
TEAM = {serial: team for serial, _, team, _ in ROWS}
# Over the ratio: TEAM_COMMA (2 of 2). Under: TEAM_QUOTE (1 of 3) and TEAM_ACCENT (0 of 2).
UNDER_RATIO = {TEAM_QUOTE, TEAM_ACCENT}

SESSIONS = "claude_code_session_count_total"
TOKENS = "claude_code_token_usage_tokens_total"
COST = "claude_code_cost_usage_USD_total"
LINES = "claude_code_lines_of_code_count_total"
EXPORT_INTERVAL_MS = 200
RANGE = 7 * 86400  # the dashboards open on now-7d: Grafana's $__range


def pseudonym(email: str) -> str:
    """The documented definition (docs/secrets.md, "Pseudonymous identity"), computed here independently."""
    local, _, domain = email.partition("@")
    normalised = f"{local}@{domain.lower()}".casefold()
    return "u-" + hmac.new(PSEUDONYM_KEY.encode(), normalised.encode(), hashlib.sha256).hexdigest()[:32]


@dataclass
class Pipeline:
    variant: str
    out: Path
    prometheus: PrometheusServer
    collector: Service
    http_port: int
    logs: Receiver
    ran: list[str] = field(default_factory=list)
    snapshots: dict[str, dict[str, float]] = field(default_factory=dict)

    def user(self, serial: str) -> str:
        """The user_email label the serial's device sends."""
        email = EMAIL[serial]
        return pseudonym(email) if self.variant == "pseudonymised" else email

    def client_numbers(self, team: str) -> Counter[str]:
        """A team's sessions, tokens by type and cost, as the client itself reported them in its
        api_request events (which reach the logs receiver through the collector)."""
        totals: Counter[str] = Counter()
        sessions = set()
        for event in self.logs.events("claude_code.api_request"):
            if event.attributes.get("team") == team:
                sessions.add(event.attributes.get("session.id"))
                for kind, key in (("input", "input_tokens"), ("output", "output_tokens"),
                                  ("cacheRead", "cache_read_tokens"), ("cacheCreation", "cache_creation_tokens")):
                    totals[kind] += int(event.attributes.get(key) or 0)
                totals["cost"] += float(event.attributes.get("cost_usd") or 0)
        totals["sessions"] = len(sessions)
        return totals


# --- building the fleet --------------------------------------------------------------------------


def write_inputs(folder: Path, variant: str, prometheus_port: int, logs_port: int) -> None:
    (folder / "inventory").mkdir(exist_ok=True)
    with open(folder / "inventory" / "devices.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["serial_number", "platform", "user_email", "team", "proto"])
        writer.writerows((serial, "linux", email, team, proto) for serial, email, team, proto in ROWS)
    policy = SHIPPED_POLICY.read_text(encoding="utf-8")
    for old, new in [
        ("  otlp_protocol: grpc\n", '  otlp_protocol: grpc\n  grpc_port: "4317"\n  http_port: "4318"\n'),
        ('OTEL_EXPORTER_OTLP_PROTOCOL: "{{ otlp_protocol }}"', 'OTEL_EXPORTER_OTLP_PROTOCOL: "{{ proto }}"'),
        ('OTEL_EXPORTER_OTLP_ENDPOINT: "{{ otlp_endpoint }}"\n',
         # each device's protocol picks the collector's grpc or http receiver
         "OTEL_EXPORTER_OTLP_ENDPOINT: \"http://127.0.0.1:{{ grpc_port if proto == 'grpc' else http_port }}\"\n"
         "    OTEL_EXPORTER_OTLP_HEADERS: \"Authorization=Bearer {{ secret('OTEL_TOKEN') }}\"\n"
         # several exports in one session, as an interactive session makes every minute
         f"    OTEL_METRIC_EXPORT_INTERVAL: \"{EXPORT_INTERVAL_MS}\"\n"),
    ]:
        assert old in policy, "the shipped policy changed; update this test's anchors"
        policy = policy.replace(old, new)
    if variant == "pseudonymised":
        policy += "\npseudonymise_email: true\n"
    policy += (f"\ncollector:\n  logs: {{exporter: loki, endpoint: 'http://127.0.0.1:{logs_port}'}}\n"
               # spend thresholds any run exceeds: the spend alerts must see the client's spend
               f"  alerts: {{daily_spend_usd: {TINY_SPEND}, user_daily_spend_usd: {TINY_SPEND}, "
               f"adoption_min_ratio: {RATIO}}}\n"
               f"  prometheus_port: {prometheus_port}\n")
    (folder / "profiles").mkdir(exist_ok=True)
    (folder / "profiles" / "policy.yaml").write_text(policy, encoding="utf-8")


def compile_fleet(folder: Path, out: str, token: str, grpc_port: int, http_port: int) -> Path:
    """`mdmgen compile` as IT runs it, the token in the environment."""
    environ = {**os.environ, "OTEL_TOKEN": token, "MDMGEN_PSEUDONYM_KEY": PSEUDONYM_KEY}
    environ.pop("MDMGEN_PSEUDONYM_KEY_FILE", None)
    console_script = shutil.which("mdmgen", path=str(Path(sys.executable).parent))
    command = [console_script] if console_script else [sys.executable, "-m", "mdmgen"]
    proc = subprocess.run([*command, "compile", "--out", out, "--var", f"grpc_port={grpc_port}",
                           "--var", f"http_port={http_port}"],
                          cwd=folder, capture_output=True, text=True, timeout=120, env=environ)
    assert proc.returncode == 0, proc.stderr
    return folder / out


# --- the servers --------------------------------------------------------------------------------


def start_collector(binary: Path, folder: Path, variant: str, logs: Receiver) -> tuple[Service, Path, int, int]:
    """Compile on three reserved ports (grpc, http, prometheus exporter) and start the collector on
    the generated config; on a port taken in between, again on new ports (recompiled)."""
    def launch(ports: list[int], release) -> tuple[Service, Path, int, int]:
        grpc_port, http_port, prom_port = ports
        write_inputs(folder, variant, prom_port, logs.port)
        out = compile_fleet(folder, "output", TOKEN, grpc_port, http_port)
        release()
        # The generated file as it is, plus one setting of the test's own: the collector's internal
        # telemetry off, since by default it listens on the fixed localhost:8888 (and a second
        # collector on this machine would then fail to start). Only the token in the environment,
        # as an operator sets it from the secret store.
        service = Service("collector", [str(binary), "--config", str(out / "collector" / "otel-collector-config.yaml"),
                                        "--config", "yaml:service::telemetry::metrics::level: none"],
                          folder / "collector.log", env={"OTEL_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"})
        service.wait_ready(lambda: all(listening(port) for port in ports), ports)
        return service, out, http_port, prom_port
    return start_on_free_ports(3, launch)


def start_prometheus(folder: Path, rules: Path, exporter_port: int) -> PrometheusServer:
    binary = shutil.which("prometheus")
    if binary is None:
        missing("prometheus is not on PATH (Debian's prometheus package, the real server); as root, "
                "tests/install-tools.sh installs it")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "otel-collector",
                            "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}],
    }

    def launch(ports: list[int], release) -> PrometheusServer:
        release()
        server = PrometheusServer(binary, folder, ports[0], config)
        try:
            server.wait_ready(server.ready, [server.port])
        except AssertionError:
            server.stop()
            raise
        return server
    return start_on_free_ports(1, launch)


@pytest.fixture(scope="module", params=["plain", "pseudonymised"])
def pipeline(request, client_install, tmp_path_factory) -> Iterator[Pipeline]:
    claude, reason = client_install
    if claude is None:
        missing(f"{reason}; or deselect the e2e tests with -m 'not e2e'")
    variant = request.param
    folder = tmp_path_factory.mktemp(f"pipeline-{variant}")
    with MessagesStub() as stub, HttpReceiver("http/protobuf") as logs:
        collector, out, http_port, prom_port = start_collector(otelcol_path(), folder, variant, logs)
        prometheus = None
        try:
            prometheus = start_prometheus(folder / "prometheus", out / "collector" / "prometheus-rules.yaml", prom_port)
            run = Pipeline(variant, out, prometheus, collector, http_port, logs)
            _exercise(run, folder, claude, stub)
            yield run
        finally:
            if prometheus is not None:
                prometheus.stop()
            collector.stop()


def _run(serial: str, out: Path, claude: Path, stub: MessagesStub) -> None:
    proc = run_claude(out / "devices" / serial, stub.base_url, claude=claude)
    assert proc.returncode == 0, proc.stderr
    assert stub.proxy_attempts == [], "the client tried to reach a non-loopback host"


def _exercise(run: Pipeline, folder: Path, claude: Path, stub: MessagesStub) -> None:
    """The devices' side: a wrong-token device, one device per protocol, then one device again."""
    # the same fleet and receivers, compiled while the operator's token was a wrong one
    wrong = compile_fleet(folder, "output-wrong-token", WRONG_TOKEN, *_ports(run.out))
    _run(WRONG, wrong, claude, stub)
    for serial in FIRST_ROUND:
        _run(serial, run.out, claude, stub)
        run.ran.append(serial)
    _wait_for_runs(run)
    run.snapshots["first"] = _team_numbers(run.prometheus, TEAM[AGAIN])
    run.snapshots["client first"] = dict(run.client_numbers(TEAM[AGAIN]))
    # Two API requests in this session, the second only once Prometheus shows the first one's
    # tokens: the session's counters then reach the collector as two deltas, in two exports.
    stub.tool_turn = lambda: _first_request_scraped(run)
    try:
        _run(AGAIN, run.out, claude, stub)
    finally:
        stub.tool_turn = None
    run.ran.append(AGAIN)
    _wait_for_runs(run)


def _first_request_scraped(run: Pipeline) -> None:
    """Until the AGAIN device's new session shows its input tokens in Prometheus; kept in snapshots."""
    user = _promql_string(run.user(AGAIN))
    known = {row["metric"]["session_id"] for row in run.prometheus.query(f'{SESSIONS}{{user_email="{user}"}}')}

    def new_session() -> tuple[str, float] | None:
        rows = run.prometheus.query(f'{TOKENS}{{type="input", user_email="{user}"}}')
        return next(((row["metric"]["session_id"], float(row["value"][1])) for row in rows
                     if row["metric"]["session_id"] not in known), None)
    session, tokens = poll(new_session, "the first request's tokens in Prometheus")
    run.snapshots["mid-session"] = {"session": session, "input": tokens}


def _ports(out: Path) -> tuple[int, int]:
    """The (grpc, http) receiver ports of a compiled tree, read from its devices' endpoints."""
    found = {}
    for serial, _, _, proto in ROWS:
        env = json.loads((out / "devices" / serial / "managed-settings.json").read_text(encoding="utf-8"))["env"]
        found["grpc" if proto == "grpc" else "http"] = int(env["OTEL_EXPORTER_OTLP_ENDPOINT"].rsplit(":", 1)[1])
    return found["grpc"], found["http"]


def _wait_for_runs(run: Pipeline) -> None:
    """Until the logs receiver has every run's api_request events and Prometheus the tokens they
    report (the metrics travel another pipeline and wait for a scrape). A count that never arrives,
    e.g. a delta the collector drops, ends at the hang guard with both numbers."""
    poll(lambda: len({e.attributes.get("session.id") for e in run.logs.events("claude_code.api_request")})
         >= len(run.ran), "every run's api_request event at the logs receiver")
    def differences() -> dict[str, tuple[float | None, int]]:
        """Team -> (Prometheus's input tokens, the client's), where they differ."""
        both = {team: (_team_numbers(run.prometheus, team).get("input"), run.client_numbers(team)["input"])
                for team in {TEAM[s] for s in run.ran}}
        return {team: pair for team, pair in both.items() if pair[0] != pair[1]}
    try:
        poll(lambda: not differences(), "Prometheus's input tokens per team to reach what the client reported")
    except AssertionError as gave_up:
        raise AssertionError(f"{gave_up}: (Prometheus, client) by team: {differences()}") from None


def _team_numbers(prometheus: PrometheusServer, team: str) -> dict[str, float]:
    selector = f'team="{_promql_string(team)}"'
    numbers = {"sessions": _scalar(prometheus, f"sum({SESSIONS}{{{selector}}})")}
    for kind, value in prometheus.values(f"sum by (type) ({TOKENS}{{{selector}}})", "type").items():
        numbers[kind] = value
    numbers["cost"] = _scalar(prometheus, f"sum({COST}{{{selector}}})")
    return numbers


def _scalar(prometheus: PrometheusServer, expr: str) -> float:
    rows = prometheus.query(expr)
    return float(rows[0]["value"][1]) if rows else 0.0


def _promql_string(value: str) -> str:
    """``value`` inside a PromQL double-quoted string (JSON's escaping is PromQL's)."""
    return json.dumps(value, ensure_ascii=False)[1:-1]


# --- what Prometheus must show ---------------------------------------------------------------------


def test_headcount_per_team_is_the_inventorys(pipeline):
    got = pipeline.prometheus.values("mdmgen:claude_code_enrolled_users", "team")
    assert got == HEADCOUNT


def test_active_users_per_team_are_exactly_those_whose_devices_ran(pipeline):
    prometheus = pipeline.prometheus
    active = {(row["metric"]["team"], row["metric"]["user_email"])
              for row in prometheus.query(f"count by (team, user_email) ({SESSIONS})")}
    assert active == {(TEAM[s], pipeline.user(s)) for s in pipeline.ran}
    expected = Counter(TEAM[s] for s in set(pipeline.ran))
    assert poll(lambda: prometheus.values("mdmgen:claude_code_active_users_7d", "team") == expected and expected,
                "the active-users recording rule")


def test_adoption_alert_pending_for_teams_under_the_ratio_and_none_over_it(pipeline):
    def states() -> dict[str, str]:
        return {alert["labels"]["team"]: alert["state"] for alert in pipeline.prometheus.alerts()
                if alert["labels"].get("alertname") == "ClaudeCodeLowTeamAdoption"}
    # The rule's `for: 1h` keeps it pending for the hour; pending is the state this run can reach.
    got = poll(lambda: (found := states()) and set(found) == UNDER_RATIO and found, "the adoption alerts")
    assert set(got.values()) <= {"pending", "firing"}
    assert TEAM_COMMA not in got


def test_counters_grow_by_what_the_client_reported(pipeline):
    """The temporality proof: each team's sessions, tokens and cost in Prometheus are the sums of
    what the client's own api_request events say, and a second run adds exactly its own numbers."""
    prometheus = pipeline.prometheus
    for team in {TEAM[s] for s in pipeline.ran}:
        client, got = pipeline.client_numbers(team), _team_numbers(prometheus, team)
        assert client["sessions"] == sum(TEAM[s] == team for s in pipeline.ran)
        for kind in ("sessions", "input", "output", "cacheRead", "cacheCreation"):
            assert got.get(kind, 0.0) == client[kind], (team, kind, got, client)
        assert got["cost"] == pytest.approx(client["cost"]), (team, got, client)
    before, after = pipeline.snapshots["first"], _team_numbers(prometheus, TEAM[AGAIN])
    client_before, client_after = pipeline.snapshots["client first"], pipeline.client_numbers(TEAM[AGAIN])
    assert after["sessions"] == before["sessions"] + 1
    for kind in ("input", "output"):
        assert after[kind] - before[kind] == client_after[kind] - client_before[kind] > 0, kind
    assert after["cost"] - before["cost"] == pytest.approx(client_after["cost"] - client_before["cost"])
    assert after["cost"] > before["cost"]
    # within that session: the first request's delta, then both requests' sum
    mid = pipeline.snapshots["mid-session"]
    requests = [e.attributes for e in pipeline.logs.events("claude_code.api_request")
                if e.attributes.get("session.id") == mid["session"]]
    assert len(requests) == 2
    assert mid["input"] == requests[0]["input_tokens"]
    session = f'{TOKENS}{{type="input", session_id="{mid["session"]}"}}'
    assert _scalar(prometheus, session) == sum(r["input_tokens"] for r in requests) > mid["input"]


def test_spend_alerts_see_the_clients_spend(pipeline):
    """The thresholds are below one run's cost: the fleet alert and one per user who ran fire."""
    def firing() -> set[tuple[str, str, str]]:
        return {(a["labels"]["alertname"], a["labels"].get("user_email", ""), a["labels"].get("team", ""))
                for a in pipeline.prometheus.alerts() if a["state"] == "firing"
                and a["labels"]["alertname"].endswith("SpendHigh")}
    expected = {("ClaudeCodeDailySpendHigh", "", "")} | {
        ("ClaudeCodeUserDailySpendHigh", pipeline.user(s), TEAM[s]) for s in pipeline.ran}
    assert poll(lambda: (found := firing()) == expected and found, "the spend alerts") == expected


def test_every_dashboard_panel_returns_series_for_the_teams_with_data(pipeline):
    """Each panel's query, with the variables substituted as Grafana does, answers for every team
    (or user) with data, only for the selected ones, and the cost panels say what the client spent."""
    prometheus = pipeline.prometheus
    active_teams = {TEAM[s] for s in pipeline.ran}
    board = _dashboard(pipeline, "team-overview.json")
    [team_var] = [v for v in board["templating"]["list"] if v["name"] == "team"]
    everyone = {"team": [option["value"] for option in team_var["options"]]}  # "All", as the dashboard opens
    assert {option["text"] for option in team_var["options"]} == set(HEADCOUNT)
    for panel in board["panels"]:
        [target] = panel["targets"]
        expr = grafana_interpolate(target["expr"], everyone, RANGE)
        teams = {row["metric"].get("team") for row in prometheus.query(expr)}
        wanted = set(HEADCOUNT) if panel["title"].startswith("Enrolled") else active_teams
        assert teams == wanted, (panel["title"], expr, teams)
        for option in team_var["options"]:  # one team selected: that team only
            expr = grafana_interpolate(target["expr"], {"team": [option["value"]]}, RANGE)
            teams = {row["metric"].get("team") for row in prometheus.query(expr)}
            assert teams == ({option["text"]} & wanted), (panel["title"], option["text"], teams)
    [cost_panel] = [p for p in board["panels"] if p["title"].startswith("Cost per day")]
    cost = prometheus.values(grafana_interpolate(cost_panel["targets"][0]["expr"], everyone, RANGE), "team")
    assert cost == pytest.approx({team: pipeline.client_numbers(team)["cost"] for team in active_teams})

    personal = _dashboard(pipeline, "personal.json")
    [user_var] = [v for v in personal["templating"]["list"] if v["name"] == "user"]
    metric, label = user_var["query"].removeprefix("label_values(").removesuffix(")").split(", ")
    users = prometheus.api(f"label/{label}/values", **{"match[]": metric})  # what Grafana lists
    assert set(users) == {pipeline.user(s) for s in pipeline.ran}
    sent = {name for name in prometheus.api("label/__name__/values") if name.startswith("claude_code_")}
    for user in users:
        for panel in personal["panels"]:
            [target] = panel["targets"]
            expr = grafana_interpolate(target["expr"], {"user": [user]}, RANGE)
            if LINES not in expr:
                assert prometheus.query(expr), (panel["title"], user, expr)
            else:  # a "say hello" run edits no code: the client sends no lines-of-code metric
                assert LINES not in sent
        sessions = next(p for p in personal["panels"] if p["title"].startswith("Sessions"))["targets"][0]["expr"]
        runs = sum(pipeline.user(s) == user for s in pipeline.ran)
        assert _scalar(prometheus, grafana_interpolate(sessions, {"user": [user]}, RANGE)) == runs


def _dashboard(pipeline: Pipeline, name: str) -> dict:
    return json.loads((pipeline.out / "collector" / "dashboards" / name).read_text(encoding="utf-8"))


def test_a_wrong_token_is_refused_and_counted_nowhere(pipeline):
    prometheus = pipeline.prometheus
    wrong_user = pipeline.user(WRONG)
    assert prometheus.query(f'count({{user_email="{wrong_user}"}})') == []
    assert prometheus.query(f'count({{team="{_promql_string(TEAM[WRONG])}", __name__=~"claude_code_.*"}})') == []
    assert not [e for e in pipeline.logs.events() if e.attributes.get("user_email") == wrong_user]
    # and the collector answers a wrong token with 401 (the client does not show it: see test_compiled_telemetry)
    answer = httpx.post(f"http://127.0.0.1:{pipeline.http_port}/v1/metrics", content=b"{}",
                        headers={"Authorization": f"Bearer {WRONG_TOKEN}", "Content-Type": "application/json"})
    assert answer.status_code == 401


@pytest.mark.parametrize("pipeline", ["pseudonymised"], indirect=True)
def test_pseudonymised_fleet_shows_no_email_anywhere_in_prometheus(pipeline):
    series = pipeline.prometheus.api("series", **{"match[]": '{__name__=~".+"}'})
    assert series
    values = {value.casefold() for row in series for value in row.values()}
    text = json.dumps(sorted(values), ensure_ascii=False)
    for _, email, _, _ in ROWS:
        local = email.split("@")[0].casefold()
        assert email.casefold() not in text and quote(email, safe="").casefold() not in text, email
        assert not any(value == local or value.startswith(local + "@") for value in values), local
    assert "@" not in text and "%40" not in text
    users = {row.get("user_email") for row in series if "user_email" in row}
    assert users == {pipeline.user(s) for s in pipeline.ran}


def test_the_adoption_report_reads_what_the_devices_really_sent(pipeline):
    """``mdmgen adoption`` against the real Prometheus: per team, the enrolled people are the
    inventory's and the active ones exactly those whose devices ran (issue 24's real-pipeline check).
    ``--today`` is tomorrow (UTC), so the day the client ran is a complete day of the window; two
    days, so a run that crosses midnight still has it in the window."""
    import datetime

    tomorrow = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)).date().isoformat()
    env = {key: value for key, value in os.environ.items() if not key.lower().endswith("_proxy")}
    env["MDMGEN_PSEUDONYM_KEY"] = PSEUDONYM_KEY
    result = subprocess.run([sys.executable, "-m", "mdmgen", "adoption", "--out", str(pipeline.out),
                             "--prometheus-url", pipeline.prometheus.url, "--days", "2", "--today", tomorrow,
                             "--json"], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    active = Counter(TEAM[s] for s in set(pipeline.ran))
    assert {row["team"]: (row["enrolled"], row["active"]) for row in report["teams"]} == {
        team: (count, active.get(team, 0)) for team, count in HEADCOUNT.items()}
    assert not report.get("active_not_enrolled")
    if pipeline.variant == "pseudonymised":
        assert not any(email in result.stdout + result.stderr for email in EMAIL.values())
