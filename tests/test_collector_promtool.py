"""The generated Prometheus rules, checked and unit-tested by the real promtool (Debian's prometheus).

The synthetic series are written here, for the test inventory's teams, in the metric names the
pinned translation strategy gives (shared/reference/collector-side.md 1.2 and the Claude Code
reference, section 9): ``claude_code_session_count_total`` carrying the ``team`` and
``user_email`` labels the devices' resource attributes become.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import unicodedata
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdmgen.policy import team_problem

from .collector_helpers import (
    HOSTILE,
    JS_SPACES,
    RULES,
    TEAMS,
    compile_fleet,
    grafana_custom_options,
    load_yaml,
    set_policy,
    shown,
    team_rows,
)
from .conftest import SHIPPED_POLICY, promtool_path

LOW, HIGH, GONE = "Low Adopters", "High Adopters", "Left Team"


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([promtool_path(), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def series(metric: str, **labels: str) -> str:
    """A series in promtool's notation; JSON string escapes are PromQL's for these names."""
    matchers = ", ".join(f"{name}={json.dumps(value, ensure_ascii=False)}" for name, value in labels.items())
    return f"{metric}{{{matchers}}}"


def selector(team: str, user: str) -> str:
    return series("claude_code_session_count_total", team=team, user_email=user)


def rules_of(path: Path) -> list[dict]:
    return [rule for group in load_yaml(path)["groups"] for rule in group["rules"]]


def active(team: str, prefix: str, users: int) -> list[dict]:
    """``users`` users of a team, each with a session counter seen every 5 minutes for 3 hours."""
    return [{"series": selector(team, f"{prefix.lower()}{i}@example.com"), "values": "1+1x36"} for i in range(users)]


def low_adoption_alert(team: str, percent: str) -> dict:
    return {"exp_labels": {"severity": "warning", "team": team},
            "exp_annotations": {
                "summary": f"Team {team}: low Claude Code adoption",
                "description": f"{percent} of the team's enrolled users were active in the last 7d; "
                               "the policy expects at least 50%."}}


def test_promtool_accepts_the_rules_and_adoption_fires_per_team_against_its_headcount(workdir):
    set_policy(workdir)
    rows = team_rows(LOW, 10, "LOW") + team_rows(HIGH, 10, "HIGH") + team_rows(HOSTILE, 4, "HOS")
    compile_fleet(workdir, rows)
    rules = workdir / "output" / RULES
    checked = promtool("check", "rules", str(rules), cwd=workdir)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    headcount = [r for r in rules_of(rules) if r.get("record") == "mdmgen:claude_code_enrolled_users"]
    assert {r["labels"]["team"]: r["expr"] for r in headcount} == {
        LOW: "vector(10)", HIGH: "vector(10)", HOSTILE: "vector(4)"}

    inputs = active(LOW, "LOW", 3) + active(HIGH, "HIGH", 8) + active(HOSTILE, "HOS", 2) + active(GONE, "GONE", 1)
    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [{
        "interval": "5m",
        "input_series": inputs,
        "alert_rule_test": [{"eval_time": "2h", "alertname": "ClaudeCodeLowTeamAdoption",
                             # 3 of 10 fires; 8 of 10 and 2 of 4 (50%) do not; the gone team has no headcount
                             "exp_alerts": [low_adoption_alert(LOW, "30%")]}],
        "promql_expr_test": [{"eval_time": "2h", "expr": "mdmgen:claude_code_active_users_7d", "exp_samples": [
            {"labels": series("mdmgen:claude_code_active_users_7d", team=team), "value": count}
            for team, count in [(LOW, 3), (HIGH, 8), (HOSTILE, 2), (GONE, 1)]]}],
    }, {
        "interval": "5m",
        "input_series": active(HIGH, "HIGH", 8),  # nobody of LOW or HOSTILE is active at all
        "alert_rule_test": [{"eval_time": "2h", "alertname": "ClaudeCodeLowTeamAdoption",
                             "exp_alerts": [low_adoption_alert(HOSTILE, "0%"), low_adoption_alert(LOW, "0%")]}],
    }]}
    test_file = workdir / "rules-test.yaml"
    test_file.write_text(json.dumps(tests, ensure_ascii=False), encoding="utf-8")  # JSON is YAML
    tested = promtool("test", "rules", str(test_file), cwd=workdir)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_daily_spend_fires_above_the_policy_threshold(workdir):
    set_policy(workdir)
    compile_fleet(workdir, team_rows(LOW, 2, "LOW"))
    rules = workdir / "output" / RULES
    cost = series("claude_code_cost_usage_USD_total", team=LOW, user_email="low0@example.com", model="m")
    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [
        {"interval": "1h", "input_series": [{"series": cost, "values": "0+30x30"}],  # 720 USD a day
         "alert_rule_test": [{"eval_time": "25h", "alertname": "ClaudeCodeDailySpendHigh", "exp_alerts": [{
             "exp_labels": {"severity": "warning"},
             "exp_annotations": {"summary": "Claude Code spend over the last 24h is above the org's threshold",
                                 "description": "720.00 USD in 24h; the policy's threshold is 500 USD."}}]}]},
        {"interval": "1h", "input_series": [{"series": cost, "values": "0+10x30"}],  # 240 USD a day
         "alert_rule_test": [{"eval_time": "25h", "alertname": "ClaudeCodeDailySpendHigh", "exp_alerts": []}]},
    ]}
    test_file = workdir / "spend-test.yaml"
    test_file.write_text(json.dumps(tests), encoding="utf-8")
    tested = promtool("test", "rules", str(test_file), cwd=workdir)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_daily_spend_counts_a_session_born_with_its_whole_cost(workdir):
    """Every Claude Code session is a new series (session.id), and a short one is born holding all
    its cost: increase() would read 0 for it (seen with the real client, tests/e2e/test_pipeline.py).
    A session that started yesterday counts only what it spent in the last 24h."""
    set_policy(workdir)
    compile_fleet(workdir, team_rows(LOW, 2, "LOW"))
    rules = workdir / "output" / RULES

    def session(name: str) -> str:
        return series("claude_code_cost_usage_USD_total", team=LOW, user_email="low0@example.com", model="m",
                      session_id=name)
    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [
        {"interval": "1h", "input_series": [{"series": session("short"), "values": "_x20 600x10"}],
         "alert_rule_test": [{"eval_time": "25h", "alertname": "ClaudeCodeDailySpendHigh", "exp_alerts": [{
             "exp_labels": {"severity": "warning"},
             "exp_annotations": {"summary": "Claude Code spend over the last 24h is above the org's threshold",
                                 "description": "600.00 USD in 24h; the policy's threshold is 500 USD."}}]}]},
        {"interval": "1h", "input_series": [{"series": session("long"), "values": "0+300x3 900x30"}],  # spent by 3h
         "alert_rule_test": [{"eval_time": "28h", "alertname": "ClaudeCodeDailySpendHigh", "exp_alerts": []}]},
    ]}
    test_file = workdir / "spend-born-test.yaml"
    test_file.write_text(json.dumps(tests), encoding="utf-8")
    tested = promtool("test", "rules", str(test_file), cwd=workdir)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_a_team_that_left_the_inventory_has_no_rule_and_a_new_team_gets_one(workdir):
    set_policy(workdir)
    compile_fleet(workdir, team_rows(LOW, 3, "LOW") + team_rows(GONE, 2, "GONE"))
    compile_fleet(workdir, team_rows(LOW, 3, "LOW") + team_rows(HIGH, 1, "HIGH"))
    rules = workdir / "output" / RULES
    text = rules.read_text(encoding="utf-8")
    assert GONE not in text
    teams = [r["labels"]["team"] for r in rules_of(rules) if r.get("record") == "mdmgen:claude_code_enrolled_users"]
    assert teams == [HIGH, LOW]
    assert promtool("check", "rules", str(rules), cwd=workdir).returncode == 0


# --- any team name: through the real promtool and Grafana's split of the dashboard variable --------

def _team_key(team: str) -> str:
    return unicodedata.normalize("NFC", team).casefold()


SPECIAL = list(',\\":{}|$[]. \u3000')  # what Grafana's split, interpolation or trim, RE2 or PromQL read
TEAM_NAMES = st.text(st.one_of(st.characters(blacklist_categories=("Cs", "Cc", "Cf", "Co", "Cn", "Zl", "Zp")),
                               st.sampled_from(SPECIAL)), min_size=1, max_size=10).filter(
    lambda t: team_problem(t) is None and t == t.strip() == t.strip(JS_SPACES))
"""Printable Unicode as the inventory accepts a team name (``policy.team_problem``), without
surrounding spaces (the inventory's team is trimmed), with the characters that matter here often."""


def dashboard_query(dashboard: dict, title: str, values: list[str]) -> str:
    """A panel's query as Grafana sends it with these option values selected: ``${team:pipe}``
    is the values joined by ``|`` (grafana/scenes formatRegistry, ``pipe``)."""
    (expr,) = [t["expr"] for panel in dashboard["panels"] if panel["title"].startswith(title)
               for t in panel["targets"]]
    return expr.replace("${team:pipe}", "|".join(values))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(TEAM_NAMES, min_size=1, max_size=4, unique_by=_team_key))
def test_any_team_name_survives_promtool_and_the_dashboard_variable(tmp_path_factory, teams):
    """One compile and one promtool run per example: the adoption alert fires for exactly the teams
    with nobody active, and each option of the dashboard variable, as Grafana splits it, selects
    exactly its team's series in the real Prometheus regex engine."""
    promtool_path()
    workdir = tmp_path_factory.mktemp("fleet")
    (workdir / "profiles").mkdir()
    (workdir / "inventory").mkdir()
    shutil.copy(SHIPPED_POLICY, workdir / "profiles" / "policy.yaml")
    set_policy(workdir)
    rows = [row for i, team in enumerate(teams) for row in team_rows(team, 2, f"T{i}X")]
    compile_fleet(workdir, rows)
    names = [unicodedata.normalize("NFC", team) for team in teams]  # the inventory's spelling
    active_users = {name: i % 3 for i, name in enumerate(names)}  # 0, 1 or 2 of the 2 enrolled

    dashboard = json.loads((workdir / "output" / TEAMS).read_text(encoding="utf-8"))
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "team"]
    options = grafana_custom_options(variable["query"])
    assert [shown(label) for label, _value in options] == sorted(names)
    value = dict(zip(sorted(names), (value for _label, value in options), strict=True))

    inputs = [entry for i, name in enumerate(names) for entry in active(name, f"T{i}X", active_users[name])]
    exprs = [{"eval_time": "2h", "expr": dashboard_query(dashboard, "Enrolled users", [value[name]]),
              "exp_samples": [{"labels": series("mdmgen:claude_code_enrolled_users", team=name), "value": 2}]}
             for name in names]
    exprs.append({"eval_time": "2h", "expr": dashboard_query(dashboard, "Adoption", list(value.values())),
                  "exp_samples": [{"labels": series("", team=name), "value": count / 2}
                                  for name, count in active_users.items() if count]})
    tests = {"rule_files": [str(workdir / "output" / RULES)], "evaluation_interval": "1m", "tests": [{
        "interval": "5m", "input_series": inputs, "promql_expr_test": exprs,
        "alert_rule_test": [{"eval_time": "2h", "alertname": "ClaudeCodeLowTeamAdoption",
                             "exp_alerts": [low_adoption_alert(name, "0%")
                                            for name, count in active_users.items() if not count]}]}]}
    test_file = workdir / "teams-test.yaml"
    test_file.write_text(json.dumps(tests, ensure_ascii=False), encoding="utf-8")
    tested = promtool("test", "rules", str(test_file), cwd=workdir)
    assert tested.returncode == 0, tested.stdout + tested.stderr
