"""What every conversation with a remote shares, below the commands that hold one: the error a
publish-time failure is (:class:`PublishError`, and :class:`RemoteError` for what the remote
refused or failed), and the one retry loop (:func:`retry`).

They live here, not in ``publish.base``, because the HTTP layer (:mod:`mdmgen.http`) raises
RemoteErrors and retries with :func:`retry`, and preflight and the adoption report use that layer
too: none of them should load the publishers to talk HTTP. ``publish.base`` re-exports them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import MdmgenException
from .exitcodes import ExitCode

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)


class PublishError(MdmgenException):
    """A failure with a one-line message written for the person running mdmgen; the target's
    (exit 7) unless a subclass says otherwise.

    ``progress`` is what the publish had achieved when it stopped ("nothing was committed"),
    added to the message by :func:`mdmgen.publish.base.apply`. It is an attribute rather than a new message, so
    the exception keeps its class and attributes (an HTTP status, say) on its way to the CLI.
    """

    exit_code = ExitCode.REMOTE_FAILED
    progress: str | None = None

    def __str__(self) -> str:
        return self.with_progress(super().__str__())

    def with_progress(self, message: str) -> str:
        """``message`` followed by the progress, if any: for subclasses that build their own text."""
        return f"{message} ({self.progress}; rerun to finish)" if self.progress else message


def copy_with_message(exc: E, message: str) -> E:
    """``exc`` with another message and every other attribute kept. Not ``type(exc)(message)``,
    which loses the attributes and fails for classes whose constructor needs more arguments."""
    told = type(exc).__new__(type(exc))
    told.__dict__.update(exc.__dict__)
    told.args = (message, *exc.args[1:])
    return told


class RemoteError(PublishError):
    """The remote refused or failed: unreachable, credentials, permissions, missing bucket, ... (exit 7)."""

    exit_code = ExitCode.REMOTE_FAILED


@dataclass(frozen=True)
class Transient:
    """A failure worth retrying; ``after`` is the wait the server asked for (Retry-After), if any."""

    after: float | None = None


def retry(call: Callable[[], T], *, classify: Callable[[BaseException], Transient | None],
          attempts: int = 5, base_delay: float = 0.5, max_delay: float = 60.0,
          sleep: Callable[[float], None] = time.sleep,
          jitter: Callable[[], float] = random.random) -> T:
    """Call ``call`` until it succeeds, a failure is not transient, or ``attempts`` are used up.

    Backoff is exponential with full jitter (``base_delay * 2**n`` scaled by ``jitter()``,
    capped at ``max_delay``) so parallel workers do not retry in lockstep; a server's own
    Retry-After wins, capped the same way. The last failure is raised unchanged.
    """
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:
            verdict = classify(exc)
            if verdict is None or attempt == attempts - 1:
                raise
            if verdict.after is not None:
                delay = min(max_delay, max(0.0, verdict.after))
            else:
                delay = min(max_delay, base_delay * 2 ** attempt) * jitter()
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
