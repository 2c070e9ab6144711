"""Secrets by reference: ``{{ secret("NAME") }}`` and ``{{ secret_file("PATH") }}`` (issue 11).

The value comes from the environment or a file at compile time, goes only into the device files
that embed it (mode 0600), and everything else carries a keyed fingerprint at most."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
import yaml

from mdmgen import secrets

from .conftest import HEADER, run, write_inventory

TOKEN = "tok-7Hq2xLm9Vb4Kc1Zp"  # a test fixture, never a real credential
OTHER = "tok-Rt5Yw8Ne3Ud6Sa0Q"
ROWS = ("LNX1,linux,ann@example.com,Ops\nMAC1,macos,bob@example.com,Ops\n"
        "WSL1,wsl,cat@example.com,Sales\nWIN1,windows,dan@example.com,Sales\n")
HEADERS = 'Authorization=Bearer {{ secret("OTEL_TOKEN") }}'


def write_policy(workdir: Path, *, base_env: dict | None = None, ops_env: dict | None = None,
                 settings: dict | None = None, attributes: dict | None = None, protocol: str = "http/protobuf",
                 variables: dict | None = None) -> Path:
    """The shipped policy, with the collector token only on the Ops team (so Sales must not get it)."""
    path = workdir / "profiles" / "policy.yaml"
    policy = yaml.safe_load(path.read_text(encoding="utf-8"))
    policy["variables"]["otlp_protocol"] = protocol
    policy["variables"].update(variables or {})
    policy["settings"]["env"].update(base_env or {})
    policy["settings"].update(settings or {})
    policy["resource_attributes"].update(attributes or {})
    policy["teams"] = {"Ops": {"settings": {"env": ops_env if ops_env is not None
                                            else {"OTEL_EXPORTER_OTLP_HEADERS": HEADERS}}}}
    path.write_text(yaml.safe_dump(policy, sort_keys=False), encoding="utf-8")
    return path


def line_of(path: Path, text: str) -> int:
    """The 1-based line of the first line of ``path`` holding ``text``."""
    return next(n for n, line in enumerate(path.read_text().splitlines(), start=1) if text in line)


@pytest.fixture
def fleet(workdir: Path, monkeypatch) -> Path:
    write_inventory(workdir, HEADER + ROWS)
    write_policy(workdir)
    monkeypatch.setenv("OTEL_TOKEN", TOKEN)
    return workdir


def settings_of(out: Path, serial: str) -> dict:
    return json.loads((out / "devices" / serial / "managed-settings.json").read_text())


# --- the interface other tooling calls --------------------------------------------------------------


def test_references_finds_constant_calls_in_order_without_repeats():
    source = ('A={{ secret("OTEL_TOKEN") }},B={{ secret_file("tokens/b.txt") }},'
              'C={{ secret("OTEL_TOKEN") | trim }}')
    assert secrets.references(source) == [secrets.SecretRef("env", "OTEL_TOKEN"),
                                           secrets.SecretRef("file", "tokens/b.txt")]
    assert secrets.references("no template here") == []


@pytest.mark.parametrize("source", ['{{ secret(name) }}', '{{ secret("A" ~ team) }}', '{{ secret("A", "B") }}',
                                    '{{ secret() }}', '{{ secret(name="A") }}', '{{ secret }}',
                                    '{% set f = secret %}{{ f("A") }}', '{{ secret("not-a-name") }}'])
def test_references_refuses_what_cannot_be_known_before_rendering(source):
    with pytest.raises(secrets.SecretReferenceError):
        secrets.references(source)


# --- resolution errors: file:line, naming the secret, exit 1, nothing written ----------------------------


def test_missing_variable_is_a_file_line_error_naming_it(fleet, monkeypatch):
    monkeypatch.delenv("OTEL_TOKEN")
    result = run(fleet, "compile")
    line = line_of(fleet / "profiles" / "policy.yaml", "OTEL_EXPORTER_OTLP_HEADERS")
    assert result.exit_code == 1
    assert (f"profiles/policy.yaml:{line}: teams.Ops.settings.env.OTEL_EXPORTER_OTLP_HEADERS: "
            'secret("OTEL_TOKEN"): environment variable OTEL_TOKEN is not set') in result.stderr.splitlines()
    assert not (fleet / "output").exists()


def test_missing_or_unusable_file_is_a_file_line_error(fleet):
    write_policy(fleet, ops_env={"OTEL_EXPORTER_OTLP_HEADERS": 'Authorization=Bearer {{ secret_file("otel.token") }}'})
    result = run(fleet, "validate")
    assert result.exit_code == 1
    assert "teams.Ops.settings.env.OTEL_EXPORTER_OTLP_HEADERS: secret_file(\"otel.token\"): no such file: " \
           "profiles/otel.token" in result.stderr
    (fleet / "profiles" / "otel.token").mkdir()
    result = run(fleet, "validate")
    assert result.exit_code == 1 and "profiles/otel.token is not a regular file" in result.stderr


def test_secret_file_is_relative_to_the_policy_and_loses_one_newline(fleet):
    write_policy(fleet, ops_env={"OTEL_EXPORTER_OTLP_HEADERS": 'Authorization=Bearer {{ secret_file("otel.token") }}'})
    for written in (TOKEN + "\n", TOKEN + "\r\n", TOKEN):
        (fleet / "profiles" / "otel.token").write_text(written, newline="")
        result = run(fleet, "compile")
        assert result.exit_code == 0, result.stderr
        env = settings_of(fleet / "output", "LNX1")["env"]
        assert env["OTEL_EXPORTER_OTLP_HEADERS"] == f"Authorization=Bearer {TOKEN}"


@pytest.mark.parametrize(("value", "reason"), [("", "is empty"), ("short", "at least 8"),
                                                (TOKEN + "\nX-Evil=1", "control character")])
def test_unusable_values_are_refused_without_showing_them(fleet, monkeypatch, value, reason):
    monkeypatch.setenv("OTEL_TOKEN", value)
    result = run(fleet, "compile", "--json")
    assert result.exit_code == 1 and reason in result.stderr
    if value:
        assert value not in result.stderr and value not in result.stdout


def test_non_constant_argument_is_one_file_line_error_before_rendering(fleet):
    write_policy(fleet, ops_env={"OTEL_EXPORTER_OTLP_HEADERS": 'Authorization=Bearer {{ secret(serial) }}'})
    result = run(fleet, "compile")
    line = line_of(fleet / "profiles" / "policy.yaml", "OTEL_EXPORTER_OTLP_HEADERS")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        f"profiles/policy.yaml:{line}: teams.Ops.settings.env.OTEL_EXPORTER_OTLP_HEADERS: secret() takes one "
        'constant string, e.g. secret("OTEL_TOKEN"), so the secret is known before rendering')
    assert "(device" not in result.stderr  # once for the policy, not once per device


def test_a_secret_in_a_resource_attribute_is_refused(fleet):
    write_policy(fleet, attributes={"tenant": '{{ secret("OTEL_TOKEN") }}'})
    result = run(fleet, "validate")
    assert result.exit_code == 1 and "resource_attributes.tenant: a secret in a resource attribute" in result.stderr


# --- credentials in headers must come from a secret ------------------------------------------------------


@pytest.mark.parametrize("header", [f"Authorization=Bearer {TOKEN}", f"x-api-key={TOKEN}",
                                    f"X-Scope-OrgID=acme,x-honeycomb-team={TOKEN}", f"X-Anything=Basic {TOKEN}"])
def test_a_literal_credential_in_a_header_is_a_file_line_error(fleet, header):
    write_policy(fleet, ops_env={"OTEL_EXPORTER_OTLP_LOGS_HEADERS": header})
    result = run(fleet, "compile")
    line = line_of(fleet / "profiles" / "policy.yaml", "OTEL_EXPORTER_OTLP_LOGS_HEADERS")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"profiles/policy.yaml:{line}: teams.Ops.settings.env."
                                    "OTEL_EXPORTER_OTLP_LOGS_HEADERS: header ")
    assert 'write it as {{ secret("NAME") }}' in result.stderr and TOKEN not in result.stderr


def test_a_credential_from_a_variable_or_var_is_refused_too(fleet):
    write_policy(fleet, ops_env={"OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer {{ token }}"},
                 variables={"token": "set-on-the-command-line"})
    result = run(fleet, "compile", "--var", f"token={TOKEN}")
    assert result.exit_code == 1 and "which shows in ps" in result.stderr and TOKEN not in result.stderr
    # A whole header from a variable is caught once rendered.
    write_policy(fleet, ops_env={"OTEL_EXPORTER_OTLP_HEADERS": "{{ headers }}"}, variables={"headers": "X=1"})
    result = run(fleet, "compile", "--var", f"headers=Authorization=Bearer {TOKEN}")
    assert result.exit_code == 1 and "header 'Authorization' carries a credential" in result.stderr
    assert TOKEN not in result.stderr


def test_headers_without_credentials_may_be_literal(fleet):
    write_policy(fleet, ops_env={"OTEL_EXPORTER_OTLP_HEADERS": "X-Scope-OrgID=acme," + HEADERS})
    result = run(fleet, "compile")
    assert result.exit_code == 0, result.stderr
    assert settings_of(fleet / "output", "LNX1")["env"]["OTEL_EXPORTER_OTLP_HEADERS"] == \
        f"X-Scope-OrgID=acme,Authorization=Bearer {TOKEN}"


# --- otelHeadersHelper instead of a token in the file ----------------------------------------------------


def test_otel_headers_helper_replaces_the_header(fleet, monkeypatch):
    monkeypatch.delenv("OTEL_TOKEN")  # no secret needed at all
    write_policy(fleet, ops_env={}, settings={"otelHeadersHelper": "/usr/local/bin/otel-headers"})
    result = run(fleet, "compile")
    assert result.exit_code == 0, result.stderr
    settings = settings_of(fleet / "output", "LNX1")
    assert settings["otelHeadersHelper"] == "/usr/local/bin/otel-headers"
    assert "OTEL_EXPORTER_OTLP_HEADERS" not in settings["env"]
    mode = stat.S_IMODE(os.stat(fleet / "output" / "devices" / "LNX1" / "managed-settings.json").st_mode)
    assert mode & 0o044  # nothing secret in it: the usual mode


def test_otel_headers_helper_with_grpc_is_refused(fleet):
    write_policy(fleet, ops_env={}, settings={"otelHeadersHelper": "/usr/local/bin/otel-headers"}, protocol="grpc")
    result = run(fleet, "validate")
    assert result.exit_code == 1
    assert "otelHeadersHelper: works with the http/protobuf and http/json protocols only" in result.stderr


# --- where the value goes, and where it never does --------------------------------------------------------


def test_only_the_devices_that_embed_it_carry_it_with_mode_0600(fleet):
    result = run(fleet, "compile", "--json")
    assert result.exit_code == 0, result.stderr
    out = fleet / "output"
    for serial, names in {"LNX1": ["managed-settings.json"],
                          "MAC1": ["managed-settings.json", "claude-code.mobileconfig"]}.items():
        for name in names:
            path = out / "devices" / serial / name
            assert TOKEN in path.read_text()
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    for serial in ("WSL1", "WIN1"):
        path = out / "devices" / serial / "managed-settings.json"
        assert TOKEN not in path.read_text() and stat.S_IMODE(os.stat(path).st_mode) & 0o044
    manifest = json.loads((out / "manifest.json").read_text())
    assert TOKEN not in (out / "manifest.json").read_text() and TOKEN not in result.stdout
    assert manifest["devices"]["LNX1"]["secrets"] == ["env:OTEL_TOKEN"]
    assert "secrets" not in manifest["devices"]["WSL1"]
    assert manifest["secrets"] == {"env:OTEL_TOKEN": {
        "fingerprint": secrets.fingerprint(secrets.SecretRef("env", "OTEL_TOKEN"), TOKEN),
        "keys": ["env.OTEL_EXPORTER_OTLP_HEADERS"]}}
    # An incremental run keeps the files (same inode) and their mode.
    inode = os.stat(out / "devices" / "LNX1" / "managed-settings.json").st_ino
    result = run(fleet, "compile", "--json")
    assert json.loads(result.stdout)["rendered"] == 0
    again = os.stat(out / "devices" / "LNX1" / "managed-settings.json")
    assert (again.st_ino, stat.S_IMODE(again.st_mode)) == (inode, 0o600)


def test_the_fingerprint_is_keyed_and_slow_not_a_plain_hash():
    ref = secrets.SecretRef("env", "OTEL_TOKEN")
    fingerprint = secrets.fingerprint(ref, TOKEN)
    assert fingerprint == secrets.fingerprint(ref, TOKEN) and len(fingerprint) == secrets.FINGERPRINT_CHARS
    assert fingerprint != secrets.fingerprint(ref, OTHER)
    assert fingerprint != secrets.fingerprint(secrets.SecretRef("env", "OTHER_NAME"), TOKEN)  # salted by name
    import hashlib
    for plain in (hashlib.sha256(TOKEN.encode()).hexdigest(), hashlib.sha256(f"Bearer {TOKEN}".encode()).hexdigest()):
        assert fingerprint not in plain


def test_rotation_re_renders_exactly_the_devices_that_embed_it(fleet, monkeypatch):
    assert run(fleet, "compile").exit_code == 0
    manifest = json.loads((fleet / "output" / "manifest.json").read_text())
    monkeypatch.setenv("OTEL_TOKEN", OTHER)
    result = run(fleet, "compile", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["rendered"] == 2 and sorted(report["changes"]["changed"]) == ["LNX1", "MAC1"]
    after = json.loads((fleet / "output" / "manifest.json").read_text())
    assert after["secrets"]["env:OTEL_TOKEN"]["fingerprint"] != manifest["secrets"]["env:OTEL_TOKEN"]["fingerprint"]
    assert OTHER in settings_of(fleet / "output", "LNX1")["env"]["OTEL_EXPORTER_OTLP_HEADERS"]
    # The kept generation was rebuilt from the new tree: the old token is nowhere on disk.
    for path in fleet.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_diff_folds_a_rotation_into_one_line_and_lists_other_changes(fleet, monkeypatch):
    assert run(fleet, "compile", "--out", "old").exit_code == 0
    monkeypatch.setenv("OTEL_TOKEN", OTHER)
    assert run(fleet, "compile", "--out", "new").exit_code == 0
    old_fp = secrets.fingerprint(secrets.SecretRef("env", "OTEL_TOKEN"), TOKEN)[:8]
    new_fp = secrets.fingerprint(secrets.SecretRef("env", "OTEL_TOKEN"), OTHER)[:8]
    result = run(fleet, "diff", "old", "new")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"~ env.OTEL_EXPORTER_OTLP_HEADERS: secret OTEL_TOKEN changed (fingerprint {old_fp} -> {new_fp}) on 2 "
        "device(s) that embed it; nothing else changed with it unless listed above",
        "0 added, 0 removed, 0 changed beyond the rotated secrets."]
    data = json.loads(run(fleet, "diff", "--json", "old", "new").stdout)
    assert data["secrets_changed"] == [{"secret": "env:OTEL_TOKEN", "keys": ["env.OTEL_EXPORTER_OTLP_HEADERS"],
                                        "old": old_fp, "new": new_fp, "devices": 2}]
    # A device that also changed otherwise is listed, its header by fingerprint only.
    write_inventory(fleet, HEADER + ROWS.replace("ann@example.com", "ann.b@example.com"))
    monkeypatch.setenv("OTEL_TOKEN", TOKEN)
    assert run(fleet, "compile", "--out", "third").exit_code == 0
    result = run(fleet, "diff", "new", "third")
    lines = result.stdout.splitlines()
    assert lines[0] == "~ LNX1" and \
        f"    env.OTEL_EXPORTER_OTLP_HEADERS: secret OTEL_TOKEN changed (fingerprint {new_fp} -> {old_fp})" in lines
    assert any(line.startswith("~ env.OTEL_EXPORTER_OTLP_HEADERS: secret OTEL_TOKEN changed") and "on 1 device" in line
               for line in lines)
    for text in (result.stdout, run(fleet, "diff", "--json", "new", "third").stdout):
        assert TOKEN not in text and OTHER not in text


# --- error messages never repeat a value -------------------------------------------------------------------


@pytest.mark.parametrize("template", ['{{ {}[secret("OTEL_TOKEN")] }}', '{{ {}[secret("OTEL_TOKEN") | urlencode] }}',
                                      '{{ {}[secret("OTEL_TOKEN") | tojson] }}', '{{ range(secret("OTEL_TOKEN")) }}',
                                      '{{ secret("OTEL_TOKEN") | int }}'])
def test_template_errors_never_repeat_the_value(fleet, monkeypatch, template):
    monkeypatch.setenv("OTEL_TOKEN", 'tok-"quoted" and spaced/€')
    write_policy(fleet, ops_env={"OTEL_EXPORTER_OTLP_HEADERS": HEADERS, "ACME_EXTRA": template})
    result = run(fleet, "compile", "--json")
    for text in (result.stderr, result.stdout):
        assert "quoted" not in text and "spaced" not in text  # in no escaping at all, not even in part
    if result.exit_code == 0:  # `| int` renders 0 rather than failing
        assert settings_of(fleet / "output", "LNX1")["env"]["ACME_EXTRA"] == "0"
    else:
        assert "teams.Ops.settings.env.ACME_EXTRA: template failed (" in result.stderr
        assert "the message is not shown because this template reads a secret" in result.stderr


def test_redaction_covers_every_problem_message(fleet, monkeypatch):
    """The second line of defence: a value that reaches a message some other way is redacted in
    every form (here an inventory column that happens to hold it, echoed by a template error)."""
    write_inventory(fleet, "serial_number,platform,user_email,team,cost_center\n"
                    + "".join(f"{row},{TOKEN}\n" for row in ROWS.splitlines()))
    write_policy(fleet, base_env={"ACME_CC": "{{ {}[cost_center] }}"})
    result = run(fleet, "compile", "--json")
    assert result.exit_code == 1 and "settings.env.ACME_CC" in result.stderr
    assert TOKEN not in result.stderr and TOKEN not in result.stdout and "[redacted]" in result.stderr


# --- the documentation's example (docs/secrets.md) -----------------------------------------------------------


def test_the_readme_example_compiles_with_the_token_from_the_environment(tmp_path):
    """The secrets page's "Trying it" block (docs/secrets.md), pasted into a copy of the project
    (with this venv's mdmgen)."""
    from .test_readme import ROOT, clean_env, paste, shell_blocks

    (block,) = [body for marker, body in shell_blocks() if marker and "tests/test_secrets.py" in marker]
    for folder in ("inventory", "profiles"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    result = paste(block, tmp_path, clean_env())
    assert result.returncode == 0, result.stdout
    assert "600 output-token/devices/LNX-0001/managed-settings.json" in result.stdout.splitlines()
    assert result.stdout.splitlines()[-1] == "0"
    settings = json.loads((tmp_path / "output-token/devices/LNX-0001/managed-settings.json").read_text())
    assert settings["env"]["OTEL_EXPORTER_OTLP_HEADERS"] == "Authorization=Bearer tok-example-0123456789"


def test_a_run_killed_before_the_generation_was_rebuilt_is_finished_by_the_next(fleet, monkeypatch):
    """Killed between the swap and rebuilding the kept generation after a rotation: the next run,
    with nothing to compile, still removes the old token from the kept generation."""
    assert run(fleet, "compile").exit_code == 0
    monkeypatch.setenv("OTEL_TOKEN", OTHER)
    assert run(fleet, "compile").exit_code == 0
    prev = fleet / ".output.mdmgen-prev"
    shutil.rmtree(prev)
    shutil.copytree(fleet / "output", prev, copy_function=shutil.copy2)
    old_manifest = (prev / "manifest.json").read_text().replace(
        secrets.fingerprint(secrets.SecretRef("env", "OTEL_TOKEN"), OTHER),
        secrets.fingerprint(secrets.SecretRef("env", "OTEL_TOKEN"), TOKEN))
    (prev / "manifest.json").write_text(old_manifest)  # as the tree before the rotation said
    result = run(fleet, "compile", "--json")
    assert json.loads(result.stdout)["changes"]["written"] is False
    # Rebuilt from the current tree: its manifest says what the current one says, and its files are
    # the current tree's (hard links), not the copies made above.
    assert (prev / "manifest.json").read_bytes() == (fleet / "output" / "manifest.json").read_bytes()
    relpath = "devices/LNX1/managed-settings.json"
    assert (prev / relpath).samefile(fleet / "output" / relpath)


def test_a_column_called_secret_cannot_hide_the_function(fleet):
    write_inventory(fleet, "serial_number,platform,user_email,team,secret\n"
                    + "".join(f"{row},not-the-token\n" for row in ROWS.splitlines()))
    result = run(fleet, "compile")
    assert result.exit_code == 0, result.stderr
    assert settings_of(fleet / "output", "LNX1")["env"]["OTEL_EXPORTER_OTLP_HEADERS"] == f"Authorization=Bearer {TOKEN}"


def test_a_fleet_file_that_would_hold_a_secret_value_is_refused(fleet):
    """The collector's files must name a secret (``${env:NAME}``), never carry it: here a fleet-level
    kind that lists the teams meets a team named like the token."""
    from mdmgen.emit import registry

    def emit(given: registry.FleetInput) -> bytes:
        return json.dumps(sorted({d.team for d in given.devices})).encode()

    kind = registry.ArtifactKind(name="collector/teams.json", content_type="application/json",
                                 read_semantic=lambda data: {"teams": json.loads(data)}, emit=emit,
                                 label="teams", fleet=True, sections={"teams": "teams"})
    write_inventory(fleet, HEADER + ROWS + f"LNX9,linux,eve@example.com,{TOKEN}\n")
    with registry.registered(kind):
        result = run(fleet, "compile", "--json")
    assert result.exit_code == 1
    assert "collector/teams.json: this fleet file would hold a secret value" in result.stderr
    assert TOKEN not in result.stderr and TOKEN not in result.stdout and not (fleet / "output").exists()


def test_the_readme_sample_error_is_what_the_example_policy_prints(tmp_path, monkeypatch):
    from .test_readme import ROOT

    monkeypatch.delenv("OTEL_TOKEN", raising=False)
    for folder in ("inventory", "profiles"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    result = run(tmp_path, "validate", "--profiles", "profiles/examples/otel-token.yaml")
    assert result.exit_code == 1
    readme = (ROOT / "docs" / "secrets.md").read_text()
    assert f"`{result.stderr.splitlines()[0]}`" in readme
