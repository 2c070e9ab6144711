"""Fixtures for the end-to-end tests against the real Claude Code client.

Run as root:  .venv/bin/python -m pytest -m e2e
(the first run installs the pinned client with tests/e2e/install_client.sh).

Without root, mount namespaces or npm (for the first install) the tests are skipped with one
reason on a developer's machine. When the ``CI`` variable is set the first of them fails
instead, with the reason, and the rest point at it: CI runs as root with npm, so a skip there
would hide a broken setup behind a green run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import missing
from .harness import namespaces_available
from .messages_stub import MessagesStub

HERE = Path(__file__).resolve().parent


CLIENT = HERE / ".client" / "bin" / "claude"


@pytest.fixture(scope="session")
def client_install() -> tuple[Path | None, str | None]:
    """Install the pinned client once into tests/e2e/.client/ (fast when already there).

    Returns ``(path, None)``, or ``(None, reason)`` when the tests cannot run here. It never
    raises: a session fixture that raises is reported again for every test, which turns one
    missing npm into a screenful of identical errors.
    """
    if os.geteuid() != 0:
        return None, "e2e tests need root: they bind-mount over /etc/claude-code in a private namespace"
    reason = namespaces_available()
    if reason:
        return None, reason
    if not CLIENT.exists() and shutil.which("npm") is None:
        return None, ("npm is not on PATH: the e2e tests install the pinned Claude Code client with npm "
                      "from the npm registry on their first run (as root, tests/install-tools.sh installs npm "
                      "and the client)")
    try:
        proc = subprocess.run(["bash", str(HERE / "install_client.sh")], capture_output=True, text=True,
                              timeout=600, check=False)
    except subprocess.TimeoutExpired:
        return None, "installing the Claude Code client with npm took more than 10 minutes"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return None, f"tests/e2e/install_client.sh could not install the pinned client: {last}"
    return Path(proc.stdout.strip().splitlines()[-1]), None


_reported: list[str] = []


@pytest.fixture
def claude_bin(client_install: tuple[Path | None, str | None]) -> Path:
    """The installed client, or one clear skip (developer machine) or one failure (CI) for the
    whole session: the first e2e test reports the reason, the others point at it."""
    path, reason = client_install
    if path is not None:
        return path
    if os.environ.get("CI") and _reported:
        pytest.skip(f"e2e: cannot run (the first e2e test failed with the reason: {reason})")
    _reported.append(reason)
    missing(f"{reason}; or deselect the e2e tests with -m 'not e2e'")


@pytest.fixture
def messages_stub() -> Iterator[MessagesStub]:
    with MessagesStub() as stub:
        yield stub

