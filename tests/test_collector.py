"""``output/collector/``: made from the same policy and inventory as the device files, and consistent with them.

The collector binary itself is not available here (shared/reference/collector-side.md 1.6), so the
config is parsed and compared with what the compiled devices send: ports, protocols, signals and
the token reference. The Kubernetes manifests are validated against the bundled Kubernetes schemas.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdmgen import policy
from mdmgen.emit import registry
from mdmgen.models import Device, Location, MdmgenError, Platform
from mdmgen.otlp import OtlpDestination

from . import test_publish_s3, test_readme
from .collector_helpers import (
    ALL,
    CONFIG,
    HOSTILE,
    INGRESS,
    PERSONAL,
    RULES,
    TEAMS,
    collector_expand,
    compile_fleet,
    device_env,
    grafana_custom_options,
    load_yaml,
    promql_string,
    set_policy,
    shown,
    team_rows,
)
from .conftest import ROOT, promtool_path, run

ROWS = team_rows("Ops", 2, "OPS") + team_rows(HOSTILE, 1, "HOS", "macos") + team_rows("Sec", 1, "SEC", "windows")
KUBERNETES_VERSION = "1.30"


def receivers_of(config: dict) -> dict[str, tuple[str, int]]:
    """Receiver name -> (protocol, port) of the parsed collector config."""
    found = {}
    for name, receiver in config["receivers"].items():
        ((protocol, settings),) = receiver["protocols"].items()
        found[name] = (protocol, int(settings["endpoint"].rsplit(":", 1)[1]))
    return found


def test_without_a_collector_section_no_collector_file_is_written(workdir):
    compile_fleet(workdir, ROWS)
    assert not (workdir / "output" / "collector").exists()
    assert "fleet" not in json.loads((workdir / "output" / "manifest.json").read_text())


def test_the_config_receives_exactly_what_the_devices_send(workdir):
    set_policy(workdir, endpoint="https://otel.example.com:4317", protocol="grpc")
    compile_fleet(workdir, ROWS)
    out = workdir / "output"
    env = device_env(out, "OPS00")
    device_url = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    config = load_yaml(out / CONFIG)
    assert receivers_of(config) == {"otlp/grpc-4317": (env["OTEL_EXPORTER_OTLP_PROTOCOL"], device_url.port)}
    grpc = config["receivers"]["otlp/grpc-4317"]["protocols"]["grpc"]
    assert grpc["auth"] == {"authenticator": "bearertokenauth"}
    assert config["extensions"] == {"bearertokenauth": {"token": "${env:OTEL_TOKEN}"}}
    assert config["service"]["extensions"] == ["bearertokenauth"]
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"metrics", "logs"}  # the devices export both over otlp
    assert pipelines["metrics"] == {"receivers": ["otlp/grpc-4317"],
                                    "processors": ["memory_limiter", "attributes/user-email", "deltatocumulative",
                                                   "batch"],
                                    "exporters": ["prometheus"]}
    assert pipelines["logs"]["exporters"] == ["otlphttp/loki"]
    assert config["exporters"]["otlphttp/loki"] == {"endpoint": "http://loki:3100/otlp"}  # not the gone loki exporter
    assert config["exporters"]["prometheus"]["translation_strategy"] == "UnderscoreEscapingWithSuffixes"
    assert config["processors"]["attributes/user-email"] == {"actions": [{"key": "user.email", "action": "delete"}]}
    assert set(config["processors"]["memory_limiter"]) >= {"check_interval", "limit_percentage"}
    assert pipelines["logs"]["processors"] == ["memory_limiter", "attributes/user-email", "batch"]  # metrics only
    text = (out / CONFIG).read_text()
    assert "# user_email collision, resolved on purpose" in text.split("attributes/user-email:")[0]


def test_changing_port_and_protocol_changes_devices_and_collector_together(workdir):
    set_policy(workdir, endpoint="https://otel.example.com:4317", protocol="grpc")
    compile_fleet(workdir, ROWS, "old")
    set_policy(workdir, endpoint="https://otel.example.com:14318", protocol="http/protobuf")
    compile_fleet(workdir, ROWS, "new")
    env = device_env(workdir / "new", "SEC00")
    assert (env["OTEL_EXPORTER_OTLP_PROTOCOL"], env["OTEL_EXPORTER_OTLP_ENDPOINT"]) == (
        "http/protobuf", "https://otel.example.com:14318")
    config = load_yaml(workdir / "new" / CONFIG)
    assert receivers_of(config) == {"otlp/http-14318": ("http", 14318)}
    assert config["service"]["pipelines"]["logs"]["receivers"] == ["otlp/http-14318"]
    ingress = [doc for doc in load_yaml(workdir / "new" / INGRESS) if doc["kind"] == "Ingress"]
    assert [doc["metadata"]["annotations"] for doc in ingress] == [
        {"nginx.ingress.kubernetes.io/backend-protocol": "HTTP"}]
    assert ingress[0]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"] == {"number": 14318}

    result = run(workdir, "diff", "old", "new")
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert f"~ fleet {CONFIG}" in lines and f"~ fleet {INGRESS}" in lines, result.stdout
    assert any("OTEL_EXPORTER_OTLP_ENDPOINT" in line and "14318" in line for line in lines)  # the device side
    assert lines[-1].endswith("2 fleet file(s) changed.") and "4 changed" in lines[-1]


def test_devices_reused_from_the_previous_run_still_shape_the_collector(workdir):
    """A second compile renders nothing again; the collector's receivers must not vanish."""
    set_policy(workdir, endpoint="https://otel.example.com:4317", protocol="grpc")
    compile_fleet(workdir, ROWS)
    first = {path: (workdir / "output" / path).read_bytes() for path in ALL}
    set_policy(workdir, endpoint="https://otel.example.com:4317", protocol="grpc",
               section="\ncollector:\n  token_env: OTEL_TOKEN\n  previous_token_env: OTEL_TOKEN_OLD\n")
    summary = compile_fleet(workdir, ROWS)
    assert summary["rendered"] == 0
    config = load_yaml(workdir / "output" / CONFIG)
    assert receivers_of(config) == {"otlp/grpc-4317": ("grpc", 4317)}
    assert config["extensions"]["bearertokenauth"] == {"tokens": ["${env:OTEL_TOKEN}", "${env:OTEL_TOKEN_OLD}"]}
    assert (workdir / "output" / RULES).read_bytes() != first[RULES]  # the threshold section was dropped


def test_two_compiles_give_the_same_bytes(workdir):
    set_policy(workdir)
    compile_fleet(workdir, ROWS, "one")
    compile_fleet(workdir, ROWS, "two")
    for path in ALL:
        assert (workdir / "one" / path).read_bytes() == (workdir / "two" / path).read_bytes(), path
    assert (workdir / "one" / "manifest.json").read_bytes() == (workdir / "two" / "manifest.json").read_bytes()
    manifest = json.loads((workdir / "one" / "manifest.json").read_text())
    assert sorted(manifest["fleet"]) == sorted(ALL)


def test_the_team_dashboard_lists_the_inventory_teams_and_a_new_team_appears(workdir):
    set_policy(workdir)
    compile_fleet(workdir, ROWS)
    out = workdir / "output"
    dashboard = json.loads((out / TEAMS).read_text(encoding="utf-8"))
    (team,) = [v for v in dashboard["templating"]["list"] if v["name"] == "team"]
    assert team["type"] == "custom"
    options = grafana_custom_options(team["query"])
    # the label shows the name; a word joiner keeps "$x" from being read as a Grafana variable
    assert [shown(label) for label, _value in options] == sorted(["Ops", HOSTILE, "Sec"])
    assert [(o["text"], o["value"]) for o in team["options"]] == options
    personal = json.loads((out / PERSONAL).read_text(encoding="utf-8"))
    assert [v["name"] for v in personal["templating"]["list"]] == ["datasource", "user"]
    assert all(t["expr"] for p in personal["panels"] for t in p["targets"])

    compile_fleet(workdir, [*ROWS, *team_rows("Brand New", 1, "NEW")])
    dashboard = json.loads((out / TEAMS).read_text(encoding="utf-8"))
    (team,) = [v for v in dashboard["templating"]["list"] if v["name"] == "team"]
    assert "Brand New" in [label for label, _value in grafana_custom_options(team["query"])]
    assert "Brand New" in (out / RULES).read_text(encoding="utf-8")


GRAFANA_SPECIAL = ["Ends\\", "a,b", "x\\,y", 'Say "hi"', "k : v", "$team", "${datasource}", "[[team]]",
                   "a|b", "{x}", ".*", "+1", "ü € 😀"]


def test_a_team_name_grafana_reads_specially_stays_one_option_and_the_query_matches_it(workdir):
    """Grafana splits the custom variable's query at commas, then at `` : ``, trims, and
    interpolates ``$var``; the panels put the selected values into ``team=~"..."``."""
    set_policy(workdir)
    rows = [row for i, team in enumerate(GRAFANA_SPECIAL) for row in team_rows(team, 1, f"T{i:02d}X")]
    compile_fleet(workdir, rows)
    dashboard = json.loads((workdir / "output" / TEAMS).read_text(encoding="utf-8"))
    (team,) = [v for v in dashboard["templating"]["list"] if v["name"] == "team"]
    options = grafana_custom_options(team["query"])
    assert [shown(label) for label, _value in options] == sorted(GRAFANA_SPECIAL)
    for (_label, value), name in zip(options, sorted(GRAFANA_SPECIAL), strict=True):
        regex = promql_string(value)  # what the PromQL lexer hands the regex engine
        assert [other for other in GRAFANA_SPECIAL if re.fullmatch(regex, other)] == [name], (name, regex)
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert all('team=~"${team:pipe}"' in expr for expr in exprs) and not any("$team" in e for e in exprs)


def test_the_kubernetes_manifests_are_valid_and_grpc_gets_its_backend_protocol(workdir):
    set_policy(workdir, endpoint="https://OTEL.example.com:4317", protocol="grpc")
    compile_fleet(workdir, ROWS)
    documents = load_yaml(workdir / "output" / INGRESS)
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)  # raises when invalid
    service, ingress = documents
    assert [p["port"] for p in service["spec"]["ports"]] == [4317]
    assert ingress["metadata"]["annotations"] == {"nginx.ingress.kubernetes.io/backend-protocol": "GRPC"}
    assert ingress["spec"]["tls"] == [{"hosts": ["otel.example.com"], "secretName": "otel-collector-tls"}]
    assert ingress["spec"]["rules"][0]["host"] == "otel.example.com"


def test_a_loopback_endpoint_gets_a_service_but_no_ingress(workdir):
    set_policy(workdir, endpoint="http://127.0.0.1:4318", protocol="http/json")
    compile_fleet(workdir, ROWS)
    documents = load_yaml(workdir / "output" / INGRESS)
    assert [d["kind"] for d in [documents] if isinstance(documents, dict)] == ["Service"]
    kubernetes_validate.validate(documents, KUBERNETES_VERSION, strict=True)


def test_clickhouse_logs_use_the_current_keys(workdir):
    section = """
collector:
  logs:
    exporter: clickhouse
    endpoint: tcp://clickhouse:9000
    username_env: CH_USER
    password_env: CH_PASSWORD
"""
    set_policy(workdir, section=section)
    compile_fleet(workdir, ROWS)
    config = load_yaml(workdir / "output" / CONFIG)
    assert config["exporters"]["clickhouse"] == {
        "endpoint": "tcp://clickhouse:9000", "database": "otel", "username": "${env:CH_USER}",
        "password": "${env:CH_PASSWORD}", "logs_table_name": "otel_logs", "ttl": "720h", "create_schema": True}
    assert config["service"]["pipelines"]["logs"]["exporters"] == ["clickhouse"]
    assert "extensions" not in config  # the devices send no token and the section names none


def test_with_pseudonymised_emails_no_inventory_email_reaches_the_collector_files(workdir, monkeypatch):
    monkeypatch.setenv("MDMGEN_PSEUDONYM_KEY", "k" * 32)
    set_policy(workdir, section="pseudonymise_email: true\n" + "\ncollector: {}\n")
    compile_fleet(workdir, ROWS)
    emails = [row.split(",")[2] for row in ROWS]
    for path in ALL:
        text = (workdir / "output" / path).read_text(encoding="utf-8").casefold()
        assert not [e for e in emails if e in text], path
    assert "u-" in device_env(workdir / "output", "OPS00")["OTEL_RESOURCE_ATTRIBUTES"]


def test_a_policy_error_in_the_collector_section_points_at_its_line(workdir):
    set_policy(workdir, section="\ncollector:\n  alerts:\n    adoption_window: a week\n")
    result = run(workdir, "compile")
    assert result.exit_code == 1
    (line,) = [line for line in result.output.splitlines() if "adoption_window" in line]
    assert line.startswith("profiles/policy.yaml:") and "duration" in line


# --- the token reference, from the headers template (the secret() functions of the policy) --------

SECRET_POLICY = """
org: {name: Example, identifier_prefix: com.example.mdmgen}
settings:
  env:
    CLAUDE_CODE_ENABLE_TELEMETRY: "1"
    OTEL_METRICS_EXPORTER: otlp
    OTEL_EXPORTER_OTLP_PROTOCOL: grpc
    OTEL_EXPORTER_OTLP_ENDPOINT: https://otel.example.com:4317
    OTEL_EXPORTER_OTLP_HEADERS: "Authorization=Bearer {{ secret('%s') }}"
teams:
  Sec:
    settings:
      env:
        OTEL_EXPORTER_OTLP_HEADERS: "Authorization=Bearer {{ secret('SEC_TOKEN') }}"
collector:
  previous_token_env: OLD_TOKEN
"""


def fleet_input(token: str, teams: tuple[str, ...] = ("Ops",)) -> registry.FleetInput:
    loaded = policy.parse(SECRET_POLICY % token, "policy.yaml")
    devices = tuple(Device(serial=f"S{i}", platform=Platform.LINUX, user_email=f"u{i}@example.com", team=team,
                           location=Location(file="devices.csv", line=i + 2)) for i, team in enumerate(teams))
    return registry.FleetInput(devices=devices, policy=loaded.policy,
                               destinations=(OtlpDestination("metrics", "grpc", "https://otel.example.com:4317"),))


@pytest.mark.parametrize("token", ["OTEL_TOKEN", "ROTATED_TOKEN"])
def test_the_collector_accepts_the_reference_the_headers_name_and_the_old_token(token):
    config = load_yaml_bytes(registry.emit_fleet(fleet_input(token))[CONFIG])
    assert config["extensions"]["bearertokenauth"] == {"tokens": sorted([f"${{env:{token}}}", "${env:OLD_TOKEN}"])}
    receiver = config["receivers"]["otlp/grpc-4317"]["protocols"]["grpc"]
    assert receiver == {"endpoint": "0.0.0.0:4317", "auth": {"authenticator": "bearertokenauth"}}


def test_every_token_the_compiled_teams_send_is_accepted_and_only_those():
    with_sec = load_yaml_bytes(registry.emit_fleet(fleet_input("OTEL_TOKEN", ("Ops", "Sec")))[CONFIG])
    assert with_sec["extensions"]["bearertokenauth"]["tokens"] == [
        "${env:OLD_TOKEN}", "${env:OTEL_TOKEN}", "${env:SEC_TOKEN}"]
    assert "tokens" not in with_sec["receivers"]  # references only: no value anywhere


def load_yaml_bytes(data: bytes):
    import yaml

    return yaml.safe_load(data.decode("utf-8"))


def test_a_typo_in_the_collector_section_suggests_the_key(workdir):
    set_policy(workdir, section="\ncollector:\n  alert:\n    daily_spend_usd: 5\n")
    result = run(workdir, "compile")
    assert result.exit_code == 1
    assert "collector.alert: unknown key 'alert'; did you mean 'alerts'?" in result.output


aws_env = test_publish_s3.aws_env  # moto's threaded S3 server over HTTP, as the S3 tests use it
s3 = test_publish_s3.s3


def test_s3_publishes_the_collector_files_with_their_content_types(workdir, s3):
    set_policy(workdir)
    compile_fleet(workdir, ROWS)
    result = test_publish_s3.publish(workdir, s3)
    assert result.exit_code == 0, result.output
    remote = test_publish_s3.remote_tree(s3)
    for path in ALL:
        assert remote[path] == (workdir / "output" / path).read_bytes(), path
    types = {path: s3.client().head_object(Bucket=test_publish_s3.BUCKET, Key=f"prod/{path}")["ContentType"]
             for path in (CONFIG, TEAMS)}
    assert types == {CONFIG: "application/yaml", TEAMS: "application/json"}


def test_the_readme_collector_example_works_when_pasted(tmp_path):
    """The "Collector side" page's block (docs/collector.md), pasted into a copy of the shipped example (with this
    venv as its .venv: the block is about the collector, not about installing)."""
    promtool_path()  # the block checks the rules with it
    (block,) = [body for _marker, body in test_readme.shell_blocks() if "with-collector.yaml" in body]
    project = tmp_path / "project"
    shutil.copytree(ROOT / "inventory", project / "inventory")
    shutil.copytree(ROOT / "profiles", project / "profiles")
    (project / ".venv").symlink_to(Path(sys.prefix))
    result = test_readme.paste(block, project, test_readme.clean_env())
    assert result.returncode == 0, result.stdout
    assert "SUCCESS" in result.stdout
    assert sorted(str(p.relative_to(project / "collector-demo")) for p in (project / "collector-demo" / "collector")
                  .rglob("*") if p.is_file()) == sorted(ALL)


def test_headers_mixing_a_token_file_and_env_tokens_are_refused_at_the_collector_section():
    text = SECRET_POLICY.replace("secret('SEC_TOKEN')", "secret_file('/run/secrets/otel')") % "OTEL_TOKEN"
    with pytest.raises(MdmgenError) as caught:
        policy.parse(text, "policy.yaml")
    (problem,) = caught.value.problems
    assert str(problem).startswith("policy.yaml:15: collector: the devices' OTLP headers name tokens as both")


def test_a_token_file_becomes_the_extensions_filename():
    text = SECRET_POLICY.replace("{{ secret('%s') }}", "{{ secret_file('/run/secrets/otel') }}").replace(
        "{{ secret('SEC_TOKEN') }}", "{{ secret_file('/run/secrets/otel') }}").replace(
        "  previous_token_env: OLD_TOKEN\n", "  {}\n").replace("collector:\n  {}", "collector: {}")
    given = fleet_input("unused")
    given = registry.FleetInput(devices=given.devices, policy=policy.parse(text, "p.yaml").policy,
                                destinations=given.destinations)
    config = load_yaml_bytes(registry.emit_fleet(given)[CONFIG])
    assert config["extensions"] == {"bearertokenauth": {"filename": "/run/secrets/otel"}}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12),
                min_size=1, max_size=5, unique=True))
def test_any_team_name_round_trips_through_the_rules_and_the_dashboard(teams):
    given_input = fleet_input("OTEL_TOKEN", tuple(teams))
    files = registry.emit_fleet(given_input)
    rules = load_yaml_bytes(files[RULES])
    headcount = [r["labels"]["team"] for g in rules["groups"] for r in g["rules"]
                 if r.get("record") == "mdmgen:claude_code_enrolled_users"]
    assert headcount == sorted(teams)
    dashboard = json.loads(files[TEAMS])
    (team,) = [v for v in dashboard["templating"]["list"] if v["name"] == "team"]
    assert [shown(o["text"]) for o in team["options"]] == sorted(teams)
    assert [bool(re.fullmatch(promql_string(o["value"]), name)) for o, name in zip(
        team["options"], sorted(teams), strict=True)] == [True] * len(teams)
    # Team names never reach the annotations as text (they are Go templates): the annotations are
    # the same whatever the teams are called.
    baseline = load_yaml_bytes(registry.emit_fleet(fleet_input("OTEL_TOKEN", ("plain",)))[RULES])
    assert _annotations(rules) == _annotations(baseline)


def _annotations(rules: dict) -> list:
    return [r["annotations"] for g in rules["groups"] for r in g["rules"] if "annotations" in r]


def test_a_literal_token_in_the_headers_is_refused_before_the_collector_sees_it(workdir):
    set_policy(workdir, section="\ncollector: {}\n", headers="Authorization=Bearer not-a-reference")
    result = run(workdir, "compile")
    assert result.exit_code == 1
    assert "secret(" in result.output  # the header credential must come from a secret reference
    assert "not-a-reference" not in result.output


def test_the_token_reference_moves_the_device_files_and_the_collector_config_together(workdir, monkeypatch):
    """A full compile with the token only in the environment: the devices carry the value, the
    collector config names the same variable, and renaming the reference changes both."""
    monkeypatch.setenv("OTEL_TOKEN_A", "tok-Aa1Bb2Cc3Dd4Ee5F")
    monkeypatch.setenv("OTEL_TOKEN_B", "tok-Zz9Yy8Xx7Ww6Vv5U")
    seen = []
    for name, value in (("OTEL_TOKEN_A", "tok-Aa1Bb2Cc3Dd4Ee5F"), ("OTEL_TOKEN_B", "tok-Zz9Yy8Xx7Ww6Vv5U")):
        set_policy(workdir, section="\ncollector: {}\n",
                   headers=f"Authorization=Bearer {{{{ secret('{name}') }}}}")
        compile_fleet(workdir, ROWS)
        out = workdir / "output"
        config = load_yaml(out / CONFIG)
        assert config["extensions"]["bearertokenauth"] == {"token": f"${{env:{name}}}"}
        assert value not in (out / CONFIG).read_text()
        serial = next(p.name for p in (out / "devices").iterdir())
        assert device_env(out, serial)["OTEL_EXPORTER_OTLP_HEADERS"] == f"Authorization=Bearer {value}"
        seen.append((out / CONFIG).read_bytes())
    assert seen[0] != seen[1]


def test_reused_devices_whose_endpoint_depends_on_the_device_are_rendered_for_the_collector(workdir):
    set_policy(workdir)
    path = workdir / "profiles" / "policy.yaml"
    per_device = '"https://otel-{{ serial | lower }}.example.com:4317"'  # a template over a device field
    path.write_text(path.read_text().replace('"{{ otlp_endpoint }}"', per_device))
    compile_fleet(workdir, ROWS)
    first = (workdir / "output" / INGRESS).read_bytes()
    assert compile_fleet(workdir, ROWS)["rendered"] == 0
    assert (workdir / "output" / INGRESS).read_bytes() == first
    (_service, ingress) = load_yaml(workdir / "output" / INGRESS)
    assert ingress["spec"]["tls"][0]["hosts"] == [f"otel-{s}.example.com" for s in ("hos00", "ops00", "ops01", "sec00")]


def test_a_hand_edited_collector_file_is_repaired_and_yaml_aliases_are_refused(workdir):
    set_policy(workdir)
    compile_fleet(workdir, ROWS)
    path = workdir / "output" / CONFIG
    good = path.read_bytes()
    path.write_text("a: &x [1, 2]\nb: [*x, *x]\n")
    assert compile_fleet(workdir, ROWS)["repaired"] == [CONFIG]
    assert path.read_bytes() == good
    with pytest.raises(ValueError, match="alias"):
        registry.get(CONFIG).read_semantic(b"a: &x [1, 2]\nb: [*x, *x]\n")


# --- the collector files cannot be broken by what the policy or the endpoints say -------------------

def ingress_backend(documents: list[dict], host: str, path: str) -> tuple[int, str] | None:
    """(service port, backend-protocol annotation) an Ingress controller sends ``host``+``path`` to,
    by the networking.k8s.io/v1 rules: Exact matches the whole path, Prefix whole ``/`` elements;
    the longest match wins and Exact beats Prefix."""
    best = None
    for doc in documents:
        if doc["kind"] != "Ingress":
            continue
        for rule in doc["spec"]["rules"]:
            if rule["host"] != host:
                continue
            for entry in rule["http"]["paths"]:
                elements = [e for e in entry["path"].split("/") if e]
                if entry["pathType"] == "Exact":
                    matched = path == entry["path"]
                else:
                    matched = [e for e in path.split("/") if e][:len(elements)] == elements
                rank = (len(entry["path"]), entry["pathType"] == "Exact")
                if matched and (best is None or rank > best[0]):
                    annotation = doc["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"]
                    best = (rank, (entry["backend"]["service"]["port"]["number"], annotation))
    return best[1] if best else None


GRPC_SERVICES = {"metrics": "MetricsService", "logs": "LogsService"}


def test_grpc_and_http_to_one_host_both_reach_the_collector_and_no_ingress_rule_is_claimed_twice():
    destinations = (OtlpDestination("metrics", "grpc", "https://otel.example.com"),
                    OtlpDestination("logs", "http/protobuf", "https://otel.example.com/v1/logs"),
                    OtlpDestination("metrics", "grpc", "https://otel.example.com:4417"),  # same host, other port
                    OtlpDestination("logs", "grpc", "https://grpc-logs.example.com"),
                    OtlpDestination("metrics", "http/json", "https://otel.example.com/v1/metrics"))
    base = fleet_input("OTEL_TOKEN")
    files = registry.emit_fleet(registry.FleetInput(devices=base.devices, policy=base.policy,
                                                    destinations=destinations))
    documents = load_yaml_bytes_all(files[INGRESS])
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    claimed = [(rule["host"], entry["path"]) for doc in documents if doc["kind"] == "Ingress"
               for rule in doc["spec"]["rules"] for entry in rule["http"]["paths"]]
    assert len(claimed) == len(set(claimed)), claimed
    config = load_yaml_bytes(files[CONFIG])
    for dest in destinations:
        url = urlsplit(dest.url)
        path = (f"/opentelemetry.proto.collector.{dest.signal}.v1.{GRPC_SERVICES[dest.signal]}/Export"
                if dest.protocol == "grpc" else url.path)
        port, backend = ingress_backend(documents, url.hostname, path)
        (name,) = [name for name, (_protocol, p) in receivers_of(config).items() if p == port]
        assert receivers_of(config)[name][0] == ("grpc" if dest.protocol == "grpc" else "http"), dest
        assert backend == ("GRPC" if dest.protocol == "grpc" else "HTTP"), dest
        assert name in config["service"]["pipelines"][dest.signal]["receivers"], dest


def load_yaml_bytes_all(data: bytes) -> list:
    import yaml

    return list(yaml.safe_load_all(data.decode("utf-8")))


DOLLARS = "a$b${x}c$$d${env:HOME}e$"


@pytest.mark.parametrize("token", ["env", "file"])
def test_every_dollar_from_the_policy_reaches_the_collector_as_written(token):
    """The collector expands ``${...}`` and reads ``$$`` as ``$`` in every value; mdmgen's own
    ``${env:NAME}`` must expand, and the policy's text must come out exactly as written."""
    header = ("{{ secret('OTEL_TOKEN') }}" if token == "env" else "{{ secret_file('/run/sec$rets/o${x}$$') }}")
    text = f"""
org: {{name: Example, identifier_prefix: com.example.mdmgen}}
settings:
  env:
    CLAUDE_CODE_ENABLE_TELEMETRY: "1"
    OTEL_METRICS_EXPORTER: otlp
    OTEL_EXPORTER_OTLP_PROTOCOL: grpc
    OTEL_EXPORTER_OTLP_ENDPOINT: https://otel.example.com:4317
    OTEL_EXPORTER_OTLP_HEADERS: "Authorization=Bearer {header}"
collector:
  logs:
    exporter: clickhouse
    endpoint: 'tcp://ch:9000/?x={DOLLARS}'
    database: '{DOLLARS}'
    logs_table_name: '{DOLLARS}'
    password_env: CH_PASSWORD
"""
    base = fleet_input("OTEL_TOKEN")
    given_input = registry.FleetInput(devices=base.devices, policy=policy.parse(text, "p.yaml").policy,
                                      destinations=base.destinations)
    config = load_yaml_bytes(registry.emit_fleet(given_input)[CONFIG])
    env = {"OTEL_TOKEN": "tok-value", "CH_PASSWORD": "pw-value", "HOME": "/root", "x": "X"}

    def expanded(value):
        if isinstance(value, dict):
            return {key: expanded(item) for key, item in value.items()}
        if isinstance(value, list):
            return [expanded(item) for item in value]
        return collector_expand(value, env) if isinstance(value, str) else value

    seen = expanded(config)
    clickhouse = seen["exporters"]["clickhouse"]
    assert (clickhouse["endpoint"], clickhouse["database"], clickhouse["logs_table_name"]) == (
        f"tcp://ch:9000/?x={DOLLARS}", DOLLARS, DOLLARS)
    assert clickhouse["password"] == "pw-value"
    assert seen["extensions"]["bearertokenauth"] == (
        {"token": "tok-value"} if token == "env" else {"filename": "/run/sec$rets/o${x}$$"})
    assert seen["receivers"] == config["receivers"] and seen["service"] == config["service"]  # no $ there
