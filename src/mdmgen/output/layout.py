"""Where things are: the folder's own names, its hidden siblings, and the errors of this package."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..emit import registry
from ..emit.registry import ArtifactKind
from ..errors import MdmgenException
from ..exitcodes import ExitCode
from ..messages import first_of

DEVICES_DIR = "devices"
MANIFEST_FILE = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 30
"""A manifest of 100,000 devices is about 40 MB; anything past this is not one of ours."""


class OutputError(MdmgenException):
    """The output folder could not be read or written; the message is one line for the user.

    Exit 4 for the command that writes the folder (compile); a command that only reads it gets
    :class:`OutputUnusable` instead (see :func:`as_input`)."""

    exit_code = ExitCode.OUTPUT_FAILED


class OutputBusy(OutputError):
    """Another run holds the output folder's lock (exit 5, whichever command waits for it)."""

    exit_code = ExitCode.BUSY


class OutputUnusable(OutputError):
    """The output folder, read as another command's input (publish, adoption), is missing, does not
    match its manifest or cannot be locked: exit 1, like any input the user must fix."""

    exit_code = ExitCode.INVALID_INPUT


@contextmanager
def as_input() -> Iterator[None]:
    """Read the output folder as an input: an :class:`OutputError` raised inside (other than
    :class:`OutputBusy`) becomes :class:`OutputUnusable`, with the same message.

    The lock and the checked reader are shared by the command that writes the folder and the ones
    that read it; only the caller knows which it is, so the caller says so here."""
    try:
        yield
    except (OutputBusy, OutputUnusable):
        raise
    except OutputError as exc:
        raise OutputUnusable(str(exc)) from exc


def device_path(serial: str, name: str) -> str:
    return f"{DEVICES_DIR}/{serial}/{name}"


def sidecar(target: Path, suffix: str) -> Path:
    """The hidden siblings of an output folder: ``-new`` (staging), ``-old`` (parked during a
    non-atomic swap), ``-prev`` (the kept generation) and ``-lock``."""
    return target.parent / f".{target.name}.mdmgen-{suffix}"


def target_of(out: Path) -> Path:
    """The absolute output folder ``out`` names; refused when it cannot be one (a file, ``/``).

    A symlink given as ``--out`` is resolved once, here, on purpose (``output -> /data/output``
    is a common layout); nothing below the folder is ever followed.
    """
    target = out.resolve() if out.exists() else out.absolute()
    if target.parent == target or not target.name:
        raise OutputError(f"{out}: cannot be an output folder (it is the root of the file system)")
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise OutputError(f"{out}: cannot read: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise OutputError(f"{out}: exists and is not a folder")
    return target


def interrupted(out: Path) -> Path | None:
    """A staging or parked folder left beside ``out`` by a compile that is running or was
    killed: the folder may be about to change, so readers should not trust it yet."""
    target = out.resolve() if out.exists() else out.absolute()
    for suffix in ("new", "old"):
        if os.path.lexists(sidecar(target, suffix)):
            return sidecar(target, suffix)
    return None


def is_real_dir(path: Path) -> bool:
    """A folder, and not a symlink to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


@contextmanager
def folder_handle(path: str) -> Iterator[int]:
    """A descriptor of the folder ``path`` (never through a symlink at its last part), for
    ``os.lstat(name, dir_fd=...)``: the loops that ``lstat`` every file of a fleet name each entry
    from its folder, which costs the kernel a tenth less than walking the whole path each time.
    Raises OSError (NotADirectoryError for anything but a folder)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def _regular_file(path: Path, limit: int) -> Iterator[tuple[int, os.stat_result]]:
    """A descriptor of a regular file of at most ``limit`` bytes, never opened through a symlink
    at its last part. O_NONBLOCK keeps a FIFO planted in the tree from hanging the run; the fstat
    afterwards refuses it, a device file or a folder. Raises OSError, or OutputError with the reason."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OutputError(f"{path}: is not a regular file")
        if info.st_size > limit:
            raise OutputError(f"{path}: is larger than {limit} bytes, so not one of mdmgen's files")
        yield fd, info
    finally:
        os.close(fd)


def read_regular(path: Path, limit: int) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file, never through a symlink at its last part, at most ``limit``
    (see :func:`_regular_file`)."""
    with _regular_file(path, limit) as (fd, info):
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks), info


def digest_regular(path: Path, limit: int) -> str:
    """The sha256 of a regular file, opened as :func:`read_regular` opens it, read in pieces:
    a night with no change only compares the digests of its two 40 MB manifests, and holding
    their bytes costs more than hashing them."""
    with _regular_file(path, limit) as (fd, _info), open(fd, "rb", closefd=False) as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# What a new output folder may already hold: placeholders and version control, nothing else.
_FIRST_RUN_ALLOWED = re.compile(r"^(\.gitkeep|\.gitignore|\.keep|\.git|README(\.\w+)?)$", re.IGNORECASE)


def refuse_foreign_folder(out: Path, target: Path) -> None:
    """The first compile into a folder must not adopt someone else's files: a mistyped --out
    (the project root, a home folder) would otherwise be swapped out from under its owner.
    Checked before the lock file is created, so a refused --out leaves nothing behind."""
    if not is_real_dir(target) or os.path.lexists(target / MANIFEST_FILE):
        return
    foreign = sorted(name for name in os.listdir(target) if not _FIRST_RUN_ALLOWED.match(name))
    if foreign:
        shown = first_of([repr(n) if not _PRINTABLE.match(n) else n for n in foreign], 3)
        raise OutputError(f"{out}: exists and is not an mdmgen output folder (no {MANIFEST_FILE}; holds "
                          f"{shown}); pass a new or empty folder with --out")


_PRINTABLE = re.compile(r"^[\x20-\x7e]+$")


def kind_of(relpath: str) -> ArtifactKind | None:
    """The registered kind of the file at ``relpath`` in an output folder (None: manifest.json, or
    a file of a kind this version does not know)."""
    parts = relpath.split("/")
    if parts[0] == DEVICES_DIR:
        kind = registry.get(parts[-1]) if len(parts) == 3 else None
        return kind if kind is not None and not kind.fleet else None
    kind = registry.get(relpath)
    return kind if kind is not None and kind.fleet else None
