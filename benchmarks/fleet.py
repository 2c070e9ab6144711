"""Deterministic synthetic fleets for benchmarks and large-scale tests.

    .venv/bin/python benchmarks/fleet.py --devices 10000 --seed 0 --out /tmp/fleet

writes ``/tmp/fleet/inventory/devices.csv`` and a copy of the shipped ``profiles/``, so the
folder can be compiled as it is (``cd /tmp/fleet && mdmgen compile``).

Every value of a row is derived from ``sha256(seed, row number, purpose)``, not from
``random``: only ``random.random()`` is promised to repeat across Python versions, and a hash
makes row *i* independent of N, so a smaller fleet is a prefix of a larger one with the same
seed (``benchmarks/publish_s3.py`` relies on that to remove 30% of a fleet). The same seed and
N therefore give the same bytes on every machine and Python version.

The fleet has all four platforms (the first four rows are one of each, so even a tiny fleet
has them) and team names that break naive CSV, attribute and template handling: a comma, double
quotes, non-ASCII letters, ``=`` and ``%``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLATFORMS = ("macos", "linux", "windows", "wsl")
# Roughly a developer fleet: mostly Macs, then Windows, Linux and WSL (weights out of 10).
PLATFORM_WEIGHTS = ("macos",) * 4 + ("windows",) * 3 + ("linux",) * 2 + ("wsl",)
TEAMS = ("Platform Eng", "R&D, Berlin", "sales=emea", "Data Science", "Zürich Ops", "Mobile",
         "Security", "Finance Engineering", 'Ops "Night" Shift', "100% Uptime", "東京 Platform",
         "=SUM(A1) Analysts", "Customer Success", "Infra; Tools", "São Paulo Sales", "QA & Release")
COLUMNS = ("serial_number", "platform", "user_email", "team", "cost_center", "status")
SERIAL_PREFIX = {"macos": "C02", "linux": "LNX-", "windows": "WIN-", "wsl": "WSL-"}
FIRST_NAMES = ("alice", "bob", "carla", "dmitri", "erin", "farid", "grace", "hiro", "ines", "jonas")


@dataclass(frozen=True)
class Row:
    """One inventory row, as the HR export would have it."""

    serial_number: str
    platform: str
    user_email: str
    team: str
    cost_center: str
    status: str = "active"

    def values(self) -> tuple[str, ...]:
        return tuple(getattr(self, name) for name in COLUMNS)


def _draw(seed: int, index: int, purpose: str) -> int:
    """A stable 64-bit number for one decision about one row (see the module docstring)."""
    digest = hashlib.sha256(f"{seed}:{index}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def make_row(index: int, seed: int = 0) -> Row:
    """Row ``index`` of every fleet generated with ``seed``."""
    platform = PLATFORMS[index] if index < len(PLATFORMS) else \
        PLATFORM_WEIGHTS[_draw(seed, index, "platform") % len(PLATFORM_WEIGHTS)]
    name = FIRST_NAMES[_draw(seed, index, "name") % len(FIRST_NAMES)]
    return Row(serial_number=f"{SERIAL_PREFIX[platform]}{index:07d}",
               platform=platform,
               user_email=f"{name}.{index}+dev@example.com",
               team=TEAMS[_draw(seed, index, "team") % len(TEAMS)],
               cost_center=f"CC-{_draw(seed, index, 'cost') % 50:02d}")


def generate(devices: int, seed: int = 0) -> list[Row]:
    """An N-device fleet; the same arguments always give the same rows."""
    return [make_row(i, seed) for i in range(devices)]


def changed_count(devices: int, percent: float | int | str | Fraction) -> int:
    """⌈N·p/100⌉, computed exactly (1% of 10,000 is 100, not 101 by float rounding)."""
    share = Fraction(str(percent)) if not isinstance(percent, Fraction) else percent
    if share < 0:
        raise ValueError("percent must not be negative")
    return min(devices, math.ceil(devices * share / 100))


def mutate(rows: Sequence[Row], percent: float | int | str | Fraction, *, seed: int = 0,
           generation: int = 1) -> list[Row]:
    """Move exactly ⌈N·percent/100⌉ rows to another team, deterministically.

    A team move is what a nightly HR export most often changes, and it changes one device's
    settings (its ``team`` attribute) without changing which devices exist. The rows to move
    are the ones with the smallest draws for this ``seed`` and ``generation``, so a second
    mutation of the same fleet (``generation=2``) moves a different, equally sized set."""
    count = changed_count(len(rows), percent)
    order = sorted(range(len(rows)), key=lambda i: _draw(seed, i, f"mutate-{generation}"))
    moved = list(rows)
    for index in order[:count]:
        current = TEAMS.index(rows[index].team) if rows[index].team in TEAMS else -1
        step = 1 + _draw(seed, index, f"move-{generation}") % (len(TEAMS) - 1)
        team = TEAMS[(current + step) % len(TEAMS)]
        if team == rows[index].team:  # only when the old team was not one of TEAMS
            team = TEAMS[(current + step + 1) % len(TEAMS)]
        moved[index] = replace(rows[index], team=team)
    return moved


def write_csv(path: Path, rows: Sequence[Row]) -> None:
    """The CSV as an HR export writes it: a header row, minimal quoting, LF line endings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(row.values() for row in rows)


def write_fleet(out: Path, rows: Sequence[Row], *, profiles: Path = ROOT / "profiles") -> Path:
    """``out/inventory/devices.csv`` plus a copy of the shipped policy; returns the CSV's path."""
    inventory = out / "inventory" / "devices.csv"
    write_csv(inventory, rows)
    shutil.copytree(profiles, out / "profiles", dirs_exist_ok=True)
    return inventory


def write_inventory(path: Path, devices: int, *, changed_row: int | None = None) -> None:
    """An N-device inventory (seed 0); ``changed_row`` gives that one row a team of its own.

    Kept for ``benchmarks/compile.py`` and ``benchmarks/publish_s3.py``, which change one row."""
    rows = generate(devices)
    if changed_row is not None:
        rows[changed_row] = replace(rows[changed_row], team="Moved Team")
    write_csv(path, rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="folder for inventory/ and profiles/")
    parser.add_argument("--mutate", metavar="PERCENT", default=None,
                        help="then move this percentage of the rows to another team (see mutate())")
    args = parser.parse_args(argv)
    rows = generate(args.devices, args.seed)
    if args.mutate is not None:
        rows = mutate(rows, args.mutate, seed=args.seed)
    print(write_fleet(args.out, rows))


if __name__ == "__main__":
    main()
