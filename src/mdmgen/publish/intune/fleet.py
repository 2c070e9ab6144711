"""What the output folder says for Intune, per team: the Macs (settings and inventory email), the PCs'
files, the team -> group mapping, and the team's profile built from a representative Mac.

The publisher reads only the checked output folder; ``intune/teams.json`` is how the compile
carries the policy's ``intune:`` section and the Macs' emails into it (``emit.registry``).

**One team, whatever its spellings.** HR may write one team ``Security`` on some rows and
``security`` on others; two profiles assigned to one group would give each of its Macs two
conflicting ``com.anthropic.claudecode`` profiles. So devices are grouped here, and only here, by
:func:`team_of` (the one rule, ``models.team_key``), and each team is named by one
display spelling (:func:`display_names`), the one the compile gave its devices.
"""

from __future__ import annotations

import json
import plistlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ...emit import mobileconfig, registry
from ...models import Platform, most_used_spelling, team_key
from ...output import CheckedOutput as LocalOutput
from ...output import device_path
from ..base import LocalOutputError
from . import objects, proof


@dataclass(frozen=True)
class Fleet:
    """What the output folder says, per team; every team is named by its display spelling."""

    macs: dict[str, list[proof.Mac]]
    mac_profiles: dict[str, bytes]
    """The representative Mac's compiled profile, per team (for the profile's names)."""
    pcs: dict[str, dict[str, bytes]]
    groups: dict[str, str]
    """The Entra group (displayName or object id) each team is served by: its ``intune: groups:``
    entry, else the team's own name."""
    pseudonymised: bool
    secret_env: tuple[str, ...]

    @property
    def teams(self) -> list[str]:
        return sorted(set(self.macs) | set(self.pcs))


# --- which team a device is in ----------------------------------------------------------------------


def team_of(team: str) -> str:
    """The key Intune groups a device's team by: the one place that decides it (NFC, case-folded,
    trimmed), so the publisher, its proof and the object names cannot disagree."""
    return team_key(team)


def display_names(spellings: Iterable[str]) -> dict[str, str]:
    """Team key -> the one spelling its Intune objects are named with: the devices' own.

    The compile already gives every device of a team one display spelling (``inventory.fold_teams``:
    the policy's, from ``teams:`` or ``intune: groups:``, else the most used), so the objects are
    named as the devices' ``team`` attribute says. A folder written otherwise (by hand, or by an
    older mdmgen) still gets one name per team, by the same most-used rule."""
    counts: dict[str, Counter[str]] = {}
    for spelling in spellings:
        counts.setdefault(team_of(spelling), Counter())[spelling] += 1
    return {key: most_used_spelling(found) for key, found in counts.items()}


def team_group_names(mapping: Mapping[str, str], names: Mapping[str, str]) -> dict[str, str]:
    """Each team's group as the policy names it (its display name when unmapped). One team mapped
    twice (``Security`` and ``security``) to two different groups is refused: either would be a guess."""
    wanted: dict[str, str] = {}
    for spelling, group in sorted(mapping.items()):
        key = team_of(spelling)
        if key not in names:
            continue
        other = wanted.setdefault(key, group)
        if other != group:
            twice = sorted(s for s in mapping if team_of(s) == key)
            raise ValueError(f"groups: {' and '.join(map(repr, twice))} are one team (names ignore case) mapped to "
                             f"different groups, {other!r} and {group!r}; keep one under 'intune: groups:' in the "
                             "policy and compile again")
    return {names[key]: wanted.get(key, names[key]) for key in sorted(names)}


# --- the output folder ------------------------------------------------------------------------------


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
    mapping = {str(k): str(v) for k, v in facts["groups"].items()}
    devices = sorted(local.manifest.devices.items())
    names = display_names(device.team for _serial, device in devices)
    macs: dict[str, list[proof.Mac]] = {}
    profiles: dict[str, bytes] = {}
    pcs: dict[str, dict[str, bytes]] = {}
    settings_name = registry.SETTINGS_JSON.name
    for serial, device in devices:
        if device.platform not in (Platform.MACOS, Platform.WINDOWS) or settings_name not in device.files:
            continue
        team = names[team_of(device.team)]
        file = local.file(device_path(serial, settings_name))
        assert file is not None
        data = file.read()
        if device.platform is Platform.WINDOWS:
            pcs.setdefault(team, {})[serial] = data
            continue
        try:
            settings = json.loads(data)
        except ValueError:
            raise LocalOutputError(f"{file.path}: not valid JSON") from None
        email = emails.get(serial)
        macs.setdefault(team, []).append(proof.Mac(serial, settings, email if isinstance(email, str) else None))
        if team not in profiles:
            profile = local.file(device_path(serial, registry.MAC_PROFILE.name))
            if profile is None:
                raise LocalOutputError(f"{local.root}: the Mac {serial} has no {registry.MAC_PROFILE.name}")
            profiles[team] = profile.read()
    served = set(macs) | set(pcs)
    try:
        groups = {team: group for team, group in team_group_names(mapping, names).items() if team in served}
    except ValueError as exc:
        raise LocalOutputError(f"{facts_file.path}: {exc}") from None
    return Fleet(macs, profiles, pcs, groups, bool(facts.get("pseudonymised")), tuple(local.manifest.secret_env))


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
