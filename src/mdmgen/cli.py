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
import sys
from enum import IntEnum
from pathlib import Path

import click

from . import __version__, output, pipeline, policy
from .models import MdmgenError, Platform, Problem


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mdmgen")
def main() -> None:
    """Compile an inventory CSV and a policy into per-device Claude Code managed settings."""


@main.command(name="compile")
@_inputs
@click.option("--out", type=click.Path(path_type=Path), default=Path("output"),
              show_default=True, help="Output folder (replaced atomically).")
def compile_command(inventories, profiles, variables, skip_invalid, out) -> None:
    """Compile every device and write the output folder."""
    result = _run(inventories, profiles, variables, skip_invalid)
    try:
        output.write_tree(out, output.tree_files(result.devices))
    except output.OutputError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(ExitCode.OUTPUT_FAILED)
    _finish(result, f"Compiled {len(result.devices)} devices into {out}/")


@main.command()
@_inputs
def validate(inventories, profiles, variables, skip_invalid) -> None:
    """Check the inventory and policy like compile does, without writing anything."""
    result = _run(inventories, profiles, variables, skip_invalid)
    _finish(result, f"Validated {len(result.devices)} devices (nothing written)")


@main.command()
def schema() -> None:
    """Print the JSON Schema of the policy file (for editors)."""
    click.echo(json.dumps(policy.schema(), indent=2, sort_keys=True))


def _run(inventories, profiles, variables, skip_invalid) -> pipeline.CompileResult:
    try:
        result = pipeline.compile_fleet(inventories, profiles, variables, skip_invalid=skip_invalid)
    except MdmgenError as exc:
        _print_problems(exc.problems)
        click.echo(f"{len(exc.problems)} problem(s); nothing was written.", err=True)
        sys.exit(ExitCode.INVALID_INPUT)
    except ValueError as exc:  # unknown --var
        raise click.UsageError(str(exc)) from None
    if not result.devices:
        _print_problems(result.problems)
        click.echo("error: no device to compile (every row was rejected, excluded or the "
                   "inventory is empty); nothing was written.", err=True)
        sys.exit(ExitCode.INVALID_INPUT)
    return result


def _print_problems(problems: list[Problem]) -> None:
    seen: set[str] = set()
    for problem in problems:
        line = str(problem)
        if line not in seen:
            seen.add(line)
            click.echo(line, err=True)


def _finish(result: pipeline.CompileResult, headline: str) -> None:
    _print_problems(result.problems)
    counts = result.per_platform()
    platforms = ", ".join(f"{PLATFORM_LABELS[p]} {counts[p]}" for p in Platform if counts[p])
    summary = f"{headline} ({platforms}); {result.excluded} rows excluded by status"
    if result.rejected:
        summary += f"; {result.rejected} rows rejected (listed above)"
    click.echo(summary + ".", err=True)
    sys.exit(ExitCode.ROWS_REJECTED if result.rejected else ExitCode.OK)
