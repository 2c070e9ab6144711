"""The manifest of a night that changed a few devices reuses the other devices' lines from the
bytes written the night before; the result must be the bytes a full encoding gives."""

from __future__ import annotations

import json

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
