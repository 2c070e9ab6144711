"""Data shared by every stage.

Stages pass these values downwards (inventory -> policy -> render -> validate -> emit -> output)
and never reach back up, so the models here know nothing about files, click or publishers.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from . import runscope
from .errors import MdmgenException
from .exitcodes import ExitCode
from .messages import printable

SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}\Z")  # \Z: "$" would also match before a final newline
"""What a serial, a file name or any one path part under the output folder may look like: at most
64 letters, digits, '-', '_' and '.', never starting with '.' (so never '..' and never hidden)."""
WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"{p}{n}" for p in ("COM", "LPT") for n in range(1, 10)}
)
"""Names Windows refuses for a file or folder: an auditor checking out output/ on Windows must not break."""


_PORTABLE_NAME = re.compile(
    "(?!(?:{})(?:\\.|\\Z))".format("|".join(  # each letter in both cases: re.IGNORECASE lets [K] match U+212A
        "".join(f"[{c}{c.lower()}]" if c.isalpha() else c for c in word) for word in sorted(WINDOWS_RESERVED)))
    + r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}(?<!\.)\Z")
"""The names :func:`unsafe_name` accepts, as one pattern: SAFE_NAME, no Windows-reserved name before
the first '.', no final '.'. Checked first, so the usual (safe) name costs one match and no more."""


def unsafe_name(name: str) -> str | None:
    """Why ``name`` may not become one part of a path under the output folder, or None when it may.

    Every name that reaches a path goes through this one rule, whether it comes from the
    inventory (a serial), the registry (a file name) or a tree on disk (manifest keys, folder
    entries): a manifest is data anyone with commit access to the audit repository can edit.
    A 100,000-device compile asks about 600,000 times, so a safe name is one regex match.
    """
    if _PORTABLE_NAME.match(name):
        return None
    if not SAFE_NAME.match(name):
        return "must be 1-64 letters, digits, '-', '_' or '.', not starting with '.'"
    if name.split(".")[0].upper() in WINDOWS_RESERVED or name.endswith("."):
        return f"{name!r} is not usable as a file or folder name on Windows"
    return None


_NONCHARACTERS = "\ufdd0-\ufdef\ufffe\uffff" + "".join(
    f"{chr(plane + 0xFFFE)}{chr(plane + 0xFFFF)}" for plane in range(0x10000, 0x110000, 0x10000))
_UNENCODABLE = re.compile(f"[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f\\ud800-\\udfff{_NONCHARACTERS}]")
_CONTROL_NAMES = {"\x00": "a NUL byte", "\x1b": "an escape character (ESC, as in terminal escape sequences)"}


def unencodable_text(text: str) -> str | None:
    """Why ``text`` cannot be written identically into both managed-settings.json and a
    .mobileconfig, or None when it can. The one character rule of every value and key mdmgen writes.

    A profile is XML 1.0: it cannot hold NUL or the other C0 controls but tab and newline, nor
    U+FFFE/U+FFFF, and its parser turns a carriage return into a newline, so the profile would
    no longer equal the JSON. A lone surrogate is no character at all (it cannot be UTF-8). DEL,
    the C1 controls (U+0080-U+009F, which include the terminal's CSI) and the other Unicode
    noncharacters are legal XML but have no use in a setting and hide in a terminal or a diff,
    so they are refused too. Everything else, tab and newline included, is written as is and
    reads back unchanged from both files."""
    found = _UNENCODABLE.search(text)
    if found is None:
        return None
    char = found.group()
    code = f"U+{ord(char):04X}"
    if char == "\r":
        return "contains a carriage return (U+000D), which a profile's XML reads back as a newline; use \\n"
    if char in _CONTROL_NAMES:
        what = f"{_CONTROL_NAMES[char]} ({code})"
    elif "\ud800" <= char <= "\udbff" and "\udc00" <= text[found.end():found.end() + 1] <= "\udfff":
        pair = text[found.start():found.end() + 1].encode("utf-16", "surrogatepass").decode("utf-16")
        return (f"contains a surrogate pair {code} U+{ord(text[found.end()]):04X} written as two characters (two "
                f"\\u escapes, as in JSON); write the character itself or one \\U escape: \\U{ord(pair):08X}")
    elif "\ud800" <= char <= "\udfff":
        what = f"a lone surrogate {code} (not a character: broken UTF-16?)"
    elif ord(char) <= 0x9F:
        what = f"the control character {code}"
    else:
        what = f"the noncharacter {code}"
    return f"contains {what}, which a profile cannot carry unchanged"


def safe_relpath(relpath: str) -> str:
    """``relpath`` if every part is a safe name (see ``unsafe_name``); raise ValueError otherwise."""
    parts = relpath.split("/")
    if len(parts) > 4 or any(unsafe_name(part) for part in parts):
        raise ValueError(f"unsafe path {relpath!r}")
    return relpath


T = TypeVar("T")


def _safe_keys(mapping: dict[str, T], what: str) -> dict[str, T]:
    """``mapping`` if every key passes :func:`unsafe_name`; ValueError naming the first that does not."""
    for name in mapping:
        reason = unsafe_name(name)
        if reason:
            raise ValueError(f"{what} {name!r}: {reason}")
    return mapping


def fleet_relpath(relpath: str) -> str:
    """``relpath`` if it can hold a fleet-level file: safe parts, inside a folder of its own (not
    ``devices/``, not beside the manifest); raise ValueError otherwise."""
    safe_relpath(relpath)
    if "/" not in relpath or relpath.split("/")[0] in ("devices", "manifest.json"):
        raise ValueError(f"fleet file {relpath!r}: must be inside a folder of its own, not devices/")
    return relpath


@runscope.memo  # a fleet has a few hundred teams and 100,000 rows naming them
def team_key(team: str) -> str:
    """Which team a name names: the one rule every stage shares (inventory rows, the policy's
    ``teams:``, shapes, destinations, the collector files, Intune). Surrounding whitespace does not
    count, nor case, nor how an accent is encoded (``é`` typed as one character or as ``e`` plus a
    combining accent): Unicode's canonical caseless match, NFC(casefold(NFD(name))). Letters of
    other scripts that only look alike (a Cyrillic a, U+0430, for a Latin one) stay different."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", team.strip()).casefold())


def team_spelling(team: str) -> str:
    """How a team name is written out when it is chosen as a team's display spelling: trimmed, NFC."""
    return unicodedata.normalize("NFC", team.strip())


def most_used_spelling(counts: Mapping[str, int]) -> str:
    """The display spelling of a team the policy does not name: the one most rows use, a tie going to
    the lowest by code point, so the same rows give the same spelling in any order."""
    return min(counts, key=lambda name: (-counts[name], name))


class Platform(StrEnum):
    """The four platforms Claude Code reads managed settings on."""

    MACOS = "macos"
    LINUX = "linux"
    WINDOWS = "windows"
    WSL = "wsl"


class StatusColumn(BaseModel):
    """Which header of one inventory file says whether a row's person still works here.

    ``column`` is None when the file has none: then no row of it can be excluded as a leaver,
    which the compile summary says, since a silently ignored HR status would configure the
    laptops of terminated staff. ``looks_like`` names the file's other headers that read like a
    status (``Active``, ``Termination Date``) but are not one mdmgen knows, for the user to map
    with ``columns: {status: ...}`` in the policy."""

    model_config = ConfigDict(frozen=True)

    column: str | None
    looks_like: list[str] = Field(default_factory=list)


class Location(BaseModel):
    """Where a problem or a value came from: a file and a 1-based line (0 when unknown)."""

    model_config = ConfigDict(frozen=True)

    file: str
    line: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


class Problem(BaseModel):
    """One user-facing error, printed as ``file:line: field: message``.

    ``row`` marks a problem confined to one inventory row or device: ``--skip-invalid`` may
    drop that row and compile the rest. Any other problem (policy, unreadable file, missing
    column) stops the run, because skipping it would silently drop devices from the output.
    ``serial`` names the device, so a duplicate serial drops every row that claims it.
    """

    model_config = ConfigDict(frozen=True)

    location: Location
    field: str
    message: str
    serial: str | None = None
    row: bool = False

    def __str__(self) -> str:
        """One line whatever the field and message hold (see ``messages.printable``)."""
        return printable(f"{self.location}: {self.field}: {self.message}")


class MdmgenError(MdmgenException):
    """Inputs that are the user's to fix (exit 1); carries every problem found, not only the first."""

    exit_code = ExitCode.INVALID_INPUT

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    def headline(self) -> str:
        return f"{len(self.problems)} problem(s); nothing was written."


class Device(BaseModel):
    """One active inventory row, checked and normalised.

    ``extra`` holds the row's other columns under template-friendly names, so policies can
    use any HR column (cost centre, location, ...) without code changes.

    ``team`` is the team's *display spelling*, the one every output writes (``inventory.fold_teams``
    decides it once the inventory and the policy are read: the policy's ``teams:`` key, else the
    spelling most rows use); ``team_key`` is the team's identity (:func:`team_key`), computed here
    from ``team``, which every stage compares instead of normalising again. ``team_written`` is the
    row's own cell (NFC, trimmed), kept only to report the spellings a compile folded.
    """

    model_config = ConfigDict(frozen=True)

    serial: str
    platform: Platform
    user_email: str
    team: str
    team_key: str = ""
    team_written: str = ""
    extra: dict[str, str] = Field(default_factory=dict)
    location: Location

    @model_validator(mode="before")
    @classmethod
    def _decide_team_key(cls, data: Any) -> Any:
        """``team_key`` always follows ``team``: whatever a caller passes, the key is the one rule's."""
        if isinstance(data, dict) and isinstance(data.get("team"), str):
            data = {**data, "team_key": team_key(data["team"]),
                    "team_written": data.get("team_written") or data["team"]}
        return data

    def template_fields(self) -> dict[str, str]:
        """The names a policy template sees for this device."""
        return {
            **self.extra,
            "serial": self.serial,
            "platform": self.platform.value,
            "user_email": self.user_email,
            "team": self.team,
        }


Settings = dict[str, Any]
"""One device's managed settings: the exact JSON object written to managed-settings.json."""


class CompiledDevice(BaseModel):
    """A device ready for the output folder.

    ``inputs`` fingerprints everything the device's files are made from (its row, the policy
    layers and variables that apply to it, the generator version). When it equals the previous
    output's, the device is not rendered again and ``files`` is None: its files are reused as
    they are on disk.
    """

    model_config = ConfigDict(frozen=True)

    device: Device
    inputs: str
    files: dict[str, bytes] | None = None
    secrets: tuple[str, ...] = ()  # labels (env:NAME, file:PATH) of the secrets its files embed
    redacted: str | None = None  # digest of its files with those secrets blanked (see ManifestDevice)


class ManifestFile(BaseModel):
    """One output file: its digest, size, and where it is installed on the device (if a file)."""

    model_config = ConfigDict(frozen=True)

    sha256: str
    size: int
    install_path: str | None = None


class DerivedFile(BaseModel):
    """How a derived file of a device (a signed profile) was made: from which of the device's files,
    whose sha256 then, and with which signing certificate(s) (sha256 of their DER, see ``signing``).
    Only written when the file is made again, so an unchanged profile keeps the same entry."""

    model_config = ConfigDict(frozen=True, validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    source: str = Field(alias="from")
    from_sha256: str
    signer_sha256: str

    @field_validator("source")
    @classmethod
    def _safe_source(cls, source: str) -> str:
        reason = unsafe_name(source)
        if reason:
            raise ValueError(f"file name {source!r}: {reason}")
        return source


class ManifestDevice(BaseModel):
    model_config = ConfigDict(frozen=True)

    platform: Platform
    team: str
    inputs: str = Field(default="", description="Fingerprint of the device's inputs; unchanged means not "
                        "re-rendered (empty in manifests of older versions: always re-rendered).")
    files: dict[str, ManifestFile]
    secrets: list[str] | None = Field(default=None, description=(
        "Labels (env:NAME, file:PATH) of the secrets this device's files embed; its files are mode 0600."))
    redacted: str | None = Field(default=None, description=(
        "First 32 hex digits of a sha256 of the device's files with every embedded secret value blanked: "
        "equal on both sides of a diff means the files differ only by their secrets (a rotation)."))
    derived: dict[str, DerivedFile] | None = Field(
        default=None, description="Files of ``files`` made from another of them (signed profiles), by name; "
        "left out when there are none.")

    @field_validator("files")
    @classmethod
    def _safe_file_names(cls, files: dict[str, ManifestFile]) -> dict[str, ManifestFile]:
        return _safe_keys(files, "file name")

    @model_validator(mode="after")
    def _derived_are_listed(self) -> ManifestDevice:
        """A derived entry names a listed file made from another listed file, never itself."""
        for name, made in (self.derived or {}).items():
            if name not in self.files or made.source not in self.files or made.source == name:
                raise ValueError(f"derived file {name!r}: it and its source {made.source!r} must be two listed files")
        return self


class ManifestSecret(BaseModel):
    """A secret the compile resolved: its keyed fingerprint (never the value) and the settings
    keys that embed it, which ``diff`` never shows."""

    model_config = ConfigDict(frozen=True)

    fingerprint: str
    keys: list[str] = Field(default_factory=list)


class Manifest(BaseModel):
    """``output/manifest.json``: what the output folder holds, for publishers and auditors.

    It carries no timestamp, so the same inputs give the same bytes. Every name in it is checked
    when it is read (a manifest on disk is not trusted): a device key or a file name that could
    leave the folder makes the whole manifest invalid. ``fleet`` lists the files that belong to
    the whole fleet rather than to one device (``collector/...``), by path from the folder's root;
    manifests written before it existed read as having none.
    """

    model_config = ConfigDict(frozen=True)

    generator: str
    version: str
    secret_env: list[str] = Field(
        default_factory=list, description="env variables whose values are never shown (diff, logs).")
    devices: dict[str, ManifestDevice]
    fleet: dict[str, ManifestFile] = Field(
        default_factory=dict, description="Fleet-level files by path from the folder's root.")
    secrets: dict[str, ManifestSecret] | None = Field(
        default=None, description="Secrets embedded by some device, by label (env:NAME, file:PATH).")
    pseudonymised: bool | None = Field(
        default=None, description="True when the tree was compiled with pseudonymise_email: its files hold "
        "keyed pseudonyms, not addresses. Left out otherwise.")

    @field_validator("devices")
    @classmethod
    def _safe_serials(cls, devices: dict[str, ManifestDevice]) -> dict[str, ManifestDevice]:
        return _safe_keys(devices, "device")

    @field_validator("fleet")
    @classmethod
    def _safe_fleet_paths(cls, fleet: dict[str, ManifestFile]) -> dict[str, ManifestFile]:
        for relpath in fleet:
            fleet_relpath(relpath)
        return fleet
