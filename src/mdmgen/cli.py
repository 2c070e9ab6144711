"""The ``mdmgen`` command line: parse flags, run the stages, print.

The exit codes, and which command uses which, are in :mod:`mdmgen.exitcodes`: every
``--help`` prints them from there, and a test checks that the README lists the same. A failure
carries its own exit code (:mod:`mdmgen.errors`); every command prints one the same way
(:class:`_Command`), so nothing here maps an exception to a code.
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

from . import __version__, output, policy, runscope
from .errors import MdmgenException
from .exitcodes import ExitCode, help_epilog
from .messages import (
    SIGN_KEY_PASSWORD_ENV,
    SIGN_P12_PASSWORD_ENV,
    environment_secrets,
    first_of,
    printable,
    redactor,
    shorten,
)
from .models import Platform, Problem
from .progress import NO_PROGRESS, Progress
from .publish import defaults
from .secrets import Resolved, resolved, resolved_values
from .summary import RunSummary

if TYPE_CHECKING:  # imported where used: a quiet night (see ``output.state``) needs none of them
    from . import signing

PLATFORM_LABELS = {Platform.MACOS: "macOS", Platform.LINUX: "Linux", Platform.WINDOWS: "Windows",
                   Platform.WSL: "WSL"}



class _RunPath(click.Path):
    """A path option or argument, read from the run's folder (``-C DIR``) when it is relative: as
    ``git -C`` reads its paths, but without changing the process's working directory, which is
    process-wide state a caller (a test, a long-lived program running commands) must not see move.
    Defaults (``output``, ``inventory``, ...) go through here too."""

    def convert(self, value, param, ctx):
        path = super().convert(value, param, ctx)
        base = _run_folder(ctx)
        return path if base is None or path.is_absolute() else base / path


def _run_folder(ctx: click.Context | None) -> Path | None:
    """The absolute ``-C DIR`` of this command, or None when it runs where it was started."""
    folder = ctx.find_root().params.get("directory") if ctx is not None else None
    return Path(os.path.abspath(folder)) if folder is not None else None


def _relative_shown(folder: Path | None) -> Callable[[str], str]:
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


def _echo(text: str, *, err: bool = False) -> None:
    """Every line a command prints (its logging too, see ``_LogFormatter``), with the paths under
    ``-C DIR`` relative to it."""
    click.echo(_relative_shown(_run_folder(click.get_current_context(silent=True)))(text), err=err)


def _parse_vars(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict:
    parsed: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not policy.VARIABLE_NAME_RE.match(name):
            raise click.BadParameter(f"{item.split('=')[0]!r}: expected NAME=VALUE")
        parsed[name] = value
    return parsed


def _inputs(func):
    """The options compile and validate share."""
    func = click.option("--var", "variables", multiple=True, callback=_parse_vars,
                        metavar="NAME=VALUE", help="Override a policy variable (repeatable).")(func)
    func = click.option("--profiles", type=_RunPath(path_type=Path), default=Path("profiles"),
                        show_default=True, help="Policy folder (holding policy.yaml) or file.")(func)
    func = click.option("--inventory", "inventories", multiple=True,
                        type=_RunPath(path_type=Path), default=[Path("inventory")],
                        show_default=True,
                        help="Inventory CSV file or folder of CSVs (repeatable; merged).")(func)
    return func


def _skip_invalid(help_text: str):
    return click.option("--skip-invalid", is_flag=True, help=help_text)


def _reporting(func):
    """Options for how a long run talks: JSON for CI, quiet for cron, -v for logs."""
    func = click.option("-v", "--verbose", count=True, help="Log what happens (-vv for debug).")(func)
    func = click.option("-q", "--quiet", is_flag=True,
                        help="Print only problems: no summary, no progress bar.")(func)
    func = click.option("--json", "as_json", is_flag=True,
                        help="Print a machine-readable summary on stdout.")(func)
    return func


def _signing_options(func):
    """``compile``'s signing options; passwords come from the environment only (see ``signing``)."""
    func = click.option("--sign-p12", type=_RunPath(path_type=Path), metavar="FILE.p12",
                        help=f"Sign with this PKCS#12 identity instead; its password from {SIGN_P12_PASSWORD_ENV}."
                        )(func)
    func = click.option("--sign-key", type=_RunPath(path_type=Path), metavar="KEY.pem",
                        help=f"The private key of --sign-cert (if encrypted, its password from "
                             f"{SIGN_KEY_PASSWORD_ENV}).")(func)
    func = click.option("--sign-cert", type=_RunPath(path_type=Path), metavar="CERT.pem",
                        help="Also write each Mac's claude-code.signed.mobileconfig, signed with this certificate "
                             "(PEM; chain certificates after it are included).")(func)
    return func


class _Command(click.Command):
    """A command that prints mdmgen's own failures, as click's ``main`` prints a ``ClickException``:
    the located problems, then the headline, on stderr; with ``--json`` also ``{"exit_code", "error",
    "problems"}`` on stdout; then it exits with the failure's own code. A ``--var`` the policy does not
    declare reads like any malformed option (``click_usage``).

    ``json_failures=False`` for a command whose ``--json`` describes only its result (diff)."""

    def __init__(self, *args, json_failures: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.json_failures = json_failures

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MdmgenException as exc:
            if exc.click_usage:
                raise click.UsageError(str(exc), ctx) from None
            _fail(exc.exit_code, exc.headline(), exc.problems,
                  as_json=self.json_failures and bool(ctx.params.get("as_json")), headline_printed=exc.headline_printed)


class _GuardedGroup(click.Group):
    """The exception boundary: an exception no stage turned into a user-facing message is a bug
    in mdmgen. It prints one line that names the command and asks for a report (the traceback
    only with -vv) and exits with 70 (EX_SOFTWARE), never a bare traceback that a cron mail or
    a CI log would bury the real problem under.

    Two endings are not bugs (see ``boundary``): a reader of stdout that went away
    (``| head -1``) ends quietly with 141, as Unix tools do; running out of memory, open files or
    disk space is one line and 71."""

    command_class = _Command

    def invoke(self, ctx: click.Context):
        from . import boundary

        # One run (see ``runscope``): the secrets it resolves, for the log formatter and the message
        # below. Closed with the context, after this method, so the next command starts empty.
        ctx.with_resource(runscope.run())
        try:
            try:
                return super().invoke(ctx)
            finally:
                boundary.flush_output()  # a closed pipe shows here, not in the interpreter's last flush
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            command = f"{ctx.command_path} {ctx.invoked_subcommand or ''}".strip()
            if closed := boundary.closed_streams(exc):
                boundary.end_quietly(closed)
                sys.exit(ExitCode.OUTPUT_CLOSED)
            if message := boundary.resource_message(exc, command):
                _echo(printable(message), err=True)
                sys.exit(ExitCode.RESOURCES)
            debug = ctx.meta.get(_DEBUG_LOGGING, False)  # the command's -vv: its logging has ended by now
            if debug:
                import traceback

                traceback.print_exc(file=sys.stderr)
            # Redacted before it is cut, so no secret (not even part of one) is printed.
            reason = printable(shorten(" ".join(str(exc).split()), 200, [*environment_secrets(), *resolved_values()]))
            _echo(f"error: internal error in `{command}` ({type(exc).__name__}: {reason}); this is a bug in "
                       f"mdmgen {__version__}: please report it with the command you ran"
                       f"{'' if debug else ' (-vv shows the traceback)'}", err=True)
            sys.exit(ExitCode.BUG)


@click.group(name="mdmgen", cls=_GuardedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mdmgen")
@click.option("-C", "directory", type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="DIR",
              help="Run as if mdmgen was started in DIR: the command line's relative paths, the defaults too, are "
                   "read from DIR, and files under it are printed relative to it.")
def main(directory: Path | None) -> None:
    """Compile an inventory CSV and a policy into per-device Claude Code managed settings."""


@main.command(name="compile", epilog=help_epilog("compile"))
@_inputs
@_skip_invalid("Compile the valid devices and list the rejected rows (exit 3).")
@_reporting
@click.option("--out", type=_RunPath(path_type=Path), default=Path("output"),
              show_default=True, help="Output folder (replaced atomically).")
@click.option("--full", is_flag=True,
              help="Re-render every device and re-check the files on disk instead of trusting the manifest.")
@_signing_options
def compile_command(inventories, profiles, variables, skip_invalid, as_json, quiet, verbose, out, full,
                    sign_cert, sign_key, sign_p12) -> None:
    """Compile every device and write the output folder.

    Only devices whose inputs changed are rendered again, unchanged files keep their
    modification time, and a run where nothing changed writes nothing.
    """
    report = Report(as_json=as_json, quiet=quiet, verbose=verbose)
    signer = _signer(sign_cert, sign_key, sign_p12)  # before the lock: a bad key writes nothing
    from . import compiler

    outcome = compiler.compile_into(compiler.CompileRequest(
        inventories=inventories, profiles=profiles, variables=variables, out=out, skip_invalid=skip_invalid,
        full=full, signer=signer), progress=report.progress())
    for warning in outcome.warnings:
        report.warn(warning)
    headline = f"Compiled {_count(outcome.summary.devices, 'device')} into {out}/"
    report.finish(outcome.summary, outcome.problems, headline, outcome.changes)


def _signer(cert: Path | None, key: Path | None, p12: Path | None) -> signing.Signer | None:
    """The checked signer of the compile's options, or None; a problem with it is exit 1
    (``signing.SigningError``), a wrong combination of options exit 2."""
    if p12 is not None and (cert is not None or key is not None):
        raise click.UsageError("--sign-p12 holds the certificate and the key: do not also pass --sign-cert or "
                               "--sign-key")
    if (cert is None) != (key is None):
        raise click.UsageError("--sign-cert and --sign-key go together (or pass --sign-p12)")
    if cert is None and p12 is None:
        return None
    from . import signing

    return signing.load_signer(cert=cert, key=key, p12=p12)


def _refuse_out(_ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        raise click.UsageError("validate writes nothing, so it takes no --out; use `mdmgen compile --out DIR` "
                               "to write the output folder")


@main.command(epilog=help_epilog("validate"))
@_inputs
@_skip_invalid("Check every row, list the invalid ones and exit 3 instead of 1 when the others are valid.")
@_reporting
@click.option("--out", hidden=True, expose_value=False, callback=_refuse_out, is_eager=True)
def validate(inventories, profiles, variables, skip_invalid, as_json, quiet, verbose) -> None:
    """Check the inventory and policy like compile does, without writing anything."""
    report = Report(as_json=as_json, quiet=quiet, verbose=verbose)
    from . import compiler

    result = compiler.validate(inventories, profiles, variables, skip_invalid=skip_invalid, progress=report.progress())
    report.finish(result.summary(), result.problems, f"Validated {_count(len(result.devices), 'device')}", None,
                  suffix="; nothing written")


@main.command(name="diff", epilog=help_epilog("diff"), json_failures=False)
@click.argument("old", type=_RunPath(path_type=Path))
@click.argument("new", type=_RunPath(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON on stdout.")
def diff_command(old: Path, new: Path, as_json: bool) -> None:
    """Compare two output folders semantically (for audits).

    Exit codes like diff(1). Secret values are never shown, only that they changed and a short
    fingerprint.
    """
    from . import diff

    result = diff.trees(old, new)  # diff.DiffError: exit 2, diff(1)'s "trouble"
    if as_json:
        _echo(result.model_dump_json(indent=2))
    else:
        for line in result.lines():
            _echo(printable(line))
    sys.exit(0 if result.identical else 1)


@main.command(name="explain", epilog=help_epilog("explain"))
@click.argument("serial")
@_inputs
@click.option("--out", type=_RunPath(path_type=Path), default=Path("output"), show_default=True,
              help="The output folder to compare with (only read).")
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as JSON on stdout.")
def explain_command(serial, inventories, profiles, variables, out, as_json) -> None:
    """Explain one device: each setting's value, the policy layer and line that set it, the template
    and columns it used; then its files, the channels that deliver them, and which the client reads.

    The device is compiled as compile would, in memory; nothing is written. Secrets are shown by
    label and fingerprint only.
    """
    from . import explain

    Report(as_json=as_json, quiet=False, verbose=0)  # sets up logging; a failure is printed by _Command
    found = explain.explain(serial, inventories, profiles, variables, out)
    if as_json:
        _echo(json.dumps(found.as_json(), indent=2, ensure_ascii=False))
    else:
        for line in found.lines():
            _echo(printable(line))
    sys.exit(ExitCode.OK)


@main.command(epilog=help_epilog("schema"))
def schema() -> None:
    """Print the JSON Schema of the policy file (for editors)."""
    _echo(json.dumps(policy.schema(), indent=2, sort_keys=True))


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


_DEBUG_LOGGING = "mdmgen.debug_logging"
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
        ctx.meta[_DEBUG_LOGGING] = level <= logging.DEBUG
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
                                           _relative_shown(_run_folder(ctx))))
        _log_for_the_command(ctx, handler, level)

    def progress(self) -> Progress:
        if self.quiet or not sys.stderr.isatty():
            return NO_PROGRESS
        return _ClickProgress()

    def warn(self, line: str | None) -> None:
        """A ``warning:`` line on stderr (even with -q: it is a problem to act on) and in --json."""
        if line:
            self.warnings.append(printable(line))
            _echo(self.warnings[-1], err=True)

    def fail(self, code: ExitCode, message: str, problems: list[Problem] = ()) -> NoReturn:
        _fail(code, message, problems, as_json=self.as_json)

    def finish(self, summary: RunSummary, problems: list[Problem], headline: str, changes: output.Changes | None,
               *, suffix: str = "") -> NoReturn:
        lines = _problem_lines(problems)
        for line in _collapsed(problems):
            _echo(line, err=True)
        code = ExitCode.ROWS_REJECTED if summary.rejected else ExitCode.OK
        platforms = ", ".join(f"{PLATFORM_LABELS[p]} {summary.platforms[p.value]}" for p in Platform
                              if summary.platforms.get(p.value))
        text = f"{headline} ({platforms}){suffix}; {_count(summary.excluded, 'row')} excluded by status"
        if summary.rejected:
            text += f"; {_count(summary.rejected, 'row')} rejected (listed above)"
        text += "."
        if changes is not None:
            text += (f" Against the previous output: {len(changes.added)} added, {len(changes.changed)} "
                     f"changed, {len(changes.removed)} removed, {changes.unchanged} unchanged"
                     f"{'' if changes.written else ' (nothing written)'}.")
            if changes.fleet:
                text += f" {changes.fleet.sentence()}"
            if changes.repaired:
                shown = first_of(changes.repaired, 3)
                text += (f" Repaired {_count(len(changes.repaired), 'file')} that no longer matched the manifest "
                         f"(edited by hand?): {shown}.")
        if not self.quiet:
            _echo(text, err=True)
            if note := summary.status_note():
                _echo(printable(note), err=True)
            for line in summary.team_notes():
                _echo(printable(line), err=True)
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
            _echo(json.dumps(data, indent=2))
        sys.exit(code)


def _fail(code: ExitCode, headline: str, problems: Sequence[Problem | str], *, as_json: bool,
          headline_printed: bool = True) -> NoReturn:
    """Print a failure and exit with ``code``: the problems (collapsed), then the headline, on stderr;
    with ``as_json`` also ``{"exit_code", "error", "problems"}`` (every problem) on stdout.

    Every line is made printable (an OS, S3 or Jamf error can hold newlines and escape sequences) and
    has the credentials of the environment and the compile's resolved secrets redacted."""
    hide = redactor([*environment_secrets(), *resolved_values()])
    headline = printable(hide(headline))
    for line in _collapsed(problems):
        _echo(hide(line), err=True)
    if headline_printed:
        _echo(headline, err=True)
    if as_json:
        lines = [hide(line) for line in _problem_lines(problems)]
        _echo(json.dumps({"exit_code": int(code), "error": headline, "problems": lines}, indent=2))
    sys.exit(code)


def _count(number: int, noun: str) -> str:
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


# --- mdmgen preflight: check the compiled collector settings before a rollout ---------------------


@main.command(name="preflight", epilog=help_epilog("preflight"))
@click.option("--device", "serial", metavar="SERIAL",
              help="Check this device only (default: each distinct collector setting of the fleet, once).")
@click.option("--out", type=_RunPath(path_type=Path), default=Path("output"), show_default=True,
              help="The compiled output folder to read.")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=120), default=5.0, show_default=True,
              help="Seconds allowed for each network step: the connect, the TLS handshake, and each "
                   "whole export (headers and body, however slowly they arrive).")
@_reporting
def preflight_command(serial: str | None, out: Path, timeout: float, as_json: bool, quiet: bool,
                      verbose: int) -> None:
    """Send one empty OTLP export (metrics, logs) to each collector the compiled settings name.

    One line each for the endpoint, TLS and the token, so a wrong token is told apart from a
    wrong endpoint. Header values and secrets in an endpoint are never printed; a header is shown
    by a slow, salted fingerprint. With --json the report goes to stderr and the JSON to stdout.
    """
    from . import preflight  # imports grpc lazily: only this command needs it

    Report(as_json=as_json, quiet=quiet, verbose=verbose)  # sets up logging; a failure is printed by _Command
    plan = preflight.load(out, serial)
    result = preflight.run(plan, timeout, lambda line: _echo(printable(line), err=as_json), quiet=quiet)
    if as_json:
        _echo(json.dumps(result.as_json(), indent=2))
    sys.exit(result.exit_code)


# --- publish ---------------------------------------------------------------------------------


class _PublishGroup(_GuardedGroup):
    """``mdmgen publish s3://BUCKET/PREFIX ...`` runs the ``s3`` subcommand with the URL as its
    argument, so the destination reads naturally; other targets (``mdmgen publish jamf --url ...``)
    are plain subcommands."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0].startswith("s3://"):
            return "s3", self.get_command(ctx, "s3"), args
        return super().resolve_command(ctx, args)


@main.group(name="publish", cls=_PublishGroup)
def publish_group() -> None:
    """Upload the compiled output folder to where MDM and config-management jobs pull from.

    \b
      mdmgen publish s3://BUCKET/PREFIX [--out DIR] [--dry-run] [--prune] ...
      mdmgen publish jamf --url https://ORG.jamfcloud.com [--out DIR] [--dry-run] [--prune] ...
      mdmgen publish intune [--graph-url URL] [--out DIR] [--dry-run] [--prune] ...
    """


def _publishing(*, prune_help: str):
    """The options every publisher shares: which folder, dry run, and the deletion guard."""
    return lambda func: _publishing_options(func, prune_help)


def _publishing_options(func, prune_help: str):
    func = click.option("--force", is_flag=True, help="Skip the --max-delete guard.")(func)
    func = click.option("--max-delete", type=click.FloatRange(0, 100), default=defaults.MAX_DELETE_PERCENT,
                        show_default=True,
                        metavar="PERCENT",
                        help="With --prune, refuse to delete more than this percent of the published "
                             "devices (exit 6).")(func)
    func = click.option("--prune", is_flag=True, help=prune_help)(func)
    func = click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")(func)
    func = click.option("--out", type=_RunPath(path_type=Path), default=Path("output"),
                        show_default=True, help="The compiled output folder to publish.")(func)
    return func


@publish_group.command(name="s3", epilog=help_epilog("publish s3"))
@click.argument("destination", metavar="s3://BUCKET/PREFIX")
@_publishing(prune_help="Delete the remote files of devices no longer in the output folder.")
@click.option("--verify", is_flag=True,
              help="GET and hash every remote object instead of trusting the published manifest.")
@click.option("--sse-kms-key-id", metavar="KEY", help="Encrypt with this KMS key (aws:kms) instead of AES256.")
@click.option("--endpoint-url", metavar="URL", help="An S3-compatible endpoint (https; plain http only to loopback).")
@click.option("--region", help="AWS region (default: the AWS configuration's, else us-east-1).")
@click.option("--jobs", type=click.IntRange(1, 64), default=defaults.S3_WORKERS, show_default=True,
              help="Requests in parallel.")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=600), default=defaults.S3_TIMEOUT, show_default=True,
              metavar="SECONDS",
              help="How long one connect or one socket read may take; the SDK tries each request 3 times.")
@_reporting
def publish_s3(destination, out, dry_run, prune, max_delete, force, verify, sse_kms_key_id, endpoint_url,
               region, jobs, timeout, as_json, quiet, verbose) -> None:
    """Publish to S3: only changed files are uploaded, manifest.json last.

    Credentials come from the standard AWS chain (environment, profile, SSO, instance role).
    """
    from .publish import s3  # boto3 is imported by publish commands only

    try:
        dest = s3.parse_destination(destination)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="DESTINATION") from None
    try:
        s3.check_endpoint(endpoint_url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--endpoint-url") from None
    report = Report(as_json=as_json, quiet=quiet, verbose=verbose)

    def connect():
        try:
            client = s3.make_client(endpoint_url=endpoint_url, region=region, workers=jobs, timeout=timeout)
        except ValueError as exc:  # a plain-http endpoint from AWS_ENDPOINT_URL or the AWS config
            raise click.UsageError(f"the configured S3 endpoint: {exc}") from None
        return s3.S3Publisher(client, dest, kms_key_id=sse_kms_key_id, verify=verify, workers=jobs)

    _publish(report, connect, str(dest), out=out, dry_run=dry_run, prune=prune, max_delete=max_delete,
             force=force)


@publish_group.command(name="jamf", epilog=help_epilog("publish jamf"))
@click.option("--url", required=True, metavar="URL",
              help="The Jamf Pro server, e.g. https://ORG.jamfcloud.com (https; plain http only to loopback).")
@_publishing(prune_help="Delete mdmgen's profiles of Macs no longer in the output folder.")
@click.option("--category", metavar="NAME",
              help="Put the profiles in this Jamf Pro category (it must exist). Default: leave it as it is.")
@click.option("--jobs", type=click.IntRange(1, defaults.JAMF_MAX_CONNECTIONS),
              default=defaults.JAMF_MAX_CONNECTIONS, show_default=True,
              help="Connections in parallel (at most 5, Jamf's guidance).")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=600), default=defaults.JAMF_TIMEOUT, show_default=True,
              metavar="SECONDS",
              help="A deadline for each whole request (connect, TLS, headers, body) before it is retried; "
                   "a request is tried at most 5 times.")
@_reporting
def publish_jamf(url, out, dry_run, prune, max_delete, force, category, jobs, timeout, as_json, quiet,
                 verbose) -> None:
    """Publish each Mac's profile to Jamf Pro, scoped to that Mac; unchanged profiles are not written.

    Credentials come only from JAMF_CLIENT_ID and JAMF_CLIENT_SECRET (an API client).
    """
    from .publish import jamf

    base_url = _checked_url(jamf.check_url, url, "--url")
    report = Report(as_json=as_json, quiet=quiet, verbose=verbose)

    def connect():
        client = jamf.JamfClient.from_environment(base_url, max_connections=jobs, timeout=timeout)
        return jamf.JamfPublisher(client, category=category, workers=jobs)

    _publish(report, connect, f"Jamf Pro {base_url}", out=out, dry_run=dry_run, prune=prune,
             max_delete=max_delete, force=force)


@publish_group.command(name="intune", epilog=help_epilog("publish intune"))
@_publishing(prune_help="Delete mdmgen's Intune objects that no team of the output folder needs any more.")
@click.option("--graph-url", default=defaults.GRAPH_URL, show_default=True, metavar="URL",
              help="Microsoft Graph (a national cloud, or a test server; https, plain http only to loopback).")
@_reporting
def publish_intune(out, dry_run, prune, max_delete, force, graph_url, as_json, quiet, verbose) -> None:
    """Publish to Microsoft Intune: per team one macOS profile and Windows platform script(s), assigned
    to the team's Entra group, after proving every enrolled device gets exactly its compiled settings.

    \b
    Credentials come only from the environment (azure-identity):
      AZURE_TENANT_ID, AZURE_CLIENT_ID, and one of
      AZURE_CLIENT_SECRET                      a client secret
      AZURE_CLIENT_CERTIFICATE_PATH            a PEM certificate with its key
                                               (AZURE_CLIENT_CERTIFICATE_PASSWORD if encrypted)
      AZURE_FEDERATED_TOKEN_FILE               workload identity federation (GitHub Actions OIDC)
      AZURE_AUTHORITY_HOST                     identity host (default https://login.microsoftonline.com)
      SSL_CERT_FILE, REQUESTS_CA_BUNDLE        a private CA
    """
    from .publish import intune

    base_url = _checked_url(intune.check_url, graph_url, "--graph-url")
    report = Report(as_json=as_json, quiet=quiet, verbose=verbose)

    def connect():
        return intune.make_publisher(base_url)

    _publish(report, connect, f"Intune via {base_url}", out=out, dry_run=dry_run, prune=prune,
             max_delete=max_delete, force=force)


def _checked_url(check, url: str, option: str) -> str:
    """A target's URL as its publisher accepts it, or a usage error (exit 2) naming the option."""
    try:
        return check(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def _publish(report: Report, connect, destination: str, *, out: Path, dry_run: bool, prune: bool,
             max_delete: float, force: bool) -> NoReturn:
    """Run the shared publish flow and print its outcome; a failure carries its exit code."""
    from .publish import base, flow

    for name in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(name).setLevel(logging.WARNING)  # SDK debug logs carry signed headers

    def show_plan(plan: base.Plan) -> None:
        if not report.as_json:
            _echo(f"Plan for {destination}:")
            for line in plan.lines():
                _echo(line)

    outcome = flow.run(out, connect, destination=destination, dry_run=dry_run, prune=prune,
                       max_delete=max_delete, force=force, progress=report.progress(), show_plan=show_plan)
    if not report.quiet:
        _echo(printable(outcome.summary()), err=True)
        for note in outcome.notes:
            _echo(printable(f"note: {note.message}"), err=True)
    if report.as_json:
        _echo(json.dumps(outcome.as_json(), indent=2))
    sys.exit(ExitCode.OK)


# --- mdmgen adoption: who is enrolled, who uses Claude Code, who never reports -----------------------


@main.command(name="adoption", epilog=help_epilog("adoption"))
@click.option("--out", type=_RunPath(path_type=Path), default=Path("output"), show_default=True,
              help="The compiled output folder to read: the devices, their team, the person each sends.")
@click.option("--days", type=click.IntRange(1, 366), default=7, show_default=True,
              help="The window: this many complete UTC days, ending before today.")
@click.option("--anthropic-url", metavar="URL",
              help=f"The Anthropic API (default {defaults.ANTHROPIC_URL}); read when ANTHROPIC_ADMIN_KEY is set.")
@click.option("--prometheus-url", metavar="URL",
              help="The org's Prometheus (its HTTP API's base URL); credentials from PROMETHEUS_BEARER_TOKEN, or "
                   "PROMETHEUS_USERNAME and PROMETHEUS_PASSWORD.")
@click.option("--csv", "csv_path", type=_RunPath(path_type=Path, dir_okay=False), metavar="FILE",
              help="Also write the per-team table as CSV.")
@click.option("--chart", "chart_path", type=_RunPath(path_type=Path, dir_okay=False), metavar="FILE",
              help="Also draw per-team adoption and daily active people (.png or .svg; pip install "
                   "'mdmgen[chart]').")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=600), default=defaults.ADOPTION_TIMEOUT,
              show_default=True, metavar="SECONDS", help="A deadline for each whole request; a request is tried at "
              "most 5 times.")
@click.option("--today", type=click.DateTime(formats=["%Y-%m-%d"]), metavar="YYYY-MM-DD",
              help="Report as if run on this UTC day (default: today), to reproduce a past report.")
@_reporting
def adoption_command(out, days, anthropic_url, prometheus_url, csv_path, chart_path, timeout, today, as_json, quiet,
                     verbose) -> None:
    """Per team: enrolled people, those who used Claude Code in the window, and who never reports.

    \b
    Sources (one or both):
      ANTHROPIC_ADMIN_KEY      the Anthropic Admin API (an Admin key, sk-ant-admin01-...)
      --prometheus-url URL     the org's Prometheus, fed by the collector mdmgen configures
    With pseudonymise_email, MDMGEN_PSEUDONYM_KEY (the compile's key) pseudonymises the sources' emails.
    """
    from . import adoption
    from .adoption import render

    Report(as_json=as_json, quiet=quiet, verbose=verbose)  # sets up logging; a failure is printed by _Command
    options = adoption.Options(out=out, days=days, anthropic_url=anthropic_url, prometheus_url=prometheus_url,
                               timeout=timeout, csv=csv_path, chart=chart_path,
                               today=today.date() if today is not None else None)
    outcome = adoption.run(options)
    lines = render.coverage(outcome.report)
    if as_json:
        _echo(json.dumps({"exit_code": 0, **outcome.report.model_dump(mode="json")}, indent=2,
                              ensure_ascii=False))
    else:
        for line in render.text(outcome.report) + lines:
            _echo(printable(line))
    if not quiet:
        for line in (lines if as_json else []) + [f"Wrote {path}" for path in outcome.written]:
            _echo(printable(line), err=True)
    sys.exit(ExitCode.OK)
