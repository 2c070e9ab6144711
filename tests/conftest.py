"""Shared test helpers: write inventories and policies, run the real CLI entry point."""

from __future__ import annotations

import gc
import os
import pickle
import select
import shutil
import signal
import socket
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
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


def _import_all() -> None:
    """Import every module of mdmgen once, here: the CLI imports most of them where they are used,
    and a forked child's imports die with it, so each :func:`run` would import them again."""
    import importlib
    import pkgutil

    import mdmgen

    for found in pkgutil.walk_packages(mdmgen.__path__, "mdmgen."):
        if not found.name.endswith("__main__"):
            importlib.import_module(found.name)


def _warm_up() -> None:
    """One small compile in this process, with absolute paths (no change of directory): what the
    first compile of a process builds once (templates, validators) is then built before any fork."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        inventory = Path(folder) / "devices.csv"
        inventory.write_text("serial_number,platform,user_email,team\nWARM1,macos,warm@example.com,Warm\n",
                             encoding="utf-8")
        CliRunner().invoke(main, ["compile", "--inventory", str(inventory), "--profiles",
                                  str(Path(__file__).resolve().parents[1] / "profiles"), "--out",
                                  str(Path(folder) / "output"), "--quiet"], catch_exceptions=False)


_import_all()
_warm_up()


@dataclass(frozen=True)
class CliResult:
    """What a command printed and how it ended, as click's ``Result`` has it."""

    exit_code: int
    stdout: str
    stderr: str
    output: str


RUN_HANG_GUARD_SECONDS = 600


def run(workdir: Path, *args: str) -> CliResult:
    """Run ``mdmgen ARGS`` with the given folder as working directory, in a forked child.

    The child is a copy of this process (so a test's monkeypatches and environment hold in it),
    and only it changes directory: the test process's working directory, like all its other
    state, is never touched, and nothing the command leaves in memory reaches the next test. An
    exception that escapes the command (a bug) fails the test with the child's traceback. The
    test process's objects are frozen for the fork (``gc.freeze``), so the child's collector
    does not walk, and so copy, every page of them."""
    read_end, write_end = os.pipe()
    gc.freeze()
    pid = os.fork()
    if pid == 0:  # the child: run, send the result, and leave without running the parent's cleanups
        code = 0
        try:
            os.close(read_end)
            os.chdir(workdir)
            result = CliRunner().invoke(main, list(args), catch_exceptions=False)
            payload: object = (result.exit_code, result.stdout, result.stderr, result.output)
        except BaseException:  # every failure goes back to the test
            payload = traceback.format_exc()
            code = 1
        finally:
            with os.fdopen(write_end, "wb") as pipe:
                pickle.dump(payload, pipe)
            os._exit(code)
    gc.unfreeze()
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        if not select.select([pipe], [], [], RUN_HANG_GUARD_SECONDS)[0]:  # a hang guard only
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"mdmgen {' '.join(args)} did not finish within {RUN_HANG_GUARD_SECONDS} s")
        data = pipe.read()
    os.waitpid(pid, 0)
    payload = pickle.loads(data)
    if isinstance(payload, str):
        raise AssertionError(f"mdmgen {' '.join(args)} raised in the child:\n{payload}")
    return CliResult(*payload)


class Recorded:
    """A list a monkeypatched function appends to from inside :func:`run`'s child and the test
    reads afterwards: each item is pickled to a file, since the child's memory dies with it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_bytes(b"")

    def append(self, item: object) -> None:
        with self.path.open("ab") as handle:
            pickle.dump(item, handle)

    def items(self) -> list:
        found = []
        with self.path.open("rb") as handle:
            while handle.peek(1):
                found.append(pickle.load(handle))
        return found


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
