"""Where a device's files go: their paths on the device and digests, whether the output folder
holds the same bytes (read through the one checked reader, never written), the channels that deliver
them on the device's platform, and which source the client reads first there."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from .. import output, pipeline
from ..emit import mobileconfig, registry
from ..models import Device, Platform, Settings
from .models import Channel, DeviceFile, Explanation
from .origins import flat, layers_of, settings_of


def build(prepared: pipeline.Prepared, device: Device, settings: Settings, files: Mapping[str, bytes],
           var_overrides: Mapping[str, str], out: Path) -> Explanation:
    loaded = prepared.loaded
    on_disk, state = _output_files(out, device.serial)
    listed = []
    for name, data in files.items():
        kind = registry.get(name)
        path = kind.install_path(device.platform) if kind else None
        there = on_disk.get(name) if on_disk is not None else None
        status = ("not compared" if on_disk is None else "missing" if there is None
                  else "current" if there == data else "stale")
        listed.append(DeviceFile(name=name, install_path=path, sha256=hashlib.sha256(data).hexdigest(),
                                 size=len(data), output=status,
                                 delivered_as="file" if path else f"configuration profile ({_PLIST})"))
    channels = _channels(device.platform, files, loaded.policy.intune is not None)
    explanation = Explanation(
        serial=device.serial, platform=device.platform, team=device.team,
        user_email=device.user_email, pseudonymised=prepared.pseudonymiser is not None,
        row=str(device.location), layers=layers_of(loaded, device),
        settings=settings_of(prepared, device, settings, var_overrides), files=listed,
        output_folder=str(out), output_state=state, channels=channels, reads_first=_READS_FIRST[device.platform])
    explanation.warnings += _warnings(device, files, on_disk or {}, out)
    for name in sorted(set(on_disk or {}) - set(files)):
        explanation.notes.append(f"{out}/ also holds {name} for this device (made by a later stage, or no longer "
                                 "compiled for it)")
    return explanation


_PLIST = f"the {mobileconfig.PREFERENCE_DOMAIN} preference domain"


def _output_files(out: Path, serial: str) -> tuple[dict[str, bytes] | None, str]:
    """The device's files in the output folder (None: not compared) and one line saying why."""
    if not out.exists():
        return None, f"no output folder at {out}/: nothing to compare"
    try:
        with output.checked(out, check=output.Check.NAMES) as tree:
            entry = tree.manifest.devices.get(serial)
            if entry is None:
                return {}, f"{out}/ has no files for this device (not compiled since it was added?)"
            found = {}
            for name in entry.files:
                if name in (entry.derived or {}):
                    continue  # a signed profile: made from its source, said by _derived
                checked = tree.file(output.device_path(serial, name))
                if checked is not None:
                    found[name] = checked.read(verify=False)
            return found, f"compared with {out}/" + _derived(entry, out)
    except output.OutputBusy as exc:
        return None, f"not compared: {exc}"
    except output.OutputError as exc:
        return None, f"not compared: {exc}"


def _derived(entry, out: Path) -> str:
    """The signed profiles of the device in the output folder, and the source each was made from:
    a signed profile is current when its source is (the reader checks it was made from that one)."""
    return "".join(f"; {out}/ also holds {name}, signed from its {made.source} of sha256 {made.from_sha256[:12]}…"
                   for name, made in sorted((entry.derived or {}).items()))


def _channels(platform: Platform, files: Mapping[str, bytes], intune: bool) -> list[Channel]:
    profile, settings_json = registry.MAC_PROFILE.name, registry.SETTINGS_JSON.name
    s3 = Channel(name="S3", command="mdmgen publish s3", files=[settings_json], source="file",
                 note="config management pulls it and installs it at the path above")
    found = []
    if platform is Platform.MACOS and profile in files:
        found.append(Channel(name="Jamf Pro", command="mdmgen publish jamf", files=[profile], source="plist",
                             note="this Mac's own profile, scoped to it"))
        if intune:
            found.append(Channel(name="Intune", command="mdmgen publish intune", files=[profile], source="plist",
                                 note="the team's profile, which Intune fills in with this Mac's email"))
        s3 = s3.model_copy(update={"note": s3.note + "; the profile is uploaded too, for an MDM's custom upload"})
    if platform is Platform.WINDOWS and intune:
        found.append(Channel(name="Intune", command="mdmgen publish intune", files=[settings_json], source="file",
                             note="the team's PowerShell platform script writes this PC's file, run as SYSTEM"))
    found.append(s3)
    return found


_READS_FIRST = {
    Platform.MACOS: "the profile (plist) outranks managed-settings.json: with both delivered the Mac ignores the "
                    "file, except that env merges per variable (reference §3.2); server-managed settings, where "
                    "they apply, outrank both",
    Platform.WINDOWS: "HKLM\\SOFTWARE\\Policies\\ClaudeCode outranks managed-settings.json; mdmgen writes no "
                      "registry value, so this PC reads the file unless something else sets HKLM (then each env "
                      "variable HKLM sets comes from there)",
    Platform.LINUX: "managed-settings.json, the only managed source on Linux (managed-settings.d/*.json merge after "
                    "it)",
    Platform.WSL: "managed-settings.json under /etc/claude-code; the Windows sources only with "
                  "wslInheritsWindowsSettings, and then they win",
}


def _warnings(device: Device, files: Mapping[str, bytes], on_disk: Mapping[str, bytes], out: Path) -> list[str]:
    """What would make the device get something else than this compile: stale files in the output
    folder (publishers deliver from there), and two channels delivering different settings."""
    warnings = [f"{out}/devices/{device.serial}/{name} differs from this compile: run `mdmgen compile` before "
                "publishing" for name, data in files.items() if name in on_disk and on_disk[name] != data]
    delivered = {name: on_disk.get(name, data) for name, data in files.items()}
    profile, settings_json = registry.MAC_PROFILE.name, registry.SETTINGS_JSON.name
    if profile in delivered and settings_json in delivered:
        try:
            a = mobileconfig.settings_of(delivered[profile])
            b = json.loads(delivered[settings_json])
        except (ValueError, KeyError, IndexError, TypeError):
            return [*warnings, f"{out}/devices/{device.serial}: a delivered file does not parse"]
        flat_a, flat_b = dict(flat(a)), dict(flat(b))
        keys = sorted(".".join(k) for k in set(flat_a) | set(flat_b) if flat_a.get(k) != flat_b.get(k))
        if keys:
            warnings.append(f"the profile and managed-settings.json would deliver different settings ({', '.join(keys)}"
                            "); this Mac reads the profile and ignores the file except per-variable env")
    return warnings


