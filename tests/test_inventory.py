"""Inventory loading: encodings, header aliases, row checks, and file:line errors."""

import codecs

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mdmgen import inventory
from mdmgen.models import Platform, StatusColumn

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


# A Workday custom report joined with the asset register, as HR hands it over: Workday's own
# header names, a "Termination Date" beside the status, and statuses in Workday's spelling.
WORKDAY = (
    "Employee ID,Worker,Email - Primary Work,Supervisory Organization,Cost Center,Worker Type,"
    "Employment Status,Hire Date,Termination Date,Asset Serial,Operating System\n"
    "21001,Ann Lee,ann.lee@example.com,Platform Eng,CC-100,Regular,Active,2021-03-01,,C02A1,macOS 14.5\n"
    "21002,Bo Chen,bo.chen@example.com,Platform Eng,CC-100,Regular,Terminated,2019-06-17,2026-11-30,C02A2,macOS 14\n"
    "21003,Cy Diaz,cy.diaz@example.com,Finance,CC-200,Contractor,Leave of Absence,2022-01-10,,5CG1,Windows 11\n"
    "21004,Di Ewe,,Finance,CC-200,Regular, Retired ,2001-01-02,2026-01-31,5CG2,Windows 10\n"
    "21005,Ed Fox,ed.fox@example.com,Data,CC-300,Regular,Leaver,2020-02-02,2026-12-01,LNX7,Ubuntu 22.04 LTS\n"
    "21006,Fi Gao,fi.gao@example.com,Data,CC-300,Intern,Withdrawn,2026-09-01,2026-09-15,LNX8,RHEL 9\n"
)
WORKDAY_COLUMNS = {"serial_number": "Asset Serial", "platform": "Operating System",
                   "user_email": "Email - Primary Work", "team": "Supervisory Organization"}


def test_a_workday_export_marks_its_terminated_rows_excluded(tmp_path):
    inv, name = load_text(tmp_path, WORKDAY, columns=WORKDAY_COLUMNS)
    assert inv.problems == []  # the retired row's missing email is not checked: the row is excluded
    assert [d.serial for d in inv.devices] == ["C02A1", "5CG1"]
    assert inv.excluded == 4
    assert inv.status_columns == {name: StatusColumn(column="Employment Status")}
    assert "employment_status" not in inv.extra_columns and "termination_date" in inv.extra_columns


@pytest.mark.parametrize("header", ["Status", "status", "Employment Status", "Worker Status", "Employee Status",
                                    "EMPLOYMENT_STATUS", "worker-status"])
@pytest.mark.parametrize("value", ["Terminated", "inactive", " Offboarded ", "RETIRED", "Leaver", "withdrawn"])
def test_status_headers_of_common_hr_systems_and_their_leaver_values(tmp_path, header, value):
    inv, name = load_text(tmp_path, f"serial_number,platform,user_email,team,{header}\n"
                                    f"S1,linux,a@example.com,Ops,{value}\nS2,linux,b@example.com,Ops,Active\n")
    assert [d.serial for d in inv.devices] == ["S2"] and inv.excluded == 1
    assert inv.status_columns[name].column == header


def test_the_policy_mapping_of_status_wins_over_the_built_in_headers(tmp_path):
    text = ("serial_number,platform,user_email,team,Employment Status,Worker Status\n"
            "S1,linux,a@example.com,Ops,Active,Terminated\nS2,linux,b@example.com,Ops,Terminated,Active\n")
    inv, name = load_text(tmp_path, text, columns={"status": "Worker Status"})
    assert [d.serial for d in inv.devices] == ["S2"]
    assert [d.extra for d in inv.devices] == [{"employment_status": "Terminated"}]  # now an ordinary column
    assert inv.status_columns[name].column == "Worker Status"
    inv, name = load_text(tmp_path, text)  # two status columns and no choice: refused, never guessed
    assert messages(inv) == [f"{name}:1: Worker Status: both 'Employment Status' and 'Worker Status' map to "
                             "status; choose one with 'columns: {status: ...}' in the policy"]


def test_a_file_without_a_status_column_says_so_and_names_the_look_alikes(tmp_path):
    (tmp_path / "a.csv").write_text(HEADER + "S1,linux,a@example.com,Ops\n")
    (tmp_path / "b.csv").write_text("Employee ID,serial_number,platform,user_email,team,Active,Termination Date,State\n"
                                    "7,S2,linux,b@example.com,Ops,No,2026-01-01,CA\n")
    (tmp_path / "c.csv").write_text("serial_number,platform,user_email,team,Status\nS3,linux,c@example.com,Ops,\n")
    inv = inventory.load([tmp_path])
    assert inv.problems == [] and len(inv.devices) == 3  # reported, not refused: a file may have no status
    assert inv.status_columns == {
        str(tmp_path / "a.csv"): StatusColumn(column=None),
        str(tmp_path / "b.csv"): StatusColumn(column=None, looks_like=["Active", "Termination Date"]),
        str(tmp_path / "c.csv"): StatusColumn(column="Status"),
    }


@pytest.mark.parametrize("value, platform", [
    ("Ubuntu", Platform.LINUX), ("Debian", Platform.LINUX), ("RHEL", Platform.LINUX), ("Fedora 40", Platform.LINUX),
    ("Ubuntu 22.04 LTS", Platform.LINUX), ("Red Hat Enterprise Linux 9.4", Platform.LINUX),
    ("Windows 11", Platform.WINDOWS), ("Windows 10 Enterprise", Platform.WINDOWS),
    ("windows  11 pro", Platform.WINDOWS),
    ("macOS 14", Platform.MACOS), ("macOS 14.5", Platform.MACOS), ("Mac OS X", Platform.MACOS),
    ("Mac OS X 10.15.7", Platform.MACOS), ("Darwin", Platform.MACOS), ("OS X", Platform.MACOS),
    ("WSL", Platform.WSL), ("WSL 2", Platform.WSL), ("Windows Subsystem for Linux", Platform.WSL),
])
def test_platforms_as_hr_and_mdm_exports_write_them(value, platform):
    assert inventory.parse_platform(value) is platform


@pytest.mark.parametrize("value", ["11", "macOS Sonoma", "Linux Windows", "14 macOS", "beos", "ChromeOS"])
def test_a_version_alone_or_an_unknown_name_is_no_platform(value):
    assert inventory.parse_platform(value) is None


def test_a_misspelt_platform_gets_a_did_you_mean(tmp_path):
    inv, name = load_text(tmp_path, HEADER + "S1,Windwos,a@example.com,Ops\nS2,Ubunto,b@example.com,Ops\n"
                                             "S3,beos,c@example.com,Ops\nS4,,d@example.com,Ops\n")
    assert messages(inv) == [
        f"{name}:2: platform: 'Windwos' is not a platform; did you mean windows? (use macos, linux, windows or wsl)",
        f"{name}:3: platform: 'Ubunto' is not a platform; did you mean 'ubuntu' (linux)? "
        "(use macos, linux, windows or wsl)",
        f"{name}:4: platform: 'beos' is not a platform (use macos, linux, windows or wsl)",
        f"{name}:5: platform: missing value (use macos, linux, windows or wsl)",
    ]


@given(alias=st.sampled_from(sorted(inventory.PLATFORM_ALIASES)), data=st.data())
def test_every_alias_in_any_case_spacing_and_with_a_version_is_its_platform(alias, data):
    """What an export adds around a name (case, spaces, a version, an edition) never changes the
    platform it names."""
    words = [data.draw(st.sampled_from([w, w.upper(), w.title()])) for w in alias.split()]
    version = data.draw(st.lists(st.integers(0, 99).map(str), min_size=0, max_size=3).map(".".join))
    suffix = [version] if version else []
    suffix += data.draw(st.lists(st.sampled_from(["LTS", "Pro", "Enterprise"]), max_size=2))
    spaces = data.draw(st.sampled_from([" ", "  ", "\t"]))
    value = data.draw(st.sampled_from(["", " "])) + spaces.join(words + suffix)
    assert inventory.parse_platform(value) is inventory.PLATFORM_ALIASES[alias]


@given(st.text(max_size=40))
def test_any_value_is_a_platform_or_one_problem_whose_suggestion_is_a_platform(value):
    found = []
    platform = inventory._check_platform(value.strip(), lambda field, message: found.append(message))
    assert (platform is None) == (len(found) == 1)
    if found and "did you mean" in found[0]:
        assert found[0].split("did you mean ", 1)[1].split("?")[0].split("(")[-1].rstrip(")") in set(Platform)
