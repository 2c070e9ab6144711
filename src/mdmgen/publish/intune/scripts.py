"""The Windows side of the Intune publisher: one PowerShell platform script per team (or per part of a team).

What a script does
    Run by the Intune Management Extension as SYSTEM in the 64-bit host (``runAsAccount=system``,
    ``runAs32Bit=false``), it reads the PC's serial number, looks it up in a table inside the script
    and writes that device's own compiled ``managed-settings.json`` to
    ``C:\\Program Files\\ClaudeCode\\managed-settings.json``, the one path Claude Code reads on Windows
    (the ProgramData path was removed in 2.1.75). The table holds, per serial, the base64 of the exact
    bytes mdmgen compiled, so an auditor can decode one entry and compare it with
    ``output/devices/<SERIAL>/managed-settings.json`` byte for byte (:func:`read_table` does the same).
    The bytes go to disk with ``[IO.File]::WriteAllBytes``: no PowerShell encoding layer sits in
    between that could add a BOM or change line endings, so the file is UTF-8 without a BOM exactly
    when the compiled file is. The write goes to a hidden temporary file in the same folder, which
    then replaces the target in one step (``[IO.File]::Replace``, or ``Move`` when there is none yet),
    so Claude Code, which reloads the file on change, never reads half a file. A device whose file
    already holds those bytes is not written; a device not in the table changes nothing and exits 0,
    because every part of a team's script runs on every PC of the team's group.

Why a platform script (``deviceManagementScript``), not the registry value or a remediation
    The registry value (``HKLM\\SOFTWARE\\Policies\\ClaudeCode``, ``Settings``) is one string for every
    device an ADMX policy or script targets, so per-device settings would still need a script, and a
    Claude Code bug once ignored HKLM settings while the same JSON worked as a file (#52546): the file
    is the channel mdmgen compiles and audits. A remediation (``deviceHealthScript``) would re-check
    on a schedule, but needs Windows Enterprise E3/E5-class licensing [unverified], which a publisher
    cannot assume of every tenant. A platform script works on every Intune-enrolled Windows 10 1607+
    PC that is not Home or S mode.

What that means for drift
    Intune runs a platform script once, and again only when the script (or its assignment) changes;
    failures are retried at the next three check-ins. So a file that a local administrator edits or
    deletes is **not** restored until that script's content changes, which happens when any device in
    the same part changes (a new device, a changed policy value). To force a rewrite, change the
    script (re-publish after a policy change) or re-run it from Intune. The script itself never
    deletes the file: a device that leaves the inventory keeps its last file until it is removed by
    other means.

Serial numbers
    The script reads ``(Get-CimInstance Win32_BIOS).SerialNumber`` (the SMBIOS system serial, which is
    also what Intune reports as ``managedDevice.serialNumber`` for Windows PCs [unverified: the Graph
    reference does not say where the value comes from]) and normalises it by trimming whitespace and
    upper-casing (``ToUpperInvariant``). The inventory stores serials upper-cased and trimmed and
    restricts them to ASCII letters, digits, ``-``, ``_`` and ``.`` (:data:`mdmgen.models.SAFE_NAME`),
    so both sides agree. :func:`build_team_scripts` refuses a serial that is not in that normal form
    instead of guessing. Generic firmware serials ("To be filled by O.E.M.") contain spaces, so they
    can never be in the inventory, and such a PC changes nothing.

Nothing hostile reaches PowerShell
    Team names come from HR and may hold any Unicode, quotes, ``$``, backticks. The script body never
    contains the team: it appears only in the Intune object's display name (a JSON string). Serials
    appear only as single-quoted literals after the check above, so they hold no quote of any kind
    (PowerShell also treats the typographic quotes U+2018..U+201B as single quotes, which is why
    doubling ``'`` alone would not be enough for arbitrary text). File contents appear only as base64.
    The script is pure ASCII, so Windows PowerShell 5.1 reads it the same with or without a BOM.

Size and split
    Intune takes scripts "under 200 KB". Whether that counts the ``.ps1`` or its base64
    ``scriptContent`` (4/3 larger) is not documented, so the default limit is 150,000 bytes of script,
    which stays under 200,000 either way. A team whose script would be larger is split by the SHA-256
    of each serial: the devices whose hash starts with bit 0 go to one part, bit 1 to the other, and a
    part that is still too large is split on the next bit. The split is a pure function of the set of
    serials and their file sizes (same input, same parts, same bytes), and it is local: a device's
    part changes only when its own part overflows (and splits) or shrinks enough to merge with its
    sibling, so a nightly run that adds or removes a few PCs rewrites one or two scripts of a team,
    not all of them. A part is named by its hash prefix, e.g. ``... - Windows (part 01)``; a team that
    fits in one script has one object named ``... - Windows``. Every part of a team is assigned to the
    team's group; when a team's parts change, the parts no longer produced must be deleted, or their
    stale tables would keep writing old files.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from ...emit.registry import SETTINGS_JSON
from ...models import SAFE_NAME, Platform, unsafe_name
from .objects import windows_name

INSTALL_PATH = SETTINGS_JSON.install_paths[Platform.WINDOWS]
"""``C:\\Program Files\\ClaudeCode\\managed-settings.json``: the registry's path, hard-coded in the script
(never ``$env:ProgramFiles``, which a 32-bit host would see as ``Program Files (x86)``)."""
INSTALL_DIR = INSTALL_PATH.rpartition("\\")[0]
INTUNE_SCRIPT_LIMIT = 200_000
"""Intune's documented limit, "under 200 KB" (Intune docs ``apps/intune-management-extension.md``)."""
DEFAULT_MAX_BYTES = INTUNE_SCRIPT_LIMIT * 3 // 4
"""150,000: under 200 KB whether Intune measures the script or its base64 ``scriptContent``."""

_HASH_BITS = 256
_EOL = "\r\n"
_TABLE_START = "$Table = @{"
_TABLE_END = "}"
_TABLE_LINE = re.compile(r"^    '([A-Z0-9_.-]{1,64})' = '([A-Za-z0-9+/=]*)'$")


@dataclass(frozen=True)
class PlatformScript:
    """One ``deviceManagementScript``: what the publisher creates, compares and assigns."""

    display_name: str
    """``mdmgen - Claude Code - <team> - Windows``, plus `` (part <bits>)`` when the team is split."""
    file_name: str
    """``mdmgen-claude-code-<slug>-<hash8>[-p<bits>].ps1``: ASCII, unique per team and part."""
    content: bytes
    """The PowerShell script, pure ASCII; Intune's ``scriptContent`` is the base64 of these bytes."""
    serials: tuple[str, ...]
    """The devices in its table, sorted."""


@dataclass(frozen=True)
class _Entry:
    serial: str
    line: str
    hash_bits: int

    def bit(self, depth: int) -> int:
        return (self.hash_bits >> (_HASH_BITS - 1 - depth)) & 1


def build_team_scripts(team: str, files: Mapping[str, bytes], *,
                       max_bytes: int = DEFAULT_MAX_BYTES) -> list[PlatformScript]:
    """The platform scripts that give each of ``team``'s PCs its own file, each at most ``max_bytes``.

    ``files`` maps each serial (upper-case, as the inventory stores it) to the exact bytes of that
    device's compiled ``managed-settings.json``. Returns no script for no files, one when the team
    fits, otherwise one per hash-prefix part (see the module docstring), ordered by part.
    Raises ValueError for a serial not in the inventory's normal form, or a device whose file alone
    does not fit in ``max_bytes``: both are bugs upstream, not user errors.
    """
    entries = [_entry(serial, data) for serial, data in sorted(files.items())]
    parts = _split(entries, "", max_bytes) if entries else []
    return [_script(team, label, members) for label, members in parts]


def read_table(content: bytes) -> dict[str, bytes]:
    """The serial table of a script :func:`build_team_scripts` made: serial -> exact file bytes.

    Strict, so the publisher's read-back check fails loudly on a script it did not write (or one
    Intune changed): raises ValueError when the table is missing, malformed or repeats a serial.
    """
    try:
        lines = content.decode("ascii").split(_EOL)
    except UnicodeDecodeError as exc:
        raise ValueError("not an mdmgen script: it is not ASCII") from exc
    if lines.count(_TABLE_START) != 1:
        raise ValueError("not an mdmgen script: no device table")
    table: dict[str, bytes] = {}
    for number, line in enumerate(lines[lines.index(_TABLE_START) + 1:], start=lines.index(_TABLE_START) + 2):
        if line == _TABLE_END:
            return table
        match = _TABLE_LINE.match(line)
        if match is None:
            raise ValueError(f"line {number}: not a device table entry")
        serial, encoded = match.groups()
        if serial in table:
            raise ValueError(f"line {number}: serial {serial} appears twice")
        try:
            table[serial] = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"line {number}: serial {serial}: the file is not valid base64") from exc
    raise ValueError("not an mdmgen script: the device table does not end")


def _entry(serial: str, data: bytes) -> _Entry:
    # fullmatch: SAFE_NAME ends in '$', which also matches before a trailing newline.
    problem = unsafe_name(serial) if SAFE_NAME.fullmatch(serial) else "has characters a serial may not have"
    if problem is None and serial != serial.upper():
        problem = "is not upper-case as the inventory stores serials"
    if problem is not None:
        raise ValueError(f"serial {serial!r} {problem}")
    if not isinstance(data, bytes):
        raise ValueError(f"serial {serial}: the file must be bytes, not {type(data).__name__}")
    line = f"    '{serial}' = '{base64.b64encode(data).decode('ascii')}'"
    return _Entry(serial, line, int.from_bytes(hashlib.sha256(serial.encode("ascii")).digest()))


def _split(entries: list[_Entry], label: str, max_bytes: int) -> list[tuple[str, list[_Entry]]]:
    """Hash-prefix parts of ``entries`` (sorted by serial) that each fit ``max_bytes``; no empty part."""
    if _size(label, entries) <= max_bytes:
        return [(label, entries)]
    if len(entries) == 1:
        raise ValueError(f"serial {entries[0].serial}: its managed-settings.json alone makes a script of "
                         f"{_size(label, entries)} bytes, over the limit of {max_bytes}")
    depth = len(label)  # distinct serials have distinct SHA-256 values, so they part before 256 bits
    parts: list[tuple[str, list[_Entry]]] = []
    for bit in (0, 1):
        half = [entry for entry in entries if entry.bit(depth) == bit]
        if half:
            parts.extend(_split(half, label + str(bit), max_bytes))
    return parts


def _size(label: str, entries: list[_Entry]) -> int:
    head, tail = _frame(label, len(entries))
    return len(head) + len(tail) + sum(len(entry.line) + len(_EOL) for entry in entries)


def _script(team: str, label: str, entries: list[_Entry]) -> PlatformScript:
    head, tail = _frame(label, len(entries))
    text = head + "".join(entry.line + _EOL for entry in entries) + tail
    suffix = f" (part {label})" if label else ""
    return PlatformScript(
        display_name=f"{windows_name(team)}{suffix}",
        file_name=f"mdmgen-claude-code-{_team_slug(team)}{f'-p{label}' if label else ''}.ps1",
        content=text.encode("ascii"),
        serials=tuple(entry.serial for entry in entries),
    )


def _team_slug(team: str) -> str:
    """An ASCII name for ``team``: readable where it can be, unique through a hash of the exact name."""
    ascii_name = unicodedata.normalize("NFKD", team).encode("ascii", "ignore").decode("ascii")
    readable = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:40].rstrip("-") or "team"
    return f"{readable}-{hashlib.sha256(team.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def _frame(label: str, count: int) -> tuple[str, str]:
    """The script before and after the table lines. Only ``label`` (bits) and ``count`` vary.

    Over 60 lines because most of them are the PowerShell script's own text, kept whole so that it
    reads as the script a Windows admin will see."""
    which = (f"the devices whose SHA-256(serial) starts with bits {label}" if label
             else "every device of its team")
    head = f"""\
# mdmgen: Claude Code managed settings for Windows. Generated: do not edit, re-run mdmgen.
# Intune platform script: run as SYSTEM in the 64-bit host (runAsAccount system, runAs32Bit false).
# Writes {INSTALL_PATH} (exact bytes, UTF-8, no BOM)
# for {which} ({count} in the table below).
# Each device is found by its BIOS serial number (Win32_BIOS.SerialNumber), trimmed and upper-cased.
# Each table value is the base64 of that device's exact compiled file: decode one to compare it with
# output/devices/<SERIAL>/managed-settings.json. A device not in the table changes nothing (exit 0).

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version 2.0

{_TABLE_START}
"""
    tail = f"""\
{_TABLE_END}

$Folder = '{INSTALL_DIR}'
$Target = '{INSTALL_PATH}'

function Test-SameBytes([byte[]] $Left, [byte[]] $Right) {{
    if ($Left.Length -ne $Right.Length) {{ return $false }}
    for ($i = 0; $i -lt $Left.Length; $i++) {{
        if ($Left[$i] -ne $Right[$i]) {{ return $false }}
    }}
    return $true
}}

try {{
    $Serial = ''
    $Bios = Get-CimInstance -ClassName Win32_BIOS | Select-Object -First 1
    if ($null -ne $Bios -and $null -ne $Bios.SerialNumber) {{
        $Serial = ([string] $Bios.SerialNumber).Trim().ToUpperInvariant()
    }}
    if (-not $Table.ContainsKey($Serial)) {{
        Write-Output 'mdmgen: this device is not in this script; nothing changed.'
        exit 0
    }}
    $Wanted = [System.Convert]::FromBase64String($Table[$Serial])
    if ([System.IO.File]::Exists($Target)) {{
        $Current = [System.IO.File]::ReadAllBytes($Target)
        if (Test-SameBytes $Current $Wanted) {{
            Write-Output 'mdmgen: managed-settings.json already has these bytes; nothing changed.'
            exit 0
        }}
    }}
    [void] [System.IO.Directory]::CreateDirectory($Folder)
    $Temp = Join-Path $Folder ('.managed-settings.json.mdmgen-' + [System.Guid]::NewGuid().ToString('N'))
    try {{
        [System.IO.File]::WriteAllBytes($Temp, $Wanted)
        if ([System.IO.File]::Exists($Target)) {{
            [System.IO.File]::Replace($Temp, $Target, [NullString]::Value)
        }} else {{
            [System.IO.File]::Move($Temp, $Target)
        }}
    }} finally {{
        if ([System.IO.File]::Exists($Temp)) {{ [System.IO.File]::Delete($Temp) }}
    }}
    Write-Output 'mdmgen: wrote managed-settings.json.'
    exit 0
}} catch {{
    [Console]::Error.WriteLine('mdmgen: ' + $_.Exception.Message)
    exit 1
}}
"""
    return head.replace("\n", _EOL), tail.replace("\n", _EOL)
