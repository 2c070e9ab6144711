"""Read HR/team inventory CSV exports into checked ``Device`` values.

Real exports are messy: Excel writes UTF-16 with a BOM and tabs, other tools CRLF and quoted
newlines, and column names drift between systems. This module absorbs that, and turns every
problem into a ``file:line: column: message`` line instead of stopping at the first one.
Nothing here builds a path: serial numbers are checked so the output stage can.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import functools
import hashlib
import io
import re
import types
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

from .inputfile import MAX_INVENTORY_BYTES, InputFileError, not_text, read_input
from .models import (
    SAFE_NAME,
    Device,
    Location,
    Platform,
    Problem,
    StatusColumn,
    most_used_spelling,
    unencodable_text,
    unsafe_name,
)
from .policy import team_problem

REQUIRED_FIELDS = ("serial_number", "platform", "user_email", "team")

# Header aliases, compared after folding (see ``fold_header``).
HEADER_ALIASES: dict[str, tuple[str, ...]] = {
    "serial_number": ("serial_number", "serial", "serial number"),
    "platform": ("platform", "os", "device type"),
    "user_email": ("user_email", "email", "email address"),
    "team": ("team", "department"),
    # Workday writes "Employment Status" or "Worker Status", BambooHR "Status" or "Employment
    # Status", other HR systems "Employee Status".
    "status": ("status", "employment status", "worker status", "employee status"),
}

PLATFORM_ALIASES: dict[str, Platform] = {
    **dict.fromkeys(("macos", "mac", "darwin", "osx", "os x", "mac os x", "mac os", "macosx"), Platform.MACOS),
    # What HR and MDM exports write for a Linux machine: its distribution.
    **dict.fromkeys(("linux", "ubuntu", "debian", "rhel", "red hat", "redhat", "red hat enterprise linux",
                     "fedora", "centos", "rocky", "rocky linux", "almalinux", "alma linux", "suse", "opensuse",
                     "sles", "linux mint", "arch linux"), Platform.LINUX),
    **dict.fromkeys(("windows", "win", "win32", "win64", "microsoft windows"), Platform.WINDOWS),
    # WSL stays explicit: it reads its managed settings at Linux paths inside Windows, so it is
    # never guessed from a Windows or a Linux name.
    **dict.fromkeys(("wsl", "wsl2", "windows subsystem for linux"), Platform.WSL),
}
_PLATFORM_SUFFIX = re.compile(r"v?\d+(\.\d+)*|lts|pro|enterprise|education|home|server")
"""A trailing word of a platform value that names a version or an edition (``Windows 11 Pro``,
``Ubuntu 22.04 LTS``, ``macOS 14.5``, ``Mac OS X 10.15``), dropped before the name is looked up."""

EXCLUDED_STATUSES = frozenset({"inactive", "retired", "terminated", "offboarded", "leaver", "withdrawn"})
_STATUS_LOOKALIKE = re.compile(
    r"status|active|employment|terminat|leaver|leaving|offboard|separat|withdraw|(?:employee|worker)state")
"""Parts of a folded header that may say whether the person still works here (``Active``,
``Termination Date``, ``Employee State``...) when it is none of the status headers mdmgen knows;
not ``Employee ID`` nor a US ``State``."""

# Characters that cannot live in an XML plist or that make no sense in an identity value.
_PLAIN_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+$")
"""An address email-validator normalises by lower-casing its domain only (no quotes, no IDNA)."""
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\ufffe\uffff]")
_DELIMITERS = (",", "\t", ";")
_SPREADSHEETS = frozenset({".xlsx", ".xlsm", ".xls", ".ods", ".numbers"})
MAX_COLUMNS = 1_000
"""Widest inventory accepted. HR exports have tens of columns; a bound keeps a broken export (one
row of 100,000 cells) from making every row costly."""
MAX_FIELD_CHARS = 65_536
"""Longest cell, as long as the longest value a template may render (``templating``)."""


@dataclass
class Inventory:
    """The result of loading: valid devices, every problem, and what was left out on purpose."""

    devices: list[Device] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    excluded: int = 0
    files: list[str] = field(default_factory=list)
    extra_columns: set[str] = field(default_factory=set)
    """The template names of every extra column of every file's header, whether or not a row of it
    was valid: a template may use them, and a file whose rows are all invalid still has them."""
    row_digests: dict[str, str] = field(default_factory=dict)
    """Each valid device's row digest, by serial (see :func:`load`), for the compile state."""
    status_columns: dict[str, StatusColumn] = field(default_factory=dict)
    """Each file's status column, by file (see ``StatusColumn``), for every file whose header was read."""
    team_spellings: dict[str, dict[str, int]] = field(default_factory=dict)
    """The teams whose rows spell them otherwise than their display spelling (see ``fold_teams``):
    display spelling -> {other spelling: rows}, sorted; teams written one way only are left out."""
    excluded_rows: dict[str, tuple[Location, str]] = field(default_factory=dict)
    """The rows excluded by status, by their serial as written (upper-cased): the row and its status
    (``explain`` says why a serial gets no files; a compile only counts them)."""
    rejected_rows: dict[str, Location] = field(default_factory=dict)
    """The rows with problems, by their serial cell (upper-cased, when it has one): ``explain`` lists
    that row's problems, which ``problems`` holds at the row's location."""


def fold_header(name: str) -> str:
    """Compare headers case-insensitively, ignoring spaces, underscores and hyphens."""
    return re.sub(r"[\s_\-]+", "", name).casefold()


def template_name(header: str) -> str:
    """The name an extra column has in templates: lower snake case of its ASCII letters and digits."""
    name = re.sub(r"[^0-9a-z]+", "_", header.strip().casefold()).strip("_")
    return f"_{name}" if name[:1].isdigit() else name


def find_csv_files(paths: Iterable[Path]) -> tuple[list[Path], list[Problem]]:
    """Expand folders to their ``*.csv`` files (sorted, so runs are repeatable)."""
    files: list[Path] = []
    problems: list[Problem] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
            if not found:
                sheets = sorted(p.name for p in path.iterdir() if p.suffix.lower() in _SPREADSHEETS)
                hint = f" ({sheets[0]} is a spreadsheet: export it as CSV UTF-8)" if sheets else ""
                problems.append(Problem(location=Location(file=str(path)), field="inventory",
                                        message=f"folder has no .csv files{hint}"))
            files.extend(found)
        elif path.exists():
            files.append(path)  # read_input refuses what is not a regular file, saying so
        else:
            problems.append(Problem(location=Location(file=str(path)), field="inventory",
                                    message="no such file or folder"))
    return files, problems


def load(paths: Iterable[Path], columns: Mapping[str, str] | None = None,
         known_rows: AbstractSet[str] = frozenset(), teams: Mapping[str, str] | None = None,
         row_digest: Callable[[bytes], str] | None = None) -> Inventory:
    """Load and merge inventory files; duplicate serials are checked across all of them.

    Each valid row gets a *row digest*: ``row_digest`` (default: sha256) of its cells exactly as
    read, its header and the policy's ``columns`` mapping, everything its device is made of. A
    row whose digest is in ``known_rows`` (the compile state's: a row the last compile, under the
    same dependency versions, accepted) skips email-validator when its address is plain ASCII,
    whose normalised form is then known (see :func:`_check_email`). ``teams`` is the policy's
    team names by key (``policy.team_names``): every device's team is then its display spelling
    (see ``fold_teams``)."""
    files, problems = find_csv_files(paths)
    inventory = Inventory(problems=problems, files=[str(f) for f in files])
    digest = row_digest or _plain_digest

    first_seen: dict[str, Location] = {}
    for path in files:
        try:
            data = read_input(path, MAX_INVENTORY_BYTES)
        except FileNotFoundError:
            inventory.problems.append(Problem(location=Location(file=str(path)), field="inventory",
                                              message="no such file or folder"))
            continue
        except InputFileError as exc:
            inventory.problems.append(Problem(location=Location(file=str(path)), field="inventory",
                                              message=str(exc)))
            continue
        _load_file(str(path), data, columns or {}, inventory, first_seen, known_rows, digest)
    fold_teams(inventory, teams or {})
    return inventory


def _plain_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]  # 128 bits: no collision among any rows an inventory holds


def _header_part(cells: Sequence[str], columns: Mapping[str, str]) -> bytes:
    """What a row's meaning depends on besides its own cells: the header and the column mapping."""
    text = "\x1f".join(cells) + "\x1e" + "\x1f".join(f"{k}={v}" for k, v in sorted(columns.items()))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def fold_teams(inventory: Inventory, named: Mapping[str, str]) -> None:
    """Give every team one display spelling, decided once for the whole inventory, and note the folds.

    Rows whose teams share a key (``models.team_key``) are one team. Its display spelling is the
    policy's (``named``, by key) when the policy names the team, else the spelling most rows use,
    a tie going to the lowest by code point, so the same rows give the same spelling in any
    order. Only devices written otherwise are copied; their ``team_written`` keeps the cell."""
    counts: dict[str, Counter[str]] = {}
    for device in inventory.devices:
        counts.setdefault(device.team_key, Counter())[device.team_written] += 1
    display: dict[str, str] = {}
    for key, spellings in counts.items():
        chosen = named.get(key) or most_used_spelling(spellings)
        display[key] = chosen
        others = sorted(((name, n) for name, n in spellings.items() if name != chosen), key=lambda p: (-p[1], p[0]))
        if others:
            inventory.team_spellings[chosen] = dict(others)
    inventory.team_spellings = dict(sorted(inventory.team_spellings.items()))
    inventory.devices = [d if d.team == display[d.team_key] else d.model_copy(update={"team": display[d.team_key]})
                         for d in inventory.devices]


def decode_text(name: str, data: bytes) -> tuple[str | None, Problem | None]:
    """UTF-8 (BOM optional) or UTF-16 with a BOM; a file that is not text (a workbook, a PDF) is
    reported as what it is, anything else with its line."""
    if kind := not_text(data):
        return None, Problem(location=Location(file=name), field="inventory",
                             message=f"this is {kind}, not a CSV file: export or save it as CSV UTF-8")
    if data.startswith(codecs.BOM_UTF8):
        encoding, data = "utf-8", data[len(codecs.BOM_UTF8):]
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = "utf-8"
    try:
        return data.decode(encoding), None
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1 if encoding == "utf-8" else 0
        return None, Problem(
            location=Location(file=name, line=line), field="encoding",
            message=f"not valid {encoding.upper()}; save the file as UTF-8 or as UTF-16 with a BOM")


def _sniff_delimiter(text: str) -> str:
    header = text.split("\n", 1)[0]
    counts = {d: header.count(d) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _read_rows(name: str, text: str) -> Iterable[tuple[int, list[str]] | Problem]:
    """Yield (first line of the record, cells), skipping blank records, or a Problem and stop."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_sniff_delimiter(text),
                        strict=True)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Problem(location=Location(file=name, line=reader.line_num), field="csv",
                          message=f"cannot parse: {exc}")
            return
        if any(cell.strip() for cell in row):
            yield start, row
        start = reader.line_num + 1


@dataclass
class _Header:
    index: dict[str, int]  # field name -> column index
    extras: dict[int, str]  # column index -> template name
    width: int
    status: StatusColumn


def _map_header(name: str, line: int, cells: list[str], columns: Mapping[str, str],
                problems: list[Problem]) -> _Header | None:
    wanted: dict[str, tuple[str, ...]] = {
        fld: (columns[fld],) if fld in columns else aliases for fld, aliases in HEADER_ALIASES.items()
    }
    lookup = {fold_header(alias): fld for fld, aliases in wanted.items() for alias in aliases}
    index: dict[str, int] = {}
    extras: dict[int, str] = {}
    taken: set[str] = set()  # the template names of ``extras``, for a linear clash check
    loc = Location(file=name, line=line)
    if len(cells) > MAX_COLUMNS:
        problems.append(Problem(location=loc, field="header", message=(
            f"{len(cells):,} columns; an inventory has at most {MAX_COLUMNS:,} (is it the right file?)")))
        return None
    ok = True
    for i, cell in enumerate(cells):
        header = cell.strip()
        fld = lookup.get(fold_header(header))
        if fld is None:
            tname = template_name(header)
            if not tname:
                continue  # an unnamed column carries nothing a template could use
            if tname in taken or tname in HEADER_ALIASES or tname in {
                "serial", "user_email", "platform", "team"
            }:
                problems.append(Problem(location=loc, field=header, message=(
                    f"column name clashes with another column as template name {tname!r}; "
                    "rename it")))
                ok = False
            extras[i] = tname
            taken.add(tname)
        elif fld in index:
            problems.append(Problem(location=loc, field=header, message=(
                f"both {cells[index[fld]].strip()!r} and {header!r} map to {fld}; "
                f"choose one with 'columns: {{{fld}: ...}}' in the policy")))
            ok = False
        else:
            index[fld] = i
    for fld in REQUIRED_FIELDS:
        if fld not in index:
            names = ", ".join(repr(a) for a in wanted[fld])
            problems.append(Problem(location=loc, field=fld,
                                    message=f"missing column (accepted headers: {names})"))
            ok = False
    if not ok:
        return None
    if "status" in index:
        status = StatusColumn(column=cells[index["status"]].strip())
    else:
        status = StatusColumn(column=None, looks_like=[
            cells[i].strip() for i in extras if _STATUS_LOOKALIKE.search(fold_header(cells[i]))])
    return _Header(index=index, extras=extras, width=len(cells), status=status)


def _load_file(name: str, data: bytes, columns: Mapping[str, str], inventory: Inventory,
               first_seen: dict[str, Location], known_rows: AbstractSet[str],
               digest: Callable[[bytes], str]) -> None:
    text, problem = decode_text(name, data)
    if problem:
        inventory.problems.append(problem)
        return
    assert text is not None
    header: _Header | None = None
    header_part = b""
    seen_header = False
    for item in _read_rows(name, text):
        if isinstance(item, Problem):
            inventory.problems.append(item)
            return
        line, cells = item
        if not seen_header:
            seen_header = True
            header = _map_header(name, line, cells, columns, inventory.problems)
            if header is None:
                return
            inventory.extra_columns.update(header.extras.values())
            inventory.status_columns[name] = header.status
            header_part = _header_part(cells, columns)
            continue
        assert header is not None
        key = digest(header_part + "\x1f".join(cells).encode("utf-8", "surrogatepass"))
        known = key in known_rows
        if known and _load_known_row(name, line, cells, header, inventory, first_seen, key):
            continue
        _load_row(name, line, cells, header, inventory, first_seen, key, known)
    if not seen_header:
        inventory.problems.append(Problem(location=Location(file=name), field="inventory",
                                          message="file is empty (no header row)"))


def _load_row(name: str, line: int, cells: list[str], header: _Header, inventory: Inventory,
              first_seen: dict[str, Location], key: str = "", known: bool = False) -> None:
    loc = Location(file=name, line=line)
    if problem := _shape_problem(cells, header, loc):
        inventory.problems.append(problem)
        return
    cells = cells + [""] * (header.width - len(cells))

    def cell(fld: str) -> str:
        return cells[header.index[fld]].strip() if fld in header.index else ""

    if cell("status").casefold() in EXCLUDED_STATUSES:
        inventory.excluded += 1
        if cell("serial_number"):
            inventory.excluded_rows.setdefault(cell("serial_number").upper(), (loc, cell("status")))
        return

    problems: list[Problem] = []

    def bad(fld: str, message: str, serial: str | None = None) -> None:
        problems.append(Problem(location=loc, field=fld, message=message, serial=serial, row=True))

    serial = _check_serial(cell("serial_number"), bad)
    platform = _check_platform(cell("platform"), bad)
    email = _check_email(cell("user_email"), bad, known)
    team = _team_spelling(cell("team"))
    if not team:
        bad("team", "missing value")
    elif reason := team_problem(team):
        bad("team", reason)
    extra: dict[str, str] = {}
    for i, tname in header.extras.items():
        value = cells[i].strip()
        if reason := unencodable_text(value):
            bad(tname, reason)
        extra[tname] = value

    if serial is not None:
        previous = first_seen.get(serial)
        if previous is not None:
            bad("serial_number", f"duplicate serial {serial!r} (also at {previous})", serial)
        else:
            first_seen[serial] = loc

    if problems:
        inventory.problems.extend(problems)
        if cell("serial_number"):
            inventory.rejected_rows.setdefault(cell("serial_number").upper(), loc)
        return
    assert serial is not None and platform is not None and email is not None
    inventory.row_digests[serial] = key
    inventory.devices.append(Device(serial=serial, platform=platform, user_email=email, team=team,
                                    extra=extra, location=loc))


def _shape_problem(cells: list[str], header: _Header, loc: Location) -> Problem | None:
    """A row with more fields than its header, or a field too long to be a value."""
    if len(cells) > header.width and any(c.strip() for c in cells[header.width:]):
        return Problem(location=loc, field="row", row=True, message=(
            f"{len(cells)} fields but the header has {header.width} (a value with an unquoted comma?)"))
    too_long = [i for i, c in enumerate(cells[:header.width]) if len(c) > MAX_FIELD_CHARS]
    if too_long:
        return Problem(location=loc, field="row", row=True, message=(
            f"field {too_long[0] + 1} is longer than {MAX_FIELD_CHARS:,} characters"))
    return None


def _load_known_row(name: str, line: int, cells: list[str], header: _Header, inventory: Inventory,
                    first_seen: dict[str, Location], key: str) -> bool:
    """A row the compile state knows, taken whole: False when it must go through every check.

    Its digest (its cells exactly as read, its header and the policy's ``columns``) is one the last
    compile accepted under the same versions of mdmgen and its libraries (``runkey.DEPENDENCIES``),
    so each per-row check would pass again (its shape against the header too) and each
    normalisation would give the same value: the device is built from the cells without checking
    them again. What depends on other rows is still decided here (a duplicate serial) or later
    (``fold_teams``); an address that is not plain ASCII goes through email-validator, whose
    normal form is not computed here."""
    if len(cells) < header.width:
        cells = cells + [""] * (header.width - len(cells))
    index = header.index
    email = _plain_address(cells[index["user_email"]].strip())
    serial = cells[index["serial_number"]].strip().upper()
    platform = parse_platform(cells[index["platform"]].strip())
    if email is None or platform is None or serial in first_seen:
        return False  # not what the state vouched for, or a duplicate: the full checks say so
    loc = first_seen[serial] = Location(file=name, line=line)
    inventory.row_digests[serial] = key
    inventory.devices.append(Device(
        serial=serial, platform=platform, user_email=email, team=_team_spelling(cells[index["team"]].strip()),
        extra={tname: cells[i].strip() for i, tname in header.extras.items()}, location=loc))
    return True


def _team_spelling(raw: str) -> str:
    """A team cell as the device carries it: NFC, so "Café" has one spelling in every output (the
    team it belongs to is ``fold_teams``'s to decide)."""
    return unicodedata.normalize("NFC", raw)


def _plain_address(raw: str) -> str | None:
    """The normal form email-validator gives a plain ASCII address (the local part as is, the
    domain lower-cased), known without calling it; None for any other address. Only for a row
    email-validator of the same version accepted before (the compile state's)."""
    if not _PLAIN_ADDRESS.match(raw) or "xn--" in raw.casefold():
        return None
    local, domain = raw.split("@")
    return f"{local}@{domain.lower()}"


def _check_serial(raw: str, bad) -> str | None:
    if not raw:
        bad("serial_number", "missing value")
        return None
    if not SAFE_NAME.match(raw):
        bad("serial_number", "must be 1-64 letters, digits, '-', '_' or '.', not starting with '.'")
        return None
    serial = raw.upper()
    if unsafe_name(serial):  # the same rule the output stage applies to every name on disk
        bad("serial_number", f"{serial!r} is not usable as a folder name on Windows")
        return None
    return serial


def parse_platform(raw: str) -> Platform | None:
    """The platform a value names (see ``PLATFORM_ALIASES``), ignoring case, extra spaces and a
    trailing version or edition; None when it names none."""
    words = raw.casefold().split()
    while words:
        platform = PLATFORM_ALIASES.get(" ".join(words))
        if platform is not None:
            return platform
        if len(words) == 1 or not _PLATFORM_SUFFIX.fullmatch(words[-1]):
            return None
        words.pop()
    return None


def _check_platform(raw: str, bad) -> Platform | None:
    platform = parse_platform(raw)
    if platform is None:
        if not raw:
            bad("platform", "missing value (use macos, linux, windows or wsl)")
            return None
        # No alias is longer than 30 characters: a longer value is nothing misspelt.
        close = (difflib.get_close_matches(" ".join(raw.casefold().split()), PLATFORM_ALIASES, n=1, cutoff=0.75)
                 if len(raw) <= 40 else [])
        hint = ""
        if close:
            meant = PLATFORM_ALIASES[close[0]].value
            hint = f"; did you mean {meant}?" if close[0] == meant else f"; did you mean {close[0]!r} ({meant})?"
        bad("platform", f"{raw!r} is not a platform{hint} (use macos, linux, windows or wsl)")
    return platform


@functools.cache
def _email_validator() -> types.ModuleType:
    """email-validator, loaded when the first row needs it: a night whose rows the compile state
    all knows (or that does not read a row at all) does without its 30 ms of imports."""
    import email_validator

    return email_validator


def _check_email(raw: str, bad, known: bool = False) -> str | None:
    if not raw:
        bad("user_email", "missing value")
        return None
    if _CONTROL_RE.search(raw):
        bad("user_email", "contains control characters")
        return None
    if known and (plain := _plain_address(raw)) is not None:
        return plain  # this exact row passed email-validator, of the same version, when the state was written
    checker = _email_validator()
    try:
        return checker.validate_email(raw, check_deliverability=False).normalized
    except checker.EmailNotValidError as exc:
        bad("user_email", f"not a valid address: {exc}")
        return None
