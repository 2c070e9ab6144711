"""Compare two output folders semantically, for auditors.

Files are compared by what they mean, not by their bytes: managed-settings.json is decoded,
and so is the profile's ``mcx_preference_settings``; every changed settings key is listed with
its old and new value. Devices whose files and team are unchanged (same digests in both
manifests) are not even opened, so diffing two nightly trees of a large fleet is quick.

Secret values (the OTLP headers variables, and whatever the policy listed in ``secret_env``)
are never shown: only that they changed, with a short SHA-256 fingerprint of each side.
"""

from __future__ import annotations

import json
import plistlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from .emit import mobileconfig
from .envschema import SECRET_ENV, fingerprint
from .models import Manifest, ManifestDevice
from .output import OutputError, device_path, read_manifest

SETTINGS_FILE = "managed-settings.json"
PROFILE_FILE = "claude-code.mobileconfig"
_ABSENT = object()
_PROFILE_META_KEYS = ("PayloadIdentifier", "PayloadUUID", "PayloadDisplayName", "PayloadOrganization",
                      "PayloadScope", "PayloadType", "PayloadVersion")


class DiffError(Exception):
    """A folder could not be compared (missing, not an output folder, unreadable file)."""


class KeyChange(BaseModel):
    """One changed value. ``where`` says which file(s) it is in; absent sides are omitted."""

    where: str
    key: str
    old: Any = None
    new: Any = None
    old_present: bool = True
    new_present: bool = True
    secret: bool = False

    def describe(self) -> str:
        def show(value: Any, present: bool) -> str:
            if not present:
                return "(absent)"
            if self.secret:
                return str(value)
            return json.dumps(value, ensure_ascii=False, sort_keys=True)

        label = f"{self.where} {self.key}" if self.where != "settings" else self.key
        old, new = show(self.old, self.old_present), show(self.new, self.new_present)
        if self.secret:
            return f"{label}: changed (secret value not shown; {old} -> {new})"
        return f"{label}: {old} -> {new}"


class DeviceDiff(BaseModel):
    serial: str
    platform: str
    team: str
    changes: list[KeyChange] = Field(default_factory=list)


class TreeDiff(BaseModel):
    added: list[DeviceDiff] = Field(default_factory=list)
    removed: list[DeviceDiff] = Field(default_factory=list)
    changed: list[DeviceDiff] = Field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def lines(self) -> list[str]:
        out = [f"+ {d.serial} ({d.platform}, team {json.dumps(d.team, ensure_ascii=False)})" for d in self.added]
        out += [f"- {d.serial} ({d.platform}, team {json.dumps(d.team, ensure_ascii=False)})" for d in self.removed]
        for device in self.changed:
            out.append(f"~ {device.serial}")
            out += [f"    {change.describe()}" for change in device.changes]
        if not self.identical:
            out.append(f"{len(self.added)} added, {len(self.removed)} removed, {len(self.changed)} changed.")
        return out


def trees(old: Path, new: Path) -> TreeDiff:
    """Everything that differs between two output folders."""
    old_manifest = _manifest(old)
    new_manifest = _manifest(new)
    secrets = set(SECRET_ENV) | set(old_manifest.secret_env) | set(new_manifest.secret_env)
    result = TreeDiff()
    for serial in sorted(set(new_manifest.devices) - set(old_manifest.devices)):
        entry = new_manifest.devices[serial]
        result.added.append(DeviceDiff(serial=serial, platform=entry.platform.value, team=entry.team))
    for serial in sorted(set(old_manifest.devices) - set(new_manifest.devices)):
        entry = old_manifest.devices[serial]
        result.removed.append(DeviceDiff(serial=serial, platform=entry.platform.value, team=entry.team))
    for serial in sorted(set(old_manifest.devices) & set(new_manifest.devices)):
        before, after = old_manifest.devices[serial], new_manifest.devices[serial]
        if (before.files, before.team, before.platform) == (after.files, after.team, after.platform):
            continue
        changes = _device_changes(serial, old, before, new, after, secrets)
        if changes:
            result.changed.append(DeviceDiff(serial=serial, platform=after.platform.value, team=after.team,
                                             changes=changes))
    return result


def _manifest(folder: Path) -> Manifest:
    if not folder.is_dir():
        raise DiffError(f"{folder}: no such folder")
    try:
        manifest = read_manifest(folder)
    except OutputError as exc:
        raise DiffError(str(exc)) from None
    if manifest is None:
        raise DiffError(f"{folder}: has no manifest.json; is it an mdmgen output folder?")
    return manifest


def _device_changes(serial: str, old_root: Path, before: ManifestDevice, new_root: Path,
                    after: ManifestDevice, secrets: set[str]) -> list[KeyChange]:
    changes: list[KeyChange] = []
    for key in ("platform", "team"):
        old_value, new_value = getattr(before, key), getattr(after, key)
        if old_value != new_value:
            changes.append(KeyChange(where="device", key=key, old=str(old_value), new=str(new_value)))
    json_old = _flatten(_read_settings(old_root, serial, before))
    json_new = _flatten(_read_settings(new_root, serial, after))
    prof_old = _read_profile(old_root, serial, before)
    prof_new = _read_profile(new_root, serial, after)
    json_changes = _changed_keys(json_old, json_new)
    has_profile = bool(prof_old and prof_new)  # a profile added or removed is reported as such
    mcx_changes = _changed_keys(_flatten(prof_old[0]), _flatten(prof_new[0])) if prof_old and prof_new else {}
    for key in sorted(set(json_changes) | set(mcx_changes)):
        in_json, in_mcx = key in json_changes, key in mcx_changes
        if (in_json and in_mcx and json_changes[key] == mcx_changes[key]) or (in_json and not has_profile):
            changes.append(_key_change("settings", key, json_changes[key], secrets))
            continue
        if in_json:
            changes.append(_key_change("managed-settings.json", key, json_changes[key], secrets))
        if in_mcx:
            changes.append(_key_change("profile settings", key, mcx_changes[key], secrets))
    if bool(prof_old) != bool(prof_new):
        changes.append(KeyChange(where="profile", key=PROFILE_FILE, old="present", new="present",
                                 old_present=bool(prof_old), new_present=bool(prof_new)))
    elif prof_old and prof_new:
        for key, pair in sorted(_changed_keys(prof_old[1], prof_new[1]).items()):
            changes.append(_key_change("profile", key, pair, set()))
    return changes


def _key_change(where: str, key: str, pair: tuple[Any, Any], secrets: set[str]) -> KeyChange:
    old, new = pair
    secret = key.startswith("env.") and key[4:] in secrets
    if secret:
        old = _fingerprint(old) if old is not _ABSENT else None
        new = _fingerprint(new) if new is not _ABSENT else None
    return KeyChange(where=where, key=key, secret=secret,
                     old=None if pair[0] is _ABSENT else old, new=None if pair[1] is _ABSENT else new,
                     old_present=pair[0] is not _ABSENT, new_present=pair[1] is not _ABSENT)


def _fingerprint(value: Any) -> str:
    return fingerprint(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True))


def _changed_keys(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {key: (old.get(key, _ABSENT), new.get(key, _ABSENT))
            for key in set(old) | set(new) if old.get(key, _ABSENT) != new.get(key, _ABSENT)}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key paths to leaf values; lists are compared whole."""
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value} if prefix else {}


def _read(root: Path, serial: str, name: str) -> bytes:
    path = root / device_path(serial, name)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DiffError(f"{path}: cannot read: {exc.strerror}") from None


def _read_settings(root: Path, serial: str, entry: ManifestDevice) -> Any:
    if SETTINGS_FILE not in entry.files:
        return {}
    try:
        return json.loads(_read(root, serial, SETTINGS_FILE))
    except ValueError as exc:
        raise DiffError(f"{root / device_path(serial, SETTINGS_FILE)}: not valid JSON: {exc}") from None


def _read_profile(root: Path, serial: str, entry: ManifestDevice) -> tuple[Any, dict[str, Any]] | None:
    """The profile's settings and its metadata (top-level and payload Payload* keys)."""
    if PROFILE_FILE not in entry.files:
        return None
    data = _read(root, serial, PROFILE_FILE)
    problems = mobileconfig.check_profile(data)
    if problems:
        raise DiffError(f"{root / device_path(serial, PROFILE_FILE)}: {problems[0]}")
    profile = plistlib.loads(data)
    payload = profile["PayloadContent"][0]
    meta = {key: profile.get(key, _ABSENT) for key in _PROFILE_META_KEYS}
    meta.update({f"payload.{key}": payload.get(key, _ABSENT) for key in _PROFILE_META_KEYS})
    meta = {k: v for k, v in meta.items() if v is not _ABSENT}
    return mobileconfig.settings_of(data), meta
