"""The compile state: one record beside the output, one reuse rule, and nothing on disk obeyed
unless it checks out.

A night on which nothing the compile reads changed does no work; any change to an input or to
the tree brings the compile back, with the output a compile from scratch would have written; a
record or kept generation that was tampered with is ignored as a whole, with one line saying so,
and never makes a compile print a figure it did not count."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import email_validator
import pytest

from mdmgen import inventory, versions
from mdmgen.output import manifest as manifest_module

from .conftest import HEADER, run, settle, snapshot, write_inventory

ROWS = HEADER + "MAC1,macos,ann@example.com,Ops\nLNX1,linux,bob@example.com,Sec\nWIN1,windows,cat@example.com,Ops\n"
STATE = ".output.mdmgen-state"
KEPT = ".output.mdmgen-prev"
TOKEN = "tok-" + "a" * 28
ROTATED = "tok-" + "b" * 28


def age(workdir: Path) -> None:
    """Set every folder and file of the tree and of its kept generation 10 s back, as a planted
    file's forger would: it moves their ``st_ctime`` to now, so the record vouches for none of
    them, and the next compile hashes and lists what it would otherwise have trusted."""
    for root in (workdir / "output", workdir / KEPT):
        for path in [root, *root.rglob("*")]:
            info = path.lstat()
            os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns - 10**10), follow_symlinks=False)


def compile_json(workdir: Path, *args: str, code: int = 0) -> dict:
    result = run(workdir, "compile", "--json", *args)
    assert result.exit_code == code, result.stderr
    return json.loads(result.stdout)


def fresh(workdir: Path, tmp_path: Path, *args: str) -> dict[str, bytes]:
    """The tree a compile from nothing makes of the same inputs (fast paths off)."""
    out = tmp_path / "fresh-out"
    shutil.rmtree(out, ignore_errors=True)
    os.environ["MDMGEN_NO_FASTPATH"] = "1"
    try:
        result = run(workdir, "compile", "--out", str(out), *args)
    finally:
        del os.environ["MDMGEN_NO_FASTPATH"]
    assert result.exit_code == 0, result.stderr
    return {k: v[0] for k, v in snapshot(out).items()}


def tree(workdir: Path) -> dict[str, bytes]:
    return {k: v[0] for k, v in snapshot(workdir / "output").items()}


def record(workdir: Path) -> dict:
    return json.loads((workdir / STATE).read_text())


def twins(workdir: Path) -> list[str]:
    """The devices the record calls twins (``state.encode``), in its order."""
    return [serial for serial in record(workdir)["twins"].split("/") if serial]


def forge(workdir: Path, change) -> None:
    data = record(workdir)
    change(data)
    (workdir / STATE).write_text(json.dumps(data))


def test_a_quiet_night_reads_no_row_and_reports_as_the_compile_before(workdir, monkeypatch):
    write_inventory(workdir, ROWS)
    first = compile_json(workdir)
    assert first["rendered"] == 3
    assert (workdir / STATE).is_file()
    before = snapshot(workdir / "output")
    folder_inode = (workdir / "output").stat().st_ino
    state_bytes = (workdir / STATE).read_bytes()

    def refuse(*_args, **_kwargs):
        raise AssertionError("the quiet night read the rows or parsed a manifest")

    monkeypatch.setattr(inventory, "load", refuse)
    monkeypatch.setattr(manifest_module, "_parse", refuse)
    quiet = compile_json(workdir)
    assert quiet == {"exit_code": 0, "devices": 3, "platforms": {"macos": 1, "linux": 1, "windows": 1, "wsl": 0},
                     "excluded": 0, "rejected": 0, "rendered": 0, "problems": [],
                     "status_columns": {"inventory/devices.csv": {"column": None, "looks_like": []}},
                     "team_spellings": {},
                     "changes": {"added": [], "changed": [], "removed": [], "unchanged": 3, "written": False,
                                 "fleet": {"added": [], "changed": [], "removed": []}},
                     "repaired": []}
    assert snapshot(workdir / "output") == before
    assert (workdir / "output").stat().st_ino == folder_inode
    assert (workdir / STATE).read_bytes() == state_bytes
    text = run(workdir, "compile")
    assert text.exit_code == 0
    assert text.stderr.strip() == ("Compiled 3 devices into output/ (macOS 1, Linux 1, Windows 1); 0 rows excluded "
                                   "by status. Against the previous output: 0 added, 0 changed, 0 removed, "
                                   "3 unchanged (nothing written).\nNote: inventory/devices.csv has no status "
                                   "column, so none of its rows is excluded as a leaver; name the column that says "
                                   "who has left with 'columns: {status: ...}' in the policy.")


def test_the_record_holds_what_the_issue_names_and_no_address(workdir):
    write_inventory(workdir, ROWS)
    compile_json(workdir)
    data = record(workdir)
    manifest = json.loads((workdir / "output" / "manifest.json").read_text())
    assert data["format"] == 1 and data["generator"] == "mdmgen"
    assert dict(map(tuple, data["dependencies"]))["email-validator"] == dict(versions.dependency_versions())[
        "email-validator"]
    flat = data["devices"]["managed-settings.json"]
    assert flat[0] == "LNX1" and flat[2] == manifest["devices"]["LNX1"]["inputs"]
    assert flat[3:5] == [manifest["devices"]["LNX1"]["files"]["managed-settings.json"]["sha256"],
                         manifest["devices"]["LNX1"]["files"]["managed-settings.json"]["size"]]
    assert flat[5] == (workdir / "output" / "devices" / "LNX1" / "managed-settings.json").stat().st_mtime_ns
    assert "run_key" not in data and len(data["run_check"]) == 64  # an HMAC under the key, never the key
    assert "example.com" not in (workdir / STATE).read_text()


def _secret_policy(workdir: Path) -> None:
    policy = workdir / "profiles" / "policy.yaml"
    policy.write_text(policy.read_text().replace(
        '    OTEL_EXPORTER_OTLP_ENDPOINT: "{{ otlp_endpoint }}"\n',
        '    OTEL_EXPORTER_OTLP_ENDPOINT: "{{ otlp_endpoint }}"\n'
        "    OTEL_EXPORTER_OTLP_HEADERS: 'Authorization=Bearer {{ secret(\"OTEL_TOKEN\") }}'\n"))


CHANGES = {
    "inventory row": lambda w, mp: write_inventory(w, ROWS.replace("Sec", "Security")),
    "inventory file added": lambda w, mp: write_inventory(w, HEADER + "LNX9,linux,eve@example.com,Ops\n", "more.csv"),
    "policy": lambda w, mp: (w / "profiles" / "policy.yaml").write_text(
        (w / "profiles" / "policy.yaml").read_text().replace("https://otel.company.com:4317", "https://o.example:4317")),
    "secret rotated": lambda w, mp: mp.setenv("OTEL_TOKEN", ROTATED),
    "a library upgraded": lambda w, mp: _upgrade(mp),
}


def _upgrade(monkeypatch) -> None:
    found = versions.dependency_versions()
    monkeypatch.setattr(versions, "dependency_versions", lambda: (*found, ("email-validator", "99.0")))


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_any_changed_input_compiles_what_a_compile_from_nothing_would(workdir, tmp_path, monkeypatch, change):
    monkeypatch.setenv("OTEL_TOKEN", TOKEN)
    _secret_policy(workdir)
    write_inventory(workdir, ROWS)
    compile_json(workdir)
    CHANGES[change](workdir, monkeypatch)
    result = compile_json(workdir)
    assert result["rendered"] > 0
    assert tree(workdir) == fresh(workdir, tmp_path)
    if change == "secret rotated":
        assert all(TOKEN not in data.decode("utf-8", "replace") for data in tree(workdir).values())
        assert TOKEN not in (workdir / STATE).read_text() and ROTATED not in (workdir / STATE).read_text()


def test_a_library_upgrade_validates_every_row_again(workdir, monkeypatch):
    """The record is of one set of library versions: an email-validator upgrade may refuse what
    the last one accepted, so no row skips it, and no device is reused."""
    write_inventory(workdir, ROWS.replace("Sec", "Security"))
    compile_json(workdir)
    write_inventory(workdir, ROWS)
    validated = []
    real = email_validator.validate_email
    monkeypatch.setattr(email_validator, "validate_email", lambda raw, **kw: validated.append(raw) or real(raw, **kw))
    assert compile_json(workdir)["rendered"] == 1
    assert validated == ["bob@example.com"]  # only the changed row: the others the record knows
    validated.clear()
    _upgrade(monkeypatch)
    result = run(workdir, "compile", "--json", "-v")
    assert json.loads(result.stdout)["rendered"] == 3
    assert sorted(validated) == ["ann@example.com", "bob@example.com", "cat@example.com"]
    assert "mdmgen-state: written by another version of mdmgen or of its libraries" in result.stderr


@pytest.mark.parametrize("second", ["the same row again", "a new row with a known serial"])
def test_a_known_row_is_taken_whole_but_a_duplicate_of_it_is_still_refused(workdir, tmp_path, monkeypatch, second):
    """A row the record knows skips every per-row check (``inventory._load_known_row``); what
    depends on the other rows, a serial written twice, is still found, in either order, with the
    same lines and exit code as a compile from nothing."""
    write_inventory(workdir, ROWS)
    compile_json(workdir)
    extra = "MAC1,macos,ann@example.com,Ops\n" if second == "the same row again" else "mac1,linux,zed@example.com,Ops\n"
    for rows in (ROWS + extra, HEADER + extra + ROWS.removeprefix(HEADER)):
        write_inventory(workdir, rows)
        result = run(workdir, "compile")
        monkeypatch.setenv("MDMGEN_NO_FASTPATH", "1")
        scratch = run(workdir, "compile", "--out", str(tmp_path / "scratch"))
        monkeypatch.delenv("MDMGEN_NO_FASTPATH")
        assert result.exit_code == scratch.exit_code == 1
        assert "duplicate serial 'MAC1'" in result.stderr
        assert result.stderr == scratch.stderr


def test_a_known_row_shorter_than_its_header_is_taken_whole_as_a_compile_from_nothing_reads_it(workdir, tmp_path):
    """A known row is taken whole before its shape is looked at (its digest covers the header):
    one with fewer cells than the header, which the full checks pad with empty cells, gets the
    same empty extra columns."""
    rows = (HEADER.replace("team", "team,cost_centre,site")
            + "MAC1,macos,ann@example.com,Ops,CC1\nLNX1,linux,bob@example.com,Sec\n")
    write_inventory(workdir, rows)
    compile_json(workdir)
    write_inventory(workdir, rows + "WIN1,windows,cat@example.com,Ops,,HQ\n")
    assert compile_json(workdir)["rendered"] == 1
    assert tree(workdir) == fresh(workdir, tmp_path)


def test_a_known_row_whose_team_spelling_the_other_rows_change_is_compiled_again(workdir, tmp_path):
    """A row with the same digest, platform and recorded policy part keeps its entry's inputs
    fingerprint without computing it; its team's display spelling, which the other rows decide
    (``inventory.fold_teams``), is what it is compared on too."""
    rows = HEADER + "MAC1,macos,ann@example.com,ops\nLNX1,linux,bob@example.com,ops\nWIN1,windows,cat@example.com,OPS\n"
    write_inventory(workdir, rows)
    compile_json(workdir)
    assert record(workdir)["parts"]
    write_inventory(workdir, rows + "WSL1,wsl,dan@example.com,OPS\nWSL2,wsl,eve@example.com,OPS\n")
    assert compile_json(workdir)["rendered"] == 5  # "ops" became "OPS" for every row
    assert tree(workdir) == fresh(workdir, tmp_path)
    write_inventory(workdir, rows + "WSL1,wsl,dan@example.com,OPS\nWSL2,wsl,eve@example.com,OPS\n"
                    + "LNX2,linux,fay@example.com,Sec\n")
    assert compile_json(workdir)["rendered"] == 1
    assert tree(workdir) == fresh(workdir, tmp_path)


def test_a_var_or_skip_invalid_given_or_dropped_is_a_changed_input(workdir, tmp_path):
    write_inventory(workdir, ROWS)
    compile_json(workdir)
    with_var = compile_json(workdir, "--var", "otlp_endpoint=https://v.example:4317")
    assert with_var["changes"]["written"] is True
    assert tree(workdir) == fresh(workdir, tmp_path, "--var", "otlp_endpoint=https://v.example:4317")
    back = compile_json(workdir)
    assert back["changes"]["written"] is True
    assert b"https://v.example:4317" not in b"".join(tree(workdir).values())


@pytest.mark.parametrize("damage", ["edited in place", "deleted", "stray file", "symlink"])
def test_a_damaged_tree_is_repaired(workdir, tmp_path, damage):
    write_inventory(workdir, ROWS)
    compile_json(workdir)
    settle(workdir)
    target = workdir / "output" / "devices" / "LNX1" / "managed-settings.json"
    if damage == "edited in place":
        info = target.stat()
        data = target.read_bytes()
        assert b"bob%40" in data
        target.write_bytes(data.replace(b"bob%40", b"eve%40"))  # same size
        os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))  # and the mtime set back
    elif damage == "deleted":
        target.unlink()
    elif damage == "stray file":
        (target.parent / "extra.json").write_text("{}")
        os.utime(target.parent, ns=(0, 0))
    else:
        target.unlink()
        target.symlink_to(workdir / "inventory" / "devices.csv")
    result = run(workdir, "compile", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["changes"]["written"] is True
    assert tree(workdir) == fresh(workdir, tmp_path)


def test_an_edited_manifest_voids_the_record_and_the_compile_repairs_it(workdir, tmp_path):
    write_inventory(workdir, ROWS)
    compile_json(workdir)
    manifest = workdir / "output" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"team": "Sec"', '"team": "Secs"'))
    result = run(workdir, "compile", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["rendered"] == 3  # nothing reused on the word of a record that does not hold
    assert [line for line in result.stderr.splitlines() if "mdmgen-state" in line] == [
        "mdmgen: WARNING: .output.mdmgen-state: was not written with this manifest.json (a compile was "
        "interrupted, or either was edited); compiling without it"]
    assert tree(workdir) == fresh(workdir, tmp_path)


def test_a_missing_kept_generation_is_made_again(workdir):
    write_inventory(workdir, ROWS)
    compile_json(workdir)
    prev = workdir / KEPT
    shutil.rmtree(prev)
    assert compile_json(workdir)["changes"]["written"] is False
    assert (prev / "manifest.json").read_bytes() == (workdir / "output" / "manifest.json").read_bytes()


def _two_generations(workdir: Path) -> None:
    """A folder and a kept generation that differ in one device (LNX1)."""
    write_inventory(workdir, ROWS)
    compile_json(workdir)
    write_inventory(workdir, ROWS.replace("Sec", "Red"))
    compile_json(workdir)
    settle(workdir)


def _copy_manifest_over_the_kept_one(workdir: Path) -> None:
    kept = workdir / KEPT / "manifest.json"
    kept.unlink()
    shutil.copyfile(workdir / "output" / "manifest.json", kept)


def _plant_in_a_kept_device_folder(workdir: Path) -> None:
    """A file the kept generation does not list, and another put in place of one it does, both
    with the old files' mtimes (and the folder's set back too)."""
    folder = workdir / KEPT / "devices" / "WIN1"
    info = (folder / "managed-settings.json").stat()
    planted = folder / "planted.json"
    planted.write_text("{}")
    replaced = folder / "managed-settings.json"
    data = replaced.read_bytes()
    assert b"cat%40" in data
    data = data.replace(b"cat%40", b"eve%40")
    replaced.unlink()
    replaced.write_bytes(data)
    for path in (planted, replaced, folder):
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def _forge_the_kept_generation_and_rebind_the_record(workdir: Path) -> None:
    """A kept file replaced (old mtime) and the kept manifest's line for it rewritten to claim the
    new bytes, the record rebound to that manifest: the kept generation's lines that are not the
    folder's are parsed on their own (``manifest._parse_against``), and what they claim is still
    checked against the disk before a file of it is kept."""
    kept = workdir / KEPT
    target = kept / "devices" / "WIN1" / "managed-settings.json"
    old, info = target.read_bytes(), target.stat()
    new = old.replace(b"cat%40", b"eve%40")
    target.unlink()
    target.write_bytes(new)
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
    text = (kept / "manifest.json").read_bytes().replace(
        hashlib.sha256(old).hexdigest().encode(), hashlib.sha256(new).hexdigest().encode())
    (kept / "manifest.json").unlink()
    (kept / "manifest.json").write_bytes(text)
    forge(workdir, lambda data: data.update({"kept_sha256": hashlib.sha256(text).hexdigest()}))


def _edit_a_kept_file_in_place(workdir: Path) -> None:
    """A kept file of a device the record calls a twin (``state.encode``) edited in place, same
    size and mtime: it is the tree's file too, so the tree no longer checks out and is repaired."""
    target = workdir / KEPT / "devices" / "MAC1" / "managed-settings.json"
    assert "MAC1" in twins(workdir)
    info = target.stat()
    data = target.read_bytes()
    with open(target, "r+b") as handle:
        handle.write(data.replace(b"ann%40", b"eve%40"))
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))


def _forge_a_count(workdir: Path) -> None:
    forge(workdir, lambda data: data["summary"].update({"devices": 4242, "excluded": 4343}))


TAMPERING = {"kept manifest replaced by the current one": _copy_manifest_over_the_kept_one,
             "file planted in a kept device folder": _plant_in_a_kept_device_folder,
             "count forged in the record": _forge_a_count,
             "kept file of a twin edited in place": _edit_a_kept_file_in_place,
             "kept generation forged and the record rebound to it": _forge_the_kept_generation_and_rebind_the_record}


@pytest.mark.parametrize("tamper", sorted(TAMPERING))
def test_tampering_ends_with_the_tree_a_compile_from_scratch_makes(workdir, tmp_path, tamper):
    """Each tampering is followed by a night with no change and a night with a change (which uses
    the kept generation as its staging tree): both leave the tree a compile from scratch makes,
    and no forged figure is ever printed."""
    _two_generations(workdir)
    TAMPERING[tamper](workdir)
    for rows in (ROWS.replace("Sec", "Red"), ROWS.replace("Sec", "Sec").replace("Ops", "Blue")):
        write_inventory(workdir, rows)
        result = run(workdir, "compile", "--json")
        assert result.exit_code == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["devices"] == 3 and summary["excluded"] == 0
        assert "4242" not in result.output and "4343" not in result.output
        assert tree(workdir) == fresh(workdir, tmp_path)
    # The quiet night checks the tree, not the kept generation; the night that used it as its
    # staging tree left nothing of what was planted.
    assert not list((workdir / KEPT).rglob("planted.json"))
    assert not list((workdir / "output").rglob("planted.json"))


def test_the_record_calls_twins_only_kept_folders_that_hold_the_trees_own_files(workdir, tmp_path):
    """A device the record calls a twin has, in the kept generation, a folder with the same names,
    each a hard link to the tree's file (what lets the next compile skip ``lstat``-ing them):
    checked after nights that change, restore, repair and leave the tree as it was. A device
    written anew is no twin; one linked from the tree it replaces is one again."""
    write_inventory(workdir, ROWS)
    every, unchanged = ["LNX1", "MAC1", "WIN1"], ["MAC1", "WIN1"]
    nights = [(ROWS, every), (ROWS.replace("Sec", "Red"), unchanged), (ROWS.replace("Sec", "Red"), unchanged),
              (ROWS, unchanged), (ROWS.replace("Ops", "Blue"), ["LNX1"]), ("repair", every),
              (ROWS.replace("Ops", "Blue"), every)]
    for night, expected in nights:
        if night == "repair":
            (workdir / "output" / "devices" / "WIN1" / "managed-settings.json").write_text("{}")
        else:
            write_inventory(workdir, night)
        compile_json(workdir)
        assert twins(workdir) == expected, night
        for serial in expected:
            here, kept = workdir / "output" / "devices" / serial, workdir / KEPT / "devices" / serial
            assert sorted(os.listdir(here)) == sorted(os.listdir(kept))
            assert all((here / name).stat().st_ino == (kept / name).stat().st_ino for name in os.listdir(here))
        assert tree(workdir) == fresh(workdir, tmp_path)


def test_a_night_that_changes_a_device_lstats_no_file_of_a_twin_in_the_kept_generation(workdir, tmp_path,
                                                                                       monkeypatch):
    """The kept generation's twins (see above) cost one ``lstat`` of their folder; the changed
    device's kept folder is not a twin, and the night still leaves what a compile from nothing makes."""
    _two_generations(workdir)
    assert twins(workdir) == ["MAC1", "WIN1"]  # LNX1 was written anew by the night before
    seen: list[str] = []
    real = os.lstat

    def counting(path, *args, dir_fd=None, **kwargs):
        where = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else ""
        seen.append(os.path.join(where, os.fspath(path)))
        return real(path, *args, dir_fd=dir_fd, **kwargs)

    monkeypatch.setattr(os, "lstat", counting)
    write_inventory(workdir, ROWS.replace("Sec", "Blue"))
    compile_json(workdir)
    monkeypatch.setattr(os, "lstat", real)
    kept_files = {p.split(f"{KEPT}/devices/")[1] for p in seen if f"{KEPT}/devices/" in p}
    assert {"MAC1", "WIN1"} <= kept_files and not {f for f in kept_files if f.startswith(("MAC1/", "WIN1/"))}
    assert tree(workdir) == fresh(workdir, tmp_path)


def test_a_tampered_kept_generation_is_ignored_whole_with_one_line(workdir):
    _two_generations(workdir)
    _copy_manifest_over_the_kept_one(workdir)
    write_inventory(workdir, ROWS.replace("Sec", "Blue"))
    result = run(workdir, "compile")
    assert result.exit_code == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "mdmgen-prev" in line] == [
        "mdmgen: WARNING: .output.mdmgen-prev: its manifest.json is not the one the compile state names; "
        "not used, rebuilt"]


@pytest.mark.parametrize("forgery", [
    lambda data: data["devices"].update({"managed-settings.json": ["../../escape", "r", "i", "0" * 64, 10, 0]}),
    lambda data: data.update({"fleet": {"../up/x": ["0" * 64, 1, 0]}}),
    lambda data: data.update({"version": "0.0.0"}),
    lambda data: data.update({"run_check": "0" * 64}),
    lambda data: data.update({"format": 99}),
    lambda data: data.update({"devices": []}),
], ids=["unsafe serial", "unsafe fleet path", "other version", "forged run check", "other format", "malformed"])
def test_a_forged_or_stale_record_is_ignored_and_the_compile_runs(workdir, tmp_path, forgery):
    write_inventory(workdir, ROWS)
    compile_json(workdir)
    forge(workdir, forgery)
    (workdir / "output" / "devices" / "WIN1" / "managed-settings.json").unlink()  # only a compile restores it
    result = run(workdir, "compile", "--json")
    assert result.exit_code == 0, result.stderr
    assert tree(workdir) == fresh(workdir, tmp_path)


def test_a_record_that_is_not_json_or_dated_in_the_future_is_ignored(workdir, tmp_path):
    write_inventory(workdir, ROWS)
    compile_json(workdir)
    (workdir / STATE).write_text("{not json")
    result = run(workdir, "compile", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["rendered"] == 3
    assert "mdmgen-state: does not check out (not JSON); compiling without it" in result.stderr
    future = (workdir / STATE).stat().st_mtime_ns + 10**12
    os.utime(workdir / STATE, ns=(future, future))
    result = run(workdir, "compile", "--json")
    assert json.loads(result.stdout)["rendered"] == 3
    assert "does not check out (dated in the future)" in result.stderr
    assert tree(workdir) == fresh(workdir, tmp_path)


def test_no_run_check_after_a_problem_or_when_signing_and_no_record_with_fast_paths_off(workdir, monkeypatch):
    write_inventory(workdir, ROWS + "BAD1,beos,x@example.com,Ops\n")
    first = run(workdir, "compile", "--skip-invalid")
    assert first.exit_code == 3
    assert record(workdir)["run_check"] == ""
    again = run(workdir, "compile", "--skip-invalid")  # the rejected row is reported every night
    assert again.exit_code == 3 and "inventory/devices.csv:5: platform" in again.stderr
    write_inventory(workdir, ROWS)
    assert run(workdir, "compile").exit_code == 0
    assert record(workdir)["run_check"]
    monkeypatch.setenv("MDMGEN_NO_FASTPATH", "1")
    assert run(workdir, "compile").exit_code == 0
    assert not (workdir / STATE).exists()


def test_fast_paths_off_is_a_compile_from_scratch(workdir, tmp_path, monkeypatch):
    """With MDMGEN_NO_FASTPATH=1 nothing is reused: not the record, not a device, not the kept
    generation, not a file of the tree (every file is written anew), and the tree is the same."""
    _two_generations(workdir)
    _plant_in_a_kept_device_folder(workdir)
    write_inventory(workdir, ROWS.replace("Sec", "Blue"))
    normal = tmp_path / "normal"
    shutil.copytree(workdir, normal, symlinks=True)
    assert compile_json(normal)["rendered"] == 1
    inodes = {k: v[1] for k, v in snapshot(workdir / "output").items()}
    monkeypatch.setenv("MDMGEN_NO_FASTPATH", "1")
    scratch = compile_json(workdir)
    assert scratch["rendered"] == 3
    after = snapshot(workdir / "output")
    assert not any(inodes.get(k) == v[1] for k, v in after.items())  # nothing linked, nothing kept
    assert {k: v[0] for k, v in after.items()} == tree(normal)


def test_an_inventory_replaced_while_a_compile_reads_it_is_compiled_again_the_next_night(workdir, tmp_path,
                                                                                         monkeypatch):
    """The key must name the bytes the compile read, or older ones, never newer ones."""
    write_inventory(workdir, ROWS)
    read_rows = inventory.load

    def load_then_replace(*args, **kwargs):
        loaded = read_rows(*args, **kwargs)
        write_inventory(workdir, ROWS.replace("Sec", "Security"))
        return loaded

    monkeypatch.setattr(inventory, "load", load_then_replace)
    compile_json(workdir)
    monkeypatch.setattr(inventory, "load", read_rows)
    assert b"Security" not in b"".join(tree(workdir).values())
    assert compile_json(workdir)["changes"]["written"] is True
    assert tree(workdir) == fresh(workdir, tmp_path)


def test_a_rotated_pseudonym_key_or_secret_file_is_a_changed_input(workdir, tmp_path, monkeypatch):
    monkeypatch.delenv("MDMGEN_PSEUDONYM_KEY_FILE", raising=False)
    monkeypatch.setenv("MDMGEN_PSEUDONYM_KEY", "k3y-for-the-tests-only-0123456789")
    policy = workdir / "profiles" / "policy.yaml"
    policy.write_text(policy.read_text().replace(
        '    OTEL_EXPORTER_OTLP_ENDPOINT: "{{ otlp_endpoint }}"\n',
        '    OTEL_EXPORTER_OTLP_ENDPOINT: "{{ otlp_endpoint }}"\n'
        "    OTEL_EXPORTER_OTLP_HEADERS: 'Authorization=Bearer {{ secret_file(\"otel.token\") }}'\n")
        + "pseudonymise_email: true\n")
    (workdir / "profiles" / "otel.token").write_text(TOKEN + "\n")
    write_inventory(workdir, ROWS)
    compile_json(workdir)
    assert compile_json(workdir)["changes"]["written"] is False  # the record holds with the same key and file
    write_inventory(workdir, ROWS.replace("Sec", "Red"))
    assert compile_json(workdir)["rendered"] == 1  # a pseudonymised fleet reuses devices like any other
    monkeypatch.setenv("MDMGEN_PSEUDONYM_KEY", "an0ther-key-for-the-rotation-test")
    assert compile_json(workdir)["rendered"] == 3
    assert tree(workdir) == fresh(workdir, tmp_path)
    (workdir / "profiles" / "otel.token").write_text(ROTATED + "\n")
    assert compile_json(workdir)["changes"]["written"] is True
    assert tree(workdir) == fresh(workdir, tmp_path / "again")
    assert all(TOKEN not in data.decode("utf-8", "replace") for data in tree(workdir).values())


def test_pseudonymised_row_digests_are_keyed(workdir, monkeypatch):
    """The record of a pseudonymised fleet holds no plain hash of a row: that would let anyone
    holding it confirm a guessed address."""
    monkeypatch.delenv("MDMGEN_PSEUDONYM_KEY_FILE", raising=False)
    monkeypatch.setenv("MDMGEN_PSEUDONYM_KEY", "k3y-for-the-tests-only-0123456789")
    write_inventory(workdir, ROWS)
    compile_json(workdir)
    plain = row_digests(workdir)
    policy = workdir / "profiles" / "policy.yaml"
    policy.write_text(policy.read_text() + "pseudonymise_email: true\n")
    assert compile_json(workdir)["rendered"] == 3
    keyed = row_digests(workdir)
    assert set(plain) == set(keyed) == {"MAC1", "LNX1", "WIN1"}
    assert not set(plain.values()) & set(keyed.values())


def row_digests(workdir: Path) -> dict[str, str]:
    found = {}
    for names, flat in record(workdir)["devices"].items():
        step = 3 + 3 * len(names.split("/"))
        found.update({flat[i]: flat[i + 1] for i in range(0, len(flat), step)})
    return found


def test_a_no_change_night_without_the_quiet_path_leaves_the_record_as_it_was(workdir):
    write_inventory(workdir, ROWS)
    compile_json(workdir)
    result = run(workdir, "compile", "--json", "--skip-invalid")  # another key: not quiet, but nothing changed
    assert json.loads(result.stdout)["changes"]["written"] is False
    again = (workdir / STATE).stat()
    assert compile_json(workdir, "--skip-invalid")["changes"]["written"] is False
    assert (workdir / STATE).stat().st_ino == again.st_ino and (workdir / STATE).stat().st_mtime_ns == again.st_mtime_ns


def test_the_recorded_times_are_the_trees_after_every_kind_of_night(workdir):
    """A device taken whole from the kept generation keeps the times the record had for it; every
    other file's time is read from the tree. Either way the record says what the tree holds, or
    the next night would hash (never trust) a file it should have vouched for."""
    write_inventory(workdir, ROWS)
    compile_json(workdir)

    def recorded_times_hold() -> None:
        data = record(workdir)
        for names, flat in data["devices"].items():
            files = names.split("/")
            step = 3 + 3 * len(files)
            for start in range(0, len(flat), step):
                for i, name in enumerate(files):
                    path = workdir / "output" / "devices" / flat[start] / name
                    assert flat[start + 5 + 3 * i] == path.stat().st_mtime_ns, path

    recorded_times_hold()
    for rows in (ROWS.replace("Sec", "Red"), ROWS.replace("Sec", "Blue"), ROWS.replace("Sec", "Red")):
        write_inventory(workdir, rows)
        compile_json(workdir)
        recorded_times_hold()
    settle(workdir)
    same = workdir / KEPT / "devices" / "MAC1" / "managed-settings.json"
    os.utime(same, ns=(0, 10**18))  # same bytes, another time: hashed, then recorded as it is
    write_inventory(workdir, ROWS.replace("Sec", "Green"))
    compile_json(workdir)
    recorded_times_hold()
