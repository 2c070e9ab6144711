"""Every collector config mdmgen can generate, checked by the real OpenTelemetry Collector.

``otelcol-mdmgen validate --config FILE`` (tests/collector/: v0.161.0 with exactly the components
the generated config names) unmarshals the config into the real components' structs, where an
unknown key, a misspelt component or a bad value is an error, and checks the pipelines, without
starting anything. Each variant is compiled by the CLI from a policy, as a user would, and
validated with only the environment an operator sets: the variables the config names
(``${env:NAME}``) and nothing else, so a reference the operator is not told about fails here too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from .collector_helpers import CONFIG, HOSTILE, compile_fleet, load_yaml, set_policy, team_rows
from .conftest import otelcol_path

ROWS = team_rows("Ops", 2, "OPS") + team_rows(HOSTILE, 1, "HOS", "macos") + team_rows("Sec", 1, "SEC", "windows")
ENV_REFERENCE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
TOKEN = "tok-" + "n" * 28  # what an operator puts in the variables the config names
OLD_TOKEN = "tok-" + "o" * 28
CLICKHOUSE_LOGS = """
  logs:
    exporter: clickhouse
    endpoint: tcp://clickhouse:9000
    username_env: CH_USER
    password_env: CH_PASSWORD
"""
HEADERS = "Authorization=Bearer {{ secret('OTEL_TOKEN') }}"
SEVERAL_RECEIVERS = f"""
teams:
  Sec:
    settings:
      env:
        OTEL_EXPORTER_OTLP_PROTOCOL: http/protobuf
        OTEL_EXPORTER_OTLP_ENDPOINT: https://otel.example.com:4318
  {json.dumps(HOSTILE, ensure_ascii=False)}:
    settings:
      env:
        OTEL_EXPORTER_OTLP_PROTOCOL: http/json
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: https://otel.example.com:4418/v1/metrics
        OTEL_EXPORTER_OTLP_LOGS_ENDPOINT: https://otel.example.com:4419/v1/logs
"""

VARIANTS = {
    # name: (policy text appended to the shipped policy, headers template or None, pseudonymise)
    "loki, token_env": ("collector:\n  token_env: OTEL_TOKEN\n", None, False),
    "loki, no auth": ("collector: {}\n", None, False),
    "clickhouse, no auth": ("collector:" + CLICKHOUSE_LOGS, None, False),
    "clickhouse, headers token": ("collector:" + CLICKHOUSE_LOGS, HEADERS, False),
    "rotation": ("collector:\n  previous_token_env: OTEL_TOKEN_OLD\n", HEADERS, False),
    "secret_file": ("collector: {}\n", "Authorization=Bearer {{ secret_file('TOKEN_FILE') }}", False),
    "several receivers": ("collector:\n  token_env: OTEL_TOKEN\n", None, False),
    "pseudonymised emails": ("pseudonymise_email: true\ncollector:\n  token_env: OTEL_TOKEN\n"
                             "  previous_token_env: OTEL_TOKEN_OLD" + CLICKHOUSE_LOGS,
                             HEADERS, True),
}
OPERATOR_ENV = {"OTEL_TOKEN": TOKEN, "OTEL_TOKEN_OLD": OLD_TOKEN, "CH_USER": "otel", "CH_PASSWORD": "ch-" + "p" * 20}
"""What an operator sets on the collector for these policies (docs/collector.md)."""


def validate(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``otelcol-mdmgen validate`` with only ``env`` (and PATH) in its environment."""
    return subprocess.run([str(otelcol_path()), "validate", "--config", str(config)],
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
                          capture_output=True, text=True, timeout=120, check=False)  # a hang guard only


def compile_variant(workdir: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> Path:
    """The variant compiled by the CLI; the path of its collector config."""
    section, headers, pseudonymise = VARIANTS[name]
    monkeypatch.setenv("OTEL_TOKEN", TOKEN)  # secret('OTEL_TOKEN') is read when compiling
    if pseudonymise:
        monkeypatch.setenv("MDMGEN_PSEUDONYM_KEY", "k" * 32)
    if headers and "TOKEN_FILE" in headers:
        token_file = workdir / "secrets" / "otel.token"
        token_file.parent.mkdir()
        token_file.write_text(TOKEN + "\n")
        headers = headers.replace("TOKEN_FILE", str(token_file))
    if name == "several receivers":
        policy = workdir / "profiles" / "policy.yaml"
        policy.write_text(policy.read_text().replace("teams: {}\n", SEVERAL_RECEIVERS))
    set_policy(workdir, section="\n" + section, headers=headers)
    compile_fleet(workdir, ROWS)
    return workdir / "output" / CONFIG


@pytest.mark.parametrize("name", VARIANTS)
def test_the_real_collector_accepts_every_generated_config(workdir, monkeypatch, name):
    otelcol_path()  # skip (fail under CI) before compiling when the collector is not built
    config = compile_variant(workdir, monkeypatch, name)
    text = config.read_text(encoding="utf-8")
    named = set(ENV_REFERENCE.findall(text))
    assert named <= set(OPERATOR_ENV), f"the config names variables no operator was told to set: {named}"
    result = validate(config, {key: OPERATOR_ENV[key] for key in named})
    assert result.returncode == 0, f"the real collector rejects the {name!r} config:\n{result.stderr}\n{text}"
    assert "deltatocumulative" in load_yaml(config)["service"]["pipelines"]["metrics"]["processors"]


def test_the_variants_cover_what_the_issue_lists(workdir, monkeypatch, tmp_path):
    """Each variant really is what its name says: the validation above proves something only if the
    configs differ in the ways a policy can make them differ."""
    seen = {}
    for index, name in enumerate(VARIANTS):
        folder = tmp_path / f"v{index}"
        (folder / "profiles").mkdir(parents=True)
        (folder / "inventory").mkdir()
        (folder / "profiles" / "policy.yaml").write_text((workdir / "profiles" / "policy.yaml").read_text())
        seen[name] = load_yaml(compile_variant(folder, monkeypatch, name))
    logs = {name: config["service"]["pipelines"]["logs"]["exporters"] for name, config in seen.items()}
    assert {tuple(exporters) for exporters in logs.values()} == {("otlphttp/loki",), ("clickhouse",)}
    auth = {name: config.get("extensions", {}).get("bearertokenauth") for name, config in seen.items()}
    assert auth["loki, no auth"] is None and auth["clickhouse, no auth"] is None
    assert auth["loki, token_env"] == {"token": "${env:OTEL_TOKEN}"}
    assert auth["rotation"] == {"tokens": ["${env:OTEL_TOKEN}", "${env:OTEL_TOKEN_OLD}"]}
    assert auth["secret_file"] == {"filename": str(tmp_path / "v5" / "secrets" / "otel.token")}
    several = seen["several receivers"]["receivers"]
    assert {name: list(receiver["protocols"]) for name, receiver in several.items()} == {
        "otlp/grpc-4317": ["grpc"], "otlp/http-4318": ["http"], "otlp/http-4418": ["http"], "otlp/http-4419": ["http"]}
    pseudonymised = (tmp_path / "v7" / "output" / CONFIG).read_text(encoding="utf-8")
    assert "@example.com" not in pseudonymised
    assert "u-" in (tmp_path / "v7" / "output" / "devices" / "OPS00" / "managed-settings.json").read_text()


@pytest.mark.parametrize(("section", "component", "key", "value", "refused"), [
    ("processors", "memory_limiter", "check_interva", "1s", "invalid keys: check_interva"),
    # The prometheus exporter squashes confighttp.ServerConfig, whose Unmarshal ignores unknown keys
    # in v0.161.0, so a misspelt key there passes validate; a bad value of the key mdmgen pins is
    # refused, which proves the exporter reads translation_strategy (the metric names depend on it).
    ("exporters", "prometheus", "translation_strategy", "UnderscoreEscapingWithSuffix",
     "invalid translation_strategy"),
])
def test_validate_refuses_what_the_real_collector_does_not_know(workdir, monkeypatch, section, component, key,
                                                                  value, refused):
    """The check above can fail: the same binary refuses the generated config with one key or value changed."""
    otelcol_path()
    config = compile_variant(workdir, monkeypatch, "loki, token_env")
    parsed = load_yaml(config)
    parsed[section][component][key] = value
    bad = config.with_name("bad.yaml")
    bad.write_text(yaml.safe_dump(parsed))
    result = validate(bad, {"OTEL_TOKEN": TOKEN})
    assert result.returncode != 0
    assert refused in result.stderr
