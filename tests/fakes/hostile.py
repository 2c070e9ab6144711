"""A hostile HTTP server on loopback: real sockets, one thread per connection, for the bounds tests.

Each mode misbehaves the way a broken server, proxy or attacker does after reading the request:

* ``drip-headers``: the status line, then one header byte every ``interval`` seconds, forever;
* ``drip-body``: complete headers announcing a 1 MB body (within every cap), then one body byte
  per ``interval``;
* ``endless-body``: complete headers without a length, then 64 KiB chunks as fast as it can;
* ``endless-headers``: the status line, then 1 KiB header lines as fast as it can;
* ``redirect``: ``302`` to another host (``Location: https://elsewhere.invalid/...``).

It only stops when the client hangs up or the server is closed. It binds port 0 and keeps its
socket, so there is no free-port race; ``requests`` counts the requests it read. With ``tls``
(certificate, key) it speaks https; ``answers`` maps a GET path to a JSON body served properly
(an identity provider's metadata, say), so the misbehaviour hits only the request after it.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

MODES = ("drip-headers", "drip-body", "endless-body", "endless-headers", "redirect")
ELSEWHERE = "https://elsewhere.invalid/sign-in"


class HostileServer:
    def __init__(self, mode: str, *, interval: float = 0.5, tls: tuple[Path, Path] | None = None,
                 answers: dict[str, Any] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(mode)
        self.mode = mode
        self.interval = interval
        self.answers = answers or {}
        self.requests = 0
        self.paths: list[str] = []
        self._tls = None
        if tls is not None:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(*tls)
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> HostileServer:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self._tls is not None:
                conn.settimeout(30)
                conn = self._tls.wrap_socket(conn, server_side=True)
            with conn:
                while (request := _read_request(conn)) is not None:
                    self.requests += 1
                    method, path = request
                    self.paths.append(path)
                    if method == "GET" and path in self.answers:
                        body = json.dumps(self.answers[path]).encode()
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                        continue
                    getattr(self, "_" + self.mode.replace("-", "_"))(conn)
                    return
        except OSError:  # the client hung up (what it is supposed to do), or a failed handshake
            return

    def _drip(self, conn: socket.socket, head: bytes) -> None:
        conn.sendall(head)
        while not self._stop.wait(self.interval):
            conn.sendall(b"a")

    def _drip_headers(self, conn: socket.socket) -> None:
        self._drip(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Drip: ")

    def _drip_body(self, conn: socket.socket) -> None:
        self._drip(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")

    def _endless_body(self, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
        chunk = b" " * (64 << 10)
        while not self._stop.is_set():
            conn.sendall(chunk)

    def _endless_headers(self, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        line = b"X-Endless: " + b"a" * 1024 + b"\r\n"
        while not self._stop.is_set():
            conn.sendall(line)

    def _redirect(self, conn: socket.socket) -> None:
        conn.sendall(f"HTTP/1.1 302 Found\r\nLocation: {ELSEWHERE}\r\nContent-Length: 0\r\n\r\n".encode())


def _read_request(conn: socket.socket) -> tuple[str, str] | None:
    """Read one request (headers, and a body of Content-Length bytes): its method and path (without
    the query), or None if the client left."""
    conn.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            return None
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip() or 0)
    while len(body) < length:
        more = conn.recv(65536)
        if not more:
            return None
        body += more
    method, target = [*lines[0].decode("latin-1").split(" "), "", ""][:2]
    return method, target.split("?")[0]
