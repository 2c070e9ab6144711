"""A threaded HTTP server on 127.0.0.1 with an ephemeral port: the base of every local stub."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socket import socket


class LoopbackHTTPServer:
    """Serves ``handler`` from a daemon thread until ``stop``; ``wrap`` may replace the listening
    socket (e.g. with a TLS one) before the first request."""

    def __init__(self, handler: type[BaseHTTPRequestHandler],
                 wrap: Callable[[socket], socket] | None = None) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        if wrap is not None:
            self.server.socket = wrap(self.server.socket)
        self.host, self.port = self.server.server_address[:2]
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
