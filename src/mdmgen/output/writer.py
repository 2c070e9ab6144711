"""Writing the tree: staging, the atomic swap, incremental reuse, the kept generation, repairs.

A compile first reads the current tree with the checked reader (:func:`read_previous`, at the
``STAT`` level), so a hand-edited, deleted or replaced file is found without re-hashing the
fleet: its device is rendered again and the file rewritten, never linked. The kept generation
is read the same way before it is reused as the staging tree, and anything in it that does not
check out is removed and rebuilt. Every path is built from names the manifest model has checked
(``models.unsafe_name``) or from entries just listed in a folder that was checked to be a real
folder; files are created with ``O_EXCL | O_NOFOLLOW`` and removed without following links.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from .. import __version__, fastpath
from ..models import CompiledDevice, Manifest, ManifestFile, ManifestSecret, unsafe_name
from ..progress import NO_PROGRESS, Progress
from ..runmemo import RunMemoFile, RunRecord, RunSummary
from .layout import DEVICES_DIR, MANIFEST_FILE, OutputError, is_real_dir, read_regular, sidecar, target_of
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
from .reader import Check, CheckedOutput, memo_holds, memo_listing, read_row_cache, read_run_memo, read_tree

log = logging.getLogger(__name__)


def read_previous(out: Path, *, full: bool = False) -> CheckedOutput | None:
    """The current output as a compile sees it, with what does not match its manifest listed
    (every file hashed with ``full``); None when there is no previous output. Call with the
    lock held exclusively: a run killed mid-swap is put right first."""
    target = target_of(out)
    recover(target)
    if not target.exists():
        return None
    cache = read_row_cache(target) if fastpath.enabled() and not full else None
    try:
        tree = read_tree(out, target, Check.DIGESTS if full else Check.STAT,
                         frozenset({cache.manifest_sha256}) if cache else frozenset())
    except OutputError as exc:
        raise OutputError(f"{exc}; move the folder aside or pass another --out") from None
    if tree is not None and tree.problems:
        log.warning("%s: %d file(s) do not match %s and will be repaired", out, len(tree.problems), MANIFEST_FILE)
    if tree is not None and cache is not None and cache.manifest_sha256 == _sha(tree.manifest_data):
        tree = dataclasses.replace(tree, row_cache=cache.emails, kept_sha256=cache.kept_sha256, canonical=True)
    return tree


def unchanged(out: Path, same_inputs: Callable[[RunMemoFile], bool]) -> RunSummary | None:
    """The last compile's summary when nothing it was made from (``same_inputs``) and nothing it
    left has changed since (see ``runmemo``); None: compile. Call with the lock held exclusively."""
    target = target_of(out)
    recover(target)
    memo = read_run_memo(target)
    if memo is None or not same_inputs(memo) or not memo_holds(target, memo):
        return None
    log.info("nothing changed since the last compile (run memo); %s left as it was", out)
    return memo.summary


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(out: Path, compiled: list[CompiledDevice], previous: CheckedOutput | None,
          secret_env: list[str] | None = None, *, fleet_files: dict[str, bytes] | None = None,
          fresh: bool = False, progress: Progress = NO_PROGRESS, secrets: dict[str, ManifestSecret] | None = None,
          derived: DerivedFiles | None = None, row_cache: dict[str, str] | None = None,
          run: RunRecord | None = None, pseudonymised: bool = False) -> Changes:
    """Make ``out`` hold exactly ``compiled`` and ``fleet_files``; call with the lock held.

    ``previous`` is :func:`read_previous`'s answer. Files whose bytes equal the previous output's
    are hard-linked from it rather than rewritten, unless they did not check out; if the new
    manifest equals the previous one and everything checked out, nothing is touched. With
    ``fresh`` (``--full``) the staging tree is rebuilt from nothing. ``derived`` adds files made
    after the compile (signed profiles, see ``signing``); one given without bytes is kept from
    the previous tree like any unchanged file.

    The files of a device that embeds a secret are mode 0600 (a signed profile too: it embeds
    its profile). After a compile that rotated a secret (a fingerprint changed, or a secret is no
    longer used), the kept generation is rebuilt from the new tree, as after a repair: the tree
    just replaced holds the old token, and it must not stay readable on disk beside the output folder.
    The same holds for the first compile with ``pseudonymised`` (``pseudonymise_email`` on): the tree
    just replaced holds every raw address, which the manifest's ``pseudonymised`` flag tells apart.

    ``run`` is the compile's record for the run memo (see ``runmemo``), written beside the folder
    once the tree and the kept generation are in place; without one any old memo is removed.
    """
    target = target_of(out)
    fleet_files = fleet_files or {}
    old = previous.manifest if previous else None
    derived = derived or {}
    manifest = build_manifest(compiled, old, secret_env, fleet_files, secrets, derived, pseudonymised)
    new_manifest = (manifest_bytes(manifest, old, previous.manifest_data) if previous is not None and previous.canonical
                    else manifest_bytes(manifest))
    changes = compare(manifest, old)
    changes.repaired = sorted(previous.problems) if previous else []
    try:
        recover(target)
        if (not fresh and previous is not None and not previous.problems
                and previous.manifest_data == new_manifest):
            log.info("nothing changed; %s left as it was", out)
            kept = _complete_generation(sidecar(target, "prev"), previous.kept_sha256)
            if kept is None or _holds_what_is_gone(sidecar(target, "prev"), manifest):
                _keep_generation(target, manifest, new_manifest)
                kept = new_manifest
            _keep_row_cache(target, row_cache, previous, new_manifest, kept)
            _keep_run_memo(target, run, manifest, new_manifest, kept)
            return changes
        _remove(sidecar(target, "run"))  # it vouches for the tree about to change; rewritten at the end
        _build_and_swap(target, compiled, fleet_files, manifest, previous, new_manifest, fresh, progress, derived)
        kept = previous.manifest_data if previous else new_manifest  # the tree just replaced, or a copy
        if changes.repaired or _gone(old, manifest):
            # The tree just replaced holds the damaged files (a file edited in place is shared
            # with it through a hard link), the old token or raw addresses: keep the new tree as
            # the generation.
            _keep_generation(target, manifest, new_manifest)
            kept = new_manifest
        _keep_row_cache(target, row_cache, None, new_manifest, kept)
        _keep_run_memo(target, run, manifest, new_manifest, kept)
    except OutputError:
        _remove(sidecar(target, "new"))
        raise
    except OSError as exc:
        _remove(sidecar(target, "new"))
        reason = exc.strerror or str(exc)
        raise OutputError(f"{exc.filename or out}: cannot write the output folder: {reason}") from None
    changes.written = True
    return changes


def _build_and_swap(target: Path, compiled: list[CompiledDevice], fleet_files: dict[str, bytes],
                    manifest: Manifest, previous: CheckedOutput | None, manifest_data: bytes, fresh: bool,
                    progress: Progress, derived: DerivedFiles) -> None:
    """Bring a staging tree to the new state, then swap it in.

    The staging tree is the generation before the current one (kept as ``.<name>.mdmgen-prev``
    by the last run) when there is one that checks out: it already holds most devices, so only
    what changed since then is touched, instead of recreating a folder per device. Without it
    (first run, ``--full``, or a run killed mid-way) the staging tree is built from scratch.
    """
    staging, staged = _take_staging(target, fresh=fresh, kept_sha256=previous.kept_sha256 if previous else "")
    current = previous.manifest if previous else None
    damaged = set(previous.problems) if previous else set()
    had = _clean_staging(staging, staged)
    counts = {"written": 0, "linked": 0, "kept": 0}

    staging_s, target_s = os.fspath(staging), os.fspath(target)  # strings: this runs once per file

    def place(relpath: str, meta: ManifestFile, data: bytes | None, staged_meta: ManifestFile | None,
              before: ManifestFile | None, secret: bool = False) -> None:
        dest = f"{staging_s}/{relpath}"
        if staged_meta is not None:
            if staged_meta.sha256 == meta.sha256:
                counts["kept"] += 1  # the staging generation already has these bytes
                _restrict(dest, secret)
                return
            os.unlink(dest)
        if before is not None and before.sha256 == meta.sha256 and relpath not in damaged:
            os.link(f"{target_s}/{relpath}", dest, follow_symlinks=False)  # same inode: mtime kept
            counts["linked"] += 1
            _restrict(dest, secret)
            return
        if data is None:
            raise OutputError(f"{target / relpath}: not rendered and not reusable; run compile with --full")
        write_new(dest, data, SECRET_FILE_MODE if secret else 0o666)
        counts["written"] += 1

    devices_dir = staging / DEVICES_DIR
    if not is_real_dir(devices_dir):
        devices_dir.mkdir()
    progress.start(len(compiled), "Writing")
    new_folders: list[tuple[str, list[tuple[str, bytes, int]]]] = []
    for item in compiled:
        progress.advance()
        serial = item.device.serial
        if unsafe_name(serial):
            raise OutputError(f"refusing to write unsafe path {serial!r}")
        entry = manifest.devices[serial]
        old_entry = had.devices.get(serial)
        if old_entry is not None and not entry.secrets and old_entry.files == entry.files:
            counts["kept"] += len(entry.files)  # what ``place`` would find for each file: already staged
            continue
        before = current.devices.get(serial) if current else None
        mode = SECRET_FILE_MODE if entry.secrets else 0o666
        data_of = {name: _data_of(item, name, derived.get(serial)) for name in entry.files}
        if old_entry is None and before is None and None not in data_of.values():  # a new folder, every file new
            folder = f"{staging_s}/{DEVICES_DIR}/{serial}"
            new_folders.append((folder, [(f"{folder}/{name}", data, mode) for name, data in data_of.items()]))
            continue
        if old_entry is None:
            os.mkdir(f"{staging_s}/{DEVICES_DIR}/{serial}")
        else:
            for name in set(old_entry.files) - set(entry.files):
                os.unlink(devices_dir / serial / name)
        for name, meta in entry.files.items():
            place(f"{DEVICES_DIR}/{serial}/{name}", meta, data_of[name],
                  old_entry.files.get(name) if old_entry else None, before.files.get(name) if before else None,
                  secret=bool(entry.secrets))
    _in_parallel(_write_folder, new_folders)
    counts["written"] += sum(len(files) for _folder, files in new_folders)
    progress.finish()
    for serial in set(had.devices) - set(manifest.devices):
        _remove(devices_dir / serial)
    for relpath in set(had.fleet) - set(manifest.fleet):
        _remove(staging / relpath)
        _remove_empty_parents(staging, relpath)
    for relpath, meta in manifest.fleet.items():
        _make_parents(staging, relpath)
        place(relpath, meta, fleet_files[relpath], had.fleet.get(relpath),
              current.fleet.get(relpath) if current else None)
    write_new(staging / MANIFEST_FILE, manifest_data)
    log.info("output: %d files written, %d linked, %d already in the staging generation",
             counts["written"], counts["linked"], counts["kept"])
    if not target.exists():
        os.rename(staging, target)
        # The first compile into a folder keeps a generation too, so that the first night that
        # changes something touches only what changed, and a night with no change writes nothing.
        # The tree is in place already: a generation that cannot be made is only work for later.
        try:
            _keep_generation(target, manifest, manifest_data)
        except OSError as exc:
            log.warning("%s: kept generation not made (%s); the next compile makes it", target, exc.strerror or exc)
            _remove(sidecar(target, "new"))
        return
    owned = _owned(manifest) | _owned(current) | _owned(had)
    os.chmod(staging, target.stat().st_mode & 0o7777)
    for name in sorted(os.listdir(staging)):
        if name not in _owned(manifest):
            _remove(staging / name)
    for name in sorted(os.listdir(target)):
        if name not in owned:
            _link_copy(target / name, staging / name)
    if not _exchange(staging, target):
        parked = sidecar(target, "old")
        os.rename(target, parked)
        os.rename(staging, target)
        os.rename(parked, staging)
    os.rename(staging, sidecar(target, "prev"))  # the old tree: next run's staging generation


PARALLEL_FROM = 2000
"""Folders to create before the work is spread over threads: each ``mkdir``, ``open`` and ``link``
waits on the file system with the GIL released, so a few threads overlap those waits."""
THREADS = 4


def _in_parallel(work, items: list) -> None:
    """``work(item)`` for every item; over threads for many (the order does not matter: each item
    is its own folder). The first error is raised, as a sequential loop would."""
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


def _holds_what_is_gone(generation: Path, manifest: Manifest) -> bool:
    """Whether a kept generation holds a secret or a raw address the current tree no longer has (a
    run killed between the swap and rebuilding the generation after a rotation or after
    ``pseudonymise_email`` was turned on)."""
    try:
        loaded = load_manifest(generation)
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


def _take_staging(target: Path, *, fresh: bool, kept_sha256: str = "") -> tuple[Path, CheckedOutput | None]:
    """The folder to build the new tree in, and what it already holds (checked, problems listed)."""
    staging = sidecar(target, "new")
    previous_generation = sidecar(target, "prev")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove(staging)
    if not fresh and is_real_dir(previous_generation):
        try:
            staged = read_tree(previous_generation, previous_generation, Check.STAT,
                               frozenset({kept_sha256}) if kept_sha256 else frozenset())
        except OutputError:
            staged = None  # not a generation we can vouch for: rebuilt, never obeyed
        if staged is not None:
            os.rename(previous_generation, staging)
            os.unlink(staging / MANIFEST_FILE)  # from here on it is a work in progress
            return staging, staged
    _remove(previous_generation)
    staging.mkdir()
    return staging, None


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


def _complete_generation(folder: Path, kept_sha256: str = "") -> bytes | None:
    """The manifest of a kept generation that checks out (see ``reader``, the ``STAT`` level): a
    real folder whose manifest is valid and whose files are what it says; None otherwise. A
    staging tree has no manifest. ``kept_sha256``: its manifest's digest as the compile that
    wrote it recorded it (lets the reader ``lstat`` instead of listing folders)."""
    if not is_real_dir(folder):
        return None
    try:
        tree = read_tree(folder, folder, Check.STAT, frozenset({kept_sha256}) if kept_sha256 else frozenset())
    except OutputError:
        return None
    return tree.manifest_data if tree is not None and not tree.problems else None


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


def _keep_row_cache(target: Path, emails: dict[str, str] | None, previous: CheckedOutput | None,
                    manifest_data: bytes, kept_manifest: bytes) -> None:
    """Write the row cache for the tree just left in place (see ``rowcache``), unless it holds
    what was read; without one (fast paths off, pseudonymised emails) remove any old one, so no
    stale digest of an address stays beside the folder. Written as ``-rows-new`` and renamed:
    a kill leaves a leftover the next run removes, or the old cache, bound to its own manifest."""
    path = sidecar(target, "rows")
    if emails is None:
        _remove(path)
        return
    kept_sha256 = _sha(kept_manifest)
    if (previous is not None and previous.row_cache is not None and emails == previous.row_cache
            and previous.kept_sha256 == kept_sha256):
        return  # a night with no change: the cache already says all this
    cache = {"generator": "mdmgen", "version": __version__, "manifest_sha256": _sha(manifest_data),
             "kept_sha256": kept_sha256, "emails": dict(sorted(emails.items()))}
    staging = sidecar(target, "rows-new")
    try:
        _remove(staging)
        write_new(staging, json.dumps(cache, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        os.replace(staging, path)  # replaces a planted link itself, never what it points to
    except OSError as exc:  # the tree is in place; without a cache the next run only validates more
        log.info("%s: row cache not kept: %s", path, exc.strerror or exc)
        _remove(staging)


def _keep_run_memo(target: Path, run: RunRecord | None, manifest: Manifest, manifest_data: bytes,
                   kept_manifest: bytes) -> None:
    """Write the run memo (see ``runmemo``) for the tree and kept generation just left in place, as
    ``-run-new`` renamed over ``-run``; without a record (fast paths off, a problem, signing) there
    is none. Like the row cache it only ever saves work, so a memo that cannot be written is logged."""
    if run is None or not fastpath.enabled():
        _remove(sidecar(target, "run"))
        return
    folders, fleet, devices = memo_listing(manifest)
    # Built from checked models, so not validated again (a 100,000-device listing is 240,000 items).
    memo = RunMemoFile.model_construct(**dict(run), generator="mdmgen", version=__version__,
                                       manifest_sha256=_sha(manifest_data), kept_sha256=_sha(kept_manifest),
                                       folders=folders, fleet=fleet, devices=devices)
    data = memo.model_dump_json().encode("utf-8")
    try:
        if read_regular(sidecar(target, "run"), len(data))[0] == data:
            return  # a night with no change: the memo already says all this
    except (OSError, OutputError):
        pass
    staging = sidecar(target, "run-new")
    try:
        _remove(staging)
        write_new(staging, data)
        os.replace(staging, sidecar(target, "run"))
    except OSError as exc:
        log.info("%s: run memo not kept: %s", sidecar(target, "run"), exc.strerror or exc)
        _remove(staging)


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
    _remove(sidecar(target, "rows-new"))
    _remove(sidecar(target, "run-new"))
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
