"""MkDocs hook: the reference tables that must not drift are made from the code at build time.

A page writes a marker on a line of its own, and the build replaces it:

- ``<!-- options: COMMAND -->`` with a table of every option and argument of that command, made
  from its click parameters exactly as ``mdmgen COMMAND --help`` prints them (names, value,
  help text and default), so an option added to ``cli.py`` appears on its page with no edit;
- ``<!-- exit-codes: COMMAND -->`` with that command's exit codes and their meanings, and
  ``<!-- exit-codes: commands -->`` with which command exits with which code, from
  ``src/mdmgen/exitcodes.py``, the source ``--help`` prints its own table from.

``render`` is plain Python (tests/test_docs.py calls it to check the pages as built); MkDocs
calls ``on_page_markdown``. A marker naming no command fails the build with the page's name.
"""

from __future__ import annotations

import re
from typing import Any

import click

from mdmgen.cli import main
from mdmgen.exitcodes import COMMANDS

OPTIONS = re.compile(r"^<!-- options: (?P<command>[a-z0-9 -]+) -->$", re.M)
EXIT_CODES = re.compile(r"^<!-- exit-codes: (?P<command>[a-z0-9 -]+) -->$", re.M)


class MarkerError(Exception):
    """A marker that names no command: the page would silently lose its table."""


def command_paths(command: click.Command = main, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command that runs something (the groups' leaves), from the click group itself:
    ("compile",), ("publish", "s3"), ..."""
    if not isinstance(command, click.Group):
        return [path]
    found: list[tuple[str, ...]] = [path] if command.params and path else []
    for name, sub in sorted(command.commands.items()):
        found += command_paths(sub, (*path, name))
    return found


def find_command(name: str) -> tuple[click.Command, click.Context]:
    """The click command called ``name`` ("publish s3"; "mdmgen" for the top-level group), and a
    context to format its help in."""
    command: click.Command = main
    ctx = click.Context(main, info_name="mdmgen")
    for word in [] if name == "mdmgen" else name.split():
        if not isinstance(command, click.Group) or word not in command.commands:
            raise MarkerError(f"no command {name!r}")
        command = command.commands[word]
        ctx = click.Context(command, info_name=word, parent=ctx)
    return command, ctx


def cell(text: str) -> str:
    """Text that stays in one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def options_table(name: str) -> str:
    """Every visible parameter of ``name`` as ``--help`` shows it, arguments first."""
    command, ctx = find_command(name)
    rows = ["| Option | What it does |", "|---|---|"]
    for param in command.params:
        if isinstance(param, click.Argument):
            kind = "Argument (required)." if param.required else "Argument."
            rows.append(f"| `{param.make_metavar(ctx)}` | {kind} |")
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None or isinstance(param, click.Argument):
            continue  # hidden (as in --help)
        opts, help_text = record
        rows.append(f"| `{opts}` | {cell(help_text) or ' '} |")
    return "\n".join(rows)


def exit_codes_table(name: str) -> str:
    if name == "commands":
        rows = ["| Command | Exit codes |", "|---|---|"]
        rows += [f"| `mdmgen {command}` | {', '.join(str(c) for c in codes)} |" for command, codes in COMMANDS.items()]
        return "\n".join(rows)
    if name not in COMMANDS:
        raise MarkerError(f"no exit codes for {name!r} in src/mdmgen/exitcodes.py")
    rows = ["| Code | Meaning |", "|---|---|"]
    rows += [f"| {code} | {cell(meaning[:1].upper() + meaning[1:])}. |" for code, meaning in COMMANDS[name].items()]
    return "\n".join(rows)


def render(markdown: str, page: str = "page") -> str:
    """The page with every marker replaced by its table."""
    try:
        markdown = OPTIONS.sub(lambda m: options_table(m["command"]), markdown)
        return EXIT_CODES.sub(lambda m: exit_codes_table(m["command"]), markdown)
    except MarkerError as error:
        raise MarkerError(f"{page}: {error}") from None


def on_page_markdown(markdown: str, page: Any, **_kwargs: Any) -> str:
    return render(markdown, page.file.src_uri)
