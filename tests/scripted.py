"""Scripted HTTP answers: a unit test of a retry, a page or an error says the exchanges it expects
and gets them from memory, through the same :class:`mdmgen.http.Connection` (deadline,
size caps, one-line errors) as production, without a server, a socket or a real wait.

A :class:`Script` is an ``httpx.MockTransport`` given to a client as ``transport=``. It answers
its steps in order, each a (method, path) and the answer for it; a request that is not the next
step's fails the test at once (and is recorded, in case the code under test swallowed the
AssertionError). The TLS fake servers in ``tests/fakes/`` remain for what needs a real socket:
proxies, TLS, token expiry over time, truncated bodies, the done-when runs.
"""

from __future__ import annotations

import json as jsonlib
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

Answer = Callable[[httpx.Request], httpx.Response]


@dataclass
class _Step:
    method: str
    path: str
    """Matched against the request's path; with a ``?``, against its path and query."""
    answer: Answer
    times: int

    def matches(self, request: httpx.Request) -> bool:
        target = request.url.raw_path.decode("ascii") if "?" in self.path else request.url.path
        return request.method == self.method and target == self.path


class Script(httpx.MockTransport):
    """The exchanges a test expects, in order. Build with :meth:`on`; check with :meth:`assert_done`."""

    def __init__(self) -> None:
        super().__init__(self._handle)
        self._steps: list[_Step] = []
        self._lock = threading.Lock()
        self.requests: list[httpx.Request] = []
        """Every request received, its body read."""
        self.unexpected: list[str] = []

    def on(self, method: str, path: str, status: int = 200, *, json: Any = None, content: bytes | str = b"",
           headers: Iterable[tuple[str, str]] = (), times: int = 1, answer: Answer | None = None) -> Script:
        """Answer the next ``times`` requests ``method path`` with ``status`` and a JSON or raw body
        (or whatever ``answer(request)`` returns). Chainable."""
        if answer is None:
            body = jsonlib.dumps(json).encode() if json is not None else (
                content.encode() if isinstance(content, str) else content)
            fixed = [("Content-Type", "application/json")] if json is not None else []

            def answer(_request: httpx.Request) -> httpx.Response:
                return httpx.Response(status, headers=[*fixed, *headers], content=body)

        self._steps.append(_Step(method, path, answer, times))
        return self

    def _handle(self, request: httpx.Request) -> httpx.Response:
        request.read()
        with self._lock:
            self.requests.append(request)
            step = self._steps[0] if self._steps else None
            if step is None or not step.matches(request):
                expected = f"{step.method} {step.path}" if step else "no more requests"
                asked = f"{request.method} {request.url.raw_path.decode('ascii')}"
                said = f"unexpected request {asked}; expected {expected}"
                self.unexpected.append(said)
                raise AssertionError(said)
            step.times -= 1
            if step.times == 0:
                self._steps.pop(0)
        return step.answer(request)

    def hits(self, path: str, method: str | None = None) -> int:
        """How many requests went to ``path`` (without the query), with ``method`` if given."""
        return sum(1 for r in self.requests if r.url.path == path and method in (None, r.method))

    def assert_done(self) -> None:
        """Every step was used and nothing unexpected was asked."""
        assert self.unexpected == []
        assert [f"{s.method} {s.path} x{s.times}" for s in self._steps] == [], "steps the code never asked for"


def dripping(status: int, pieces: list[bytes], before_each: Callable[[], None],
             headers: Iterable[tuple[str, str]] = ()) -> Answer:
    """An answer whose body arrives in ``pieces``, ``before_each`` called before each one (a test
    moves its injected clock there, as a slow server would move the real one)."""

    class Drip(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            for piece in pieces:
                before_each()
                yield piece

    return lambda _request: httpx.Response(status, headers=list(headers), stream=Drip())
