"""Property: whatever the manifests and links on disk say, a compile touches nothing outside the
output folder and its two siblings, and a compile that succeeds leaves a tree matching its manifest."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdmgen import output

from .conftest import HEADER, SHIPPED_POLICY, run, snapshot

ROWS = ["MAC1,macos,ann@example.com,Ops", "LNX1,linux,bob@example.com,Ops", "WIN1,windows,cat@example.com,Sec"]
HOSTILE_NAMES = ["../../outside", "../outside/secret.db", "/tmp", "..", ".", "", "a/b", "MAC1", "LNX1", "NUL",
                 ".hidden", "managed-settings.json", "../../../../../../outside", "x" * 65, "ok.name"]
NAMES = st.sampled_from(HOSTILE_NAMES)
ENTRY = st.fixed_dictionaries({"sha256": st.sampled_from(["0" * 64, "zz"]), "size": st.integers(0, 40)})
DEVICE = st.fixed_dictionaries({"platform": st.sampled_from(["linux", "macos", "beos"]), "team": st.just("Ops"),
                                "files": st.dictionaries(NAMES, ENTRY, max_size=3)})
MANIFEST_EDIT = st.one_of(
    st.none(),
    st.dictionaries(NAMES, DEVICE, max_size=3).map(lambda devices: ("devices", devices)),
    st.dictionaries(st.sampled_from(["collector/x", "../outside/y", "devices/z", "c/../../outside"]), ENTRY,
                    max_size=2).map(lambda fleet: ("fleet", fleet)),
)
LINK_SPOTS = ["output/devices/LNX1", "output/devices/MAC1/managed-settings.json", "output/devices",
              ".output.mdmgen-prev/devices/WIN1", ".output.mdmgen-prev", ".output.mdmgen-new", ".output.mdmgen-old",
              "output/collector", ".output.mdmgen-prev/devices/LNX1/managed-settings.json"]
ALLOWED = {"output", ".output.mdmgen-lock", ".output.mdmgen-prev", ".output.mdmgen-state",
           "inventory", "profiles"}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A project with two compiled generations, made once and copied for every example."""
    base = tmp_path_factory.mktemp("template")
    (base / "profiles").mkdir()
    shutil.copy(SHIPPED_POLICY, base / "profiles" / "policy.yaml")
    (base / "inventory").mkdir()
    for rows in (ROWS[:2], ROWS):
        (base / "inventory" / "devices.csv").write_text(HEADER + "\n".join(rows) + "\n")
        assert run(base, "compile").exit_code == 0
    return base


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(current=MANIFEST_EDIT, kept=MANIFEST_EDIT, links=st.lists(st.sampled_from(LINK_SPOTS), max_size=3, unique=True),
       change=st.booleans())
def test_a_compile_never_touches_anything_outside_its_folder(template, tmp_path_factory, current, kept, links, change):
    root = tmp_path_factory.mktemp("hostile")
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.db").write_text("precious\n")
    (outside / "managed-settings.json").write_text('{"victim": true}\n')
    work = root / "work"
    shutil.copytree(template, work, symlinks=True, copy_function=shutil.copy2)
    for folder, edit in ((work / "output", current), (work / ".output.mdmgen-prev", kept)):
        if edit is not None:
            manifest = json.loads((folder / "manifest.json").read_text())
            manifest[edit[0]] = {**manifest.get(edit[0], {}), **edit[1]}
            (folder / "manifest.json").write_text(json.dumps(manifest))
    for spot in links:
        path = work / spot
        if Path(os.path.realpath(path.parent)) != path.parent:
            continue  # under a link planted just before: planting here would write outside
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):
            path.unlink()
        if path.parent.is_dir():
            path.symlink_to(outside / "managed-settings.json" if spot.endswith(".json") else outside)
    if change:
        rows = [*ROWS, "NEW1,wsl,d@example.com,Ops"]
        (work / "inventory" / "devices.csv").write_text(HEADER + "\n".join(rows) + "\n")
    before = snapshot(outside)
    result = run(work, "compile")

    assert snapshot(outside) == before
    assert sorted(os.listdir(outside)) == ["managed-settings.json", "secret.db"]
    assert set(os.listdir(work)) <= ALLOWED
    assert result.exit_code in (0, 4), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        tree = output.read(work / "output")  # strict and hashed: the tree matches its manifest
        assert sorted(tree.manifest.devices) == sorted(["MAC1", "LNX1", "WIN1", *(["NEW1"] if change else [])])
        assert set(os.listdir(work)) == ALLOWED
        if "(nothing written)" in result.output and (work / ".output.mdmgen-state").exists():
            # A quiet night (the compile state held) checks the tree, not the kept generation: that is
            # checked by the next compile that uses it, which must then leave it complete.
            rows = [*ROWS, "NEW2,linux,e@example.com,Ops"]
            (work / "inventory" / "devices.csv").write_text(HEADER + "\n".join(rows) + "\n")
            result = run(work, "compile")
            assert result.exit_code == 0, result.output
            assert snapshot(outside) == before
            output.read(work / "output")
        output.read(work / ".output.mdmgen-prev")  # and the kept generation is complete
