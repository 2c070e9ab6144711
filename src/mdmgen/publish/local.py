"""The output folder as every publisher reads it: the one checked reader, strict and hashed.

Publishers upload what the manifest describes, so they must never publish a folder that does
not match it: a file edited by hand after the compile, a file missing or extra, a symlink, or a
folder that a compile is replacing right now. Everything is checked before any remote request,
and each file is checked again when it is read for upload (``CheckedFile.read``), so a compile
that swaps the folder in the middle of a publish stops the publish instead of mixing two trees.
Problems are raised as :class:`~.base.LocalOutputError`, a PublishError, so the shared flow
reports a file changed mid-upload like any other failed write.
"""

from __future__ import annotations

from pathlib import Path

from ..output import Check, CheckedOutput, read
from .base import LocalOutputError


def read_output(folder: Path) -> CheckedOutput:
    """Load ``folder/manifest.json`` and check every file against it (call with the shared lock held)."""
    return read(folder, check=Check.DIGESTS, error=LocalOutputError)
