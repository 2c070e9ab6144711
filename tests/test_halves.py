"""The per-file checks of a large fleet shared with a forked child (``output.halves``).

The child only makes the check faster: its half is the half one process would check, a child
that fails in any way leaves its half to the parent, and a parent that fails leaves no child
behind. A no-change night split in two still finds a hand edit in either half."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from mdmgen.output import halves

from .conftest import HEADER, run, settle, write_inventory
from .test_compile_state import fresh, tree

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the check is split in two only on Linux")

SERIALS = [f"DEV{i:03d}" for i in range(40)]


def halves_of(part: int | None) -> list[str]:
    return [serial for serial in SERIALS if not halves.skips(part, serial)]


@pytest.fixture
def split_always(monkeypatch):
    monkeypatch.setattr(halves, "SPLIT_FROM", 1)


def test_the_child_checks_the_other_half_and_the_halves_make_the_whole(split_always):
    parent = os.getpid()
    answers = halves.in_two(lambda part: (part, os.getpid(), halves_of(part)), len(SERIALS))
    assert [(part, pid == parent) for part, pid, _ in answers] == [(0, True), (1, False)]
    here, there = answers[0][2], answers[1][2]
    assert here and there and not set(here) & set(there)
    assert sorted(here + there) == SERIALS == halves_of(None)


def test_below_the_threshold_one_process_checks_the_whole():
    assert halves.in_two(lambda part: (part, os.getpid()), halves.SPLIT_FROM - 1) == [(None, os.getpid())]


@pytest.mark.parametrize("failure", ["raises", "killed", "gives an answer marshal cannot carry"])
def test_a_child_that_fails_leaves_its_half_to_the_parent(split_always, failure):
    parent = os.getpid()

    def work(part):
        if os.getpid() != parent:
            if failure == "raises":
                raise RuntimeError("the child's half failed")
            if failure == "killed":
                os.kill(os.getpid(), signal.SIGKILL)
            return object  # marshal cannot carry a class: the child exits with an error
        return halves_of(part)

    assert halves.in_two(work, len(SERIALS)) == [halves_of(0), halves_of(1)]


def test_a_fork_the_system_refuses_leaves_the_whole_to_the_parent(split_always, monkeypatch):
    def refuse():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", refuse)
    assert halves.in_two(lambda part: halves_of(part), len(SERIALS)) == [SERIALS]


def test_a_parent_that_fails_kills_and_reaps_its_child(split_always, tmp_path):
    parent = os.getpid()
    pid_file = tmp_path / "child.pid"

    def work(part):
        if os.getpid() != parent:
            (tmp_path / "partial").write_text(str(os.getpid()))
            os.replace(tmp_path / "partial", pid_file)  # whole, or not there yet
            time.sleep(600)  # killed long before: the test would take ten minutes otherwise
            return None
        for _ in range(30_000):  # the child is running: it says who it is first (5 minutes at most)
            if pid_file.exists():
                break
            time.sleep(0.01)
        raise ValueError("the parent's half failed")

    with pytest.raises(ValueError, match="parent's half"):
        halves.in_two(work, len(SERIALS))
    with pytest.raises(ChildProcessError):  # reaped: not a zombie, not still running
        os.waitpid(int(pid_file.read_text()), os.WNOHANG)


@pytest.mark.parametrize("half", [0, 1])
def test_a_no_change_night_split_in_two_finds_an_edit_in_either_half(workdir, tmp_path, monkeypatch, split_always,
                                                                    half):
    rows = "".join(f"{serial},linux,u{i}@example.com,Ops\n" for i, serial in enumerate(SERIALS))
    write_inventory(workdir, HEADER + rows)
    assert run(workdir, "compile").exit_code == 0
    settle(workdir)
    forks = []
    fork = os.fork
    monkeypatch.setattr(os, "fork", lambda: forks.append(1) or fork())
    quiet = run(workdir, "compile", "--json")
    assert json.loads(quiet.stdout)["changes"]["written"] is False and forks == [1]
    serial = halves_of(half)[0]
    target = workdir / "output" / "devices" / serial / "managed-settings.json"
    info, data = target.stat(), target.read_bytes()
    target.write_bytes(data.replace(b"Ops", b"Opz"))  # same size, mtime set back: only the inode's ctime moved
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
    repaired = run(workdir, "compile", "--json")
    assert repaired.exit_code == 0, repaired.stderr
    assert json.loads(repaired.stdout)["repaired"] == [f"devices/{serial}/managed-settings.json"]
    assert tree(workdir) == fresh(workdir, tmp_path)
    assert Path(target).read_bytes() == data
