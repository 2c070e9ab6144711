"""The row cache: which inventory rows were already validated, so a nightly compile does not run
email-validator again over 100,000 rows that did not change.

An entry maps a digest of one raw row (its cells exactly as read, the header row and the
policy's ``columns`` mapping) to the normalised address email-validator returned for it. It is
kept beside the output folder (``.<name>.mdmgen-rows``), written after the tree, and bound to the
manifest it was written with: a cache whose manifest digest or mdmgen version differs from the
folder's is ignored as a whole. Read through ``output.reader`` like everything else on disk and
never trusted blindly: an entry is used only when the cached address is exactly what
email-validator makes of a plain ASCII address (the domain lower-cased, the rest kept), so the
worst a forged entry can do is skip the validation of that one row, never change what is written;
every other row, and every row of a fleet with ``pseudonymise_email`` (whose cache would be an
unkeyed hash of each address), is validated in full. ``MDMGEN_NO_FASTPATH=1`` ignores the cache.

It also records the digests of the manifests the compile wrote (the folder's and the kept
generation's): the reader's cheap check (``reader._all_older``) is sound only for a manifest
mdmgen wrote itself, and takes the full survey for any other.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict

_KEY_CHARS = 32  # 128 bits of sha256: no collision among any number of rows an inventory can hold
_PLAIN_ASCII = re.compile(r"^[\x21-\x7e]+$")


class RowCacheFile(BaseModel):
    """``.<name>.mdmgen-rows``: the validated rows of the compile that wrote ``manifest_sha256``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    generator: str
    version: str
    manifest_sha256: str
    kept_sha256: str = ""  # the manifest of the kept generation, as written beside it
    emails: dict[str, str]


def header_key(cells: Sequence[str], columns: Mapping[str, str]) -> str:
    """What a row's meaning depends on besides its own cells: the header and the column mapping."""
    text = "\x1f".join(cells) + "\x1e" + "\x1f".join(f"{k}={v}" for k, v in sorted(columns.items()))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def row_key(header: str, cells: Sequence[str]) -> str:
    """The cache key of one raw row under a header (see :func:`header_key`)."""
    text = header + "\x1e" + "\x1f".join(cells)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_KEY_CHARS]


def plausible(raw: str, normalised: str) -> bool:
    """Whether ``normalised`` is what email-validator returns for ``raw`` when ``raw`` is a plain
    ASCII address: the same local part and the domain lower-cased. Anything else is validated."""
    if not _PLAIN_ASCII.match(raw) or raw.count("@") != 1:
        return False
    local, domain = raw.split("@")
    return normalised == f"{local}@{domain.lower()}"
