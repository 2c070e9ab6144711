"""Inventory loading: encodings, header aliases, row checks, and file:line errors."""

import codecs

import pytest

from mdmgen import inventory
from mdmgen.models import Platform

from .conftest import HEADER


def load_text(tmp_path, text, name="inv.csv", encoding="utf-8", bom=b"", columns=None):
    path = tmp_path / name
    path.write_bytes(bom + text.encode(encoding))
    return inventory.load([path], columns), str(path)


def messages(inv):
    return [str(p) for p in inv.problems]


def test_reads_a_plain_file(tmp_path):
    inv, _ = load_text(tmp_path, HEADER + "c02abc,macos,Ann@Example.COM,Platform\n")
    assert inv.problems == []
    [device] = inv.devices
    assert device.serial == "C02ABC"  # serials are upper-cased: they are the device key
    assert device.platform is Platform.MACOS
    assert device.user_email == "Ann@example.com"  # domain lower-cased, local part kept
    assert device.team == "Platform"


@pytest.mark.parametrize("encoding, bom", [
    ("utf-8", codecs.BOM_UTF8),
    ("utf-16-le", codecs.BOM_UTF16_LE),
    ("utf-16-be", codecs.BOM_UTF16_BE),
])
def test_bom_encodings_and_crlf(tmp_path, encoding, bom):
    text = HEADER + "S1,linux,zoë@example.com,Équipe\r\nS2,wsl,b@example.com,B\r\n\r\n\r\n"
    inv, _ = load_text(tmp_path, text, encoding=encoding, bom=bom)
    assert inv.problems == []
    assert [(d.serial, d.user_email, d.team) for d in inv.devices] == [
        ("S1", "zoë@example.com", "Équipe"), ("S2", "b@example.com", "B")]


def test_excel_unicode_text_export_is_tab_separated_utf16(tmp_path):
    text = "Serial Number\tDevice Type\tEmail Address\tDepartment\r\nS1\tWindows\ta@example.com\tOps\r\n"
    inv, _ = load_text(tmp_path, text, encoding="utf-16-le", bom=codecs.BOM_UTF16_LE)
    assert inv.problems == []
    assert inv.devices[0].platform is Platform.WINDOWS and inv.devices[0].team == "Ops"


def test_quoted_fields_with_commas_quotes_and_newlines_keep_line_numbers(tmp_path):
    text = (HEADER
            + 'S1,linux,a@example.com,"R&D, ""Berlin"""\n'
            + 'S2,linux,b@example.com,"two\nlines"\n'
            + "S3,beos,c@example.com,Ops\n")
    inv, name = load_text(tmp_path, text)
    assert [d.team for d in inv.devices] == ['R&D, "Berlin"']
    # The quoted newline is a control character in a team name; the row after it is on line 5.
    assert messages(inv) == [
        f"{name}:3: team: contains a line break or a tab; a team name is one line",
        f"{name}:5: platform: 'beos' is not a platform (use macos, linux, windows or wsl)",
    ]


def test_header_aliases_are_folded_and_extra_columns_kept(tmp_path):
    text = "SERIAL,os,E-Mail Address,department,Cost Center,Office-Location\nS1,osx,a@example.com,Ops,CC-1,Berlin\n"
    inv, _ = load_text(tmp_path, text.replace("E-Mail Address", "Email_Address"))
    assert inv.problems == []
    assert inv.devices[0].extra == {"cost_center": "CC-1", "office_location": "Berlin"}


def test_column_mapping_from_the_policy(tmp_path):
    text = "Asset Serial,platform,Work Email,team,email\nS1,linux,a@example.com,Ops,private@example.org\n"
    inv, _ = load_text(tmp_path, text, columns={"serial_number": "Asset Serial",
                                                "user_email": "work email"})
    assert inv.problems == []
    assert inv.devices[0].user_email == "a@example.com"
    assert inv.devices[0].extra == {"email": "private@example.org"}


def test_missing_and_ambiguous_columns(tmp_path):
    inv, name = load_text(tmp_path, "serial,email,email address,team\nS1,a@b.co,a@b.co,x\n")
    assert messages(inv) == [
        f"{name}:1: email address: both 'email' and 'email address' map to user_email; "
        "choose one with 'columns: {user_email: ...}' in the policy",
        f"{name}:1: platform: missing column (accepted headers: 'platform', 'os', 'device type')",
    ]
    assert inv.devices == []


@pytest.mark.parametrize("raw, expected", [
    ("mac", Platform.MACOS), ("macOS", Platform.MACOS), ("darwin", Platform.MACOS),
    ("OSX", Platform.MACOS), ("linux", Platform.LINUX), ("win", Platform.WINDOWS),
    ("Win32", Platform.WINDOWS), ("Windows", Platform.WINDOWS), ("WSL", Platform.WSL),
])
def test_platform_spellings(tmp_path, raw, expected):
    inv, _ = load_text(tmp_path, HEADER + f"S1,{raw},a@example.com,Ops\n")
    assert inv.devices[0].platform is expected


@pytest.mark.parametrize("serial, message", [
    ("", "missing value"),
    (".hidden", "not starting with '.'"),
    ("../etc", "not starting with '.'"),
    ("a/b", "letters, digits"),
    ("S 1", "letters, digits"),
    ("X" * 65, "1-64"),
    ("con", "not usable as a folder name on Windows"),
    ("LPT1.x", "not usable as a folder name on Windows"),
])
def test_serials_that_cannot_be_a_folder_name_are_refused(tmp_path, serial, message):
    inv, name = load_text(tmp_path, HEADER + f'"{serial}",linux,a@example.com,Ops\n')
    assert inv.devices == []
    [problem] = inv.problems
    assert str(problem).startswith(f"{name}:2: serial_number: ")
    assert message in problem.message


@pytest.mark.parametrize("email", [
    "Ann <ann@example.com>", "no-at-sign", "a@@example.com", "a@", "",
])
def test_bad_emails_are_row_errors(tmp_path, email):
    inv, name = load_text(tmp_path, HEADER + f'S1,linux,"{email}",Ops\n')
    [problem] = inv.problems
    assert str(problem).startswith(f"{name}:2: user_email: ")


def test_plus_and_unicode_emails_are_accepted(tmp_path):
    inv, _ = load_text(tmp_path, HEADER + "S1,linux,Ann+CI@Exämple.COM,Ops\n")
    assert inv.problems == []
    assert inv.devices[0].user_email == "Ann+CI@exämple.com"


def test_duplicate_serials_across_files_name_both_places(tmp_path):
    first = tmp_path / "a.csv"
    second = tmp_path / "b.csv"
    first.write_text(HEADER + "abc-1,linux,a@example.com,Ops\n")
    second.write_text(HEADER + "S2,linux,b@example.com,Ops\nABC-1,wsl,c@example.com,Ops\n")
    inv = inventory.load([tmp_path])
    assert [str(p) for p in inv.problems] == [
        f"{second}:3: serial_number: duplicate serial 'ABC-1' (also at {first}:2)"]


def test_inactive_rows_are_excluded_and_counted_without_validation(tmp_path):
    text = ("serial_number,platform,user_email,team,status\n"
            "S1,linux,a@example.com,Ops,active\n"
            "S1,linux,,Ops,Retired\n"          # the laptop's previous owner, already gone
            "S3,beos,bad,,TERMINATED\n"
            "S4,linux,d@example.com,Ops,offboarded\n"
            "S5,linux,e@example.com,Ops,inactive\n")
    inv, _ = load_text(tmp_path, text)
    assert inv.problems == []
    assert [d.serial for d in inv.devices] == ["S1"]
    assert inv.excluded == 4


def test_every_error_of_a_file_is_reported(tmp_path):
    text = HEADER + "S1,beos,a@example.com,Ops\nS2,linux,bad-email,Ops\nS3,linux,c@example.com,\n"
    inv, _ = load_text(tmp_path, text)
    assert [p.location.line for p in inv.problems] == [2, 3, 4]
    assert [p.field for p in inv.problems] == ["platform", "user_email", "team"]


def test_row_with_an_unquoted_comma_is_reported(tmp_path):
    inv, name = load_text(tmp_path, HEADER + "S1,linux,a@example.com,R&D, Berlin\n")
    assert messages(inv) == [
        f"{name}:2: row: 5 fields but the header has 4 (a value with an unquoted comma?)"]


def test_file_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + "S1,linux,a@example.com,Ops\nS2,linux,b@example.com,Équipe\n")
                     .encode("latin-1"))
    inv = inventory.load([path])
    assert [str(p) for p in inv.problems] == [
        f"{path}:3: encoding: not valid UTF-8; save the file as UTF-8 or as UTF-16 with a BOM"]


def test_missing_path_and_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    inv = inventory.load([tmp_path / "nope.csv", tmp_path / "empty"])
    assert [p.message for p in inv.problems] == ["no such file or folder", "folder has no .csv files"]
