"""Writing the tree: staging, the atomic swap, incremental reuse, the kept generation, repairs.

A compile first reads the compile state (:func:`read_state`, see ``state``) and then the current
tree with the checked reader (:func:`read_previous`, at the ``STAT`` level under that state), so
a hand-edited, deleted or replaced file is found without re-hashing the fleet: its device is
rendered again and the file rewritten, never linked. The kept generation is read the same way
before it is reused as the staging tree, only when the state names its manifest, and anything
in it that does not check out is removed and rebuilt (a *twin* folder of it, see ``state.encode``,
is checked through the tree's files, which are its own). The state is written last.

Every path is built from names the manifest model has checked (``models.unsafe_name``) or
from entries just listed in a folder that was checked to be a real folder; files are created
with ``O_EXCL | O_NOFOLLOW`` and removed without following links.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import errno
import hashlib
import logging
import os
import shutil
import stat
import sys
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

from .. import fastpath
from ..models import CompiledDevice, Manifest, ManifestFile, ManifestSecret, unsafe_name
from ..progress import NO_PROGRESS, Progress
from ..summary import RunSummary
from . import state as compile_state
from .layout import (
    DEVICES_DIR,
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    OutputError,
    digest_regular,
    is_real_dir,
    read_regular,
    sidecar,
    target_of,
)
from .manifest import (
    SECRET_FILE_MODE,
    Changes,
    Derived,
    DerivedFiles,
    build_manifest,
    compare,
    load_manifest,
    manifest_bytes,
    write_new,
)
from .reader import Check, CheckedOutput, read_tree
from .state import CompileState, NewState, StateRead

log = logging.getLogger(__name__)


def read_state(out: Path) -> StateRead:
    """The compile state beside ``out`` when it checks out against the folder's manifest (see
    ``state``), or why not. Call with the lock held exclusively: a run killed mid-swap is put
    right first."""
    target = target_of(out)
    recover(target)
    if not fastpath.enabled() or not is_real_dir(target):
        return StateRead()
    try:
        digest = digest_regular(target / MANIFEST_FILE, MAX_MANIFEST_BYTES)
    except (OSError, OutputError):
        return StateRead()  # the reader says what is wrong with it
    return compile_state.read_state(target, digest)


def read_previous(out: Path, read: StateRead | None = None, *, full: bool = False) -> CheckedOutput | None:
    """The current output as a compile sees it, with what does not match its manifest listed
    (every file hashed, except what the compile state vouches for; ``full``: every file); None
    when there is no previous output. Call with the lock held exclusively, after :func:`read_state`;
    the one line saying why its record is ignored, if it is, comes after the tree was read."""
    target = target_of(out)
    recover(target)
    if not target.exists():
        return None
    use = None if full or read is None else read.state
    try:
        tree = read_tree(out, target, Check.STAT if use is not None else Check.DIGESTS, use)
    except OutputError as exc:
        raise OutputError(f"{exc}; move the folder aside or pass another --out") from None
    if tree is not None and use is not None and use.manifest_sha256 != _sha(tree.manifest_data):
        # Replaced between the two reads: nothing of the state is used.
        tree = read_tree(out, target, Check.DIGESTS)
    if read is not None and not full:
        read.log_note()
    if tree is not None and tree.problems:
        log.warning("%s: %d file(s) do not match %s and will be repaired", out, len(tree.problems), MANIFEST_FILE)
    return tree


def unchanged(out: Path, state: CompileState, run_key: Callable[[CompileState], str | None]) -> RunSummary | None:
    """The last compile's summary when nothing it was made from changed (``run_key``, the key of
    the inputs now, checks out against ``state``) and nothing it left has changed since (see
    ``state.holds``); None: compile. Call with the lock held exclusively."""
    if not state.run_check or state.summary is None:
        return None
    key = run_key(state)
    if key is None or not state.holds_run(key) or not compile_state.holds(target_of(out), state):
        return None
    log.info("nothing changed since the last compile (compile state); %s left as it was", out)
    return state.summary


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class WriteRequest:
    """What a compile asks the output folder to hold: its devices (a reused one has ``files=None``
    and keeps the previous tree's), the fleet files, what the manifest says of secrets and
    pseudonyms, the derived files made after the compile (signed profiles, see ``signing``; one
    given without bytes is kept from the previous tree like any unchanged file), and what the
    compile state will record (``new_state``; None: no record). ``fresh`` (``--full``, or the fast
    paths off) rebuilds the staging tree from nothing."""

    compiled: list[CompiledDevice]
    fleet_files: Mapping[str, bytes] = field(default_factory=dict)
    secret_env: list[str] = field(default_factory=list)
    secrets: Mapping[str, ManifestSecret] = field(default_factory=dict)
    derived: DerivedFiles = field(default_factory=dict)
    new_state: NewState | None = None
    pseudonymised: bool = False
    fresh: bool = False


def write(out: Path, request: WriteRequest, previous: CheckedOutput | None,
          progress: Progress = NO_PROGRESS) -> Changes:
    """Make ``out`` hold exactly what ``request`` asks; call with the lock held.

    ``previous`` is :func:`read_previous`'s answer. Files whose bytes equal the previous output's
    are hard-linked from it rather than rewritten, unless they did not check out; if the new
    manifest equals the previous one and everything checked out, nothing is touched. With the
    fast paths off nothing is linked either: every file is written.

    The files of a device that embeds a secret are mode 0600 (a signed profile too: it embeds
    its profile). After a compile that rotated a secret (a fingerprint changed, or a secret is no
    longer used), the kept generation is rebuilt from the new tree, as after a repair: the tree
    just replaced holds the old token, and it must not stay readable on disk beside the output folder.
    The same holds for the first compile with ``pseudonymised`` (``pseudonymise_email`` on): the tree
    just replaced holds every raw address, which the manifest's ``pseudonymised`` flag tells apart.
    The compile state is written beside the folder once the tree and the kept generation are in place.
    """
    target = target_of(out)
    manifest, new_manifest = _new_manifest(request, previous)
    old = previous.manifest if previous else None
    changes = compare(manifest, old)
    changes.repaired = sorted(previous.problems) if previous else []
    try:
        recover(target)
        if (not request.fresh and previous is not None and not previous.problems
                and previous.manifest_data == new_manifest):
            log.info("nothing changed; %s left as it was", out)
            _leave_as_is(target, request.new_state, previous, manifest, new_manifest)
            return changes
        compile_state.write_state(target, None)  # it vouches for the tree about to change; rewritten at the end
        settled, twins = _build_and_swap(target, request, manifest, previous, new_manifest, progress)
        kept = previous.manifest_data if previous else new_manifest  # the tree just replaced, or a copy
        if changes.repaired or _gone(old, manifest):
            # The tree just replaced holds the damaged files (a file edited in place is shared
            # with it through a hard link), the old token or raw addresses: keep the new tree as
            # the generation.
            _keep_generation(target, manifest, new_manifest)
            kept, twins = new_manifest, set(manifest.devices)
        _keep_state(target, request.new_state, manifest, new_manifest, kept, touched=True,
                    old=previous.state if previous else None, settled=settled, twins=twins)
    except OutputError:
        _remove(sidecar(target, "new"))
        raise
    except OSError as exc:
        _remove(sidecar(target, "new"))
        reason = exc.strerror or str(exc)
        raise OutputError(f"{exc.filename or out}: cannot write the output folder: {reason}") from None
    changes.written = True
    return changes


def _new_manifest(request: WriteRequest, previous: CheckedOutput | None) -> tuple[Manifest, bytes]:
    """The new manifest and its bytes. A reused device's entry is the previous one, and so is its
    line: the previous bytes are this version's own (the compile state that checked out names
    their digest), so a night's manifest is mostly copied lines, not encoded again."""
    old = previous.manifest if previous else None
    manifest = build_manifest(request.compiled, old, request.secret_env, dict(request.fleet_files),
                              dict(request.secrets), request.derived, request.pseudonymised)
    if previous is not None and previous.state is not None:
        return manifest, manifest_bytes(manifest, old, previous.manifest_data)
    return manifest, manifest_bytes(manifest)


def _leave_as_is(target: Path, new_state: NewState | None, previous: CheckedOutput, manifest: Manifest,
                 manifest_data: bytes) -> None:
    """A night whose manifest is the folder's: the tree stays; the kept generation is made again
    only when it is incomplete or holds what must be gone, and the record is brought up to date."""
    state = previous.state
    parsed = (previous.manifest_data, previous.manifest)  # the kept generation's, after a quiet night
    twins = _twins(previous)
    generation = _complete_generation(sidecar(target, "prev"), state, parsed, twins)
    touched = generation is None or _holds_what_is_gone(sidecar(target, "prev"), manifest, parsed)
    if generation is None or touched:
        _keep_generation(target, manifest, manifest_data)
        kept, twins = manifest_data, set(manifest.devices)
    else:
        # Both folders of a twin are the ones the record said so of, and neither changed since.
        kept, twins = generation.manifest_data, twins - generation.unvouched
    settled = set(manifest.devices) - previous.unvouched if state is not None else set()
    _keep_state(target, new_state, manifest, manifest_data, kept, touched=touched, old=state, settled=settled,
                twins=twins)


def _twins(tree: CheckedOutput | None) -> set[str]:
    """The devices of a tree read under its compile state whose kept folder the state says holds
    the tree's very inodes (``state.encode``) and whose folder and files in the tree checked out
    against the state in this run: the kept folder needs no more than its own ``lstat``."""
    if tree is None or tree.state is None:
        return set()
    return set(tree.state.twins & tree.manifest.devices.keys()) - tree.unvouched - tree.damaged_devices()


@dataclass
class _Staging:
    """One build of the new tree: the staging folder, what it held already (``had``, the kept
    generation's checked manifest), the tree being replaced (``current``) and its damaged files,
    and the counts for the log line."""

    folder: Path
    target: Path
    had: Manifest
    current: Manifest | None
    damaged: set[str]
    counts: dict[str, int] = field(default_factory=lambda: {"written": 0, "linked": 0, "kept": 0})

    def place(self, relpath: str, meta: ManifestFile, data: bytes | None, staged_meta: ManifestFile | None,
              before: ManifestFile | None, secret: bool = False) -> bool:
        """One file of the new tree: kept when the staging tree has these bytes, hard-linked from
        the tree being replaced when it has them and they checked out, else written. True when
        it was linked."""
        dest = f"{self.folder}/{relpath}"
        if staged_meta is not None:
            if staged_meta.sha256 == meta.sha256:
                self.counts["kept"] += 1  # the staging generation already has these bytes
                _restrict(dest, secret)
                return False
            os.unlink(dest)
        if (before is not None and before.sha256 == meta.sha256 and relpath not in self.damaged
                and fastpath.enabled()):
            os.link(f"{self.target}/{relpath}", dest, follow_symlinks=False)  # same inode: mtime kept
            self.counts["linked"] += 1
            _restrict(dest, secret)
            return True
        if data is None:
            raise OutputError(f"{self.target / relpath}: not rendered and not reusable; run compile with --full")
        write_new(dest, data, SECRET_FILE_MODE if secret else 0o666)
        self.counts["written"] += 1
        return False


def _build_and_swap(target: Path, request: WriteRequest, manifest: Manifest, previous: CheckedOutput | None,
                    manifest_data: bytes, progress: Progress) -> tuple[set[str], set[str]]:
    """Bring a staging tree to the new state, then swap it in. Returns the devices whose folder
    was taken from the kept generation as it was, every file of it vouched for by the state, and
    the twins of the new record (``state.encode``): the folder and the kept generation made of
    one tree by links, or a device whose two folders were twins and were swapped unchanged.

    The staging tree is the generation before the current one (kept as ``.<name>.mdmgen-prev``
    by the last run) when there is one that checks out: it already holds most devices, so only
    what changed since then is touched, instead of recreating a folder per device. Without it
    (first run, ``--full``, fast paths off, no compile state, or a run killed mid-way) the staging
    tree is built from scratch.

    The kept generation relies on this: its manifest is the one the compile state names
    (``kept_sha256``), and each of its files is either vouched for by the state (its sha256,
    exact size and mtime recorded, its inode unchanged since) or hashed, and each of its folders
    is unchanged since the state was written or listed (:func:`_checked_generation`). A device
    folder of it is skipped only when that check found it to hold exactly the files of the new
    entry; anything that did not check out is removed first (:func:`_clean_staging`).
    """
    twins = _twins(previous)
    folder, staged = _take_staging(target, fresh=request.fresh, previous=previous, twins=twins)
    staging = _Staging(folder=folder, target=target, had=_clean_staging(folder, staged),
                       current=previous.manifest if previous else None,
                       damaged=set(previous.problems) if previous else set())
    unvouched = staged.unvouched if staged is not None and staged.state is not None else None
    settled, linked = _stage_devices(staging, request, manifest, unvouched, progress)
    _stage_fleet(staging, request.fleet_files, manifest)
    write_new(folder / MANIFEST_FILE, manifest_data)
    log.info("output: %d files written, %d linked, %d already in the staging generation",
             staging.counts["written"], staging.counts["linked"], staging.counts["kept"])
    if not target.exists():
        os.rename(folder, target)
        # The first compile into a folder keeps a generation too, so that the first night that
        # changes something touches only what changed, and a night with no change writes nothing.
        # The tree is in place already: a generation that cannot be made is only work for later.
        try:
            _keep_generation(target, manifest, manifest_data)
        except OSError as exc:
            log.warning("%s: kept generation not made (%s); the next compile makes it", target, exc.strerror or exc)
            _remove(sidecar(target, "new"))
            return settled, set()
        return settled, set(manifest.devices)
    _swap_in(staging, manifest)
    return settled, (settled & twins) | linked


def _stage_devices(staging: _Staging, request: WriteRequest, manifest: Manifest, unvouched: AbstractSet[str] | None,
                   progress: Progress) -> tuple[set[str], set[str]]:
    """Every device folder of the new tree in the staging tree; the folders of new devices are
    written last, over threads (:func:`_in_parallel`). Returns the settled devices (see
    :func:`_build_and_swap`) and the linked ones: every file hard-linked from the tree being
    replaced, whose folder (checked, with no problem) lists the same names, so that once it is
    the kept generation the two folders are twins (``state.encode``)."""
    had, current = staging.had, staging.current
    devices_dir = staging.folder / DEVICES_DIR
    if not is_real_dir(devices_dir):
        devices_dir.mkdir()
    settled: set[str] = set()
    linked: set[str] = set()
    new_folders: list[tuple[str, list[tuple[str, bytes, int]]]] = []
    progress.start(len(request.compiled), "Writing")
    for item in request.compiled:
        progress.advance()
        serial = item.device.serial
        if unsafe_name(serial):
            raise OutputError(f"refusing to write unsafe path {serial!r}")
        entry = manifest.devices[serial]
        old_entry = had.devices.get(serial)
        if old_entry is not None and not entry.secrets and old_entry.files == entry.files:
            staging.counts["kept"] += len(entry.files)  # what ``place`` would find for each file: already staged
            if unvouched is not None and serial not in unvouched:
                settled.add(serial)
            continue
        before = current.devices.get(serial) if current else None
        mode = SECRET_FILE_MODE if entry.secrets else 0o666
        data_of = {name: _data_of(item, name, request.derived.get(serial)) for name in entry.files}
        if old_entry is None and before is None and None not in data_of.values():  # a new folder, every file new
            folder = f"{staging.folder}/{DEVICES_DIR}/{serial}"
            new_folders.append((folder, [(f"{folder}/{name}", data, mode) for name, data in data_of.items()]))
            continue
        if old_entry is None:
            os.mkdir(devices_dir / serial)
        else:
            for name in set(old_entry.files) - set(entry.files):
                os.unlink(devices_dir / serial / name)
        links = [staging.place(f"{DEVICES_DIR}/{serial}/{name}", meta, data_of[name],
                               old_entry.files.get(name) if old_entry else None,
                               before.files.get(name) if before else None, secret=bool(entry.secrets))
                 for name, meta in entry.files.items()]
        if all(links) and before is not None and before.files.keys() == entry.files.keys():
            linked.add(serial)
    _in_parallel(_write_folder, new_folders)
    staging.counts["written"] += sum(len(files) for _folder, files in new_folders)
    progress.finish()
    for serial in set(had.devices) - set(manifest.devices):
        _remove(devices_dir / serial)
    return settled, linked


def _stage_fleet(staging: _Staging, fleet_files: Mapping[str, bytes], manifest: Manifest) -> None:
    """The fleet files (the collector side) of the new tree in the staging tree; the ones it no
    longer has are removed, with their folders when left empty."""
    had, current = staging.had, staging.current
    for relpath in set(had.fleet) - set(manifest.fleet):
        _remove(staging.folder / relpath)
        _remove_empty_parents(staging.folder, relpath)
    for relpath, meta in manifest.fleet.items():
        _make_parents(staging.folder, relpath)
        staging.place(relpath, meta, fleet_files[relpath], had.fleet.get(relpath),
                      current.fleet.get(relpath) if current else None)


def _swap_in(staging: _Staging, manifest: Manifest) -> None:
    """Swap the staging tree with the folder (atomically where the system can), carrying over the
    entries mdmgen does not own; the tree replaced becomes the next run's staging generation."""
    folder, target = staging.folder, staging.target
    owned = _owned(manifest) | _owned(staging.current) | _owned(staging.had)
    os.chmod(folder, target.stat().st_mode & 0o7777)
    for name in sorted(os.listdir(folder)):
        if name not in _owned(manifest):
            _remove(folder / name)
    for name in sorted(os.listdir(target)):
        if name not in owned:
            _link_copy(target / name, folder / name)
    if not _exchange(folder, target):
        parked = sidecar(target, "old")
        os.rename(target, parked)
        os.rename(folder, target)
        os.rename(parked, folder)
    os.rename(folder, sidecar(target, "prev"))  # the old tree: next run's staging generation


PARALLEL_FROM = 2000
"""Folders to create before the work is spread over threads: each ``mkdir``, ``open`` and ``link``
waits on the file system with the GIL released, so a few threads overlap those waits."""
THREADS = 4


def _in_parallel(work, items: list) -> None:
    """``work(item)`` for every item; over threads for many (the order does not matter: each item
    is its own folder). The first error is raised, as a sequential loop would.

    It relies on this: each item touches only its own folder (no two items share a path), the
    work is only system calls on paths (no shared Python state), and a failure anywhere fails the
    whole write, whose staging tree is then removed, so a half-done set of folders is never seen."""
    if len(items) < PARALLEL_FROM or not fastpath.enabled():
        for item in items:
            work(item)
        return
    chunk = max(1, len(items) // (THREADS * 8))
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(lambda part: [work(item) for item in part], items[i:i + chunk])
                   for i in range(0, len(items), chunk)]
        for future in futures:
            future.result()


def _write_folder(item: tuple[str, list[tuple[str, bytes, int]]]) -> None:
    folder, files = item
    os.mkdir(folder)
    for path, data, mode in files:
        write_new(path, data, mode)


def _link_folder(item: tuple[str, str, list[str]]) -> None:
    source, folder, names = item
    os.mkdir(folder)
    for name in names:
        os.link(f"{source}/{name}", f"{folder}/{name}", follow_symlinks=False)


def _restrict(path: str, secret: bool) -> None:
    """A reused file that embeds a secret is made 0600 if it is not (one linked from a tree an
    older version wrote); never through a link."""
    if not secret:
        return
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & ~SECRET_FILE_MODE:
            os.fchmod(fd, SECRET_FILE_MODE)
    finally:
        os.close(fd)


def _secrets_rotated(old: Manifest | None, new: Manifest) -> bool:
    """Whether a secret the old tree embedded is gone or has another fingerprint in the new one."""
    before = (old.secrets or {}) if old else {}
    after = new.secrets or {}
    return any(label not in after or after[label].fingerprint != entry.fingerprint
               for label, entry in before.items())


def _emails_pseudonymised(old: Manifest | None, new: Manifest) -> bool:
    """Whether the new tree pseudonymises the addresses the old one held in clear."""
    return bool(new.pseudonymised) and old is not None and not old.pseudonymised


def _gone(old: Manifest | None, new: Manifest) -> bool:
    """Whether the old tree holds what must not stay on disk beside the new one: a secret rotated
    away, or raw addresses the new tree pseudonymises."""
    return _secrets_rotated(old, new) or _emails_pseudonymised(old, new)


def _holds_what_is_gone(generation: Path, manifest: Manifest, known: tuple[bytes, Manifest] | None = None) -> bool:
    """Whether a kept generation holds a secret or a raw address the current tree no longer has (a
    run killed between the swap and rebuilding the generation after a rotation or after
    ``pseudonymise_email`` was turned on)."""
    try:
        loaded = load_manifest(generation, known)
    except OutputError:
        return True
    return loaded is not None and _gone(loaded.manifest, manifest)


def _data_of(item: CompiledDevice, name: str, derived: Mapping[str, Derived] | None) -> bytes | None:
    """The new bytes of one device file (None: unchanged, kept from the previous tree)."""
    if derived and name in derived:
        return derived[name].data
    return item.files.get(name) if item.files else None


def _owned(manifest: Manifest | None) -> set[str]:
    """The entries of the folder's root that mdmgen owns: the rest is carried over untouched."""
    if manifest is None:
        return set()
    return {DEVICES_DIR, MANIFEST_FILE} | {relpath.split("/")[0] for relpath in manifest.fleet}


def _take_staging(target: Path, *, fresh: bool, previous: CheckedOutput | None,
                  twins: AbstractSet[str] = frozenset()) -> tuple[Path, CheckedOutput | None]:
    """The folder to build the new tree in, and what it already holds (checked, problems listed).

    The kept generation is used only when the compile state that checked out against the current
    tree names its manifest (``kept_sha256``): a kept generation whose manifest is anything else
    (copied over, edited, half rebuilt) is not obeyed in any part, but removed and rebuilt.
    ``twins``: :func:`_twins` of ``previous`` (see ``reader.read_tree``)."""
    staging = sidecar(target, "new")
    previous_generation = sidecar(target, "prev")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove(staging)
    if not fresh and is_real_dir(previous_generation):
        staged = _checked_generation(previous_generation, previous.state if previous else None,
                                     (previous.manifest_data, previous.manifest) if previous else None, twins)
        if staged is not None:
            os.rename(previous_generation, staging)
            os.unlink(staging / MANIFEST_FILE)  # from here on it is a work in progress
            return staging, staged
    _remove(previous_generation)
    staging.mkdir()
    return staging, None


def _checked_generation(folder: Path, state: CompileState | None,
                        known: tuple[bytes, Manifest] | None = None,
                        twins: AbstractSet[str] = frozenset()) -> CheckedOutput | None:
    """The kept generation read at ``STAT`` under the compile state, when its manifest is the one
    the state names; None (with one line saying so) otherwise. ``known``: the current tree's
    manifest and its bytes; after a night with no change the generation's is the same, and that
    parse is reused (see ``manifest.load_manifest``). ``twins``: see ``reader.read_tree``."""
    if state is None:
        return None
    try:
        data, _info = read_regular(folder / MANIFEST_FILE, MAX_MANIFEST_BYTES)
        if _sha(data) != state.kept_sha256:
            log.warning("%s: its %s is not the one the compile state names; not used, rebuilt",
                        folder.name, MANIFEST_FILE)
            return None
        staged = read_tree(folder, folder, Check.STAT, state, known, twins)
    except (OSError, OutputError):
        return None  # not a generation we can vouch for: rebuilt, never obeyed
    return staged if staged is not None and staged.manifest_data == data else None


def _clean_staging(staging: Path, staged: CheckedOutput | None) -> Manifest:
    """Remove from the staging tree whatever did not check out (a device folder with any problem
    goes whole), and return the manifest of what it still holds."""
    empty = Manifest(generator="mdmgen", version="", devices={})
    if staged is None:
        return empty
    for relpath in sorted(staged.problems):
        parts = relpath.split("/")
        _remove(staging.joinpath(*parts[:2]) if parts[0] == DEVICES_DIR else staging / relpath)
    bad = staged.damaged_devices()
    devices = {s: e for s, e in staged.manifest.devices.items() if s not in bad}
    fleet = {r: e for r, e in staged.manifest.fleet.items() if r not in staged.problems}
    if staged.problems:
        log.info("kept generation: %d entries did not check out and were removed", len(staged.problems))
    return staged.manifest.model_copy(update={"devices": devices, "fleet": fleet})


def _make_parents(root: Path, relpath: str) -> None:
    folder = root
    for part in relpath.split("/")[:-1]:
        folder = folder / part
        if not is_real_dir(folder):
            if os.path.lexists(folder):
                _remove(folder)
            folder.mkdir()


def _remove_empty_parents(root: Path, relpath: str) -> None:
    parts = relpath.split("/")[:-1]
    while parts:
        try:
            os.rmdir(root.joinpath(*parts))
        except OSError:
            return
        parts.pop()


def _complete_generation(folder: Path, state: CompileState | None, known: tuple[bytes, Manifest] | None = None,
                         twins: AbstractSet[str] = frozenset()) -> CheckedOutput | None:
    """A kept generation that checks out (see :func:`_checked_generation`) and holds every file
    its manifest lists; None otherwise."""
    if not is_real_dir(folder):
        return None
    tree = _checked_generation(folder, state, known, twins)
    return tree if tree is not None and not tree.problems else None


def _keep_generation(target: Path, manifest: Manifest, manifest_data: bytes) -> None:
    """Recreate the kept generation from the current tree, with hard links.

    Every successful compile leaves the same siblings: the lock and a complete ``-prev``. A
    compile killed while it built its staging tree consumed ``-prev`` (it was renamed to
    ``-new`` and half rewritten); the next run removes that leftover, and when nothing else
    changed this restores ``-prev`` so the next change touches only what changed. A repair does
    the same, because the tree it replaced holds the damaged files. Only the files the manifest
    lists are linked (the tree was checked), and it is built as ``-new`` and renamed, so a kill
    here too leaves only a leftover the next run removes.
    """
    staging = sidecar(target, "new")
    _remove(staging)
    _remove(sidecar(target, "prev"))
    staging.mkdir()
    (staging / DEVICES_DIR).mkdir()
    source, dest = os.fspath(target / DEVICES_DIR), os.fspath(staging / DEVICES_DIR)
    _in_parallel(_link_folder, [(f"{source}/{serial}", f"{dest}/{serial}", list(entry.files))
                                for serial, entry in manifest.devices.items()])
    for relpath in manifest.fleet:
        _make_parents(staging, relpath)
        os.link(target / relpath, staging / relpath, follow_symlinks=False)
    # A copy, not a link: written after every folder of the generation, so the reader's cheap
    # check (every folder and file older than the manifest) holds for it as for a compiled tree.
    write_new(staging / MANIFEST_FILE, manifest_data)
    os.rename(staging, sidecar(target, "prev"))
    log.info("kept generation %s recreated from the current tree", sidecar(target, "prev").name)


def _keep_state(target: Path, new_state: NewState | None, manifest: Manifest, manifest_data: bytes,
                kept_manifest: bytes, *, touched: bool, old: CompileState | None = None,
                settled: set[str] | None = None, twins: AbstractSet[str] = frozenset()) -> None:
    """Write the compile state (see ``state``) for the tree and kept generation just left in place.

    Each file's modification time is taken from the tree as it is now, except for the ``settled``
    devices: their files are the very inodes the ``old`` state vouched for (same size, mtime and
    digest, unchanged since), so its times are theirs. When nothing was touched
    and the record already says all this, it is left as it is; after anything was touched (even
    only linked: a link moves the inode's ``st_ctime``) it is written again, so it is newer than
    everything it vouches for."""
    if new_state is None or not fastpath.enabled():
        compile_state.write_state(target, None)
        return
    try:
        data = compile_state.encode(new_state, manifest, _sha(manifest_data), _sha(kept_manifest), target,
                                    old if settled else None, settled or set(), twins)
    except OSError as exc:
        log.warning("%s: compile state not kept (%s)", target, exc.strerror or exc)
        compile_state.write_state(target, None)
        return
    if not touched:
        try:
            if read_regular(compile_state.path(target), len(data))[0] == data:
                return  # a night with no change: the record already says all this
        except (OSError, OutputError):
            pass
    compile_state.write_state(target, data)


def recover(target: Path) -> None:
    """Finish what a killed run left: put a parked old tree back if the swap did not complete,
    and remove staging leftovers."""
    staging = sidecar(target, "new")
    parked = sidecar(target, "old")
    if os.path.lexists(parked):
        if not os.path.lexists(target) and is_real_dir(parked):
            log.warning("restoring %s from an interrupted run", target)
            os.rename(parked, target)
        else:
            _remove(parked)
    _remove(sidecar(target, "state-new"))
    for legacy in ("rows", "rows-new", "run", "run-new"):  # the row cache and run memo before the compile state
        _remove(sidecar(target, legacy))
    if os.path.lexists(staging):
        log.info("removing leftovers of an interrupted run: %s", staging)
        _remove(staging)


def _remove(path: Path) -> None:
    """Remove a file, a link (never what it points to) or a whole folder; nothing if absent."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(path)  # on Linux, fd-based: it never follows a link inside the folder
    else:
        os.unlink(path)


def _link_copy(source: Path, dest: Path) -> None:
    """Carry a foreign entry over without copying bytes: hard links, folders recreated."""
    if source.is_symlink():
        os.symlink(os.readlink(source), dest)
    elif source.is_dir():
        shutil.copytree(source, dest, symlinks=True, copy_function=os.link)
    else:
        os.link(source, dest)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two folders (Linux renameat2); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))
