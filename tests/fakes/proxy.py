"""A real forward proxy for tests: tinyproxy (Debian package ``tinyproxy``) on 127.0.0.1.

Started and stopped by the tests themselves; ``tests/install-tools.sh`` installs it (without it
the tests that need it skip with one reason, or fail when ``CI`` is set). Its log says which
requests and ``CONNECT`` tunnels it carried, so a test can prove that a client went through it,
or around it (``NO_PROXY``).
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

from ..conftest import require_tool

_CONNECT = re.compile(r"Request \(file descriptor \d+\): CONNECT (\S+) HTTP/")
_STAT_HOST = "tinyproxy.stats.invalid"
_LOST_BIND = "Could not create listening sockets"
BIND_ATTEMPTS = 5


class TinyProxy:
    """``with TinyProxy(folder) as proxy: proxy.url, proxy.connects()``.

    ``connect_ports`` restricts the ports a ``CONNECT`` may reach (tinyproxy's ``ConnectPort``):
    any other is refused with 403, as corporate proxies refuse tunnels to unusual ports.
    """

    def __init__(self, folder: Path, *, connect_ports: tuple[int, ...] = ()):
        self.binary = require_tool("tinyproxy", "a real forward proxy for the proxy tests")
        self.folder = folder
        self.connect_ports = connect_ports
        self.log = folder / "tinyproxy.log"
        self.port = 0
        self._ready_at = 0
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> TinyProxy:
        """Start tinyproxy on a port of its own.

        tinyproxy cannot bind port 0 and report it (its config refuses ``Port 0``) nor take a
        listening socket, so a free port is picked and released for it to bind. Another process
        may take that port in between: tinyproxy then exits with "Could not create listening
        sockets", and this starts it again on another port, at most ``BIND_ATTEMPTS`` times. It is
        ready only when it has answered (and logged) a request for its own stats page, so a
        stranger that took the port is never mistaken for it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for _attempt in range(BIND_ATTEMPTS):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.port = sock.getsockname()[1]
            if self._start():
                return self
        raise RuntimeError(f"tinyproxy lost the race for a free port {BIND_ATTEMPTS} times in a row")

    def _start(self) -> bool:
        """Start tinyproxy on ``self.port``: True once it answers, False if another process had
        taken the port; any other failure raises."""
        config = self.folder / "tinyproxy.conf"
        lines = [f"Port {self.port}", "Listen 127.0.0.1", "Timeout 30", f'LogFile "{self.log}"',
                 "LogLevel Connect", "MaxClients 50", "Allow 127.0.0.1", "DisableViaHeader Yes",
                 f'StatHost "{_STAT_HOST}"']
        lines += [f"ConnectPort {port}" for port in self.connect_ports]
        config.write_text("\n".join(lines) + "\n")
        self.log.unlink(missing_ok=True)
        self._ready_at = 0
        errors = self.folder / "tinyproxy.stderr"
        with errors.open("wb") as stderr:
            self._process = subprocess.Popen([self.binary, "-d", "-c", str(config)], stdout=subprocess.DEVNULL,
                                             stderr=stderr)
        deadline = time.monotonic() + 10  # a hang guard only
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                if _LOST_BIND in errors.read_text(errors="replace"):
                    return False
                break
            if self._answers_stats():
                return True
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"tinyproxy did not start: {errors.read_text(errors='replace')[-300:]} "
                           f"{self.log_text()[-500:]}")

    def _answers_stats(self) -> bool:
        """Whether the process on ``self.port`` is this tinyproxy: it answers a request for its
        stats host, and its own log records that request."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as probe:
                probe.sendall(f"GET http://{_STAT_HOST}/ HTTP/1.0\r\nHost: {_STAT_HOST}\r\n\r\n".encode())
                answered = probe.recv(64).startswith(b"HTTP/1.0 200")
        except OSError:
            return False
        log = self._raw_log()
        if answered and "Request for the stathost" in log:
            self._ready_at = len(log)  # the probe is start-up, not traffic a test asks about
            return True
        return False

    def _raw_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
            self._process = None

    def log_text(self) -> str:
        """The log since tinyproxy was ready (start-up and the readiness probe left out)."""
        return self._raw_log()[self._ready_at:]

    def connects(self) -> list[str]:
        """The ``host:port`` of every CONNECT tunnel asked for, in order."""
        return _CONNECT.findall(self.log_text())
