"""The one reader of an output folder: ``diff``, ``preflight``, every publisher and ``compile`` itself
read a tree on disk only through :func:`read` (or :func:`checked`, which also holds the lock).

Nothing in a tree is trusted before it is checked. The manifest must be an mdmgen manifest whose
every name is safe (``models.unsafe_name``), and the folder must hold exactly what it lists:
every ``devices/<SERIAL>`` a real folder (not a symlink), every file a regular file, nothing
extra. How much of the content is checked is the caller's choice (:class:`Check`):

* ``NAMES``: only the above. ``diff`` and ``preflight`` open few files, and each is checked
  against its digest as it is read (:meth:`CheckedFile.read`).
* ``STAT``: also each file's size, and the digest of every file that is not provably older than
  the manifest. A compile writes the manifest after every file of the tree and never changes a
  file afterwards (unchanged files keep their modification time), so a file whose mtime is
  earlier than the manifest's is as the compile left it, unless someone set its mtime back on
  purpose. A file edited in place since has a later mtime, and one edited in the same clock tick
  as the manifest was written cannot be told apart, so it is hashed (git's "racy" rule). This
  costs one ``lstat`` per file, no record beyond the manifest (whose bytes stay deterministic),
  and hashes only what changed. ``compile`` uses it every run to find hand-edited files.
* ``DIGESTS``: every file hashed. Publishers, before they upload anything, and ``compile --full``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from pydantic import ValidationError

from .. import __version__, fastpath
from ..emit import cms
from ..messages import first_of
from ..models import Manifest, ManifestFile, unsafe_name
from ..rowcache import RowCacheFile
from ..runmemo import RunMemoFile
from .layout import (
    DEVICES_DIR,
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    OutputError,
    device_path,
    interrupted,
    is_real_dir,
    read_regular,
    sidecar,
    target_of,
)
from .lock import locked
from .manifest import load_manifest

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
    row_cache: dict[str, str] | None = None  # the rows the last compile validated (compile only, see rowcache)
    kept_sha256: str = ""  # the kept generation's manifest digest, as the last compile recorded it
    canonical: bool = False  # manifest_data are the bytes this mdmgen version wrote (its digest was recorded)
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


def read_tree(folder: Path, target: Path, check: Check, written: frozenset[str] = frozenset()) -> CheckedOutput | None:
    """A tree as a compile reads it, lenient: None without a manifest, problems listed not raised;
    OutputError for a manifest that is not a valid mdmgen manifest. ``written``: digests of
    manifests a compile recorded as written by itself (see :func:`_all_older`)."""
    return _read(folder, target, check, OutputError, written)


def read_row_cache(target: Path) -> RowCacheFile | None:
    """The row cache beside ``target`` (see ``rowcache``), or None when there is none, it cannot
    be read, it is not valid, or it was written by another mdmgen version: a cache only ever
    saves work, so any doubt costs a full check, never an error. The caller binds it to the
    manifest it reads (``manifest_sha256``)."""
    try:
        data, _info = read_regular(sidecar(target, "rows"), MAX_MANIFEST_BYTES)
        cache = RowCacheFile.model_validate_json(data)
    except (OSError, OutputError, ValidationError):
        return None
    if (cache.generator, cache.version) != ("mdmgen", __version__):
        return None
    return cache


def _read(folder: Path, target: Path, check: Check, error: type[Exception],
          written: frozenset[str] = frozenset()) -> CheckedOutput | None:
    try:
        loaded = load_manifest(target)
    except OutputError as exc:
        raise error(str(exc).replace(str(target), str(folder), 1)) from None
    if loaded is None:
        return None
    manifest = loaded.manifest
    if (check is Check.STAT and written and fastpath.enabled()
            and hashlib.sha256(loaded.data).hexdigest() in written
            and _all_older(target, _manifest_entries(manifest), loaded.mtime_ns)):
        problems: dict[str, str] = {}
        _check_derived(target, manifest, check, problems)  # reads no file at STAT: the manifest's own word
        return CheckedOutput(target, manifest, loaded.data, problems, error=error)
    expected = {f"{DEVICES_DIR}/{serial}/{name}": (entry, serial)
                for serial, device in manifest.devices.items() for name, entry in device.files.items()}
    expected.update({relpath: (entry, None) for relpath, entry in manifest.fleet.items()})
    present, problems = _survey(target, manifest, set(expected))
    for relpath, (entry, _device) in expected.items():
        info = present.get(relpath)
        if info is None:
            problems.setdefault(relpath, "is missing")
        elif _edited(check, target, relpath, info, entry, loaded.mtime_ns):
            problems[relpath] = EDITED
    if check is not Check.NAMES:
        _check_derived(target, manifest, check, problems)
    return CheckedOutput(target, manifest, loaded.data, problems, error=error)


def _all_older(root: Path, entries: Iterable[tuple[str, int | None]], manifest_mtime_ns: int) -> bool:
    """The ``STAT`` check without listing a folder: True when every folder (size None) and file of
    ``entries`` (path from ``root``, a folder before its files) is there, of the right type (no
    symlink) and size, and provably older than the manifest; False at the first doubt, and the
    full survey decides.

    A folder's mtime changes whenever an entry is added, removed or renamed in it, so a folder
    older than the manifest holds what the compile left (the rule the files' check already relies
    on, for the same reason, with the same exception: an mtime set back on purpose). What the
    compile left is what the manifest lists only if the manifest is the one it wrote, so this is
    used only for a manifest whose digest the compile recorded (the row cache, the run memo); an
    edited manifest gets the full survey. That turns a ``scandir`` per device into one ``lstat``,
    which is what a no-change night costs."""
    base = os.fspath(root)
    lstat, is_dir, is_reg = os.lstat, stat.S_ISDIR, stat.S_ISREG
    try:
        for relpath, size in entries:
            info = lstat(f"{base}/{relpath}")
            if info.st_mtime_ns >= manifest_mtime_ns:
                return False
            if size is None:
                if not is_dir(info.st_mode):
                    return False
            elif not is_reg(info.st_mode) or info.st_size != size:
                return False
    except OSError:
        return False
    return True


def _fleet_folders(fleet: Iterable[str]) -> list[str]:
    """``devices`` and every folder the fleet files' paths pass through, parents first."""
    folders = {DEVICES_DIR}
    for relpath in fleet:
        parts = relpath.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return sorted(folders, key=lambda folder: (folder.count("/"), folder))


def _manifest_entries(manifest: Manifest) -> Iterator[tuple[str, int | None]]:
    """What :func:`_all_older` checks of a tree the manifest describes."""
    for folder in _fleet_folders(manifest.fleet):
        yield folder, None
    for relpath, entry in manifest.fleet.items():
        yield relpath, entry.size
    for serial, device in manifest.devices.items():
        yield f"{DEVICES_DIR}/{serial}", None
        for name, entry in device.files.items():
            yield f"{DEVICES_DIR}/{serial}/{name}", entry.size


def memo_listing(manifest: Manifest) -> tuple[list[str], dict[str, int], dict[str, list[str | int]]]:
    """The run memo's listing of the tree ``manifest`` describes: the folders, the fleet files' sizes,
    and the devices grouped by their sorted file names, each as its serial followed by the files'
    sizes. The same tree gives the same listing whether its manifest was just built or parsed."""
    grouped: dict[tuple[str, ...], list[str | int]] = {}
    sorted_names: dict[tuple[str, ...], tuple[str, ...]] = {}  # the names in sorted order, by their order here
    for serial, device in manifest.devices.items():
        files = device.files
        names = tuple(files)  # in the order of the model: as built, or as parsed (sorted)
        ordered = sorted_names.get(names)
        if ordered is None:
            ordered = sorted_names[names] = tuple(sorted(names))
        flat = grouped.setdefault(ordered, [])
        flat.append(serial)
        flat.extend(files[name].size for name in ordered)
    return (_fleet_folders(manifest.fleet), {relpath: entry.size for relpath, entry in manifest.fleet.items()},
            {"/".join(names): flat for names, flat in grouped.items()})


def read_run_memo(target: Path) -> RunMemoFile | None:
    """The run memo beside ``target`` (see ``runmemo``), or None on any doubt: no memo, an
    unreadable or invalid one, one of another mdmgen version, or fast paths off."""
    if not fastpath.enabled():
        return None
    try:
        data, _info = read_regular(sidecar(target, "run"), MAX_MANIFEST_BYTES)
        memo = RunMemoFile.model_validate_json(data)
    except (OSError, OutputError, ValidationError):
        return None
    return memo if (memo.generator, memo.version) == ("mdmgen", __version__) else None


def memo_holds(target: Path, memo: RunMemoFile) -> bool:
    """Whether the folder and its kept generation are exactly as the compile that wrote ``memo``
    left them: both manifests have its digests, and every folder and file it lists is there,
    of the right type and size and older than the manifest (the cheap check, without parsing
    the manifest). Every name is checked before it becomes a path; the kept generation's files
    are checked when a compile next uses it as its staging tree."""
    try:
        if not is_real_dir(target) or not is_real_dir(target / DEVICES_DIR):
            return False
        data, info = read_regular(target / MANIFEST_FILE, MAX_MANIFEST_BYTES)
        if hashlib.sha256(data).hexdigest() != memo.manifest_sha256:
            return False
        kept = sidecar(target, "prev")
        if not is_real_dir(kept):
            return False
        kept_data, _kept_info = read_regular(kept / MANIFEST_FILE, MAX_MANIFEST_BYTES)
        if hashlib.sha256(kept_data).hexdigest() != memo.kept_sha256:
            return False
    except (OSError, OutputError):
        return False
    if not _memo_names_safe(memo):
        return False
    return _all_older(target, _memo_entries(memo), info.st_mtime_ns)


def _memo_entries(memo: RunMemoFile) -> Iterator[tuple[str, int | None]]:
    """What :func:`_all_older` checks of the tree a run memo lists (its names checked first, by
    :func:`_memo_names_safe`)."""
    for folder in memo.folders:
        yield folder, None
    yield from memo.fleet.items()
    for names, flat in memo.devices.items():
        files = names.split("/")
        step = len(files) + 1
        for start in range(0, len(flat), step):
            serial = flat[start]
            yield f"{DEVICES_DIR}/{serial}", None
            for name, size in zip(files, flat[start + 1:start + step], strict=True):
                yield f"{DEVICES_DIR}/{serial}/{name}", size  # type: ignore[misc]


def _memo_names_safe(memo: RunMemoFile) -> bool:
    """Every name of the memo's listing is a safe path part and every size an integer."""
    paths = [*memo.folders, *memo.fleet]
    if any(not isinstance(p, str) or any(unsafe_name(part) for part in p.split("/")) for p in paths):
        return False
    for names, flat in memo.devices.items():
        files = names.split("/")
        if any(unsafe_name(name) for name in files) or len(flat) % (len(files) + 1):
            return False
        step = len(files) + 1
        for start in range(0, len(flat), step):
            serial = flat[start]
            if not isinstance(serial, str) or unsafe_name(serial):
                return False
            if not all(type(size) is int and size >= 0 for size in flat[start + 1:start + step]):
                return False
    return True


def _edited(check: Check, root: Path, relpath: str, info: os.stat_result, entry: ManifestFile,
            manifest_mtime_ns: int) -> bool:
    """Whether a present regular file differs from its entry, as far as ``check`` looks: the size
    for STAT, and the digest of every file for DIGESTS, or for STAT of a file not provably older
    than the manifest."""
    if check is Check.NAMES:
        return False
    if info.st_size != entry.size:
        return True
    if check is Check.STAT and info.st_mtime_ns < manifest_mtime_ns:
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


def _survey(root: Path, manifest: Manifest, expected: set[str]) -> tuple[dict[str, os.stat_result], dict[str, str]]:
    """Every regular file the folder holds where the manifest expects one (with its lstat), and
    every entry that is not what the manifest says, by path. Symlinks are never followed, and
    only folders the manifest implies are entered (``devices/`` is always ours)."""
    folders = {DEVICES_DIR}
    for relpath in expected:
        parts = relpath.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    present: dict[str, os.stat_result] = {}
    problems: dict[str, str] = {}
    for top in sorted(f for f in folders if "/" not in f):
        _survey_folder(root, top, expected, folders, present, problems)
    return present, problems


def _survey_folder(root: Path, relpath: str, expected: set[str], folders: set[str],
                   present: dict[str, os.stat_result], problems: dict[str, str]) -> None:
    path = os.path.join(root, relpath)  # strings, not Path: this runs once per device folder
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return  # every file expected below it is then reported missing
    if not stat.S_ISDIR(info.st_mode):
        problems[relpath] = "is not a folder (a symlink or a file in its place?)"
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
                _survey_folder(root, child, expected, folders, present, problems)
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
