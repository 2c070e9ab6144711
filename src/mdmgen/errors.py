"""The root of every error mdmgen reports to the person running it, carrying its exit code.

As click's ``ClickException`` does, each failure decides its own exit code: a class says what it
means (``exit_code``, a documented :class:`~mdmgen.exitcodes.ExitCode`) and how it reads (its
message, its located problems), and the command line catches :class:`MdmgenException` once and
prints it (``cli._Command``). No command maps exception classes to codes, so a new failure gets its
code where it is defined, next to the code that raises it, and ``tests/test_errors.py`` checks that
every code a class declares is one the exit-code tables document.

When the same failure means different things to different commands, the place that knows the
context raises a distinct subclass: a compile that cannot write its output folder is
``OutputError`` (4), while a publish that cannot read it gets ``OutputUnusable`` (1) from
``output.as_input()``.

Some exceptions are deliberately not under this root: the ones a stage turns into a located problem
(``inputfile.InputFileError``, ``secrets.SecretValueError``, ``attributes.AttributeListError``,
...). If one of them ever reached the command line, the message would lack the file and line
that make it useful, so that is a bug in mdmgen (exit 70), not a message to print.
``tests/test_errors.py`` lists them.

This module imports only :mod:`mdmgen.exitcodes`, so every layer can raise these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from .exitcodes import ExitCode

if TYPE_CHECKING:
    from .models import Problem


class MdmgenException(Exception):
    """A failure with a message for the person running mdmgen, and the exit code it ends with.

    ``problems`` are located ``file:line: field: message`` problems (or lines already written for
    the user), printed before :meth:`headline`, and listed in ``--json``. Subclasses set
    ``exit_code``; most need nothing else.
    """

    exit_code: ClassVar[ExitCode]
    problems: Sequence[Problem | str] = ()
    headline_printed: ClassVar[bool] = True
    """False when the problems say it all on stderr; the headline is then only ``--json``'s ``error``."""
    click_usage: ClassVar[bool] = False
    """Shown as click shows a malformed option (the usage line, a hint for ``--help``), for errors
    about the command line itself."""

    def headline(self) -> str:
        """The last line on stderr, and ``error`` in ``--json``."""
        return f"error: {self}"
