"""State that lives as long as one run and no longer.

A run is one CLI command, or one library call that compiles, explains or diffs (``pipeline``,
``explain`` and ``diff`` open one when no command has). What a run learns that later steps of
the same run need (the secret values it resolved, so a log line can redact them; the names it
already checked, 100,000 serials each checked up to four times) is kept here, and dropped when
the run ends: two runs in one process (the tests, a long-lived caller) never see each other's
state, and nothing user-supplied stays in memory between them. Nothing in mdmgen keeps such
state at module level (``tests/test_process_state.py`` checks it).

The current run is a :mod:`contextvars` variable set on entry and reset on exit, as
``templating``'s budget is: a thread started inside a run (the writer's pool) is outside it and
simply computes what it needs again.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Hashable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")
K = TypeVar("K", bound=Hashable)

_CURRENT: contextvars.ContextVar[dict[object, Any] | None] = contextvars.ContextVar("mdmgen_run", default=None)
"""The run in progress: its objects by key (see :func:`slot`); None between runs."""
_MISSING = object()


@contextlib.contextmanager
def run() -> Iterator[None]:
    """Be inside a run for the ``with`` block: the one already open (a compile inside a CLI
    command joins the command's), or a new, empty one that ends with the block."""
    if _CURRENT.get() is not None:
        yield
        return
    token = _CURRENT.set({})
    try:
        yield
    finally:
        _CURRENT.reset(token)


def slot(key: object, factory: Callable[[], T]) -> T | None:
    """The current run's object under ``key``, made by ``factory`` on first use; None outside a run."""
    objects = _CURRENT.get()
    if objects is None:
        return None
    try:
        return objects[key]
    except KeyError:
        made = objects[key] = factory()
        return made


def memo(function: Callable[[K], R]) -> Callable[[K], R]:
    """Remember a pure function's results of one argument for the rest of the run (and compute
    them afresh outside one): the per-run stand-in for a process-wide ``functools.lru_cache``."""

    @functools.wraps(function)
    def remembered(arg: K) -> R:  # inlined slot(): called 400,000 times by a 100,000-device compile
        objects = _CURRENT.get()
        if objects is None:
            return function(arg)
        results = objects.get(remembered)
        if results is None:
            results = objects[remembered] = {}
        result = results.get(arg, _MISSING)
        if result is _MISSING:
            result = results[arg] = function(arg)
        return result

    return remembered
