"""Fixtures for the end-to-end tests against the real Claude Code client.

Run as root:  .venv/bin/python -m pytest -m e2e
(the first run installs the pinned client with tests/e2e/install_client.sh).

Without root (or without mount namespaces) the tests are skipped, with the reason, on a
developer's machine. When the ``CI`` variable is set they fail instead: CI runs as root, so
a skip there would hide a broken setup behind a green run.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import namespaces_available
from .messages_stub import MessagesStub

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    """The pinned client, installed once into tests/e2e/.client/ (fast when already there)."""
    if os.geteuid() != 0:
        _cannot_run(
            "e2e tests need root: they bind-mount over /etc/claude-code in a private namespace"
        )
    reason = namespaces_available()
    if reason:
        _cannot_run(reason)
    proc = subprocess.run(
        ["bash", str(HERE / "install_client.sh")], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"install_client.sh failed:\n{proc.stderr}"
    return Path(proc.stdout.strip().splitlines()[-1])


def _cannot_run(reason: str) -> None:
    """Skip on a developer's machine; fail in CI (CI set), where a skip would hide the problem."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(f"{reason}; run as root, or deselect with -m 'not e2e'")


@pytest.fixture
def messages_stub() -> Iterator[MessagesStub]:
    with MessagesStub() as stub:
        yield stub
