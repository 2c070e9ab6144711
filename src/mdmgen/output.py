"""The output folder on disk: ``devices/<SERIAL>/...`` plus ``manifest.json``.

The folder is a contract for publishers and auditors, so it is never left half-written:
the new tree is built in a hidden sibling folder (``.<name>.mdmgen-new``) and then swapped
with the old one in a single ``renameat2(RENAME_EXCHANGE)`` call on Linux, so a reader sees
either the complete old tree or the complete new one. Where the kernel or filesystem lacks
the exchange, two renames are used, and a run finding the old tree parked aside puts it back
before doing anything else. Entries of the folder that mdmgen does not own (a ``.gitkeep``,
a ``README``, even a ``.git`` folder) are carried into the new tree as hard links.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

from . import __version__
from .models import CompiledDevice, Manifest, ManifestDevice, ManifestFile, Platform

DEVICES_DIR = "devices"
MANIFEST_FILE = "manifest.json"
OWNED = frozenset({DEVICES_DIR, MANIFEST_FILE})
_SAFE_PART = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")

INSTALL_PATHS = {
    Platform.MACOS: "/Library/Application Support/ClaudeCode/managed-settings.json",
    Platform.LINUX: "/etc/claude-code/managed-settings.json",
    Platform.WSL: "/etc/claude-code/managed-settings.json",
    Platform.WINDOWS: "C:\\Program Files\\ClaudeCode\\managed-settings.json",
}


class OutputError(Exception):
    """The output folder could not be written; the message is for the user."""


def build_manifest(compiled: Iterable[CompiledDevice]) -> Manifest:
    devices = {}
    for item in compiled:
        files = {}
        for name, data in item.files.items():
            install = INSTALL_PATHS[item.device.platform] if name.endswith(".json") else None
            files[name] = ManifestFile(sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                                       install_path=install)
        devices[item.device.serial] = ManifestDevice(platform=item.device.platform,
                                                     team=item.device.team, files=files)
    return Manifest(generator="mdmgen", version=__version__, devices=dict(sorted(devices.items())))


def manifest_bytes(manifest: Manifest) -> bytes:
    data = manifest.model_dump(mode="json", exclude_none=True)
    return (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def tree_files(compiled: list[CompiledDevice]) -> dict[str, bytes]:
    """Every file of the output tree by relative POSIX path, manifest included."""
    files: dict[str, bytes] = {}
    for item in compiled:
        for name, data in item.files.items():
            files[f"{DEVICES_DIR}/{item.device.serial}/{name}"] = data
    files[MANIFEST_FILE] = manifest_bytes(build_manifest(compiled))
    return files


def _checked_parts(relpath: str) -> list[str]:
    """Refuse any path part that could escape the folder; serials are checked upstream too."""
    parts = relpath.split("/")
    if not all(_SAFE_PART.match(part) for part in parts):
        raise OutputError(f"refusing to write unsafe path {relpath!r}")
    return parts


def write_tree(out: Path, files: dict[str, bytes]) -> None:
    """Replace the mdmgen-owned content of ``out`` with ``files``, all at once."""
    target = out.resolve() if out.exists() else out.absolute()
    if target.exists() and not target.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    staging = target.parent / f".{target.name}.mdmgen-new"
    parked = target.parent / f".{target.name}.mdmgen-old"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        recover(target)
        _remove(staging)
        staging.mkdir()
        for relpath, data in sorted(files.items()):
            parts = _checked_parts(relpath)
            path = staging.joinpath(*parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "xb") as handle:
                handle.write(data)
        if target.exists():
            os.chmod(staging, target.stat().st_mode & 0o7777)
            for entry in sorted(os.listdir(target)):
                if entry not in OWNED and not entry.startswith(".mdmgen-"):
                    _link_copy(target / entry, staging / entry)
            if not _exchange(staging, target):
                os.rename(target, parked)
                os.rename(staging, target)
            _remove(staging)
            _remove(parked)
        else:
            os.rename(staging, target)
    except OSError as exc:
        _remove(staging)
        reason = exc.strerror or str(exc)
        where = exc.filename or out
        raise OutputError(f"{where}: cannot write the output folder: {reason}") from None


def recover(target: Path) -> None:
    """Finish what a killed run left: put a parked old tree back if the swap did not complete."""
    staging = target.parent / f".{target.name}.mdmgen-new"
    parked = target.parent / f".{target.name}.mdmgen-old"
    if parked.exists():
        if not target.exists():
            os.rename(parked, target)
        else:
            _remove(parked)
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
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))
