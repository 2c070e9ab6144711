"""managed-settings.json: the file Claude Code reads on Linux, WSL, Windows and (as a file) macOS."""

from __future__ import annotations

import json

from ..models import Settings


def dumps(settings: Settings) -> bytes:
    """UTF-8 without BOM, sorted keys, 2-space indent, trailing newline: stable for diffs."""
    text = json.dumps(settings, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def escape_string(value: str) -> bytes:
    """A string as :func:`dumps` writes it inside its quotes (``json``: ``"``, ``\\`` and controls
    escaped, the rest as UTF-8); the shape fast path fills its slots with this."""
    return json.dumps(value, ensure_ascii=False)[1:-1].encode("utf-8")
