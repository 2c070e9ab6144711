"""``mdmgen publish intune`` against the fake Entra ID + Graph (tests/fakes/graph_server.py) over HTTPS.

The output folders come from the real ``mdmgen compile``, the command is the real CLI (or the real
publish flow with a clock the test moves), and the assertions are about what the fake tenant holds,
seen from each device (tests/intune_helpers.py), and what it was asked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mdmgen.publish.intune.scripts import read_table

from .fakes.graph_server import DEFAULT_CLIENT_SECRET, FakeGraphServer, ManualClock
from .fakes.tls import self_signed
from .intune_helpers import (
    Row,
    assigned_objects,
    azure_env,
    compile_rows,
    compiled,
    decode_lists,
    mac_view,
    payload,
    publish,
    scripted_graph,
    seed,
    writes,
)
from .scripted import Script

R_AND_D = "R&D, Berlin"
CONFIGURATIONS = "/beta/deviceManagement/deviceConfigurations"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("intune-tls"))


@pytest.fixture
def graph(tls_files, monkeypatch) -> Iterator[FakeGraphServer]:
    with FakeGraphServer(tls=tls_files, page_size=3) as server:
        azure_env(monkeypatch, server, tls_files[0])
        yield server
    assert server.internal_errors == []


def fleet() -> list[Row]:
    return ([Row(f"C02MAC{i:04d}", "macos", f"user{i}@example.com", R_AND_D if i % 2 else "ops") for i in range(6)]
            + [Row(f"PC{i:04d}", "windows", f"pc{i}@example.com", R_AND_D if i % 2 else "ops") for i in range(4)]
            + [Row("LNX0001", "linux", "tux@example.com", "ops")])


RND_GROUP = 'intune: {groups: {"R&D, Berlin": "sg-rnd-berlin"}}'


def publish_fleet(workdir: Path, graph: FakeGraphServer, rows: list[Row] | None = None, **seed_kw):
    rows = rows or fleet()
    out = compile_rows(workdir, rows, intune=RND_GROUP)
    users = seed(graph, rows, groups={R_AND_D: "sg-rnd-berlin", "ops": "OPS"}, **seed_kw)
    return out, users, rows


def assert_every_device_gets_its_settings(graph: FakeGraphServer, out: Path, rows: list[Row], users) -> None:
    tables_of: dict[str, dict[str, bytes]] = {}  # each script's table, parsed once
    for row in rows:
        if row.platform not in ("macos", "windows"):
            continue
        got = assigned_objects(graph, users[row.email])
        if row.platform == "macos":
            profiles = [obj for kind, obj in got if kind == "macos"]
            assert len(profiles) == 1, row.serial
            seen = mac_view(payload(profiles[0]), mail=users[row.email].mail, serial=row.serial)
            assert seen == decode_lists(json.loads(compiled(out, row.serial))), row.serial
        else:
            for kind, obj in got:
                if kind == "windows" and obj["id"] not in tables_of:
                    tables_of[obj["id"]] = read_table(payload(obj))
            tables = [tables_of[obj["id"]] for kind, obj in got if kind == "windows"]
            holding = [t for t in tables if row.serial in t]
            assert len(holding) == 1 and holding[0][row.serial] == compiled(out, row.serial), row.serial


# --- first publish, the device view, idempotence --------------------------------------------------


def test_publish_makes_team_objects_that_give_each_device_its_settings(workdir: Path, graph: FakeGraphServer):
    out, users, rows = publish_fleet(workdir, graph)
    result = publish(workdir, graph)
    assert result.exit_code == 0, result.output
    names = sorted(c["displayName"] for c in graph.configurations.values())
    assert names == ["mdmgen - Claude Code - R&D, Berlin - macOS", "mdmgen - Claude Code - ops - macOS"]
    assert len(graph.scripts) == 2  # one per team with PCs; the Linux box is not Intune's
    for config in graph.configurations.values():
        assert config["deploymentChannel"] == "deviceChannel"
        assert b"{{mail}}" in payload(config) and b"Signature" not in payload(config)
    for script in graph.scripts.values():
        assert script["runAsAccount"] == "system" and script["runAs32Bit"] is False
    group_of = {g.display_name: g.id for g in graph.groups.values()}
    for oid, config in graph.configurations.items():
        team = "sg-rnd-berlin" if "R&D" in config["displayName"] else "OPS"
        assert [a["target"]["groupId"] for a in graph.assignments[oid]] == [group_of[team]]
    assert_every_device_gets_its_settings(graph, out, rows, users)
    assert "Proof: 6 enrolled Mac(s) and 4 enrolled PC(s) of 2 team(s)" in result.output


def test_unchanged_republish_makes_zero_writes(workdir: Path, graph: FakeGraphServer):
    publish_fleet(workdir, graph)
    assert publish(workdir, graph).exit_code == 0
    graph.reset_requests()
    result = publish(workdir, graph, "--json")
    assert result.exit_code == 0, result.output
    assert writes(graph) == []
    data = json.loads(result.stdout)
    assert data["uploaded"] == 0 and data["unchanged"] == 4


def publish_then_change_the_macs(workdir: Path, graph: FakeGraphServer):
    """Publish a fleet, then compile it again with a macOS override: every Mac's profile changes."""
    out, users, rows = publish_fleet(workdir, graph)
    assert publish(workdir, graph).exit_code == 0
    policy = workdir / "profiles" / "policy.yaml"
    policy.write_text(policy.read_text().replace("platforms: {}", "platforms:\n  macos:\n    settings:\n"
                                                 "      cleanupPeriodDays: 7"))
    compile_rows(workdir, rows)
    return out, users, rows


def test_a_changed_policy_patches_only_the_changed_objects_and_reads_them_back(workdir: Path, graph):
    out, users, rows = publish_then_change_the_macs(workdir, graph)
    graph.reset_requests()
    result = publish(workdir, graph)
    assert result.exit_code == 0, result.output
    assert sorted(w.split(" ")[0] for w in writes(graph)) == ["PATCH", "PATCH"]  # the two macOS profiles only
    assert_every_device_gets_its_settings(graph, out, rows, users)


def test_dry_run_prints_the_proof_and_writes_nothing(workdir: Path, graph: FakeGraphServer):
    publish_fleet(workdir, graph)
    result = publish(workdir, graph, "--dry-run")
    assert result.exit_code == 0, result.output
    assert writes(graph) == [] and not graph.configurations
    assert "Proof: 6 enrolled Mac(s)" in result.output
    assert "create  mdmgen - Claude Code - ops - macOS" in result.output
    group = next(g.id for g in graph.groups.values() if g.display_name == "OPS")
    assert (f"proof   ops: group {group}; 3 of 3 Mac(s) and 2 of 2 PC(s) enrolled, each proven to get exactly its "
            "compiled settings from 2 object(s)") in result.output


def test_a_user_in_a_group_nested_in_the_teams_group_is_served(workdir: Path, graph: FakeGraphServer):
    rows = fleet()
    out = compile_rows(workdir, rows, intune=RND_GROUP)
    users = seed(graph, rows, groups={R_AND_D: "sg-rnd-berlin", "ops": "OPS-direct"})
    direct = next(g for g in graph.groups.values() if g.display_name == "OPS-direct")
    graph.add_group("ops", members=[direct.id])  # ops's group holds only a nested group
    result = publish(workdir, graph)
    assert result.exit_code == 0, result.output
    assert_every_device_gets_its_settings(graph, out, rows, users)


def test_a_serial_enrolled_twice_is_proven_for_each_record(workdir: Path, graph: FakeGraphServer):
    publish_fleet(workdir, graph)
    stranger = graph.add_user("stranger@example.com")
    graph.add_managed_device("C02MAC0004", user=stranger)  # re-enrolled by someone in no team's group
    output = refused(publish(workdir, graph), graph)
    assert "C02MAC0004: group membership" in output and "'stranger@example.com' is not in the team's group" in output


def test_a_device_not_enrolled_is_a_note_not_an_error(workdir: Path, graph: FakeGraphServer):
    publish_fleet(workdir, graph, skip=("C02MAC0002", "PC0001"))
    result = publish(workdir, graph, "--json")
    assert result.exit_code == 0, result.output
    notes = json.loads(result.stdout)["notes"]
    assert notes["unenrolled"]["items"] == ["C02MAC0002", "PC0001"]
    assert "2 device(s) are not enrolled in Intune" in result.output


# --- the proof's refusals: one test per reason ---------------------------------------------------


def refused(result, graph: FakeGraphServer) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert writes(graph) == [] and not graph.configurations and not graph.scripts
    return result.output


def test_mail_differing_only_in_case_refuses_naming_the_serial(workdir: Path, graph: FakeGraphServer):
    publish_fleet(workdir, graph, mail={"user3@example.com": "User3@example.com"})
    output = refused(publish(workdir, graph), graph)
    assert "C02MAC0003: mail: compiled 'user3@example.com', Intune would give 'User3@example.com'" in output
    assert "differs only in case" in output
    readme = (Path(__file__).resolve().parents[1] / "docs" / "targets" / "intune.md").read_text()
    quoted = next(line for line in readme.splitlines() if line.strip().startswith("(`C02MAC0003: mail:"))
    assert quoted.strip()[2:-3] in output  # the Intune page quotes the real message


def test_a_user_in_two_teams_groups_refuses(workdir: Path, graph: FakeGraphServer):
    rows = fleet()
    rows.append(Row("C02MAC0099", "macos", "user1@example.com", "ops"))  # user1 is in R&D too
    publish_fleet(workdir, graph, rows)
    output = refused(publish(workdir, graph), graph)
    for serial in ("C02MAC0001", "C02MAC0099"):  # both Macs of user1, each reached by both teams' profiles
        assert (f"{serial}: com.anthropic.claudecode profiles: compiled one profile for com.anthropic.claudecode, "
                "Intune would give 2: 'mdmgen - Claude Code - R&D, Berlin - macOS' and "
                "'mdmgen - Claude Code - ops - macOS'") in output


def test_a_pc_whose_user_is_in_another_teams_group_still_gets_only_its_file(workdir: Path, graph):
    rows = fleet()
    rows.append(Row("PC0099", "windows", "user1@example.com", "helpdesk"))  # user1 (R&D) has a PC of a PC-only team
    out, users, rows = publish_fleet(workdir, graph, rows)
    result = publish(workdir, graph)
    assert result.exit_code == 0, result.output
    assert_every_device_gets_its_settings(graph, out, rows, users)


def test_a_value_differing_per_device_without_a_token_refuses(workdir: Path, graph: FakeGraphServer):
    rows = fleet()
    for i, row in enumerate(rows):
        row.extra = f"CC{i}"
    compile_rows(workdir, rows, intune=RND_GROUP, extra_header="cost_center",
                 extra_policy="")
    policy = workdir / "profiles" / "policy.yaml"
    policy.write_text(policy.read_text().replace('  team: "{{ team }}"', '  team: "{{ team }}"\n'
                                                 '  cost_center: "{{ cost_center }}"'))
    compile_rows(workdir, rows, extra_header="cost_center")
    seed(graph, rows, groups={R_AND_D: "sg-rnd-berlin", "ops": "OPS"})
    output = refused(publish(workdir, graph), graph)
    assert "C02MAC0002: env.OTEL_RESOURCE_ATTRIBUTES:" in output
    assert "'cost_center': 'CC2'" in output and "'cost_center': 'CC0'" in output
    assert "differs per device and Intune has no token for it" in output


def test_a_pseudonymised_email_refuses(workdir: Path, graph: FakeGraphServer, monkeypatch):
    monkeypatch.setenv("MDMGEN_PSEUDONYM_KEY", "k" * 64)
    rows = fleet()
    compile_rows(workdir, rows, intune=RND_GROUP, extra_policy="pseudonymise_email: true\n")
    seed(graph, rows, groups={R_AND_D: "sg-rnd-berlin", "ops": "OPS"})
    output = refused(publish(workdir, graph), graph)
    assert "C02MAC0000:" in output and "pseudonymised" in output
    assert "user0@example.com" not in output  # the publish never learnt the address


@pytest.mark.parametrize("email", ["ann%41@example.com", "ann%2C@example.com", "ann%zz@example.com"])
def test_an_email_that_would_decode_differently_refuses(workdir: Path, graph: FakeGraphServer, email: str):
    rows = fleet()
    rows[0].email = email
    publish_fleet(workdir, graph, rows)
    output = refused(publish(workdir, graph), graph)
    assert "C02MAC0000: mail:" in output and "would decode differently" in output


def test_a_team_without_a_group_refuses_naming_the_team(workdir: Path, graph: FakeGraphServer):
    rows = fleet()
    compile_rows(workdir, rows)  # no mapping: 'R&D, Berlin' needs a group of that name
    seed(graph, rows, groups={R_AND_D: "sg-rnd-berlin", "ops": "OPS"})
    output = refused(publish(workdir, graph), graph)
    assert "team 'R&D, Berlin': group: compiled 'R&D, Berlin', Intune would give no Entra group" in output


def test_an_output_without_the_intune_section_says_what_to_add(workdir: Path, graph: FakeGraphServer):
    from .conftest import run

    (workdir / "inventory" / "devices.csv").write_text("serial_number,platform,user_email,team\n"
                                                       "C02X,macos,a@example.com,ops\n")
    assert run(workdir, "compile").exit_code == 0
    result = publish(workdir, graph)
    assert result.exit_code == 1 and "add an 'intune:' section to the policy" in result.output
    assert graph.requests == []


# --- faults ------------------------------------------------------------------------------------------


def test_a_patch_that_keeps_the_old_payload_is_detected(workdir: Path, graph: FakeGraphServer):
    publish_then_change_the_macs(workdir, graph)
    graph.patch_ignores_payload = True
    result = publish(workdir, graph)
    assert result.exit_code == 7, result.output
    assert "IntuneCD #264" in result.output
    graph.patch_ignores_payload = False
    assert publish(workdir, graph).exit_code == 0  # the next run sees the old payload and writes it again


def test_missing_credentials_name_the_variables(workdir: Path, graph: FakeGraphServer, monkeypatch):
    publish_fleet(workdir, graph)
    monkeypatch.delenv("AZURE_CLIENT_SECRET")
    result = publish(workdir, graph)
    assert result.exit_code == 7
    assert "AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH, AZURE_FEDERATED_TOKEN_FILE" in result.output


def test_a_wrong_secret_is_one_line_without_the_secret(workdir: Path, graph: FakeGraphServer, monkeypatch):
    publish_fleet(workdir, graph)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "not-the-secret-value")
    result = publish(workdir, graph, "-vv")
    assert result.exit_code == 7, result.output
    assert "AADSTS7000215" in result.output and "not-the-secret-value" not in result.output
    assert "Traceback" not in result.output


def test_secrets_and_tokens_never_appear_even_with_vv(workdir: Path, graph: FakeGraphServer):
    publish_fleet(workdir, graph)
    result = publish(workdir, graph, "-vv", "--json")
    assert result.exit_code == 0, result.output
    tokens = list(graph.identity.tokens)
    assert tokens
    for secret in [DEFAULT_CLIENT_SECRET, *tokens]:
        assert secret not in result.output
    assert "graph: GET /v1.0/deviceManagement/managedDevices -> 200" in result.output  # -vv does log


def test_a_plain_http_graph_url_is_a_usage_error(workdir: Path):
    from .conftest import run

    result = run(workdir, "publish", "intune", "--graph-url", "http://graph.example.com")
    assert result.exit_code == 2 and "--graph-url" in result.output


# --- prune and the guard ------------------------------------------------------------------------------


def test_prune_deletes_only_objects_no_team_needs_behind_the_guard(workdir: Path, graph: FakeGraphServer):
    out, users, rows = publish_fleet(workdir, graph)
    assert publish(workdir, graph).exit_code == 0
    foreign = graph.add_group("others")
    graph.configurations["keep"] = {"@odata.type": "#microsoft.graph.macOSCustomConfiguration", "id": "keep",
                                    "displayName": "Someone else's profile", "payload": "", "version": 1}
    kept = [r for r in rows if r.team == "ops"]
    compile_rows(workdir, kept)
    result = publish(workdir, graph)  # no --prune: R&D's objects stay, reported as stale
    assert result.exit_code == 0 and "left in place (--prune deletes them)" in result.output
    result = publish(workdir, graph, "--prune")
    assert result.exit_code == 6, result.output  # R&D's 5 devices are 50% of those published
    assert len(graph.configurations) == 3
    graph.reset_requests()
    result = publish(workdir, graph, "--prune", "--max-delete", "60")
    assert result.exit_code == 0, result.output
    assert sorted(c["displayName"] for c in graph.configurations.values()) == [
        "Someone else's profile", "mdmgen - Claude Code - ops - macOS"]
    assert [s["displayName"] for s in graph.scripts.values()] == ["mdmgen - Claude Code - ops - Windows"]
    assert all(w.startswith("DELETE") for w in writes(graph)) and len(writes(graph)) == 2
    assert foreign.id in graph.groups
    assert_every_device_gets_its_settings(graph, out, kept, users)


def test_the_write_budget_is_paced_not_hit():
    """120 writes against Intune's 100 per 20 s: the client waits on its own, so no 20 s window of
    the clock the client paces by ever holds more than 100 of them."""
    clock = ManualClock()
    sent_at: list[float] = []

    def created(request):
        sent_at.append(clock())
        return httpx.Response(201, json={"id": f"cfg-{len(sent_at) // 2}"})

    def assigned(request):
        sent_at.append(clock())
        return httpx.Response(200, json={"value": []})

    script = Script()
    for n in range(60):
        script.on("POST", CONFIGURATIONS, answer=created).on("POST", f"{CONFIGURATIONS}/cfg-{n}/assign",
                                                              answer=assigned)
    client = scripted_graph(script, clock=clock, sleep=clock.advance)
    for _ in range(60):
        made = client.request("POST", CONFIGURATIONS, doing="test", body={"displayName": "x"}).json()
        client.request("POST", f"{CONFIGURATIONS}/{made['id']}/assign", doing="t", body={"assignments": []})
    client.close()
    script.assert_done()
    assert client.writes == 120
    assert max(sum(1 for t in sent_at if start <= t < start + 20.0) for start in sent_at) <= 100
    assert sent_at[-1] - sent_at[0] >= 20.0  # it waited for the window rather than be throttled


def test_a_team_split_differently_replaces_its_old_script_parts_without_prune(workdir: Path, graph: FakeGraphServer):
    """A part no longer produced would keep writing its stale table to the PCs of the group: every
    publish deletes it (not only --prune), and the guard does not count its devices as deleted."""
    few = [Row(f"PC{n:04d}", "windows", f"pc{n}@example.com", "ops") for n in range(10)]
    many = few + [Row(f"PC{n:04d}", "windows", f"pc{n}@example.com", "ops") for n in range(10, 520)]
    users = seed(graph, many)
    compile_rows(workdir, few)
    assert publish(workdir, graph).exit_code == 0
    assert [s["displayName"] for s in graph.scripts.values()] == ["mdmgen - Claude Code - ops - Windows"]
    for rows in (many, few):
        out = compile_rows(workdir, rows)
        result = publish(workdir, graph)
        assert result.exit_code == 0, result.output
        names = sorted(s["displayName"] for s in graph.scripts.values())
        if rows is many:
            assert len(names) > 1 and all(n.startswith("mdmgen - Claude Code - ops - Windows (part ") for n in names)
        else:
            assert names == ["mdmgen - Claude Code - ops - Windows"]
        assert "left in place" not in result.output
        assert_every_device_gets_its_settings(graph, out, rows, users)
