"""Compile benchmark: full, no-change and one-row-change compiles of a synthetic fleet.

    .venv/bin/python benchmarks/compile.py --devices 20000

Times are wall-clock seconds of the real command (interpreter start-up included), reported
with their ratio to the full compile measured in the same run, since these machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from fleet import write_inventory

ROOT = Path(__file__).resolve().parents[1]


def timed_compile(workdir: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "mdmgen", "compile", "--json", "--quiet"], cwd=workdir,
                            capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"compile failed ({result.returncode}): {result.stderr}")
    return elapsed, json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        shutil.copytree(ROOT / "profiles", workdir / "profiles")
        inventory = workdir / "inventory" / "devices.csv"
        write_inventory(inventory, args.devices)
        full, _ = timed_compile(workdir)
        same, same_summary = timed_compile(workdir)
        write_inventory(inventory, args.devices, changed_row=args.devices // 2)
        one, one_summary = timed_compile(workdir)
        write_inventory(inventory, args.devices, changed_row=args.devices // 3)
        again, again_summary = timed_compile(workdir)
    print(f"devices: {args.devices}")
    print(f"full compile:        {full:7.2f} s  (1.00)")
    print(f"no-change compile:   {same:7.2f} s  ({same / full:.2f})  rendered {same_summary['rendered']}, "
          f"written {same_summary['changes']['written']}")
    print(f"one-row change:      {one:7.2f} s  ({one / full:.2f})  rendered {one_summary['rendered']}, "
          f"changed {one_summary['changes']['changed']}")
    print(f"next one-row change: {again:7.2f} s  ({again / full:.2f})  rendered {again_summary['rendered']}, "
          f"changed {again_summary['changes']['changed']}  (reuses the kept previous generation)")


if __name__ == "__main__":
    main()
