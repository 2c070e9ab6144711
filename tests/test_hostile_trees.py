"""Nothing in a tree on disk is trusted: hostile manifests, symlinks, a planted lock, odd inputs.

Each test reproduces one case found by testing with hostile folders, and checks that a compile,
diff or publish never reads, writes or removes anything outside the output folder and its two
siblings (the lock and the kept generation), and says what it refused in one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .conftest import HEADER, run, snapshot, write_inventory

ROWS = ["MAC1,macos,ann@example.com,Ops", "LNX1,linux,bob@example.com,Ops", "WIN1,windows,cat@example.com,Sec"]


def compiled(workdir: Path, rows=ROWS) -> Path:
    write_inventory(workdir, HEADER + "\n".join(rows) + "\n")
    result = run(workdir, "compile")
    assert result.exit_code == 0, result.output
    return workdir / "output"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A folder outside the project that must never be touched."""
    folder = tmp_path / "srv" / "victim"
    folder.mkdir(parents=True)
    (folder / "secret.db").write_text("precious\n")
    (folder / "managed-settings.json").write_text('{"victim": true}\n')
    return folder


def edit_manifest(folder: Path, change) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.unlink()  # the kept generation shares the inode: an edit in place would change both
    path.write_text(json.dumps(manifest))


def siblings(workdir: Path) -> list[str]:
    """The lock and the generations beside the output folder (the compile state is neither)."""
    return sorted(p.name for p in workdir.glob(".output.mdmgen-*")
                  if p.name not in (".output.mdmgen-state", ".output.mdmgen-state"))


def assert_tree_matches_manifest(out: Path) -> None:
    result = run(out.parent, "publish", "s3://bucket/x", "--out", str(out), "--dry-run",
                 "--endpoint-url", "http://127.0.0.1:9")
    assert "does not match" not in result.output, result.output


def with_changed_row(workdir: Path) -> None:
    write_inventory(workdir, HEADER + "\n".join([ROWS[0], ROWS[1].replace("Ops", "Moved"), ROWS[2]]) + "\n")


# --- a manifest can make compile delete anything ---------------------------------------------------


@pytest.mark.parametrize("where", ["prev", "current"])
def test_a_device_name_that_climbs_out_never_removes_anything(workdir, victim, where):
    out = compiled(workdir)
    compiled(workdir, ROWS[:2])  # a second generation, so -prev is the staging tree next time
    before = snapshot(victim.parent)
    folder = workdir / ".output.mdmgen-prev" if where == "prev" else out
    climb = os.path.relpath(victim, folder / "devices")
    edit_manifest(folder, lambda m: m["devices"].update({climb: m["devices"]["MAC1"]}))
    with_changed_row(workdir)
    result = run(workdir, "compile")
    assert snapshot(victim.parent) == before and victim.is_dir()
    if where == "current":
        assert result.exit_code == 4  # the folder's own manifest is not obeyed: refused
        assert "not a valid mdmgen manifest" in result.stderr and result.stderr.count("\n") == 1
    else:
        assert result.exit_code == 0, result.output  # the kept generation is rebuilt instead
        assert siblings(workdir) == [".output.mdmgen-lock", ".output.mdmgen-prev"]


@pytest.mark.parametrize("where", ["prev", "current"])
def test_a_file_name_that_climbs_out_never_unlinks_anything(workdir, victim, where):
    out = compiled(workdir)
    compiled(workdir, ROWS[:2])
    before = snapshot(victim.parent)
    folder = workdir / ".output.mdmgen-prev" if where == "prev" else out
    climb = os.path.relpath(victim / "secret.db", folder / "devices" / "LNX1")
    entry = {"sha256": "0" * 64, "size": 9}
    edit_manifest(folder, lambda m: m["devices"]["LNX1"]["files"].update({climb: entry}))
    with_changed_row(workdir)
    result = run(workdir, "compile")
    assert snapshot(victim.parent) == before
    assert result.exit_code == (4 if where == "current" else 0), result.output


# --- symlinks in the tree ----------------------------------------------------------------------------


def test_a_device_folder_replaced_by_a_link_is_repaired_not_followed(workdir, victim):
    out = compiled(workdir)
    compiled(workdir, ROWS)
    before = snapshot(victim.parent)
    device = out / "devices" / "LNX1"
    for name in os.listdir(device):
        os.unlink(device / name)
    device.rmdir()
    device.symlink_to(victim)
    result = run(workdir, "compile", "--json")
    assert result.exit_code == 0, result.output
    assert snapshot(victim.parent) == before
    assert (out / "devices" / "LNX1").is_dir() and not (out / "devices" / "LNX1").is_symlink()
    assert "devices/LNX1" in json.loads(result.stdout)["repaired"]
    assert_tree_matches_manifest(out)


def test_a_link_in_the_kept_generation_is_removed_not_followed(workdir, victim):
    compiled(workdir)
    compiled(workdir, ROWS[:2])
    before = snapshot(victim.parent)
    device = workdir / ".output.mdmgen-prev" / "devices" / "LNX1"
    for name in os.listdir(device):
        os.unlink(device / name)
    device.rmdir()
    device.symlink_to(victim)
    with_changed_row(workdir)  # LNX1 changes: the staging tree would rewrite its file
    assert run(workdir, "compile").exit_code == 0
    assert snapshot(victim.parent) == before
    with_changed_row(workdir)
    assert run(workdir, "compile").exit_code == 0
    assert_tree_matches_manifest(workdir / "output")


def test_a_file_link_planted_in_the_tree_is_not_carried_into_the_new_one(workdir, victim):
    out = compiled(workdir)
    target = out / "devices" / "WIN1" / "managed-settings.json"
    target.unlink()
    target.symlink_to(victim / "managed-settings.json")
    result = run(workdir, "compile")
    assert result.exit_code == 0, result.output
    assert not target.is_symlink() and json.loads(target.read_text()) != {"victim": True}
    assert (victim / "managed-settings.json").read_text() == '{"victim": true}\n'
    assert_tree_matches_manifest(out)


def test_a_lock_file_link_is_refused_and_its_target_left_alone(workdir, victim):
    write_inventory(workdir, HEADER + ROWS[1] + "\n")
    (workdir / ".output.mdmgen-lock").symlink_to(victim / "secret.db")
    result = run(workdir, "compile")
    assert result.exit_code == 4
    assert "is a symlink, not mdmgen's lock file" in result.stderr
    assert (victim / "secret.db").read_text() == "precious\n"


# --- refused output folders leave nothing behind ---------------------------------------------------


def test_a_refused_out_creates_no_lock_file(workdir):
    write_inventory(workdir, HEADER + ROWS[1] + "\n")
    (workdir / "theirs").mkdir()
    (workdir / "theirs" / "thesis.tex").write_text("years of work")
    result = run(workdir, "compile", "--out", "theirs")
    assert result.exit_code == 4 and "is not an mdmgen output folder" in result.stderr
    assert not (workdir / ".theirs.mdmgen-lock").exists()
    (workdir / "a-file").write_text("x")
    assert run(workdir, "compile", "--out", "a-file").exit_code == 4
    assert not (workdir / ".a-file.mdmgen-lock").exists()


def test_the_root_is_never_an_output_folder(workdir):
    write_inventory(workdir, HEADER + ROWS[1] + "\n")
    result = run(workdir, "compile", "--out", "/")
    assert result.exit_code == 4 and "root of the file system" in result.stderr
    assert not Path("/..mdmgen-lock").exists()


# --- diff never builds a path from an unchecked name ----------------------------------------------


def test_diff_refuses_a_manifest_with_unsafe_names_instead_of_calling_it_identical(workdir, victim):
    old = compiled(workdir)
    new = workdir / "new"
    run(workdir, "compile", "--out", "new")
    climb = os.path.relpath(victim / "managed-settings.json", new / "devices" / "LNX1")
    edit_manifest(new, lambda m: m["devices"]["LNX1"]["files"].update(
        {climb: {"sha256": "0" * 64, "size": 16}}))
    result = run(workdir, "diff", str(old), str(new))
    assert result.exit_code == 2
    assert "not a valid mdmgen manifest" in result.stderr and "victim" not in result.stdout


def test_diff_never_prints_a_file_reached_through_a_link(workdir, victim):
    old = compiled(workdir)
    new = workdir / "new"
    with_changed_row(workdir)
    assert run(workdir, "compile", "--out", "new").exit_code == 0
    device = new / "devices" / "LNX1"
    (device / "managed-settings.json").unlink()
    (device / "managed-settings.json").symlink_to(victim / "managed-settings.json")
    result = run(workdir, "diff", str(old), str(new))
    assert result.exit_code == 2 and "victim" not in result.stdout
    assert "is not a regular file" in result.stderr


def test_diff_reports_a_file_of_an_unknown_kind(workdir):
    old = compiled(workdir)
    new = workdir / "new"
    assert run(workdir, "compile", "--out", "new").exit_code == 0
    (new / "devices" / "LNX1" / "notes.txt").write_text("from a later mdmgen\n")
    edit_manifest(new, lambda m: m["devices"]["LNX1"]["files"].update(
        {"notes.txt": {"sha256": "a" * 64, "size": 20}}))
    result = run(workdir, "diff", str(old), str(new))
    assert result.exit_code == 1
    assert '    file notes.txt: (absent) -> "present"' in result.stdout


# --- inputs are regular files of bounded size ------------------------------------------------------


def test_a_fifo_as_the_policy_is_refused_at_once(workdir):
    write_inventory(workdir, HEADER + ROWS[1] + "\n")
    os.mkfifo(workdir / "pipe.yaml")
    result = subprocess.run([sys.executable, "-m", "mdmgen", "compile", "--profiles", "pipe.yaml"], cwd=workdir,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "pipe.yaml: policy: is not a regular file" in result.stderr and "Traceback" not in result.stderr


def test_dev_zero_as_the_policy_or_the_inventory_is_refused(workdir):
    write_inventory(workdir, HEADER + ROWS[1] + "\n")
    (workdir / "zero.yaml").symlink_to("/dev/zero")
    result = run(workdir, "compile", "--profiles", "zero.yaml")
    assert result.exit_code == 1 and "zero.yaml: policy: is not a regular file" in result.stderr
    result = run(workdir, "compile", "--inventory", "/dev/zero")
    assert result.exit_code == 1 and "/dev/zero: inventory: is not a regular file" in result.stderr


def test_a_manifest_replaced_by_a_link_is_not_read_through_it(workdir, victim):
    out = compiled(workdir)
    real = json.loads((out / "manifest.json").read_text())
    (victim / "manifest.json").write_text(json.dumps(real))  # a valid manifest, but outside the tree
    (out / "manifest.json").unlink()
    (out / "manifest.json").symlink_to(victim / "manifest.json")
    before = snapshot(victim.parent)
    result = run(workdir, "compile")
    assert result.exit_code == 4 and "manifest.json: cannot read" in result.stderr
    assert run(workdir, "diff", str(out), str(out)).exit_code == 2
    assert snapshot(victim.parent) == before


@pytest.mark.parametrize("name", ["WIN-1\n", "devices\n", "a\r", "b\x00"])
def test_a_name_ending_in_a_newline_is_not_a_safe_path_part(name):
    """A manifest key read from disk can end in a newline; ``$`` alone would accept it."""
    from mdmgen.models import safe_relpath, unsafe_name

    assert unsafe_name(name) is not None
    with pytest.raises(ValueError):
        safe_relpath(f"devices/{name}/managed-settings.json")


_NAME_PARTS = st.sampled_from(["CON", "con", "Com1", "lPt9", "COM0", "nul", "AUX", "prn", "a", "Z9", "_", "-", ".",
                                "\n", "\u212a", "\u017f", "é", " ", "\x00", "x" * 60])


@settings(max_examples=400)
@given(st.lists(_NAME_PARTS, max_size=5).map("".join) | st.text(max_size=70))
def test_a_name_is_safe_exactly_when_the_written_rule_says_so(name):
    """``unsafe_name`` checks a name with one pattern first; it must accept exactly what the rule in
    its docstring accepts: SAFE_NAME, no Windows-reserved name before the first '.', no final '.'."""
    from mdmgen.models import SAFE_NAME, WINDOWS_RESERVED, unsafe_name

    allowed = (SAFE_NAME.match(name) is not None and name.split(".")[0].upper() not in WINDOWS_RESERVED
               and not name.endswith("."))
    assert (unsafe_name(name) is None) == allowed


# --- hard links: the same inode as a file outside, which a write in place would change --------------


@pytest.mark.parametrize("where", ["output", ".output.mdmgen-prev"])
@pytest.mark.parametrize("full", [False, True])
def test_a_hard_link_to_a_file_outside_is_never_written_through(workdir, victim, where, full):
    compiled(workdir)
    compiled(workdir, ROWS[:2])
    before = snapshot(victim.parent)
    planted = workdir / where / "devices" / "LNX1" / "managed-settings.json"
    planted.unlink()
    os.link(victim / "managed-settings.json", planted)  # same inode as the victim's file
    with_changed_row(workdir)  # LNX1 changes: its file is written again
    assert run(workdir, "compile", *(["--full"] if full else [])).exit_code == 0
    assert snapshot(victim.parent) == before
    assert json.loads((workdir / "output/devices/LNX1/managed-settings.json").read_text()) != {"victim": True}
    assert_tree_matches_manifest(workdir / "output")


@pytest.mark.parametrize("serial", ["..", "../../srv/victim", "a/b", "a\\b", "C:", "\uff0e\uff0e", "CON", "nul.txt",
                                    "x" * 65, ".hidden", "trailing.", "MAC1\u200b", "/etc"])
def test_a_serial_built_for_path_traversal_is_a_row_error_and_touches_nothing(workdir, victim, serial):
    before = snapshot(victim.parent)
    write_inventory(workdir, HEADER + f"\"{serial}\",linux,x@example.com,Ops\n" + ROWS[0] + "\n")
    result = run(workdir, "compile", "--skip-invalid")
    assert result.exit_code == 3, result.output
    assert result.stderr.splitlines()[0].startswith("inventory/devices.csv:2: serial_number: ")
    assert sorted(os.listdir(workdir / "output" / "devices")) == ["MAC1"]
    assert snapshot(victim.parent) == before
