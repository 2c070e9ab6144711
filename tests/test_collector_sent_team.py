"""The collector side counts the team the devices *send* (their rendered resource attributes), not
the inventory column: a policy that lower-cases the team or sends it as ``department`` gets rules
and dashboards over that label and those values, and an active team raises no adoption alert."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mdmgen import attributes
from mdmgen.emit.collector.dashboards import TEAM_SELECTION

from .collector_helpers import RULES, TEAMS, compile_fleet, set_policy, team_rows
from .conftest import HEADER, run, snapshot, write_inventory
from .test_collector_promtool import promtool, rules_of, series

ATTRIBUTE = '  team: "{{ team }}"\n'
ACTIVE, IDLE = "Platform Eng", "Idle Team"


def policy_with(workdir: Path, attribute_line: str) -> None:
    set_policy(workdir)
    path = workdir / "profiles" / "policy.yaml"
    text = path.read_text()
    assert ATTRIBUTE in text
    path.write_text(text.replace(ATTRIBUTE, attribute_line))


def sent(out: Path, serial: str) -> dict[str, str]:
    """What a device sends as resource attributes, decoded as the collector reads them."""
    env = json.loads((out / "devices" / serial / "managed-settings.json").read_text())["env"]
    return attributes.decode(env["OTEL_RESOURCE_ATTRIBUTES"])


@pytest.mark.parametrize(("line", "label", "value"), [
    ('  team: "{{ team|lower }}"\n', "team", "platform eng"),
    ('  department: "{{ team }}"\n', "department", ACTIVE),
    ('  org.team: "{{ team|upper }}"\n', "org_team", "PLATFORM ENG"),
])
def test_rules_and_dashboards_use_the_label_and_values_the_devices_send(workdir, line, label, value):
    policy_with(workdir, line)
    compile_fleet(workdir, team_rows(ACTIVE, 1, "ACT") + team_rows(IDLE, 1, "IDL"))
    out = workdir / "output"
    attribute = line.split(":")[0].strip()
    assert sent(out, "ACT00")[attribute] == value
    rules = out / RULES
    headcount = {r["labels"][label]: r["expr"] for r in rules_of(rules)
                 if r.get("record") == "mdmgen:claude_code_enrolled_users"}
    assert headcount == {value: "vector(1)", sent(out, "IDL00")[attribute]: "vector(1)"}
    text = rules.read_text()
    assert f"count by ({label})" in text and f"on ({label})" in text and f"$labels.{label}" in text
    dashboard = json.loads((out / TEAMS).read_text())
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "team")
    assert sorted(o["text"] for o in variable["options"]) == sorted(headcount)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert all(f'{label}=~"{TEAM_SELECTION}"' in e for e in exprs)

    # Held out: series labelled as the devices send them (read back from their files), run by promtool.
    who = sent(out, "ACT00")
    inputs = [{"series": series("claude_code_session_count_total", **{label: who[attribute],
                                                                      "user_email": who["user_email"]}),
               "values": "1+1x36"}]
    idle = sent(out, "IDL00")[attribute]
    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [{
        "interval": "5m", "input_series": inputs,
        "alert_rule_test": [{"eval_time": "2h", "alertname": "ClaudeCodeLowTeamAdoption", "exp_alerts": [{
            "exp_labels": {"severity": "warning", label: idle},
            "exp_annotations": {"summary": f"Team {idle}: low Claude Code adoption",
                                "description": "0% of the team's enrolled users were active in the last 7d; "
                                               "the policy expects at least 50%."}}]}],
    }]}
    test_file = workdir / "rules-test.yaml"
    test_file.write_text(json.dumps(tests, ensure_ascii=False), encoding="utf-8")
    tested = promtool("test", "rules", str(test_file), cwd=workdir)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_a_reused_device_is_counted_as_it_sends_too(workdir, tmp_path):
    policy_with(workdir, '  team: "{{ team|lower }}"\n')
    compile_fleet(workdir, team_rows(ACTIVE, 3, "ACT"))
    data = compile_fleet(workdir, team_rows(ACTIVE, 3, "ACT") + team_rows(IDLE, 1, "IDL"))
    assert data["rendered"] == 1  # the three of ACTIVE were reused
    fresh = tmp_path / "fresh"
    assert run(workdir, "compile", "--out", str(fresh)).exit_code == 0
    for path in (RULES, TEAMS):
        assert (workdir / "output" / path).read_bytes() == (fresh / path).read_bytes()
    assert "platform eng" in (fresh / RULES).read_text()


@pytest.mark.parametrize(("line", "message"), [
    ('  owner: "{{ user_email }}"\n', "no resource attribute carries the team"),
    ('  dept: "{{ team }}"\n  unit: "{{ team|lower }}"\n', "several resource attributes use the team (dept, unit)"),
])
def test_no_single_team_attribute_with_a_collector_is_an_error_at_its_line(workdir, line, message):
    policy_with(workdir, line)
    before = snapshot(workdir / "output")
    write_inventory(workdir, HEADER + "\n".join(team_rows(ACTIVE, 1, "ACT")) + "\n")
    result = run(workdir, "compile")
    assert result.exit_code == 1
    lines = (workdir / "profiles" / "policy.yaml").read_text().splitlines()
    line_no = next(i for i, text in enumerate(lines, 1) if text.startswith("collector:"))
    assert f"profiles/policy.yaml:{line_no}: collector: {message}" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(workdir / "output") == before
