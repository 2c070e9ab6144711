"""The one reader of an output folder: ``diff``, ``preflight``, every publisher and ``compile`` itself
read a tree on disk only through :func:`read` (or :func:`checked`, which also holds the lock).

Nothing in a tree is trusted before it is checked. The manifest must be an mdmgen manifest whose
every name is safe (``models.unsafe_name``), and the folder must hold exactly what it lists:
every ``devices/<SERIAL>`` a real folder (not a symlink), every file a regular file, nothing
extra. How much of the content is checked is the caller's choice (:class:`Check`):

* ``NAMES``: only the above. ``diff`` and ``preflight`` open few files, and each is checked
  against its digest as it is read (:meth:`CheckedFile.read`).
* ``STAT``: also each file's size, and the digest of every file the compile state does not
  vouch for (``state``: its digest, exact size and modification time recorded, and its inode
  unchanged since the record was written); a folder unchanged since then is not listed. Without
  a compile state that checked out, every file is hashed. ``compile`` uses it every run to find
  hand-edited files.
* ``DIGESTS``: every file hashed. Publishers, before they upload anything, and ``compile --full``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from ..emit import cms
from ..messages import first_of
from ..models import Manifest, ManifestDevice, ManifestFile, unsafe_name
from .layout import (
    DEVICES_DIR,
    MANIFEST_FILE,
    OutputError,
    device_path,
    folder_handle,
    interrupted,
    is_real_dir,
    read_regular,
    target_of,
)
from .lock import locked
from .manifest import load_manifest
from .state import CompileState

_READ_LIMIT = 64 << 20
"""Read at most this much of a file that grew since the manifest, to say it changed."""
EDITED = "differs from its sha256 in the manifest (edited after the compile?)"


class Check(IntEnum):
    """How much of the content the reader checks (see the module docstring)."""

    NAMES = 0
    STAT = 1
    DIGESTS = 2


@dataclass(frozen=True)
class CheckedFile:
    """One file of a checked folder as its manifest describes it (``device`` None: a fleet file or
    manifest.json). ``error`` is the exception class the reader's caller reports problems with."""

    relpath: str
    sha256: str
    size: int
    root: Path
    device: str | None = None
    error: type[Exception] = OutputError

    @property
    def path(self) -> Path:
        return self.root / self.relpath

    def read(self, *, verify: bool = True) -> bytes:
        """The file's bytes, refused unless they still have the manifest's digest. ``verify=False``
        is for a caller that parses first and then checks with :meth:`matches`, so that a file
        that no longer parses is reported as such (diff)."""
        try:
            if not is_real_dir(self.path.parent):
                raise OutputError(f"{self.path.parent}: is not a folder")
            data, _info = read_regular(self.path, max(self.size, _READ_LIMIT))
        except OutputError as exc:
            raise self.error(str(exc)) from None
        except OSError as exc:
            raise self.error(f"{self.path}: cannot read: {exc.strerror}") from None
        if verify and not self.matches(data):
            raise self.error(f"{self.path}: changed after it was checked against {MANIFEST_FILE} "
                             "(did a compile run during the publish?)")
        return data

    def matches(self, data: bytes) -> bool:
        return len(data) == self.size and hashlib.sha256(data).hexdigest() == self.sha256


@dataclass(frozen=True)
class CheckedOutput:
    """A read output folder: its manifest, every file (sorted by path, manifest.json last), and
    what did not check out (by path; empty after a strict read)."""

    root: Path
    manifest: Manifest
    manifest_data: bytes
    problems: dict[str, str] = field(default_factory=dict)
    state: CompileState | None = None  # the compile state that checked out against it (compile only)
    unvouched: frozenset[str] = frozenset()  # devices with a file the state did not vouch for (read at STAT)
    error: type[Exception] = OutputError

    @functools.cached_property
    def files(self) -> tuple[CheckedFile, ...]:
        """Every file the manifest lists, as :class:`CheckedFile` (made on first use: a compile,
        which reads the tree every run, never needs the 150,000 objects of a large fleet)."""
        files = [CheckedFile(device_path(serial, name), entry.sha256, entry.size, self.root, serial, self.error)
                 for serial, device in self.manifest.devices.items() for name, entry in device.files.items()]
        files += [CheckedFile(relpath, entry.sha256, entry.size, self.root, None, self.error)
                  for relpath, entry in self.manifest.fleet.items()]
        files.sort(key=lambda f: f.relpath)
        files.append(CheckedFile(MANIFEST_FILE, hashlib.sha256(self.manifest_data).hexdigest(),
                                 len(self.manifest_data), self.root, None, self.error))
        return tuple(files)

    def file(self, relpath: str) -> CheckedFile | None:
        return self._by_relpath.get(relpath)

    @functools.cached_property
    def _by_relpath(self) -> dict[str, CheckedFile]:
        return {f.relpath: f for f in self.files}

    def damaged_devices(self) -> set[str]:
        """Devices with any file (or their folder) not as the manifest says."""
        if DEVICES_DIR in self.problems:
            return set(self.manifest.devices)
        parts = (relpath.split("/") for relpath in self.problems)
        return {p[1] for p in parts if p[0] == DEVICES_DIR and len(p) > 1 and p[1] in self.manifest.devices}

    def reusable(self) -> Manifest:
        """The manifest without its damaged devices: what a compile may reuse without rendering."""
        bad = self.damaged_devices()
        return self.manifest.model_copy(
            update={"devices": {s: e for s, e in self.manifest.devices.items() if s not in bad}})


def read(folder: Path, *, check: Check = Check.DIGESTS, error: type[Exception] = OutputError) -> CheckedOutput:
    """Read ``folder`` and check it (see the module docstring); call with its lock held.

    Raises ``error`` (one line) when the folder is missing, has no valid manifest, is being
    replaced by a compile (or one was interrupted), or does not match its manifest. A compile,
    which repairs what does not match rather than refusing it, uses :func:`read_tree`.
    """
    try:
        target = target_of(folder)
    except OutputError as exc:
        raise error(str(exc)) from None
    if not target.is_dir():
        raise error(f"{folder}: no such folder; run `mdmgen compile` first or pass --out")
    _refuse_mid_swap(folder, target, error)
    tree = _read(folder, target, check, error)
    if tree is None:
        raise error(f"{folder}: no {MANIFEST_FILE}, so not an mdmgen output folder; run `mdmgen compile` first")
    if tree.problems:
        problems = sorted(f"{_shown(relpath)} {why}" for relpath, why in tree.problems.items())
        raise error(f"{folder}: does not match its {MANIFEST_FILE}: {first_of(problems, 1)}; "
                    f"`mdmgen compile` repairs it (`mdmgen compile --full` if {MANIFEST_FILE} itself was edited)")
    _refuse_mid_swap(folder, target, error)
    return tree


@contextlib.contextmanager
def checked(folder: Path, *, check: Check = Check.DIGESTS,
            error: type[Exception] = OutputError) -> Iterator[CheckedOutput]:
    """:func:`read`, holding the folder's shared lock while the caller uses the tree."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(locked(folder, shared=True))
        except OutputError as exc:
            raise (exc if isinstance(exc, error) else error(str(exc))) from None
        yield read(folder, check=check, error=error)


def read_tree(folder: Path, target: Path, check: Check, state: CompileState | None = None,
              known: tuple[bytes, Manifest] | None = None, twins: AbstractSet[str] = frozenset()
              ) -> CheckedOutput | None:
    """A tree as a compile reads it, lenient: None without a manifest, problems listed not raised;
    OutputError for a manifest that is not a valid mdmgen manifest. At ``STAT``, what ``state``
    (the compile state, already checked against the manifest that goes with this tree) vouches
    for is not read, and a folder unchanged since it was written is not listed; without one,
    ``STAT`` is ``DIGESTS``. ``known``: a manifest already parsed in this run, with its bytes
    (see ``manifest.load_manifest``). ``twins``: for the kept generation, the devices whose folder
    the state says holds the tree's very inodes (``state.encode``) and whose files in the tree
    checked out against the state in this run: their files are not ``lstat``-ed here."""
    return _read(folder, target, check, OutputError, state, known, twins)


def _read(folder: Path, target: Path, check: Check, error: type[Exception],
          state: CompileState | None = None, known: tuple[bytes, Manifest] | None = None,
          twins: AbstractSet[str] = frozenset()) -> CheckedOutput | None:
    try:
        loaded = load_manifest(target, known)
    except OutputError as exc:
        raise error(str(exc).replace(str(target), str(folder), 1)) from None
    if loaded is None:
        return None
    manifest = loaded.manifest
    if check is Check.STAT and state is None:
        check = Check.DIGESTS  # nothing vouches for any file: each is hashed
    vouched = state if check is Check.STAT else None
    expected = {relpath: (entry, None) for relpath, entry in manifest.fleet.items()}
    if vouched is None:
        expected.update({f"{DEVICES_DIR}/{serial}/{name}": (entry, serial)
                         for serial, device in manifest.devices.items() for name, entry in device.files.items()})
    present, problems = _survey(target, manifest, set(expected), vouched, devices=vouched is None)
    unvouched: set[str] = set()
    if vouched is not None:
        _survey_devices(target, manifest, vouched, problems, unvouched, twins)
    for relpath, (entry, _device) in expected.items():
        info = present.get(relpath)
        if info is None:
            problems.setdefault(relpath, "is missing")
        elif _edited(check, target, relpath, info, entry, state):
            problems[relpath] = EDITED
    if check is not Check.NAMES:
        _check_derived(target, manifest, check, problems)
    return CheckedOutput(target, manifest, loaded.data, problems, state=vouched, unvouched=frozenset(unvouched),
                         error=error)


def _edited(check: Check, root: Path, relpath: str, info: os.stat_result, entry: ManifestFile,
            state: CompileState | None) -> bool:
    """Whether a present regular file differs from its entry, as far as ``check`` looks: the size,
    and the digest of every file the compile state does not vouch for (all of them at DIGESTS)."""
    if check is Check.NAMES:
        return False
    if info.st_size != entry.size:
        return True
    if state is not None and state.vouches(relpath, info, entry.sha256, entry.size):
        return False
    return _digest(root / relpath, entry.size) != entry.sha256


def _check_derived(root: Path, manifest: Manifest, check: Check, problems: dict[str, str]) -> None:
    """Add the derived files (signed profiles) that are not what their ``derived`` entry says: made
    from another version of their source, or (at ``DIGESTS``) not embedding the source byte for byte."""
    for serial, device in manifest.devices.items():
        for name, made in (device.derived or {}).items():
            relpath = f"{DEVICES_DIR}/{serial}/{name}"
            if relpath in problems:
                continue
            if made.from_sha256 != device.files[made.source].sha256:
                problems[relpath] = f"was made from another version of {made.source} than the one listed"
            elif check is Check.DIGESTS:
                reason = _embedding_problem(root / relpath, device.files[name].size, made.from_sha256, made.source)
                if reason:
                    problems[relpath] = reason


def _embedding_problem(path: Path, size: int, source_sha256: str, source: str) -> str | None:
    try:
        data, _info = read_regular(path, size)
        content = cms.embedded_content(data)
    except (OSError, OutputError):
        return "cannot be read"
    except ValueError as exc:
        return str(exc)
    if hashlib.sha256(content).hexdigest() != source_sha256:
        return f"does not embed {source} byte for byte"
    return None


def _digest(path: Path, size: int) -> str | None:
    try:
        data, _info = read_regular(path, size)
    except (OSError, OutputError):
        return None
    return hashlib.sha256(data).hexdigest()


def _survey(root: Path, manifest: Manifest, expected: set[str], state: CompileState | None = None,
            devices: bool = True) -> tuple[dict[str, os.stat_result], dict[str, str]]:
    """Every regular file the folder holds where the manifest expects one (with its lstat), and
    every entry that is not what the manifest says, by path. Symlinks are never followed, and
    only folders the manifest implies are entered (``devices/`` is always ours).

    A folder whose inode has not changed since ``state`` was written (no entry added, removed or
    renamed in it since, see ``state``) holds what it held then, which is what the manifest the
    state is bound to lists: its expected entries are ``lstat``-ed instead of listing it.
    ``devices=False``: ``devices/`` is left to :func:`_survey_devices`."""
    folders = {DEVICES_DIR} if devices else set()
    children: dict[str, list[str]] = {}
    for relpath in expected:
        parts = relpath.split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            if folder not in folders:
                folders.add(folder)
                children.setdefault("/".join(parts[:i - 1]), []).append(parts[i - 1])
        children.setdefault("/".join(parts[:-1]), []).append(parts[-1])
    present: dict[str, os.stat_result] = {}
    problems: dict[str, str] = {}
    for top in sorted(f for f in folders if "/" not in f):
        _survey_folder(root, top, expected, folders, present, problems, state, children)
    return present, problems


def _survey_devices(root: Path, manifest: Manifest, state: CompileState, problems: dict[str, str],
                    unvouched: set[str], twins: AbstractSet[str] = frozenset()) -> None:
    """The ``STAT`` check of ``devices/`` under a compile state, as :func:`_survey` and
    :func:`_edited` would report it, with one ``lstat`` per entry and no more: a folder unchanged
    since the state was written is not listed, and a file the state vouches for (``state.vouches``,
    inlined: this runs for every file of the fleet) is not read. It walks the state's listing
    (the devices of the manifest it names, in its order), then checks any device it does not list
    with nothing vouched for. Adds to ``unvouched`` every device with a file it had to read or
    that did not check out (the others are exactly as the state recorded them).

    A device of ``twins`` (see :func:`read_tree`) whose folder is unchanged since the state was
    written, and whose files the manifest lists as the state does, is vouched for with that one
    ``lstat``: its entries are the ones the state saw, hard links to the tree's inodes, which
    this run found unchanged since (an edit in place of either is an edit of both)."""
    devices_path = f"{os.fspath(root)}/{DEVICES_DIR}"
    entries = manifest.devices
    try:
        info = os.lstat(devices_path)
    except FileNotFoundError:
        info = None
    if info is None or not stat.S_ISDIR(info.st_mode):
        if info is not None:
            problems[DEVICES_DIR] = "is not a folder (a symlink or a file in its place?)"
        for serial, device in entries.items():
            _missing(serial, device.files, problems, unvouched)
        return
    if info.st_ctime_ns >= state.written_ns:
        for name in os.listdir(devices_path):
            if name not in entries:
                problems[f"{DEVICES_DIR}/{name}"] = f"is not in {MANIFEST_FILE}"
    with folder_handle(devices_path) as at_devices:
        _survey_listed(devices_path, at_devices, entries, state, problems, unvouched, twins)


def _survey_listed(devices_path: str, at_devices: int, entries: Mapping[str, ManifestDevice], state: CompileState,
                   problems: dict[str, str], unvouched: set[str], twins: AbstractSet[str]) -> None:
    """The loop of :func:`_survey_devices` over every device, with ``devices/`` open: each
    ``lstat`` names its entry from there (a tenth cheaper than the whole path).

    Longer than a function should be, on purpose: it is the one loop over every file of a 100,000
    device fleet on a night that changed something, and a call per device or per file would cost
    more than the ``lstat`` it makes."""
    lstat, is_dir, is_reg = os.lstat, stat.S_ISDIR, stat.S_ISREG
    written = state.written_ns
    done: set[str] = set()
    for serial, names, flat, at in _listed_first(state, entries, done):
        device = entries.get(serial)
        if device is None or serial in done:
            continue
        done.add(serial)
        files = device.files
        folder = f"{devices_path}/{serial}"
        try:
            found = lstat(serial, dir_fd=at_devices)
        except FileNotFoundError:
            _missing(serial, files, problems, unvouched)
            continue
        if not is_dir(found.st_mode):
            problems[f"{DEVICES_DIR}/{serial}"] = "is not a folder (a symlink or a file in its place?)"
            _missing(serial, files, problems, unvouched)
            continue
        if found.st_ctime_ns >= written:
            unvouched.add(serial)
            _extra_entries(folder, serial, files, problems)
        elif serial in twins and list(files) == names:
            known = at
            for entry in files.values():
                if flat[known] != entry.sha256 or flat[known + 1] != entry.size:
                    break
                known += 3
            else:
                continue  # vouched for: the tree's own files, checked there
        for name, entry in files.items():
            try:
                st = lstat(f"{serial}/{name}", dir_fd=at_devices)
            except FileNotFoundError:
                problems[f"{DEVICES_DIR}/{serial}/{name}"] = "is missing"
                unvouched.add(serial)
                continue
            if name in names and is_reg(st.st_mode):
                known = at + 3 * names.index(name)
                if (flat[known] == entry.sha256 and flat[known + 1] == entry.size == st.st_size
                        and flat[known + 2] == st.st_mtime_ns and st.st_ctime_ns < written):
                    continue  # vouched for
            unvouched.add(serial)
            if not is_reg(st.st_mode):
                problems[f"{DEVICES_DIR}/{serial}/{name}"] = "is not a regular file"
            elif st.st_size != entry.size or _digest(Path(f"{folder}/{name}"), entry.size) != entry.sha256:
                problems[f"{DEVICES_DIR}/{serial}/{name}"] = EDITED


def _missing(serial: str, files: Iterable[str], problems: dict[str, str], unvouched: set[str]) -> None:
    unvouched.add(serial)
    for name in files:
        problems.setdefault(f"{DEVICES_DIR}/{serial}/{name}", "is missing")


def _listed_first(state: CompileState, entries: Mapping[str, object],
                  done: set[str]) -> Iterator[tuple[str, list[str], list, int]]:
    """(serial, file names, flat listing, where its files start) for each device the state lists,
    then (serial, [], [], 0) for each device of ``entries`` it does not (nothing vouched for)."""
    for joined, flat in state.groups.items():
        names = joined.split("/")
        step = 3 + 3 * len(names)
        for start in range(0, len(flat), step):
            yield flat[start], names, flat, start + 3
    if len(done) != len(entries):
        for serial in [serial for serial in entries if serial not in done]:
            yield serial, [], [], 0


def _extra_entries(folder: str, serial: str, files: dict[str, ManifestFile], problems: dict[str, str]) -> None:
    for name in os.listdir(folder):
        if name not in files:
            problems[f"{DEVICES_DIR}/{serial}/{name}"] = f"is not in {MANIFEST_FILE}"


def _survey_folder(root: Path, relpath: str, expected: set[str], folders: set[str],
                   present: dict[str, os.stat_result], problems: dict[str, str],
                   state: CompileState | None = None, children: dict[str, list[str]] | None = None) -> None:
    path = os.path.join(root, relpath)  # strings, not Path: this runs once per device folder
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return  # every file expected below it is then reported missing
    if not stat.S_ISDIR(info.st_mode):
        problems[relpath] = "is not a folder (a symlink or a file in its place?)"
        return
    if state is not None and children is not None and state.fresh(info):
        for name in children.get(relpath, ()):
            child = f"{relpath}/{name}"
            if child in folders:
                _survey_folder(root, child, expected, folders, present, problems, state, children)
                continue
            try:
                found = os.lstat(f"{path}/{name}")
            except FileNotFoundError:
                continue
            if stat.S_ISREG(found.st_mode):
                present[child] = found
            else:
                problems[child] = "is not a regular file"
        return
    with os.scandir(path) as entries:
        for entry in entries:
            child = f"{relpath}/{entry.name}"
            if child in expected:
                if entry.is_file(follow_symlinks=False):
                    present[child] = entry.stat(follow_symlinks=False)
                else:
                    problems[child] = "is not a regular file"
            elif child in folders:
                _survey_folder(root, child, expected, folders, present, problems, state, children)
            else:
                problems[child] = f"is not in {MANIFEST_FILE}"


def _shown(relpath: str) -> str:
    """A path for a one-line message: quoted when a part is not a safe name (a newline, a space)."""
    return relpath if not any(unsafe_name(part) for part in relpath.split("/")) else repr(relpath)


def _refuse_mid_swap(folder: Path, target: Path, error: type[Exception]) -> None:
    """Refuse a folder a compile is replacing or left half-replaced (the caller holds the
    folder's shared lock, so no compile can start while it reads)."""
    leftover = interrupted(target)
    if leftover is not None:
        raise error(f"{folder}: a compile is replacing this folder or was interrupted "
                    f"({leftover.name} exists); wait for it, or run `mdmgen compile` again")
