"""The compile state: one versioned record beside the output folder, ``.<name>.mdmgen-state``.

It is everything a compile keeps from one night to the next, and the only thing a compile
reuses work on the strength of. Written atomically (``-state-new`` renamed over it) after the
tree and the kept generation are in place, and bound to the manifests it was written with:

* ``manifest_sha256`` and ``kept_sha256``: the digests of the folder's and the kept generation's
  ``manifest.json`` as this compile left them;
* ``version`` and ``dependencies``: mdmgen's version and those of the libraries that shape the
  output or decide what is valid (``runkey.DEPENDENCIES``): a record of any other is stale;
* ``run_check``: an HMAC, under the run key (``runkey``: every input, the secrets' keyed
  fingerprints, the versions), of the summary and the two manifest digests; empty after a
  compile with a problem or signing. The key itself is not written down, so only a compile that
  read the very same inputs can check it, and a forged summary never checks out;
* per device, the digest of its inventory row (keyed under the pseudonym key when the policy
  pseudonymises, so the record holds no unkeyed hash of an address), its inputs fingerprint, and
  each file's sha256, size and modification time; the same for each fleet file.

**One rule.** A device whose row digest and inputs fingerprint (its row and the policy part that
applies to it) are the record's is reused: not rendered, not emitted, its manifest line kept.
Anything else is computed. A whole night is reused (nothing read but the inputs' bytes, the
record and one ``lstat`` per entry of the tree) only when ``run_check`` holds under the run key
of the inputs now. ``MDMGEN_NO_FASTPATH=1`` reads no record: a compile from scratch.

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
whatever its mtime says) is listed instead of trusted. The worst a forged record can do is make
one compile hash more, or trust a tree someone could have edited anyway.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__, fastpath
from ..models import unsafe_name
from ..summary import RunSummary
from .layout import DEVICES_DIR, MANIFEST_FILE, MAX_MANIFEST_BYTES, OutputError, is_real_dir, read_regular, sidecar

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
    """A record read back and checked (see the module's docstring)."""

    manifest_sha256: str
    kept_sha256: str
    run_check: str
    secrets: tuple[str, ...]
    pseudonymised: bool
    summary: RunSummary | None
    devices: dict[str, DeviceState]
    fleet: dict[str, FileState]
    written_ns: int  # the record's own modification time: what it vouches for changed before it
    rows: frozenset[str] = field(default=frozenset())

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
            device = self.devices.get(parts[1])
            return device.files.get(parts[2]) if device is not None else None
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
    from ..runkey import dependency_versions  # the record's identity; imports inventory and policy

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


def read_state(target: Path, manifest_data: bytes | None) -> StateRead:
    """The record beside ``target`` when it checks out against ``manifest_data`` (the folder's
    manifest bytes now). Never read with the fast paths off."""
    if not fastpath.enabled() or manifest_data is None:
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
    if state.manifest_sha256 != hashlib.sha256(manifest_data).hexdigest():
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
        devices = dict(_devices(_mapping(raw["devices"])))
        secrets = tuple(raw["secrets"])
        state = CompileState(
            manifest_sha256=_text(raw["manifest_sha256"]), kept_sha256=_text(raw["kept_sha256"]),
            run_check=_text(raw["run_check"]), secrets=secrets, pseudonymised=raw["pseudonymised"] is True,
            summary=summary, devices=devices, fleet=fleet, written_ns=info.st_mtime_ns,
            rows=frozenset(d.row for d in devices.values()))
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


def _devices(groups: Mapping) -> Iterator[tuple[str, DeviceState]]:
    """The devices of the record's compact listing: by the joined names of their files, a flat
    list of serial, row, inputs and then sha256, size, mtime per file."""
    for names, flat in groups.items():
        files = _text(names).split("/")
        if any(unsafe_name(name) for name in files) or not isinstance(flat, list):
            raise _Invalid("an unsafe file name")
        step = 3 + 3 * len(files)
        if len(flat) % step:
            raise TypeError
        for start in range(0, len(flat), step):
            serial, row, inputs = flat[start:start + 3]
            if not isinstance(serial, str) or unsafe_name(serial):
                raise _Invalid("an unsafe serial")
            states = {name: _file_state(flat[start + 3 + 3 * i:start + 6 + 3 * i]) for i, name in enumerate(files)}
            yield serial, DeviceState(_text(row), _text(inputs), states)


@dataclass(frozen=True)
class NewState:
    """What a compile hands the writer for the record: per device its row digest, the run key
    (None: no night may be reused whole) and what the summary and the run key need."""

    rows: Mapping[str, str]
    run_key: str | None = None
    secrets: tuple[str, ...] = ()
    pseudonymised: bool = False
    summary: RunSummary | None = None


def encode(new: NewState, manifest, manifest_sha256: str, kept_sha256: str, mtimes: Mapping[str, int]) -> bytes:
    """The record's bytes for the tree ``manifest`` describes (``mtimes``: each file's, by path)."""
    groups: dict[str, list] = {}
    names_of: dict[tuple[str, ...], str] = {}
    for serial, entry in manifest.devices.items():
        names = tuple(entry.files)
        joined = names_of.get(names)
        if joined is None:
            joined = names_of[names] = "/".join(names)
        flat = groups.setdefault(joined, [])
        flat += (serial, new.rows.get(serial, ""), entry.inputs)
        for name, meta in entry.files.items():
            flat += (meta.sha256, meta.size, mtimes[f"{DEVICES_DIR}/{serial}/{name}"])
    fleet = {relpath: [meta.sha256, meta.size, mtimes[relpath]] for relpath, meta in manifest.fleet.items()}
    check = (run_check(new.run_key, new.summary, manifest_sha256, kept_sha256)
             if new.run_key is not None and new.summary is not None else "")
    record = {"format": FORMAT, "generator": "mdmgen", "version": __version__, "dependencies": _dependencies(),
              "manifest_sha256": manifest_sha256, "kept_sha256": kept_sha256, "run_check": check,
              "secrets": list(new.secrets), "pseudonymised": new.pseudonymised,
              "summary": new.summary.model_dump(mode="json") if check else None,
              "fleet": fleet, "devices": groups}
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


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
        data, _info = read_regular(target / MANIFEST_FILE, MAX_MANIFEST_BYTES)
        if hashlib.sha256(data).hexdigest() != state.manifest_sha256:
            return False
        kept = sidecar(target, "prev")
        kept_data, _kept_info = read_regular(kept / MANIFEST_FILE, MAX_MANIFEST_BYTES)
        if not is_real_dir(kept) or hashlib.sha256(kept_data).hexdigest() != state.kept_sha256:
            return False
    except (OSError, OutputError):
        return False
    base = os.fspath(target)
    lstat, is_dir, is_reg = os.lstat, stat.S_ISDIR, stat.S_ISREG
    written = state.written_ns
    try:
        for folder, names in _folders(state):
            info = lstat(f"{base}/{folder}")
            if not is_dir(info.st_mode):
                return False
            if info.st_ctime_ns >= written and sorted(os.listdir(f"{base}/{folder}")) != sorted(names):
                return False  # changed since the record: listed, and must hold exactly what it lists
        for relpath, known in _files(state):
            info = lstat(f"{base}/{relpath}")
            if not is_reg(info.st_mode) or info.st_size != known[1]:
                return False
            if (known[2] != info.st_mtime_ns or info.st_ctime_ns >= written) and _sha_of(
                    f"{base}/{relpath}", known[1]) != known[0]:
                return False
    except OSError:
        return False
    return True


def _folders(state: CompileState) -> Iterator[tuple[str, list[str]]]:
    """Every folder of the tree the record lists, with the names it holds (parents first)."""
    children: dict[str, set[str]] = {DEVICES_DIR: set(state.devices)}
    for relpath in state.fleet:
        parts = relpath.split("/")
        for i in range(1, len(parts)):
            children.setdefault("/".join(parts[:i]), set()).add(parts[i])
    for folder in sorted(children, key=lambda f: (f.count("/"), f)):
        yield folder, sorted(children[folder])
    for serial, device in state.devices.items():
        yield f"{DEVICES_DIR}/{serial}", list(device.files)


def _files(state: CompileState) -> Iterator[tuple[str, FileState]]:
    yield from state.fleet.items()
    for serial, device in state.devices.items():
        for name, known in device.files.items():
            yield f"{DEVICES_DIR}/{serial}/{name}", known


def _sha_of(where: str, size: int) -> str | None:
    try:
        data, _info = read_regular(Path(where), size)
    except (OSError, OutputError):
        return None
    return hashlib.sha256(data).hexdigest()
