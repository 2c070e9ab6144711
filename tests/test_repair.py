"""A hand-edited output is found by the next compile and repaired.

Unchanged files are hard links shared with the kept generation, so an edit in place changes
both trees; the next compile must notice (hashing only what the compile state does not vouch
for), rewrite the file, keep a complete generation, and say what it repaired. Publish must name
the command that fixes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .conftest import HEADER, run, settle, snapshot, write_inventory
from .test_crash_safety import consistent_state

ROWS = ["MAC1,macos,ann@example.com,Ops", "LNX1,linux,bob@example.com,Ops", "WIN1,windows,cat@example.com,Sec"]
EDITED = "devices/LNX1/managed-settings.json"


def compile_json(workdir: Path, *args: str) -> dict:
    result = run(workdir, "compile", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def two_generations(workdir: Path) -> Path:
    """An output folder and a kept generation that shares its unchanged files (hard links)."""
    write_inventory(workdir, HEADER + "\n".join(ROWS) + "\n")
    compile_json(workdir)
    write_inventory(workdir, HEADER + "\n".join([*ROWS, "NEW1,wsl,dan@example.com,Ops"]) + "\n")
    compile_json(workdir)
    out = workdir / "output"
    assert (out / EDITED).stat().st_ino == (workdir / ".output.mdmgen-prev" / EDITED).stat().st_ino
    return out


def edit_in_place(path: Path, old: bytes, new: bytes) -> None:
    """What an editor that rewrites the file in place does: same inode, same size here."""
    data = path.read_bytes()
    assert len(old) == len(new) and old in data
    with open(path, "r+b") as handle:
        handle.write(data.replace(old, new, 1))


def test_an_edit_in_place_is_repaired_by_the_next_compile(workdir, tmp_path):
    out = two_generations(workdir)
    good = (out / EDITED).read_bytes()
    edit_in_place(out / EDITED, b"otel.company.com", b"evil.example.org")
    summary = run(workdir, "compile")
    assert summary.exit_code == 0
    assert f"Repaired 1 file that no longer matched the manifest (edited by hand?): {EDITED}." in summary.stderr
    assert (out / EDITED).read_bytes() == good
    consistent_state(out)
    consistent_state(workdir / ".output.mdmgen-prev")  # the kept generation is complete too
    fresh = tmp_path / "fresh"
    assert run(workdir, "compile", "--out", str(fresh)).exit_code == 0
    assert {k: v[0] for k, v in snapshot(out).items()} == {k: v[0] for k, v in snapshot(fresh).items()}
    # And then the folder is quiet again: nothing to repair, nothing written.
    again = compile_json(workdir)
    assert again["repaired"] == [] and again["changes"]["written"] is False


def test_an_edit_that_changes_the_size_or_a_deleted_file_is_repaired(workdir):
    out = two_generations(workdir)
    (out / EDITED).unlink()
    (out / EDITED).write_text("{}\n")
    (out / "devices/MAC1/claude-code.mobileconfig").unlink()
    summary = compile_json(workdir)
    assert summary["repaired"] == ["devices/LNX1/managed-settings.json", "devices/MAC1/claude-code.mobileconfig"]
    assert summary["changes"]["written"] is True and summary["changes"]["changed"] == []
    assert summary["rendered"] == 2  # only the two damaged devices
    consistent_state(out)


def test_only_files_the_compile_state_does_not_vouch_for_are_hashed(workdir, monkeypatch):
    """A file unchanged since the record was written (its size and mtime the record's, its inode
    not changed since) is trusted without reading it; an edit in place changes the inode's ctime,
    whatever the editor does with the mtime, so the edited file is hashed and repaired."""
    out = two_generations(workdir)
    settle(workdir)
    info = (out / EDITED).stat()
    hashed: list[bytes] = []
    real_sha256 = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda data=b"": hashed.append(data) or real_sha256(data))
    edit_in_place(out / EDITED, b"otel.company.com", b"evil.example.org")
    os.utime(out / EDITED, ns=(info.st_atime_ns, info.st_mtime_ns))  # the mtime set back on purpose
    summary = compile_json(workdir)
    monkeypatch.undo()
    assert summary["repaired"] == [EDITED]
    # The edited file was hashed to confirm the edit (by the quiet-night check, in the tree and
    # in the kept generation, which shares its inode) ...
    assert 1 <= len([data for data in hashed if b"evil.example.org" in data]) <= 3
    # ... and no file the record vouches for was read at all.
    untouched = {p.read_bytes() for p in (out / "devices").rglob("*") if p.is_file() and "LNX1" not in str(p)}
    assert untouched and not [data for data in hashed if data in untouched]


def test_publish_names_the_command_that_repairs_the_folder(workdir):
    out = two_generations(workdir)
    edit_in_place(out / EDITED, b"otel.company.com", b"evil.example.org")
    result = run(workdir, "publish", "s3://bucket/prefix", "--dry-run", "--endpoint-url", "http://127.0.0.1:9")
    assert result.exit_code == 1
    assert "does not match its manifest.json" in result.stderr and "`mdmgen compile` repairs it" in result.stderr
    assert run(workdir, "compile").exit_code == 0  # the command it names
    result = run(workdir, "publish", "s3://bucket/prefix", "--dry-run", "--endpoint-url", "http://127.0.0.1:9")
    assert "does not match" not in result.stderr


def test_full_repairs_an_edit_that_hid_its_mtime_too(workdir):
    out = two_generations(workdir)
    info = (out / EDITED).stat()
    good = (out / EDITED).read_bytes()
    edit_in_place(out / EDITED, b"otel.company.com", b"evil.example.org")
    os.utime(out / EDITED, ns=(info.st_atime_ns, info.st_mtime_ns))  # set back on purpose
    summary = compile_json(workdir, "--full")
    assert summary["repaired"] == [EDITED] and (out / EDITED).read_bytes() == good


def test_a_hand_edited_manifest_is_refused_by_publish_and_repaired_by_full(workdir):
    out = two_generations(workdir)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["devices"]["LNX1"]["files"]["managed-settings.json"]["sha256"] = "0" * 64
    (out / "manifest.json").unlink()
    (out / "manifest.json").write_text(json.dumps(manifest))
    result = run(workdir, "publish", "s3://bucket/prefix", "--dry-run", "--endpoint-url", "http://127.0.0.1:9")
    assert result.exit_code == 1 and "`mdmgen compile --full` if manifest.json itself was edited" in result.stderr
    summary = compile_json(workdir, "--full")
    assert summary["repaired"] == [EDITED]
    consistent_state(out)
