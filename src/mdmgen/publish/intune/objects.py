"""The Intune objects mdmgen owns: their names, their bodies, and what counts as a change.

Pure values, no I/O. Facts: ``shared/reference/intune-graph.md`` §2 (``macOSCustomConfiguration``)
and §3.2 (``deviceManagementScript``).

* **Names.** Every object is named ``mdmgen - Claude Code - <team> - <platform...>``; the name is the
  key (IntuneCD matches by name and type too, §6). Objects with other names are never touched.
* **What counts as a change**: the decoded content (the profile or the script, byte for byte),
  the fields mdmgen sets, and the set of groups it is assigned to. Server-managed properties
  (``id``, dates, ``version``) are never compared (IntuneCommander #115, §6).
* **The guard.** Each object's description says how many devices it serves, so ``--prune``'s
  deletion guard can count devices, as for every other target, although objects are per team.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from ...canonical import digest

NAME_PREFIX = "mdmgen - Claude Code - "
MACOS_TYPE = "#microsoft.graph.macOSCustomConfiguration"
SCRIPT_TYPE = "#microsoft.graph.deviceManagementScript"
GROUP_TARGET = "#microsoft.graph.groupAssignmentTarget"
CONFIGS = "/beta/deviceManagement/deviceConfigurations"
SCRIPTS = "/beta/deviceManagement/deviceManagementScripts"
_SERVES = re.compile(r"\bfor (\d+) device\(s\)")


def macos_name(team: str) -> str:
    return f"{NAME_PREFIX}{team} - macOS"


def windows_name(team: str) -> str:
    """The name of a team's Windows script, or of every part of it before `` (part <bits>)``."""
    return f"{NAME_PREFIX}{team} - Windows"


_PART = re.compile(r" \(part [01]+\)\Z")


def windows_base(name: str) -> str:
    """``windows_name(team)`` for the name of any part of a team's Windows script."""
    return _PART.sub("", name)


def slug(team: str) -> str:
    """A file- and identifier-safe form of a team name, unique by a short digest of the exact name."""
    words = re.sub(r"[^a-z0-9]+", "-", team.lower()).strip("-")[:40] or "team"
    return f"{words}-{hashlib.sha256(team.encode('utf-8')).hexdigest()[:8]}"


def description(team: str, platform: str, devices: int) -> str:
    return (f"Claude Code managed settings of team {team!r} ({platform}) for {devices} device(s), published by "
            "mdmgen from the compiled output. Changes made here are overwritten by the next publish.")


def devices_served(text: Any) -> int:
    """How many devices an object serves, from its description (0 when not one of ours)."""
    found = _SERVES.search(text) if isinstance(text, str) else None
    return int(found.group(1)) if found else 0


@dataclass(frozen=True)
class WantedObject:
    """One object as it should be: ``fields`` are the writable properties mdmgen sets (content
    excluded), ``content`` the exact bytes a device gets, ``groups`` the assignment set."""

    kind: str  # "macos" | "windows"
    name: str
    team: str
    fields: dict[str, Any]
    content: bytes
    groups: tuple[str, ...]
    devices: int
    serials: tuple[str, ...] = ()

    @property
    def collection(self) -> str:
        return CONFIGS if self.kind == "macos" else SCRIPTS

    @property
    def content_key(self) -> str:
        return "payload" if self.kind == "macos" else "scriptContent"

    @property
    def odata_type(self) -> str:
        return MACOS_TYPE if self.kind == "macos" else SCRIPT_TYPE

    @property
    def sha256(self) -> str:
        return state_digest(self.fields, self.content, self.groups)

    def body(self, *, create: bool) -> dict[str, Any]:
        data = {"@odata.type": self.odata_type, **self.fields,
                self.content_key: base64.b64encode(self.content).decode("ascii")}
        if create and self.kind == "macos":
            data["deploymentChannel"] = "deviceChannel"  # §2.1: fixed at creation; a device profile
        return data

    def assign_body(self) -> dict[str, Any]:
        entries = [{"target": {"@odata.type": GROUP_TARGET, "groupId": gid}} for gid in self.groups]
        key = "assignments" if self.kind == "macos" else "deviceManagementScriptAssignments"
        return {key: entries}


@dataclass(frozen=True)
class RemoteObject:
    """One of our objects as Intune holds it. ``content`` None: not readable (always rewritten)."""

    kind: str
    id: str
    name: str
    fields: dict[str, Any]
    content: bytes | None
    groups: tuple[str, ...]
    """Group ids it is assigned to; any other kind of target is kept as ``<type>`` so it differs."""
    devices: int = 0
    extra: tuple[str, ...] = field(default=())

    @property
    def sha256(self) -> str | None:
        return None if self.content is None else state_digest(self.fields, self.content, self.groups)


def state_digest(fields: dict[str, Any], content: bytes, groups: tuple[str, ...]) -> str:
    return digest({"fields": fields, "content": hashlib.sha256(content).hexdigest(), "groups": sorted(groups)})


def macos_fields(team: str, devices: int, payload_name: str) -> dict[str, Any]:
    return {"displayName": macos_name(team), "description": description(team, "macOS", devices),
            "payloadName": payload_name, "payloadFileName": f"mdmgen-claude-code-{slug(team)}.mobileconfig",
            "roleScopeTagIds": ["0"]}


def script_fields(team: str, display_name: str, file_name: str, devices: int) -> dict[str, Any]:
    return {"displayName": display_name, "description": description(team, "Windows", devices),
            "runAsAccount": "system", "enforceSignatureCheck": False, "fileName": file_name,
            "roleScopeTagIds": ["0"], "runAs32Bit": False}


def compared_fields(kind: str, stored: dict[str, Any]) -> dict[str, Any]:
    """The fields of a stored object that mdmgen sets, as compared with a wanted one."""
    keys = (("displayName", "description", "payloadName", "payloadFileName", "roleScopeTagIds") if kind == "macos"
            else ("displayName", "description", "runAsAccount", "enforceSignatureCheck", "fileName",
                  "roleScopeTagIds", "runAs32Bit"))
    return {key: stored.get(key) for key in keys}


def decoded_content(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return None


def assigned_groups(assignments: list[dict[str, Any]]) -> tuple[str, ...]:
    out = []
    for entry in assignments:
        target = entry.get("target") if isinstance(entry.get("target"), dict) else {}
        kind = str(target.get("@odata.type") or "")
        if kind == GROUP_TARGET and target.get("groupId") and target.get(
                "deviceAndAppManagementAssignmentFilterType", "none") in ("none", None):
            out.append(str(target["groupId"]))
        else:
            out.append(f"<{kind or 'unknown target'}>")
    return tuple(sorted(out))
