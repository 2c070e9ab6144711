"""The Windows platform scripts of the Intune publisher, read as PowerShell reads them.

pwsh cannot be installed on this machine, so the scripts are parsed with a real PowerShell grammar
(tree-sitter-powershell): the table a test extracts from the syntax tree is the one PowerShell would
build, and it must equal each device's compiled ``managed-settings.json`` byte for byte.
"""

from __future__ import annotations

import base64
import json
import re

import pytest
import tree_sitter_powershell
from tree_sitter import Language, Node, Parser

from mdmgen.publish.intune.scripts import (
    DEFAULT_MAX_BYTES,
    INTUNE_SCRIPT_LIMIT,
    PlatformScript,
    build_team_scripts,
    read_table,
)

from .conftest import HEADER, SHIPPED_POLICY, run

POWERSHELL = Parser(Language(tree_sitter_powershell.language()))

HOSTILE_TEAM = "R&D \"Berlin\" $env:USERNAME `whoami` '; Remove-Item C:\\ -Recurse; ' \u2018x\u2019 Zürich"
HOSTILE_TEAMS = [
    HOSTILE_TEAM,
    "line one\nline two\r\n# comment",
    "$(Invoke-Expression 'calc')",
    "@' here-string '@",
    "\u202eevil\u202c \U0001f600 \u00a0 team",
    "}; exit 1; {",
    "plain",
]


# ---------------------------------------------------------------- real compiled files


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """team -> serial -> bytes of output/devices/<serial>/managed-settings.json, compiled by mdmgen."""
    work = tmp_path_factory.mktemp("intune-scripts")
    (work / "profiles").mkdir()
    (work / "profiles" / "policy.yaml").write_bytes(SHIPPED_POLICY.read_bytes())
    (work / "inventory").mkdir()
    quoted_team = '"' + HOSTILE_TEAM.replace('"', '""') + '"'
    rows = [f"WIN-{i:04d},windows,user{i}@example.com,{quoted_team if i % 2 else 'Finance'}" for i in range(12)]
    rows.append("c02mac1,macos,mac@example.com,Finance")
    (work / "inventory" / "devices.csv").write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    result = run(work, "compile")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((work / "output" / "manifest.json").read_text(encoding="utf-8"))
    teams: dict[str, dict[str, bytes]] = {}
    for serial, device in manifest["devices"].items():
        if device["platform"] == "windows":
            path = work / "output" / "devices" / serial / "managed-settings.json"
            teams.setdefault(device["team"], {})[serial] = path.read_bytes()
    assert sorted(teams) == sorted(["Finance", HOSTILE_TEAM]) and sum(map(len, teams.values())) == 12
    return teams


def synthetic_fleet(count: int, start: int = 0) -> dict[str, bytes]:
    """Files of the size mdmgen compiles for a Windows PC (about 340 bytes), one distinct per device."""
    return {
        f"PC-{i:06d}": json.dumps({"env": {
            "CLAUDE_CODE_ENABLE_TELEMETRY": "1",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel.company.com:4317",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_LOGS_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_RESOURCE_ATTRIBUTES": f"user_email=user{i}%40example.com,team=Big%20Team",
        }}, indent=2).encode() + b"\n"
        for i in range(start, start + count)
    }


# ---------------------------------------------------------------- an independent reading of the script


def syntax_tree(script: PlatformScript) -> Node:
    tree = POWERSHELL.parse(script.content)
    assert not tree.root_node.has_error, "the generated script is not valid PowerShell"
    return tree.root_node


def walk(node: Node):
    yield node
    for child in node.children:
        yield from walk(child)


def single_quoted(node: Node) -> str:
    """The value of a PowerShell single-quoted literal: quotes off, '' -> '."""
    text = node.text.decode("utf-8")
    assert text[0] == text[-1] == "'", text
    return text[1:-1].replace("''", "'")


def table_from_syntax(script: PlatformScript) -> dict[str, bytes]:
    """The hashtable literal assigned to $Table, decoded the way [Convert]::FromBase64String would."""
    tables = []
    for node in walk(syntax_tree(script)):
        if node.type == "assignment_expression" and node.children[0].text == b"$Table":
            tables.append(node)
    assert len(tables) == 1, "exactly one assignment to $Table"
    literals = [n for n in walk(tables[0]) if n.type == "hash_literal_expression"]
    assert len(literals) == 1
    table: dict[str, bytes] = {}
    for entry in (n for n in walk(literals[0]) if n.type == "hash_entry"):
        key, value = (n for n in walk(entry) if n.type == "verbatim_string_characters")
        serial = single_quoted(key)
        assert serial.upper() not in {k.upper() for k in table}, "PowerShell refuses duplicate keys"
        table[serial] = base64.b64decode(single_quoted(value), validate=True)
    return table


def offset_of(root: Node, text: bytes) -> int:
    hits = [n.start_byte for n in walk(root) if n.text == text]
    assert hits, f"{text!r} not found in the syntax tree"
    return min(hits)


# ---------------------------------------------------------------- the table is the compiled files


def test_each_table_entry_is_its_devices_compiled_file_byte_for_byte(compiled):
    for team, files in compiled.items():
        scripts = build_team_scripts(team, files)
        assert len(scripts) == 1
        (script,) = scripts
        assert table_from_syntax(script) == files
        assert read_table(script.content) == files
        assert script.serials == tuple(sorted(files))


def test_a_script_is_ascii_powershell_without_the_team_or_any_expandable_string(compiled):
    script = build_team_scripts(HOSTILE_TEAM, compiled[HOSTILE_TEAM])[0]
    script.content.decode("ascii")
    kinds = {node.type for node in walk(syntax_tree(script))}
    assert not kinds & {"expandable_string_literal", "expandable_here_string_literal",
                        "verbatim_here_string_characters"}
    for piece in ("Berlin", "whoami", "Remove-Item", "Z\u00fcrich", "R&D"):
        assert piece.encode() not in script.content


def finance_script(compiled):
    """The Finance team's script: its syntax tree and its text."""
    script = build_team_scripts("Finance", compiled["Finance"])[0]
    return syntax_tree(script), script.content.decode("ascii")


def test_the_script_writes_exactly_the_documented_path_as_raw_bytes_through_a_temporary_file(compiled):
    root, text = finance_script(compiled)
    assert "$Target = 'C:\\Program Files\\ClaudeCode\\managed-settings.json'" in text
    assert "$Folder = 'C:\\Program Files\\ClaudeCode'" in text
    assert "ProgramData" not in text and "$env:" not in text  # a 32-bit host would remap $env:ProgramFiles
    # No encoding layer: bytes from base64 straight to disk, never Set-Content/Out-File/WriteAllText.
    assert "[System.IO.File]::WriteAllBytes($Temp, $Wanted)" in text
    assert "[System.Convert]::FromBase64String($Table[$Serial])" in text
    assert not re.search(r"Set-Content|Out-File|Add-Content|WriteAllText|-Encoding", text)
    # The temporary file is in the target folder, hidden, and replaces the target in one step.
    assert "$Temp = Join-Path $Folder ('.managed-settings.json.mdmgen-'" in text
    assert "[System.IO.File]::Replace($Temp, $Target, [NullString]::Value)" in text
    assert "[System.IO.File]::Move($Temp, $Target)" in text
    assert offset_of(root, b"WriteAllBytes") < offset_of(root, b"Replace")
    assert "[System.IO.Directory]::CreateDirectory($Folder)" in text


def test_an_unknown_serial_exits_0_before_anything_is_written(compiled):
    root, text = finance_script(compiled)
    assert "$Bios = Get-CimInstance -ClassName Win32_BIOS | Select-Object -First 1" in text
    assert "$Serial = ([string] $Bios.SerialNumber).Trim().ToUpperInvariant()" in text
    guards = [n for n in walk(root) if n.type == "if_statement"
              and b"-not $Table.ContainsKey($Serial)" in n.children[2].text]
    assert len(guards) == 1
    body = guards[0].text.decode("ascii")
    assert re.search(r"\{\s*Write-Output '[^']*'\s*exit 0\s*\}\Z", body), body
    first_write = min(offset_of(root, name) for name in (b"CreateDirectory", b"WriteAllBytes", b"Replace", b"Move"))
    assert guards[0].end_byte < first_write
    assert guards[0].start_byte > offset_of(root, b"$Serial")


def test_a_file_that_already_has_the_bytes_is_not_rewritten(compiled):
    root, text = finance_script(compiled)
    same = [n for n in walk(root) if n.type == "if_statement" and b"Test-SameBytes $Current $Wanted" in n.text
            and n.children[2].text.startswith(b"Test-SameBytes")]
    assert len(same) == 1 and b"exit 0" in same[0].text
    assert same[0].end_byte < offset_of(root, b"WriteAllBytes")
    assert "$Current = [System.IO.File]::ReadAllBytes($Target)" in text


def test_failures_exit_non_zero_so_intune_retries(compiled):
    text = build_team_scripts("Finance", compiled["Finance"])[0].content.decode("ascii")
    assert text.startswith("# mdmgen:")
    assert "$ErrorActionPreference = 'Stop'" in text
    assert re.search(r"\} catch \{\s*\[Console\]::Error\.WriteLine\('mdmgen: ' \+ \$_\.Exception\.Message\)\s*"
                     r"exit 1\s*\}\s*\Z", text)


# ---------------------------------------------------------------- bytes the JSON layer would not keep


def test_bom_crlf_and_any_bytes_round_trip_exactly():
    files = {
        "BOM-1": b"\xef\xbb\xbf{\"a\": 1}\n",
        "CRLF-1": b"{\r\n  \"a\": \"\xc3\xa9\"\r\n}\r\n",
        "RAW-1": bytes(range(256)),
        "NOEOL-1": b"{}",
        "QUOTE-1": b"'$(whoami)' `\" \xe2\x80\x98",
    }
    (script,) = build_team_scripts("x", files)
    assert table_from_syntax(script) == files
    assert read_table(script.content) == files


# ---------------------------------------------------------------- size, split, determinism, stability


def test_a_5000_device_team_is_split_into_scripts_under_intunes_limit():
    files = synthetic_fleet(5000)
    scripts = build_team_scripts("Big Team", files)
    assert len(scripts) > 1
    for script in scripts:
        assert len(script.content) <= DEFAULT_MAX_BYTES
        assert len(base64.b64encode(script.content)) < INTUNE_SCRIPT_LIMIT
        assert table_from_syntax(script) == {serial: files[serial] for serial in script.serials}
        assert read_table(script.content) == table_from_syntax(script)
    serials = [serial for script in scripts for serial in script.serials]
    assert sorted(serials) == sorted(files) and len(serials) == len(set(serials))
    names = [script.display_name for script in scripts]
    assert len(set(names)) == len(names) and all(re.search(r" - Windows \(part [01]+\)$", n) for n in names)
    assert len({script.file_name for script in scripts}) == len(scripts)
    # Parts are filled, not scattered: no more than twice the scripts a perfect packing would need.
    assert len(scripts) <= 2 * (sum(len(s.content) for s in scripts) // DEFAULT_MAX_BYTES + 1)


def test_a_team_that_fits_is_one_script_named_for_the_team():
    (script,) = build_team_scripts("Finance", synthetic_fleet(3))
    assert script.display_name == "mdmgen - Claude Code - Finance - Windows"
    assert re.fullmatch(r"mdmgen-claude-code-finance-[0-9a-f]{8}\.ps1", script.file_name)
    assert build_team_scripts("Finance", {}) == []


def test_same_input_gives_the_same_scripts_in_any_order():
    files = synthetic_fleet(600)
    first = build_team_scripts("Big Team", files, max_bytes=40_000)
    again = build_team_scripts("Big Team", dict(reversed(list(files.items()))), max_bytes=40_000)
    assert len(first) > 2 and first == again


def test_a_device_joining_or_leaving_rewrites_only_its_own_part():
    files = synthetic_fleet(5000)
    before = {s.display_name: s.content for s in build_team_scripts("Big Team", files)}
    for changed in (files | synthetic_fleet(1, start=5000),
                    {k: v for k, v in files.items() if k != "PC-002500"}):
        after = {s.display_name: s.content for s in build_team_scripts("Big Team", changed)}
        kept = [name for name in before if after.get(name) == before[name]]
        assert len(kept) >= len(before) - 2, "one device touched more than its part (or its sibling)"


def test_a_device_whose_file_alone_is_too_large_is_named():
    files = synthetic_fleet(2) | {"HUGE-1": b"x" * 200_000}
    with pytest.raises(ValueError, match="HUGE-1"):
        build_team_scripts("t", files)


# ---------------------------------------------------------------- hostile names and serials


def test_hostile_team_names_never_reach_the_script_and_give_safe_distinct_file_names():
    files = synthetic_fleet(4)
    plain = build_team_scripts("plain", files)[0].content
    file_names = set()
    for team in [*HOSTILE_TEAMS, "R&D", "R D", "r&d"]:
        (script,) = build_team_scripts(team, files)
        assert script.content == plain, "the team name changed the script body"
        assert script.display_name == f"mdmgen - Claude Code - {team} - Windows"
        assert re.fullmatch(r"mdmgen-claude-code-[a-z0-9]+(-[a-z0-9]+)*\.ps1", script.file_name)
        assert len(script.file_name) <= 80
        file_names.add(script.file_name)
    assert len(file_names) == len(HOSTILE_TEAMS) + 3


@pytest.mark.parametrize("serial", ["win-1", "WIN 1", "WIN'1", "WIN\u20191", "$(X)", "", "CON", ".HIDDEN",
                                    "W" * 65, "WIN-1\n"])
def test_a_serial_not_in_the_inventorys_normal_form_is_refused(serial):
    with pytest.raises(ValueError, match="serial"):
        build_team_scripts("t", {serial: b"{}"})


# ---------------------------------------------------------------- reading back is strict


def test_read_table_refuses_a_script_it_did_not_write():
    (script,) = build_team_scripts("t", synthetic_fleet(3))
    text = script.content.decode("ascii")
    tampered = {
        "no table": text.replace("$Table = @{", "$Other = @{"),
        "bad base64": text.replace("' = 'ew", "' = '!!", 1),
        "a line added": text.replace("$Table = @{\r\n", "$Table = @{\r\n    $x = 1\r\n"),
        "repeated serial": text.replace("$Table = @{\r\n", "$Table = @{\r\n    'PC-000000' = 'e30='\r\n"),
        "not ascii": text.replace("# mdmgen:", "# mdmgen\u00e9:"),
        "table never ends": text.split("\r\n}\r\n")[0],
    }
    for what, content in tampered.items():
        try:
            read_table(content.encode("utf-8"))
        except ValueError:
            continue
        pytest.fail(f"read_table accepted a script with {what}")
