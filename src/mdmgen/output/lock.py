"""One run at a time: a ``flock`` on ``.<name>.mdmgen-lock`` beside the output folder."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from .layout import OutputBusy, OutputError, refuse_foreign_folder, sidecar, target_of

log = logging.getLogger(__name__)


@contextlib.contextmanager
def locked(out: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold the output folder's lock for the duration; raise OutputBusy if it is taken.

    A compile takes it exclusively, and creates the lock file; readers that must see one tree
    throughout (publishers, diff, preflight) take it shared, so a compile cannot swap the folder
    under them and they cannot start while it runs. A reader never creates the lock file: where
    there is none (no compile ever ran there, or a read-only checkout) it reads without it, and
    every file it reads is checked against its digest anyway.

    The lock file is opened without following a symlink and must be a regular file: a link
    planted at its name would otherwise let a compile truncate the link's target.
    """
    target = target_of(out)
    path = sidecar(target, "lock")
    flags = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        if shared:
            fd = os.open(path, os.O_RDONLY | flags)
        else:
            refuse_foreign_folder(out, target)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputError(f"{path}: is a symlink, not mdmgen's lock file; remove it") from None
        if shared:
            log.info("%s: reading without the lock: %s", out, exc.strerror)
            yield
            return
        raise OutputError(f"{out}: cannot create the lock file: {exc.strerror}") from None
    with os.fdopen(fd, "r+" if not shared else "r") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OutputError(f"{path}: is not a regular file, so not mdmgen's lock file; remove it")
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read(32).strip()
            who = f"an mdmgen compile (pid {holder})" if holder.isdigit() else "another mdmgen run (a publish?)"
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
