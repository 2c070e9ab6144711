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


_SNIFFED = 64 << 10
"""How much of a file :func:`not_text` looks at: a zip names its first members within the first few kilobytes."""
_ZIP_KINDS = ((b"xl/", "an Excel workbook (a zip file)"), (b"word/", "a Word document (a zip file)"),
              (b"ppt/", "a PowerPoint presentation (a zip file)"),
              (b"opendocument.spreadsheet", "an OpenDocument spreadsheet (a zip file)"),
              (b"opendocument.text", "an OpenDocument text document (a zip file)"))
_MAGIC = ((b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old-style Excel workbook (.xls) or another Office document"),
          (b"%PDF-", "a PDF document"), (b"\x1f\x8b", "a gzip-compressed file"),
          (b"\xfd7zXZ\x00", "an xz-compressed file"), (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
          (b"{\\rtf", "an RTF document"))


def not_text(data: bytes) -> str | None:
    """What ``data`` is when it is plainly not a text file ("an Excel workbook (a zip file)"), by its
    first bytes, so the user reads what they gave instead of an encoding error at some line;
    None when it may be text. UTF-16 is recognised with or without its byte order mark; only
    without one is it "not text" here (mdmgen reads UTF-16 with a BOM)."""
    if data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        names = data[:_SNIFFED] + data[-_SNIFFED:]  # the first members, and the central directory at the end
        return next((kind for marker, kind in _ZIP_KINDS if marker in names), "a zip file")
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return None  # UTF-16 with a BOM: text
    head = data[:_SNIFFED]
    if b"\x00" not in head:
        return None
    pairs = len(head) // 2
    if pairs and (head[1::2].count(0) > pairs * 0.9 or head[0::2].count(0) > pairs * 0.9):
        return "UTF-16 text without a byte order mark (BOM)"
    if b"\x00\x00" in head or head.count(0) > 16:
        return "a binary file (it holds NUL bytes)"
    return None  # a stray NUL in text: reported at its line by the parser, which says more
