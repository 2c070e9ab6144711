"""The output folder on disk: ``devices/<SERIAL>/...`` plus ``manifest.json``.

The folder is a contract for publishers and auditors, so it is never seen half-written:

* **Atomic swap.** The new tree is built in a hidden sibling folder (``.<name>.mdmgen-new``)
  and swapped with the old one in a single ``renameat2(RENAME_EXCHANGE)`` call on Linux, so a
  reader (or a process killed at any moment, SIGKILL included) sees either the complete old
  tree or the complete new one, each described by its own manifest.json. Where the exchange is
  unavailable, two renames are used and the next run puts a parked old tree back first.
  Leftover staging folders are removed by the next run.
* **Incremental.** Unchanged files are hard links to the previous tree's files, so they keep
  their inode and modification time; a run where nothing changed writes nothing at all. The
  tree replaced by a run is kept as ``.<name>.mdmgen-prev`` and becomes the next run's staging
  tree, so a run touches only what changed instead of rebuilding a folder per device.
* **One run at a time.** An exclusive ``flock`` on ``.<name>.mdmgen-lock`` beside the folder.

Entries of the folder that mdmgen does not own (a ``.gitkeep``, a README, a ``.git`` folder)
are carried into the new tree as hard links.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from . import __version__
from .envschema import SECRET_ENV
from .models import CompiledDevice, Manifest, ManifestDevice, ManifestFile, Platform
from .progress import NO_PROGRESS, Progress

log = logging.getLogger(__name__)

DEVICES_DIR = "devices"
MANIFEST_FILE = "manifest.json"
OWNED = frozenset({DEVICES_DIR, MANIFEST_FILE})
SAFE_PART = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
"""What a path part under the output folder may look like: never '..', never hidden."""

INSTALL_PATHS = {
    Platform.MACOS: "/Library/Application Support/ClaudeCode/managed-settings.json",
    Platform.LINUX: "/etc/claude-code/managed-settings.json",
    Platform.WSL: "/etc/claude-code/managed-settings.json",
    Platform.WINDOWS: "C:\\Program Files\\ClaudeCode\\managed-settings.json",
}


class OutputError(Exception):
    """The output folder could not be read or written; the message is for the user."""


class OutputBusy(OutputError):
    """Another run holds the output folder's lock."""


@dataclass
class Changes:
    """What a compile changed against the previous output, by serial."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    written: bool = False  # False when nothing changed and the folder was left alone


def sidecar(target: Path, suffix: str) -> Path:
    """The hidden siblings of an output folder: ``-new`` (staging), ``-old`` (parked during a
    non-atomic swap), ``-prev`` (the kept generation) and ``-lock``."""
    return target.parent / f".{target.name}.mdmgen-{suffix}"


def interrupted(out: Path) -> Path | None:
    """A staging or parked folder left beside ``out`` by a compile that is running or was
    killed: the folder may be about to change, so readers should not trust it yet."""
    target = out.resolve() if out.exists() else out.absolute()
    for suffix in ("new", "old"):
        if sidecar(target, suffix).exists():
            return sidecar(target, suffix)
    return None


def _target(out: Path) -> Path:
    target = out.resolve() if out.exists() else out.absolute()
    if target.exists() and not target.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    return target


@contextlib.contextmanager
def locked(out: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold the output folder's lock for the duration; raise OutputBusy if it is taken.

    A compile takes it exclusively; readers that must see one tree throughout (publishers)
    take it shared, so a compile cannot swap the folder under them and they cannot start
    while it runs. A reader that may not create the lock file (read-only parent) goes on
    without it; publishers re-check every file's digest anyway.
    """
    target = _target(out)
    try:
        if not shared:
            target.parent.mkdir(parents=True, exist_ok=True)
        handle = open(sidecar(target, "lock"), "a+")  # noqa: SIM115 (held for the whole block)
    except OSError as exc:
        if shared:
            log.info("%s: reading without the lock: %s", out, exc.strerror)
            yield
            return
        raise OutputError(f"{out}: cannot create the lock file: {exc.strerror}") from None
    with handle:
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            who = f"an mdmgen compile (pid {holder})" if holder else "another mdmgen run (a publish?)"
            raise OutputBusy(f"{out}: {who} is using this folder; try again when it has finished") from None
        if not shared:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        try:
            yield
        finally:
            if not shared:
                handle.seek(0)
                handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_manifest(out: Path) -> Manifest | None:
    """The manifest of an existing output folder; None when there is no previous output."""
    path = out / MANIFEST_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return Manifest.model_validate_json(data)
    except ValidationError:
        raise OutputError(f"{path}: is not an mdmgen manifest; move the folder aside or pass "
                          "another --out") from None


def manifest_entry(compiled: CompiledDevice, previous: Manifest | None) -> ManifestDevice:
    """The manifest entry of one device: new digests, or the previous entry when reused."""
    device = compiled.device
    if compiled.files is None:
        assert previous is not None
        return previous.devices[device.serial]
    files = {}
    for name, data in compiled.files.items():
        install = INSTALL_PATHS[device.platform] if name.endswith(".json") else None
        files[name] = ManifestFile(sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                                   install_path=install)
    return ManifestDevice(platform=device.platform, team=device.team, inputs=compiled.inputs,
                          files=files)


def build_manifest(compiled: list[CompiledDevice], previous: Manifest | None = None,
                   secret_env: list[str] | None = None) -> Manifest:
    devices = {c.device.serial: manifest_entry(c, previous) for c in compiled}
    return Manifest(generator="mdmgen", version=__version__,
                    secret_env=sorted(set(SECRET_ENV) | set(secret_env or [])),
                    devices=dict(sorted(devices.items())))


def manifest_bytes(manifest: Manifest) -> bytes:
    """Sorted JSON with one device per line: a changed device is a one-line diff in the audit
    repository, and large fleets encode fast (no pretty-printer over every nested key)."""
    data = manifest.model_dump(mode="json", exclude_none=True)
    devices = data.pop("devices")

    def dumps(value: object) -> str:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(", ", ": "))

    lines = ["{", '  "devices": {']
    rows = [f"    {dumps(serial)}: {dumps(entry)}" for serial, entry in sorted(devices.items())]
    lines.append(",\n".join(rows))
    lines.append("  }" + ("," if data else ""))
    fields = [f"  {dumps(key)}: {dumps(value)}" for key, value in sorted(data.items())]
    lines.append(",\n".join(fields))
    lines.append("}")
    return ("\n".join(line for line in lines if line) + "\n").encode("utf-8")


def _checked_parts(relpath: str) -> list[str]:
    """Refuse any path part that could escape the folder; serials are checked upstream too."""
    parts = relpath.split("/")
    if not all(SAFE_PART.match(part) for part in parts):
        raise OutputError(f"refusing to write unsafe path {relpath!r}")
    return parts


def device_path(serial: str, name: str) -> str:
    return f"{DEVICES_DIR}/{serial}/{name}"


def compare(manifest: Manifest, previous: Manifest | None) -> Changes:
    """Devices added, changed (any file or its team/platform), removed and unchanged."""
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
    return changes


def write(out: Path, compiled: list[CompiledDevice], previous: Manifest | None,
          secret_env: list[str] | None = None, *, verify: bool = False,
          progress: Progress = NO_PROGRESS) -> Changes:
    """Make ``out`` hold exactly ``compiled``; call with the lock held (see ``locked``).

    Files whose bytes equal the previous output's are hard-linked from it rather than
    rewritten; if the resulting manifest equals the previous one, nothing is touched.
    With ``verify`` the previous files are re-read instead of trusting the manifest, so a
    hand-edited or deleted file is rewritten (every device must then carry its files).
    """
    target = _target(out)
    if previous is None:
        _refuse_foreign_folder(out, target)
    manifest = build_manifest(compiled, previous, secret_env)
    new_manifest = manifest_bytes(manifest)
    changes = compare(manifest, previous)
    try:
        recover(target)
        if (not verify and previous is not None
                and (target / MANIFEST_FILE).read_bytes() == new_manifest):
            log.info("nothing changed; %s left as it was", out)
            if not _is_generation(sidecar(target, "prev")):
                _keep_generation(target)
            return changes
        _build_and_swap(target, compiled, manifest, previous, new_manifest, verify, progress)
    except OutputError:
        _remove(sidecar(target, "new"))
        raise
    except OSError as exc:
        _remove(sidecar(target, "new"))
        reason = exc.strerror or str(exc)
        raise OutputError(f"{exc.filename or out}: cannot write the output folder: {reason}") from None
    changes.written = True
    return changes


# What a new output folder may already hold: placeholders and version control, nothing else.
_FIRST_RUN_ALLOWED = re.compile(r"^(\.gitkeep|\.gitignore|\.keep|\.git|README(\.\w+)?)$", re.IGNORECASE)


def _refuse_foreign_folder(out: Path, target: Path) -> None:
    """The first compile into a folder must not adopt someone else's files: a mistyped --out
    (the project root, a home folder) would otherwise be swapped out from under its owner."""
    if not target.is_dir():
        return
    foreign = sorted(name for name in os.listdir(target) if not _FIRST_RUN_ALLOWED.match(name))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise OutputError(f"{out}: exists and is not an mdmgen output folder (no {MANIFEST_FILE}; holds "
                          f"{shown}); pass a new or empty folder with --out")


def _build_and_swap(target: Path, compiled: list[CompiledDevice], manifest: Manifest,
                    previous: Manifest | None, manifest_data: bytes, verify: bool, progress: Progress) -> None:
    """Bring a staging tree to the new state, then swap it in.

    The staging tree is the generation before the current one (kept as ``.<name>.mdmgen-prev``
    by the last run) when there is one: it already holds most devices, so only what changed
    since then is touched, instead of recreating a folder per device. Without it (first run,
    ``--full``, or a run killed mid-way) the staging tree is built from scratch.
    """
    staging, staged = _take_staging(target, fresh=verify)
    current = previous.devices if previous else {}
    had = staged.devices if staged else {}
    linked = written = kept = 0
    devices_dir = staging / DEVICES_DIR
    progress.start(len(compiled), "Writing")
    for item in compiled:
        progress.advance()
        serial = item.device.serial
        folder = staging.joinpath(*_checked_parts(f"{DEVICES_DIR}/{serial}"))
        entry = manifest.devices[serial]
        old_entry = had.get(serial)
        if old_entry is None:
            folder.mkdir(parents=True, exist_ok=True)
        else:
            for name in set(old_entry.files) - set(entry.files):
                (folder / name).unlink()
        before = current.get(serial)
        for name, meta in entry.files.items():
            _checked_parts(name)
            if old_entry is not None and name in old_entry.files and old_entry.files[name].sha256 == meta.sha256:
                kept += 1  # the staging generation already has these bytes
                continue
            dest = folder / name
            if dest.exists():
                dest.unlink()
            existing = target / DEVICES_DIR / serial / name
            same = before is not None and name in before.files and before.files[name].sha256 == meta.sha256
            if same and verify:
                same = existing.is_file() and hashlib.sha256(existing.read_bytes()).hexdigest() == meta.sha256
            if same:
                try:
                    os.link(existing, dest)  # same inode as the current file: mtime kept
                    linked += 1
                    continue
                except FileNotFoundError:
                    if item.files is None:
                        raise OutputError(f"{existing}: missing from the previous output; run "
                                          "compile with --full to rebuild it") from None
            assert item.files is not None
            with open(dest, "xb") as handle:
                handle.write(item.files[name])
            written += 1
    progress.finish()
    for serial in set(had) - set(manifest.devices):
        _remove(devices_dir / serial)
    with open(staging / MANIFEST_FILE, "xb") as handle:
        handle.write(manifest_data)
    log.info("output: %d files written, %d linked, %d already in the staging generation",
             written, linked, kept)
    if not target.exists():
        os.rename(staging, target)
        return
    os.chmod(staging, target.stat().st_mode & 0o7777)
    for entry in sorted(os.listdir(staging)):
        if entry not in OWNED:
            _remove(staging / entry)
    for entry in sorted(os.listdir(target)):
        if entry not in OWNED:
            _link_copy(target / entry, staging / entry)
    if not _exchange(staging, target):
        parked = sidecar(target, "old")
        os.rename(target, parked)
        os.rename(staging, target)
        os.rename(parked, staging)
    os.rename(staging, sidecar(target, "prev"))  # the old tree: next run's staging generation


def _is_generation(folder: Path) -> bool:
    """A complete kept generation: a folder with a manifest (a staging tree has none)."""
    try:
        return read_manifest(folder) is not None
    except OutputError:
        return False


def _keep_generation(target: Path) -> None:
    """Recreate the kept generation from the current tree, with hard links.

    Every successful compile leaves the same siblings: the lock and a complete ``-prev``. A
    compile killed while it built its staging tree consumed ``-prev`` (it was renamed to
    ``-new`` and half rewritten); the next run removes that leftover, and when nothing else
    changed this restores ``-prev`` so the next change touches only what changed. It is built
    as ``-new`` and renamed, so a kill here too leaves only a leftover the next run removes.
    """
    staging = sidecar(target, "new")
    _remove(staging)
    _remove(sidecar(target, "prev"))
    staging.mkdir()
    if (target / DEVICES_DIR).is_dir():
        shutil.copytree(target / DEVICES_DIR, staging / DEVICES_DIR, symlinks=True, copy_function=os.link)
    os.link(target / MANIFEST_FILE, staging / MANIFEST_FILE)
    os.rename(staging, sidecar(target, "prev"))
    log.info("kept generation %s recreated after an interrupted run", sidecar(target, "prev").name)


def _take_staging(target: Path, *, fresh: bool) -> tuple[Path, Manifest | None]:
    """The folder to build the new tree in, and the manifest of what it already holds."""
    staging = sidecar(target, "new")
    previous_generation = sidecar(target, "prev")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove(staging)
    if not fresh and previous_generation.is_dir():
        try:
            staged = read_manifest(previous_generation)
        except OutputError:
            staged = None
        if staged is not None:
            os.rename(previous_generation, staging)
            (staging / MANIFEST_FILE).unlink()  # from here on it is a work in progress
            return staging, staged
    _remove(previous_generation)
    staging.mkdir()
    return staging, None


def recover(target: Path) -> None:
    """Finish what a killed run left: put a parked old tree back if the swap did not complete,
    and remove staging leftovers."""
    staging = sidecar(target, "new")
    parked = sidecar(target, "old")
    if parked.exists():
        if not target.exists():
            log.warning("restoring %s from an interrupted run", target)
            os.rename(parked, target)
        else:
            _remove(parked)
    if staging.exists():
        log.info("removing leftovers of an interrupted run: %s", staging)
        _remove(staging)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


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
