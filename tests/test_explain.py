"""`mdmgen explain SERIAL`: one device compiled as compile would, each setting traced to its layer
and policy line, its files compared with the output folder, and no secret ever shown.

Tried as a new user would: the shipped policy, plus a platform and a team override and a header
that embeds a secret, on the shipped inventory."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from mdmgen import secrets
from mdmgen.emit import registry

from .conftest import ROOT, SHIPPED_POLICY, run, snapshot

TOKEN = "tok-4e9f1c2ab7d3-s3cr3t-value"
HEADERS = "    OTEL_EXPORTER_OTLP_HEADERS: 'Authorization=Bearer {{ secret(\"OTEL_TOKEN\") }}'\n"
OVERRIDES = """platforms:
  macos:
    settings:
      env:
        OTEL_METRIC_EXPORT_INTERVAL: "30000"

teams:
  Platform Eng:
    settings:
      env:
        OTEL_METRIC_EXPORT_INTERVAL: "10000"
    resource_attributes:
      cost_center: "{{ cost_center }}"
"""
BAD_ROW = "ZZ-BAD-0001,macos,not-an-address,Mobile,CC-1200,active\n"


def policy_text(extra: str = "") -> str:
    """The shipped policy with the header line after the endpoint, and the overrides."""
    text = SHIPPED_POLICY.read_text()
    endpoint = '    OTEL_EXPORTER_OTLP_ENDPOINT: "{{ otlp_endpoint }}"\n'
    assert endpoint in text and "platforms: {}\n\nteams: {}\n" in text
    text = text.replace(endpoint, endpoint + HEADERS)
    return text.replace("platforms: {}\n\nteams: {}\n", OVERRIDES) + extra


def line_of(text: str, needle: str, after: str = "") -> int:
    """1-based line of the first ``needle`` (after the first ``after``)."""
    start = text.index(after) if after else 0
    return text[:text.index(needle, start)].count("\n") + 1


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(ROOT / "inventory", tmp_path / "inventory")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "policy.yaml").write_text(policy_text())
    monkeypatch.setenv("OTEL_TOKEN", TOKEN)
    return tmp_path


def explain_json(project: Path, *args: str) -> dict:
    result = run(project, "explain", *args, "--json")
    assert result.exit_code == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr
    return json.loads(result.stdout)


def setting(found: dict, key: str) -> dict:
    return next(s for s in found["settings"] if s["key"] == key)


def test_a_team_mac_is_traced_to_its_layers_and_lines(project):
    text = policy_text()
    found = explain_json(project, "C02XK1AAJGH5")
    assert (found["serial"], found["platform"], found["team"]) == ("C02XK1AAJGH5", "macos", "Platform Eng")
    assert [layer["layer"] for layer in found["layers"]] == ["base", "platform", "team"]

    interval = setting(found, "env.OTEL_METRIC_EXPORT_INTERVAL")
    assert interval["value"] == "10000"
    assert (interval["layer"], interval["layer_name"]) == ("team", "Platform Eng")
    assert interval["source"] == f"profiles/policy.yaml:{line_of(text, '10000')}"
    assert interval["overridden"] == [{"layer": "platform", "layer_name": "macos", "value": "30000",
                                       "source": f"profiles/policy.yaml:{line_of(text, '30000')}"}]

    endpoint = setting(found, "env.OTEL_EXPORTER_OTLP_ENDPOINT")
    assert endpoint["value"] == "https://otel.company.com:4317"
    assert (endpoint["layer"], endpoint["overridden"]) == ("base", [])
    assert endpoint["source"] == f"profiles/policy.yaml:{line_of(text, 'OTEL_EXPORTER_OTLP_ENDPOINT:')}"
    assert endpoint["template"] == "{{ otlp_endpoint }}"
    [use] = endpoint["uses"]
    assert (use["name"], use["kind"], use["value"]) == ("otlp_endpoint", "variable", "https://otel.company.com:4317")
    assert use["source"] == f"profiles/policy.yaml:{line_of(text, 'otlp_endpoint:')} variables.otlp_endpoint"

    attributes = setting(found, "env.OTEL_RESOURCE_ATTRIBUTES")["attributes"]
    by_key = {a["key"]: a for a in attributes}
    assert {k: a["value"] for k, a in by_key.items()} == {
        "user_email": "alice.nguyen@example.com", "team": "Platform Eng", "cost_center": "CC-1100"}
    assert by_key["team"]["layer"] == "base"
    assert by_key["cost_center"]["layer"] == "team"
    assert by_key["cost_center"]["source"] == f"profiles/policy.yaml:{line_of(text, 'cost_center:')}"
    assert by_key["cost_center"]["uses"][0]["source"] == "inventory/devices.csv:2 column cost_center"


def test_the_secret_is_shown_only_by_label_and_fingerprint(project):
    found = explain_json(project, "C02XK1AAJGH5")
    headers = setting(found, "env.OTEL_EXPORTER_OTLP_HEADERS")
    assert headers["hidden"] is True and headers["value"] is None
    assert headers["secrets"] == [{"label": "env:OTEL_TOKEN", "fingerprint": secrets.shown_fingerprint(TOKEN)}]
    assert headers["template"] == 'Authorization=Bearer {{ secret("OTEL_TOKEN") }}'
    assert headers["layer"] == "base"
    text = run(project, "explain", "C02XK1AAJGH5")
    assert text.exit_code == 0
    assert TOKEN not in text.stdout + text.stderr
    assert f"embeds secret env:OTEL_TOKEN ({secrets.shown_fingerprint(TOKEN)})" in text.stdout


def test_the_text_form_shows_the_same_lines(project):
    text = policy_text()
    result = run(project, "explain", "C02XK1AAJGH5", "--var", "otlp_protocol=http/protobuf")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "  env.OTEL_METRIC_EXPORT_INTERVAL = \"10000\"" in out
    assert f"set by team Platform Eng at profiles/policy.yaml:{line_of(text, '10000')}" in out
    assert f"overrides platform macos at profiles/policy.yaml:{line_of(text, '30000')} (was \"30000\")" in out
    endpoint_line = line_of(text, "OTEL_EXPORTER_OTLP_ENDPOINT:")
    assert f"set by base at profiles/policy.yaml:{endpoint_line} from the template {{{{ otlp_endpoint }}}}" in out
    assert "cost_center = \"CC-1100\"" in out
    # A --var is said to come from the command line, not from the policy's default.
    assert 'otlp_protocol = "http/protobuf": command line, --var otlp_protocol=... on the command line' in out


def test_an_unknown_serial_is_one_line_with_the_nearest_serials(project):
    result = run(project, "explain", "C02XK1AAJGH")
    assert result.exit_code == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: no device 'C02XK1AAJGH' in the inventory")
    assert "did you mean C02XK1AAJGH5" in line
    as_json = run(project, "explain", "nothing-like-it", "--json")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["exit_code"] == 1
    assert "did you mean" not in as_json.stderr


def test_an_excluded_row_says_by_which_status(project):
    result = run(project, "explain", "lnx-0005")
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert "LNX-0005" in line and "excluded at inventory/devices.csv:11" in line and "'retired'" in line


def test_a_row_with_problems_lists_them_as_compile_does(project):
    with (project / "inventory" / "devices.csv").open("a") as inventory:
        inventory.write(BAD_ROW)
    validate = run(project, "validate")
    expected = [line for line in validate.stderr.splitlines() if line.startswith("inventory/devices.csv:22:")]
    assert expected
    result = run(project, "explain", "ZZ-BAD-0001")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[:-1] == expected
    assert "ZZ-BAD-0001" in result.stderr.splitlines()[-1]
    # The other devices still explain, with a note that compile stops on the bad row.
    fine = run(project, "explain", "LNX-0001")
    assert fine.exit_code == 0
    assert "note: 1 other row(s) of the inventory have problems" in fine.stdout


def test_a_device_the_compile_rejects_lists_the_compiles_problems(project):
    bad_endpoint = ("--var", "otlp_endpoint=http://otel.company.com:4317")
    validate = run(project, "validate", *bad_endpoint)
    assert validate.exit_code == 1
    expected = [line for line in validate.stderr.splitlines() if line.startswith("inventory/devices.csv:2:")]
    assert expected and "(set at profiles/policy.yaml:" in expected[0]
    result = run(project, "explain", "C02XK1AAJGH5", *bad_endpoint)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[:-1] == expected
    assert TOKEN not in result.stdout + result.stderr


def test_an_unknown_var_is_a_usage_error(project):
    result = run(project, "explain", "C02XK1AAJGH5", "--var", "nope=1")
    assert result.exit_code == 2


def test_the_output_folder_is_compared_and_never_written(project):
    out = project / "output"
    assert run(project, "compile", "-q").exit_code == 0
    before = snapshot(out)
    current = explain_json(project, "C02XK1AAJGH5")
    assert {f["name"]: f["output"] for f in current["files"]} == {
        "managed-settings.json": "current", "claude-code.mobileconfig": "current"}
    assert current["warnings"] == []
    for file in current["files"]:
        on_disk = (out / "devices" / "C02XK1AAJGH5" / file["name"]).read_bytes()
        assert file["sha256"] == hashlib.sha256(on_disk).hexdigest()

    stale = explain_json(project, "C02XK1AAJGH5", "--var", "otlp_protocol=http/protobuf")
    assert {f["output"] for f in stale["files"]} == {"stale"}
    assert any("differs from this compile" in w for w in stale["warnings"])
    assert snapshot(out) == before  # explain wrote nothing


def test_two_channels_with_different_content_are_warned_about(project):
    out = project / "output"
    assert run(project, "compile", "-q").exit_code == 0
    edited = out / "devices" / "C02XK1AAJGH5" / "managed-settings.json"
    data = json.loads(edited.read_text())
    data["env"]["OTEL_LOGS_EXPORTER"] = "none"
    edited.chmod(0o600)
    edited.write_text(json.dumps(data))
    found = run(project, "explain", "C02XK1AAJGH5")
    assert found.exit_code == 0
    assert "output folder: stale" in found.stdout
    assert ("warning: the profile and managed-settings.json would deliver different settings "
            "(env.OTEL_LOGS_EXPORTER)") in found.stdout


def test_a_mac_is_told_the_profile_is_read_first(project):
    found = explain_json(project, "C02XK1AAJGH5")
    files = {f["name"]: f for f in found["files"]}
    assert files["managed-settings.json"]["install_path"] == (
        "/Library/Application Support/ClaudeCode/managed-settings.json")
    assert files["claude-code.mobileconfig"]["install_path"] is None
    assert [c["name"] for c in found["channels"]] == ["Jamf Pro", "S3"]
    assert found["reads_first"].startswith("the profile (plist) outranks managed-settings.json")
    assert found["files"][0]["output"] == "not compared"  # no output folder yet


def test_a_windows_pc(project):
    (project / "profiles" / "policy.yaml").write_text(policy_text("\nintune: {}\n"))
    found = explain_json(project, "WIN-5CG1230ABC")
    assert found["platform"] == "windows"
    [file] = found["files"]
    assert file["install_path"] == registry.SETTINGS_JSON.install_path(registry.Platform.WINDOWS)
    assert file["install_path"] == "C:\\Program Files\\ClaudeCode\\managed-settings.json"
    assert [(c["name"], c["source"]) for c in found["channels"]] == [("Intune", "file"), ("S3", "file")]
    assert "HKLM" in found["reads_first"]
    assert [layer["layer"] for layer in found["layers"]] == ["base"]
    assert all(s["key"] != "env.OTEL_METRIC_EXPORT_INTERVAL" for s in found["settings"])  # macOS only


def test_a_linux_machine(project):
    found = explain_json(project, "LNX-0001")
    [file] = found["files"]
    assert file["install_path"] == "/etc/claude-code/managed-settings.json"
    assert [c["name"] for c in found["channels"]] == ["S3"]
    # A team override applies on every platform; the macOS layer does not.
    interval = setting(found, "env.OTEL_METRIC_EXPORT_INTERVAL")
    assert (interval["layer"], interval["overridden"]) == ("team", [])


def test_a_pseudonymised_email_is_shown_as_its_keyed_pseudonym(project, monkeypatch):
    monkeypatch.setenv("MDMGEN_PSEUDONYM_KEY", "k" * 32)
    (project / "profiles" / "policy.yaml").write_text(policy_text("\npseudonymise_email: true\n"))
    found = run(project, "explain", "C02XK1AAJGH5", "--json")
    text = run(project, "explain", "C02XK1AAJGH5")
    assert found.exit_code == text.exit_code == 0
    for output in (found.stdout + found.stderr, text.stdout + text.stderr):
        assert "alice.nguyen" not in output
        assert TOKEN not in output
    data = json.loads(found.stdout)
    assert data["pseudonymised"] is True and secrets.PSEUDONYM_RE.match(data["user_email"])
    email = next(a for a in setting(data, "env.OTEL_RESOURCE_ATTRIBUTES")["attributes"] if a["key"] == "user_email")
    assert email["value"] == data["user_email"]
    assert "keyed pseudonym" in email["uses"][0]["note"]
    assert "(keyed pseudonym)" in text.stdout.splitlines()[0]


def test_the_readme_examples_work_on_the_shipped_project(tmp_path):
    """The explain page's example block (docs/commands/explain.md), pasted (each line run through
    the real entry point) into the shipped project as a new user has it, with no secret set: the shipped
    policy needs none."""
    readme = (ROOT / "docs" / "commands" / "explain.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- readme-test: manual: run against the shipped project by tests/test_explain.py -->\n"
                      r"```sh\n(.*?)```", readme, re.S)
    assert block, "the explain page's example is gone"
    shutil.copytree(ROOT / "inventory", tmp_path / "inventory")
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    commands = [shlex.split(line, comments=True) for line in block.group(1).splitlines()]
    assert len(commands) == 2 and all(words[:2] == ["mdmgen", "explain"] for words in commands)
    text, as_json = (run(tmp_path, *words[1:]) for words in commands)
    assert text.exit_code == as_json.exit_code == 0
    assert "set by base at profiles/policy.yaml:26 from the template {{ otlp_endpoint }}" in text.stdout
    assert json.loads(as_json.stdout)["serial"] == "C02XK1AAJGH5"


def test_the_readme_samples_are_what_explain_prints(project):
    readme = (ROOT / "docs" / "commands" / "explain.md").read_text(encoding="utf-8")
    sample = re.search(r"\n```\n(  env\.OTEL_EXPORTER_OTLP_ENDPOINT.*?)```", readme, re.S).group(1)
    result = run(project, "explain", "C02XK1AAJGH5")
    fingerprinted = re.compile(r"fp:[0-9a-f]{8}")
    printed = fingerprinted.sub("fp:…", result.stdout)
    for line in sample.splitlines():
        assert fingerprinted.sub("fp:…", line) in printed.splitlines(), line
    unknown = run(project, "explain", "C02XK1AAJGH")
    assert unknown.stderr.strip() in readme


def test_a_secret_in_an_endpoints_path_hides_the_endpoint(project):
    text = policy_text().replace('"{{ otlp_endpoint }}"', "'{{ otlp_endpoint }}/v1/{{ secret(\"OTEL_TOKEN\") }}'")
    (project / "profiles" / "policy.yaml").write_text(text)
    found = explain_json(project, "LNX-0001")
    endpoint = setting(found, "env.OTEL_EXPORTER_OTLP_ENDPOINT")
    assert endpoint["hidden"] is True and endpoint["value"] is None
    assert [s["label"] for s in endpoint["secrets"]] == ["env:OTEL_TOKEN"]
    assert endpoint["uses"][0]["name"] == "otlp_endpoint"  # the names it used are still shown
    plain = run(project, "explain", "LNX-0001")
    assert plain.exit_code == 0 and TOKEN not in plain.stdout + plain.stderr
