"""Issue 11, characters: every string a Mac's profile carries reads back equal to the JSON, or the
input holding it is refused with ``file:line`` (exit 1). And team names are plainly readable."""

from __future__ import annotations

import csv
import io
import json
import plistlib
import re
import unicodedata
from collections import Counter

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mdmgen.emit import mobileconfig

from .conftest import run, write_inventory

PROBLEM_LINE = re.compile(r"^[^\s:][^:]*:\d+: [^:]+: .+$")
"""``file:line: field: message``, on one line."""
YAML_PRINTABLE = re.compile("[\x09\x0a\x20-\x7e\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
HOSTILE_CHARS = ["\x00", "\x01", "\x08", "\t", "\n", "\x0b", "\r", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9b",
                 "\x9f", "\ud800", "\udfff", "\ufdd0", "\ufffe", "\uffff", "\U0001fffe", "\U0010ffff", "\u2028",
                 "\u202e", "\u200b", "\ufeff", "\u00e9", "e\u0301", "\U0001f600", "&", "<", ">", "]]>", '"', "'",
                 "\\", ",", ";", "{", "%", " ", "a", "Z", "0"]
REFUSED = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufdd0\ufffe\uffff\U0001fffe\U0010ffff]")
WRITABLE_CHARS = [c for c in HOSTILE_CHARS if not REFUSED.search(c)]
REFUSED_CHARS = [c for c in HOSTILE_CHARS if REFUSED.search(c)]
WRITABLE_TEXT = st.lists(st.sampled_from(WRITABLE_CHARS), min_size=1, max_size=6).map("".join)
REFUSED_TEXT = st.tuples(WRITABLE_TEXT, st.sampled_from(REFUSED_CHARS), st.integers(0, 6)).map(
    lambda t: t[0][:t[2]] + t[1] + t[0][t[2]:])
"""Text holding at least one character a profile cannot carry, anywhere in it."""
SPOIL = st.sampled_from([None] * 6 + ["literal"] + [None] * 6 + ["key"] + [None] * 6 + ["note"])
"""Which value (if any) an example spoils: a policy value with REFUSED_TEXT, the note with HOSTILE_TEXT."""
SHARE: Counter[str] = Counter()
"""How many examples of the property compiled and compared profiles, and how many were refused."""
HOSTILE_TEXT = st.one_of(  # half of the strings only hold characters a profile can carry, so both ends are tried
    st.lists(st.sampled_from(WRITABLE_CHARS), min_size=1, max_size=6).map("".join),
    st.lists(st.sampled_from(HOSTILE_CHARS), min_size=1, max_size=6).map("".join))


def yaml_quoted(text: str) -> str:
    """``text`` as a YAML double-quoted scalar, escaping whatever YAML may not hold raw."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif YAML_PRINTABLE.fullmatch(char) and char not in "{}%\n\u2028\u2029":  # raw breaks would fold
            out.append(char)
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


def csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL).writerows(rows)
    return buffer.getvalue()


def profile_settings(data: bytes) -> dict:
    return mobileconfig.settings_of(data)


def assert_every_mac_profile_equals_its_json(out) -> int:
    """The proof: parse both files of every compiled Mac and compare the settings."""
    macs = 0
    for folder in sorted((out / "devices").iterdir()):
        settings_json = json.loads((folder / "managed-settings.json").read_bytes().decode("utf-8"))
        profile = folder / "claude-code.mobileconfig"
        if profile.exists():
            assert mobileconfig.check_profile(profile.read_bytes()) == []
            assert profile_settings(profile.read_bytes()) == settings_json, folder.name
            plistlib.loads(profile.read_bytes())  # parses with the standard XML parser too
            macs += 1
    return macs


POLICY = """org: {{name: Example, identifier_prefix: com.example.mdmgen}}
settings:
  env:
    CLAUDE_CODE_ENABLE_TELEMETRY: "1"
  companyAnnouncements: [{literal}, "{{{{ note }}}}"]
  {key}: "keyed"
"""


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(literal=WRITABLE_TEXT, key=WRITABLE_TEXT, note=WRITABLE_TEXT, spoil=SPOIL, bad=REFUSED_TEXT,
       hostile=HOSTILE_TEXT)
def test_every_profile_equals_its_json_or_the_input_is_a_file_line_error(workdir, literal, key, note, spoil, bad,
                                                                         hostile):
    """The policy's literal and key and the note are mostly writable, so most examples compile and
    compare every profile with its JSON. SPOIL puts a refused character into the literal or the key
    (the compile must refuse with file:line errors), or any hostile text into the note (a CSV cell:
    when refused, MAC1 is rejected and MAC2 is still compared, exit 3). 111 of 120 examples compile
    and compare, measured 2026-12-05 (this test is always derandomized, so CI draws the same);
    ``test_most_examples_compile`` keeps the share above 80%."""
    if spoil == "literal":
        literal = bad
    elif spoil == "key":
        key = bad
    elif spoil == "note":
        note = hostile
    (workdir / "profiles" / "policy.yaml").write_text(
        POLICY.format(literal=yaml_quoted(literal), key=yaml_quoted("k" + key)), encoding="utf-8",
        errors="surrogatepass")
    header = ["serial_number", "platform", "user_email", "team", "note"]
    inventory = csv_text([header, ["MAC1", "macos", "ann@example.com", "Ops", note],
                          ["MAC2", "macos", "bob@example.com", "Ops", "plain"]])
    (workdir / "inventory" / "devices.csv").write_bytes(inventory.encode("utf-8", "surrogatepass"))
    for old in (workdir / "output", workdir / ".output.mdmgen-prev"):
        if old.exists():
            import shutil

            shutil.rmtree(old)
    result = run(workdir, "compile", "--skip-invalid")
    assert "Traceback" not in result.output and "internal error" not in result.stderr
    if result.exit_code in (0, 3):
        event("compiled")
        SHARE["compiled"] += 1
        assert assert_every_mac_profile_equals_its_json(workdir / "output") >= 1
        settings_json = json.loads((workdir / "output/devices/MAC2/managed-settings.json").read_text())
        assert settings_json["companyAnnouncements"][0] == literal  # what the policy says, exactly
        assert settings_json["k" + key] == "keyed"
        if result.exit_code == 0:
            mac1 = json.loads((workdir / "output/devices/MAC1/managed-settings.json").read_text())
            assert mac1["companyAnnouncements"][1] == note.strip()  # cells are trimmed, nothing else changes
    else:
        event("refused")
        SHARE["refused"] += 1
        assert result.exit_code == 1, result.output
        problems = result.stderr.splitlines()[:-1]
        assert problems and all(PROBLEM_LINE.match(line) for line in problems), problems
        assert not (workdir / "output").exists()


@pytest.mark.parametrize(("char", "message"), [
    ("\x00", "contains a NUL byte (U+0000)"),
    ("\x01", "contains the control character U+0001"),
    ("\r", "contains a carriage return (U+000D), which a profile's XML reads back as a newline; use \\n"),
    ("\x1b", "contains an escape character (ESC, as in terminal escape sequences) (U+001B)"),
    ("\x7f", "contains the control character U+007F"),
    ("\x9b", "contains the control character U+009B"),
    ("\ufffe", "contains the noncharacter U+FFFE"),
    ("\U0010ffff", "contains the noncharacter U+10FFFF"),
    ("\ud800", "contains a lone surrogate U+D800"),
])
def test_each_refused_character_class_is_a_policy_line(workdir, char, message):
    (workdir / "profiles" / "policy.yaml").write_text(
        POLICY.format(literal=yaml_quoted(f"a{char}b"), key="x"), encoding="utf-8")
    write_inventory(workdir, "serial_number,platform,user_email,team,note\nMAC1,macos,a@example.com,Ops,n\n")
    result = run(workdir, "compile")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0].startswith(
        f"profiles/policy.yaml:5: settings.companyAnnouncements.0: {message}")


@pytest.mark.parametrize("char", ["\x01", "\r", "\x1b", "\x85", "\ufffe"])
def test_each_refused_character_class_is_an_inventory_line(workdir, char):
    (workdir / "profiles" / "policy.yaml").write_text(POLICY.format(literal='"x"', key="x"), encoding="utf-8")
    write_inventory(workdir, csv_text([["serial_number", "platform", "user_email", "team", "note"],
                                       ["MAC1", "macos", "a@example.com", "Ops", f"a{char}b"],
                                       ["MAC2", "macos", "b@example.com", "Ops", "fine"]]))
    result = run(workdir, "compile")
    assert result.exit_code == 1
    first = result.stderr.splitlines()[0]
    assert re.match(rf"^inventory/devices\.csv:2: note: contains .*U\+{ord(char):04X}\b", first), result.stderr
    assert not (workdir / "output").exists()


def test_tab_newline_and_xml_specials_round_trip_losslessly(workdir):
    text = "tab\there\nnew line & <b> ]]> \u2028 \U0001f600 \u00e9"
    (workdir / "profiles" / "policy.yaml").write_text(POLICY.format(literal=yaml_quoted(text), key="x"))
    write_inventory(workdir, csv_text([["serial_number", "platform", "user_email", "team", "note"],
                                       ["MAC1", "macos", "a@example.com", "Ops", "two\nlines\tand tab"]]))
    assert run(workdir, "compile").exit_code == 0
    assert assert_every_mac_profile_equals_its_json(workdir / "output") == 1
    announcements = json.loads((workdir / "output/devices/MAC1/managed-settings.json").read_text())[
        "companyAnnouncements"]
    assert announcements == [text, "two\nlines\tand tab"]


def test_a_template_that_makes_a_refused_character_is_a_line_naming_the_device(workdir):
    (workdir / "profiles" / "policy.yaml").write_text(POLICY.format(
        literal="'{{ \"%c\"|format(13) }}'", key="x"))
    write_inventory(workdir, "serial_number,platform,user_email,team,note\nMAC1,macos,a@example.com,Ops,n\n")
    result = run(workdir, "compile")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        "profiles/policy.yaml:5: settings.companyAnnouncements.0: the rendered value contains a carriage return "
        "(U+000D), which a profile's XML reads back as a newline; use \\n (device MAC1)")


def test_a_var_with_a_refused_character_is_an_input_error_not_a_usage_error(workdir):
    (workdir / "profiles" / "policy.yaml").write_text(
        POLICY.format(literal='"{{ x }}"', key="x") + "variables: {x: plain}\n")
    write_inventory(workdir, "serial_number,platform,user_email,team,note\nMAC1,macos,a@example.com,Ops,n\n")
    result = run(workdir, "compile", "--var", "x=a\x1b[2Jb")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0].startswith("--var: variables.x: contains an escape character")


def test_a_raw_control_character_in_the_policy_file_is_a_line(workdir):
    (workdir / "profiles" / "policy.yaml").write_text(POLICY.format(literal='"a\x01b"', key="x"))
    write_inventory(workdir, "serial_number,platform,user_email,team,note\nMAC1,macos,a@example.com,Ops,n\n")
    result = run(workdir, "validate")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "profiles/policy.yaml:5: yaml: contains the control character U+0001, which a profile cannot carry unchanged",
        "1 problem(s); nothing was written."]


# --- 4. Team names that display as another ------------------------------------------------------

@pytest.mark.parametrize("char", ["\u202e", "\u200b", "\ufeff", "\u2066", "\u200f", "\u00ad"])
def test_a_team_name_with_an_invisible_character_is_refused_in_the_inventory(workdir, char):
    assert unicodedata.category(char) == "Cf"
    write_inventory(workdir, f"serial_number,platform,user_email,team\nMAC1,macos,a@example.com,O{char}ps\n")
    result = run(workdir, "compile")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0].startswith(
        f"inventory/devices.csv:2: team: contains the invisible character U+{ord(char):04X} (")


@pytest.mark.parametrize("char", ["\u202e", "\u200b", "\ufeff"])
def test_a_team_name_with_an_invisible_character_is_refused_in_the_policy(workdir, char):
    policy = (workdir / "profiles" / "policy.yaml").read_text()
    (workdir / "profiles" / "policy.yaml").write_text(
        policy.replace("teams: {}", f"teams:\n  {yaml_quoted('Sec' + char)}:\n    settings: {{x: 1}}\n"),
        encoding="utf-8")
    write_inventory(workdir, "serial_number,platform,user_email,team\nMAC1,macos,a@example.com,Ops\n")
    result = run(workdir, "validate")
    assert result.exit_code == 1
    line = policy.splitlines().index("teams: {}") + 2
    assert re.match(rf"^profiles/policy\.yaml:{line}: teams\.Sec.*: contains the invisible character "
                    rf"U\+{ord(char):04X} ", result.stderr.splitlines()[0]), result.stderr


def test_team_names_match_whatever_their_unicode_normalisation(workdir):
    policy = (workdir / "profiles" / "policy.yaml").read_text()
    (workdir / "profiles" / "policy.yaml").write_text(
        policy.replace("teams: {}", 'teams:\n  "Caf\u00e9":\n    settings: {companyAnnouncements: [hi]}\n'),
        encoding="utf-8")
    write_inventory(workdir, "serial_number,platform,user_email,team\nMAC1,macos,a@example.com,CAFE\u0301\n")
    assert run(workdir, "compile").exit_code == 0
    settings_json = json.loads((workdir / "output/devices/MAC1/managed-settings.json").read_text())
    assert settings_json["companyAnnouncements"] == ["hi"]  # the override applied
    assert "team=Caf%C3%A9" in settings_json["env"]["OTEL_RESOURCE_ATTRIBUTES"]  # the policy's spelling, NFC


def test_a_json_style_surrogate_pair_in_the_policy_says_how_to_write_the_character(workdir):
    (workdir / "profiles" / "policy.yaml").write_text(POLICY.format(literal='"smile \\ud83d\\ude00"', key="x"))
    write_inventory(workdir, "serial_number,platform,user_email,team,note\nMAC1,macos,a@example.com,Ops,n\n")
    result = run(workdir, "validate")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        "profiles/policy.yaml:5: settings.companyAnnouncements.0: contains a surrogate pair U+D83D U+DE00 written as "
        "two characters (two \\u escapes, as in JSON); write the character itself or one \\U escape: \\U0001F600")
    (workdir / "profiles" / "policy.yaml").write_text(POLICY.format(literal='"smile \\U0001F600"', key="x"))
    assert run(workdir, "compile").exit_code == 0
    assert json.loads((workdir / "output/devices/MAC1/managed-settings.json").read_text())[
        "companyAnnouncements"][0] == "smile \U0001f600"


@pytest.mark.parametrize("name", ["Sec\\nOps", "Sec\\tOps", "Sec\\u2028Ops"])
def test_a_policy_team_name_is_one_line_too(workdir, name):
    policy = (workdir / "profiles" / "policy.yaml").read_text()
    (workdir / "profiles" / "policy.yaml").write_text(
        policy.replace("teams: {}", f'teams:\n  "{name}":\n    settings: {{x: 1}}\n'))
    write_inventory(workdir, "serial_number,platform,user_email,team\nMAC1,macos,a@example.com,Ops\n")
    result = run(workdir, "validate")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0].endswith(": contains a line break or a tab; a team name is one line")


def test_most_examples_compile():
    """The first property proves little if most examples are refused before a profile is written: a
    strategy that drifts towards refused characters would pass while comparing no profile."""
    total = sum(SHARE.values())
    if not total:
        pytest.skip("the property test was not run (deselected)")
    assert SHARE["compiled"] / total >= 0.8, dict(SHARE)
