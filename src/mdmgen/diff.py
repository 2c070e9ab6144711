"""Compare two output folders semantically, for auditors.

Both folders are read through the one checked reader (names, no symlinks, the shared lock), and
every file that is opened is checked against its digest. Files are compared by what they mean,
as the artifact registry reads them back: managed-settings.json is decoded, and so is the
profile's ``mcx_preference_settings``; every changed settings key is listed with its old and new
value. A change found in every file that carries the settings is shown once, as ``settings``.
Devices whose files and team are unchanged (same digests in both manifests) are not even
opened, so diffing two nightly trees of a large fleet is quick. Fleet-level files are compared
the same way; a file of a kind this version does not know is compared by digest.

Secret values (the OTLP headers variables, and whatever the policy listed in ``secret_env``)
are never shown: only that they changed, with a short SHA-256 fingerprint of each side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from . import attributes
from .emit import registry
from .emit.registry import SETTINGS_SECTION, ArtifactKind
from .envschema import SECRET_ENV, fingerprint
from .models import ManifestFile
from .output import Check, CheckedOutput, checked, device_path, kind_of
from .secrets import PSEUDONYM_RE

_ABSENT = object()


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


class FleetFileDiff(BaseModel):
    """A fleet-level file added, removed or changed."""

    path: str
    changes: list[KeyChange] = Field(default_factory=list)


class TreeDiff(BaseModel):
    added: list[DeviceDiff] = Field(default_factory=list)
    removed: list[DeviceDiff] = Field(default_factory=list)
    changed: list[DeviceDiff] = Field(default_factory=list)
    fleet: list[FleetFileDiff] = Field(default_factory=list)
    pseudonyms_changed: int = Field(default=0, description=(
        "Devices whose user_email pseudonym changed, when it changed on every device present in both "
        "folders (a key rotation): counted here once instead of listed per device."))

    @property
    def identical(self) -> bool:
        return not (self.added or self.removed or self.changed or self.fleet or self.pseudonyms_changed)

    def lines(self) -> list[str]:
        out = [f"+ {d.serial} ({d.platform}, team {json.dumps(d.team, ensure_ascii=False)})" for d in self.added]
        out += [f"- {d.serial} ({d.platform}, team {json.dumps(d.team, ensure_ascii=False)})" for d in self.removed]
        for device in self.changed:
            out.append(f"~ {device.serial}")
            out += [f"    {change.describe()}" for change in device.changes]
        for file in self.fleet:
            out.append(f"~ fleet {file.path}")
            out += [f"    {change.describe()}" for change in file.changes]
        if self.pseudonyms_changed:
            out.append(f"~ user_email pseudonyms changed on all {self.pseudonyms_changed} devices (key rotation?); "
                       f"no other attribute changed with them unless listed above")
        if not self.identical:
            summary = f"{len(self.added)} added, {len(self.removed)} removed, {len(self.changed)} changed."
            if self.pseudonyms_changed:
                summary = summary.removesuffix(".") + " beyond the pseudonyms."
            if self.fleet:
                summary += f" {len(self.fleet)} fleet file(s) changed."
            out.append(summary)
        return out


def trees(old: Path, new: Path) -> TreeDiff:
    """Everything that differs between two output folders."""
    with checked(old, check=Check.NAMES, error=DiffError) as before, \
            checked(new, check=Check.NAMES, error=DiffError) as after:
        return _compare(before, after)


def _compare(old: CheckedOutput, new: CheckedOutput) -> TreeDiff:
    old_devices, new_devices = old.manifest.devices, new.manifest.devices
    secrets = set(SECRET_ENV) | set(old.manifest.secret_env) | set(new.manifest.secret_env)
    result = TreeDiff()
    for serial in sorted(set(new_devices) - set(old_devices)):
        entry = new_devices[serial]
        result.added.append(DeviceDiff(serial=serial, platform=entry.platform.value, team=entry.team))
    for serial in sorted(set(old_devices) - set(new_devices)):
        entry = old_devices[serial]
        result.removed.append(DeviceDiff(serial=serial, platform=entry.platform.value, team=entry.team))
    for serial in sorted(set(old_devices) & set(new_devices)):
        before, after = old_devices[serial], new_devices[serial]
        if (before.files, before.team, before.platform) == (after.files, after.team, after.platform):
            continue
        changes = [KeyChange(where="device", key=key, old=str(getattr(before, key)), new=str(getattr(after, key)))
                   for key in ("platform", "team") if getattr(before, key) != getattr(after, key)]
        changes += _files_changes(old, new, {n: device_path(serial, n) for n in before.files},
                                  {n: device_path(serial, n) for n in after.files}, secrets)
        if changes:
            result.changed.append(DeviceDiff(serial=serial, platform=after.platform.value, team=after.team,
                                             changes=changes))
    _summarise_rotation(result, len(set(old_devices) & set(new_devices)))
    for relpath in sorted(set(old.manifest.fleet) | set(new.manifest.fleet)):
        changes = _files_changes(old, new, {relpath: relpath} if relpath in old.manifest.fleet else {},
                                 {relpath: relpath} if relpath in new.manifest.fleet else {}, secrets)
        if changes:
            result.fleet.append(FleetFileDiff(path=relpath, changes=changes))
    return result


def _summarise_rotation(result: TreeDiff, common: int) -> None:
    """Fold a pseudonym change that hit every device into one count.

    A key rotation changes every device's ``user_email`` pseudonym, on purpose; listed per device
    it would bury any other change under 100,000 identical lines. Only when every device present
    in both folders changed pseudonym (old and new both pseudonyms, see ``secrets``) is it folded:
    then a device whose attributes changed in nothing else drops that line, and one that also
    changed another attribute keeps its full line. A pseudonym that changed on some devices only
    (the email itself changed) stays listed per device."""
    rotated = {device.serial: [c for c in device.changes if _only_pseudonym(c) is not None]
               for device in result.changed}
    rotated = {serial: found for serial, found in rotated.items() if found}
    if common < 2 or len(rotated) != common:
        return
    result.pseudonyms_changed = common
    kept = []
    for device in result.changed:
        device.changes = [c for c in device.changes if _only_pseudonym(c) is not True]
        if device.changes:
            kept.append(device)
    result.changed = kept


def _only_pseudonym(change: KeyChange) -> bool | None:
    """For an attributes change in which the user_email pseudonym changed: True if nothing else in
    it changed, False if more did; None if the pseudonym did not change (or there is none)."""
    if (change.key != "env.OTEL_RESOURCE_ATTRIBUTES" or change.secret or not (change.old_present and change.new_present)
            or not isinstance(change.old, str) or not isinstance(change.new, str)):
        return None
    try:
        before, after = attributes.decode(change.old), attributes.decode(change.new)
    except attributes.AttributeListError:
        return None
    old_id, new_id = before.pop("user_email", ""), after.pop("user_email", "")
    if old_id == new_id or not (PSEUDONYM_RE.match(old_id) and PSEUDONYM_RE.match(new_id)):
        return None
    return before == after


def _files_changes(old: CheckedOutput, new: CheckedOutput, before: dict[str, str], after: dict[str, str],
                   secrets: set[str]) -> list[KeyChange]:
    """What changed between two sets of files (one device's, or one fleet file), by name -> relpath.

    The settings section is compared across every kind present on both sides: a key that changed
    the same way in all of them is one ``settings`` change; otherwise each file says its own.
    """
    kinds = _kinds_in_order(set(before) | set(after))
    settings: dict[str, dict[str, tuple[Any, Any]]] = {}  # kind name -> changed settings keys
    own: list[KeyChange] = []
    for name, kind in kinds:
        label = kind.label if kind else "file"
        if (name in before) != (name in after):
            own.append(KeyChange(where=label, key=name, old="present", new="present",
                                 old_present=name in before, new_present=name in after))
            continue
        old_file, new_file = _entry(old, before[name]), _entry(new, after[name])
        if kind is None:
            if old_file != new_file:
                own.append(KeyChange(where="file", key=name, old=f"sha256:{old_file.sha256[:8]}",
                                     new=f"sha256:{new_file.sha256[:8]}", secret=True))
            continue
        if kind.sections.get(SETTINGS_SECTION):
            settings[name] = {}
        if old_file == new_file:
            continue  # same digest: not opened
        old_meaning, new_meaning = _semantic(old, before[name], kind), _semantic(new, after[name], kind)
        for section in sorted(set(old_meaning) | set(new_meaning)):
            changed = _changed_keys(_flatten(old_meaning.get(section)), _flatten(new_meaning.get(section)))
            if section == SETTINGS_SECTION and name in settings:
                settings[name] = changed
            else:
                where = kind.sections.get(section, f"{label} {section}")
                own += [_key_change(where, key, pair, secrets) for key, pair in sorted(changed.items())]
    return _settings_changes(settings, dict(kinds), secrets) + own


def _settings_changes(settings: dict[str, dict[str, tuple[Any, Any]]], kinds: dict[str, ArtifactKind | None],
                      secrets: set[str]) -> list[KeyChange]:
    changes = []
    for key in sorted({key for changed in settings.values() for key in changed}):
        pairs = [changed.get(key) for changed in settings.values()]
        if all(pair is not None and pair == pairs[0] for pair in pairs):
            changes.append(_key_change(SETTINGS_SECTION, key, pairs[0], secrets))
            continue
        for name, changed in settings.items():
            kind = kinds[name]
            if key in changed and kind is not None:
                changes.append(_key_change(kind.sections[SETTINGS_SECTION], key, changed[key], secrets))
    return changes


def _kinds_in_order(names: set[str]) -> list[tuple[str, ArtifactKind | None]]:
    """Known kinds in registration order, then names this version does not know, sorted."""
    order = {kind.name: index for index, kind in enumerate(registry.device_kinds() + registry.fleet_kinds())}
    ranked = sorted(names, key=lambda name: (order.get(name, len(order)), name))
    return [(name, registry.get(name)) for name in ranked]


def _entry(tree: CheckedOutput, relpath: str) -> ManifestFile:
    parts = relpath.split("/")
    if parts[0] == "devices" and len(parts) == 3:
        return tree.manifest.devices[parts[1]].files[parts[2]]
    return tree.manifest.fleet[relpath]


def _semantic(tree: CheckedOutput, relpath: str, kind: ArtifactKind) -> registry.Semantic:
    """What a file means; a file that does not parse is named as such, one that parses but was
    changed since the compile is refused (it is not what the manifest vouches for)."""
    file = tree.file(relpath)
    assert file is not None and kind_of(relpath) is kind
    data = file.read(verify=False)
    try:
        meaning = kind.read_semantic(data)
    except ValueError as exc:
        raise DiffError(f"{file.path}: {exc}") from None
    if not file.matches(data):
        raise DiffError(f"{file.path}: differs from its sha256 in the manifest (edited after the compile?)")
    return meaning


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
