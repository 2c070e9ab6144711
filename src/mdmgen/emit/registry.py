"""The artifact registry: every kind of file mdmgen writes, described in one place.

For each kind the entry says its name (the file name in a device's folder, or for a fleet-level
file its path from the output folder's root), who gets it (devices of some platforms, or the
fleet once), where a device installs it, its content type, how to read it back semantically, and
the emitter that makes its bytes. ``pipeline``, ``output``, ``diff``, ``preflight`` and the
publishers ask the registry instead of knowing file names or suffixes, so adding a kind of file
is one :func:`register` call and its emitter, plus the publishers that want it.

Emitters are pure: the same input gives the same bytes (or None: this kind has nothing to
say for that input, for example a collector file when the policy names no collector).

A *derived* kind (``derived_from`` set: the signed profile) is made from another file of the
same device by a stage after the compile (``signing``), not by an emitter, and is never
canonical: the manifest records what it was made from under the device's ``derived`` map, the
checked reader accepts it and checks that it embeds its source, ``diff`` compares the source
instead (a derived kind has no sections), S3 uploads it with its content type, and Jamf, which
asks for ``MAC_PROFILE`` by name, never sees it.
"""

from __future__ import annotations

import json
import plistlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..models import Platform, fleet_relpath, unsafe_name
from . import cms, mobileconfig, settings_json
from .collector import dashboards, k8s, otel_config, prometheus_rules
from .inputs import DeviceInput as DeviceInput  # re-exported: callers build one to call emit_device
from .inputs import FleetInput as FleetInput  # and emit_fleet (it lives below the collector emitters)

Semantic = dict[str, Any]
"""What a file means, by section: ``settings`` (the managed settings it carries, compared across
kinds by diff) and any kind-specific section (a profile's ``metadata``), each a JSON-like value."""

SETTINGS_SECTION = "settings"


def _depth_guarded(read: Callable[[bytes], Semantic]) -> Callable[[bytes], Semantic]:
    def guarded(data: bytes) -> Semantic:
        try:
            return read(data)
        except RecursionError:
            raise ValueError("nested thousands of levels deep, so not a file mdmgen wrote") from None

    return guarded


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of output file.

    ``platforms`` is who gets a device-level kind; ``fleet`` kinds are written once, at ``name``
    (a path with a folder, such as ``collector/otel.yaml``). ``read_semantic`` raises ValueError
    with a one-line reason when the bytes are not a valid file of this kind. ``sections`` names,
    for diff, where a changed value of each section is (``profile settings``), and ``label`` how
    the file itself is called when it appears or disappears.
    """

    name: str
    content_type: str
    read_semantic: Callable[[bytes], Semantic]
    emit: Callable[[Any], bytes | None]
    label: str
    platforms: frozenset[Platform] = frozenset()
    fleet: bool = False
    install_paths: Mapping[Platform, str] = field(default_factory=dict)
    sections: Mapping[str, str] = field(default_factory=dict)
    derived_from: str | None = None
    """For a derived kind: the name of the device file it is made from (a signed profile is made
    from the unsigned one). A derived file is not emitted with the others: a later stage makes it
    (``signing``), only when asked to, and the manifest records it under ``derived``. It is never
    canonical: ``diff`` reads its source, and a publisher that must not get it (Jamf re-signs
    profiles itself) asks for the source kind by name."""
    escape: Callable[[str], bytes] | None = None
    """How ``emit`` writes a printable string value of the settings into the file: what the shape
    fast path (``shapes``) fills each slot with. None: this kind's files are always made by
    ``emit`` itself, and a platform that gets it takes the slow path."""

    def __post_init__(self) -> None:
        # A file nested thousands of levels deep (hand-made, in a folder diff or a publisher reads) makes
        # Python's JSON and YAML readers raise RecursionError: for every kind, that is "not valid" too.
        object.__setattr__(self, "read_semantic", _depth_guarded(self.read_semantic))
        if self.fleet:
            fleet_relpath(self.name)
            if self.platforms:
                raise ValueError(f"fleet kind {self.name!r}: is written once for the fleet, not per platform")
        elif unsafe_name(self.name) or not self.platforms:
            raise ValueError(f"device kind {self.name!r}: needs a safe file name and its platforms")

    def applies_to(self, platform: Platform) -> bool:
        return not self.fleet and platform in self.platforms

    def install_path(self, platform: Platform) -> str | None:
        """Where a device of ``platform`` installs this file; None when it is not installed as a file
        (a profile goes through the MDM)."""
        return self.install_paths.get(platform)


_KINDS: dict[str, ArtifactKind] = {}


def register(kind: ArtifactKind) -> ArtifactKind:
    """Add a kind; its name must be new (two kinds cannot share a file)."""
    if kind.name in _KINDS:
        raise ValueError(f"an artifact kind named {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


@contextmanager
def registered(kind: ArtifactKind) -> Iterator[ArtifactKind]:
    """A kind registered for the duration of a block (tests add kinds that exist only in them)."""
    register(kind)
    try:
        yield kind
    finally:
        del _KINDS[kind.name]


def get(name: str) -> ArtifactKind | None:
    """The kind written as ``name`` (a device file name, or a fleet file's path); None if unknown."""
    return _KINDS.get(name)


def derived_kinds() -> list[ArtifactKind]:
    """Device-level kinds made from another device file by a later stage (see ``derived_from``)."""
    return [k for k in _KINDS.values() if k.derived_from is not None and not k.fleet]


def device_kinds() -> list[ArtifactKind]:
    """Device-level kinds in the order they were registered (diff lists changes in this order)."""
    return [k for k in _KINDS.values() if not k.fleet]


def fleet_kinds() -> list[ArtifactKind]:
    return [k for k in _KINDS.values() if k.fleet]


def emit_device(given: DeviceInput) -> dict[str, bytes]:
    """The bytes of every file one device gets, by file name."""
    files = {}
    for kind in device_kinds():
        if kind.applies_to(given.device.platform) and kind.derived_from is None:
            data = kind.emit(given)
            if data is not None:
                files[kind.name] = data
    return files


def emit_fleet(given: FleetInput) -> dict[str, bytes]:
    """The bytes of every fleet-level file, by path from the output folder's root."""
    files = {}
    for kind in fleet_kinds():
        data = kind.emit(given)
        if data is not None:
            files[kind.name] = data
    return files


# --- the kinds mdmgen ships -----------------------------------------------------------------------


def _read_settings_json(data: bytes) -> Semantic:
    try:
        settings = json.loads(data.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(settings, dict):
        raise ValueError("not a JSON object")
    return {SETTINGS_SECTION: settings}




def _read_profile(data: bytes) -> Semantic:
    """The profile's settings, and its metadata: top-level and payload ``Payload*`` keys."""
    problems = mobileconfig.check_profile(data)
    if problems:
        raise ValueError(problems[0])
    profile = plistlib.loads(data)
    payload = profile["PayloadContent"][0]
    meta = {key: profile[key] for key in mobileconfig.METADATA_KEYS if key in profile}
    meta.update({f"payload.{key}": payload[key] for key in mobileconfig.METADATA_KEYS if key in payload})
    return {SETTINGS_SECTION: mobileconfig.settings_of(data), "metadata": meta}


def _emit_profile(given: DeviceInput) -> bytes:
    org = given.policy.org
    meta = mobileconfig.ProfileMeta(
        identifier=mobileconfig.profile_identifier(org.identifier_prefix, given.device.serial),
        display_name=org.display_name, organization=org.name)
    return mobileconfig.dumps(given.settings, meta)


SETTINGS_JSON = register(ArtifactKind(
    name="managed-settings.json",
    content_type="application/json",
    read_semantic=_read_settings_json,
    emit=lambda given: settings_json.dumps(given.settings),
    escape=settings_json.escape_string,
    label="managed-settings.json",
    platforms=frozenset(Platform),
    install_paths={
        Platform.MACOS: "/Library/Application Support/ClaudeCode/managed-settings.json",
        Platform.LINUX: "/etc/claude-code/managed-settings.json",
        Platform.WSL: "/etc/claude-code/managed-settings.json",
        Platform.WINDOWS: "C:\\Program Files\\ClaudeCode\\managed-settings.json",
    },
    sections={SETTINGS_SECTION: "managed-settings.json"},
))
"""Every device's settings file, the one Claude Code reads on every platform."""

MAC_PROFILE = register(ArtifactKind(
    name="claude-code.mobileconfig",
    content_type="application/x-apple-aspen-config",
    read_semantic=_read_profile,
    emit=_emit_profile,
    escape=mobileconfig.escape_string,
    label="profile",
    platforms=frozenset({Platform.MACOS}),
    sections={SETTINGS_SECTION: "profile settings", "metadata": "profile"},
))
"""A Mac's configuration profile, deployed by the MDM (Jamf publishes it)."""


def _read_signed_profile(data: bytes) -> Semantic:
    """A signed profile means nothing of its own: its settings are its source's, which ``diff``
    compares. It must still be a CMS SignedData carrying a valid profile."""
    problems = mobileconfig.check_profile(cms.embedded_content(data))
    if problems:
        raise ValueError(f"the embedded profile: {problems[0]}")
    return {}


def _not_emitted(_given: DeviceInput) -> None:
    return None  # made by ``signing`` from the unsigned profile, after the compile


SIGNED_MAC_PROFILE = register(ArtifactKind(
    name="claude-code.signed.mobileconfig",
    content_type=MAC_PROFILE.content_type,
    read_semantic=_read_signed_profile,
    emit=_not_emitted,
    label="signed profile",
    platforms=MAC_PROFILE.platforms,
    derived_from=MAC_PROFILE.name,
))
"""A Mac's profile as a DER CMS SignedData (``compile --sign-cert``), for channels that take a signed
profile: opened by hand, most MDMs' custom upload, S3. Jamf gets the unsigned one (it re-signs)."""


# --- Intune ---------------------------------------------------------------------------------------

INTUNE_TEAMS_FILE = "intune/teams.json"


def _emit_intune_teams(given: FleetInput) -> bytes | None:
    """What ``mdmgen publish intune`` needs beyond the device files, since it reads only the output
    folder: the policy's team -> group mapping, and each Mac's inventory email (what its Entra
    ``mail`` must equal for Intune's ``{{mail}}`` to give it its compiled settings). With
    ``pseudonymise_email`` on, no address is written (the publisher then refuses those Macs).
    Written only when the policy has an ``intune:`` section."""
    intune = given.policy.intune
    if intune is None:
        return None
    pseudonymised = given.policy.pseudonymise_email
    emails = {} if pseudonymised else {d.serial: d.user_email for d in given.devices
                                       if d.platform is Platform.MACOS}
    data = {"groups": dict(sorted(intune.groups.items())), "pseudonymised": pseudonymised,
            "mac_emails": dict(sorted(emails.items()))}
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _read_intune_teams(data: bytes) -> Semantic:
    try:
        value = json.loads(data.decode("utf-8"))
    except ValueError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not (isinstance(value, dict) and isinstance(value.get("groups"), dict)
            and isinstance(value.get("mac_emails"), dict)):
        raise ValueError("not an mdmgen intune/teams.json (groups, mac_emails)")
    return {"intune": value}


INTUNE_TEAMS = register(ArtifactKind(
    name=INTUNE_TEAMS_FILE,
    content_type="application/json",
    read_semantic=_read_intune_teams,
    emit=_emit_intune_teams,
    label="Intune team mapping",
    fleet=True,
    sections={"intune": "Intune team mapping"},
))
"""The fleet's Intune facts (team -> group, Macs' emails), for ``mdmgen publish intune``."""


# --- the collector side (emit/collector): fleet-level, written when the policy has `collector:` ----


class _NoAliasLoader(yaml.SafeLoader):
    """The safe loader, refusing aliases: mdmgen never writes them, and a hand-edited file full of
    nested aliases would cost exponential time once diff walks it."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "holds a YAML alias, which mdmgen never writes",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def _read_yaml(section: str) -> Callable[[bytes], Semantic]:
    """A reader of a YAML file into ``section``: its document, or its documents by kind and name."""

    def read(data: bytes) -> Semantic:
        try:
            documents = list(yaml.load_all(data.decode("utf-8"), Loader=_NoAliasLoader))  # safe: a SafeLoader
        except (ValueError, yaml.YAMLError) as exc:
            raise ValueError(f"not valid YAML: {str(exc).splitlines()[0]}") from None
        if len(documents) == 1:
            return {section: documents[0]}
        return {section: {_document_name(i, doc): doc for i, doc in enumerate(documents)}}

    return read


def _document_name(index: int, document: object) -> str:
    """A document of a multi-document file by what it is (``Ingress otel-collector``), so diff names it."""
    if isinstance(document, dict) and isinstance(document.get("metadata"), dict):
        return f"{document.get('kind')} {document['metadata'].get('name')}"
    return str(index)


def _read_json(section: str) -> Callable[[bytes], Semantic]:
    def read(data: bytes) -> Semantic:
        try:
            return {section: json.loads(data.decode("utf-8"))}
        except ValueError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None

    return read


def _register_collector() -> None:
    for path, emit, content_type, label, reader in [
        (otel_config.PATH, otel_config.emit, "application/yaml", "collector config", _read_yaml),
        (prometheus_rules.PATH, prometheus_rules.emit, "application/yaml", "prometheus rules", _read_yaml),
        (dashboards.PERSONAL_PATH, dashboards.emit_personal, "application/json", "personal dashboard", _read_json),
        (dashboards.TEAM_PATH, dashboards.emit_team, "application/json", "team dashboard", _read_json),
        (k8s.PATH, k8s.emit, "application/yaml", "collector ingress", _read_yaml),
    ]:
        register(ArtifactKind(name=path, content_type=content_type, read_semantic=reader(label), emit=emit,
                              label=label, fleet=True, sections={label: label}))


_register_collector()
"""The collector side: its config, the alert rules, two dashboards, the ingress (see emit/collector)."""
