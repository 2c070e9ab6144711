"""What the output folder says for Intune, per team: the Macs (settings and inventory email), the PCs'
files, the team -> group mapping, and the team's profile built from a representative Mac.

The publisher reads only the checked output folder; ``intune/teams.json`` is how the compile
carries the policy's ``intune:`` section and the Macs' emails into it (``emit.registry``).
"""

from __future__ import annotations

import json
import plistlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...emit import mobileconfig, registry
from ...models import Platform
from ...output import CheckedOutput as LocalOutput
from ...output import device_path
from ..base import LocalOutputError
from . import objects, proof


@dataclass(frozen=True)
class Fleet:
    """What the output folder says, per team."""

    macs: dict[str, list[proof.Mac]]
    mac_profiles: dict[str, bytes]
    """The representative Mac's compiled profile, per team (for the profile's names)."""
    pcs: dict[str, dict[str, bytes]]
    groups: dict[str, str]
    pseudonymised: bool
    secret_env: tuple[str, ...]

    @property
    def teams(self) -> list[str]:
        return sorted(set(self.macs) | set(self.pcs))


# --- --------------------------------------------------------------------------


def read_fleet(local: LocalOutput) -> Fleet:
    """Macs and PCs per team, with what the proof needs, from the checked output folder."""
    facts_file = local.file(registry.INTUNE_TEAMS_FILE)
    if facts_file is None:
        raise LocalOutputError(f"{local.root}: no {registry.INTUNE_TEAMS_FILE}; add an 'intune:' section to the "
                               "policy ('intune: {}' is enough; 'intune: {groups: {TEAM: GROUP}}' maps teams to "
                               "Entra groups) and compile again")
    try:
        facts = registry.INTUNE_TEAMS.read_semantic(facts_file.read())["intune"]
    except ValueError as exc:
        raise LocalOutputError(f"{facts_file.path}: {exc}") from None
    emails: Mapping[str, Any] = facts["mac_emails"]
    macs: dict[str, list[proof.Mac]] = {}
    profiles: dict[str, bytes] = {}
    pcs: dict[str, dict[str, bytes]] = {}
    settings_name = registry.SETTINGS_JSON.name
    for serial, device in sorted(local.manifest.devices.items()):
        if device.platform not in (Platform.MACOS, Platform.WINDOWS) or settings_name not in device.files:
            continue
        file = local.file(device_path(serial, settings_name))
        assert file is not None
        data = file.read()
        if device.platform is Platform.WINDOWS:
            pcs.setdefault(device.team, {})[serial] = data
            continue
        try:
            settings = json.loads(data)
        except ValueError:
            raise LocalOutputError(f"{file.path}: not valid JSON") from None
        email = emails.get(serial)
        macs.setdefault(device.team, []).append(proof.Mac(serial, settings, email if isinstance(email, str) else None))
        if device.team not in profiles:
            profile = local.file(device_path(serial, registry.MAC_PROFILE.name))
            if profile is None:
                raise LocalOutputError(f"{local.root}: the Mac {serial} has no {registry.MAC_PROFILE.name}")
            profiles[device.team] = profile.read()
    return Fleet(macs, profiles, pcs, {str(k): str(v) for k, v in facts["groups"].items()},
                 bool(facts.get("pseudonymised")), tuple(local.manifest.secret_env))


def team_profile(representative: bytes, serial: str, team: str, template: dict[str, Any]) -> bytes:
    """The team's profile: the representative Mac's names (organisation, display name, identifier
    prefix), a team identifier, and the tokenised settings. Never signed: it holds tokens."""
    profile = plistlib.loads(representative)
    identifier = str(profile.get("PayloadIdentifier", "mdmgen.claudecode"))
    base = identifier[: -len(serial) - 1] if identifier.endswith("." + serial) else identifier
    shown = str(profile.get("PayloadDisplayName") or "Claude Code managed settings")
    meta = mobileconfig.ProfileMeta(identifier=f"{base}.team.{objects.slug(team)}", display_name=shown,
                                    organization=str(profile.get("PayloadOrganization") or ""))
    return mobileconfig.dumps(template, meta)


def payload_name(payload: bytes) -> str:
    return str(plistlib.loads(payload).get("PayloadDisplayName"))
