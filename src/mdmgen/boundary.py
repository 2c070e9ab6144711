"""What the command line's exception boundary makes of an exception no stage turned into a message.

Most such exceptions are bugs in mdmgen (exit 70). Two kinds are not, and each gets its own
documented ending instead:

* **The reader of stdout or stderr went away** (``mdmgen diff A B | head -1``). Unix tools end
  quietly there: ``cat`` and ``grep`` are killed by SIGPIPE, which a shell reports as 141
  (128 + 13), with no message. mdmgen ends the same way, with exit 141 and nothing printed; the
  closed stream is pointed at ``/dev/null`` first, as the Python documentation's note on SIGPIPE
  recommends, so the interpreter's last flush does not print "Exception ignored ... BrokenPipeError".
  A broken pipe to anything else (a socket) is not this case.
* **The machine ran out of something** an input can use up: memory, open files, disk space.
  That is neither a bug nor a wrong input, so it is exit 71 (sysexits' EX_OSERR) with one line
  saying which resource ran out and which limit to raise.
"""

from __future__ import annotations

import errno
import os
import select
import sys

_CLOSED_EVENTS = (select.POLLERR | select.POLLHUP) if hasattr(select, "poll") else 0
"""What poll() reports on the write end of a pipe whose reader is gone (POLLERR on Linux, POLLHUP elsewhere)."""

_RESOURCE_ERRNOS = {
    errno.EMFILE: ("open files", "raise the limit (ulimit -n)"),
    errno.ENFILE: ("open files", "the machine's file table is full; try again when fewer programs run"),
    errno.ENOSPC: ("disk space", "free some space on that disk"),
    errno.EDQUOT: ("disk quota", "free some space or raise the quota"),
    errno.ENOMEM: ("memory", "give it more memory (ulimit -v, or the container's memory limit)"),
}


def flush_output() -> None:
    """Flush stdout now, inside the boundary, so a closed pipe shows here rather than at interpreter exit."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and not getattr(stream, "closed", False):
            stream.flush()


def _stream_closed(fd: int) -> bool:
    """Whether the reader of ``fd`` (a pipe or a socket) has gone away."""
    if not _CLOSED_EVENTS:
        return True  # no poll(): an EPIPE on a standard stream is taken at its word
    poller = select.poll()
    try:
        poller.register(fd, select.POLLOUT)
    except (OSError, ValueError):
        return False
    return any(events & _CLOSED_EVENTS for _fd, events in poller.poll(0))


def closed_streams(exc: BaseException) -> list[int]:
    """The standard streams (1, 2) whose reader went away, when ``exc`` is the broken pipe that
    says so; empty for any other exception, including a broken pipe to a socket."""
    if not (isinstance(exc, BrokenPipeError) or (isinstance(exc, OSError) and exc.errno == errno.EPIPE)):
        return []
    return [fd for fd in (1, 2) if _stream_closed(fd)]


def end_quietly(closed: list[int]) -> None:
    """Point the closed streams at /dev/null, so nothing written or flushed later fails or prints."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in closed:
            os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def resource_message(exc: BaseException, command: str) -> str | None:
    """The one line for running out of a resource, or None when ``exc`` is not that."""
    if isinstance(exc, MemoryError):
        return (f"error: `{command}` ran out of memory; give it more (ulimit -v, or the container's memory "
                "limit), or check that the inputs are the right files")
    if isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS:
        what, advice = _RESOURCE_ERRNOS[exc.errno]
        where = f" at {exc.filename}" if exc.filename else ""
        return f"error: `{command}` ran out of {what}{where} ({exc.strerror or os.strerror(exc.errno)}); {advice}"
    return None
