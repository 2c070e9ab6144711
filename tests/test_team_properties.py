"""Property: however the inventory's rows and the policy spell a team (case, NFC or NFD accents,
surrounding spaces), it is one team in every output: the team attribute each device sends, the
manifest, the headcount rules, the team dashboard and the Intune plan's teams, all with its one
display spelling."""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
import unicodedata
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mdmgen import attributes, output
from mdmgen.publish.intune.fleet import read_fleet

from .collector_helpers import RULES, TEAMS, load_yaml, set_policy
from .conftest import SHIPPED_POLICY, run

LETTERS = "abcdeéèåøçñßü "
PLATFORMS = ("macos", "windows", "linux")
BASE = st.text(st.sampled_from(LETTERS), min_size=1, max_size=8)


@st.composite
def spelling(draw, name: str) -> str:
    """``name`` as HR or a policy author might type it."""
    case = draw(st.sampled_from([str, str.upper, str.lower, str.title, str.swapcase]))
    form = draw(st.sampled_from(["NFC", "NFD"]))
    pad = draw(st.sampled_from(["", " ", "  ", "\u00a0"]))
    return pad + unicodedata.normalize(form, case(name)) + draw(st.sampled_from(["", " "]))


@st.composite
def fleet(draw):
    """Two teams (their keys differ by construction: one starts with 'x', the other with 'z'), the
    policy naming the first in one spelling, and each row spelling its team its own way."""
    named, other = "x" + draw(BASE), "z" + draw(BASE)
    policy_key = draw(spelling(named))
    rows = [(named, draw(spelling(named))) for _ in range(draw(st.integers(1, 5)))]
    rows += [(other, draw(spelling(other))) for _ in range(draw(st.integers(1, 5)))]
    return policy_key, draw(st.permutations(rows))


def expected_display(policy_key: str, rows: list[tuple[str, str]]) -> dict[str, str]:
    """The display spelling of each team, worked out here independently of mdmgen."""
    shown = {"x": unicodedata.normalize("NFC", policy_key.strip())}
    written = Counter(unicodedata.normalize("NFC", cell.strip()) for base, cell in rows if base[0] == "z")
    shown["z"] = sorted(written, key=lambda name: (-written[name], name))[0]
    return shown


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet())
def test_every_spelling_of_a_team_is_one_team_in_every_output(case):
    policy_key, rows = case
    display = expected_display(policy_key, rows)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "profiles").mkdir()
        (workdir / "inventory").mkdir()
        shutil.copy(SHIPPED_POLICY, workdir / "profiles" / "policy.yaml")
        set_policy(workdir)
        path = workdir / "profiles" / "policy.yaml"
        team_layer = ("teams:\n  " + json.dumps(policy_key)
                      + ":\n    settings:\n      env:\n        OTEL_SERVICE_NAME: named\n")
        path.write_text("intune: {}\n" + path.read_text().replace("teams: {}\n", team_layer), encoding="utf-8")
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["serial_number", "platform", "user_email", "team"])
        serial_team = {}
        for i, (base, cell) in enumerate(rows):
            serial_team[f"D{i:03d}"] = base[0]
            writer.writerow([f"D{i:03d}", PLATFORMS[i % len(PLATFORMS)], f"u{i}@example.com", cell])
        (workdir / "inventory" / "devices.csv").write_text(buffer.getvalue(), encoding="utf-8")
        result = run(workdir, "compile", "--json")
        assert result.exit_code == 0, result.stderr
        out = workdir / "output"

        for serial, which in serial_team.items():
            env = json.loads((out / "devices" / serial / "managed-settings.json").read_text())["env"]
            assert attributes.decode(env["OTEL_RESOURCE_ATTRIBUTES"])["team"] == display[which]
            assert (env.get("OTEL_SERVICE_NAME") == "named") == (which == "x")
        manifest = json.loads((out / "manifest.json").read_text())
        assert {s: d["team"] for s, d in manifest["devices"].items()} == {
            s: display[w] for s, w in serial_team.items()}
        headcount = {r["labels"]["team"]: r["expr"] for g in load_yaml(out / RULES)["groups"] for r in g["rules"]
                     if r.get("record") == "mdmgen:claude_code_enrolled_users"}
        counts = Counter(serial_team.values())
        assert headcount == {display[w]: f"vector({n})" for w, n in counts.items()}
        dashboard = json.loads((out / TEAMS).read_text())
        variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "team")
        assert sorted(o["text"] for o in variable["options"]) == sorted(display.values())
        intune = read_fleet(output.read(out))  # what `publish intune` plans from: one team, one profile
        macs_and_pcs = {w for i, (s, w) in enumerate(serial_team.items()) if PLATFORMS[i % len(PLATFORMS)] != "linux"}
        assert intune.teams == sorted(display[w] for w in macs_and_pcs)
        folded = json.loads(result.stdout)["team_spellings"]
        event(f"spellings folded: {sum(len(v) for v in folded.values()) > 0}")
