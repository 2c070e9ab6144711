"""manifest.json: building it from a compile, its exact bytes, reading it back, and comparing two."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from .. import __version__, fastpath
from ..emit import registry
from ..envschema import SECRET_ENV
from ..messages import first_of
from ..models import CompiledDevice, DerivedFile, Manifest, ManifestDevice, ManifestFile, ManifestSecret
from .layout import MANIFEST_FILE, MAX_MANIFEST_BYTES, OutputError, read_regular


@dataclass
class FleetChanges:
    """Fleet-level files (``collector/...``, ``intune/...``) added, changed and removed, by path from
    the folder's root: a changed collector config must be deployed, unlike a device's file."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def sentence(self) -> str:
        """``Fleet files changed: a, b; added: c.`` (empty when none changed), for the compile summary."""
        parts = [f"{what}: {first_of(paths, 5)}" for what, paths in
                 (("changed", self.changed), ("added", self.added), ("removed", self.removed)) if paths]
        return f"Fleet files {'; '.join(parts)}." if parts else ""

    def as_json(self) -> dict[str, list[str]]:
        return {"added": self.added, "changed": self.changed, "removed": self.removed}


@dataclass
class Changes:
    """What a compile changed against the previous output, by serial; ``repaired`` lists the
    files of the previous output that did not match its manifest (edited by hand, deleted,
    replaced by a link) and were put right."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    written: bool = False  # False when nothing changed and the folder was left alone
    repaired: list[str] = field(default_factory=list)
    fleet: FleetChanges = field(default_factory=FleetChanges)


@dataclass(frozen=True)
class LoadedManifest:
    """A manifest read from disk: the model, its exact bytes, and the file's modification time
    (what the cheap check of the files is measured against, see ``reader``)."""

    manifest: Manifest
    data: bytes
    mtime_ns: int


def load_manifest(folder: Path, known: tuple[bytes, Manifest] | None = None) -> LoadedManifest | None:
    """The checked manifest of a folder; None when there is none. ``known`` is a manifest this run
    has already parsed, with its bytes: when the folder's are the same, it is not parsed again.

    Raises OutputError when it is not a regular file, is too large, or is not an mdmgen manifest;
    a manifest whose names could leave the folder (``../``) is not an mdmgen manifest.
    """
    path = folder / MANIFEST_FILE
    try:
        data, info = read_regular(path, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        manifest = _parse(data, known)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise OutputError(f"{path}: not a valid mdmgen manifest ({where}: {first['msg']})") from None
    if manifest.generator != "mdmgen":
        raise OutputError(f"{path}: written by {manifest.generator!r}, not mdmgen")
    return LoadedManifest(manifest, data, info.st_mtime_ns)


def _parse(data: bytes, known: tuple[bytes, Manifest] | None) -> Manifest:
    """The manifest model of ``data``; the same bytes read twice in one run (the folder and its
    kept generation after a night with no change) are parsed once, the caller handing the first
    parse to the second read (nothing is kept between runs). The model is frozen, and the bytes
    are compared whole, so the second read gets exactly what parsing would have given. Bytes that
    differ from ``known`` in some device lines only (the kept generation after a night that
    changed some devices) are parsed in those lines only (:func:`_parse_against`)."""
    if known is not None and fastpath.enabled():
        if known[0] == data:
            return known[1]
        partial = _parse_against(data, known)
        if partial is not None:
            return partial
    return Manifest.model_validate_json(data)


def _parse_against(data: bytes, known: tuple[bytes, Manifest]) -> Manifest | None:
    """``data`` parsed where it differs from ``known`` (a manifest this run parsed, and the bytes
    it was parsed from), or None: parse it whole. In the layout :func:`manifest_bytes` writes (one
    ``"SERIAL": {...}`` per line), a device line of ``data`` that is byte for byte a line of
    ``known``'s gets ``known``'s entry for that serial; everything else (the other device lines and
    every line outside ``devices``) is parsed and validated as a manifest of its own, and the two
    are merged.

    A kept generation differs from the folder in the devices of one or two nights, so this parses
    a few hundred lines instead of 100,000. It relies on this: every entry it returns passed the
    model's checks (it is ``known``'s, or was validated here), so every name in it is safe; and a
    caller uses what a manifest says of files only as a claim that is checked against the disk
    (``reader``: each file vouched for by the compile state or hashed), so even bytes crafted to
    parse otherwise line by line than as a whole cannot make a compile trust a file that is not
    what the returned manifest says. A serial found twice, or a part that does not parse, is left
    to the whole parse (and its message). The devices are in the order of their serials, as
    :func:`manifest_bytes` writes them."""
    lines, devices = _device_section(data), known[1].devices
    serial_of = {line: serial for serial, line in _device_lines(known[1], known[0]).items()}
    if lines is None or len(serial_of) != len(devices):
        return None
    taken: dict[str, ManifestDevice] = {}
    rest: list[bytes] = []
    for line in lines:
        serial = serial_of.get(line)
        if serial is None:
            rest.append(line)
        else:
            taken[serial] = devices[serial]
    del serial_of
    try:
        parsed = Manifest.model_validate_json(b"".join((
            b'{\n  "devices": {\n', b",\n".join(rest), data[data.index(b"\n  }"):])))
    except ValidationError:
        return None
    if (len(parsed.devices) != len(rest) or len(taken) + len(rest) != len(lines)
            or not parsed.devices.keys().isdisjoint(taken)):
        return None
    return parsed.model_copy(update={"devices": dict(sorted({**taken, **parsed.devices}.items()))})


def _device_section(data: bytes) -> list[bytes] | None:
    """The lines of ``devices`` in the layout :func:`manifest_bytes` writes, without the comma
    between them; None when ``data`` is not in that layout."""
    lines = data.split(b"\n")
    if lines[:2] != [b"{", b'  "devices": {']:
        return None
    ends = []
    for close in (b"  }", b"  },"):
        with contextlib.suppress(ValueError):
            ends.append(lines.index(close, 2))
    if not ends:
        return None
    return [line.removesuffix(b",") for line in lines[2:min(ends)]]


def file_entry(data: bytes, install_path: str | None = None) -> ManifestFile:
    return ManifestFile(sha256=hashlib.sha256(data).hexdigest(), size=len(data), install_path=install_path)


def manifest_entry(compiled: CompiledDevice, previous: Manifest | None) -> ManifestDevice:
    """The manifest entry of one device: new digests, or the previous entry when reused."""
    device = compiled.device
    if compiled.files is None:
        assert previous is not None
        return previous.devices[device.serial]
    files = {}
    for name, data in compiled.files.items():
        kind = registry.get(name)
        files[name] = file_entry(data, kind.install_path(device.platform) if kind else None)
    return ManifestDevice(platform=device.platform, team=device.team, inputs=compiled.inputs, files=files,
                          secrets=list(compiled.secrets) or None, redacted=compiled.redacted)


@dataclass(frozen=True)
class Derived:
    """A derived file of one device made by a stage after the compile (a signed profile, see
    ``signing``): its manifest entry, how it was made, and its bytes (None: unchanged, the file of
    the previous tree with this entry's digest is kept)."""

    entry: ManifestFile
    made: DerivedFile
    data: bytes | None = None


DerivedFiles = Mapping[str, Mapping[str, Derived]]
"""Derived files by serial, then file name."""


def with_derived(entry: ManifestDevice, derived: Mapping[str, Derived] | None) -> ManifestDevice:
    """``entry`` with this run's derived files: those of a reused previous entry are dropped first
    (a compile without ``--sign-cert`` makes none), then these are added with their ``derived`` record."""
    old = entry.derived or {}
    if not old and not derived:
        return entry
    files = {name: meta for name, meta in entry.files.items() if name not in old}
    made = {}
    for name, item in sorted((derived or {}).items()):
        # Everything the source's entry says about it (beyond what the bytes are) holds for a file
        # that embeds it, so the derived entry starts as a copy of the source's.
        source = files[item.made.source]
        files[name] = source.model_copy(update={"sha256": item.entry.sha256, "size": item.entry.size,
                                                "install_path": item.entry.install_path})
        made[name] = item.made
    return entry.model_copy(update={"files": files, "derived": made or None})


def build_manifest(compiled: list[CompiledDevice], previous: Manifest | None = None,
                   secret_env: list[str] | None = None, fleet_files: dict[str, bytes] | None = None,
                   secrets: dict[str, ManifestSecret] | None = None,
                   derived: DerivedFiles | None = None, pseudonymised: bool = False) -> Manifest:
    derived = derived or {}
    devices = {c.device.serial: with_derived(manifest_entry(c, previous), derived.get(c.device.serial))
               for c in compiled}
    fleet = {relpath: file_entry(data) for relpath, data in sorted((fleet_files or {}).items())}
    return Manifest(generator="mdmgen", version=__version__,
                    secret_env=sorted(set(SECRET_ENV) | set(secret_env or [])),
                    devices=dict(sorted(devices.items())), fleet=fleet,
                    secrets=dict(sorted(secrets.items())) if secrets else None,
                    pseudonymised=True if pseudonymised else None)


_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(", ", ": "))
"""The manifest's JSON layout, made once (``json.dumps`` would build it for every device)."""


def manifest_bytes(manifest: Manifest, previous: Manifest | None = None, previous_data: bytes = b"") -> bytes:
    """Sorted JSON with one device per line: a changed device is a one-line diff in the audit
    repository, and large fleets encode fast (no pretty-printer over every nested key). An empty
    ``fleet`` is left out, so a fleet without fleet-level files keeps the bytes it always had.

    ``previous`` and ``previous_data``: a manifest and the exact bytes this function made of it
    (the caller vouches for that: the compile recorded their digest). A device whose entry *is*
    the previous one (reused, not rebuilt) gets its line back from those bytes instead of being
    encoded again, which is most of a night's manifest; the bytes are the same either way."""
    # Device by device, not one dump of the whole manifest: at 100,000 devices the dumped tree
    # alone would be a few hundred MB held at once.
    data = manifest.model_dump(mode="json", exclude_none=True, exclude={"devices"})
    devices = manifest.devices
    if not data.get("fleet"):
        data.pop("fleet", None)

    dumps = _ENCODER.encode
    known = _device_lines(previous, previous_data) if previous is not None and fastpath.enabled() else {}
    # One list of encoded pieces and one join: the 40 MB of a large fleet's lines are held twice
    # at most (the pieces and the result), not three times (lines, joined text, encoded bytes).
    pieces = [b'{\n  "devices": {']
    for serial in sorted(devices):
        entry = devices[serial]
        line = known.get(serial)
        if line is None or previous is None or previous.devices.get(serial) is not entry:
            line = f"    {dumps(serial)}: {dumps(entry.model_dump(mode='json', exclude_none=True))}".encode()
        pieces += (b",\n" if len(pieces) > 1 else b"\n", line)
    pieces.append(b"\n  }" + (b"," if data else b""))
    for number, (key, value) in enumerate(sorted(data.items())):
        pieces += (b",\n" if number else b"\n", f"  {dumps(key)}: {dumps(value)}".encode())
    pieces.append(b"\n}\n")
    return b"".join(pieces)


def _device_lines(manifest: Manifest, data: bytes) -> dict[str, bytes]:
    """Each device's line of ``data``, the bytes :func:`manifest_bytes` made of ``manifest`` (without
    the comma between lines); empty at the first line that is not where that layout puts it. Bytes,
    not text: the lines go back into bytes as they are (the names are safe, so ASCII)."""
    lines = data.split(b"\n")
    serials = sorted(manifest.devices)
    if lines[:2] != [b"{", b'  "devices": {'] or len(lines) < len(serials) + 2:
        return {}
    found = {}
    for serial, line in zip(serials, lines[2:2 + len(serials)], strict=True):
        line = line.removesuffix(b",")
        if not line.startswith(b'    "%s": {' % serial.encode()) or not line.endswith(b"}"):
            return {}
        found[serial] = line
    return found


def compare(manifest: Manifest, previous: Manifest | None) -> Changes:
    """Devices added, changed (any file or its team/platform), removed and unchanged; fleet files
    added, changed (other bytes) and removed."""
    old = previous.devices if previous else {}
    changes = Changes()
    for serial, entry in manifest.devices.items():
        before = old.get(serial)
        if before is None:
            changes.added.append(serial)
        elif (before.files, before.platform, before.team) != (entry.files, entry.platform, entry.team):
            changes.changed.append(serial)
        else:
            changes.unchanged += 1
    changes.removed = sorted(set(old) - set(manifest.devices))
    old_fleet = previous.fleet if previous else {}
    changes.fleet = FleetChanges(
        added=sorted(set(manifest.fleet) - set(old_fleet)),
        changed=sorted(path for path, entry in manifest.fleet.items()
                       if path in old_fleet and old_fleet[path].sha256 != entry.sha256),
        removed=sorted(set(old_fleet) - set(manifest.fleet)))
    return changes


SECRET_FILE_MODE = 0o600
"""Files that embed a secret value are readable by their owner only (the manifest still hashes them)."""


def write_new(path: Path, data: bytes, mode: int = 0o666) -> None:
    """Create ``path`` with ``data``; never through a symlink or over an existing entry. The file is
    created with ``mode`` (less the umask), so a secret-bearing file is never readable by others,
    not even for a moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
