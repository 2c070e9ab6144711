"""The ``mdmgen`` command line: parse flags, run the stages, print, choose the exit code.

Exit codes (also in the README):
  0  success
  1  input or validation errors: every problem on stderr, nothing written
  2  usage error (unknown option, malformed or unknown --var)
  3  --skip-invalid compiled the valid devices and rejected some rows (listed on stderr)
  4  the output folder could not be written (the previous output is left as it was)
  5  another compile is already running on the same output folder
  6  publish refused: it would delete more published devices than --max-delete allows
  7  a remote system failed or refused (unreachable, TLS, credentials, missing bucket, ...)
"""

from __future__ import annotations

import json
import logging
import sys
from enum import IntEnum
from pathlib import Path
from typing import NoReturn

import click

from . import __version__, diff, output, pipeline, policy
from .models import MdmgenError, Platform, Problem
from .progress import NO_PROGRESS, Progress


class ExitCode(IntEnum):
    OK = 0
    INVALID_INPUT = 1
    USAGE = 2
    ROWS_REJECTED = 3
    OUTPUT_FAILED = 4
    BUSY = 5
    DELETION_REFUSED = 6
    REMOTE_FAILED = 7


PLATFORM_LABELS = {Platform.MACOS: "macOS", Platform.LINUX: "Linux", Platform.WINDOWS: "Windows",
                   Platform.WSL: "WSL"}


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
    func = click.option("--profiles", type=click.Path(path_type=Path), default=Path("profiles"),
                        show_default=True, help="Policy folder (holding policy.yaml) or file.")(func)
    func = click.option("--inventory", "inventories", multiple=True,
                        type=click.Path(path_type=Path), default=[Path("inventory")],
                        show_default=True,
                        help="Inventory CSV file or folder of CSVs (repeatable; merged).")(func)
    func = click.option("--skip-invalid", is_flag=True,
                        help="Compile the valid devices and list rejected rows (exit 3).")(func)
    return func


def _reporting(func):
    """Options for how a long run talks: JSON for CI, quiet for cron, -v for logs."""
    func = click.option("-v", "--verbose", count=True, help="Log what happens (-vv for debug).")(func)
    func = click.option("-q", "--quiet", is_flag=True,
                        help="Print only problems: no summary, no progress bar.")(func)
    func = click.option("--json", "as_json", is_flag=True,
                        help="Print a machine-readable summary on stdout.")(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mdmgen")
def main() -> None:
    """Compile an inventory CSV and a policy into per-device Claude Code managed settings."""


@main.command(name="compile")
@_inputs
@_reporting
@click.option("--out", type=click.Path(path_type=Path), default=Path("output"),
              show_default=True, help="Output folder (replaced atomically).")
@click.option("--full", is_flag=True,
              help="Re-render every device and re-check the files on disk instead of trusting the manifest.")
def compile_command(inventories, profiles, variables, skip_invalid, as_json, quiet, verbose, out, full) -> None:
    """Compile every device and write the output folder.

    Only devices whose inputs changed are rendered again, unchanged files keep their
    modification time, and a run where nothing changed writes nothing.
    """
    report = Report(as_json=as_json, quiet=quiet, verbose=verbose)
    try:
        with output.locked(out):
            previous = None if full else output.read_manifest(out)
            result = _run(report, inventories, profiles, variables, skip_invalid, previous)
            changes = output.write(out, result.devices, previous, result.secret_env, verify=full)
    except output.OutputBusy as exc:
        report.fail(ExitCode.BUSY, f"error: {exc}")
    except output.OutputError as exc:
        report.fail(ExitCode.OUTPUT_FAILED, f"error: {exc}")
    headline = f"Compiled {len(result.devices)} devices into {out}/"
    report.finish(result, headline, changes)


@main.command()
@_inputs
@_reporting
def validate(inventories, profiles, variables, skip_invalid, as_json, quiet, verbose) -> None:
    """Check the inventory and policy like compile does, without writing anything."""
    report = Report(as_json=as_json, quiet=quiet, verbose=verbose)
    result = _run(report, inventories, profiles, variables, skip_invalid, None)
    report.finish(result, f"Validated {len(result.devices)} devices (nothing written)", None)


@main.command(name="diff")
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON on stdout.")
def diff_command(old: Path, new: Path, as_json: bool) -> None:
    """Compare two output folders semantically (for audits).

    Exit codes like diff(1): 0 identical, 1 differences, 2 trouble. Secret values are never
    shown, only that they changed and a short fingerprint.
    """
    try:
        result = diff.trees(old, new)
    except diff.DiffError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(result.model_dump_json(indent=2))
    else:
        for line in result.lines():
            click.echo(line)
    sys.exit(0 if result.identical else 1)


@main.command()
def schema() -> None:
    """Print the JSON Schema of the policy file (for editors)."""
    click.echo(json.dumps(policy.schema(), indent=2, sort_keys=True))


def _run(report: Report, inventories, profiles, variables, skip_invalid, previous) -> pipeline.CompileResult:
    try:
        result = pipeline.compile_fleet(inventories, profiles, variables, skip_invalid=skip_invalid,
                                        previous=previous, progress=report.progress())
    except MdmgenError as exc:
        report.fail(ExitCode.INVALID_INPUT, f"{len(exc.problems)} problem(s); nothing was written.",
                    exc.problems)
    except ValueError as exc:  # unknown --var
        raise click.UsageError(str(exc)) from None
    if not result.devices:
        report.fail(ExitCode.INVALID_INPUT, "error: no device to compile (every row was rejected, "
                    "excluded or the inventory is empty); nothing was written.", result.problems)
    return result


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


class Report:
    """Everything a command says: problems, summary, JSON, logging, progress and exit code."""

    def __init__(self, *, as_json: bool, quiet: bool, verbose: int):
        self.as_json = as_json
        self.quiet = quiet
        level = logging.ERROR if quiet else [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
        logging.basicConfig(level=level, format="mdmgen: %(levelname)s: %(message)s", stream=sys.stderr,
                            force=True)

    def progress(self) -> Progress:
        if self.quiet or not sys.stderr.isatty():
            return NO_PROGRESS
        return _ClickProgress()

    def fail(self, code: ExitCode, message: str, problems: list[Problem] = ()) -> NoReturn:
        lines = _problem_lines(problems)
        for line in lines:
            click.echo(line, err=True)
        click.echo(message, err=True)
        if self.as_json:
            click.echo(json.dumps({"exit_code": int(code), "error": message, "problems": lines}, indent=2))
        sys.exit(code)

    def finish(self, result: pipeline.CompileResult, headline: str, changes: output.Changes | None) -> NoReturn:
        lines = _problem_lines(result.problems)
        for line in lines:
            click.echo(line, err=True)
        code = ExitCode.ROWS_REJECTED if result.rejected else ExitCode.OK
        counts = result.per_platform()
        platforms = ", ".join(f"{PLATFORM_LABELS[p]} {counts[p]}" for p in Platform if counts[p])
        summary = f"{headline} ({platforms}); {result.excluded} rows excluded by status"
        if result.rejected:
            summary += f"; {result.rejected} rows rejected (listed above)"
        summary += "."
        if changes is not None:
            summary += (f" Against the previous output: {len(changes.added)} added, {len(changes.changed)} "
                        f"changed, {len(changes.removed)} removed, {changes.unchanged} unchanged"
                        f"{'' if changes.written else ' (nothing written)'}.")
        if not self.quiet:
            click.echo(summary, err=True)
        if self.as_json:
            data = {
                "exit_code": int(code),
                "devices": len(result.devices),
                "platforms": {p.value: counts[p] for p in Platform},
                "excluded": result.excluded,
                "rejected": result.rejected,
                "rendered": result.rendered,
                "problems": lines,
            }
            if changes is not None:
                data["changes"] = {"added": changes.added, "changed": changes.changed,
                                   "removed": changes.removed, "unchanged": changes.unchanged,
                                   "written": changes.written}
            click.echo(json.dumps(data, indent=2))
        sys.exit(code)


def _problem_lines(problems) -> list[str]:
    """One line per problem, in the order found, without repeats."""
    return list(dict.fromkeys(str(p) for p in problems))


# --- mdmgen preflight: check the compiled collector settings before a rollout ---------------------


@main.command(name="preflight")
@click.option("--device", "serial", metavar="SERIAL",
              help="Check this device only (default: each distinct collector setting of the fleet, once).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("output"), show_default=True,
              help="The compiled output folder to read.")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=120), default=5.0, show_default=True,
              help="Seconds allowed for each network step (connect, TLS handshake, export).")
def preflight_command(serial: str | None, out: Path, timeout: float) -> None:
    """Send one empty OTLP export (metrics, logs) to each collector the compiled settings name.

    One line each for the endpoint, TLS and the token, so a wrong token is told apart from a
    wrong endpoint. Exit 0 when every check passes, 7 when one fails, 1 when the output folder
    cannot be read. Header values are never printed, only a sha256 fingerprint.
    """
    from . import preflight  # imports grpc lazily: only this command needs it

    try:
        plan = preflight.load(out, serial)
    except preflight.PreflightError as exc:
        for line in exc.problems:
            click.echo(f"error: {line}", err=True)
        sys.exit(ExitCode.INVALID_INPUT)
    destinations = plan.destinations
    devices = sum(len(d.serials) for d in destinations)
    click.echo(f"Preflight of {len(destinations)} collector setting(s) used by {devices} device(s), "
               f"one empty OTLP export per signal (timeout {timeout:g}s per step):")
    failed: list[tuple[int, list[str]]] = []
    for index, destination in enumerate(destinations, start=1):
        click.echo(f"[{index}/{len(destinations)}] {preflight.describe(destination)}")
        results = preflight.check_destination(destination, timeout)
        for line in preflight.report_lines(results):
            click.echo(line)
        kinds = preflight.failure_kinds(results)
        if kinds:
            failed.append((len(destination.serials), kinds))
    if plan.silent:
        click.echo(f"Not checked: {len(plan.silent)} device(s) export no OTLP telemetry.")
    if failed:
        kinds = ", ".join(dict.fromkeys(kind for _, found in failed for kind in found))
        click.echo(f"Preflight FAILED for {len(failed)} of {len(destinations)} collector setting(s) "
                   f"({sum(n for n, _ in failed)} device(s)): {kinds}.")
        sys.exit(ExitCode.REMOTE_FAILED)
    click.echo(f"Preflight passed: every collector was reachable and accepted the export ({devices} device(s)).")
    sys.exit(ExitCode.OK)
