"""SIGKILL at random moments never leaves an output folder that disagrees with its manifest."""

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import run, write_inventory

DEVICES = 1500
PLATFORMS = ("macos", "linux", "windows", "wsl")
COMPILE = [sys.executable, "-m", "mdmgen", "compile", "--quiet"]
KILLS = 12


def fleet(variant: int) -> str:
    """Two fleets that differ in many rows: teams moved, devices added and removed."""
    rows = ["serial_number,platform,user_email,team"]
    for i in range(DEVICES):
        if variant and i % 7 == 0:
            continue  # removed in variant 1
        team = f"Team {i % 9}" if not (variant and i % 3 == 0) else "Moved"
        rows.append(f"SN{i:05d},{PLATFORMS[i % 4]},user{i}@example.com,{team}")
    if variant:
        rows += [f"NEW{i:04d},linux,new{i}@example.com,New" for i in range(100)]
    return "\n".join(rows) + "\n"


def consistent_state(out: Path) -> bytes:
    """The manifest, after checking it describes exactly the files present."""
    manifest_bytes = (out / "manifest.json").read_bytes()
    manifest = json.loads(manifest_bytes)
    expected = {}
    for serial, entry in manifest["devices"].items():
        for name, meta in entry["files"].items():
            expected[f"devices/{serial}/{name}"] = meta["sha256"]
    present = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in (out / "devices").rglob("*") if p.is_file()}
    assert present == expected
    return manifest_bytes


def test_sigkill_at_random_moments(workdir, tmp_path):
    # The two complete states, compiled fresh.
    states = set()
    for variant in (0, 1):
        write_inventory(workdir, fleet(variant))
        result = run(workdir, "compile", "--out", str(tmp_path / f"ref{variant}"))
        assert result.exit_code == 0, result.stderr
        states.add((tmp_path / f"ref{variant}" / "manifest.json").read_bytes())
    assert len(states) == 2

    # Calibrate on the kind of run that is killed (a fresh interpreter, a real change), so the
    # kill moments span start-up, compiling, writing and the swap on this machine as it is now.
    window = 0.0
    for variant in (0, 1, 0):
        write_inventory(workdir, fleet(variant))
        started = time.monotonic()
        subprocess.run(COMPILE, cwd=workdir, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        window = max(window, time.monotonic() - started)

    rng = random.Random(20261129)
    killed = attempts = 0
    while killed < KILLS and attempts < 4 * KILLS:
        attempts += 1
        write_inventory(workdir, fleet(attempts % 2))
        proc = subprocess.Popen(COMPILE, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, window))
        proc.send_signal(signal.SIGKILL)
        if proc.wait(timeout=60) == -signal.SIGKILL:
            killed += 1
        else:
            window *= 0.8  # the run beat the kill: the machine got faster than the calibration
        assert consistent_state(workdir / "output") in states
    assert killed >= KILLS  # the loop really interrupted runs

    result = subprocess.run(COMPILE, cwd=workdir, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert consistent_state(workdir / "output") in states
    assert generations(workdir) == [".output.mdmgen-lock", ".output.mdmgen-prev"]


def generations(workdir: Path) -> list[str]:
    """The lock and the generations beside the output folder (the compile state is neither)."""
    return sorted(p.name for p in workdir.glob(".output.mdmgen-*")
                  if p.name not in (".output.mdmgen-state", ".output.mdmgen-state"))


def test_every_successful_compile_leaves_the_lock_and_a_complete_kept_generation(workdir):
    """A compile killed while building its staging tree has consumed the kept generation (it was
    renamed to -new and half rewritten). Whatever the next compile finds to do, it must end with
    the same siblings as an uninterrupted run: the lock and a complete -prev."""
    write_inventory(workdir, fleet(0))
    assert run(workdir, "compile").exit_code == 0
    write_inventory(workdir, fleet(1))
    assert run(workdir, "compile").exit_code == 0
    assert generations(workdir) == [".output.mdmgen-lock", ".output.mdmgen-prev"]

    for change in (False, True):
        # What a SIGKILL during the build leaves: -prev renamed to -new, its manifest removed,
        # some device folders rewritten.
        prev, staging = workdir / ".output.mdmgen-prev", workdir / ".output.mdmgen-new"
        prev.rename(staging)
        (staging / "manifest.json").unlink()
        (staging / "devices" / "SN00001" / "managed-settings.json").unlink()
        if change:
            write_inventory(workdir, fleet(0))
        result = run(workdir, "compile", "--json")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["changes"]["written"] is change
        assert generations(workdir) == [".output.mdmgen-lock", ".output.mdmgen-prev"]
        consistent_state(workdir / "output")
        kept = workdir / ".output.mdmgen-prev"
        consistent_state(kept)  # a complete generation: its files are what its manifest says
