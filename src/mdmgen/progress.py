"""Progress reporting for long runs (compiles of large fleets, publishes), without knowing click.

Stages take a ``Progress`` and call ``start``/``advance``/``finish``; ``cli`` decides what to
show: a bar when stderr is a terminal, nothing in cron or with ``--quiet``. Calls may come from
worker threads, so implementations must be thread-safe.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, total: int, label: str) -> None: ...

    def advance(self, count: int = 1) -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    """Shows nothing: the default for library callers, cron and tests."""

    def start(self, total: int, label: str) -> None:
        pass

    def advance(self, count: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass


NO_PROGRESS: Progress = NoProgress()
