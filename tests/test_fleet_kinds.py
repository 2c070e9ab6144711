"""A kind of file registered only here flows through compile, the manifest, diff and S3.

This is the "done when" of the artifact registry: adding a kind of output file is one registry
entry and its emitter. The kind below is fleet-level (one file for the whole fleet, like the
collector files to come): a roster of the teams and their devices.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mdmgen.emit import registry

from . import test_publish_s3
from .conftest import HEADER, run, write_inventory
from .fakes.s3_server import S3Server
from .test_publish_s3 import BUCKET, publish, put_keys, remote_tree

aws_env = test_publish_s3.aws_env  # the S3 tests' fixtures: moto's threaded server over HTTP
s3 = test_publish_s3.s3

ROSTER_PATH = "collector/roster.json"
ROWS = ["MAC1,macos,ann@example.com,Ops", "LNX1,linux,bob@example.com,Ops", "WIN1,windows,cat@example.com,Sec"]


ROSTER_WANTED = {"yes": True}


def emit_roster(given: registry.FleetInput) -> bytes | None:
    if not ROSTER_WANTED["yes"]:
        return None
    teams: dict[str, list[str]] = {}
    for device in given.devices:
        teams.setdefault(device.team, []).append(device.serial)
    return (json.dumps({"teams": {t: sorted(s) for t, s in teams.items()}}, sort_keys=True, indent=1) + "\n").encode()


def read_roster(data: bytes) -> registry.Semantic:
    try:
        return {"roster": json.loads(data)}
    except ValueError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None


ROSTER = registry.ArtifactKind(name=ROSTER_PATH, content_type="application/vnd.example.roster+json",
                               read_semantic=read_roster, emit=emit_roster, label="roster", fleet=True,
                               sections={"roster": "roster"})


@pytest.fixture(autouse=True)
def roster():
    with registry.registered(ROSTER):
        yield ROSTER
    assert registry.get(ROSTER_PATH) is None  # gone again: no other test sees it


def compile_rows(workdir: Path, rows=ROWS, out: str = "output") -> dict:
    write_inventory(workdir, HEADER + "\n".join(rows) + "\n")
    result = run(workdir, "compile", "--json", "--out", out)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_fleet_file_is_written_listed_in_the_manifest_and_kept_when_unchanged(workdir):
    compile_rows(workdir)
    out = workdir / "output"
    data = (out / ROSTER_PATH).read_bytes()
    assert json.loads(data) == {"teams": {"Ops": ["LNX1", "MAC1"], "Sec": ["WIN1"]}}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fleet"] == {ROSTER_PATH: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}}
    inode = (out / ROSTER_PATH).stat().st_ino
    again = compile_rows(workdir)
    assert again["changes"]["written"] is False and (out / ROSTER_PATH).stat().st_ino == inode
    compile_rows(workdir, [*ROWS[:2], ROWS[2].replace("Sec", "Ops")])
    assert json.loads((out / ROSTER_PATH).read_text()) == {"teams": {"Ops": ["LNX1", "MAC1", "WIN1"]}}
    assert run(workdir, "publish", "s3://b/p", "--dry-run", "--endpoint-url", "http://127.0.0.1:9").exit_code != 1


def test_a_hand_edited_fleet_file_is_repaired(workdir):
    compile_rows(workdir)
    path = workdir / "output" / ROSTER_PATH
    good = path.read_bytes()
    path.write_text("{}\n")
    assert compile_rows(workdir)["repaired"] == [ROSTER_PATH]
    assert path.read_bytes() == good


def test_diff_compares_fleet_files_semantically(workdir):
    compile_rows(workdir, out="old")
    compile_rows(workdir, [*ROWS[:2], ROWS[2].replace("Sec", "Ops")], out="new")
    result = run(workdir, "diff", "old", "new")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[lines.index(f"~ fleet {ROSTER_PATH}") + 1:lines.index(f"~ fleet {ROSTER_PATH}") + 3] == [
        '    roster teams.Ops: ["LNX1", "MAC1"] -> ["LNX1", "MAC1", "WIN1"]',
        '    roster teams.Sec: ["WIN1"] -> (absent)',
    ]
    assert lines[-1] == "0 added, 0 removed, 1 changed. 1 fleet file(s) changed."
    assert run(workdir, "diff", "old", "old").exit_code == 0


def test_s3_publishes_the_fleet_file_with_its_content_type_and_only_when_it_changed(workdir, s3: S3Server):
    out = workdir / "output"
    compile_rows(workdir)
    result = publish(workdir, s3)
    assert result.exit_code == 0, result.output
    assert put_keys(s3)[-1] == "prod/manifest.json" and f"prod/{ROSTER_PATH}" in put_keys(s3)
    head = s3.client().head_object(Bucket=BUCKET, Key=f"prod/{ROSTER_PATH}")
    assert head["ContentType"] == "application/vnd.example.roster+json"
    assert remote_tree(s3)[ROSTER_PATH] == (out / ROSTER_PATH).read_bytes()
    assert publish(workdir, s3).exit_code == 0
    assert put_keys(s3) == []  # vouched for by the published manifest like any device file
    compile_rows(workdir, [*ROWS[:2], ROWS[2].replace("Sec", "Ops")])
    s3.reset_counts()
    assert publish(workdir, s3).exit_code == 0
    assert sorted(put_keys(s3)) == [f"prod/{ROSTER_PATH}", "prod/devices/WIN1/managed-settings.json",
                                    "prod/manifest.json"]


def test_a_fleet_file_that_is_no_longer_made_is_removed_and_pruned(workdir, s3: S3Server):
    compile_rows(workdir)
    assert publish(workdir, s3).exit_code == 0
    ROSTER_WANTED["yes"] = False  # the emitter now has nothing to say (no collector configured)
    # ... while no input changed, which the compile state (rightly) cannot tell: in real life the
    # collector section left the policy, and that is a changed input.
    (workdir / ".output.mdmgen-state").unlink()
    try:
        summary = compile_rows(workdir)
    finally:
        ROSTER_WANTED["yes"] = True
    assert summary["changes"]["written"] is True
    assert not (workdir / "output" / "collector").exists()
    assert "fleet" not in json.loads((workdir / "output" / "manifest.json").read_text())
    s3.reset_counts()
    result = publish(workdir, s3, "--prune")
    assert result.exit_code == 0, result.output
    assert [seen.key for seen in s3.requests("DELETE")] == [f"prod/{ROSTER_PATH}"]


def test_the_summary_lists_the_fleet_files_that_changed(workdir):
    """A changed collector file must be deployed by hand, unlike a device's: the summary names it."""
    first = compile_rows(workdir)
    assert first["changes"]["fleet"] == {"added": [ROSTER_PATH], "changed": [], "removed": []}
    again = compile_rows(workdir)  # no change: the quiet path reports empty lists too
    assert again["changes"]["fleet"] == {"added": [], "changed": [], "removed": []}
    write_inventory(workdir, HEADER + "\n".join([*ROWS[:2], ROWS[2].replace("Sec", "Ops")]) + "\n")
    result = run(workdir, "compile")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0].endswith(f" Fleet files changed: {ROSTER_PATH}.")
    ROSTER_WANTED["yes"] = False
    (workdir / ".output.mdmgen-state").unlink()  # no input changed, as in the test above
    try:
        gone = compile_rows(workdir, [*ROWS[:2], ROWS[2].replace("Sec", "Ops")])
    finally:
        ROSTER_WANTED["yes"] = True
    assert gone["changes"]["fleet"] == {"added": [], "changed": [], "removed": [ROSTER_PATH]}
    assert gone["changes"]["changed"] == []  # the devices did not change
