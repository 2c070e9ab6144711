"""Generate synthetic fleets for benchmarks and large-scale tests (deterministic, no randomness)."""

from __future__ import annotations

import csv
from pathlib import Path

PLATFORMS = ("macos", "linux", "windows", "wsl")
TEAMS = ("Platform Eng", "R&D, Berlin", "sales=emea", "Data Science", "Zürich Ops", "Mobile",
         "Security", "Finance Engineering")


def write_inventory(path: Path, devices: int, *, changed_row: int | None = None) -> None:
    """An N-device inventory; ``changed_row`` gives that one row a different team."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["serial_number", "platform", "user_email", "team", "cost_center"])
        for i in range(devices):
            team = TEAMS[i % len(TEAMS)]
            if i == changed_row:
                team = "Moved Team"
            writer.writerow([f"SN{i:07d}", PLATFORMS[i % 4], f"user{i}+dev@example.com", team, f"CC-{i % 50}"])
