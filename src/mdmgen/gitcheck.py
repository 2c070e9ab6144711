"""Whether the secret-bearing files a compile just wrote would go into git with ``git add -A``.

An output folder is often kept in an audit repository (README, "Nightly runs"). The manifest is
meant for it; the device files that embed a ``{{ secret(...) }}`` are not: committed, the token
lives in the history for good. So after a compile that wrote something, if ``git`` is on PATH
and the folder is inside a work tree, the secret-bearing files (in the folder, and in the kept
generation beside it) are given to ``git check-ignore``; those it does not report as ignored
(tracked files never are) are counted in one warning line.

It is advice, never a failure: no git, not a work tree, a git that errs or takes longer than
:data:`GIT_TIMEOUT` all mean no warning. It runs only when the compile wrote the folder, so a
quiet night (nothing changed, see ``output.state``) never starts git.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from .output.layout import DEVICES_DIR, OutputError, sidecar, target_of

GIT_TIMEOUT = 5.0
"""Seconds for each git command; check-ignore reads one path per secret-bearing file."""
log = logging.getLogger(__name__)


def secrets_not_ignored(out: Path, serials: Iterable[str]) -> str | None:
    """The warning line when files of the devices ``serials`` (those that embed a secret) under
    ``out`` or its kept generation are inside a git work tree and not ignored; else None."""
    serials = list(serials)
    git = shutil.which("git")
    if not serials or git is None:
        return None
    try:
        target = target_of(out)
    except OutputError:
        return None
    top = _git(git, target, ["rev-parse", "--show-toplevel"])
    if not top:
        return None
    toplevel = Path(top.strip("\n"))
    roots = [root for root in (target, sidecar(target, "prev"))
             if root.is_relative_to(toplevel) and root.is_dir()
             and not _ignored_and_untracked(git, target, root / DEVICES_DIR)]
    files = [str(path) for root in roots for path in _device_files(root, serials)]
    if not files:
        return None
    ignored = _git(git, target, ["check-ignore", "--stdin", "-z"], "\0".join(files) + "\0")
    if ignored is None:
        return None
    ignored_files = set(ignored.split("\0"))
    unignored = [f for f in files if f not in ignored_files]
    if not unignored:
        return None
    inside = [f for f in unignored if f.startswith(str(target) + os.sep)]
    where, advice = [], []
    if inside:
        where.append(f"{out}/{DEVICES_DIR}/")
        advice.append(os.path.relpath(target / DEVICES_DIR, toplevel) + "/")
    if len(inside) < len(unignored):
        where.append(f"{sidecar(target, 'prev').name}/ (the kept generation beside {out})")
        advice.append(".*.mdmgen-*")
    return (f"warning: {len(unignored)} secret-bearing file(s) under {' and '.join(where)} are inside the git work "
            f"tree {toplevel} and not ignored: add {' and '.join(advice)} to its .gitignore, or `git add` would "
            "commit the secrets")


def _ignored_and_untracked(git: str, where: Path, folder: Path) -> bool:
    """Whether nothing under ``folder`` can be committed: it is ignored as a whole (git cannot
    re-include a file below an ignored folder) and git tracks no file in it. Two quick git calls
    that spare listing every device's files on a night whose rules are in place."""
    if _git(git, where, ["check-ignore", "-q", str(folder)], check_ignore_none=None) is None:
        return False
    return _git(git, where, ["ls-files", "-z", "--", str(folder)]) == ""


def _device_files(root: Path, serials: list[str]) -> list[Path]:
    """The files of these devices under one tree (skipped when it does not exist)."""
    found: list[Path] = []
    for serial in serials:
        try:
            with os.scandir(root / DEVICES_DIR / serial) as entries:
                found += [root / DEVICES_DIR / serial / e.name for e in entries if e.is_file(follow_symlinks=False)]
        except OSError:
            continue
    return sorted(found)


def _git(git: str, where: Path, args: list[str], stdin: str | None = None, *,
         check_ignore_none: str | None = "") -> str | None:
    """git's stdout; None when it fails, times out or cannot run. Exit 1 of check-ignore (nothing
    is ignored) gives ``check_ignore_none``."""
    try:
        done = subprocess.run([git, "-C", str(where), *args], input=stdin, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT, check=False,
                              env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"})
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("git %s: %s", args[0], type(exc).__name__)
        return None
    if done.returncode == 0:
        return done.stdout
    return check_ignore_none if args[0] == "check-ignore" and done.returncode == 1 else None
