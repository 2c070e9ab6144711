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
are never shown: only that they changed, with a short SHA-256 fingerprint of each side. A key
that embeds a referenced secret (``{{ secret("NAME") }}``, listed under the manifest's
``secrets``) shows only the secret's keyed fingerprint from the manifest, never a hash of the
value; a rotation that changed nothing else on the devices (their ``redacted`` digests agree)
is folded into one line for the whole fleet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from . import attributes, runscope
from .emit import registry
from .emit.registry import SETTINGS_SECTION, ArtifactKind
from .envschema import SECRET_ENV
from .errors import MdmgenException
from .exitcodes import ExitCode
from .models import ManifestDevice, ManifestFile
from .output import Check, CheckedOutput, checked, device_path, kind_of
from .secrets import PSEUDONYM_RE, SecretRef, shown_fingerprint

SHOWN_FINGERPRINT = 8
"""Hex digits of a secret's keyed fingerprint that diff shows."""

_ABSENT = object()


class DiffError(MdmgenException):
    """A folder could not be compared (missing, not an output folder, unreadable file): exit 2,
    diff(1)'s "trouble", which is also the number of mdmgen's usage errors."""

    exit_code = ExitCode.USAGE


class KeyChange(BaseModel):
    """One changed value. ``where`` says which file(s) it is in; absent sides are omitted."""

    where: str
    key: str
    old: Any = None
    new: Any = None
    old_present: bool = True
    new_present: bool = True
    secret: bool = False
    note: str | None = Field(default=None, description="What changed, when the values cannot be shown "
                             "(a key embedding a referenced secret).")

    def describe(self) -> str:
        def show(value: Any, present: bool) -> str:
            if not present:
                return "(absent)"
            if self.secret:
                return str(value)
            return json.dumps(value, ensure_ascii=False, sort_keys=True)

        label = f"{self.where} {self.key}" if self.where != "settings" else self.key
        if self.note:
            return f"{label}: {self.note}"
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


class SecretChange(BaseModel):
    """A referenced secret whose keyed fingerprint changed (a rotation), folded for the whole fleet."""

    secret: str  # label, env:NAME or file:PATH
    keys: list[str]
    old: str
    new: str
    devices: int = Field(description="Devices whose files changed by this secret only.")

    def describe(self) -> str:
        ref = SecretRef.from_label(self.secret)
        return (f"{', '.join(self.keys) or 'settings'}: {ref.describe()} changed (fingerprint {self.old} -> "
                f"{self.new}) on {self.devices} device(s) that embed it; nothing else changed with it unless "
                f"listed above")


class TreeDiff(BaseModel):
    added: list[DeviceDiff] = Field(default_factory=list)
    removed: list[DeviceDiff] = Field(default_factory=list)
    changed: list[DeviceDiff] = Field(default_factory=list)
    fleet: list[FleetFileDiff] = Field(default_factory=list)
    pseudonyms_changed: int = Field(default=0, description=(
        "Devices whose user_email pseudonym changed, when it changed on every device present in both "
        "folders (a key rotation): counted here once instead of listed per device."))
    secrets_changed: list[SecretChange] = Field(default_factory=list, description=(
        "Referenced secrets that were rotated; devices whose files changed by them only are counted here."))

    @property
    def identical(self) -> bool:
        return not (self.added or self.removed or self.changed or self.fleet or self.pseudonyms_changed
                    or self.secrets_changed)

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
        out += [f"~ {change.describe()}" for change in self.secrets_changed]
        if not self.identical:
            summary = f"{len(self.added)} added, {len(self.removed)} removed, {len(self.changed)} changed."
            if self.pseudonyms_changed or self.secrets_changed:
                beyond = " and ".join(word for word, on in (("the pseudonyms", self.pseudonyms_changed),
                                                            ("the rotated secrets", self.secrets_changed)) if on)
                summary = summary.removesuffix(".") + f" beyond {beyond}."
            if self.fleet:
                summary += f" {len(self.fleet)} fleet file(s) changed."
            out.append(summary)
        return out


def trees(old: Path, new: Path) -> TreeDiff:
    """Everything that differs between two output folders."""
    for folder in (old, new):
        if not folder.is_dir():  # said here: the reader's advice names compile's --out, which diff has not
            raise DiffError(f"{folder}: no such folder; diff compares two output folders written by `mdmgen compile`")
    with checked(old, check=Check.NAMES, error=DiffError) as before, \
            checked(new, check=Check.NAMES, error=DiffError) as after, \
            runscope.run():  # each value's shown fingerprint is hashed once per diff, not once per device
        return _compare(before, after)


@dataclass
class _Secrets:
    """What diff must not show: env variables whose values are secret, and the settings keys that
    embed a referenced secret, each with that secret's fingerprint on either side."""

    env: set[str]
    embedded: dict[str, list[tuple[SecretRef, str | None, str | None]]] = field(default_factory=dict)

    @classmethod
    def of(cls, old: CheckedOutput, new: CheckedOutput) -> _Secrets:
        found = cls(set(SECRET_ENV) | set(old.manifest.secret_env) | set(new.manifest.secret_env))
        before, after = old.manifest.secrets or {}, new.manifest.secrets or {}
        for label in sorted(set(before) | set(after)):
            old_fp = before[label].fingerprint[:SHOWN_FINGERPRINT] if label in before else None
            new_fp = after[label].fingerprint[:SHOWN_FINGERPRINT] if label in after else None
            keys = set(before[label].keys if label in before else []) | set(after[label].keys if label in after else [])
            for key in keys:
                found.embedded.setdefault(key, []).append((SecretRef.from_label(label), old_fp, new_fp))
        return found

    def note(self, key: str) -> str | None:
        """The line for a changed key that embeds a secret: its fingerprints, never the value."""
        refs = self.embedded.get(key)
        if not refs:
            return None
        parts = []
        for ref, old_fp, new_fp in refs:
            if old_fp == new_fp:
                parts.append(f"{ref.describe()} unchanged (fingerprint {old_fp})")
            else:
                parts.append(f"{ref.describe()} changed (fingerprint {old_fp or '(absent)'} -> {new_fp or '(absent)'})")
        if all(old_fp != new_fp for _ref, old_fp, new_fp in refs):
            return "; ".join(parts)  # e.g. "secret OTEL_TOKEN changed (fingerprint ab12cd34 -> 9f8e7d6c)"
        return "changed (secret value not shown; " + "; ".join(parts) + ")"


def _compare(old: CheckedOutput, new: CheckedOutput) -> TreeDiff:
    old_devices, new_devices = old.manifest.devices, new.manifest.devices
    secrets = _Secrets.of(old, new)
    rotated = _rotated(old, new)
    folded: dict[str, int] = dict.fromkeys(rotated, 0)
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
        by_rotation = _only_rotated(before, after, rotated)
        if by_rotation:
            for label in by_rotation:
                folded[label] += 1
            continue
        changes = [KeyChange(where="device", key=key, old=str(getattr(before, key)), new=str(getattr(after, key)))
                   for key in ("platform", "team") if getattr(before, key) != getattr(after, key)]
        changes += _files_changes(old, new, {n: device_path(serial, n) for n in before.files},
                                  {n: device_path(serial, n) for n in after.files}, secrets)
        if changes:
            result.changed.append(DeviceDiff(serial=serial, platform=after.platform.value, team=after.team,
                                             changes=changes))
    _summarise_rotation(result, len(set(old_devices) & set(new_devices)))
    after_secrets = new.manifest.secrets or {}
    for label, (old_fp, new_fp) in rotated.items():
        if folded[label]:
            result.secrets_changed.append(SecretChange(secret=label, keys=after_secrets[label].keys, old=old_fp,
                                                       new=new_fp, devices=folded[label]))
    for relpath in sorted(set(old.manifest.fleet) | set(new.manifest.fleet)):
        changes = _files_changes(old, new, {relpath: relpath} if relpath in old.manifest.fleet else {},
                                 {relpath: relpath} if relpath in new.manifest.fleet else {}, secrets)
        if changes:
            result.fleet.append(FleetFileDiff(path=relpath, changes=changes))
    return result


def _rotated(old: CheckedOutput, new: CheckedOutput) -> dict[str, tuple[str, str]]:
    """Secrets embedded on both sides whose keyed fingerprint changed, with the shown fingerprints."""
    before, after = old.manifest.secrets or {}, new.manifest.secrets or {}
    return {label: (before[label].fingerprint[:SHOWN_FINGERPRINT], after[label].fingerprint[:SHOWN_FINGERPRINT])
            for label in sorted(set(before) & set(after)) if before[label].fingerprint != after[label].fingerprint}


def _only_rotated(before: ManifestDevice, after: ManifestDevice, rotated: dict[str, tuple[str, str]]) -> list[str]:
    """The rotated secrets that explain all of a device's change, or [] when something else changed:
    same team, platform, file names and secrets, and the same digest of its files with the secrets
    blanked (``redacted``, written by the compile)."""
    if (not before.secrets or before.secrets != after.secrets or not before.redacted
            or before.redacted != after.redacted or (before.team, before.platform) != (after.team, after.platform)
            or set(before.files) != set(after.files)):
        return []
    return [label for label in before.secrets if label in rotated]


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
                   secrets: _Secrets) -> list[KeyChange]:
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
                      secrets: _Secrets) -> list[KeyChange]:
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


def _key_change(where: str, key: str, pair: tuple[Any, Any], secrets: _Secrets) -> KeyChange:
    old, new = pair
    note = secrets.note(key)
    if note is not None:  # never a hash of a value that holds a referenced secret
        return KeyChange(where=where, key=key, secret=True, note=note, old_present=pair[0] is not _ABSENT,
                         new_present=pair[1] is not _ABSENT)
    secret = key.startswith("env.") and key[4:] in secrets.env
    if secret:
        old = _fingerprint(old) if old is not _ABSENT else None
        new = _fingerprint(new) if new is not _ABSENT else None
    return KeyChange(where=where, key=key, secret=secret,
                     old=None if pair[0] is _ABSENT else old, new=None if pair[1] is _ABSENT else new,
                     old_present=pair[0] is not _ABSENT, new_present=pair[1] is not _ABSENT)


def _fingerprint(value: Any) -> str:
    return shown_fingerprint(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True))


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
