"""Reading an input file (the policy, an inventory CSV) safely: a regular file of bounded size.

A FIFO named as the policy would block the run forever, and ``/dev/zero`` would be read until
memory runs out; both are refused with one line instead. Symlinks are followed on purpose
(``inventory/devices.csv -> /srv/hr-export/latest.csv`` is a normal layout): what matters is
what the link leads to.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

MAX_POLICY_BYTES = 4 << 20
"""A policy is a few kilobytes; four megabytes is far beyond any real one."""
MAX_INVENTORY_BYTES = 1 << 30
"""100,000 rows of an HR export are about 20 MB; a gigabyte leaves room for wide exports."""


class InputFileError(Exception):
    """The file cannot be used as an input; the message says why, for the user."""


def read_input(path: Path, limit: int) -> bytes:
    """The bytes of ``path``; raises FileNotFoundError, or InputFileError with a one-line reason."""
    return b"".join(_chunks(path, limit))


def digest_input(path: Path, limit: int) -> str:
    """The sha256 of ``path``'s bytes, read like :func:`read_input` (same checks, same errors)
    without holding them."""
    digest = hashlib.sha256()
    for chunk in _chunks(path, limit):
        digest.update(chunk)
    return digest.hexdigest()


def _chunks(path: Path, limit: int) -> Iterator[bytes]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise InputFileError(f"cannot read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputFileError("is not a regular file (a folder, a pipe or a device?)")
        if info.st_size > limit:
            raise InputFileError(f"is larger than {limit >> 20} MB; is it the right file?")
        total = 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > limit:  # it grew while being read
                raise InputFileError(f"is larger than {limit >> 20} MB; is it the right file?")
            yield chunk
    except OSError as exc:
        raise InputFileError(f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
