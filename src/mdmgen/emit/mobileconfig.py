"""The macOS configuration profile carrying one device's managed settings.

Shape (shared/reference/claude-code-managed-settings.md section 4.3): a System-scope
``Configuration`` profile with one ``com.apple.ManagedClient.preferences`` payload whose content is
``com.anthropic.claudecode -> Forced -> [ {mcx_preference_settings: <settings>} ]``. Any other
nesting installs without error and is silently never applied, so ``check_profile`` re-reads
what was written and verifies that exact chain.

Identifiers are derived from the org prefix and the serial, and UUIDs are uuid5 of those
identifiers: stable across runs, so MDMs update the installed profile in place.
"""

from __future__ import annotations

import plistlib
import uuid
from dataclasses import dataclass
from typing import Any

from ..models import Settings, unencodable_text

__all__ = ["unencodable_text"]  # the character rule every profile string obeys (see dumps)

PREFERENCE_DOMAIN = "com.anthropic.claudecode"
MCX_PAYLOAD_TYPE = "com.apple.ManagedClient.preferences"
# Fixed namespace so every mdmgen installation derives the same UUID from the same identifier.
UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://mdmgen.invalid/payload-uuid")


@dataclass(frozen=True)
class ProfileMeta:
    """What names a profile: everything but the settings."""

    identifier: str
    display_name: str
    organization: str

    @property
    def payload_identifier(self) -> str:
        return f"{self.identifier}.prefs"


METADATA_KEYS = ("PayloadIdentifier", "PayloadUUID", "PayloadDisplayName", "PayloadOrganization",
                 "PayloadScope", "PayloadType", "PayloadVersion")
"""The keys :func:`build` writes beside the settings, on the profile and on its payload (what
``diff`` shows as profile metadata)."""


def profile_identifier(prefix: str, serial: str) -> str:
    return f"{prefix}.claudecode.{serial}"


def stable_uuid(identifier: str) -> str:
    return str(uuid.uuid5(UUID_NAMESPACE, identifier)).upper()


def build(settings: Settings, meta: ProfileMeta) -> dict[str, Any]:
    payload = {
        "PayloadContent": {PREFERENCE_DOMAIN: {"Forced": [{"mcx_preference_settings": settings}]}},
        "PayloadDisplayName": meta.display_name,
        "PayloadIdentifier": meta.payload_identifier,
        "PayloadOrganization": meta.organization,
        "PayloadType": MCX_PAYLOAD_TYPE,
        "PayloadUUID": stable_uuid(meta.payload_identifier),
        "PayloadVersion": 1,
    }
    return {
        "PayloadContent": [payload],
        "PayloadDisplayName": meta.display_name,
        "PayloadIdentifier": meta.identifier,
        "PayloadOrganization": meta.organization,
        "PayloadScope": "System",
        "PayloadType": "Configuration",
        "PayloadUUID": stable_uuid(meta.identifier),
        "PayloadVersion": 1,
    }


def escape_string(value: str) -> bytes:
    """A printable string as ``plistlib`` writes it in a ``<string>`` (``&``, ``<`` and ``>``
    escaped); the shape fast path fills its slots with this, only with printable strings."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").encode("utf-8")


def dumps(settings: Settings, meta: ProfileMeta) -> bytes:
    """XML plist via the standard library, which escapes '&', '<' and '>' in keys and strings.

    Every key and string reaching here obeys :func:`unencodable_text` (checked where it enters:
    the policy loader, the inventory, ``--var`` and each template's output), which is what makes
    the profile's settings read back equal to managed-settings.json; a faster writer must keep
    to the same rule."""
    return plistlib.dumps(build(settings, meta), fmt=plistlib.FMT_XML, sort_keys=True)


def check_profile(data: bytes) -> list[str]:
    """Re-read a profile and return what is wrong with its shape (empty when it is right)."""
    try:
        profile = plistlib.loads(data)
    except Exception as exc:  # plistlib raises several types for broken XML
        return [f"does not parse as a plist: {exc}"]
    problems: list[str] = []
    if profile.get("PayloadType") != "Configuration" or profile.get("PayloadVersion") != 1:
        problems.append("top level must be PayloadType Configuration, PayloadVersion 1")
    if profile.get("PayloadScope") != "System":
        problems.append("PayloadScope must be System")
    for key in ("PayloadIdentifier", "PayloadUUID", "PayloadDisplayName"):
        if not profile.get(key):
            problems.append(f"{key} must be set")
    payloads = profile.get("PayloadContent")
    if not isinstance(payloads, list) or len(payloads) != 1:
        return [*problems, "PayloadContent must hold exactly one payload"]
    payload = payloads[0]
    if payload.get("PayloadType") != MCX_PAYLOAD_TYPE:
        problems.append(f"payload type must be {MCX_PAYLOAD_TYPE}")
    ids = [profile.get("PayloadIdentifier"), payload.get("PayloadIdentifier")]
    uuids = [profile.get("PayloadUUID"), payload.get("PayloadUUID")]
    if len(set(ids)) != 2 or len(set(uuids)) != 2:
        problems.append("identifiers and UUIDs must be unique within the profile")
    try:
        forced = payload["PayloadContent"][PREFERENCE_DOMAIN]["Forced"]
        if not (isinstance(forced, list) and len(forced) == 1
                and isinstance(forced[0]["mcx_preference_settings"], dict)):
            raise TypeError
    except (KeyError, TypeError, IndexError):
        problems.append(f"payload must nest {PREFERENCE_DOMAIN} -> Forced -> "
                        "[{mcx_preference_settings}]")
    return problems


def settings_of(data: bytes) -> Settings:
    """The managed settings a profile carries (for checks, diffs and publishers)."""
    profile = plistlib.loads(data)
    return profile["PayloadContent"][0]["PayloadContent"][PREFERENCE_DOMAIN]["Forced"][0][
        "mcx_preference_settings"]
