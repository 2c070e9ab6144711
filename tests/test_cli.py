"""The command line as IT uses it: compile, validate, schema, exit codes, untouched output."""

import hashlib
import json
import os
import plistlib
import subprocess
import sys
from pathlib import Path

import pytest

from mdmgen import __version__, attributes

from .conftest import HEADER, ROOT, run, snapshot, write_inventory

HOSTILE = (
    "\ufeffSerial Number,OS,Email Address,Department,Cost Center\r\n"
    'c02hostile1,macOS,Ann+CC@Example.COM,"R&D, Berlin",CC<1>\r\n'
    'LNX-1,Linux,"o\'brien@example.com",sales=emea,"a ""quoted"" value"\r\n'
    "WIN-1,Win32,zoë@exämple.com,Zürich & Genève <HQ>,\r\n"
    "WSL-1,wsl,bob@example.com,\"team; with \\\\ backslash\",x\r\n"
    "\r\n\r\n"
)


def compiled(workdir: Path, serial: str) -> dict:
    return json.loads((workdir / "output" / "devices" / serial / "managed-settings.json")
                      .read_text(encoding="utf-8"))


def test_shipped_example_compiles(tmp_path):
    out = tmp_path / "out"
    result = run(ROOT, "compile", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    platforms = {d["platform"] for d in manifest["devices"].values()}
    assert platforms == {"macos", "linux", "windows", "wsl"}
    assert "devices" in result.stderr and "excluded by status" in result.stderr


def test_hostile_but_valid_inventory(workdir):
    write_inventory(workdir, HOSTILE)
    result = run(workdir, "compile")
    assert result.exit_code == 0, result.stderr
    expected = {
        "C02HOSTILE1": ("Ann+CC@example.com", "R&D, Berlin"),
        "LNX-1": ("o'brien@example.com", "sales=emea"),
        "WIN-1": ("zoë@exämple.com", "Zürich & Genève <HQ>"),
        "WSL-1": ("bob@example.com", "team; with \\\\ backslash"),
    }
    for serial, (email, team) in expected.items():
        settings = compiled(workdir, serial)
        assert attributes.decode(settings["env"]["OTEL_RESOURCE_ATTRIBUTES"]) == {
            "user_email": email, "team": team}
    profile = plistlib.loads(
        (workdir / "output/devices/C02HOSTILE1/claude-code.mobileconfig").read_bytes())
    settings = profile["PayloadContent"][0]["PayloadContent"]["com.anthropic.claudecode"][
        "Forced"][0]["mcx_preference_settings"]
    assert settings == compiled(workdir, "C02HOSTILE1")
    assert not (workdir / "output/devices/LNX-1/claude-code.mobileconfig").exists()


def test_manifest_lists_every_file_with_its_digest(workdir):
    write_inventory(workdir, HOSTILE)
    assert run(workdir, "compile").exit_code == 0
    out = workdir / "output"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generator"] == "mdmgen" and manifest["version"]
    listed = set()
    for serial, entry in manifest["devices"].items():
        for name, meta in entry["files"].items():
            data = (out / "devices" / serial / name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == meta["sha256"]
            listed.add(f"devices/{serial}/{name}")
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert on_disk - listed == {"manifest.json"}
    assert manifest["devices"]["WIN-1"]["files"]["managed-settings.json"]["install_path"] == (
        "C:\\Program Files\\ClaudeCode\\managed-settings.json")
    assert manifest["devices"]["WIN-1"]["team"] == "Zürich & Genève <HQ>"


def test_compiling_twice_gives_identical_bytes(workdir, tmp_path):
    write_inventory(workdir, HOSTILE)
    assert run(workdir, "compile").exit_code == 0
    first = {k: v[0] for k, v in snapshot(workdir / "output").items()}
    assert run(workdir, "compile", "--out", str(tmp_path / "again")).exit_code == 0
    assert {k: v[0] for k, v in snapshot(tmp_path / "again").items()} == first


def test_devices_that_left_the_inventory_disappear_and_foreign_files_stay(workdir):
    write_inventory(workdir, HEADER + "S1,linux,a@example.com,Ops\nS2,linux,b@example.com,Ops\n")
    assert run(workdir, "compile").exit_code == 0
    (workdir / "output" / ".gitkeep").write_text("")
    (workdir / "output" / "README.txt").write_text("audit trail\n")
    (workdir / "output" / ".git" / "objects").mkdir(parents=True)
    (workdir / "output" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    write_inventory(workdir, HEADER + "S1,linux,a@example.com,Ops\n")
    assert run(workdir, "compile").exit_code == 0
    assert sorted(p.name for p in (workdir / "output" / "devices").iterdir()) == ["S1"]
    assert (workdir / "output" / "README.txt").read_text() == "audit trail\n"
    assert (workdir / "output" / ".gitkeep").exists()
    assert (workdir / "output" / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert (workdir / "output" / ".git" / "objects").is_dir()
    assert sorted(p.name for p in workdir.glob(".output.mdmgen-*")
                  if p.name not in (".output.mdmgen-state", ".output.mdmgen-state")) == [".output.mdmgen-lock",
                                                                                       ".output.mdmgen-prev"]


@pytest.mark.parametrize("bad_row, expected", [
    ("S9,beos,x@example.com,Ops", "inventory/devices.csv:3: platform: 'beos' is not a platform"),
    ("S9,linux,Ann <a@example.com>,Ops", "inventory/devices.csv:3: user_email: not a valid"),
    ("../../etc,linux,x@example.com,Ops", "inventory/devices.csv:3: serial_number: must be"),
    ("s1,linux,x@example.com,Ops",
     "inventory/devices.csv:3: serial_number: duplicate serial 'S1' (also at "
     "inventory/devices.csv:2)"),
])
def test_bad_rows_exit_1_list_file_line_and_leave_output_untouched(workdir, bad_row, expected):
    write_inventory(workdir, HEADER + "S1,linux,a@example.com,Ops\n")
    assert run(workdir, "compile").exit_code == 0
    before = snapshot(workdir / "output")
    write_inventory(workdir, HEADER + "S1,linux,a@example.com,Ops\n" + bad_row + "\n")
    result = run(workdir, "compile")
    assert result.exit_code == 1
    assert result.stderr.startswith(expected)
    assert "Traceback" not in result.stderr
    assert snapshot(workdir / "output") == before


def test_every_error_is_listed_one_per_line(workdir):
    write_inventory(workdir, HEADER + "S1,beos,a@example.com,Ops\nS2,linux,nope,Ops\n"
                    "S3,linux,c@example.com,\n")
    result = run(workdir, "validate")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert [line.split(": ")[0] for line in lines[:3]] == [
        "inventory/devices.csv:2", "inventory/devices.csv:3", "inventory/devices.csv:4"]
    assert not (workdir / "output").exists()


def test_skip_invalid_compiles_the_rest_and_exits_3(workdir):
    write_inventory(workdir, HEADER + "S1,linux,a@example.com,Ops\nS2,beos,b@example.com,Ops\n"
                    "S3,wsl,c@example.com,Ops\nS3,wsl,d@example.com,Ops\n")
    result = run(workdir, "compile", "--skip-invalid")
    assert result.exit_code == 3
    assert sorted(p.name for p in (workdir / "output" / "devices").iterdir()) == ["S1"]
    assert "inventory/devices.csv:3: platform:" in result.stderr
    assert "3 rows rejected" in result.stderr


def test_skip_invalid_does_not_skip_file_level_problems(workdir):
    write_inventory(workdir, HEADER + "S1,linux,a@example.com,Ops\n")
    write_inventory(workdir, "serial,email\nS2,b@example.com\n", name="broken.csv")
    result = run(workdir, "compile", "--skip-invalid")
    assert result.exit_code == 1
    assert "inventory/broken.csv:1: platform: missing column" in result.stderr
    assert not (workdir / "output").exists()


def test_policy_errors_exit_1_with_file_and_line(workdir):
    write_inventory(workdir, HEADER + "S1,linux,a@example.com,Ops\n")
    policy = workdir / "profiles" / "policy.yaml"
    policy.write_text(policy.read_text().replace("{{ otlp_endpoint }}", "{{ otlp_endpont }}"))
    result = run(workdir, "compile")
    assert result.exit_code == 1
    line = next(i for i, text in enumerate(policy.read_text().splitlines(), 1)
                if "otlp_endpont" in text)
    assert result.stderr.startswith(
        f"profiles/policy.yaml:{line}: settings.env.OTEL_EXPORTER_OTLP_ENDPOINT: "
        "undefined name 'otlp_endpont' in template")


def test_var_overrides_and_usage_errors(workdir):
    write_inventory(workdir, HEADER + "S1,linux,a@example.com,Ops\n")
    result = run(workdir, "compile", "--var", "otlp_endpoint=https://collector.example:4318",
                 "--var", "otlp_protocol=http/protobuf")
    assert result.exit_code == 0, result.stderr
    env = compiled(workdir, "S1")["env"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "https://collector.example:4318"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert run(workdir, "compile", "--var", "nope=1").exit_code == 2
    assert run(workdir, "compile", "--var", "novalue").exit_code == 2
    assert run(workdir, "compile", "--bogus").exit_code == 2


def test_var_values_are_validated_like_the_policy(workdir):
    write_inventory(workdir, HEADER + "S1,linux,a@example.com,Ops\n")
    result = run(workdir, "compile", "--var", "otlp_endpoint=http://otel.company.com:4317")
    assert result.exit_code == 1
    assert result.stderr.startswith("inventory/devices.csv:2: env.OTEL_EXPORTER_OTLP_ENDPOINT: "
                                    "plain http is only allowed to a loopback host")


def test_validate_writes_nothing_and_schema_prints_json_schema(workdir):
    write_inventory(workdir, HEADER + "S1,linux,a@example.com,Ops\n")
    result = run(workdir, "validate")
    assert result.exit_code == 0
    assert result.stderr == (  # the inventory has no status column, which the summary says
        "Validated 1 device (Linux 1); nothing written; 0 rows excluded by status.\n"
        "Note: inventory/devices.csv has no status column, so none of its rows is excluded as a leaver; name the "
        "column that says who has left with 'columns: {status: ...}' in the policy.\n")
    assert not (workdir / "output").exists()
    schema = json.loads(run(workdir, "schema").stdout)
    assert schema["title"] == "mdmgen policy"


def test_output_that_cannot_be_written_exits_4_and_keeps_the_old_tree(workdir):
    if os.geteuid() == 0:
        # root ignores permissions, so make the parent unwritable another way: a file in the way
        write_inventory(workdir, HEADER + "S1,linux,a@example.com,Ops\n")
        (workdir / "blocker").write_text("not a folder")
        result = run(workdir, "compile", "--out", "blocker/out")
    else:
        write_inventory(workdir, HEADER + "S1,linux,a@example.com,Ops\n")
        (workdir / "blocker").mkdir(mode=0o500)
        result = run(workdir, "compile", "--out", "blocker/out")
    assert result.exit_code == 4
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [
    [str(Path(sys.executable).parent / "mdmgen")],
    [sys.executable, "-m", "mdmgen"],
])
def test_installed_entry_points_run(command):
    result = subprocess.run([*command, "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.startswith("mdmgen, version ")


def test_a_problem_shared_by_every_device_is_shown_once_with_its_policy_line(workdir):
    write_inventory(workdir, HEADER + "".join(f"S{i},linux,u{i}@example.com,Ops\n" for i in range(50)))
    result = run(workdir, "validate", "--var", "otlp_protocol=http")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    policy_line = next(i for i, text in enumerate((workdir / "profiles/policy.yaml").read_text().splitlines(), 1)
                       if "OTEL_EXPORTER_OTLP_PROTOCOL" in text)
    assert lines[0] == ("inventory/devices.csv:2: env.OTEL_EXPORTER_OTLP_PROTOCOL: Input should be 'grpc', "
                        "'http/json' or 'http/protobuf' (set at profiles/policy.yaml:"
                        f"{policy_line} settings.env.OTEL_EXPORTER_OTLP_PROTOCOL)")
    assert lines[3] == ("inventory/devices.csv: env.OTEL_EXPORTER_OTLP_PROTOCOL: ... and 47 more rows with the "
                        "same problem (--json lists them all)")
    assert len(lines) == 5
    data = json.loads(run(workdir, "validate", "--json", "--var", "otlp_protocol=http").stdout)
    assert len(data["problems"]) == 50


def test_missing_policy_names_the_file(workdir):
    (workdir / "profiles" / "policy.yaml").unlink()
    result = run(workdir, "validate")
    assert result.exit_code == 1 and result.stderr.startswith("profiles/policy.yaml: policy: no such file")


def test_a_mistyped_out_folder_that_is_not_ours_is_refused(workdir):
    write_inventory(workdir, HEADER + "S1,linux,a@example.com,Ops\n")
    before = snapshot(workdir)
    result = run(workdir, "compile", "--out", ".")
    assert result.exit_code == 4
    assert "exists and is not an mdmgen output folder" in result.stderr
    assert snapshot(workdir) == before
    # An empty folder, or one holding only a placeholder, is fine.
    (workdir / "fresh").mkdir()
    (workdir / "fresh" / ".gitkeep").write_text("")
    assert run(workdir, "compile", "--out", "fresh").exit_code == 0


def test_summaries_count_in_words_a_person_would_write(workdir):
    write_inventory(workdir, HEADER + "S1,linux,a@example.com,Ops\nS2,linux,not-an-email,Ops\n"
                    "S3,linux,c@example.com,Ops\n")
    result = run(workdir, "compile", "--skip-invalid")
    assert result.exit_code == 3
    assert result.stderr.splitlines()[-2].startswith(
        "Compiled 2 devices into output/ (Linux 2); 0 rows excluded by status; 1 row rejected (listed above).")


def test_validate_takes_no_out_and_says_why(workdir):
    write_inventory(workdir, HEADER + "S1,linux,a@example.com,Ops\n")
    result = run(workdir, "validate", "--out", "x")
    assert result.exit_code == 2
    assert "validate writes nothing, so it takes no --out" in result.stderr
    assert "Did you mean" not in result.stderr
    assert not (workdir / "x").exists()


def test_help_texts_say_what_each_option_does_for_that_command(workdir):
    validate_help = run(workdir, "validate", "--help").stdout
    assert "Compile the valid devices" not in validate_help
    assert "--out" not in validate_help
    jamf_help = run(workdir, "publish", "jamf", "--help").stdout
    assert "Delete mdmgen's profiles of Macs no longer in the output folder." in " ".join(jamf_help.split())
    s3_help = run(workdir, "publish", "s3", "--help").stdout
    assert "  5  a compile holds the output folder" in s3_help


def test_a_bug_is_one_line_naming_the_command_and_exit_70(workdir, monkeypatch):
    """An exception no stage turned into a message must not print a bare traceback."""
    from mdmgen import pipeline

    write_inventory(workdir, HEADER + "S1,linux,a@example.com,Ops\n")

    def broken(*_args, **_kwargs):
        raise KeyError("the-key")

    monkeypatch.setattr(pipeline, "compile_fleet", broken)
    result = run(workdir, "compile")
    assert result.exit_code == 70
    assert result.stderr.splitlines() == [
        "error: internal error in `mdmgen compile` (KeyError: 'the-key'); this is a bug in mdmgen "
        f"{__version__}: please report it with the command you ran (-vv shows the traceback)"]
    assert not (workdir / "output").exists()
    verbose = run(workdir, "compile", "-vv")
    assert verbose.exit_code == 70
    assert "Traceback (most recent call last)" in verbose.stderr


def test_an_unknown_var_is_a_usage_error(workdir):
    write_inventory(workdir, HEADER + "S1,linux,a@example.com,Ops\n")
    result = run(workdir, "compile", "--var", "nope=1")
    assert result.exit_code == 2 and "unknown variable nope" in result.stderr


def test_a_template_column_is_known_even_when_every_row_is_invalid(workdir):
    """Only the row errors are printed: the column exists in the header, so a template using it is
    not an 'undefined name' just because no row of it was valid."""
    policy = workdir / "profiles" / "policy.yaml"
    policy.write_text(policy.read_text().replace('  team: "{{ team }}"', '  team: "{{ team }}"\n  note: "{{ note }}"'))
    write_inventory(workdir, "serial_number,platform,user_email,team,note\nBAD/1,linux,a@example.com,Ops,x\n")
    result = run(workdir, "compile")
    assert result.exit_code == 1, result.output
    assert "undefined name" not in result.output
    assert result.stderr.splitlines()[0].startswith("inventory/devices.csv:2: serial_number: ")


def test_files_without_a_status_column_are_named_in_one_line_and_in_json(workdir):
    write_inventory(workdir, HEADER + "S1,linux,a@example.com,Ops\n", name="a.csv")
    write_inventory(workdir, "Serial,OS,Email,Team,Active Status\nS2,Ubuntu 24.04,b@example.com,Ops,No\n",
                    name="b.csv")
    write_inventory(workdir, "Serial,OS,Email,Team,Employment Status\nS3,Windows 11,c@example.com,Ops,Terminated\n"
                    "S4,macOS 14,d@example.com,Ops,Active\n", name="c.csv")
    result = run(workdir, "validate")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "Validated 3 devices (macOS 1, Linux 2); nothing written; 1 row excluded by status.",
        "Note: inventory/a.csv, inventory/b.csv ('Active Status' may hold one) have no status column, so none of "
        "their rows is excluded as a leaver; name the column that says who has left with 'columns: {status: ...}' "
        "in the policy."]
    data = json.loads(run(workdir, "compile", "--json").stdout)
    assert data["status_columns"] == {
        "inventory/a.csv": {"column": None, "looks_like": []},
        "inventory/b.csv": {"column": None, "looks_like": ["Active Status"]},
        "inventory/c.csv": {"column": "Employment Status", "looks_like": []},
    }
    assert run(workdir, "compile", "--quiet").stderr == ""  # the note is part of the summary


# --- -C DIR: a command run from another folder, without moving the process -------------------------


def test_dash_c_reads_writes_and_names_files_in_its_folder_without_changing_directory(workdir, monkeypatch):
    """In-process (as the tests and a long-lived caller run commands), ``-C`` reads the defaults from
    its folder and writes there, names the files as the user would from inside it, and never calls
    ``chdir``: the caller's working directory is process-wide and must not move under it."""
    started_in = os.getcwd()

    def refuse(_path):
        raise AssertionError("mdmgen changed the process's working directory")

    monkeypatch.setattr(os, "chdir", refuse)
    write_inventory(workdir, HEADER + "C02A,macos,ann@example.com,Sales\nC02B,macos,not-an-email,Sales\n")
    refused = run(workdir, "compile", "--json")
    assert refused.exit_code == 1
    assert "inventory/devices.csv:3: user_email:" in refused.stderr
    assert str(workdir) not in refused.stderr + refused.stdout
    assert json.loads(refused.stdout)["problems"][0].startswith("inventory/devices.csv:3: user_email:")
    assert not (workdir / "output").exists()

    write_inventory(workdir, HEADER + "C02A,macos,ann@example.com,Sales\n")
    compiled_ = run(workdir, "compile", "-v")
    assert compiled_.exit_code == 0, compiled_.stderr
    assert "Compiled 1 device into output/" in compiled_.stderr and str(workdir) not in compiled_.stderr
    assert (workdir / "output" / "devices" / "C02A" / "managed-settings.json").is_file()
    assert os.getcwd() == started_in


def test_dash_c_leaves_a_path_outside_its_folder_as_given(workdir, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "out"
    write_inventory(workdir, HEADER + "C02A,macos,ann@example.com,Sales\n")
    result = run(workdir, "compile", "--out", str(elsewhere))
    assert result.exit_code == 0, result.stderr
    assert f"Compiled 1 device into {elsewhere}/" in result.stderr
    assert (elsewhere / "manifest.json").is_file() and not (workdir / "output").exists()


def test_dash_c_from_a_shell_in_another_folder(workdir, tmp_path_factory):
    """As a cron job runs it: a relative ``-C`` from another working directory."""
    write_inventory(workdir, HEADER + "C02A,macos,ann@example.com,Sales\n")
    shell_dir = workdir.parent
    result = subprocess.run([sys.executable, "-m", "mdmgen", "-C", workdir.name, "compile"], cwd=shell_dir,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Compiled 1 device into output/" in result.stderr
    assert (workdir / "output" / "manifest.json").is_file() and not (shell_dir / "output").exists()
    missing_dir = subprocess.run([sys.executable, "-m", "mdmgen", "-C", "no-such-folder", "compile"],
                                 cwd=shell_dir, capture_output=True, text=True, timeout=120)
    assert missing_dir.returncode == 2 and "no-such-folder" in missing_dir.stderr
    assert "Traceback" not in missing_dir.stderr
