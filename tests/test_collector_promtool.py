"""The generated Prometheus rules, checked and unit-tested by the real promtool (Debian's prometheus).

The synthetic series are written here, for the test inventory's teams, in the metric names the
pinned translation strategy gives (shared/reference/collector-side.md 1.2 and the Claude Code
reference, section 9): ``claude_code_session_count_total`` carrying the ``team`` and
``user_email`` labels the devices' resource attributes become.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .collector_helpers import HOSTILE, RULES, compile_fleet, load_yaml, set_policy, team_rows
from .conftest import promtool_path

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
