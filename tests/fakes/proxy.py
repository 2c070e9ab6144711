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
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> TinyProxy:
        self.folder.mkdir(parents=True, exist_ok=True)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        config = self.folder / "tinyproxy.conf"
        lines = [f"Port {self.port}", "Listen 127.0.0.1", "Timeout 30", f'LogFile "{self.log}"',
                 "LogLevel Connect", "MaxClients 50", "Allow 127.0.0.1", "DisableViaHeader Yes"]
        lines += [f"ConnectPort {port}" for port in self.connect_ports]
        config.write_text("\n".join(lines) + "\n")
        self._process = subprocess.Popen([self.binary, "-d", "-c", str(config)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"tinyproxy did not start: {self.log_text()[-500:]}") from None
                time.sleep(0.05)

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
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def connects(self) -> list[str]:
        """The ``host:port`` of every CONNECT tunnel asked for, in order."""
        return _CONNECT.findall(self.log_text())
