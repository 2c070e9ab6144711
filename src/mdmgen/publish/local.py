"""The local output folder as every publisher reads it: manifest.json, checked against the files.

Publishers upload what the manifest describes, so they must never publish a folder that does
not match it: a file edited by hand after the compile, a file missing or extra, or a folder
that a compile is replacing right now. Everything is checked before any remote request, and
each file is checked again when it is read for upload (:meth:`LocalFile.read`), so a compile
that swaps the folder in the middle of a publish stops the publish instead of mixing two trees.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from ..models import Manifest
from ..output import DEVICES_DIR, MANIFEST_FILE, SAFE_PART, interrupted
from .base import LocalOutputError


@dataclass(frozen=True)
class LocalFile:
    """One file of the output folder as the manifest describes it (``device`` None: manifest.json)."""

    relpath: str
    sha256: str
    size: int
    path: Path
    device: str | None = None

    def read(self) -> bytes:
        """The file's bytes, refused unless they still have the manifest's digest."""
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise LocalOutputError(f"{self.path}: cannot read: {exc.strerror}") from None
        if len(data) != self.size or hashlib.sha256(data).hexdigest() != self.sha256:
            raise LocalOutputError(f"{self.path}: changed after it was checked against {MANIFEST_FILE} "
                                   "(did a compile run during the publish?)")
        return data


@dataclass(frozen=True)
class LocalOutput:
    """A checked output folder: its manifest and every file, manifest.json last."""

    root: Path
    manifest: Manifest
    files: tuple[LocalFile, ...]

    @property
    def manifest_file(self) -> LocalFile:
        return self.files[-1]


def read_output(folder: Path) -> LocalOutput:
    """Load ``folder/manifest.json`` and check every file against it.

    Raises LocalOutputError (one line) when the folder is missing, is being replaced by a compile
    (or one was interrupted), or does not match its manifest: a file missing, extra, changed,
    or not a regular file.
    """
    target = folder.resolve() if folder.exists() else folder.absolute()
    if not target.is_dir():
        what = "is not a folder" if target.exists() else "no such folder"
        raise LocalOutputError(f"{folder}: {what}; run `mdmgen compile` first or pass --out")
    _refuse_mid_swap(folder, target)
    manifest_path = target / MANIFEST_FILE
    try:
        manifest_data = manifest_path.read_bytes()
    except FileNotFoundError:
        raise LocalOutputError(f"{folder}: no {MANIFEST_FILE}, so not an mdmgen output folder; "
                               "run `mdmgen compile` first") from None
    except OSError as exc:
        raise LocalOutputError(f"{manifest_path}: cannot read: {exc.strerror}") from None
    try:
        manifest = Manifest.model_validate_json(manifest_data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise LocalOutputError(f"{manifest_path}: not a valid mdmgen manifest ({where}: {first['msg']}); "
                               "run `mdmgen compile` again") from None
    if manifest.generator != "mdmgen":
        raise LocalOutputError(f"{manifest_path}: written by {manifest.generator!r}, not mdmgen")

    files: list[LocalFile] = []
    problems: list[str] = []
    for serial, device in manifest.devices.items():
        for name, entry in device.files.items():
            if not (SAFE_PART.match(serial) and SAFE_PART.match(name)):
                raise LocalOutputError(f"{manifest_path}: unsafe path {serial}/{name} in the manifest")
            relpath = f"{DEVICES_DIR}/{serial}/{name}"
            local = LocalFile(relpath, entry.sha256, entry.size, target / DEVICES_DIR / serial / name, serial)
            problem = _check(local)
            if problem:
                problems.append(f"{relpath} {problem}")
            files.append(local)
    expected = {f.relpath for f in files}
    problems += [f"{relpath} is not in {MANIFEST_FILE}" for relpath in _device_files(target) - expected]
    if problems:
        problems.sort()
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise LocalOutputError(f"{folder}: does not match its {MANIFEST_FILE}: {problems[0]}{more}; "
                               "run `mdmgen compile` again")
    _refuse_mid_swap(folder, target)
    files.sort(key=lambda f: f.relpath)
    files.append(LocalFile(MANIFEST_FILE, hashlib.sha256(manifest_data).hexdigest(), len(manifest_data),
                           manifest_path))
    return LocalOutput(root=target, manifest=manifest, files=tuple(files))


def _check(local: LocalFile) -> str | None:
    """Why a file does not match its manifest entry, or None."""
    try:
        info = os.lstat(local.path)
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    try:
        data = local.path.read_bytes()
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if len(data) != local.size or hashlib.sha256(data).hexdigest() != local.sha256:
        return "differs from its sha256 in the manifest (edited after the compile?)"
    return None


def _device_files(target: Path) -> set[str]:
    """Every file under devices/, as relative POSIX paths."""
    found = set()
    devices = target / DEVICES_DIR
    for dirpath, _dirs, names in os.walk(devices):
        rel = Path(dirpath).relative_to(target).as_posix()
        found.update(f"{rel}/{name}" for name in names)
    return found


def _refuse_mid_swap(folder: Path, target: Path) -> None:
    """Refuse a folder a compile is replacing or left half-replaced (the caller holds the
    folder's shared lock, so no compile can start while the publish runs)."""
    leftover = interrupted(target)
    if leftover is not None:
        raise LocalOutputError(f"{folder}: a compile is replacing this folder or was interrupted "
                               f"({leftover.name} exists); wait for it, or run `mdmgen compile` again")
