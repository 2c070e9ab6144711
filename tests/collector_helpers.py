"""Shared by the collector tests: a policy with a ``collector:`` section and a team inventory."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .conftest import HEADER, run, write_inventory

CONFIG = "collector/otel-collector-config.yaml"
RULES = "collector/prometheus-rules.yaml"
PERSONAL = "collector/dashboards/personal.json"
TEAMS = "collector/dashboards/team-overview.json"
INGRESS = "collector/k8s/ingress.yaml"
ALL = (CONFIG, RULES, PERSONAL, TEAMS, INGRESS)
HOSTILE = 'R&D "Berlin", {{ $x }} ü'  # quotes, braces, a Go-template marker, unicode
COLLECTOR_SECTION = """
collector:
  token_env: OTEL_TOKEN
  alerts:
    daily_spend_usd: 500
"""


def team_rows(team: str, users: int, prefix: str, platform: str = "linux") -> list[str]:
    quoted = '"' + team.replace('"', '""') + '"'
    return [f"{prefix}{i:02d},{platform},{prefix.lower()}{i}@example.com,{quoted}" for i in range(users)]


def set_policy(workdir: Path, *, endpoint: str = "https://otel.example.com:4317", protocol: str = "grpc",
               section: str = COLLECTOR_SECTION, headers: str | None = None) -> None:
    """The shipped policy with its variables set and a collector section."""
    path = workdir / "profiles" / "policy.yaml"
    text = (workdir / "profiles" / "policy.yaml.orig").read_text() if (
        workdir / "profiles" / "policy.yaml.orig").exists() else path.read_text()
    (workdir / "profiles" / "policy.yaml.orig").write_text(text)
    text = text.replace("otlp_endpoint: https://otel.company.com:4317", f"otlp_endpoint: {endpoint}")
    text = text.replace("otlp_protocol: grpc", f"otlp_protocol: {protocol}")
    if headers is not None:
        text = text.replace('    OTEL_EXPORTER_OTLP_ENDPOINT: "{{ otlp_endpoint }}"\n',
                            f'    OTEL_EXPORTER_OTLP_ENDPOINT: "{{{{ otlp_endpoint }}}}"\n'
                            f'    OTEL_EXPORTER_OTLP_HEADERS: "{headers}"\n')
    path.write_text(text + section)


def compile_fleet(workdir: Path, rows: list[str], out: str = "output", *args: str) -> dict:
    write_inventory(workdir, HEADER + "\n".join(rows) + "\n")
    result = run(workdir, "compile", "--json", "--out", out, *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def load_yaml(path: Path):
    documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    return documents[0] if len(documents) == 1 else documents


def device_env(out: Path, serial: str) -> dict:
    return json.loads((out / "devices" / serial / "managed-settings.json").read_text())["env"]
