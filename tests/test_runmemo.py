"""The run memo: a night on which nothing the compile reads changed does no work, and any change
to an input or to the tree brings the normal compile back, with the output it would have written."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from mdmgen import inventory, output
from mdmgen.output import manifest as manifest_module

from .conftest import HEADER, run, snapshot, write_inventory

ROWS = HEADER + "MAC1,macos,ann@example.com,Ops\nLNX1,linux,bob@example.com,Sec\nWIN1,windows,cat@example.com,Ops\n"
MEMO = ".output.mdmgen-run"
TOKEN = "tok-" + "a" * 28
ROTATED = "tok-" + "b" * 28


def age(workdir: Path) -> None:
    """Set every folder and file of the tree and of its kept generation 10 s back, manifest.json
    excepted: a compile of three devices writes them all in the same clock tick as the manifest,
    and the cheap check (rightly) trusts only what is provably older than it."""
    for root in (workdir / "output", workdir / ".output.mdmgen-prev"):
        for path in [root, *root.rglob("*")]:
            if path.name != "manifest.json":
                info = path.lstat()
                os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns - 10**10), follow_symlinks=False)


def compile_json(workdir: Path, *args: str, code: int = 0) -> dict:
    result = run(workdir, "compile", "--json", *args)
    assert result.exit_code == code, result.stderr
    return json.loads(result.stdout)


def fresh(workdir: Path, tmp_path: Path, *args: str) -> dict[str, bytes]:
    """The tree a compile from nothing makes of the same inputs (fast paths off)."""
    out = tmp_path / "fresh-out"
    os.environ["MDMGEN_NO_FASTPATH"] = "1"
    try:
        result = run(workdir, "compile", "--out", str(out), *args)
    finally:
        del os.environ["MDMGEN_NO_FASTPATH"]
    assert result.exit_code == 0, result.stderr
    return {k: v[0] for k, v in snapshot(out).items()}


def tree(workdir: Path) -> dict[str, bytes]:
    return {k: v[0] for k, v in snapshot(workdir / "output").items()}


def test_a_quiet_night_reads_no_row_and_reports_as_the_compile_before(workdir, monkeypatch):
    write_inventory(workdir, ROWS)
    first = compile_json(workdir)
    assert first["rendered"] == 3
    assert (workdir / MEMO).is_file()
    age(workdir)
    before = snapshot(workdir / "output")
    folder_inode = (workdir / "output").stat().st_ino
    memo_bytes = (workdir / MEMO).read_bytes()

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
    assert (workdir / MEMO).read_bytes() == memo_bytes
    text = run(workdir, "compile")
    assert text.exit_code == 0
    assert text.stderr.strip() == ("Compiled 3 devices into output/ (macOS 1, Linux 1, Windows 1); 0 rows excluded "
                                   "by status. Against the previous output: 0 added, 0 changed, 0 removed, "
                                   "3 unchanged (nothing written).\nNote: inventory/devices.csv has no status "
                                   "column, so none of its rows is excluded as a leaver; name the column that says "
                                   "who has left with 'columns: {status: ...}' in the policy.")


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
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_any_changed_input_compiles_what_a_compile_from_nothing_would(workdir, tmp_path, monkeypatch, change):
    monkeypatch.setenv("OTEL_TOKEN", TOKEN)
    _secret_policy(workdir)
    write_inventory(workdir, ROWS)
    compile_json(workdir)
    age(workdir)
    CHANGES[change](workdir, monkeypatch)
    result = compile_json(workdir)
    assert result["changes"]["written"] is True
    assert tree(workdir) == fresh(workdir, tmp_path)
    if change == "secret rotated":
        assert all(TOKEN not in data.decode("utf-8", "replace") for data in tree(workdir).values())
        assert TOKEN not in (workdir / MEMO).read_text() and ROTATED not in (workdir / MEMO).read_text()


def test_a_var_or_skip_invalid_given_or_dropped_is_a_changed_input(workdir, tmp_path):
    write_inventory(workdir, ROWS)
    compile_json(workdir)
    age(workdir)
    with_var = compile_json(workdir, "--var", "otlp_endpoint=https://v.example:4317")
    assert with_var["changes"]["written"] is True
    assert tree(workdir) == fresh(workdir, tmp_path, "--var", "otlp_endpoint=https://v.example:4317")
    age(workdir)
    back = compile_json(workdir)
    assert back["changes"]["written"] is True
    assert b"https://v.example:4317" not in b"".join(tree(workdir).values())


@pytest.mark.parametrize("damage", ["edited in place", "deleted", "stray file", "symlink"])
def test_a_damaged_tree_is_repaired_as_without_the_memo(workdir, tmp_path, damage):
    write_inventory(workdir, ROWS)
    compile_json(workdir)
    age(workdir)
    target = workdir / "output" / "devices" / "LNX1" / "managed-settings.json"
    if damage == "edited in place":
        data = target.read_bytes()
        target.write_bytes(data.replace(b"bob@", b"eve@"))  # same size: only the mtime tells
    elif damage == "deleted":
        target.unlink()
    elif damage == "stray file":
        (target.parent / "extra.json").write_text("{}")
    else:
        target.unlink()
        target.symlink_to(workdir / "inventory" / "devices.csv")
    result = run(workdir, "compile", "--json")
    assert result.exit_code == 0, result.stderr
    assert tree(workdir) == fresh(workdir, tmp_path)


def test_an_edited_manifest_is_never_vouched_for(workdir):
    write_inventory(workdir, ROWS)
    compile_json(workdir)
    age(workdir)
    manifest = workdir / "output" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"team": "Sec"', '"team": "Secs"'))
    memo = output.reader.read_run_memo(workdir / "output")
    assert memo is not None and not output.reader.memo_holds(workdir / "output", memo)
    assert compile_json(workdir, "--full")["changes"]["written"] is True
    assert b'"team": "Sec"' in manifest.read_bytes()


def test_a_missing_kept_generation_is_made_again(workdir):
    write_inventory(workdir, ROWS)
    compile_json(workdir)
    age(workdir)
    run(workdir, "compile")  # the first no-change night
    prev = workdir / ".output.mdmgen-prev"
    shutil.rmtree(prev)
    assert compile_json(workdir)["changes"]["written"] is False
    assert (prev / "manifest.json").read_bytes() == (workdir / "output" / "manifest.json").read_bytes()


@pytest.mark.parametrize("forgery", [
    lambda memo: memo["devices"].update({"managed-settings.json": ["../../escape", 10]}),
    lambda memo: memo.update({"folders": ["devices", "../up"]}),
    lambda memo: memo.update({"version": "0.0.0"}),
    lambda memo: memo.update({"key": "0" * 64}),
    lambda memo: memo.update({"unknown": 1}),
], ids=["unsafe serial", "unsafe folder", "other version", "other key", "not a memo"])
def test_a_forged_or_stale_memo_is_ignored_and_the_compile_runs(workdir, tmp_path, forgery):
    write_inventory(workdir, ROWS)
    compile_json(workdir)
    age(workdir)
    memo = json.loads((workdir / MEMO).read_text())
    forgery(memo)
    (workdir / MEMO).write_text(json.dumps(memo))
    (workdir / "output" / "devices" / "WIN1" / "managed-settings.json").unlink()  # only a compile restores it
    result = run(workdir, "compile", "--json")
    assert result.exit_code == 0, result.stderr
    assert tree(workdir) == fresh(workdir, tmp_path)


def test_no_memo_after_a_problem_or_with_fast_paths_off_or_when_signing(workdir, monkeypatch):
    write_inventory(workdir, ROWS + "BAD1,beos,x@example.com,Ops\n")
    first = run(workdir, "compile", "--skip-invalid")
    assert first.exit_code == 3
    assert not (workdir / MEMO).exists()
    age(workdir)
    again = run(workdir, "compile", "--skip-invalid")  # the rejected row is reported every night
    assert again.exit_code == 3 and "inventory/devices.csv:5: platform" in again.stderr
    write_inventory(workdir, ROWS)
    assert run(workdir, "compile").exit_code == 0
    assert (workdir / MEMO).exists()
    monkeypatch.setenv("MDMGEN_NO_FASTPATH", "1")
    assert run(workdir, "compile").exit_code == 0
    assert not (workdir / MEMO).exists()


def test_an_inventory_replaced_while_a_compile_reads_it_is_compiled_again_the_next_night(workdir, tmp_path,
                                                                                         monkeypatch):
    """The key must name the bytes the compile read, or older ones, never newer ones: the HR export
    lands just after the inventory was read, and the next night must compile it, not call the
    tree made of the old rows unchanged."""
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
    age(workdir)
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
    age(workdir)
    assert compile_json(workdir)["changes"]["written"] is False  # the memo holds with the same key and file
    monkeypatch.setenv("MDMGEN_PSEUDONYM_KEY", "an0ther-key-for-the-rotation-test")
    assert compile_json(workdir)["changes"]["written"] is True
    assert tree(workdir) == fresh(workdir, tmp_path)
    age(workdir)
    (workdir / "profiles" / "otel.token").write_text(ROTATED + "\n")
    assert compile_json(workdir)["changes"]["written"] is True
    assert tree(workdir) == fresh(workdir, tmp_path / "again")
    assert all(TOKEN not in data.decode("utf-8", "replace") for data in tree(workdir).values())


def test_a_no_change_night_without_the_quiet_path_leaves_the_memo_as_it_was(workdir):
    write_inventory(workdir, ROWS)
    compile_json(workdir)
    target = workdir / "output" / "devices" / "LNX1" / "managed-settings.json"
    info = target.stat()
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns + 10**10))  # newer than the manifest: hashed
    memo = (workdir / MEMO).stat()
    assert compile_json(workdir)["changes"]["written"] is False  # the normal compile, found nothing
    assert (workdir / MEMO).stat().st_ino == memo.st_ino and (workdir / MEMO).stat().st_mtime_ns == memo.st_mtime_ns
