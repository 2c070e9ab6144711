"""The exception boundary's endings that are not bugs: a closed stdout (``| head -1``) and a machine
that runs out of memory, open files or disk space. Real subprocesses with real pipes and limits."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from mdmgen.exitcodes import ExitCode

from .conftest import HEADER, run, write_inventory
from .test_publish_s3 import DEST, aws_env, compile_fleet, s3  # noqa: F401 (fixtures)

GUARD = 120  # seconds; a hang guard only


def mdmgen(workdir: Path, *args: str, close: tuple[int, ...] = (1,), env: dict | None = None,
           limits: dict[int, int] | None = None) -> tuple[int, str]:
    """Run ``python -m mdmgen ARGS`` with the streams in ``close`` connected to a pipe whose reader is
    already gone (closed before the process starts, so no timing decides it); the exit status and
    whatever reached an open stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)

    def preexec() -> None:
        for which, value in (limits or {}).items():
            resource.setrlimit(which, (value, value))

    try:
        proc = subprocess.run(
            [sys.executable, "-m", "mdmgen", *args], cwd=workdir, timeout=GUARD,
            env={**os.environ, **(env or {})}, preexec_fn=preexec if limits else None,
            stdout=write_end if 1 in close else subprocess.DEVNULL,
            stderr=write_end if 2 in close else subprocess.PIPE)
    finally:
        os.close(write_end)
    return proc.returncode, (proc.stderr or b"").decode()


@pytest.fixture
def two_outputs(workdir: Path) -> Path:
    """``A`` and ``B``: output folders that differ in many devices, so diff has a lot to print."""
    rows = "".join(f"SN{i:04d},linux,u{i}@example.com,Ops\n" for i in range(200))
    write_inventory(workdir, HEADER + rows)
    assert run(workdir, "compile", "--out", "A").exit_code == 0
    write_inventory(workdir, HEADER + rows.replace(",Ops", ",Sales"))
    assert run(workdir, "compile", "--out", "B").exit_code == 0
    return workdir


@pytest.mark.parametrize("args", [("diff", "A", "B"), ("diff", "A", "B", "--json"), ("compile", "--out", "A", "--json"),
                                  ("validate", "--json"), ("schema",)])
def test_a_closed_stdout_ends_quietly_with_141(two_outputs: Path, args):
    code, err = mdmgen(two_outputs, *args)
    assert code == ExitCode.OUTPUT_CLOSED == 141
    assert "error" not in err and "Traceback" not in err and "Exception ignored" not in err, err


def test_a_closed_stdout_and_stderr_end_quietly_too(two_outputs: Path):
    """``mdmgen compile 2>&1 | head -0``: the summary cannot be printed either; still no traceback
    (it would have nowhere to go) and the documented status."""
    code, _err = mdmgen(two_outputs, "compile", "--out", "C", "--json", close=(1, 2))
    assert code == ExitCode.OUTPUT_CLOSED
    assert (two_outputs / "C" / "manifest.json").is_file()  # the compile itself finished


def test_a_publish_plan_into_a_closed_pipe_ends_quietly(workdir: Path, s3, aws_env):  # noqa: F811
    out = compile_fleet(workdir, range(30))
    code, err = mdmgen(workdir, "publish", DEST, "--out", str(out), "--endpoint-url", s3.url, "--dry-run",
                       env=aws_env)
    assert code == ExitCode.OUTPUT_CLOSED
    assert "error" not in err and "Exception ignored" not in err, err


def test_diff_with_too_few_open_files_is_one_line_and_exit_71(two_outputs: Path):
    """A real ``ulimit -n``: not a bug in mdmgen, and not the user's files either."""
    code, err = mdmgen(two_outputs, "diff", "A", "B", close=(), limits={resource.RLIMIT_NOFILE: 5})
    assert code == ExitCode.RESOURCES == 71, err
    assert len(err.splitlines()) == 1
    assert err.startswith("error: `") and "mdmgen diff` ran out of open files at " in err and "ulimit -n" in err


def test_an_inventory_too_large_for_the_memory_limit_is_one_line_and_exit_71(workdir: Path):
    """A real memory limit (``ulimit -v`` 256 MB) and a 160 MB export, within the size mdmgen accepts:
    the machine is too small for the input, which is neither a bug nor a malformed file."""
    row = b"C02XK1AAJGH5,macos,alice@example.com,Ops\n"
    with (workdir / "inventory" / "devices.csv").open("wb") as handle:
        handle.write(HEADER.encode())
        for _ in range(16):
            handle.write(row * (10_000_000 // len(row)))
    code, err = mdmgen(workdir, "validate", close=(), limits={resource.RLIMIT_AS: 256 << 20})
    assert code == ExitCode.RESOURCES, err
    assert err.splitlines() == [
        "error: `python -m mdmgen validate` ran out of memory; give it more (ulimit -v, or the container's memory "
        "limit), or check that the inputs are the right files"]


@pytest.mark.parametrize(("exc", "expected"), [
    (MemoryError(), "error: `mdmgen compile` ran out of memory; give it more (ulimit -v, or the container's memory "
                    "limit), or check that the inputs are the right files"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/x"),
     "error: `mdmgen compile` ran out of disk space at /data/x (No space left on device); free some space on that "
     "disk"),
])
def test_running_out_of_memory_or_disk_is_one_line_and_exit_71(workdir: Path, monkeypatch, exc, expected):
    from mdmgen import pipeline

    write_inventory(workdir, HEADER + "S1,linux,a@example.com,Ops\n")

    def exhausted(*_args, **_kwargs):
        raise exc

    monkeypatch.setattr(pipeline, "compile_fleet", exhausted)
    result = run(workdir, "compile")
    assert result.exit_code == ExitCode.RESOURCES
    assert result.stderr.splitlines() == [expected]
    assert not (workdir / "output").exists()


DEEP = b"[" * 100_000 + b"]" * 100_000


def test_a_server_answer_nested_100000_deep_is_an_unexpected_answer_not_a_recursion_error():
    """Python's JSON decoder raises RecursionError (not ValueError) for it: a server could make exit 70."""
    from mdmgen import http

    answer = http.Response(200, http.httpx.Headers({"Content-Type": "application/json"}), DEEP, "listing things",
                           "Jamf Pro")
    with pytest.raises(http.UnexpectedAnswer, match=r"^Jamf Pro sent an answer that is not valid JSON while listing"):
        answer.json()


def test_an_error_body_nested_100000_deep_gives_no_reason_instead_of_a_recursion_error():
    from mdmgen.publish.intune.graph import error_of
    from mdmgen.publish.jamf.client import error_reason

    assert error_of(DEEP) == ("", "")
    assert isinstance(error_reason("application/json", DEEP), str)


def test_diff_of_a_folder_holding_a_file_nested_100000_deep_is_trouble_not_a_bug(two_outputs: Path):
    """A hand-made folder whose manifest vouches for a settings file nested 100,000 levels deep: Python's
    JSON reader raises RecursionError, which must read as a file that is not valid (diff's exit 2)."""
    import hashlib
    import json
    import shutil

    workdir = two_outputs
    shutil.copytree(workdir / "A", workdir / "D")
    manifest = json.loads((workdir / "D" / "manifest.json").read_text())
    serial = sorted(manifest["devices"])[0]
    entry = manifest["devices"][serial]["files"]["managed-settings.json"]
    (workdir / "D" / "devices" / serial / "managed-settings.json").write_bytes(DEEP)
    entry.update(sha256=hashlib.sha256(DEEP).hexdigest(), size=len(DEEP))
    (workdir / "D" / "manifest.json").write_text(json.dumps(manifest, indent=2))
    result = run(workdir, "diff", "A", "D")
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"error: D/devices/{serial}/managed-settings.json: nested thousands of levels deep, so not a file "
        "mdmgen wrote"]
