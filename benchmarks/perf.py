"""Performance runner: mdmgen against the plain loop and the copy floor, side by side, per fleet size.

    .venv/bin/python benchmarks/perf.py --devices 10000 100000 --json perf.json

For each N it generates a fleet (``benchmarks/fleet.py``, the shipped policy) and measures, in
this order and in one run:

- the plain loop (``benchmarks/baseline.py``) into an empty folder: the baseline;
- a full ``mdmgen compile`` into an empty folder;
- ``cp -r`` of the tree that compile produced: the floor, writing the same files with no work;
- a no-change recompile;
- a recompile after ``mutate(1%)`` moved ⌈N/100⌉ rows to another team.

Each measurement is its own child process, reaped with ``os.wait4``, so its peak resident
memory is its own: ``getrusage(RUSAGE_CHILDREN)`` keeps the maximum over every child so far, so
sequential children cannot be told apart with it. Wall time is ``time.perf_counter`` around
the child, interpreter start-up included, as a nightly job sees it.

Shared machines are noisy, so the targets are ratios to figures measured in the same run,
never absolute times. The targets are set at 100,000 devices; at other sizes the same checks
are shown as an indication. This is a measurement, not a test: it exits 0 whether or not the
targets are met, and says which are not. A run that could not measure (a compile that failed)
is reported as an error in the table and the JSON, and also exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from fleet import changed_count, generate, mutate, write_csv, write_fleet

ROOT = Path(__file__).resolve().parents[1]
BASELINE = Path(__file__).with_name("baseline.py")
TARGET_DEVICES = 100_000
MEMORY_LIMIT_MIB = 1024.0

FIGURES = ("plain_loop", "full_compile", "copy_floor", "no_change_recompile", "one_percent_recompile")
LABELS = {
    "plain_loop": "plain loop (baseline)",
    "full_compile": "full compile, empty folder",
    "copy_floor": "cp -r of the tree (floor)",
    "no_change_recompile": "no-change recompile",
    "one_percent_recompile": "1% change recompile",
}
# (ratio name, upper bound): every bound must hold for the figure to meet its target.
RATIO_TARGETS: dict[str, tuple[tuple[str, float], ...]] = {
    "full_compile": (("plain_loop", 0.5), ("copy_floor", 1.5)),
    "no_change_recompile": (("plain_loop", 0.05),),
    "one_percent_recompile": (("plain_loop", 0.1),),
}
MDMGEN_FIGURES = ("full_compile", "no_change_recompile", "one_percent_recompile")


@dataclass
class Measurement:
    """One child process: its wall time, its own peak RSS, and what it printed."""

    seconds: float
    peak_rss_mib: float
    returncode: int
    stdout: str
    stderr: str


def measure(argv: Sequence[str], cwd: Path) -> Measurement:
    """Run one child and reap it with ``os.wait4``, which returns that child's own rusage.

    Output goes to files, not pipes: a child that fills a pipe nobody reads would block, and
    reading pipes concurrently would put the runner's own work inside the timed interval."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen(list(argv), cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped already: Popen must not wait again
        out.seek(0)
        err.seek(0)
        # ru_maxrss is in KiB on Linux (bytes on macOS).
        rss_kib = usage.ru_maxrss / 1024 if sys.platform == "darwin" else usage.ru_maxrss
        return Measurement(seconds=seconds, peak_rss_mib=rss_kib / 1024, returncode=child.returncode,
                           stdout=out.read().decode("utf-8", "replace"), stderr=err.read().decode("utf-8", "replace"))


@dataclass
class SizeResult:
    """Everything measured for one fleet size."""

    devices: int
    changed_rows: int
    figures: dict[str, Measurement] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def compile_argv(work: Path) -> list[str]:
    return [sys.executable, "-m", "mdmgen", "compile", "--inventory", str(work / "fleet" / "inventory"),
            "--profiles", str(work / "fleet" / "profiles"), "--out", str(work / "out"), "--json", "--quiet"]


def tree_size(folder: Path) -> tuple[int, int]:
    """(files, bytes) of a tree, for the JSON: what the copy floor had to write."""
    files = size = 0
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            files += 1
            size += os.lstat(os.path.join(dirpath, name)).st_size
    return files, size


def run_size(devices: int, seed: int, percent: float, base: Path) -> SizeResult:
    """Measure every figure for one N in a fresh folder, removed afterwards."""
    result = SizeResult(devices=devices, changed_rows=changed_count(devices, percent))
    work = Path(tempfile.mkdtemp(prefix=f"mdmgen-perf-{devices}-", dir=base))
    try:
        rows = generate(devices, seed)
        inventory = write_fleet(work / "fleet", rows)
        steps: list[tuple[str, list[str]]] = [
            ("plain_loop", [sys.executable, str(BASELINE), "--inventory", str(inventory),
                            "--profiles", str(work / "fleet" / "profiles"), "--out", str(work / "plain")]),
            ("full_compile", compile_argv(work)),
            ("copy_floor", ["cp", "-r", str(work / "out"), str(work / "copy")]),
            ("no_change_recompile", compile_argv(work)),
        ]
        for name, argv in steps:
            if not record(result, name, measure(argv, work)):
                return result
            if name == "copy_floor":
                result.checks["tree_files"], result.checks["tree_bytes"] = tree_size(work / "copy")
                shutil.rmtree(work / "copy")  # not needed again; keeps a 100k run's disk use down
                shutil.rmtree(work / "plain")
        write_csv(inventory, mutate(rows, percent, seed=seed))
        record(result, "one_percent_recompile", measure(compile_argv(work), work))
        summarise_compiles(result)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def record(result: SizeResult, name: str, measured: Measurement) -> bool:
    """Keep a measurement; a failed child makes the rest of this size meaningless."""
    result.figures[name] = measured
    if measured.returncode != 0:
        result.error = f"{LABELS[name]} exited {measured.returncode}: {measured.stderr.strip()[-2000:]}"
        return False
    return True


def summarise_compiles(result: SizeResult) -> None:
    """What each compile says it did: proof the recompiles did the work they are meant to."""
    for name in MDMGEN_FIGURES:
        summary = json.loads(result.figures[name].stdout)
        changes = summary["changes"]
        result.checks[name] = {"devices": summary["devices"], "rendered": summary["rendered"],
                               "added": len(changes["added"]), "changed": len(changes["changed"]),
                               "removed": len(changes["removed"]), "written": changes["written"]}


def ratios(result: SizeResult, name: str) -> dict[str, float | None]:
    seconds = result.figures[name].seconds
    out: dict[str, float | None] = {}
    for floor in ("plain_loop", "copy_floor"):
        reference = result.figures.get(floor)
        out[floor] = seconds / reference.seconds if reference and reference.seconds > 0 else None
    return out


def targets(result: SizeResult, name: str) -> list[dict[str, Any]]:
    """Each target of a figure with whether it is met (None when it could not be computed)."""
    checks: list[dict[str, Any]] = []
    figure_ratios = ratios(result, name)
    for reference, bound in RATIO_TARGETS.get(name, ()):
        ratio = figure_ratios[reference]
        checks.append({"what": f"<= {bound}x {reference.replace('_', ' ')}", "bound": bound, "of": reference,
                       "value": ratio, "met": None if ratio is None else ratio <= bound})
    if name in MDMGEN_FIGURES:
        rss = result.figures[name].peak_rss_mib
        checks.append({"what": f"peak RSS < {MEMORY_LIMIT_MIB:g} MiB", "bound": MEMORY_LIMIT_MIB, "of": "MiB",
                       "value": rss, "met": rss < MEMORY_LIMIT_MIB})
    return checks


def to_json(results: Sequence[SizeResult], seed: int, percent: float) -> dict[str, Any]:
    sizes = []
    for result in results:
        figures = {}
        for name in FIGURES:
            if name not in result.figures:
                continue
            measured = result.figures[name]
            figures[name] = {"label": LABELS[name], "seconds": measured.seconds,
                             "peak_rss_mib": measured.peak_rss_mib, "returncode": measured.returncode,
                             "ratio_to_plain_loop": ratios(result, name)["plain_loop"],
                             "ratio_to_copy_floor": ratios(result, name)["copy_floor"],
                             "targets": targets(result, name)}
        sizes.append({"devices": result.devices, "changed_rows": result.changed_rows,
                      "targets_apply": result.devices == TARGET_DEVICES, "error": result.error,
                      "checks": result.checks, "figures": figures})
    return {"machine": machine(), "seed": seed, "change_percent": percent,
            "target_devices": TARGET_DEVICES, "sizes": sizes, "unmet": unmet(results)}


def machine() -> dict[str, Any]:
    """What the ratios were measured on: they depend on cores, Python and how busy the machine is."""
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {"nproc": os.cpu_count(), "python": platform.python_version(),
            "implementation": platform.python_implementation(), "system": platform.platform(),
            "loadavg_at_end": load}


def unmet(results: Sequence[SizeResult]) -> list[str]:
    lines = []
    for result in results:
        if result.error:
            lines.append(f"N={result.devices}: not measured: {result.error.splitlines()[0]}")
        for name in MDMGEN_FIGURES:
            if name in result.figures:
                lines += [f"N={result.devices}: {LABELS[name]}: {check['what']} (got {fmt(check['value'])})"
                          for check in targets(result, name) if check["met"] is False]
    return lines


def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def table(result: SizeResult) -> str:
    """The Markdown table for one N, ratios from this run only."""
    lines = ["| Figure | Seconds | × plain loop | × copy floor | Peak RSS MiB | Target | Met? |",  # noqa: RUF001
             "|---|---:|---:|---:|---:|---|---|"]
    for name in FIGURES:
        if name not in result.figures:
            continue
        measured = result.figures[name]
        figure_ratios = ratios(result, name)
        checks = targets(result, name)
        target = ", ".join(check["what"] for check in checks) or "—"
        met = "—" if not checks else ("yes" if all(c["met"] for c in checks) else
                                      "no: " + ", ".join(c["what"] for c in checks if c["met"] is False))
        lines.append(f"| {LABELS[name]} | {measured.seconds:.2f} | {fmt(figure_ratios['plain_loop'])} | "
                     f"{fmt(figure_ratios['copy_floor'])} | {measured.peak_rss_mib:.0f} | {target} | {met} |")
    return "\n".join(lines)


def report(results: Sequence[SizeResult], seed: int) -> str:
    info = machine()
    parts = []
    for result in results:
        scope = "the targets' size" if result.devices == TARGET_DEVICES else \
            f"targets are set at {TARGET_DEVICES:,}; shown here as an indication"
        parts.append(f"### N = {result.devices:,} (seed {seed}, {result.changed_rows} rows changed; {scope})\n")
        parts.append(f"Machine: {info['nproc']} cores, Python {info['python']}, "
                     f"load average {', '.join(f'{x:.1f}' for x in info['loadavg_at_end'] or [])}\n")
        parts.append(table(result))
        if result.checks.get("tree_files"):
            mib = result.checks["tree_bytes"] / 2**20
            parts.append(f"\nTree: {result.checks['tree_files']:,} files, {mib:.1f} MiB")
        if result.error:
            parts.append(f"\nERROR: {result.error}")
        parts.append("")
    missing = unmet(results)
    parts.append("Targets not met:\n" + "\n".join(f"- {line}" for line in missing) if missing else "All targets met.")
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--change-percent", type=float, default=1.0, help="rows changed before the last recompile")
    parser.add_argument("--json", type=Path, default=None, help="also save the raw numbers and ratios here")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the fleets are built (default: the system temp folder); 100,000 devices "
                             "need a few GB")
    args = parser.parse_args(argv)
    base = args.workdir or Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    results = []
    for devices in args.devices:
        print(f"measuring N={devices:,} ...", file=sys.stderr, flush=True)
        results.append(run_size(devices, args.seed, args.change_percent, base))
    print(report(results, args.seed))
    if args.json:
        args.json.write_text(json.dumps(to_json(results, args.seed, args.change_percent), indent=2,
                                        ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
