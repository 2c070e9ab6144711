"""One team, however HR and the policy spell it: one key (NFC, case-folded, trimmed), one display
spelling (the policy's, else the rows' most common), written the same in every output."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from mdmgen import attributes, inventory
from mdmgen.models import team_key

from .collector_helpers import CONFIG, set_policy
from .conftest import HEADER, run, snapshot, write_inventory
from .test_compile_state import STATE as MEMO
from .test_compile_state import age

NFD_CAFE = unicodedata.normalize("NFD", "Café Ops")


def rows(*spellings: tuple[str, int], platform: str = "linux", prefix: str = "D") -> str:
    out, n = [], 0
    for team, count in spellings:
        for _ in range(count):
            out.append(f'{prefix}{n:03d},{platform},u{prefix}{n}@example.com,"{team}"')
            n += 1
    return HEADER + "\n".join(out) + "\n"


def add_team_override(workdir: Path, name: str, value: str = "team-layer") -> None:
    path = workdir / "profiles" / "policy.yaml"
    text = path.read_text().replace("teams: {}\n", f'teams:\n  "{name}":\n    settings:\n'
                                                   f'      env:\n        OTEL_SERVICE_NAME: "{value}"\n')
    path.write_text(text)


def compile_json(workdir: Path, *args: str) -> tuple[dict, str]:
    result = run(workdir, "compile", "--json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def sent_teams(out: Path) -> dict[str, str]:
    """Each device's ``team`` resource attribute, as the device sends it."""
    found = {}
    for folder in sorted((out / "devices").iterdir()):
        env = json.loads((folder / "managed-settings.json").read_text())["env"]
        found[folder.name] = dict(attributes.split_pairs(env["OTEL_RESOURCE_ATTRIBUTES"]))["team"]
    return found


def test_the_key_ignores_case_accent_encoding_and_surrounding_spaces_but_not_script():
    assert team_key("  Café Ops ") == team_key(NFD_CAFE.upper()) == team_key("café ops")
    assert team_key("Ops") != team_key("\u041eps")  # Cyrillic O: looks alike, another team
    assert team_key("Straße") == team_key("STRASSE")  # casefold, not lower


def test_the_policy_spelling_is_written_everywhere_and_the_fold_is_reported(workdir):
    add_team_override(workdir, "Platform Eng")
    write_inventory(workdir, rows(("platform eng", 4), ("PLATFORM ENG", 2), ("Platform Eng", 1), ("Sec", 1)))
    data, stderr = compile_json(workdir)
    out = workdir / "output"
    teams = sent_teams(out)
    assert set(teams.values()) == {"Platform%20Eng", "Sec"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert {d["team"] for d in manifest["devices"].values()} == {"Platform Eng", "Sec"}
    for serial, team in teams.items():  # the team's override reaches every spelling
        env = json.loads((out / "devices" / serial / "managed-settings.json").read_text())["env"]
        assert (env.get("OTEL_SERVICE_NAME") == "team-layer") == (team != "Sec")
    assert "team 'Platform Eng': also written 'platform eng' (4 rows), 'PLATFORM ENG' (2 rows)" in stderr.splitlines()
    assert data["team_spellings"] == {"Platform Eng": {"platform eng": 4, "PLATFORM ENG": 2}}


def test_without_the_policy_the_most_common_spelling_wins_ties_to_the_lowest(workdir):
    write_inventory(workdir, rows(("security", 3), ("Security", 2), ("ops", 1), ("Ops", 1), ("OPS", 1)))
    data, stderr = compile_json(workdir)
    assert set(sent_teams(workdir / "output").values()) == {"security", "OPS"}  # "OPS" < "Ops" < "ops"
    assert data["team_spellings"] == {"OPS": {"Ops": 1, "ops": 1}, "security": {"Security": 2}}
    assert "team 'security': also written 'Security' (2 rows)" in stderr


def test_teams_that_only_look_alike_across_scripts_stay_two(workdir):
    write_inventory(workdir, rows(("Ops", 2), ("\u041eps", 1)))
    data, _ = compile_json(workdir)
    assert data["team_spellings"] == {}
    assert set(sent_teams(workdir / "output").values()) == {"Ops", "%D0%9Eps"}


def test_an_nfd_policy_key_is_the_team_and_its_nfc_spelling_is_written(workdir):
    add_team_override(workdir, f"  {NFD_CAFE}  ")
    write_inventory(workdir, rows(("café ops", 2)))
    data, _ = compile_json(workdir)
    cafe = attributes.encode_value("Café Ops")
    assert set(sent_teams(workdir / "output").values()) == {cafe}
    env = json.loads((workdir / "output" / "devices" / "D000" / "managed-settings.json").read_text())["env"]
    assert env["OTEL_SERVICE_NAME"] == "team-layer"
    assert data["team_spellings"] == {"Café Ops": {"café ops": 2}}


def test_a_new_majority_spelling_re_renders_every_device_of_the_team(workdir, tmp_path):
    write_inventory(workdir, rows(("ops", 2), ("Ops", 1)))
    compile_json(workdir)
    assert set(sent_teams(workdir / "output").values()) == {"ops"}
    # Only the row D000 changes, yet every device of the team now sends the new spelling.
    write_inventory(workdir, rows(("Ops", 1), ("ops", 1), ("Ops", 1)))
    data, _ = compile_json(workdir)
    assert data["rendered"] == 3
    assert set(sent_teams(workdir / "output").values()) == {"Ops"}
    fresh = tmp_path / "fresh"
    result = run(workdir, "compile", "--out", str(fresh))
    assert result.exit_code == 0
    assert {k: v[0] for k, v in snapshot(workdir / "output").items()} == {
        k: v[0] for k, v in snapshot(fresh).items()}


def test_a_quiet_night_reports_the_same_folds(workdir, monkeypatch):
    write_inventory(workdir, rows(("ops", 2), ("Ops", 1)))
    first, first_err = compile_json(workdir)
    assert (workdir / MEMO).is_file()
    age(workdir)

    def refuse(*_args, **_kwargs):
        raise AssertionError("the quiet night read the rows")

    monkeypatch.setattr(inventory, "load", refuse)
    quiet, quiet_err = compile_json(workdir)
    assert quiet["rendered"] == 0
    assert quiet["team_spellings"] == first["team_spellings"] == {"ops": {"Ops": 1}}
    fold = "team 'ops': also written 'Ops' (1 row)"
    assert fold in first_err.splitlines() and fold in quiet_err.splitlines()


@pytest.mark.parametrize("policy_key", [NFD_CAFE, " café ops "])
def test_a_policy_team_spelt_otherwise_still_authenticates_the_collector(workdir, monkeypatch, policy_key):
    """The devices get the team's token header, so the collector must ask for it."""
    set_policy(workdir)
    path = workdir / "profiles" / "policy.yaml"
    text = path.read_text().replace("  token_env: OTEL_TOKEN\n", "")
    text = text.replace("teams: {}\n", f'teams:\n  "{policy_key}":\n    settings:\n      env:\n'
                                       f'        OTEL_EXPORTER_OTLP_HEADERS: "Authorization=Bearer '
                                       "{{ secret('TEAM_TOKEN') }}\"\n")
    path.write_text(text)
    monkeypatch.setenv("TEAM_TOKEN", "tok-" + "c" * 28)
    write_inventory(workdir, rows(("Café Ops", 2)))
    compile_json(workdir)
    env = json.loads((workdir / "output" / "devices" / "D000" / "managed-settings.json").read_text())["env"]
    assert "OTEL_EXPORTER_OTLP_HEADERS" in env
    config = (workdir / "output" / CONFIG).read_text()
    assert "bearertokenauth" in config and "${env:TEAM_TOKEN}" in config
    assert "not authenticated" not in config


def test_an_intune_group_key_names_the_team_too_and_teams_wins_over_it(workdir):
    path = workdir / "profiles" / "policy.yaml"
    path.write_text(path.read_text() + '\nintune: {groups: {"SECURITY": "sg-security", "OPS": "sg-ops"}}\n')
    add_team_override(workdir, "Ops")
    write_inventory(workdir, rows(("security", 2), ("Security", 1), ("ops", 2)))
    data, _stderr = compile_json(workdir)
    sent = sent_teams(workdir / "output")
    assert sorted(set(sent.values())) == ["Ops", "SECURITY"]  # the devices, and so Intune's object names
    assert data["team_spellings"] == {"Ops": {"ops": 2}, "SECURITY": {"security": 2, "Security": 1}}
