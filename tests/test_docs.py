"""The documentation site builds, and its reference cannot drift from the code.

``mkdocs build --strict`` fails on a broken link, a missing anchor, a page left out of the
navigation or a marker naming no command, so a renamed page or heading fails here. The option
tables are made by ``docs/hooks.py`` from the click commands; these tests walk the click group
on their own, and check that every command has a page and that every option ``--help`` shows
is on that page once the hook has run.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from mdmgen.cli import main
from mdmgen.exitcodes import COMMANDS

from .conftest import ROOT
from .test_readme import PAGES, table_after

DOCS = ROOT / "docs"


def load_hooks():
    spec = importlib.util.spec_from_file_location("mdmgen_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = load_hooks()


def leaf_commands(command: click.Command = main, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    """Every command of the CLI that runs something, by name ("publish s3"), and the top level."""
    if not path:
        yield "mdmgen", command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from leaf_commands(sub, (*path, name))
    else:
        yield " ".join(path), command


COMMAND_NAMES = [name for name, _command in leaf_commands()]


def page_of(name: str) -> Path:
    """The page that documents ``name``: the one page with its options marker."""
    marker = f"<!-- options: {name} -->"
    (found,) = [path for path, text in PAGES.items() if path.is_relative_to(DOCS) and marker in text.splitlines()]
    return found


def test_the_site_builds_strictly(tmp_path):
    """The command a fresh clone runs with the docs extra, into a temporary folder."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                             str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    built = (tmp_path / "site" / "targets" / "s3" / "index.html").read_text(encoding="utf-8")
    assert "--sse-kms-key-id" in built and "<!-- options:" not in built  # the hook ran


def test_the_walk_finds_every_command():
    assert {"mdmgen", "compile", "validate", "diff", "explain", "preflight", "adoption", "schema",
            "publish s3", "publish jamf", "publish intune"} <= set(COMMAND_NAMES)
    assert set(COMMANDS) <= set(COMMAND_NAMES)


@pytest.mark.parametrize("name", COMMAND_NAMES)
def test_every_option_of_every_command_is_on_its_page(name):
    command = dict(leaf_commands())[name]
    path = page_of(name)
    built = hooks.render(PAGES[path], str(path))
    ctx = click.Context(command, info_name=name.split()[-1])
    help_text = command.get_help(ctx)
    for param in command.params:
        if getattr(param, "hidden", False):
            assert not any(opt in help_text for opt in param.opts), param.opts  # hidden in --help too
            continue
        names = [param.make_metavar(ctx)] if isinstance(param, click.Argument) else param.opts + param.secondary_opts
        for opt in names:
            assert f"`{opt}" in built or f", {opt}" in built, f"{path.relative_to(ROOT)}: {name}: {opt} is missing"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_page_lists_its_exit_codes(name):
    """Each command's page, as built, has a table of exactly the codes the command exits with."""
    path = page_of(name)
    built = hooks.render(PAGES[path], str(path))
    tables = [table_after(heading, built) for heading in ("| Code | Meaning |", "| Exit code | Meaning |")
              if heading in built]
    assert tables, f"{path.relative_to(ROOT)} has no exit-code table"
    assert sorted(int(code) for code in tables[0]) == sorted(COMMANDS[name])


def test_the_generated_tables_are_what_exitcodes_says():
    built = hooks.render("<!-- exit-codes: commands -->\n\n<!-- exit-codes: publish s3 -->\n")
    per_command = table_after("| Command | Exit codes |", built)
    assert {name.strip("`").removeprefix("mdmgen "): [int(c) for c in codes.split(",")]
            for name, codes in per_command.items()} == {name: list(codes) for name, codes in COMMANDS.items()}
    assert "| 6 | --prune was refused by --max-delete; nothing was written. |" in built


def test_a_marker_that_names_no_command_fails_with_the_page():
    with pytest.raises(hooks.MarkerError, match=r"^targets/ftp\.md: no command 'publish ftp'$"):
        hooks.render("<!-- options: publish ftp -->\n", "targets/ftp.md")
    with pytest.raises(hooks.MarkerError, match=r"^x\.md: no exit codes for 'publish ftp'"):
        hooks.render("<!-- exit-codes: publish ftp -->\n", "x.md")


def test_the_readme_is_a_front_page_that_links_into_the_site():
    readme = PAGES[ROOT / "README.md"]
    assert len(readme.splitlines()) <= 250
    linked = set(re.findall(r"\]\((docs/[^)#]+)", readme))
    assert linked, "the README links to no page of the site"
    for target in linked:
        assert (ROOT / target).is_file(), target
    assert {"docs/index.md", "docs/getting-started.md", "docs/commands/index.md", "docs/exit-codes.md",
            "docs/troubleshooting.md"} <= linked
