"""What a command says to the person running it: problems, the summary, ``--json``, log lines and
the progress bar, on the right stream, one line each, with no secret and with paths as the user
named them (relative to ``-C DIR``, see :func:`relative_shown`).

``cli`` parses flags and calls one function; everything it prints goes through here, so each
promise about output (printable, redacted, relative) is kept in one place.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from .exitcodes import ExitCode
from .messages import environment_secrets, first_of, printable, redactor
from .models import Platform, Problem
from .progress import NO_PROGRESS, Progress
from .secrets import Resolved, resolved, resolved_values
from .summary import RunSummary

if TYPE_CHECKING:
    from . import output

PLATFORM_LABELS = {Platform.MACOS: "macOS", Platform.LINUX: "Linux", Platform.WINDOWS: "Windows",
                   Platform.WSL: "WSL"}


def run_folder(ctx: click.Context | None) -> Path | None:
    """The absolute ``-C DIR`` of this command, or None when it runs where it was started."""
    folder = ctx.find_root().params.get("directory") if ctx is not None else None
    return Path(os.path.abspath(folder)) if folder is not None else None


def relative_shown(folder: Path | None) -> Callable[[str], str]:
    """What makes printed text name the files under ``-C DIR`` as the user named them, relative to
    it: the folder's prefix is dropped wherever a path starts, in each form it is printed in (plain,
    made printable, JSON-escaped). Without ``-C`` paths stay as given, so nothing changes."""
    if folder is None or folder.parent == folder:
        return lambda text: text
    prefix = f"{folder}{os.sep}"
    forms = {prefix, printable(prefix), json.dumps(prefix)[1:-1], json.dumps(prefix, ensure_ascii=False)[1:-1]}
    pattern = re.compile(r"(?<![\w./~-])(?:" + "|".join(re.escape(form) for form in sorted(forms, key=len,
                                                                                          reverse=True)) + ")")
    return lambda text: pattern.sub("", text)


def _shown_in(ctx: click.Context | None) -> Callable[[str], str]:
    """:func:`relative_shown` for the command of ``ctx``, made once per command."""
    if ctx is None:
        return relative_shown(None)
    shown = ctx.meta.get(_RELATIVE_SHOWN)
    if shown is None:
        shown = ctx.meta[_RELATIVE_SHOWN] = relative_shown(run_folder(ctx))
    return shown


_RELATIVE_SHOWN = "mdmgen.relative_shown"


def echo(text: str, *, err: bool = False) -> None:
    """Every line a command prints (its logging too, see ``_LogFormatter``), with the paths under
    ``-C DIR`` relative to it."""
    click.echo(_shown_in(click.get_current_context(silent=True))(text), err=err)


class _ClickProgress:
    """A progress bar on stderr, for people watching a terminal."""

    def __init__(self) -> None:
        self._bar = None

    def start(self, total: int, label: str) -> None:
        self._bar = click.progressbar(length=total, label=label, file=sys.stderr)
        self._bar.__enter__()

    def advance(self, count: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


class _LogFormatter(logging.Formatter):
    """Log lines keep the promises of every other line: one line (newlines and escape sequences
    from a server or an input shown escaped), and no secret in any of its forms, at any verbosity."""

    _hiding: tuple[tuple[str, ...], Callable[[str], str]] | None = None

    def __init__(self, fmt: str, run: Resolved | None, shown: Callable[[str], str]):
        super().__init__(fmt)
        # The command's secrets and -C folder, held here: publishing logs from worker threads, outside
        # the run's context and click's.
        self._run = run
        self._shown = shown

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = self._shown(printable(self._hide()(record.message)))
        return super().formatMessage(record)

    def _hide(self) -> Callable[[str], str]:
        """One pattern per set of secrets, not one per log line (``-vv`` logs every request); kept by
        this formatter (one command run), never by the process."""
        secrets = (*environment_secrets(), *(self._run.values() if self._run is not None else ()))
        if self._hiding is None or self._hiding[0] != secrets:
            self._hiding = (secrets, redactor(secrets))
        return self._hiding[1]


DEBUG_LOGGING = "mdmgen.debug_logging"
"""The key in click's ``Context.meta`` (shared by a command and its group) that says the command logs
at debug level, for the group's bug report (a traceback) after the command's logging has ended."""


def _log_for_the_command(ctx: click.Context | None, handler: logging.Handler, level: int) -> None:
    """Send every log record to ``handler`` for this command only: the root logger's handlers and
    level (the process's) are put back when the command ends, so a caller that runs commands in its
    own process (the tests, a long-lived program) keeps its logging, and no handler is left writing
    to a stream the command was given."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    root.handlers[:] = [handler]
    root.setLevel(level)

    def restore() -> None:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])

    if ctx is not None:
        ctx.meta[DEBUG_LOGGING] = level <= logging.DEBUG
        ctx.call_on_close(restore)


class Report:
    """Everything a command says: problems, summary, JSON, logging, progress and exit code."""

    def __init__(self, *, as_json: bool, quiet: bool, verbose: int):
        self.as_json = as_json
        self.quiet = quiet
        self.warnings: list[str] = []
        level = logging.ERROR if quiet else [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
        ctx = click.get_current_context(silent=True)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_LogFormatter("mdmgen: %(levelname)s: %(message)s", resolved(),
                                           _shown_in(ctx)))
        _log_for_the_command(ctx, handler, level)

    def progress(self) -> Progress:
        if self.quiet or not sys.stderr.isatty():
            return NO_PROGRESS
        return _ClickProgress()

    def warn(self, line: str | None) -> None:
        """A ``warning:`` line on stderr (even with -q: it is a problem to act on) and in --json."""
        if line:
            self.warnings.append(printable(line))
            echo(self.warnings[-1], err=True)

    def fail(self, code: ExitCode, message: str, problems: list[Problem] = ()) -> NoReturn:
        fail(code, message, problems, as_json=self.as_json)

    def finish(self, summary: RunSummary, problems: list[Problem], headline: str, changes: output.Changes | None,
               *, suffix: str = "") -> NoReturn:
        lines = _problem_lines(problems)
        for line in _collapsed(problems):
            echo(line, err=True)
        code = ExitCode.ROWS_REJECTED if summary.rejected else ExitCode.OK
        platforms = ", ".join(f"{PLATFORM_LABELS[p]} {summary.platforms[p.value]}" for p in Platform
                              if summary.platforms.get(p.value))
        text = f"{headline} ({platforms}){suffix}; {count(summary.excluded, 'row')} excluded by status"
        if summary.rejected:
            text += f"; {count(summary.rejected, 'row')} rejected (listed above)"
        text += "."
        if changes is not None:
            text += (f" Against the previous output: {len(changes.added)} added, {len(changes.changed)} "
                     f"changed, {len(changes.removed)} removed, {changes.unchanged} unchanged"
                     f"{'' if changes.written else ' (nothing written)'}.")
            if changes.fleet:
                text += f" {changes.fleet.sentence()}"
            if changes.repaired:
                shown = first_of(changes.repaired, 3)
                text += (f" Repaired {count(len(changes.repaired), 'file')} that no longer matched the manifest "
                         f"(edited by hand?): {shown}.")
        if not self.quiet:
            echo(text, err=True)
            if note := summary.status_note():
                echo(printable(note), err=True)
            for line in summary.team_notes():
                echo(printable(line), err=True)
        if self.as_json:
            data = {
                "exit_code": int(code),
                "devices": summary.devices,
                "platforms": {p.value: summary.platforms.get(p.value, 0) for p in Platform},
                "excluded": summary.excluded,
                "rejected": summary.rejected,
                "rendered": summary.rendered,
                "status_columns": {name: found.model_dump() for name, found in summary.status_columns.items()},
                "team_spellings": summary.team_spellings,
                "problems": lines,
                **({"warnings": self.warnings} if self.warnings else {}),
            }
            if changes is not None:
                data["changes"] = {"added": changes.added, "changed": changes.changed,
                                   "removed": changes.removed, "unchanged": changes.unchanged,
                                   "written": changes.written, "fleet": changes.fleet.as_json()}
                data["repaired"] = changes.repaired
            echo(json.dumps(data, indent=2))
        sys.exit(code)


def fail(code: ExitCode, headline: str, problems: Sequence[Problem | str], *, as_json: bool,
          headline_printed: bool = True) -> NoReturn:
    """Print a failure and exit with ``code``: the problems (collapsed), then the headline, on stderr;
    with ``as_json`` also ``{"exit_code", "error", "problems"}`` (every problem) on stdout.

    Every line is made printable (an OS, S3 or Jamf error can hold newlines and escape sequences) and
    has the credentials of the environment and the compile's resolved secrets redacted."""
    hide = redactor([*environment_secrets(), *resolved_values()])
    headline = printable(hide(headline))
    for line in _collapsed(problems):
        echo(hide(line), err=True)
    if headline_printed:
        echo(headline, err=True)
    if as_json:
        lines = [hide(line) for line in _problem_lines(problems)]
        echo(json.dumps({"exit_code": int(code), "error": headline, "problems": lines}, indent=2))
    sys.exit(code)


def count(number: int, noun: str) -> str:
    """``1 row``, ``2 rows``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _problem_lines(problems) -> list[str]:
    """One line per problem, in the order found, without repeats (the full list, for --json)."""
    return list(dict.fromkeys(printable(str(p)) for p in problems))


SAME_PROBLEM_SHOWN = 3


def _collapsed(problems) -> list[str]:
    """The lines for people: a problem shared by many rows (a bad --var hits every device) is
    shown for its first rows, then counted, so 20,000 devices do not print 20,000 lines."""
    shown: list[str] = []
    seen: set[str] = set()
    groups: dict[tuple[str, str], list] = {}
    for problem in problems:
        line = printable(str(problem))
        if line in seen:
            continue
        seen.add(line)
        if isinstance(problem, str):  # a line already written for the user: never grouped
            shown.append(line)
            continue
        group = groups.setdefault((problem.field, problem.message), [])
        group.append(problem)
        if len(group) <= SAME_PROBLEM_SHOWN:
            shown.append(line)
    for (field, _message), group in groups.items():
        if len(group) > SAME_PROBLEM_SHOWN:
            shown.append(printable(f"{group[0].location.file}: {field}: ... and {len(group) - SAME_PROBLEM_SHOWN} "
                                   "more rows with the same problem (--json lists them all)"))
    return shown
