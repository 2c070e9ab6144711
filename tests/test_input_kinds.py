"""A file that is not text, given as the inventory or the policy, is one line saying what it is:
the user exported a workbook, not a CSV, and an encoding error at "line 7" would not tell them."""

from __future__ import annotations

import codecs
import gzip
import io
import zipfile
from pathlib import Path

import pytest

from mdmgen.inputfile import not_text

from .conftest import HEADER, run, snapshot, write_inventory

ROW = "S1,linux,a@example.com,Ops\n"


def zipped(*members: str) -> bytes:
    """A real zip file with these members, as an Office application writes one."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in members:
            archive.writestr(name, "<x/>" * 5000)
    return buffer.getvalue()


KINDS = [
    (zipped("[Content_Types].xml", "_rels/.rels", "docProps/app.xml", "xl/workbook.xml", "xl/worksheets/sheet1.xml"),
     "an Excel workbook (a zip file)"),
    (zipped("mimetype", "content.xml"), "a zip file"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600), "an old-style Excel workbook (.xls) or another Office document"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "a PDF document"),
    (gzip.compress((HEADER + ROW).encode()), "a gzip-compressed file"),
    ((HEADER + ROW).encode("utf-16-le"), "UTF-16 text without a byte order mark (BOM)"),
    ((HEADER + ROW).encode("utf-16-be"), "UTF-16 text without a byte order mark (BOM)"),
    (b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x03\x00>\x00", "a binary file (it holds NUL bytes)"),
]


@pytest.mark.parametrize(("data", "kind"), KINDS)
def test_an_inventory_that_is_not_text_is_one_line_saying_what_it_is(workdir: Path, data: bytes, kind: str):
    path = workdir / "inventory" / "devices.csv"
    path.write_bytes(data)
    before = snapshot(workdir / "output")
    result = run(workdir, "compile")
    assert result.exit_code == 1
    problems = [line for line in result.stderr.splitlines() if line.startswith("inventory/")]
    assert problems == [f"inventory/devices.csv: inventory: this is {kind}, not a CSV file: export or save it as "
                        "CSV UTF-8"]
    assert snapshot(workdir / "output") == before


def test_an_xlsx_named_on_the_command_line_says_what_it_is(workdir: Path):
    (workdir / "devices.xlsx").write_bytes(KINDS[0][0])
    result = run(workdir, "validate", "--inventory", "devices.xlsx")
    assert result.exit_code == 1
    assert ("devices.xlsx: inventory: this is an Excel workbook (a zip file), not a CSV file: export or save it as "
            "CSV UTF-8") in result.stderr.splitlines()


def test_a_folder_holding_only_a_workbook_says_so(workdir: Path):
    (workdir / "inventory" / "devices.xlsx").write_bytes(KINDS[0][0])
    result = run(workdir, "validate")
    assert result.exit_code == 1
    assert ("inventory: inventory: folder has no .csv files (devices.xlsx is a spreadsheet: export it as CSV UTF-8)"
            in result.stderr.splitlines())


@pytest.mark.parametrize(("data", "kind"), [KINDS[0], KINDS[3], KINDS[5]])
def test_a_policy_that_is_not_text_is_one_line_saying_what_it_is(workdir: Path, data: bytes, kind: str):
    write_inventory(workdir, HEADER + ROW)
    (workdir / "profiles" / "policy.yaml").write_bytes(data)
    result = run(workdir, "compile")
    assert result.exit_code == 1
    assert (f"profiles/policy.yaml: policy: this is {kind}, not a YAML text file: save it as UTF-8 text"
            in result.stderr.splitlines())


@pytest.mark.parametrize("data", [
    (HEADER + ROW).encode(), codecs.BOM_UTF8 + (HEADER + ROW).encode(),
    codecs.BOM_UTF16_LE + (HEADER + ROW).encode("utf-16-le"), codecs.BOM_UTF16_BE + (HEADER + ROW).encode("utf-16-be"),
    "serial_number,platform,user_email,team\nPK1,linux,zoë@example.com,Ops\n".encode(), b"",
    b"serial_number,platform,user_email,team\nS1,linux\x00,a@example.com,Ops\n",  # a stray NUL: told at its line
])
def test_text_is_still_text(data: bytes):
    assert not_text(data) is None


def test_text_that_is_read_still_compiles(workdir: Path):
    write_inventory(workdir, HEADER + ROW, encoding="utf-16")  # with its BOM, as Excel writes it
    assert run(workdir, "compile").exit_code == 0
