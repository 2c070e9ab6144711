"""The manifest of a night that changed a few devices reuses the other devices' lines from the
bytes written the night before; the result must be the bytes a full encoding gives."""

from __future__ import annotations

import json

import pytest

from mdmgen.models import Manifest
from mdmgen.output.manifest import manifest_bytes

from .conftest import HEADER, run, write_inventory


def test_reused_lines_give_the_bytes_of_a_full_encoding(workdir):
    write_inventory(workdir, HEADER + "".join(f"S{i},{p},u{i}@example.com,Team {i % 3}\n"
                                              for i, p in enumerate(["macos", "linux", "windows", "wsl"] * 3)))
    assert run(workdir, "compile").exit_code == 0
    data = (workdir / "output" / "manifest.json").read_bytes()
    old = Manifest.model_validate_json(data)
    devices = dict(old.devices)
    devices["S1"] = devices["S1"].model_copy(update={"team": "Moved"})  # a changed device: encoded again
    devices["S99"] = devices["S2"].model_copy()  # an added one, equal to another but not the same entry
    del devices["S3"]
    new = old.model_copy(update={"devices": dict(sorted(devices.items()))})
    fast = manifest_bytes(new, old, data)
    assert fast == manifest_bytes(new)
    assert json.loads(fast)["devices"]["S1"]["team"] == "Moved" and "S3" not in json.loads(fast)["devices"]
    assert manifest_bytes(old, old, data) == data


def test_bytes_in_another_layout_are_not_reused(workdir):
    write_inventory(workdir, HEADER + "S1,linux,a@example.com,Ops\nS2,linux,b@example.com,Ops\n")
    assert run(workdir, "compile").exit_code == 0
    data = (workdir / "output" / "manifest.json").read_bytes()
    old = Manifest.model_validate_json(data)
    pretty = json.dumps(json.loads(data), indent=1).encode()
    assert manifest_bytes(old, old, pretty) == data


def _two_manifests(workdir) -> tuple[bytes, bytes]:
    """The bytes of a folder's manifest and of another compile's that differs in some devices:
    one moved team, one added, one removed."""
    rows = "".join(f"S{i},{p},u{i}@example.com,Team {i % 3}\n"
                   for i, p in enumerate(["macos", "linux", "windows", "wsl"] * 3))
    write_inventory(workdir, HEADER + rows)
    assert run(workdir, "compile").exit_code == 0
    first = (workdir / "output" / "manifest.json").read_bytes()
    changed = rows.replace("u1@example.com,Team 1", "u1@example.com,Moved").replace("S3,", "S33,")
    write_inventory(workdir, HEADER + changed + "S77,linux,new@example.com,Team 2\n")
    assert run(workdir, "compile").exit_code == 0
    return (workdir / "output" / "manifest.json").read_bytes(), first


def test_a_kept_manifest_parsed_against_the_current_one_is_what_a_whole_parse_gives(workdir):
    from mdmgen.output.manifest import _parse, _parse_against

    current, kept = _two_manifests(workdir)
    known = (current, Manifest.model_validate_json(current))
    whole = Manifest.model_validate_json(kept)
    partial = _parse_against(kept, known)
    assert partial == whole and list(partial.devices) == list(whole.devices)
    shared = [s for s in whole.devices if known[1].devices.get(s) == whole.devices[s]]
    assert shared and all(partial.devices[s] is known[1].devices[s] for s in shared)  # not parsed again
    assert _parse_against(current, (kept, whole)) == known[1]
    # Another layout, or bytes that are not a manifest's, are parsed whole (with the whole parse's message).
    pretty = json.dumps(json.loads(kept), indent=1).encode()
    assert _parse_against(pretty, known) is None and _parse(pretty, known) == whole
    assert _parse_against(b"[]", known) is None


def test_a_kept_manifest_with_an_unsafe_name_or_a_serial_twice_is_refused_or_parsed_whole(workdir, tmp_path):
    from mdmgen.output.layout import OutputError
    from mdmgen.output.manifest import _parse_against, load_manifest

    current, kept = _two_manifests(workdir)
    known = (current, Manifest.model_validate_json(current))
    lines = kept.split(b"\n")
    unsafe = b"\n".join([*lines[:2], lines[2].replace(b'"S0"', b'"../S0"'), *lines[3:]])
    folder = tmp_path / "kept"
    folder.mkdir()
    (folder / "manifest.json").write_bytes(unsafe)
    with pytest.raises(OutputError, match="not a valid mdmgen manifest"):
        load_manifest(folder, known)
    # A device line that is the current manifest's, given twice (the last one counts, as in JSON).
    twice = b"\n".join([*lines[:3], lines[2], *lines[3:]])
    assert _parse_against(twice, known) is None
    (folder / "manifest.json").write_bytes(twice)
    loaded = load_manifest(folder, known)
    assert loaded is not None and loaded.manifest == Manifest.model_validate_json(twice)
