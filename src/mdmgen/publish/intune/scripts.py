"""PLACEHOLDER - replaced at merge by the real Windows script generator (written in another worktree).

Only the interface is fixed here (``PlatformScript``, ``build_team_scripts``, ``read_table``) so the
Intune publisher can be built and tested against it. The PowerShell below is deliberately minimal:
a serial table of base64 entries and a write to ``C:\\Program Files\\ClaudeCode\\managed-settings.json``.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

MAX_SCRIPT_BYTES = 190_000
"""Under Intune's 200 KB platform-script limit, with room to spare."""

_ROW = re.compile(r"^    '([A-Za-z0-9._-]+)' = '([A-Za-z0-9+/=]*)'$", re.M)


@dataclass(frozen=True)
class PlatformScript:
    display_name: str
    file_name: str
    content: bytes
    serials: tuple[str, ...]


def _slug(team: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", team.lower()).strip("-") or "team"
    return f"{words[:40]}-{hashlib.sha256(team.encode()).hexdigest()[:6]}"


def _script(rows: list[tuple[str, bytes]]) -> bytes:
    table = "\n".join(f"    '{serial}' = '{base64.b64encode(data).decode()}'" for serial, data in rows)
    return ("$ErrorActionPreference = 'Stop'\n$table = @{\n" + table + "\n}\n"
            "$serial = (Get-CimInstance -ClassName Win32_BIOS).SerialNumber.Trim()\n"
            "if (-not $table.ContainsKey($serial)) { exit 0 }\n"
            "$dir = 'C:\\Program Files\\ClaudeCode'\n"
            "New-Item -ItemType Directory -Force -Path $dir | Out-Null\n"
            "[System.IO.File]::WriteAllBytes(\"$dir\\managed-settings.json\", "
            "[Convert]::FromBase64String($table[$serial]))\n").encode("utf-8")


def build_team_scripts(team: str, files: Mapping[str, bytes], *,
                       max_bytes: int = MAX_SCRIPT_BYTES) -> list[PlatformScript]:
    chunks: list[list[tuple[str, bytes]]] = [[]]
    for serial in sorted(files):
        candidate = [*chunks[-1], (serial, files[serial])]
        if chunks[-1] and len(_script(candidate)) > max_bytes:
            chunks.append([(serial, files[serial])])
        else:
            chunks[-1] = candidate
    if not chunks[-1]:
        return []
    total = len(chunks)
    return [PlatformScript(display_name=f"mdmgen - Claude Code - {team} - Windows ({i} of {total})",
                           file_name=f"mdmgen-claude-code-{_slug(team)}-{i}.ps1", content=_script(rows),
                           serials=tuple(serial for serial, _ in rows))
            for i, rows in enumerate(chunks, start=1)]


def read_table(content: bytes) -> dict[str, bytes]:
    return {serial: base64.b64decode(data) for serial, data in _ROW.findall(content.decode("utf-8"))}
