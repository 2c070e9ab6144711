"""What a Mac's Jamf profile is, what counts as a change to it, and the XML that writes it.

Pure functions and values, no I/O, so the rules are easy to test. Facts about Jamf come from
``shared/reference/jamf-pro-api.md`` (sections as ``§``).

* **Names.** A Mac's profile is ``mdmgen - Claude Code - <SERIAL>`` (:func:`profile_name`). Jamf
  names are unique per server, case-insensitively (§2.1), and serials are unique in the
  inventory, so the name is the key. Profiles with other names are never read or touched.
* **What counts as a change** (:func:`settings_digest`): the settings, meaning every key of the
  profile and of each payload *except* the metadata Jamf controls or derives (:data:`SERVER_KEYS`):
  the UUIDs and identifiers it rewrites on create (§6.1), the display name and description it
  fills from the profile's Jamf name and description, its own organization, and the keys it
  injects on read-back (``PayloadEnabled``, ``PayloadRemovalDisallowed``); the terraform providers
  mask the same keys (§6.2). Plus the Jamf fields themselves (:func:`jamf_fields`: name,
  description, category, level, distribution, removability, scope), which is where those
  derived values come from. So Jamf's rewrites are never a change, while a server that stores
  the *settings* differently is one, and the publisher stops loudly instead of rewriting forever.
* **What is sent back on update** (:class:`ServerKeys`): the stored top-level identifier, UUID,
  display name, description and organization, and each nested payload's identifier and UUID
  (by payload type and position), so macOS replaces the installed profile in place instead of
  installing a second one beside it (the "ghost profile", §6.1-6.2) and what the Mac shows does
  not flip between our values and Jamf's.
"""

from __future__ import annotations

import copy
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ...canonical import digest
from ...output import CheckedFile as LocalFile

NAME_PREFIX = "mdmgen - Claude Code - "
DISTRIBUTION = "Install Automatically"
LEVEL = "computer"

SERVER_KEYS = frozenset({"PayloadUUID", "PayloadIdentifier", "PayloadDisplayName", "PayloadDescription",
                         "PayloadOrganization", "PayloadEnabled", "PayloadRemovalDisallowed"})
"""Profile and payload keys Jamf rewrites, derives from its own fields, or injects (§6.1, §6.2)."""
_COPIED_BACK = ("PayloadIdentifier", "PayloadUUID", "PayloadDisplayName", "PayloadDescription",
                "PayloadOrganization")
_SCOPE_TARGETS = ("computer_groups", "buildings", "departments", "jss_users", "jss_user_groups")
_LIMITATIONS = ("users", "user_groups", "network_segments", "ibeacons")
_EXCLUSIONS = ("computers", "computer_groups", "buildings", "departments", "users", "user_groups",
               "network_segments", "ibeacons", "jss_users", "jss_user_groups")
_NAME = re.compile(rf"^{re.escape(NAME_PREFIX)}([A-Za-z0-9_-][A-Za-z0-9._-]*)$", re.IGNORECASE)


def profile_name(serial: str) -> str:
    """The Jamf profile name of a Mac: ``mdmgen - Claude Code - <SERIAL>``."""
    return f"{NAME_PREFIX}{serial}"


def serial_of(name: str) -> str | None:
    """The serial in one of our profile names (upper-cased), or None for any other profile."""
    match = _NAME.match(name)
    return match.group(1).upper() if match else None


def description(serial: str) -> str:
    return (f"Claude Code managed settings for {serial}, published by mdmgen from the compiled output. "
            "Changes made here are overwritten by the next publish.")


# --- what is compared ----------------------------------------------------------------------------


def settings_of(profile: dict[str, Any]) -> dict[str, Any]:
    """The profile without the keys Jamf controls (:data:`SERVER_KEYS`), at the top level and in
    each payload: what decides how the Mac behaves."""
    payloads = profile.get("PayloadContent")
    top = {key: value for key, value in profile.items() if key not in SERVER_KEYS and key != "PayloadContent"}
    top["PayloadContent"] = [
        {key: value for key, value in p.items() if key not in SERVER_KEYS} if isinstance(p, dict) else p
        for p in (payloads if isinstance(payloads, list) else [])]
    return top


def settings_digest(profile: dict[str, Any]) -> str:
    return digest(settings_of(profile))


def jamf_fields(name: str, desc: str, category: str | None, level: str, distribution: str, removable: Any,
                scope: dict[str, Any]) -> dict[str, Any]:
    """The profile's Jamf fields as compared; the category only when ``--category`` is given."""
    fields = {"name": name, "description": desc, "level": level.lower(), "distribution_method": distribution,
              "user_removable": removable, "scope": scope}
    if category is not None:
        fields["category"] = category.lower()
    return fields


@dataclass(frozen=True)
class ServerKeys:
    """The keys a stored profile carries that must be sent back on update (module docstring):
    top-level ones, and per nested payload (type, position among payloads of that type,
    identifier, UUID)."""

    top: tuple[tuple[str, Any], ...]
    nested: tuple[tuple[Any, int, Any, Any], ...]

    @classmethod
    def of(cls, profile: dict[str, Any]) -> ServerKeys:
        nested, seen = [], {}
        for payload in profile.get("PayloadContent") or []:
            if isinstance(payload, dict):
                kind = payload.get("PayloadType")
                seen[kind] = seen.get(kind, -1) + 1
                nested.append((kind, seen[kind], payload.get("PayloadIdentifier"), payload.get("PayloadUUID")))
        return cls(tuple((key, profile[key]) for key in _COPIED_BACK if profile.get(key)), tuple(nested))

    def apply(self, profile: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``profile`` carrying these keys (§6.2 rule 2)."""
        out = copy.deepcopy(profile)
        top = dict(self.top)
        if top.get("PayloadIdentifier") and top.get("PayloadUUID"):
            out.update(top)
        stored = {(kind, index): (ident, uid) for kind, index, ident, uid in self.nested}
        seen: dict[Any, int] = {}
        for payload in out.get("PayloadContent") or []:
            if isinstance(payload, dict):
                kind = payload.get("PayloadType")
                seen[kind] = seen.get(kind, -1) + 1
                ident, uid = stored.get((kind, seen[kind]), (None, None))
                if ident and uid:
                    payload["PayloadIdentifier"], payload["PayloadUUID"] = ident, uid
        return out


@dataclass(frozen=True)
class Wanted:
    """What one Mac's profile should be."""

    serial: str
    name: str
    file: LocalFile
    settings: str
    fields: dict[str, Any]
    computer_ids: tuple[int, ...]

    @property
    def sha256(self) -> str:
        return digest({"settings": self.settings, "fields": self.fields})


@dataclass(frozen=True)
class Stored:
    """One of our profiles as Jamf holds it; ``settings`` is None when its payload does not parse."""

    id: int
    serial: str
    settings: str | None
    fields: dict[str, Any]
    server_keys: ServerKeys | None

    @property
    def sha256(self) -> str | None:
        return None if self.settings is None else digest({"settings": self.settings, "fields": self.fields})

    def differences(self, want: Wanted) -> list[str]:
        """What differs from ``want``, for a message."""
        differs = ["the settings"] if self.settings != want.settings else []
        return differs + [key for key in sorted(want.fields) if self.fields.get(key) != want.fields[key]]


@dataclass(frozen=True)
class Listed:
    """One of our profiles in Jamf's list: its id, and what was read of it (None when it was not
    read: the profile of a Mac that left the inventory, only ever deleted)."""

    id: int
    stored: Stored | None


# --- scope --------------------------------------------------------------------------------------


def entries(value: Any) -> list[dict[str, Any]]:
    """The entries of a Classic JSON list, tolerating the ``{"size": n, "computer": {...}}`` forms."""
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    if isinstance(value, dict):
        return [e for key, v in value.items() if key != "size" for e in entries(v if isinstance(v, list) else [v])]
    return []


def stored_scope(scope: Any) -> dict[str, Any]:
    """A scope reduced to what decides who gets the profile: the computer ids, and anything else."""
    scope = scope if isinstance(scope, dict) else {}
    other = [key for key in ("all_computers", "all_jss_users") if scope.get(key) in (True, "true")]
    for key in _SCOPE_TARGETS:
        other += [f"{key}:{e.get('id', e.get('name'))}" for e in entries(scope.get(key))]
    for section, keys in (("limitations", _LIMITATIONS), ("exclusions", _EXCLUSIONS)):
        block = scope.get(section) if isinstance(scope.get(section), dict) else {}
        for key in keys:
            other += [f"{section}.{key}:{e.get('id', e.get('name'))}" for e in entries(block.get(key))]
    ids = sorted(int(e["id"]) for e in entries(scope.get("computers")) if str(e.get("id", "")).lstrip("-").isdigit())
    return {"computers": ids, "other": sorted(other)}


def wanted_scope(computer_ids: Iterable[int]) -> dict[str, Any]:
    return {"computers": sorted(computer_ids), "other": []}


def _scope_xml(computer_ids: Iterable[int]) -> ET.Element:
    """Exactly these computers and nothing else, every list stated so nothing stays from before."""
    scope = ET.Element("scope")
    ET.SubElement(scope, "all_computers").text = "false"
    ET.SubElement(scope, "all_jss_users").text = "false"
    computers = ET.SubElement(scope, "computers")
    for cid in computer_ids:
        ET.SubElement(ET.SubElement(computers, "computer"), "id").text = str(cid)
    for key in _SCOPE_TARGETS:
        ET.SubElement(scope, key)
    for section, keys in (("limitations", _LIMITATIONS), ("exclusions", _EXCLUSIONS)):
        block = ET.SubElement(scope, section)
        for key in keys:
            ET.SubElement(block, key)
    return scope


def profile_xml(want: Wanted, *, category: str | None, payload: str | None, redeploy: str | None) -> bytes:
    """The Classic API body that creates or updates ``want`` (§2.2, §2.3). ``payload`` None leaves
    the stored payload as it is; ``redeploy`` None sends no ``redeploy_on_update``."""
    root = ET.Element("os_x_configuration_profile")
    general = ET.SubElement(root, "general")
    ET.SubElement(general, "name").text = want.name
    ET.SubElement(general, "description").text = description(want.serial)
    if category is not None:
        ET.SubElement(ET.SubElement(general, "category"), "name").text = category
    ET.SubElement(general, "distribution_method").text = DISTRIBUTION
    ET.SubElement(general, "user_removable").text = "false"
    ET.SubElement(general, "level").text = LEVEL
    if redeploy is not None:
        ET.SubElement(general, "redeploy_on_update").text = redeploy
    if payload is not None:
        ET.SubElement(general, "payloads").text = payload  # escaped by ElementTree (§2.2)
    root.append(_scope_xml(want.computer_ids))
    return ('<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(root, encoding="unicode")).encode("utf-8")
