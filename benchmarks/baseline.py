"""The plain loop: what writing the fleet's files costs with no compiler at all.

    .venv/bin/python benchmarks/baseline.py --inventory DIR/inventory/devices.csv \\
        --profiles DIR/profiles --out DIR/plain

This is the baseline the performance targets are ratios to (``benchmarks/perf.py``). It reads
the CSV with ``csv.DictReader`` and, per row, writes ``devices/<SERIAL>/managed-settings.json``
with ``json.dump`` and, for each Mac, ``devices/<SERIAL>/claude-code.mobileconfig`` with
``plistlib.dump``: files of the same shape and about the same size as mdmgen's, so the
comparison is of the work around the files, not of the files.

On purpose it does nothing else: no validation of any field, no Jinja2 (the shipped policy's
``{{ name }}`` placeholders are filled by ``str.replace``), no policy layers, no manifest, no
hashing, no staging folder or atomic swap, no incremental reuse. It does not import mdmgen, so
nothing mdmgen does can leak into the baseline.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import plistlib
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

MAC_NAMES = frozenset({"macos", "mac", "darwin", "osx"})
UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://mdmgen.invalid/payload-uuid")


def fill(template: str, values: dict[str, str]) -> str:
    """``{{ name }}`` placeholders by plain replacement: enough for the shipped policy."""
    for name, value in values.items():
        template = template.replace("{{ " + name + " }}", value)
    return template


def profile(settings: dict[str, Any], serial: str, org: dict[str, str]) -> dict[str, Any]:
    """The same nesting as mdmgen's profile (a System Configuration with one MCX payload)."""
    identifier = f"{org['identifier_prefix']}.claudecode.{serial}"
    payload_identifier = f"{identifier}.prefs"
    return {
        "PayloadContent": [{
            "PayloadContent": {"com.anthropic.claudecode": {"Forced": [{"mcx_preference_settings": settings}]}},
            "PayloadDisplayName": org["display_name"],
            "PayloadIdentifier": payload_identifier,
            "PayloadOrganization": org["name"],
            "PayloadType": "com.apple.ManagedClient.preferences",
            "PayloadUUID": str(uuid.uuid5(UUID_NAMESPACE, payload_identifier)).upper(),
            "PayloadVersion": 1,
        }],
        "PayloadDisplayName": org["display_name"],
        "PayloadIdentifier": identifier,
        "PayloadOrganization": org["name"],
        "PayloadScope": "System",
        "PayloadType": "Configuration",
        "PayloadUUID": str(uuid.uuid5(UUID_NAMESPACE, identifier)).upper(),
        "PayloadVersion": 1,
    }


def run(inventory: Path, profiles: Path, out: Path) -> int:
    """Write every row's files under ``out``; returns the number of devices written."""
    policy = yaml.safe_load((profiles / "policy.yaml").read_text(encoding="utf-8"))
    variables = {name: str(value) for name, value in (policy.get("variables") or {}).items()}
    base_env = policy["settings"]["env"]
    attributes = policy.get("resource_attributes") or {}
    written = 0
    with open(inventory, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            values = {**variables, "serial": row["serial_number"], **row}
            env = {name: fill(value, values) for name, value in base_env.items()}
            env["OTEL_RESOURCE_ATTRIBUTES"] = ",".join(
                f"{key}={quote(fill(value, values), safe='')}" for key, value in attributes.items())
            settings = {"env": env}
            folder = out / "devices" / row["serial_number"]
            os.makedirs(folder, exist_ok=True)
            with open(folder / "managed-settings.json", "w", encoding="utf-8") as target:
                json.dump(settings, target, sort_keys=True, indent=2, ensure_ascii=False)
                target.write("\n")
            if row["platform"].lower() in MAC_NAMES:
                with open(folder / "claude-code.mobileconfig", "wb") as target:
                    plistlib.dump(profile(settings, row["serial_number"], policy["org"]), target,
                                  fmt=plistlib.FMT_XML, sort_keys=True)
            written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inventory", type=Path, required=True, help="one CSV file")
    parser.add_argument("--profiles", type=Path, required=True, help="the folder holding policy.yaml")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    print(run(args.inventory, args.profiles, args.out))


if __name__ == "__main__":
    main()
