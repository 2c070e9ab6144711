"""Hostile policies and inventories, one finding of issue 11 each: every one ends in a clean
``file:line: field: message`` error with a documented exit code (never a traceback, exit 70,
a hang or a huge file), or in output that round-trips exactly."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from .conftest import HEADER, run, write_inventory

POLICY_HEAD = "org: {name: Example, identifier_prefix: com.example.mdmgen}\n"
ROW = "MAC1,macos,ann@example.com,Ops\n"
TEAM_LINE = next(n for n, line in enumerate(
    (pathlib.Path(__file__).parent.parent / "profiles" / "policy.yaml").read_text().splitlines(), start=1)
    if line.startswith('  team: "{{ team }}"'))
"""The shipped policy's line of the team attribute, which these tests replace with hostile templates."""


def write_policy(workdir, text: str) -> None:
    (workdir / "profiles" / "policy.yaml").write_text(text, encoding="utf-8")


def one_line_errors(result, *, code: int = 1) -> list[str]:
    """The problem lines of a failed run, after checking it failed cleanly and wrote nothing."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "internal error" not in result.stderr
    return [line for line in result.stderr.splitlines() if not line.endswith("nothing was written.")]


# --- 1. YAML alias bombs and deep nesting -------------------------------------------------------

def alias_bomb(levels: int = 10, width: int = 9) -> str:
    lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_its_line(workdir):
    bomb = alias_bomb()
    assert len(bomb) < 600  # a few hundred bytes that expand to 9**10 values
    write_policy(workdir, POLICY_HEAD + "settings:\n  x: &root\n" +
                 "".join("    " + line + "\n" for line in bomb.splitlines()))
    write_inventory(workdir, HEADER + ROW)
    lines = one_line_errors(run(workdir, "compile"))
    assert len(lines) == 1
    assert re.match(r"^profiles/policy\.yaml:\d+: yaml: the policy holds more than 100,000 values", lines[0])
    assert not (workdir / "output").exists()


def test_a_value_nested_500_deep_through_aliases_is_a_line_not_a_recursion_error(workdir):
    chain = "".join(f"  k{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 500))
    write_policy(workdir, POLICY_HEAD + "settings:\n  k0: &a0 [x]\n" + chain)
    write_inventory(workdir, HEADER + ROW)
    lines = one_line_errors(run(workdir, "compile"))
    assert lines == ["profiles/policy.yaml:64: yaml: values nest deeper than 64 levels once aliases are expanded"]


@pytest.mark.parametrize("nested", ["[" * 500 + "]" * 500, "{a: " * 500 + "1" + "}" * 500])
def test_a_value_written_500_deep_is_a_line(workdir, nested):
    write_policy(workdir, POLICY_HEAD + "settings:\n  x: " + nested + "\n")
    write_inventory(workdir, HEADER + ROW)
    lines = one_line_errors(run(workdir, "validate"))
    assert lines == ["profiles/policy.yaml:3: yaml: values nest deeper than 64 levels"]


def test_a_recursive_anchor_is_refused(workdir):
    write_policy(workdir, POLICY_HEAD + "settings:\n  x: &a [1, *a]\n")
    write_inventory(workdir, HEADER + ROW)
    assert one_line_errors(run(workdir, "validate")) == [
        "profiles/policy.yaml:3: yaml: an alias refers to a value that contains it (a recursive anchor)"]


def test_aliases_that_stay_small_still_work_and_point_at_their_lines(workdir):
    write_policy(workdir, POLICY_HEAD + "settings:\n  env: &e {CLAUDE_CODE_ENABLE_TELEMETRY: '1'}\n"
                 "platforms:\n  linux:\n    settings:\n      env: *e\n      permissions: *e\n")
    write_inventory(workdir, HEADER + ROW + "LNX1,linux,bob@example.com,Ops\n")
    result = run(workdir, "validate")
    assert result.exit_code == 0, result.output


# --- 2. Templates that burn CPU or memory ------------------------------------------------------

EXPENSIVE_TEMPLATES = {
    "{{ serial|center(10**9) }}": "the result of filter 'center' would be longer than 65,536 characters",
    "{{ 'a' * 10**9 }}": "a '*' repetition would be longer than 65,536 characters",
    "{{ [serial] * 10**9 }}": "a '*' repetition would be longer than 65,536 characters",
    "{{ range(10**9)|list|length }}": "range of 1,000,000,000 numbers; at most 100,000",
    "{% for i in range(10**5) %}{% for j in range(10**5) %}{% endfor %}{% endfor %}":
        "template takes more than 100,000 steps",
    "{% for c in serial * 16000 %}{% for d in serial * 16000 %}{% endfor %}{% endfor %}":
        "template takes more than 100,000 steps",
    "{{ 10 ** 100000 }}": "template computes an integer larger than 2**4096",
    "{{ 'xx'|replace('', serial * 10000) }}": "the result of filter 'replace' would be longer",
    "{{ '%*d' % (10**9, 1) }}": "a formatted value would be longer",
    "{{ '%999999999d' % 1 }}": "a formatted value would be longer",
    "{{ '{:>999999999}'.format(1) }}": "a formatted value would be longer",
    "{{ '{:>{w}}'.format(1, w=10**9) }}": "a formatted value would be longer",
    "{{ '%s'|format(serial) ~ serial.ljust(10**9) }}": "str.ljust() would be longer",
    "{{ serial|indent(10**9) }}": "the result of filter 'indent' would be longer",
    "{{ (serial * 1000)|wordwrap(1, wrapstring=serial * 100) }}": "the result of filter 'wordwrap' would be longer",
    "{{ range(60000)|join(serial) }}": "the result of filter 'join' would be longer",
    "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}":
        "a '~' concatenation would be longer",
    "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}":
        "a '+' operation would be longer",
    "{% for i in range(1000) %}{{ serial * 100 }}{% endfor %}": "the rendered value would be longer",
    "{% macro m() %}{% for i in range(1000) %}{{ serial * 100 }}{% endfor %}{% endmacro %}{{ m()|length }}":
        "the rendered value would be longer",
    "{{ range(3)|batch(10**9, 'x')|list|length }}": "the result of filter 'batch' would be longer",
    "{{ range(3)|slice(10**7, 'x')|list|length }}": "the result of filter 'slice' would be longer",
    "{{ lipsum(10**6)|length }}": "lipsum() would be longer",
    "{{ range(10**5)|map('string')|map('string')|list|length }}": "template takes more than 100,000 steps",
    "{{ ['a']|map('center', 10**9)|list }}": "the result of filter 'center' would be longer",
}


@pytest.mark.parametrize("template", list(EXPENSIVE_TEMPLATES))
def test_an_expensive_template_is_a_line_naming_field_and_device_and_writes_nothing(workdir, template):
    policy = (workdir / "profiles" / "policy.yaml").read_text()
    (workdir / "profiles" / "policy.yaml").write_text(
        policy.replace('  team: "{{ team }}"', "  team: " + json.dumps(template)))
    line = next(i for i, text in enumerate(policy.splitlines(), 1) if text == '  team: "{{ team }}"')
    write_inventory(workdir, HEADER + ROW)
    lines = one_line_errors(run(workdir, "compile"))
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"profiles/policy.yaml:{line}: resource_attributes.team: ")
    assert EXPENSIVE_TEMPLATES[template] in lines[0]
    assert lines[0].endswith("(device MAC1)")
    assert not (workdir / "output").exists()


def test_ordinary_templates_still_render_within_the_limits(workdir):
    policy = (workdir / "profiles" / "policy.yaml").read_text()
    template = ("{% for i in range(3) %}{{ loop.index }}{% endfor %}-{{ '%s.%d'|format(serial, 7) }}-"
                "{{ '{a}'.format(a=team) }}-{{ [team, serial]|join('/') }}-{{ serial|center(9) }}-{{ 2 ** 64 }}")
    (workdir / "profiles" / "policy.yaml").write_text(
        policy.replace('  team: "{{ team }}"', "  team: " + json.dumps(template)))
    write_inventory(workdir, HEADER + ROW)
    assert run(workdir, "compile").exit_code == 0
    env = json.loads((workdir / "output/devices/MAC1/managed-settings.json").read_text())["env"]
    assert "team=123-MAC1.7-Ops-Ops%2FMAC1-%20%20%20MAC1%20%20-18446744073709551616" in env["OTEL_RESOURCE_ATTRIBUTES"]


# --- 5. One line per problem, whatever the inputs hold -----------------------------------------

def test_a_header_with_a_newline_and_an_escape_sequence_is_printed_escaped_on_one_line(workdir):
    write_inventory(workdir, 'serial_number,platform,user_email,team,note,"\x1bnote\n\x07"\n'
                             "MAC1,macos,ann@example.com,Ops,a,b\n")
    result = run(workdir, "validate")
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert one_line_errors(result) == [
        "inventory/devices.csv:1: \\x1bnote\\n\\x07: column name clashes with another column as template name "
        "'note'; rename it"]


def test_a_nul_byte_in_the_policy_is_one_line_with_its_line_number(workdir):
    (workdir / "profiles" / "policy.yaml").write_bytes(POLICY_HEAD.encode() + b"settings: {x: \"a\x00b\"}\n")
    write_inventory(workdir, HEADER + ROW)
    assert one_line_errors(run(workdir, "validate")) == [
        "profiles/policy.yaml:2: yaml: contains a NUL byte (U+0000), which a profile cannot carry unchanged"]


def test_an_error_from_elsewhere_holding_newlines_and_escapes_is_printed_on_one_line(capsys):
    from mdmgen.console import Report
    from mdmgen.exitcodes import ExitCode

    with pytest.raises(SystemExit) as exited:
        Report(as_json=True, quiet=True, verbose=0).fail(
            ExitCode.REMOTE_FAILED, "error: S3 said: <Error>\n<Message>denied\x1b]0;pwned\x07</Message>\r\n")
    assert exited.value.code == ExitCode.REMOTE_FAILED
    err = capsys.readouterr()
    assert err.err == "error: S3 said: <Error>\\n<Message>denied\\x1b]0;pwned\\x07</Message>\\r\\n\n"
    assert json.loads(err.out)["error"] == "error: S3 said: <Error>\\n<Message>denied\\x1b]0;pwned\\x07</Message>\\r\\n"


def test_printable_escapes_controls_bidi_and_separators_and_keeps_text():
    from mdmgen.messages import printable

    assert printable("a\nb\tc\r\x1b[0m\x9b\u202e\u200b\ufeff\u2028\ud800\ufffe") == (
        "a\\nb\\tc\\r\\x1b[0m\\x9b\\u202e\\u200b\\ufeff\\u2028\\ud800\\ufffe")
    assert printable("Équipe R&D, Berlin 😀 'x' \\ path") == "Équipe R&D, Berlin 😀 'x' \\ path"


# --- 6. Absurdly wide and long inventories --------------------------------------------------------

def test_a_header_of_100000_columns_is_refused_at_its_line(workdir):
    header = "serial_number,platform,user_email,team," + ",".join(f"c{i}" for i in range(100_000))
    write_inventory(workdir, header + "\n" + ROW)
    assert one_line_errors(run(workdir, "validate")) == [
        "inventory/devices.csv:1: header: 100,004 columns; an inventory has at most 1,000 (is it the right file?)"]


def test_a_thousand_columns_are_accepted_and_usable(workdir):
    header = "serial_number,platform,user_email,team," + ",".join(f"c{i}" for i in range(996))
    write_inventory(workdir, header + "\n" + ROW.strip() + "," + ",".join(str(i) for i in range(996)) + "\n")
    policy = (workdir / "profiles" / "policy.yaml").read_text()
    (workdir / "profiles" / "policy.yaml").write_text(policy.replace('  team: "{{ team }}"', '  team: "{{ c995 }}"'))
    assert run(workdir, "compile").exit_code == 0
    env = json.loads((workdir / "output/devices/MAC1/managed-settings.json").read_text())["env"]
    assert "team=995" in env["OTEL_RESOURCE_ATTRIBUTES"]


def test_a_field_longer_than_the_limit_rejects_its_row_only(workdir):
    write_inventory(workdir, "serial_number,platform,user_email,team,note\n"
                             f"MAC1,macos,ann@example.com,Ops,{'x' * 70_000}\nMAC2,macos,bob@example.com,Ops,fine\n")
    result = run(workdir, "compile", "--skip-invalid")
    assert result.exit_code == 3
    assert result.stderr.splitlines()[0] == (
        "inventory/devices.csv:2: row: field 5 is longer than 65,536 characters")
    assert sorted(p.name for p in (workdir / "output" / "devices").iterdir()) == ["MAC2"]


def test_a_field_beyond_the_csv_reader_limit_is_a_line(workdir):
    write_inventory(workdir, "serial_number,platform,user_email,team,note\n"
                             f"MAC1,macos,ann@example.com,Ops,\"{'x' * 200_000}\"\n")
    lines = one_line_errors(run(workdir, "validate"))
    assert len(lines) == 1 and lines[0].startswith("inventory/devices.csv:2: csv: cannot parse: field larger than")


# --- templates that try to leave the sandbox ----------------------------------------------------

@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}", "{{ cycler.__init__.__globals__.os }}",
    "{{ lipsum.__globals__['os'].system('id') }}", "{{ self._TemplateReference__context }}",
    "{{ range.__self__.globals }}", "{{ range.__func__ }}", "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}", "{% include '/etc/passwd' %}", "{% import 'os' as os %}",
    "{{ serial.format.__globals__ }}", "{{ 'x'.format_map.__self__ }}",
])
def test_a_template_that_tries_to_leave_the_sandbox_is_a_line_and_writes_nothing(workdir, template):
    policy = (workdir / "profiles" / "policy.yaml").read_text()
    (workdir / "profiles" / "policy.yaml").write_text(
        policy.replace('  team: "{{ team }}"', "  team: " + json.dumps(template)))
    write_inventory(workdir, HEADER + ROW)
    lines = one_line_errors(run(workdir, "compile"))
    where = f"profiles/policy.yaml:{TEAM_LINE}: resource_attributes.team: "
    assert len(lines) == 1 and lines[0].startswith(where), lines
    assert not (workdir / "output").exists()


@pytest.mark.parametrize("template", ["{{ " + "(" * 300 + "1" + ")" * 300 + " }}", "{{ 1" + " + 1" * 3000 + " }}",
                                      "{{ serial" + "|e" * 3000 + " }}", "{% if 1 %}" * 300 + "{% endif %}" * 300])
def test_a_template_nested_too_deeply_is_a_syntax_error_not_a_recursion_error(workdir, template):
    policy = (workdir / "profiles" / "policy.yaml").read_text()
    (workdir / "profiles" / "policy.yaml").write_text(
        policy.replace('  team: "{{ team }}"', "  team: " + json.dumps(template)))
    write_inventory(workdir, HEADER + ROW)
    assert one_line_errors(run(workdir, "validate")) == [
        f"profiles/policy.yaml:{TEAM_LINE}: resource_attributes.team: template syntax error: template nests more "
        "than 100 levels (brackets, operators, filters or blocks); simplify it"]


def test_a_policy_larger_than_the_limit_is_refused_before_it_is_parsed(workdir):
    (workdir / "profiles" / "policy.yaml").write_bytes(POLICY_HEAD.encode() + b"# " + b"x" * (4 << 20) + b"\n")
    write_inventory(workdir, HEADER + ROW)
    assert one_line_errors(run(workdir, "validate")) == [
        "profiles/policy.yaml: policy: is larger than 4 MB; is it the right file?"]


def test_an_inventory_larger_than_the_limit_is_refused_without_reading_it(workdir):
    with open(workdir / "inventory" / "devices.csv", "wb") as sparse:  # 1 GB + 1 byte, no disk used
        sparse.write(HEADER.encode())
        sparse.truncate((1 << 30) + 1)
    lines = one_line_errors(run(workdir, "validate"))
    assert lines == ["inventory/devices.csv: inventory: is larger than 1024 MB; is it the right file?"]


def test_a_header_value_with_a_line_break_is_refused_without_repeating_it(workdir):
    policy = (workdir / "profiles" / "policy.yaml").read_text()
    (workdir / "profiles" / "policy.yaml").write_text(policy.replace(
        '    OTEL_EXPORTER_OTLP_ENDPOINT: "{{ otlp_endpoint }}"\n',
        '    OTEL_EXPORTER_OTLP_ENDPOINT: "{{ otlp_endpoint }}"\n'
        '    OTEL_EXPORTER_OTLP_HEADERS: "x-site={{ site }}"\n'))
    write_inventory(workdir, 'serial_number,platform,user_email,team,site\n'
                             'MAC1,macos,ann@example.com,Ops,"berlin\nX-Evil: tok3n"\n'
                             'MAC2,macos,bob@example.com,Ops,paris\n')
    result = run(workdir, "compile", "--skip-invalid")
    assert result.exit_code == 3
    assert result.stderr.splitlines()[0].startswith(
        "inventory/devices.csv:2: env.OTEL_EXPORTER_OTLP_HEADERS: must be one line: an OTEL variable holds")
    assert "tok3n" not in result.output and "X-Evil" not in result.output
    assert sorted(p.name for p in (workdir / "output" / "devices").iterdir()) == ["MAC2"]
