"""The compile state: one versioned record beside the output folder, ``.<name>.mdmgen-state``.

It is everything a compile keeps from one night to the next, and the only thing a compile
reuses work on the strength of. Written atomically (``-state-new`` renamed over it) after the
tree and the kept generation are in place, and bound to the manifests it was written with:

* ``manifest_sha256`` and ``kept_sha256``: the digests of the folder's and the kept generation's
  ``manifest.json`` as this compile left them;
* ``version`` and ``dependencies``: mdmgen's version and those of the libraries that shape the
  output or decide what is valid (``versions.DEPENDENCIES``): a record of any other is stale;
* ``run_check``: an HMAC, under the run key (``runkey``: every input, the secrets' keyed
  fingerprints, the versions), of the summary and the two manifest digests; empty after a
  compile with a problem or signing. The key itself is not written down, so only a compile that
  read the very same inputs can check it, and a forged summary never checks out;
* per device, the digest of its inventory row (keyed under the pseudonym key when the policy
  pseudonymises, so the record holds no unkeyed hash of an address), its inputs fingerprint, and
  each file's sha256, size and modification time; the same for each fleet file;
* ``parts``: the policy part of the inputs fingerprint per platform and team (see ``NewState``);
* ``twins``: the devices whose kept folder holds the tree's very inodes (see :func:`encode`).

**One rule.** A device whose row digest and inputs fingerprint (its row and the policy part that
applies to it) are the record's is reused: not rendered, not emitted, its manifest line kept.
Anything else is computed. (With the same row digest, platform and team spelling and the
recorded policy part, the fingerprint is the manifest entry's: it is not computed again.) A
whole night is reused (nothing read but the inputs' bytes, the record and one ``lstat`` per
entry of the tree) only when ``run_check`` holds under the run key of the inputs now.
``MDMGEN_NO_FASTPATH=1`` reads no record: a compile from scratch.

**Nothing is trusted unchecked.** A record is used only when it parses, is of this format,
mdmgen version and dependency versions, names only safe names, is not dated in the future, and
its ``manifest_sha256`` is the digest of the folder's manifest now (the kept generation is used
only when ``kept_sha256`` is its manifest's digest too). Anything else is ignored as a whole, with
one line saying so, and the compile works from the files themselves. A file of the tree or of
the kept generation is taken to be what the manifest says without reading it only when the
record *vouches* for it: its sha256 is the record's, and its size and modification time are
exactly the record's and its inode changed before the record was written (``st_ctime``, which
no one can set back: ``utime``, a write, a rename or a new link all move it to now). Otherwise
the file is hashed. A folder changed after the record (an entry planted, removed or renamed,
whatever its mtime says) is listed instead of trusted. A twin's kept folder unchanged since the
record holds the tree's inodes, so its files are vouched for when the tree's are (``reader``).
The worst a forged record can do is make one compile hash more, or trust a tree someone could
have edited anyway.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import json
import logging
import os
import stat
from collections.abc import Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

from .. import __version__, fastpath
from ..models import unsafe_name
from ..summary import RunSummary
from . import halves
from .layout import (
    DEVICES_DIR,
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    OutputError,
    digest_regular,
    folder_handle,
    is_real_dir,
    read_regular,
    sidecar,
)

log = logging.getLogger(__name__)

FORMAT = 1
MAX_STATE_BYTES = 4 * MAX_MANIFEST_BYTES
"""The record lists every file as the manifest does, with a row digest and a time more."""

FileState = tuple[str, int, int]
"""One file as the record knows it: sha256, size, modification time (ns)."""


@dataclass(frozen=True)
class DeviceState:
    row: str  # digest of the inventory row the device was made from (keyed when pseudonymising)
    inputs: str  # the inputs fingerprint, as in the manifest
    files: dict[str, FileState]


@dataclass(frozen=True)
class CompileState:
    """A record read back and checked (see the module's docstring). The devices stay in the
    record's compact listing (checked when read) until a compile asks for them by serial: a
    night with no change only walks the listing."""

    manifest_sha256: str
    kept_sha256: str
    run_check: str
    secrets: tuple[str, ...]
    pseudonymised: bool
    summary: RunSummary | None
    groups: dict[str, list]  # the record's listing: joined file names -> serial, row, inputs, (sha, size, mtime)...
    fleet: dict[str, FileState]
    written_ns: int  # the record's own modification time: what it vouches for changed before it
    twins_text: str = ""  # the twins (see ``encode``), joined by "/": split only by a compile that uses them
    parts: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)  # policy parts (see NewState)

    @functools.cached_property
    def twins(self) -> frozenset[str]:
        """The devices whose kept folder held the tree's very inodes (see :func:`encode`)."""
        return frozenset(self.twins_text.split("/")) - {""}

    @functools.cached_property
    def devices(self) -> dict[str, DeviceState]:
        return dict(_devices(self.groups))

    @functools.cached_property
    def _index(self) -> dict[str, tuple[list[str], int, list]]:
        return {serial: (names, first, flat) for names, serial, _row, _inputs, first, flat in _walk(self.groups)}

    def file_state(self, serial: str, name: str) -> FileState | None:
        """What the record knows of one device file (None: nothing)."""
        found = self._index.get(serial)
        if found is None:
            return None
        names, first, flat = found
        try:
            at = first + 3 * names.index(name)
        except ValueError:
            return None
        return flat[at], flat[at + 1], flat[at + 2]

    @functools.cached_property
    def rows(self) -> dict[str, str]:
        """Each device's row digest, by serial."""
        return {serial: row for _names, serial, row, _inputs, _start, _flat in _walk(self.groups)}

    def release(self) -> None:
        """Let go of the listing once a compile is done with it (a large fleet's is tens of MB,
        and the new record is encoded next to both manifests)."""
        self.groups.clear()
        for cached in ("devices", "_index", "rows", "twins"):
            self.__dict__.pop(cached, None)

    def holds_run(self, run_key: str) -> bool:
        """Whether ``run_check`` is this record's under ``run_key``: the same inputs made it."""
        return bool(self.run_check) and self.summary is not None and hmac.compare_digest(
            self.run_check, run_check(run_key, self.summary, self.manifest_sha256, self.kept_sha256))

    def fresh(self, info: os.stat_result) -> bool:
        """Whether an inode provably has not changed since the record was written."""
        return info.st_ctime_ns < self.written_ns

    def known(self, relpath: str) -> FileState | None:
        parts = relpath.split("/")
        if len(parts) == 3 and parts[0] == DEVICES_DIR:
            return self.file_state(parts[1], parts[2])
        return self.fleet.get(relpath)

    def vouches(self, relpath: str, info: os.stat_result, sha256: str, size: int) -> bool:
        """Whether the file at ``relpath`` (its ``lstat`` is ``info``) is the one the record
        describes and has the bytes ``sha256``, without reading it."""
        known = self.known(relpath)
        return (known is not None and known[0] == sha256 and known[1] == size == info.st_size
                and known[2] == info.st_mtime_ns and self.fresh(info))


def run_check(run_key: str, summary: RunSummary, manifest_sha256: str, kept_sha256: str) -> str:
    body = "\0".join((summary.model_dump_json(), manifest_sha256, kept_sha256)).encode("utf-8")
    return hmac.new(bytes.fromhex(run_key), body, hashlib.sha256).hexdigest()


class _Invalid(Exception):
    """The record does not check out; the message says why, for the one line."""


def _dependencies() -> list[list[str]]:
    from ..versions import dependency_versions  # looked up at each call: a test may stand in another version

    return [list(pair) for pair in dependency_versions()]


def path(target: Path) -> Path:
    return sidecar(target, "state")


@dataclass(frozen=True)
class StateRead:
    """The record beside a folder as read: ``state`` when it checks out, else ``note``, the one
    line that says why it is ignored (None: there was none), logged by the caller once the tree
    itself has been read (a folder refused for another reason says only that)."""

    state: CompileState | None = None
    note: tuple[int, str] | None = None

    def log_note(self) -> None:
        if self.note is not None:
            log.log(*self.note)


def read_state(target: Path, manifest_sha256: str | None) -> StateRead:
    """The record beside ``target`` when it checks out against ``manifest_sha256`` (the digest
    of the folder's manifest now). Never read with the fast paths off."""
    if not fastpath.enabled() or manifest_sha256 is None:
        return StateRead()
    where = path(target)
    try:
        data, info = read_regular(where, MAX_STATE_BYTES)
    except FileNotFoundError:
        return StateRead()
    except (OSError, OutputError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        return StateRead(note=(logging.WARNING, f"{where.name}: cannot be read ({reason}); compiling without it"))
    try:
        state = _parse(data, info)
    except _Invalid as exc:
        if str(exc).startswith("stale:"):
            return StateRead(note=(logging.INFO, f"{where.name}: {str(exc).removeprefix('stale: ')}; "
                                                 "compiling without it"))
        return StateRead(note=(logging.WARNING, f"{where.name}: does not check out ({exc}); compiling without it"))
    if state.manifest_sha256 != manifest_sha256:
        return StateRead(note=(logging.WARNING, f"{where.name}: was not written with this {MANIFEST_FILE} (a compile "
                                                "was interrupted, or either was edited); compiling without it"))
    return StateRead(state)


def _parse(data: bytes, info: os.stat_result) -> CompileState:
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        raise _Invalid("not JSON") from None
    if not isinstance(raw, dict) or raw.get("generator") != "mdmgen" or raw.get("format") != FORMAT:
        raise _Invalid("not an mdmgen compile state of this format")
    if raw.get("version") != __version__ or raw.get("dependencies") != _dependencies():
        raise _Invalid("stale: written by another version of mdmgen or of its libraries")
    if info.st_mtime_ns > info.st_ctime_ns:
        raise _Invalid("dated in the future")
    try:
        summary = RunSummary.model_validate(raw["summary"]) if raw.get("summary") is not None else None
        fleet = {relpath: _file_state(value) for relpath, value in _mapping(raw["fleet"]).items()}
        if any(not isinstance(p, str) or any(unsafe_name(part) for part in p.split("/")) for p in fleet):
            raise _Invalid("an unsafe fleet path")
        groups = _mapping(raw["devices"])
        _check_listing(groups)
        secrets = tuple(raw["secrets"])
        twins = _text(raw.get("twins", ""))
        parts = {(platform, team): part for platform, team, part in raw.get("parts", [])
                 if isinstance(platform, str) and isinstance(team, str) and isinstance(part, str)}
        state = CompileState(
            manifest_sha256=_text(raw["manifest_sha256"]), kept_sha256=_text(raw["kept_sha256"]),
            run_check=_text(raw["run_check"]), secrets=secrets, pseudonymised=raw["pseudonymised"] is True,
            summary=summary, groups=dict(groups), fleet=fleet, written_ns=info.st_mtime_ns, twins_text=twins,
            parts=parts)
    except (KeyError, TypeError, ValueError) as exc:
        raise _Invalid(f"malformed: {type(exc).__name__}") from None
    if not all(isinstance(label, str) for label in secrets):
        raise _Invalid("malformed secrets")
    return state


def _mapping(value: object) -> Mapping:
    if not isinstance(value, dict):
        raise TypeError
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def _file_state(value: object) -> FileState:
    if (not isinstance(value, list) or len(value) != 3 or not isinstance(value[0], str)
            or type(value[1]) is not int or type(value[2]) is not int or value[1] < 0):
        raise TypeError
    return value[0], value[1], value[2]


def _check_listing(groups: Mapping) -> None:
    """The record's compact listing of devices: by the joined names of their files, a flat list
    of serial, row, inputs and then sha256, size, mtime per file; every name safe, every field of
    its type. Raises _Invalid, TypeError or ValueError. Checked column by column (a slice per
    field), since a record lists every file of the fleet."""
    for names, flat in groups.items():
        files = _text(names).split("/")
        if any(unsafe_name(name) for name in files) or not isinstance(flat, list):
            raise _Invalid("an unsafe file name")
        step = 3 + 3 * len(files)
        if len(flat) % step:
            raise TypeError
        serials = flat[0::step]
        if set(map(type, serials)) - {str} or any(map(unsafe_name, serials)):
            raise _Invalid("an unsafe serial")
        for column in range(1, step):
            values = flat[column::step]
            kind = str if column < 3 or column % 3 == 0 else int
            if set(map(type, values)) - {kind} or (kind is int and values and min(values) < 0):
                raise TypeError


def _walk(groups: Mapping) -> Iterator[tuple[list[str], str, str, str, int, list]]:
    """(file names, serial, row, inputs, where its files start, the flat list) per device of a
    checked listing."""
    for joined, flat in groups.items():
        names = joined.split("/")
        step = 3 + 3 * len(names)
        for start in range(0, len(flat), step):
            yield names, flat[start], flat[start + 1], flat[start + 2], start + 3, flat


def _devices(groups: Mapping) -> Iterator[tuple[str, DeviceState]]:
    for names, serial, row, inputs, first, flat in _walk(groups):
        files = {name: (flat[first + 3 * i], flat[first + 3 * i + 1], flat[first + 3 * i + 2])
                 for i, name in enumerate(names)}
        yield serial, DeviceState(row, inputs, files)


@dataclass(frozen=True)
class NewState:
    """What a compile hands the writer for the record: per device its row digest, the run key
    (None: no night may be reused whole) and what the summary and the run key need."""

    rows: Mapping[str, str]
    parts: Mapping[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    """The policy part of the inputs fingerprint (``render.policy_part``) by platform and team key:
    a device whose row digest, team spelling and platform are unchanged and whose policy part is
    the one recorded has the inputs fingerprint of its manifest entry, without computing it."""
    run_key: str | None = None
    secrets: tuple[str, ...] = ()
    pseudonymised: bool = False
    summary: RunSummary | None = None


def encode(new: NewState, manifest, manifest_sha256: str, kept_sha256: str, root: Path,
           old: CompileState | None = None, settled: AbstractSet[str] = frozenset(),
           twins: AbstractSet[str] = frozenset()) -> bytes:
    """The record's bytes for the tree ``manifest`` describes, in place at ``root``: each file's
    modification time is read from it, or taken from ``old`` for a ``settled`` device (one whose
    files are the inodes ``old`` vouched for); ``old`` is released once read. Raises OSError
    when a file cannot be ``lstat``-ed.

    ``twins``: the devices whose folder in the kept generation holds exactly the names of the
    tree's folder, each a hard link to the very inode of the tree's file (the writer knows: it
    linked them, or both folders are the ones an earlier record said so of and neither changed
    since). While such a kept folder is unchanged since the record (no entry added, removed or
    renamed in it) and the tree's files check out against the record, the kept folder's files
    are those same unchanged inodes, and the next compile need not ``lstat`` them (``reader``)."""
    base = os.fspath(root)
    groups: dict[str, list] = {}
    if manifest.devices:
        with folder_handle(f"{base}/{DEVICES_DIR}") as at_devices:
            groups = _listing(manifest, new.rows, old, settled, at_devices)
    if old is not None:
        old.release()
    fleet = {relpath: [meta.sha256, meta.size, os.lstat(f"{base}/{relpath}").st_mtime_ns]
             for relpath, meta in manifest.fleet.items()}
    check = (run_check(new.run_key, new.summary, manifest_sha256, kept_sha256)
             if new.run_key is not None and new.summary is not None else "")
    record = {"format": FORMAT, "generator": "mdmgen", "version": __version__, "dependencies": _dependencies(),
              "manifest_sha256": manifest_sha256, "kept_sha256": kept_sha256, "run_check": check,
              "secrets": list(new.secrets), "pseudonymised": new.pseudonymised,
              "twins": "/".join(sorted(set(twins) & manifest.devices.keys())),  # one string: parsed at once
              "parts": sorted([platform, team, part] for (platform, team), part in new.parts.items()),
              "summary": new.summary.model_dump(mode="json") if check else None,
              "fleet": fleet, "devices": groups}
    # The listing of each group is encoded on its own, so the text of the whole record is never
    # held twice (as text and as bytes) at once.
    head = json.dumps({**record, "devices": {}}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    pieces = [head[:-2]]  # up to and with the devices' opening brace
    for number, (joined, flat) in enumerate(groups.items()):
        text = json.dumps({joined: flat}, ensure_ascii=False, separators=(",", ":"))
        pieces += (b"," if number else b"", text[1:-1].encode("utf-8"))
        groups[joined] = []  # encoded: its list is not needed any more
    pieces.append(b"}}")
    return b"".join(pieces)


def _listing(manifest, rows: Mapping[str, str], old: CompileState | None, settled: AbstractSet[str],
             at_devices: int) -> dict[str, list]:
    """The record's listing of ``manifest``'s devices (see :func:`_check_listing`), each file's
    modification time taken from ``old`` for a ``settled`` device, else ``lstat``-ed from
    ``devices/`` (open as ``at_devices``)."""
    groups: dict[str, list] = {}
    names_of: dict[tuple[str, ...], str] = {}
    lstat = os.lstat
    for serial, entry in manifest.devices.items():
        files = entry.files
        names = tuple(files)
        joined = names_of.get(names)
        if joined is None:
            joined = names_of[names] = "/".join(names)
        flat = groups.get(joined)
        if flat is None:
            flat = groups[joined] = []
        flat += (serial, rows.get(serial, ""), entry.inputs)
        folder = f"{serial}/"
        for name, meta in files.items():
            known = old.file_state(serial, name) if old is not None and serial in settled else None
            if known is not None and known[0] == meta.sha256 and known[1] == meta.size:
                flat += (meta.sha256, meta.size, known[2])
            else:
                flat += (meta.sha256, meta.size, lstat(folder + name, dir_fd=at_devices).st_mtime_ns)
    return groups


def write_state(target: Path, data: bytes | None) -> None:
    """Write the record (``None``: remove any), as ``-state-new`` renamed over it; a kill leaves the
    old record, bound to its own manifest, or a leftover the next run removes. The tree is in
    place already, so a record that cannot be written only costs the next compile work."""
    where = path(target)
    if data is None:
        _unlink(where)
        return
    staging = sidecar(target, "state-new")
    try:
        _unlink(staging)
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(staging, where)  # replaces a planted link itself, never what it points to
    except OSError as exc:
        log.warning("%s: compile state not kept (%s); the next compile hashes the tree", where.name,
                    exc.strerror or exc)
        _unlink(staging)


def _unlink(where: Path) -> None:
    try:
        if not stat.S_ISDIR(os.lstat(where).st_mode):
            os.unlink(where)
    except FileNotFoundError:
        pass


def holds(target: Path, state: CompileState) -> bool:
    """Whether the folder is exactly as the compile that wrote ``state`` left it, checked without
    parsing its manifest: the manifest's digest, the kept generation's manifest digest, and every
    folder and file the record lists (vouched for, or hashed; a folder changed since is a doubt).
    The kept generation's files are checked when a compile next uses it."""
    try:
        if not is_real_dir(target):
            return False
        if digest_regular(target / MANIFEST_FILE, MAX_MANIFEST_BYTES) != state.manifest_sha256:
            return False
        kept = sidecar(target, "prev")
        if not is_real_dir(kept) or digest_regular(kept / MANIFEST_FILE, MAX_MANIFEST_BYTES) != state.kept_sha256:
            return False
    except (OSError, OutputError):
        return False
    try:
        return _fleet_holds(target, state) and _devices_hold(target, state)
    except OSError:
        return False


def _fleet_holds(target: Path, state: CompileState) -> bool:
    """The fleet files and their folders, and ``devices/`` itself, as the record lists them."""
    base = os.fspath(target)
    written = state.written_ns
    for folder, names in _folders(state):
        info = os.lstat(f"{base}/{folder}")
        if not stat.S_ISDIR(info.st_mode):
            return False
        if info.st_ctime_ns >= written:  # changed since the record: listed, and must hold exactly what it lists
            if folder == DEVICES_DIR:
                names = sorted(serial for _names, serial, *_rest in _walk(state.groups))
            if sorted(os.listdir(f"{base}/{folder}")) != names:
                return False
    for relpath, (sha256, size, mtime) in state.fleet.items():
        if not _file_holds(f"{base}/{relpath}", os.lstat(f"{base}/{relpath}"), sha256, size, mtime, written):
            return False
    return True


def _devices_hold(target: Path, state: CompileState) -> bool:
    """Every device folder and file the record lists (one ``lstat`` each; this is what a night
    with no change costs, so it walks the record's listing as it is, column by column)."""
    devices = f"{os.fspath(target)}/{DEVICES_DIR}"
    with folder_handle(devices) as at_devices:
        return all(halves.in_two(lambda part: _devices_hold_at(devices, at_devices, state, part), _listed(state)))


def _listed(state: CompileState) -> int:
    """How many devices the record lists (without walking the listing)."""
    return sum(len(flat) // (3 + 3 * (joined.count("/") + 1)) for joined, flat in state.groups.items())


def _devices_hold_at(devices: str, at_devices: int, state: CompileState, part: int | None = None) -> bool:
    """:func:`_devices_hold` with ``devices/`` open: each ``lstat`` names its entry from there
    (a tenth cheaper than the whole path, 240,000 times a night); only the devices of ``part``
    (see ``halves``)."""
    lstat, is_dir, is_reg, skips = os.lstat, stat.S_ISDIR, stat.S_ISREG, halves.skips
    written = state.written_ns
    for joined, flat in state.groups.items():
        names = joined.split("/")
        in_order = sorted(names)
        step = 3 + 3 * len(names)
        for start in range(0, len(flat), step):
            serial = flat[start]
            if skips(part, serial):
                continue
            info = lstat(serial, dir_fd=at_devices)
            if not is_dir(info.st_mode):
                return False
            if info.st_ctime_ns >= written and sorted(os.listdir(f"{devices}/{serial}")) != in_order:
                return False
            at = start + 3
            for name in names:
                relpath = f"{serial}/{name}"
                found = lstat(relpath, dir_fd=at_devices)
                if (not is_reg(found.st_mode) or found.st_size != flat[at + 1]
                        or ((found.st_mtime_ns != flat[at + 2] or found.st_ctime_ns >= written)
                            and _sha_of(f"{devices}/{relpath}", flat[at + 1]) != flat[at])):
                    return False
                at += 3
    return True


def _file_holds(path: str, found: os.stat_result, sha256: str, size: int, mtime: int, written: int) -> bool:
    return stat.S_ISREG(found.st_mode) and found.st_size == size and (
        (found.st_mtime_ns == mtime and found.st_ctime_ns < written) or _sha_of(path, size) == sha256)


def _folders(state: CompileState) -> list[tuple[str, list[str]]]:
    """``devices/`` and the folders of the fleet files, with the names each holds (parents first)."""
    children: dict[str, set[str]] = {DEVICES_DIR: set()}  # its names are asked for only when it changed
    for relpath in state.fleet:
        parts = relpath.split("/")
        for i in range(1, len(parts)):
            children.setdefault("/".join(parts[:i]), set()).add(parts[i])
    return [(folder, sorted(children[folder])) for folder in sorted(children, key=lambda f: (f.count("/"), f))]


def _sha_of(where: str, size: int) -> str | None:
    try:
        return digest_regular(Path(where), size)
    except (OSError, OutputError):
        return None
