"""A per-file check of a large fleet in two processes at once: half here, half in a forked child.

A no-change night at 100,000 devices is mostly one ``lstat`` per folder and file of the tree
(240,000 calls, see ``state.holds``). Threads cannot share that work: a thread returning from a
system call waits for the GIL. A forked child can: it inherits the record already in memory,
checks its half, and sends back one answer. Only a small process gains: the same split of a 1%
night's surveys, in a process holding 700 MB of manifests, lost to the copy-on-write faults of
both processes what it saved, so it is not used there.

It relies on this: the work is a pure check of the file system against data in memory (no
writes, no output, no locks taken), so running half of it in another process changes nothing
but the time. The child is only an accelerator: if it fails in any way (an exception, a
signal, an answer that does not decode), its half runs here, so the outcome is always the one
of one process doing both halves. Only on Linux (forking a process that has loaded system
frameworks is unsafe on macOS; Windows has no fork), only from :data:`SPLIT_FROM` devices on,
and never with ``MDMGEN_NO_FASTPATH``.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import signal
import sys
from collections.abc import Callable
from typing import TypeVar

from .. import fastpath

R = TypeVar("R")

SPLIT_FROM = 20_000
"""Devices from which a child is forked: below, the fork costs more than half the work saves."""


def skips(part: int | None, serial: str) -> bool:
    """Whether the half ``part`` (None: the whole) leaves ``serial`` to the other half. Every
    listing of one serial falls in the same half, in its order, so each half sees what one
    process would. ``hash`` is the same in the forked child (it inherits the hash seed)."""
    return part is not None and hash(serial) & 1 != part


def in_two(work: Callable[[int | None], R], devices: int) -> list[R]:
    """``[work(0), work(1)]``, with ``work(1)`` in a forked child while ``work(0)`` runs here, when
    the fleet is large enough (see the module docstring); otherwise ``[work(None)]``, the whole
    here. ``work``'s answer must be made of what ``marshal`` carries (bools, strings, numbers, and
    dicts, lists, tuples and sets of them)."""
    if devices < SPLIT_FROM or sys.platform != "linux" or not fastpath.enabled():
        return [work(None)]
    try:
        reader, writer = os.pipe()
    except OSError:  # out of descriptors: the whole here, as on a small fleet
        return [work(None)]
    try:
        child = os.fork()
    except OSError:  # out of processes or memory: the same
        os.close(reader)
        os.close(writer)
        return [work(None)]
    if child == 0:  # pragma: no cover - the child's coverage is not collected; its answer is checked
        status = 1
        try:
            os.close(reader)
            _send(writer, marshal.dumps(work(1)))
            status = 0
        finally:
            os._exit(status)  # no exit handlers, no buffers flushed: they are the parent's
    os.close(writer)
    try:
        mine = work(0)
        answer = _receive(reader)
    except BaseException:
        _reap(child, kill=True)
        raise
    finally:
        os.close(reader)
    if _reap(child, kill=False) == 0:
        try:
            return [mine, marshal.loads(answer)]
        except (ValueError, EOFError, TypeError):
            pass
    return [mine, work(1)]


def _send(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.close(fd)


def _receive(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _reap(child: int, *, kill: bool) -> int:
    """The child's exit code, once it has exited (killed first when the parent gives up)."""
    if kill:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)
