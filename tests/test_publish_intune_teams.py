"""Issue 20, Intune: one team is one profile and one script set whatever its spellings; two teams
resolving to one Entra group are refused before any write; and the proof counts, from each
device's groups, every mdmgen object that reaches it, including ones a publish leaves in place.

Real ``mdmgen compile`` and CLI against the fake Entra ID + Graph over HTTPS; what each device
receives is read back from the fake tenant's state (tests/intune_helpers.py), not from mdmgen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from mdmgen.publish.intune.fleet import display_names, team_of

from .fakes.graph_server import FakeGraphServer
from .fakes.tls import self_signed
from .intune_helpers import Row, azure_env, compile_rows, publish, seed, writes
from .test_publish_intune import assert_every_device_gets_its_settings

GROUP_TARGET = "#microsoft.graph.groupAssignmentTarget"
SPELLINGS = ["security", "Security", "security", "SECURITY", "security", "Security"]
"""One team written three ways: 'security' on 3 rows, 'Security' on 2, 'SECURITY' on 1."""


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("intune-teams-tls"))


@pytest.fixture
def graph(tls_files, monkeypatch) -> Iterator[FakeGraphServer]:
    with FakeGraphServer(tls=tls_files, page_size=3) as server:
        azure_env(monkeypatch, server, tls_files[0])
        yield server
    assert server.internal_errors == []


def three_spellings() -> list[Row]:
    macs = [Row(f"C02SEC{i:04d}", "macos", f"sec{i}@example.com", team) for i, team in enumerate(SPELLINGS)]
    pcs = [Row(f"PCSEC{i:04d}", "windows", f"secpc{i}@example.com", team) for i, team in enumerate(SPELLINGS[:3])]
    return [*macs, *pcs, Row("C02PLT0001", "macos", "plat@example.com", "Platform")]


def lower_team_attribute(workdir: Path) -> None:
    """The devices' team attribute written one way for all spellings, so the Macs of the team
    compile to the same settings (apart from their email) and can share one profile."""
    policy = workdir / "profiles" / "policy.yaml"
    text = policy.read_text()
    assert '  team: "{{ team }}"' in text
    policy.write_text(text.replace('  team: "{{ team }}"', '  team: "{{ team|lower }}"'))


def seeded_as_one_team(graph: FakeGraphServer, rows: list[Row], group: str = "Security"):
    """The tenant: one group for the team, whatever the rows call it."""
    return seed(graph, [replace(r, team=group if team_of(r.team) == "security" else r.team) for r in rows])


@pytest.mark.parametrize(("intune", "shown"), [
    ("intune: {}", "security"),  # the spelling most rows use
    ('intune: {groups: {"SECURITY": "Security"}}', "SECURITY"),  # the policy's spelling
])
def test_one_team_spelt_three_ways_is_one_profile_and_one_script(workdir: Path, graph: FakeGraphServer,
                                                                 intune: str, shown: str):
    rows = three_spellings()
    lower_team_attribute(workdir)
    out = compile_rows(workdir, rows, intune=intune)
    users = seeded_as_one_team(graph, rows)
    result = publish(workdir, graph)
    assert result.exit_code == 0, result.output
    assert sorted(c["displayName"] for c in graph.configurations.values()) == [
        "mdmgen - Claude Code - Platform - macOS", f"mdmgen - Claude Code - {shown} - macOS"]
    assert [s["displayName"] for s in graph.scripts.values()] == [f"mdmgen - Claude Code - {shown} - Windows"]
    assert_every_device_gets_its_settings(graph, out, rows, users)  # exactly one profile each, equal to its file
    assert "Proof: 7 enrolled Mac(s) and 3 enrolled PC(s) of 2 team(s)" in result.output


@pytest.mark.parametrize("by", ["name", "id"])
def test_two_teams_resolving_to_one_group_are_refused_before_any_write(workdir: Path, graph: FakeGraphServer,
                                                                       by: str):
    rows = [Row("C02PLT0001", "macos", "plat@example.com", "Platform"),
            Row("C02SEC0001", "macos", "sec@example.com", "Security")]
    users = seed(graph, rows, groups={"Platform": "sg-shared", "Security": "unused"})
    shared = next(g for g in graph.groups.values() if g.display_name == "sg-shared")
    shared.members.append(users["sec@example.com"].id)
    target = "SG-Shared" if by == "name" else shared.id
    compile_rows(workdir, rows, intune=f'intune: {{groups: {{"Platform": "sg-shared", "Security": "{target}"}}}}')
    for args in (("--dry-run",), ()):
        graph.reset_requests()
        result = publish(workdir, graph, *args)
        assert result.exit_code == 1, result.output
        assert writes(graph) == [] and not graph.configurations and not graph.scripts
        assert (f"group 'sg-shared' ({shared.id}): teams 'Platform' and 'Security' all resolve to this Entra "
                "group") in result.output
        assert "Traceback" not in result.output


def test_one_team_mapped_twice_to_different_groups_is_refused(workdir: Path, graph: FakeGraphServer):
    rows = [Row("C02SEC0001", "macos", "a@example.com", "Security"),
            Row("C02SEC0002", "macos", "b@example.com", "security")]
    compile_rows(workdir, rows, intune='intune: {groups: {"Security": "sg-a", "security": "sg-b"}}')
    result = publish(workdir, graph)
    assert result.exit_code == 1, result.output
    assert ("groups: 'Security' and 'security' are one team (names ignore case) mapped to different groups, "
            "'sg-a' and 'sg-b'") in result.output
    assert writes(graph) == []


def stale_copy(graph: FakeGraphServer, store: dict, original: dict, name: str, group_id: str) -> str:
    """Another object of mdmgen's (by its name) in the tenant's state, assigned to ``group_id``,
    as an earlier publish for another spelling of the team would have left it."""
    oid = f"00000000-0000-0000-0000-{len(store):012d}"
    store[oid] = {**original, "id": oid, "displayName": name, "description": None}
    graph.assignments[oid] = [{"id": f"{oid}_{group_id}", "source": "direct", "sourceId": oid, "intent": "apply",
                               "target": {"@odata.type": GROUP_TARGET, "groupId": group_id,
                                          "deviceAndAppManagementAssignmentFilterId": None,
                                          "deviceAndAppManagementAssignmentFilterType": "none"}}]
    return oid


def test_a_stale_profile_reaching_the_teams_group_fails_the_proof(workdir: Path, graph: FakeGraphServer):
    rows = three_spellings()
    lower_team_attribute(workdir)
    out = compile_rows(workdir, rows)
    users = seeded_as_one_team(graph, rows)
    assert publish(workdir, graph).exit_code == 0
    group = next(g.id for g in graph.groups.values() if g.display_name == "Security")
    (ours,) = [c for c in graph.configurations.values() if "security" in c["displayName"]]
    stale = "mdmgen - Claude Code - Security - macOS"  # what the same team spelt 'Security' used to make
    stale_copy(graph, graph.configurations, ours, stale, group)
    graph.reset_requests()
    result = publish(workdir, graph)
    assert result.exit_code == 1, result.output
    assert writes(graph) == []
    for row in rows:
        if row.platform == "macos" and team_of(row.team) == "security":
            assert (f"{row.serial}: com.anthropic.claudecode profiles: compiled one profile for "
                    f"com.anthropic.claudecode, Intune would give 2: '{stale} (id ") in result.output
            assert "and 'mdmgen - Claude Code - security - macOS'" in result.output
    assert "C02PLT0001" not in result.output  # Platform's Mac is reached by its own profile only
    assert "--prune deletes it" in result.output
    result = publish(workdir, graph, "--prune")
    assert result.exit_code == 0, result.output
    assert_every_device_gets_its_settings(graph, out, rows, users)


def test_a_stale_script_holding_a_pcs_file_fails_the_proof(workdir: Path, graph: FakeGraphServer):
    rows = three_spellings()
    lower_team_attribute(workdir)
    compile_rows(workdir, rows)
    seeded_as_one_team(graph, rows)
    assert publish(workdir, graph).exit_code == 0
    (script,) = graph.scripts.values()
    group = next(g.id for g in graph.groups.values() if g.display_name == "Security")
    stale_copy(graph, graph.scripts, script, "mdmgen - Claude Code - SECURITY - Windows", group)
    result = publish(workdir, graph)
    assert result.exit_code == 1, result.output
    assert "PCSEC0000: Windows scripts: compiled one script holding its file, Intune would give 2:" in result.output


def test_a_stale_profile_assigned_to_all_devices_reaches_every_mac(workdir: Path, graph: FakeGraphServer):
    rows = three_spellings()
    lower_team_attribute(workdir)
    compile_rows(workdir, rows)
    seeded_as_one_team(graph, rows)
    assert publish(workdir, graph).exit_code == 0
    ours = next(iter(graph.configurations.values()))
    oid = stale_copy(graph, graph.configurations, ours, "mdmgen - Claude Code - Old - macOS", "unused")
    graph.assignments[oid] = [{"id": f"{oid}_all", "target": {"@odata.type": "#microsoft.graph."
                                                                              "allDevicesAssignmentTarget"}}]
    result = publish(workdir, graph)
    assert result.exit_code == 1, result.output
    assert "C02PLT0001: com.anthropic.claudecode profiles" in result.output


def test_objects_are_named_by_the_devices_spelling_else_the_most_used_ties_to_the_lowest_codepoint():
    assert display_names(["b", "B", "B", "b"]) == {"b": "B"}  # a tie: 'B' < 'b'
    assert display_names(["b", "B", "b"]) == {"b": "b"}
    assert display_names(["Cafe\u0301", "CAF\u00c9", "CAF\u00c9"]) == {"café": "CAF\u00c9"}  # NFD, NFC: one team
    assert display_names(["\u0430", "a"]) == {"\u0430": "\u0430", "a": "a"}  # Cyrillic and Latin stay two
