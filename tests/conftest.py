"""Shared test helpers: write inventories and policies, run the real CLI entry point."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from click.testing import CliRunner
from hypothesis import settings as hypothesis_settings

from mdmgen.cli import main

# Under CI the property tests draw the same examples on every run: a commit gets one answer, and a
# landing is never decided by which random examples one run happened to draw. On a developer's
# machine they explore at random, and hypothesis's example database keeps any failure they find.
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_POLICY = ROOT / "profiles" / "policy.yaml"
REFERENCE = ROOT.parent / "shared" / "reference"

HEADER = "serial_number,platform,user_email,team\n"


# --- what a test needs from the machine -------------------------------------------------------
# tests/install-tools.sh installs the tools (as root, on Debian); the reference facts are laid
# beside the checkout as ../shared/reference/ and never copied into the project. A test that
# finds one missing is skipped with one reason on a developer's machine; under CI (the ``CI``
# variable set) it fails instead, as the end-to-end tests do: CI installs everything, so a skip
# there would hide a broken setup behind a green run.


def missing(reason: str) -> NoReturn:
    """Skip the test with ``reason``, or fail it with that reason when ``CI`` is set."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str, why: str) -> str:
    """The path of the program ``name`` (for ``why``), or a skip (fail under CI) with one reason
    that is the same for every test needing it, so ``-ra`` reports it once."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not on PATH ({why}); as root, tests/install-tools.sh installs it")
    return path


def openssl_path() -> str:
    """The ``openssl`` program: tests make certificates and verify signed profiles with it."""
    return require_tool("openssl", "tests make their certificates and verify signed profiles with it")


def promtool_path() -> str:
    """``promtool``, from Debian's prometheus package: only the real tool proves the generated rules."""
    return require_tool("promtool", "Debian's prometheus package: only the real tool proves the generated rules")


OTELCOL = ROOT / "tests" / "collector" / ".bin" / "otelcol-mdmgen"


def otelcol_path() -> Path:
    """The real OpenTelemetry Collector (v0.161.0 with the components the generated config names),
    built by ``tests/collector/build.sh`` (tests/install-tools.sh runs it)."""
    if not OTELCOL.is_file():
        missing(f"the OpenTelemetry Collector is not built ({OTELCOL.relative_to(ROOT)}); "
                "bash tests/collector/build.sh builds it (needs Go 1.26)")
    return OTELCOL


def require_reference(name: str) -> Path:
    """A file of the reference facts, ``../shared/reference/NAME`` beside the checkout."""
    path = REFERENCE / name
    if not path.is_file():
        missing(f"{REFERENCE} is not beside the checkout: {name} is read from there, never copied into "
                "the project")
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder laid out like a project: profiles/ (the shipped policy) and inventory/."""
    (tmp_path / "profiles").mkdir()
    shutil.copy(SHIPPED_POLICY, tmp_path / "profiles" / "policy.yaml")
    (tmp_path / "inventory").mkdir()
    return tmp_path


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound for the whole test but never listening, so
    no other process can take it meanwhile (a port found free and then released could be taken)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def write_inventory(workdir: Path, text: str, name: str = "devices.csv",
                    encoding: str = "utf-8") -> Path:
    path = workdir / "inventory" / name
    path.write_bytes(text.encode(encoding))
    return path


def run(workdir: Path, *args: str):
    """Run ``mdmgen ARGS`` in-process as if started in ``workdir`` (``mdmgen -C``): relative paths are read
    from it and printed relative to it, and the test process's working directory never moves."""
    return CliRunner().invoke(main, ["-C", str(workdir), *args], catch_exceptions=False)


def settle(workdir: Path, out: str = "output") -> None:
    """Make the compile state beside ``workdir/out`` newer than every inode of the folder and of its
    kept generation, as it is for all but the last few files of a real compile: a compile of a few
    devices writes them in the same clock tick as the record, and the record (rightly) vouches only
    for what provably changed before it. Waits for the file system's clock to pass the newest
    ``st_ctime`` (a few milliseconds at most), then touches the record."""
    roots = [workdir / out, workdir / f".{out}.mdmgen-prev"]
    newest = max(p.lstat().st_ctime_ns for root in roots if root.exists() for p in [root, *root.rglob("*")])
    probe = workdir / ".settle-probe"
    for _attempt in range(100_000):  # a hang guard only: the clock moves within milliseconds
        probe.touch()
        moved = probe.lstat().st_ctime_ns > newest
        probe.unlink()
        if moved:
            break
    os.utime(workdir / f".{out}.mdmgen-state")


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under a folder with its bytes and inode, to prove a tree was not touched."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_ino)
            for p in sorted(folder.rglob("*")) if p.is_file()}
