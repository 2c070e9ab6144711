"""Run the real Claude Code client against a given managed-settings folder.

``run_claude(settings_dir, base_url, extra_env)`` runs ``claude -p "say hello"``
in a private mount namespace (``unshare -m``) in which ``settings_dir`` is
bind-mounted at ``/etc/claude-code``, the Linux managed-settings folder. The
machine's real ``/etc/claude-code`` is never written: the only change outside
the namespace is creating the empty mount point when it is missing, which is
removed again afterwards.

Needs root (or CAP_SYS_ADMIN) for ``unshare -m`` and ``mount --bind``.

The client gets a fresh environment, not the caller's: a throw-away HOME and
working directory, the Messages API stub as ``ANTHROPIC_BASE_URL``, and the
variables in ``OFFLINE_ENV``. No ``OTEL_*`` variable comes from here, so all
telemetry configuration comes from the managed settings under test.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

MANAGED_DIR = Path("/etc/claude-code")
DEFAULT_CLAUDE = Path(__file__).resolve().parent / ".client" / "bin" / "claude"  # install_client.sh
# Runs are serialised across processes: one run's cleanup (rmdir of the mount
# point it created) would otherwise detach another run's bind mount.
LOCK_FILE = Path(tempfile.gettempdir()) / "mdmgen-e2e-claude.lock"

# Keeps the client off the network. Checked with strace on 2.1.328: without
# CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC it resolves and calls api.anthropic.com
# (product event logging) even with ANTHROPIC_BASE_URL set; with it, it connects
# only to loopback. It does not switch off OTel export (the e2e tests prove it).
OFFLINE_ENV = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",  # Anthropic's product telemetry, not OTel
    "DISABLE_ERROR_REPORTING": "1",
}


def run_claude(
    settings_dir: Path,
    base_url: str,
    extra_env: dict[str, str] | None = None,
    *,
    claude: Path = DEFAULT_CLAUDE,
    prompt: str = "say hello",
    timeout: float = 90,
) -> subprocess.CompletedProcess[str]:
    """Run ``claude -p PROMPT`` with ``settings_dir`` as ``/etc/claude-code``.

    ``base_url`` is the Messages API stub; it also serves as HTTP(S) proxy, so
    any request to a non-loopback host ends at the stub (as a refused CONNECT)
    instead of leaving the machine. ``extra_env`` is added last and wins.
    Raises ``subprocess.TimeoutExpired`` after killing the client.
    """
    settings_dir = Path(settings_dir).resolve(strict=True)
    claude = Path(claude).resolve(strict=True)
    with open(LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _run_locked(settings_dir, base_url, extra_env or {}, claude, prompt, timeout)


def _run_locked(
    settings_dir: Path,
    base_url: str,
    extra_env: dict[str, str],
    claude: Path,
    prompt: str,
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    created_mount_point = _ensure_mount_point()
    try:
        with tempfile.TemporaryDirectory(prefix="claude-e2e-") as tmp:
            home, workdir = Path(tmp, "home"), Path(tmp, "work")
            home.mkdir()
            workdir.mkdir()
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(home),
                "TMPDIR": tmp,
                "LANG": "C.UTF-8",
                "ANTHROPIC_BASE_URL": base_url,
                "ANTHROPIC_API_KEY": "dummy",
                "HTTPS_PROXY": base_url,
                "HTTP_PROXY": base_url,
                "NO_PROXY": "127.0.0.1,localhost,::1",
                **OFFLINE_ENV,
                **extra_env,
            }
            # unshare (no --fork) and sh both exec, so the client keeps this pid.
            script = 'mount --bind "$1" /etc/claude-code && shift && exec "$@"'
            cmd = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
                "sh",
                str(settings_dir),
                str(claude),
                "-p",
                prompt,
            ]
            return _run(cmd, env=env, cwd=workdir, timeout=timeout)
    finally:
        if created_mount_point:
            MANAGED_DIR.rmdir()  # only ever removes the empty folder we made


def _ensure_mount_point() -> bool:
    """Create an empty /etc/claude-code if missing; True if we created it."""
    try:
        MANAGED_DIR.mkdir()
        return True
    except FileExistsError:
        return False


def _run(
    cmd: list[str], *, env: dict[str, str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    with subprocess.Popen(
        cmd,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the client and anything it spawned
            out, err = proc.communicate(timeout=10)
            raise subprocess.TimeoutExpired(cmd, timeout, out, err) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def namespaces_available() -> str | None:
    """None if ``unshare -m`` + ``mount --bind`` work here, else the reason why not."""
    if shutil.which("unshare") is None:
        return "unshare(1) not found"
    with tempfile.TemporaryDirectory() as tmp:
        probe = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--", "mount", "--bind", tmp, tmp],
            capture_output=True,
            text=True,
            timeout=10,
        )
    if probe.returncode != 0:
        return f"cannot bind-mount in a private mount namespace: {probe.stderr.strip()}"
    return None
