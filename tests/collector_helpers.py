"""Shared by the collector tests: a policy with a ``collector:`` section and a team inventory."""

from __future__ import annotations

import json
import re
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


# --- how the consumers read the generated files, written from their sources ------------------------

JS_SPACES = ("\t\n\v\f\r \u00a0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200B))
             + "\u2028\u2029\u202f\u205f\u3000\ufeff")
"""ECMAScript's WhiteSpace and LineTerminator: what ``\\s`` matches and ``String.prototype.trim`` removes."""
_JS_SPACE = "[" + re.escape(JS_SPACES) + "]"
_JS_DOT = "[^\n\r\u2028\u2029]"  # ``.`` without the s flag
GRAFANA_VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}", re.ASCII)
"""grafana/scenes ``VARIABLE_REGEX`` (``$var``, ``[[var]]``, ``${var.path:format}``), JS ``\\w`` being ASCII."""


def grafana_custom_options(query: str) -> list[tuple[str, str]]:
    """(label, value) of each option of a custom variable, as Grafana reads its ``query``:
    grafana/scenes ``CustomVariable.transformCsvStringToOptions``
    (packages/scenes/src/variables/variants/CustomVariable.tsx). It interpolates the query first;
    a query with no variable reference in it is left as it is, which this asserts."""
    assert GRAFANA_VARIABLE.search(query) is None, query
    options = []
    for text in re.findall(r"(?:\\,|[^,])+", query):  # str.match(/(?:\\,|[^,])+/g)
        text = text.replace("\\,", ",")  # text.replace(/\\,/g, ',')
        found = re.fullmatch(f"{_JS_SPACE}*({_JS_DOT}+){_JS_SPACE}:{_JS_SPACE}({_JS_DOT}+)", text)
        label, value = (found.group(1), found.group(2)) if found else (text, text)
        options.append((label.strip(JS_SPACES), value.strip(JS_SPACES)))
    return options


def promql_string(body: str) -> str:
    """The string a PromQL double-quoted literal holds, for a body of ASCII letters, digits, ``_``
    and the escapes ``\\\\``, ``\\u`` and ``\\U`` (the PromQL lexer's escapes, which Python's agree with)."""
    assert body.isascii(), body
    return body.encode("ascii").decode("unicode_escape")


def collector_expand(text: str, env: dict[str, str]) -> str:
    """A string of a collector config as the collector reads it: opentelemetry-collector
    ``confmap`` (``expand.go`` ``findURI``/``findAndExpandURI``, then ``resolver.go``
    ``escapeDollarSigns``). The innermost ``${...}`` before the first ``}`` is expanded unless an
    odd number of ``$`` precede it, and replaces every copy of it (Go's ``strings.ReplaceAll``);
    then every ``$$`` becomes ``$``."""
    def find(s: str) -> str:
        close = s.find("}")
        if close < 0:
            return ""
        opening = s[:close + 1].rfind("${")
        if opening < 0:
            return find(s[close + 1:])
        dollars = len(s[:opening]) - len(s[:opening].rstrip("$"))
        if dollars % 2 == 1:
            return find(s[close + 1:])
        return s[opening:close + 1]

    while uri := find(text):
        name = uri[2:-1].removeprefix("env:")
        text = text.replace(uri, env[name])
    return text.replace("$$", "$")


def shown(label: str) -> str:
    """A team option's label as a person reads it: without the invisible word joiner mdmgen puts
    after a ``$`` or ``[`` so Grafana does not take ``$x`` or ``[[x]]`` for a variable."""
    return re.sub("(?<=[$[])\u2060", "", label)
