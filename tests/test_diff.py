"""`mdmgen diff`: what auditors see between two output folders."""

import hashlib
import json
import shutil

from .conftest import run, write_inventory

HEADER = "serial_number,platform,user_email,team\n"
ROWS = ["MAC1,macos,ann@example.com,Ops", "LNX1,linux,bob@example.com,Ops", "WIN1,windows,cat@example.com,Sec"]
TOKEN_OLD = "old-secret-9f8e7d"
TOKEN_NEW = "new-secret-1a2b3c"


def compile_to(workdir, name, rows=ROWS, *args):
    write_inventory(workdir, HEADER + "\n".join(rows) + "\n")
    result = run(workdir, "compile", "--out", name, *args)
    assert result.exit_code == 0, result.stderr
    return workdir / name


def set_headers(workdir, token, monkeypatch):
    """The collector token as IT gives it: in the environment, named by the policy."""
    monkeypatch.setenv("DIFF_TOKEN", token)
    policy = workdir / "profiles" / "policy.yaml"
    text = policy.read_text()
    if "OTEL_EXPORTER_OTLP_HEADERS" in text:
        text = "\n".join(line for line in text.splitlines() if "OTEL_EXPORTER_OTLP_HEADERS" not in line) + "\n"
    policy.write_text(text.replace('    CLAUDE_CODE_ENABLE_TELEMETRY: "1"',
                                   '    CLAUDE_CODE_ENABLE_TELEMETRY: "1"\n'
                                   '    OTEL_EXPORTER_OTLP_HEADERS: '
                                   '"Authorization=Bearer {{ secret(\'DIFF_TOKEN\') }}"'))


def test_same_folder_twice_prints_nothing_and_exits_0(workdir):
    out = compile_to(workdir, "a")
    result = run(workdir, "diff", str(out), str(out))
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""
    copy = workdir / "copy"
    shutil.copytree(out, copy)
    assert run(workdir, "diff", str(out), str(copy)).exit_code == 0


def test_one_changed_row_names_exactly_that_device_and_key(workdir):
    old = compile_to(workdir, "old")
    new = compile_to(workdir, "new", [ROWS[0], ROWS[1].replace("Ops", "Platform Eng"), ROWS[2]])
    result = run(workdir, "diff", str(old), str(new))
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "~ LNX1",
        '    device team: "Ops" -> "Platform Eng"',
        '    env.OTEL_RESOURCE_ATTRIBUTES: "user_email=bob%40example.com,team=Ops" -> '
        '"user_email=bob%40example.com,team=Platform%20Eng"',
        "0 added, 0 removed, 1 changed.",
    ]


def test_added_removed_and_platform_moves(workdir):
    old = compile_to(workdir, "old")
    new = compile_to(workdir, "new", [ROWS[0].replace("macos", "linux"), ROWS[1],
                                      "WSL9,wsl,dan@example.com,New Team"])
    result = run(workdir, "diff", "--json", str(old), str(new))
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert [(d["serial"], d["platform"], d["team"]) for d in data["added"]] == [("WSL9", "wsl", "New Team")]
    assert [d["serial"] for d in data["removed"]] == ["WIN1"]
    [mac] = data["changed"]
    changes = {(c["where"], c["key"]): c for c in mac["changes"]}
    assert changes[("device", "platform")]["old"] == "macos" and changes[("device", "platform")]["new"] == "linux"
    profile = changes[("profile", "claude-code.mobileconfig")]
    assert profile["old_present"] is True and profile["new_present"] is False


def test_profile_settings_and_metadata_are_compared_decoded(workdir):
    old = compile_to(workdir, "old")
    policy = workdir / "profiles" / "policy.yaml"
    policy.write_text(policy.read_text().replace("display_name: Claude Code managed settings",
                                                 "display_name: Claude Code (telemetry)"))
    new = compile_to(workdir, "new", ROWS, "--var", "otlp_endpoint=https://collector.example.com:4317")
    lines = run(workdir, "diff", str(old), str(new)).stdout.splitlines()
    mac = lines[lines.index("~ MAC1") + 1: lines.index("~ WIN1") if "~ WIN1" in lines else None]
    assert ('    env.OTEL_EXPORTER_OTLP_ENDPOINT: "https://otel.company.com:4317" -> '
            '"https://collector.example.com:4317"') in mac
    assert '    profile PayloadDisplayName: "Claude Code managed settings" -> "Claude Code (telemetry)"' in mac
    assert '    profile payload.PayloadDisplayName: "Claude Code managed settings" -> ' \
           '"Claude Code (telemetry)"' in mac
    assert not any("PayloadUUID" in line for line in mac)  # UUIDs follow identifiers, not names


def test_secrets_are_never_printed_only_fingerprints(workdir, monkeypatch):
    set_headers(workdir, TOKEN_OLD, monkeypatch)
    old = compile_to(workdir, "old")
    set_headers(workdir, TOKEN_NEW, monkeypatch)
    new = compile_to(workdir, "new")
    for args in ([], ["--json"]):
        result = run(workdir, "diff", *args, str(old), str(new))
        assert result.exit_code == 1
        assert TOKEN_OLD not in result.stdout and TOKEN_NEW not in result.stdout
        assert "OTEL_EXPORTER_OTLP_HEADERS" in result.stdout
    text = run(workdir, "diff", str(old), str(new)).stdout
    old_fp = json.loads((old / "manifest.json").read_text())["secrets"]["env:DIFF_TOKEN"]["fingerprint"][:8]
    new_fp = json.loads((new / "manifest.json").read_text())["secrets"]["env:DIFF_TOKEN"]["fingerprint"][:8]
    assert text.splitlines() == [
        f"~ env.OTEL_EXPORTER_OTLP_HEADERS: secret DIFF_TOKEN changed (fingerprint {old_fp} -> {new_fp}) on 3 "
        "device(s) that embed it; nothing else changed with it unless listed above",
        "0 added, 0 removed, 0 changed beyond the rotated secrets."]
    for token in (TOKEN_OLD, TOKEN_NEW):  # no unkeyed hash of the value either (a short token is guessed)
        assert hashlib.sha256(f"Authorization=Bearer {token}".encode()).hexdigest()[:8] not in text


def test_policy_marked_secrets_are_hidden_too(workdir):
    policy = workdir / "profiles" / "policy.yaml"
    policy.write_text(policy.read_text().replace("allow_content_logging: false",
                                                 "allow_content_logging: false\nsecret_env: [ACME_TENANT_KEY]")
                      .replace('    CLAUDE_CODE_ENABLE_TELEMETRY: "1"',
                               '    CLAUDE_CODE_ENABLE_TELEMETRY: "1"\n    ACME_TENANT_KEY: "{{ tenant }}"')
                      .replace("variables:\n", "variables:\n  tenant: tenant-key-one\n"))
    old = compile_to(workdir, "old")
    new = compile_to(workdir, "new", ROWS, "--var", "tenant=tenant-key-two")
    result = run(workdir, "diff", str(old), str(new))
    assert result.exit_code == 1 and "env.ACME_TENANT_KEY: changed (secret" in result.stdout
    assert "tenant-key" not in result.stdout


def test_trouble_exits_2(workdir):
    out = compile_to(workdir, "a")
    result = run(workdir, "diff", str(out), str(workdir / "missing"))
    assert result.exit_code == 2 and "no such folder" in result.stderr
    (workdir / "empty").mkdir()
    assert run(workdir, "diff", str(out), str(workdir / "empty")).exit_code == 2
    broken = workdir / "broken"
    shutil.copytree(out, broken)
    (broken / "devices" / "LNX1" / "managed-settings.json").write_text("{not json")
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["devices"]["LNX1"]["files"]["managed-settings.json"]["sha256"] = "0" * 64
    (broken / "manifest.json").write_text(json.dumps(manifest))
    result = run(workdir, "diff", str(out), str(broken))
    assert result.exit_code == 2 and "not valid JSON" in result.stderr and "Traceback" not in result.stderr


def test_old_manifests_without_a_fleet_section_and_unknown_fleet_files_still_read(workdir):
    old = compile_to(workdir, "old")
    assert "fleet" not in json.loads((old / "manifest.json").read_text())  # as older versions wrote it
    new = workdir / "new"
    shutil.copytree(old, new)
    (new / "collector").mkdir()
    (new / "collector" / "otel.yaml").write_text("receivers: {}\n")
    data = (new / "collector" / "otel.yaml").read_bytes()
    manifest = json.loads((new / "manifest.json").read_text())
    manifest["fleet"] = {"collector/otel.yaml": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}}
    (new / "manifest.json").write_text(json.dumps(manifest))  # as a later version might write it
    result = run(workdir, "diff", str(old), str(new))
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "~ fleet collector/otel.yaml",
        '    file collector/otel.yaml: (absent) -> "present"',
        "0 added, 0 removed, 0 changed. 1 fleet file(s) changed.",
    ]
