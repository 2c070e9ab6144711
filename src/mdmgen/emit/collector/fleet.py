"""What every collector emitter derives from the fleet: destinations, receivers, teams, tokens.

Metric names follow the Prometheus exporter's translation strategy, which the generated
collector config pins (shared/reference/collector-side.md, 1.2): under the default
``UnderscoreEscapingWithSuffixes`` ``claude_code.cost.usage`` (unit USD) is exported as
``claude_code_cost_usage_USD_total``. The rules and dashboards use the names below, so they hold
exactly as long as the strategy below is the one in the config, which it always is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import yaml

from ... import secrets
from ...models import Device, team_key
from ...otlp import OtlpDestination
from ..inputs import FleetInput, SentTeam

if TYPE_CHECKING:
    from ...policy import Policy

TRANSLATION_STRATEGY = "UnderscoreEscapingWithSuffixes"
COST_METRIC = "claude_code_cost_usage_USD_total"
TOKEN_METRIC = "claude_code_token_usage_tokens_total"
SESSION_METRIC = "claude_code_session_count_total"
LINES_METRIC = "claude_code_lines_of_code_count_total"
ENROLLED_RECORD = "mdmgen:claude_code_enrolled_users"
ACTIVE_RECORD = "mdmgen:claude_code_active_users"
HEADER_VARIABLES = ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
                    "OTEL_EXPORTER_OTLP_LOGS_HEADERS")


def grown(selector: str, window: str) -> str:
    """PromQL: how much the counter ``selector`` grew in ``window``, per series: its last value in
    the window minus its last value before it (0 for a series that began in the window).

    Not ``increase()``, which measures from a series' first sample in the window, so whatever a new
    series already held at that sample is lost. Claude Code's counters carry ``session.id`` (and the
    per-install ``user.id``), so every session is a new series whose first sample already holds its
    first export: a ``claude -p`` run (one export, on exit) read 0 USD, and an interactive session
    lost its first export interval. ``increase()`` also extrapolates, which over one short session
    read 30% more than the client spent. Both seen with the real client, collector and Prometheus
    (tests/e2e/test_pipeline.py). The price: a counter reset inside the window (the collector
    restarted mid-session) counts from the reset only, never below 0."""
    last = f"last_over_time({selector}[{window}])"
    return f"(clamp_min({last} - (last_over_time({selector}[{window}] offset {window}) or {last} * 0), 0))"


@dataclass(frozen=True, order=True)
class Receiver:
    """One otlp receiver of the generated config: a protocol on a port, and the signals sent to it."""

    family: str
    port: int
    signals: tuple[str, ...]
    hosts: tuple[str, ...]  # the https hosts devices reach it by (for the ingress)

    @property
    def name(self) -> str:
        return f"otlp/{self.family}-{self.port}"


def receivers(destinations: Iterable[OtlpDestination]) -> list[Receiver]:
    """The receivers the devices need, one per (protocol, port), sorted."""
    signals: dict[tuple[str, int], set[str]] = {}
    hosts: dict[tuple[str, int], set[str]] = {}
    for dest in destinations:
        key = (dest.family, dest.port)
        signals.setdefault(key, set()).add(dest.signal)
        if dest.secure:
            hosts.setdefault(key, set()).add(dest.host)
    return [Receiver(family, port, tuple(sorted(signals[(family, port)])), tuple(sorted(hosts.get((family, port), ()))))
            for family, port in sorted(signals)]


def headcounts(devices: Iterable[Device], sent: SentTeam | None = None) -> dict[str, int]:
    """Each team's enrolled users (distinct emails, or pseudonyms, ignoring case), by the team
    value the devices send (``sent``; their display team without it), sorted.

    A person with a laptop and a workstation counts once: adoption counts people, not installs."""
    sent = sent or SentTeam()
    users: dict[str, set[str]] = {}
    for device in devices:
        users.setdefault(sent.of(device), set()).add(device.user_email.casefold())
    return {team: len(users[team]) for team in sorted(users)}


@dataclass(frozen=True)
class Tokens:
    """The bearer tokens the collector accepts: env variables, and at most one file."""

    env: tuple[str, ...] = ()
    file: str | None = None

    def __bool__(self) -> bool:
        return bool(self.env or self.file)


def tokens(given: FleetInput) -> Tokens:
    """Every token the devices may send, as references, never values.

    Found in the headers templates of the policy layers that apply to a compiled device (the
    ``secret('NAME')``/``secret_file('PATH')`` references), plus the section's ``token_env`` (for
    headers naming no reference) and ``previous_token_env`` (the old token during a rotation)."""
    collector = given.policy.collector
    env: list[str] = []
    file = None
    for source in _header_templates(given.policy, given.devices):
        for ref in secrets.references(source):
            if ref.kind == "env":
                env.append(ref.name)
            elif file is None:
                file = ref.name
    if collector is not None:
        env += [name for name in (collector.token_env, collector.previous_token_env) if name]
    return Tokens(env=tuple(sorted(set(env))), file=file)


def _header_templates(policy: Policy, devices: Iterable[Device]) -> list[str]:
    devices = list(devices)
    platforms = {d.platform for d in devices}
    teams = {d.team_key for d in devices}
    layers = [policy, *(layer for p, layer in policy.platforms.items() if p in platforms),
              *(layer for t, layer in policy.teams.items() if team_key(t) in teams)]
    found = []
    for layer in layers:
        env = layer.settings.get("env")
        if isinstance(env, dict):
            found += [env[name] for name in HEADER_VARIABLES if isinstance(env.get(name), str)]
    return sorted(found)


class _Dumper(yaml.SafeDumper):
    """The safe dumper without anchors: a repeated value is written out again, not as ``*id001``."""

    def ignore_aliases(self, data: object) -> bool:
        return True


_LINE_BREAKS = "\n\r\x85\u2028\u2029"


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    """Strings holding a line break are double-quoted, where YAML escapes it (``\\N``, ``\\L``): in
    another style a team called ``a<NEL>b`` would load back as ``a b``."""
    style = '"' if any(ch in value for ch in _LINE_BREAKS) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(data: object) -> str:
    """Block-style YAML in the order the emitter built it, Unicode kept, never wrapped."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1 << 20,
                     default_flow_style=False)
