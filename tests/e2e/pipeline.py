"""The server half of the seed's architecture, as real processes: the OpenTelemetry Collector
running a generated config, and a Prometheus server scraping it with the generated rules.

Ports. The collector cannot listen on port 0 (its config names the ports, and the devices'
compiled endpoints must name the same ones), so the ports are chosen by binding sockets to port 0
and keeping them bound until just before the process starts (:func:`reserve`). Between that
release and the process's own bind another program could take a port; then the process exits with
"address already in use", and :func:`start_on_free_ports` starts again with fresh ports (the caller
recompiles, since the ports are in the compiled files). So a taken port costs a retry, never a
flaky failure. A private network namespace would avoid the window altogether, but the client runs
in its own namespace from the harness, and the in-process Messages API stub would have to join it.

Waiting is a bounded polling loop (:func:`poll`) whose timeout is only a hang guard: no assertion
depends on how long anything took.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")
HANG_GUARD = 120.0  # seconds: only ever a hang guard, never a measurement
PORT_ATTEMPTS = 5
IN_USE = re.compile(r":(\d+): bind: address already in use")


class PortTaken(Exception):
    """The process could not bind a port released for it: start again on other ports."""


@contextlib.contextmanager
def reserve(count: int) -> Iterator[list[socket.socket]]:
    """``count`` distinct free ports, held by bound sockets until the caller closes them (or the
    block ends); on all addresses, as the generated collector config listens on ``0.0.0.0``."""
    held = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("0.0.0.0", 0))
            held.append(sock)
        yield held
    finally:
        for sock in held:
            sock.close()


def start_on_free_ports(count: int, launch: Callable[[list[int], Callable[[], None]], T]) -> T:
    """Call ``launch(ports, release)`` with ``count`` reserved ports until it does not raise
    :class:`PortTaken`. ``launch`` prepares everything that names the ports, calls ``release()``
    just before it starts the process, and waits until the process is ready."""
    for _ in range(PORT_ATTEMPTS):
        with reserve(count) as held:
            ports = [sock.getsockname()[1] for sock in held]

            def release(held: list[socket.socket] = held) -> None:
                for sock in held:
                    sock.close()
            try:
                return launch(ports, release)
            except PortTaken:
                continue
    raise AssertionError(f"no free ports after {PORT_ATTEMPTS} attempts")


def poll(check: Callable[[], T], what: str, timeout: float = HANG_GUARD, interval: float = 0.25) -> T:
    """``check()``'s first truthy value; AssertionError naming ``what`` and the last value when the
    hang guard runs out."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting ({timeout:.0f}s hang guard) for {what}; last: {value!r}")
        time.sleep(interval)


class Service:
    """A server process with its output in a log file; stopped (TERM, then KILL) on ``stop``."""

    def __init__(self, name: str, cmd: Sequence[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name, self.log = name, log
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(list(cmd), stdout=self._out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def wait_ready(self, ready: Callable[[], bool], ports: Sequence[int]) -> None:
        """Until ``ready()``; PortTaken if the process exited because one of ``ports`` (those
        released for it) was taken, AssertionError if it exited otherwise."""
        def check() -> bool:
            if self.proc.poll() is not None:
                if {int(port) for port in IN_USE.findall(self.output())} & set(ports):
                    self.stop()
                    raise PortTaken(self.name)
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            return ready()
        poll(check, f"{self.name} to be ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._out.close()


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class PrometheusServer(Service):
    """Prometheus (Debian's 2.42 server) on 127.0.0.1:``port``, with a config written beside its data."""

    def __init__(self, binary: str, folder: Path, port: int, config: dict[str, Any]) -> None:
        self.port = port
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "prometheus.yml").write_text(json.dumps(config, indent=2), encoding="utf-8")  # JSON is YAML
        self.url = f"http://127.0.0.1:{port}"
        super().__init__("prometheus", [binary, f"--config.file={folder / 'prometheus.yml'}",
                                        f"--storage.tsdb.path={folder / 'data'}",
                                        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                         folder / "prometheus.log", env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                         cwd=folder)
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def ready(self) -> bool:
        try:
            return self.http.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def api(self, path: str, **params: Any) -> Any:
        answer = self.http.get(f"/api/v1/{path}", params=params)
        body = answer.json()
        assert body.get("status") == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector: ``[{"metric": {labels}, "value": [t, "v"]}, ...]``."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return data["result"]

    def values(self, expr: str, by: str) -> dict[str, float]:
        """``expr``'s result keyed by one label's value."""
        return {row["metric"].get(by, ""): float(row["value"][1]) for row in self.query(expr)}

    def alerts(self) -> list[dict[str, Any]]:
        return self.api("alerts")["alerts"]

    def stop(self) -> None:
        self.http.close()
        super().stop()


def grafana_interpolate(expr: str, variables: dict[str, list[str]], range_seconds: int) -> str:
    """``expr`` as Grafana sends it: ``${name:pipe}`` the selected values joined by ``|``, ``$name`` and
    ``${name}`` the value (a multi-value selection, ``${name}`` without a format, is rendered by the
    Prometheus data source as a regex alternation, written here the same way), ``$__range`` the
    dashboard's range in seconds (``604800s`` for the dashboards' ``now-7d``)."""
    def value(name: str, fmt: str | None) -> str:
        if name == "__range":
            return f"{range_seconds}s"
        if name not in variables:
            raise AssertionError(f"the query names an unknown variable ${name}: {expr}")
        selected = variables[name]
        if fmt not in (None, "pipe", "regex"):
            raise AssertionError(f"the test does not know Grafana's format {fmt!r}: {expr}")
        return selected[0] if len(selected) == 1 else "|".join(selected)

    pattern = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)")
    return pattern.sub(lambda m: value(m.group(1) or m.group(3), m.group(2)), expr)
