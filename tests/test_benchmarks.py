"""The performance runner and its fleet generator work; how fast anything is, is not tested.

Times on a shared machine are noise, so these tests never compare a duration with a number:
they check that the runner measures every figure, that its ratios are its own raw seconds
divided, and that the generator gives the same bytes for the same seed and changes exactly
the rows it promises.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import fleet

FIGURES = {"plain_loop", "full_compile", "copy_floor", "no_change_recompile", "one_percent_recompile"}


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_runner_measures_every_figure_with_consistent_ratios(tmp_path):
    out = tmp_path / "perf.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "perf.py"), "--devices", "200",
                             "--repeat", "2", "--json", str(out), "--workdir", str(tmp_path / "work"),
                             "--equivalence-at", "200"],
                            capture_output=True, text=True, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["machine"]["nproc"] >= 1 and data["machine"]["python"]
    [size] = data["sizes"]
    assert size["devices"] == 200 and size["changed_rows"] == 2 and size["error"] is None
    figures = size["figures"]
    assert set(figures) == FIGURES
    # The tree the fast paths left after the recompiles is the one a compile without them writes.
    assert size["checks"]["fastpath_equivalence"]["identical"] is True
    assert size["checks"]["fastpath_equivalence"]["files"] > 200
    plain, floor = figures["plain_loop"]["seconds"], figures["copy_floor"]["seconds"]
    for name, figure in figures.items():
        assert figure["returncode"] == 0, name
        assert figure["seconds"] > 0 and figure["peak_rss_mib"] > 0, name
        assert min(figure["samples_seconds"]) <= figure["seconds"] <= max(figure["samples_seconds"]), name
        assert figure["peak_rss_mib"] == max(figure["samples_peak_rss_mib"]), name
        for ratio, seconds, plain_seconds in zip(figure["rounds_ratio_to_plain_loop"], figure["samples_seconds"],
                                                 figures["plain_loop"]["samples_seconds"], strict=True):
            assert ratio == pytest.approx(seconds / plain_seconds), name
        assert figure["ratio_to_plain_loop"] == pytest.approx(figure["seconds"] / plain), name
        assert figure["ratio_to_copy_floor"] == pytest.approx(figure["seconds"] / floor), name
        for target in figure["targets"]:
            assert target["met"] == (target["value"] <= target["bound"] if target["of"] != "MiB"
                                     else target["value"] < target["bound"]), (name, target)
    assert figures["plain_loop"]["ratio_to_plain_loop"] == pytest.approx(1.0)
    assert all(len(f["samples_seconds"]) == 2 for f in figures.values()) and data["repeat"] == 2
    assert {t["of"] for t in figures["full_compile"]["targets"]} == {"plain_loop", "copy_floor", "MiB"}
    # The recompiles did what they are named for, or their times would mean nothing.
    checks = size["checks"]
    assert checks["full_compile"]["rendered"] == 200
    assert checks["no_change_recompile"]["rendered"] == 0 and not checks["no_change_recompile"]["written"]
    assert checks["one_percent_recompile"]["rendered"] == 2 == checks["one_percent_recompile"]["changed"]
    assert checks["tree_files"] > 200
    # Every unmet target is said in the output, and only those.
    unmet = [(name, t) for name, f in figures.items() for t in f["targets"] if t["met"] is False]
    assert len(data["unmet"]) == len(unmet)
    assert ("Targets not met:" in result.stdout) == bool(unmet)
    assert "| Figure | Seconds |" in result.stdout


def test_nothing_is_removed_until_every_measurement_is_done(tmp_path, monkeypatch):
    """On ext4 without a journal, files created within minutes of removing a tree are slow to
    create (the kernel scans past every inode it freed: 3.3 times slower, measured here), so a
    figure measured after a removal would pay for it. The runner removes its trees only at the end."""
    import perf

    events: list[str] = []
    measure, rmtree = perf.measure, perf.shutil.rmtree
    monkeypatch.setattr(perf, "measure", lambda *args: (events.append("measure"), measure(*args))[1])
    monkeypatch.setattr(perf.shutil, "rmtree", lambda *args, **kwargs: (events.append("remove"),
                                                                        rmtree(*args, **kwargs))[1])
    assert perf.main(["--devices", "30", "30", "--repeat", "2", "--workdir", str(tmp_path),
                      "--equivalence-at", "30"]) == 0
    assert events.count("measure") == 2 * 2 * 5  # two sizes, two rounds, five figures
    assert "remove" in events and events.index("remove") > len(events) - 1 - events[::-1].index("measure")
    assert list(tmp_path.iterdir()) == []


def test_against_measures_the_other_code_in_the_same_rounds(tmp_path):
    """``--against SRC`` times each mdmgen figure again with the package in SRC (here this very
    checkout's, the one a new worktree would hold) and reports this checkout's time over its."""
    out = tmp_path / "perf.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "perf.py"), "--devices", "40", "--repeat", "2",
                             "--json", str(out), "--workdir", str(tmp_path / "work"), "--equivalence-at", "0",
                             "--against", str(ROOT / "src")], capture_output=True, text=True, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["against"] == str(ROOT / "src")
    figures = data["sizes"][0]["figures"]
    for name in ("full_compile", "no_change_recompile", "one_percent_recompile"):
        mine, theirs = figures[name], figures[name + "_against"]
        assert theirs["returncode"] == 0 and len(theirs["samples_seconds"]) == 2
        assert mine["ratio_to_against"] == pytest.approx(mine["seconds"] / theirs["seconds"])
        for ratio, seconds, other in zip(mine["rounds_ratio_to_against"], mine["samples_seconds"],
                                         theirs["samples_seconds"], strict=True):
            assert ratio == pytest.approx(seconds / other)
    assert "This checkout against the code at" in result.stdout and "| Figure | This checkout, s |" in result.stdout
    # Both codes' recompiles did their work in every round, whichever of the two went first.
    for name in ("one_percent_recompile", "one_percent_recompile_against"):
        assert data["sizes"][0]["checks"]["rendered_each_round"][name] == [1, 1]


def test_against_refuses_a_folder_without_mdmgen(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "perf.py"), "--devices", "10",
                             "--against", str(tmp_path)], capture_output=True, text=True, check=False, cwd=tmp_path)
    assert result.returncode == 2
    assert f"--against {tmp_path}: mdmgen is not imported from there" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fleet.py"), "--devices", "300",
                        "--seed", str(seed), "--out", str(tmp_path / name)], check=True, capture_output=True)
    csv_a, csv_b, csv_c = ((tmp_path / n / "inventory" / "devices.csv").read_bytes() for n in "abc")
    assert csv_a == csv_b != csv_c
    assert (tmp_path / "a" / "profiles" / "policy.yaml").read_bytes() == \
        (ROOT / "profiles" / "policy.yaml").read_bytes()


def test_the_fleet_has_every_platform_and_the_awkward_team_names(tmp_path):
    fleet.write_csv(tmp_path / "devices.csv", fleet.generate(200, seed=3))
    rows = read_rows(tmp_path / "devices.csv")
    assert len(rows) == 200 and len({r["serial_number"] for r in rows}) == 200
    assert {r["platform"] for r in rows[:4]} == set(fleet.PLATFORMS)
    teams = "".join(fleet.TEAMS)
    assert "R&D, Berlin" in fleet.TEAMS
    assert all(c in teams for c in ('"', "=", "%", "ü"))
    assert {r["team"] for r in rows} <= set(fleet.TEAMS)
    # A smaller fleet is a prefix of a larger one with the same seed.
    assert fleet.generate(50, seed=3) == fleet.generate(200, seed=3)[:50]


@pytest.mark.parametrize(("devices", "percent"), [(200, 1), (10_000, 1), (10_000, "0.1"), (333, 2.5), (7, 50)])
def test_mutate_moves_exactly_the_promised_rows_to_another_team(tmp_path, devices, percent):
    rows = fleet.generate(devices, seed=1)
    moved = fleet.mutate(rows, percent, seed=1)
    expected = math.ceil(devices * float(percent) / 100 - 1e-9)
    assert fleet.changed_count(devices, percent) == expected
    differing = [(a, b) for a, b in zip(rows, moved, strict=True) if a != b]
    assert len(differing) == expected
    assert all(a.team != b.team and a.serial_number == b.serial_number and a.platform == b.platform
               for a, b in differing)
    assert fleet.mutate(rows, percent, seed=1) == moved  # deterministic
    assert fleet.mutate(rows, percent, seed=1, generation=2) != moved or expected == 0
    fleet.write_csv(tmp_path / "before.csv", rows)
    fleet.write_csv(tmp_path / "after.csv", moved)
    before, after = read_rows(tmp_path / "before.csv"), read_rows(tmp_path / "after.csv")
    assert sum(a != b for a, b in zip(before, after, strict=True)) == expected


def test_the_plain_loop_writes_what_mdmgen_writes_for_the_shipped_policy(tmp_path):
    """The baseline is only fair if it writes the same files: here, byte for byte."""
    inventory = fleet.write_fleet(tmp_path, fleet.generate(40, seed=2))
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "baseline.py"), "--inventory", str(inventory),
                    "--profiles", str(tmp_path / "profiles"), "--out", str(tmp_path / "plain")],
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "mdmgen", "compile", "--quiet"], cwd=tmp_path, check=True,
                   capture_output=True)
    compiled = sorted(p.relative_to(tmp_path / "output") for p in (tmp_path / "output" / "devices").rglob("*")
                      if p.is_file())
    plain = sorted(p.relative_to(tmp_path / "plain") for p in (tmp_path / "plain" / "devices").rglob("*")
                   if p.is_file())
    assert compiled == plain and any(p.name.endswith(".mobileconfig") for p in plain)
    for path in plain:
        assert (tmp_path / "plain" / path).read_bytes() == (tmp_path / "output" / path).read_bytes(), path
