"""``collector/prometheus-rules.yaml``: the org's alert rules, as policy, over the inventory's teams.

Three groups:

- ``mdmgen-enrolled-headcount``: one recording rule per team, ``vector(N)`` labelled with the
  team, N its enrolled users from the inventory. Prometheus cannot know who *should* be active;
  only the inventory does, so it is published as series. A team that leaves the inventory loses
  its rule with the next compile.
- ``mdmgen-claude-code``: active users per team over the window (a recording rule, computed once
  for every team), and the daily spend alerts.
- ``mdmgen-team-adoption``: one alert, firing per team when fewer than ``adoption_min_ratio`` of
  its enrolled users were active in the window. It divides by the headcount series, so only the
  inventory's teams can fire (a team that left has no headcount rule, hence no alert), and a team
  with nobody active, which has no active series, counts as 0 through ``headcount * 0``.
  One rule rather than one per team: Prometheus evaluates it once, and promtool refuses
  duplicate rules with the same name and labels.

The team label is the one the devices send (``inputs.SentTeam``: ``team``, or ``department`` when the
policy's attribute is named so), with the values they send (``{{ team|lower }}`` sends lower case).
Team names go into YAML only as the headcount rules' team label (recording-rule labels are
not templates) through the safe dumper. They never go into alert labels or annotations as text:
those are Go templates, so a team called ``{{ ... }}`` would be executed; the team label comes
from the expression's series and annotations print it with ``$labels.team``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..inputs import SentTeam
from .fleet import (
    ACTIVE_RECORD,
    COST_METRIC,
    ENROLLED_RECORD,
    SESSION_METRIC,
    TRANSLATION_STRATEGY,
    dump_yaml,
    grown,
    headcounts,
)

if TYPE_CHECKING:
    from ..inputs import FleetInput

PATH = "collector/prometheus-rules.yaml"


def emit(given: FleetInput) -> bytes | None:
    collector = given.policy.collector
    if collector is None:
        return None
    alerts = collector.alerts
    window = alerts.adoption_window
    sent = given.team or SentTeam()
    label = sent.label  # a label name: [a-zA-Z_][a-zA-Z0-9_]*, safe in PromQL and in Go templates
    teams = headcounts(given.devices, sent)
    severity = {"severity": alerts.severity}
    headcount_rules = [{"record": ENROLLED_RECORD, "expr": f"vector({count})", "labels": {label: team}}
                       for team, count in teams.items()]
    usage_rules: list[dict[str, Any]] = [
        {"record": f"{ACTIVE_RECORD}_{window}",
         "expr": f"count by ({label}) (count by ({label}, user_email) "
                 f"(last_over_time({SESSION_METRIC}[{window}])))"},
        {"alert": "ClaudeCodeDailySpendHigh",
         "expr": f"sum({grown(COST_METRIC, '1d')}) > {_number(alerts.daily_spend_usd)}",
         "labels": severity,
         "annotations": {
             "summary": "Claude Code spend over the last 24h is above the org's threshold",
             "description": "{{ $value | printf \"%.2f\" }} USD in 24h; the policy's threshold is "
                            f"{_number(alerts.daily_spend_usd)} USD."}},
    ]
    if alerts.user_daily_spend_usd is not None:
        usage_rules.append({
            "alert": "ClaudeCodeUserDailySpendHigh",
            "expr": f"sum by (user_email, {label}) {grown(COST_METRIC, '1d')} "
                    f"> {_number(alerts.user_daily_spend_usd)}",
            "labels": severity,
            "annotations": {
                "summary": "One user's Claude Code spend over the last 24h is above the threshold",
                "description": f"{{{{ $labels.user_email }}}} (team {{{{ $labels.{label} }}}}): "
                               "{{ $value | printf \"%.2f\" }} "
                               f"USD in 24h; the threshold is {_number(alerts.user_daily_spend_usd)} USD."}})
    percent = _number(alerts.adoption_min_ratio * 100)
    active = f"{ACTIVE_RECORD}_{window}"
    adoption_rules = [] if not teams else [{
        "alert": "ClaudeCodeLowTeamAdoption",
        "expr": f"({active} or {ENROLLED_RECORD} * 0) / on ({label}) {ENROLLED_RECORD} "
                f"< {_number(alerts.adoption_min_ratio)}",
        "for": "1h",
        "labels": severity,
        "annotations": {
            "summary": f"Team {{{{ $labels.{label} }}}}: low Claude Code adoption",
            "description": f"{{{{ $value | humanizePercentage }}}} of the team's enrolled users were active in the "
                           f"last {window}; the policy expects at least {percent}%."}}]
    rules = {"groups": [
        {"name": "mdmgen-enrolled-headcount", "rules": headcount_rules},
        {"name": "mdmgen-claude-code", "rules": usage_rules},
        {"name": "mdmgen-team-adoption", "rules": adoption_rules},
    ]}
    rules["groups"] = [g for g in rules["groups"] if g["rules"]]
    header = ("# Generated by mdmgen from the policy and the inventory; do not edit (recompile instead).\n"
              f"# Metric names assume the collector's prometheus exporter with translation_strategy "
              f"{TRANSLATION_STRATEGY}.\n")
    return (header + dump_yaml(rules)).encode("utf-8")


def _number(value: float) -> str:
    """A threshold as PromQL writes it: ``500`` rather than ``500.0``, ``0.5`` as it is."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))
