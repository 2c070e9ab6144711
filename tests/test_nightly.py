"""Nightly runs: incremental compiles, one run at a time, summaries, logging without secrets."""

import fcntl
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

from mdmgen import output

from .conftest import run, snapshot, write_inventory

ROWS = [
    "MAC1,macos,ann@example.com,Ops,CC-1",
    "MAC2,macos,bob@example.com,Sec,CC-2",
    "LNX1,linux,cat@example.com,Ops,CC-3",
    "WIN1,windows,dan@example.com,Sec,CC-4",
]
HEADER_CC = "serial_number,platform,user_email,team,cost_center\n"


def inventory(workdir: Path, rows=ROWS) -> None:
    write_inventory(workdir, HEADER_CC + "\n".join(rows) + "\n")


def compile_json(workdir: Path, *args: str) -> dict:
    result = run(workdir, "compile", "--json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def stats(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def test_second_compile_with_no_change_writes_nothing(workdir):
    inventory(workdir)
    first = compile_json(workdir)
    assert sorted(first["changes"]["added"]) == ["LNX1", "MAC1", "MAC2", "WIN1"]
    before = stats(workdir / "output")
    folder_inode = (workdir / "output").stat().st_ino
    second = compile_json(workdir)
    assert second["rendered"] == 0
    assert second["changes"] == {"added": [], "changed": [], "removed": [], "unchanged": 4, "written": False,
                                 "fleet": {"added": [], "changed": [], "removed": []}}
    assert stats(workdir / "output") == before
    assert (workdir / "output").stat().st_ino == folder_inode  # not even swapped


def test_one_changed_row_changes_exactly_that_device(workdir):
    inventory(workdir)
    compile_json(workdir)
    before = stats(workdir / "output")
    old_bytes = snapshot(workdir / "output")
    inventory(workdir, [ROWS[0], ROWS[1].replace("Sec", "Red Team"), *ROWS[2:]])
    summary = compile_json(workdir)
    assert summary["rendered"] == 1
    assert summary["changes"]["changed"] == ["MAC2"]
    after = stats(workdir / "output")
    changed = {path for path in after if after[path] != before.get(path)}
    assert changed == {"manifest.json", "devices/MAC2/managed-settings.json",
                       "devices/MAC2/claude-code.mobileconfig"}
    new_bytes = snapshot(workdir / "output")
    assert all(new_bytes[p][0] == old_bytes[p][0] for p in new_bytes if p not in changed)


def test_policy_and_var_changes_rerender_exactly_the_devices_they_affect(workdir):
    policy = workdir / "profiles" / "policy.yaml"
    policy.write_text(policy.read_text().replace(
        "teams: {}",
        'teams:\n  sec:\n    settings:\n      env:\n        OTEL_METRIC_EXPORT_INTERVAL: "{{ sec_interval }}"\n')
        .replace("  otlp_protocol: grpc", '  otlp_protocol: grpc\n  sec_interval: "60000"'))
    inventory(workdir)
    compile_json(workdir)
    # A variable only the Sec team uses: only Sec devices are rendered and changed.
    summary = compile_json(workdir, "--var", "sec_interval=30000")
    assert summary["rendered"] == 2
    assert sorted(summary["changes"]["changed"]) == ["MAC2", "WIN1"]
    # A team override edit: same.
    policy.write_text(policy.read_text().replace("OTEL_METRIC_EXPORT_INTERVAL", "OTEL_LOGS_EXPORT_INTERVAL"))
    summary = compile_json(workdir, "--var", "sec_interval=30000")
    assert sorted(summary["changes"]["changed"]) == ["MAC2", "WIN1"] and summary["rendered"] == 2
    # A variable every device uses: everything.
    summary = compile_json(workdir, "--var", "sec_interval=30000", "--var", "otlp_protocol=http/json")
    assert summary["rendered"] == 4 and len(summary["changes"]["changed"]) == 4


def test_a_change_no_template_uses_rerenders_but_rewrites_nothing(workdir):
    inventory(workdir)
    compile_json(workdir)
    before = stats(workdir / "output")
    inventory(workdir, [ROWS[0].replace("CC-1", "CC-99"), *ROWS[1:]])
    summary = compile_json(workdir)
    assert summary["rendered"] == 1 and summary["changes"]["changed"] == []
    after = stats(workdir / "output")
    assert {p: v for p, v in after.items() if p != "manifest.json"} == {
        p: v for p, v in before.items() if p != "manifest.json"}


def test_removed_devices_are_reported_and_gone(workdir):
    inventory(workdir)
    compile_json(workdir)
    inventory(workdir, ROWS[:3])
    summary = compile_json(workdir)
    assert summary["changes"]["removed"] == ["WIN1"]
    assert not (workdir / "output" / "devices" / "WIN1").exists()


def test_full_rebuild_repairs_a_hand_edited_file(workdir):
    inventory(workdir)
    compile_json(workdir)
    path = workdir / "output" / "devices" / "LNX1" / "managed-settings.json"
    good = path.read_bytes()
    path.write_text("{}\n")
    summary = compile_json(workdir, "--full")
    assert summary["rendered"] == 4
    assert path.read_bytes() == good
    # Against the previous manifest nothing changed: the repair restores what it promised.
    assert summary["changes"]["added"] == [] and summary["changes"]["changed"] == []
    assert summary["changes"]["unchanged"] == 4 and summary["changes"]["written"] is True


def test_a_second_concurrent_compile_exits_at_once_with_code_5(workdir):
    inventory(workdir)
    compile_json(workdir)
    before = snapshot(workdir / "output")
    lock_path = workdir / ".output.mdmgen-lock"
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        handle.write("4242\n")
        handle.flush()
        inventory(workdir, ROWS[:2])
        result = run(workdir, "compile")
    assert result.exit_code == 5
    assert "an mdmgen compile (pid 4242) is using this folder" in result.stderr
    assert snapshot(workdir / "output") == before


def test_quiet_prints_nothing_on_success_but_still_prints_problems(workdir):
    inventory(workdir)
    result = run(workdir, "compile", "--quiet")
    assert result.exit_code == 0 and result.stderr == "" and result.stdout == ""
    inventory(workdir, [*ROWS, "BAD,beos,x@example.com,Ops,CC"])
    result = run(workdir, "compile", "--quiet")
    assert result.exit_code == 1 and "platform: 'beos' is not a platform" in result.stderr


def test_json_summary_on_failure(workdir):
    inventory(workdir, [*ROWS, "BAD,beos,x@example.com,Ops,CC"])
    result = run(workdir, "compile", "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["exit_code"] == 1
    assert data["problems"] == ["inventory/devices.csv:6: platform: 'beos' is not a platform "
                                "(use macos, linux, windows or wsl)"]


def test_verbose_logs_never_show_secrets(workdir):
    token = "tok-4f9a1c0b2e7d"
    environ = {**os.environ, "NIGHTLY_TOKEN": token}
    policy = workdir / "profiles" / "policy.yaml"
    policy.write_text(policy.read_text().replace(
        '    CLAUDE_CODE_ENABLE_TELEMETRY: "1"',
        '    CLAUDE_CODE_ENABLE_TELEMETRY: "1"\n'
        '    OTEL_EXPORTER_OTLP_HEADERS: "Authorization=Bearer {{ secret(\'NIGHTLY_TOKEN\') }}"'))
    inventory(workdir)
    result = subprocess.run([sys.executable, "-m", "mdmgen", "compile", "-vv", "--json"], cwd=workdir,
                            capture_output=True, text=True, check=False, env=environ)
    assert result.returncode == 0, result.stderr
    assert "INFO" in result.stderr  # logging is on
    assert token not in result.stderr and token not in result.stdout
    # A malformed header must not be echoed either.
    policy.write_text(policy.read_text().replace("Authorization=Bearer", "Bearer"))
    result = subprocess.run([sys.executable, "-m", "mdmgen", "compile", "-vv"], cwd=workdir,
                            capture_output=True, text=True, check=False, env=environ)
    assert result.returncode == 1
    assert "OTEL_EXPORTER_OTLP_HEADERS" in result.stderr and token not in result.stderr


def test_progress_bar_only_on_a_terminal(workdir):
    inventory(workdir)
    piped = subprocess.run([sys.executable, "-m", "mdmgen", "compile"], cwd=workdir, capture_output=True,
                           text=True, check=False)
    assert piped.returncode == 0 and "Compiling" not in piped.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "mdmgen", "compile", "--full"], cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0
    assert b"Compiling" in seen and b"Writing" in seen


def test_leftovers_of_a_killed_run_are_cleaned_and_a_parked_tree_restored(workdir):
    inventory(workdir)
    compile_json(workdir)
    target = (workdir / "output").resolve()
    staging = target.parent / ".output.mdmgen-new"
    staging.mkdir()
    (staging / "junk").write_text("half-written")
    # As if killed between the two renames of the fallback swap: the old tree is parked aside.
    os.rename(target, target.parent / ".output.mdmgen-old")
    output.recover(target)
    assert (target / "manifest.json").exists() and not staging.exists()
    assert not (target.parent / ".output.mdmgen-old").exists()


def test_alternating_compiles_reuse_the_kept_generation_and_match_a_fresh_compile(workdir, tmp_path):
    variants = [
        ROWS,
        [ROWS[0].replace("macos", "linux"), ROWS[1].replace("Sec", "Ops"), "NEW1,wsl,eve@example.com,Ops,CC-5"],
        [ROWS[0], "NEW1,wsl,eve@example.com,Sec,CC-5", ROWS[3]],
    ]
    for step, rows in enumerate([*variants, *variants]):
        inventory(workdir, rows)
        compile_json(workdir)
        fresh = tmp_path / f"fresh{step}"
        assert run(workdir, "compile", "--out", str(fresh)).exit_code == 0
        got = {k: v[0] for k, v in snapshot(workdir / "output").items()}
        assert got == {k: v[0] for k, v in snapshot(fresh).items()}
    assert (workdir / ".output.mdmgen-prev" / "manifest.json").exists()
    inventory(workdir, ROWS)
    compile_json(workdir)
    inventory(workdir, [*ROWS[:3], ROWS[3].replace("Sec", "Ops")])
    result = run(workdir, "compile", "-v")
    assert result.exit_code == 0
    kept = re.search(r"(\d+) files written, (\d+) linked, (\d+) already in the staging generation", result.stderr)
    assert kept and int(kept.group(3)) > 0  # the kept generation was updated, not rebuilt
