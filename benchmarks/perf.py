"""Performance runner: mdmgen against the plain loop and the copy floor, side by side, per fleet size.

    .venv/bin/python benchmarks/perf.py --devices 10000 100000 --json perf.json

For each N it generates a fleet (``benchmarks/fleet.py``, the shipped policy) and measures, in
this order and in one run, in ``--repeat`` identical rounds (default 3; the median time counts):

- the plain loop (``benchmarks/baseline.py``) into an empty folder: the baseline;
- a full ``mdmgen compile`` into an empty folder;
- ``cp -r`` of the tree that compile produced: the floor, writing the same files with no work;
- a no-change recompile;
- a recompile after ``mutate(1%)`` moved ⌈N/100⌉ rows to another team.

Dirty pages are written back (``sync``, untimed) before each measurement, so no figure pays
for the writeback of the one before. Nothing is removed until every size is measured: on ext4
without a journal, the kernel will not reuse an inode freed in the last minute (six while its
inode-table block is dirty), so a measurement that creates files soon after a tree was removed
scans past every freed inode first. Measured here: 120,000 files and folders took 13.7 s right
after removing as many, against 4.1 s. So a run keeps every round's trees on disk (about 3.5 GB
per round at 100,000 devices) and removes them at the end. Each measurement is its own child process, reaped with
``os.wait4``, so its peak resident memory is its own: ``getrusage(RUSAGE_CHILDREN)`` keeps the
maximum over every child so far, so sequential children cannot be told apart with it. Wall
time is ``time.perf_counter`` around the child, interpreter start-up included, as a nightly
job sees it.

With ``--against SRC`` (the ``src`` of another checkout, such as a ``git worktree`` of the commit
a published table was measured with) each mdmgen figure is measured again with that code, just
before or after this checkout's (taking turns), in the same round: two versions compared on the same disk in the same
minutes, rather than against numbers from another day.

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
import statistics
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
EQUIVALENCE_DEVICES = 10_000
"""The size at which the tree is compared with the fast paths on and off (``MDMGEN_NO_FASTPATH``)."""
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
AGAINST = "_against"
"""Suffix of a figure measured with the code at ``--against``, next to the same figure of this
checkout (see :func:`run_size`), in the same round and on the same inventory."""
LABELS.update({name + AGAINST: f"{LABELS[name]}, the code at --against" for name in MDMGEN_FIGURES})
ALL_FIGURES = FIGURES + tuple(name + AGAINST for name in MDMGEN_FIGURES)


@dataclass
class Measurement:
    """One child process: its wall time, its own peak RSS, and what it printed."""

    seconds: float
    peak_rss_mib: float
    returncode: int
    stdout: str
    stderr: str


def measure(argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> Measurement:
    """Run one child and reap it with ``os.wait4``, which returns that child's own rusage.

    Output goes to files, not pipes: a child that fills a pipe nobody reads would block, and
    reading pipes concurrently would put the runner's own work inside the timed interval."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen(list(argv), cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
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
    """Everything measured for one fleet size: every round's sample of every figure."""

    devices: int
    changed_rows: int
    samples: dict[str, list[Measurement]] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def seconds(self, name: str) -> float:
        """The median over the rounds: one slow round on a shared machine does not move it."""
        return statistics.median(m.seconds for m in self.samples[name])

    def peak_rss_mib(self, name: str) -> float:
        """The largest over the rounds: memory is a limit, so the worst round counts."""
        return max(m.peak_rss_mib for m in self.samples[name])


def compile_argv(fleet_dir: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "mdmgen", "compile", "--inventory", str(fleet_dir / "inventory"),
            "--profiles", str(fleet_dir / "profiles"), "--out", str(out), "--json", "--quiet"]


def tree_size(folder: Path) -> tuple[int, int]:
    """(files, bytes) of a tree, for the JSON: what the copy floor had to write."""
    files = size = 0
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            files += 1
            size += os.lstat(os.path.join(dirpath, name)).st_size
    return files, size


def settle() -> None:
    """Write back dirty pages before a measurement, untimed.

    On ext4 the kernel throttles a writer once enough pages are dirty, so without this a
    figure pays for the writeback of the step before it (or of the clean-up between rounds),
    and whichever runs first looks slow."""
    if hasattr(os, "sync"):
        os.sync()


def run_size(devices: int, seed: int, percent: float, work: Path, repeat: int,
             equivalence_at: int = EQUIVALENCE_DEVICES, against: dict[str, str] | None = None) -> SizeResult:
    """Measure every figure for one N, ``repeat`` identical rounds, in ``work`` (left for the
    caller to remove once every size is measured: see the module docstring). With ``against``
    (the environment of :func:`against_env`), each mdmgen figure is measured again with that
    code beside this checkout's, into its own output folder: after it in even rounds, before it
    in odd ones, so that neither always runs on the heels of the copy or of the other.

    Each round starts from the same inventory and empty output folders, so its samples are
    repeats of one another, not a drifting sequence."""
    result = SizeResult(devices=devices, changed_rows=changed_count(devices, percent))
    fleet_dir = work / "fleet"
    rows = generate(devices, seed)
    changed = mutate(rows, percent, seed=seed)
    inventory = write_fleet(fleet_dir, rows)
    for round_number in range(repeat):
        here = work / f"round-{round_number}"
        if round_number:
            write_csv(inventory, rows)
        here.mkdir()
        out = here / "out"
        steps: list[tuple[str, list[str], dict[str, str] | None]] = [
            ("plain_loop", [sys.executable, str(BASELINE), "--inventory", str(inventory),
                            "--profiles", str(fleet_dir / "profiles"), "--out", str(here / "plain")], None),
            ("full_compile", compile_argv(fleet_dir, out), None),
            ("copy_floor", ["cp", "-r", str(out), str(here / "copy")], None),
            ("no_change_recompile", compile_argv(fleet_dir, out), None),
            ("one_percent_recompile", compile_argv(fleet_dir, out), None),
        ]
        if against is not None:
            for name in MDMGEN_FIGURES:
                at = next(i for i, step in enumerate(steps) if step[0] == name)
                steps.insert(at + 1 - round_number % 2, (name + AGAINST, compile_argv(fleet_dir, here / "out-against"),
                                                          against))
        changed_rows_written = False
        for name, argv, env in steps:
            if name.startswith("one_percent_recompile") and not changed_rows_written:
                write_csv(inventory, changed)  # before the first of the two 1% recompiles
                changed_rows_written = True
            settle()
            if not record(result, name, measure(argv, here, env)):
                return result
            if name == "one_percent_recompile" and devices == equivalence_at and round_number == repeat - 1:
                result.checks["fastpath_equivalence"] = equivalence(fleet_dir, out, here / "slow")
            if name == "copy_floor":
                result.checks["tree_files"], result.checks["tree_bytes"] = tree_size(here / "copy")
    summarise_compiles(result)
    return result


def against_env(src: Path) -> dict[str, str] | str:
    """The environment in which ``python -m mdmgen`` runs the code in ``src`` (a folder holding
    the ``mdmgen`` package: the ``src`` of another checkout, such as a ``git worktree`` of the
    commit a published table was measured with), or why it does not."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    found = subprocess.run([sys.executable, "-c", "import mdmgen; print(mdmgen.__file__)"], env=env,
                           capture_output=True, text=True, check=False)
    where = Path(found.stdout.strip() or ".").resolve()
    if found.returncode != 0 or not where.is_relative_to(src.resolve()):
        return f"{src}: mdmgen is not imported from there (got {found.stdout.strip() or found.stderr.strip()[-200:]})"
    return env


def precompile(env: dict[str, str] | None = None) -> None:
    """Write the bytecode of the mdmgen package the children import (under ``env``), untimed: an
    installed package has it, and on a machine that sets PYTHONDONTWRITEBYTECODE every measured
    run would otherwise compile mdmgen's sources again (0.05 s of a 1.2 s night here)."""
    code = "import compileall, os, mdmgen; compileall.compile_dir(os.path.dirname(mdmgen.__file__), quiet=1)"
    subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=False)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of a tree by path, links not followed (a symlink is recorded as its target)."""
    files: dict[str, bytes] = {}
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            relpath = os.path.relpath(path, folder)
            files[relpath] = (b"symlink:" + os.fsencode(os.readlink(path)) if os.path.islink(path)
                              else Path(path).read_bytes())
    return files


def equivalence(fleet_dir: Path, fast_out: Path, slow_out: Path) -> dict[str, Any]:
    """Compile the same inventory from scratch with every fast path off (untimed) and compare its
    tree with the one the fast paths left after full, no-change and 1% recompiles: they must be
    byte-identical, or a fast path changed what is written."""
    env = {**os.environ, "MDMGEN_NO_FASTPATH": "1"}
    done = subprocess.run(compile_argv(fleet_dir, slow_out), env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"identical": False, "error": f"slow compile exited {done.returncode}: {done.stderr[-500:]}"}
    fast, slow = tree_bytes(fast_out), tree_bytes(slow_out)
    differing = sorted(set(fast) ^ set(slow)) + sorted(p for p in set(fast) & set(slow) if fast[p] != slow[p])
    return {"identical": not differing, "files": len(fast), "differing": differing[:10]}


def record(result: SizeResult, name: str, measured: Measurement) -> bool:
    """Keep a measurement; a failed child makes the rest of this size meaningless."""
    result.samples.setdefault(name, []).append(measured)
    if measured.returncode != 0:
        result.error = f"{LABELS[name]} exited {measured.returncode}: {measured.stderr.strip()[-2000:]}"
        return False
    return True


def summarise_compiles(result: SizeResult) -> None:
    """What each compile says it did: proof the recompiles did the work they are meant to."""
    for name in MDMGEN_FIGURES:
        summary = json.loads(result.samples[name][-1].stdout)
        changes = summary["changes"]
        result.checks[name] = {"devices": summary["devices"], "rendered": summary["rendered"],
                               "added": len(changes["added"]), "changed": len(changes["changed"]),
                               "removed": len(changes["removed"]), "written": changes["written"]}
    # Every round, for both codes with --against: a recompile that did not do its work measured nothing.
    result.checks["rendered_each_round"] = {
        name: [json.loads(m.stdout).get("rendered") for m in result.samples[name]]
        for name in ALL_FIGURES if name in result.samples and name.removesuffix(AGAINST) in MDMGEN_FIGURES}


def ratios(result: SizeResult, name: str) -> dict[str, float | None]:
    seconds = result.seconds(name)
    out: dict[str, float | None] = {}
    for floor in ("plain_loop", "copy_floor"):
        reference = result.seconds(floor) if floor in result.samples else 0.0
        out[floor] = seconds / reference if reference > 0 else None
    return out


def round_ratios(result: SizeResult, name: str, reference: str) -> list[float | None]:
    """Each round's time over the same round's ``reference``, for rounds that measured both."""
    pairs = zip(result.samples[name], result.samples.get(reference, []), strict=False)
    return [m.seconds / r.seconds if r.seconds > 0 else None for m, r in pairs]


def against_ratio(result: SizeResult, name: str) -> float | None:
    """This checkout's median time over the median of the code at ``--against`` (None: not measured)."""
    if name + AGAINST not in result.samples:
        return None
    reference = result.seconds(name + AGAINST)
    return result.seconds(name) / reference if reference > 0 else None


def targets(result: SizeResult, name: str) -> list[dict[str, Any]]:
    """Each target of a figure with whether it is met (None when it could not be computed)."""
    checks: list[dict[str, Any]] = []
    figure_ratios = ratios(result, name)
    for reference, bound in RATIO_TARGETS.get(name, ()):
        ratio = figure_ratios[reference]
        checks.append({"what": f"<= {bound}x {reference.replace('_', ' ')}", "bound": bound, "of": reference,
                       "value": ratio, "met": None if ratio is None else ratio <= bound})
    if name in MDMGEN_FIGURES:
        rss = result.peak_rss_mib(name)
        checks.append({"what": f"peak RSS < {MEMORY_LIMIT_MIB:g} MiB", "bound": MEMORY_LIMIT_MIB, "of": "MiB",
                       "value": rss, "met": rss < MEMORY_LIMIT_MIB})
    return checks


def to_json(results: Sequence[SizeResult], seed: int, percent: float, repeat: int,
            against: Path | None = None) -> dict[str, Any]:
    sizes = []
    for result in results:
        figures = {}
        for name in ALL_FIGURES:
            if name not in result.samples:
                continue
            samples = result.samples[name]
            figures[name] = {"label": LABELS[name], "seconds": result.seconds(name),
                             "samples_seconds": [m.seconds for m in samples],
                             "peak_rss_mib": result.peak_rss_mib(name),
                             "samples_peak_rss_mib": [m.peak_rss_mib for m in samples],
                             # Per round, against that round's own figures: on a machine whose
                             # speed drifts between rounds these vary less than the times do.
                             "rounds_ratio_to_plain_loop": round_ratios(result, name, "plain_loop"),
                             "rounds_ratio_to_copy_floor": round_ratios(result, name, "copy_floor"),
                             "returncode": next((m.returncode for m in samples if m.returncode), 0),
                             "ratio_to_plain_loop": ratios(result, name)["plain_loop"],
                             "ratio_to_copy_floor": ratios(result, name)["copy_floor"],
                             "targets": targets(result, name)}
            if name in MDMGEN_FIGURES and name + AGAINST in result.samples:
                figures[name]["ratio_to_against"] = against_ratio(result, name)
                figures[name]["rounds_ratio_to_against"] = round_ratios(result, name, name + AGAINST)
        sizes.append({"devices": result.devices, "changed_rows": result.changed_rows,
                      "targets_apply": result.devices == TARGET_DEVICES, "error": result.error,
                      "checks": result.checks, "figures": figures})
    return {"machine": machine(), "seed": seed, "change_percent": percent, "repeat": repeat,
            "against": str(against) if against else None, "target_devices": TARGET_DEVICES, "sizes": sizes,
            "unmet": unmet(results)}


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
        if result.checks.get("fastpath_equivalence", {}).get("identical") is False:
            lines.append(f"N={result.devices}: the tree differs with the fast paths off (MDMGEN_NO_FASTPATH=1)")
        for name in MDMGEN_FIGURES:
            if name in result.samples:
                lines += [f"N={result.devices}: {LABELS[name]}: {check['what']} (got {fmt(check['value'])})"
                          for check in targets(result, name) if check["met"] is False]
    return lines


def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def table(result: SizeResult) -> str:
    """The Markdown table for one N, ratios from this run only."""
    lines = ["| Figure | Seconds | × plain loop | × copy floor | Peak RSS MiB | Target | Met? |",  # noqa: RUF001
             "|---|---:|---:|---:|---:|---|---|"]
    for name in ALL_FIGURES:
        if name not in result.samples:
            continue
        figure_ratios = ratios(result, name)
        checks = targets(result, name) if name in FIGURES else []
        target = ", ".join(check["what"] for check in checks) or "—"
        met = "—" if not checks else ("yes" if all(c["met"] for c in checks) else
                                      "no: " + ", ".join(c["what"] for c in checks if c["met"] is False))
        lines.append(f"| {LABELS[name]} | {result.seconds(name):.2f} | {fmt(figure_ratios['plain_loop'])} | "
                     f"{fmt(figure_ratios['copy_floor'])} | {result.peak_rss_mib(name):.0f} | {target} | {met} |")
    return "\n".join(lines)


def against_table(result: SizeResult) -> str:
    """This checkout against the code at ``--against``, figure by figure, with each round's own
    ratio: below 1 is faster."""
    lines = ["| Figure | This checkout, s | --against, s | Ratio | Each round |",
             "|---|---:|---:|---:|---|"]
    for name in MDMGEN_FIGURES:
        if name + AGAINST in result.samples and name in result.samples:
            rounds = " / ".join(fmt(r) for r in round_ratios(result, name, name + AGAINST))
            lines.append(f"| {LABELS[name]} | {result.seconds(name):.2f} | {result.seconds(name + AGAINST):.2f} | "
                         f"{fmt(against_ratio(result, name))} | {rounds} |")
    return "\n".join(lines)


def report(results: Sequence[SizeResult], seed: int, repeat: int, against: Path | None = None) -> str:
    info = machine()
    parts = []
    for result in results:
        scope = "the targets' size" if result.devices == TARGET_DEVICES else \
            f"targets are set at {TARGET_DEVICES:,}; shown here as an indication"
        parts.append(f"### N = {result.devices:,} (seed {seed}, {result.changed_rows} rows changed; {scope})\n")
        parts.append(f"Median of {repeat} rounds. Machine: {info['nproc']} cores, Python {info['python']}, "
                     f"load average {', '.join(f'{x:.1f}' for x in info['loadavg_at_end'] or [])}\n")
        parts.append(table(result))
        if against is not None:
            parts.append(f"\nThis checkout against the code at {against}, in the same rounds:\n")
            parts.append(against_table(result))
        if result.checks.get("tree_files"):
            mib = result.checks["tree_bytes"] / 2**20
            parts.append(f"\nTree: {result.checks['tree_files']:,} files, {mib:.1f} MiB")
        same = result.checks.get("fastpath_equivalence")
        if same is not None:
            verdict = (f"byte-identical ({same['files']:,} files)" if same["identical"] else
                       f"DIFFERENT: {same.get('error') or ', '.join(same['differing'])}")
            parts.append(f"\nTree with fast paths on (after the recompiles) vs MDMGEN_NO_FASTPATH=1 from scratch: "
                         f"{verdict}")
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
    parser.add_argument("--repeat", type=int, default=3,
                        help="identical rounds per N; the table shows the median time and the largest RSS")
    parser.add_argument("--equivalence-at", type=int, default=EQUIVALENCE_DEVICES, metavar="N",
                        help="at this fleet size, also compare the tree with MDMGEN_NO_FASTPATH=1 (untimed)")
    parser.add_argument("--json", type=Path, default=None, help="also save the raw numbers and ratios here")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the fleets are built (default: the system temp folder); 100,000 devices "
                             "need about 3.5 GB per round, kept until the end")
    parser.add_argument("--against", type=Path, default=None, metavar="SRC",
                        help="also measure each mdmgen figure with the mdmgen package in SRC (the src folder "
                             "of another checkout), in the same rounds, and show this checkout's time over its")
    args = parser.parse_args(argv)
    against = None
    if args.against is not None:
        against = against_env(args.against)
        if isinstance(against, str):
            parser.error(f"--against {against}")
    base = args.workdir or Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    precompile()
    if against is not None:
        precompile(against)
    results = []
    work = Path(tempfile.mkdtemp(prefix="mdmgen-perf-", dir=base))
    try:
        for index, devices in enumerate(args.devices):
            print(f"measuring N={devices:,} ...", file=sys.stderr, flush=True)
            size_work = work / f"{index}-n{devices}"
            size_work.mkdir()
            results.append(run_size(devices, args.seed, args.change_percent, size_work, max(1, args.repeat),
                                    args.equivalence_at, against))
        print(report(results, args.seed, max(1, args.repeat), args.against), flush=True)
        if args.json:
            data = to_json(results, args.seed, args.change_percent, max(1, args.repeat), args.against)
            args.json.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    finally:
        print(f"removing {work} ...", file=sys.stderr, flush=True)
        shutil.rmtree(work, ignore_errors=True)  # only now: see the module docstring
    return 0


if __name__ == "__main__":
    sys.exit(main())
