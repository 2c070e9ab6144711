"""Failures carry their exit code (``mdmgen.errors``), and the command line maps none by hand.

A new failure class gets its code where it is defined; these tests make sure the code is one the
exit-code tables (``exitcodes.COMMANDS``, printed by every ``--help``) document, that ``cli.py`` has no
``except SomeError: exit(N)`` of its own, and that the exceptions outside the root are the ones a
stage turns into a located problem, each named here with the reason.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import pkgutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import mdmgen
from mdmgen import output
from mdmgen.cli import main
from mdmgen.errors import MdmgenException
from mdmgen.exitcodes import COMMANDS, ExitCode

from .conftest import HEADER, SHIPPED_POLICY

CLI = Path(mdmgen.__file__).parent / "cli.py"

NOT_UNDER_THE_ROOT = {
    "mdmgen.attributes.AttributeListError": "a setting's attribute list; the stage reports it as file:line: field",
    "mdmgen.destinations.TeamAttributeError": "carries its located problem; pipeline raises it as MdmgenError",
    "mdmgen.inputfile.InputFileError": "an unreadable input; the reader names the file in its problem",
    "mdmgen.secrets.PseudonymKeyError": "the pipeline and adoption turn it into their own problem or usage error",
    "mdmgen.secrets.SecretReferenceError": "a template's secret() call; rendering reports it with the template's line",
    "mdmgen.secrets.SecretValueError": "a missing secret; rendering reports it with the device's row",
    "mdmgen.templating.TemplateBudgetError": "a Jinja SecurityError; rendering reports it with the template's line",
    "mdmgen.output.state._Invalid": "a compile record that does not check out: the compile renders again",
    "mdmgen.shapes._Unsupported": "a template the fast path does not take: the slow path renders it",
    "mdmgen.http.SlowAnswer": "an httpcore timeout, turned into TransportFailure by the HTTP layer",
}
"""Exceptions mdmgen defines that are deliberately not ``MdmgenException``s: if one reached the
command line its message would lack the file and line that make it useful, so that is a bug (70)."""


def _mdmgen_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined in mdmgen's modules (all of them imported)."""
    for found in pkgutil.walk_packages(mdmgen.__path__, "mdmgen."):
        if not found.name.endswith("__main__"):
            importlib.import_module(found.name)
    classes = {}
    for name, module in list(sys.modules.items()):
        if name == "mdmgen" or name.startswith("mdmgen."):
            for value in vars(module).values():
                if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == name:
                    classes[f"{name}.{value.__qualname__}"] = value
    return classes


def test_every_failure_class_declares_a_documented_exit_code():
    documented = {code for codes in COMMANDS.values() for code in codes} - {ExitCode.OK}
    failures = {name: cls for name, cls in _mdmgen_exceptions().items()
                if issubclass(cls, MdmgenException) and cls is not MdmgenException}
    assert len(failures) >= 20  # the walk found them (publish, adoption, output, explain, ...)
    for name, cls in failures.items():
        code = getattr(cls, "exit_code", None)
        assert isinstance(code, ExitCode), f"{name} declares no ExitCode"
        assert code in documented, f"{name}: exit {int(code)} is in no command's table"
        assert code not in (ExitCode.BUG, ExitCode.RESOURCES, ExitCode.OUTPUT_CLOSED), name


def test_the_exceptions_outside_the_root_are_the_internal_ones():
    outside = {name for name, cls in _mdmgen_exceptions().items() if not issubclass(cls, MdmgenException)}
    assert outside == set(NOT_UNDER_THE_ROOT)


def _caught(handler: ast.ExceptHandler) -> set[str]:
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return {ast.unparse(t).rsplit(".", 1)[-1] for t in types if t is not None}


def test_cli_maps_no_exception_to_an_exit_code():
    """Only the exception boundary (``except Exception``: a bug, a closed pipe, no memory) chooses a
    code in a handler; every other handler neither names an ``ExitCode`` nor exits with a number."""
    tree = ast.parse(CLI.read_text(encoding="utf-8"))
    handlers = [node for node in ast.walk(tree) if isinstance(node, ast.ExceptHandler)]
    assert handlers
    for handler in handlers:
        caught = _caught(handler)
        if caught == {"Exception"}:
            continue
        where = f"cli.py:{handler.lineno}: except {', '.join(sorted(caught))}"
        for node in ast.walk(ast.Module(body=handler.body, type_ignores=[])):
            assert not (isinstance(node, ast.Name) and node.id == "ExitCode"), f"{where} names an ExitCode"
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "sys.exit":
                assert not (node.args and isinstance(node.args[0], ast.Constant)), f"{where} exits with a number"
    mdmgen_names = {name.rsplit(".", 1)[-1] for name, cls in _mdmgen_exceptions().items()
                    if issubclass(cls, MdmgenException)}
    named = set().union(*(_caught(handler) for handler in handlers)) & mdmgen_names
    assert named == {"MdmgenException"}, "cli.py catches mdmgen's failures in one place only"


def test_reading_the_output_folder_as_an_input_makes_its_errors_input_errors():
    with pytest.raises(output.OutputUnusable, match=r"^somewhere: broken$") as caught, output.as_input():
        raise output.OutputError("somewhere: broken")
    assert caught.value.exit_code == ExitCode.INVALID_INPUT
    with pytest.raises(output.OutputBusy), output.as_input():  # a compile holds it: still 5
        raise output.OutputBusy("somewhere: busy")


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """An output folder whose lock file is a link planted at its name (to a file worth keeping)."""
    (tmp_path / "out").mkdir()
    (tmp_path / "thesis.tex").write_text("years of work")
    (tmp_path / ".out.mdmgen-lock").symlink_to(tmp_path / "thesis.tex")
    return tmp_path / "out"


def _invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@pytest.mark.parametrize(("table", "command", "code"), [
    ("compile", ("compile", "--profiles", str(SHIPPED_POLICY)), ExitCode.OUTPUT_FAILED),  # it would write there
    ("publish s3", ("publish", "s3://bucket/prefix", "--dry-run"), ExitCode.INVALID_INPUT),  # reads it as input
    ("adoption", ("adoption", "--prometheus-url", "https://prometheus.example"), ExitCode.INVALID_INPUT),
    ("preflight", ("preflight",), ExitCode.INVALID_INPUT),
])
def test_a_planted_lock_is_each_commands_documented_code(planted: Path, table, command, code):
    """One cause, the code each command's table documents for it: 4 where compile would write the
    folder, 1 where another command reads it as its input; in text one line naming the lock file,
    in --json the same."""
    args = [*command, "--out", str(planted)]
    if command[0] == "compile":
        inventory = planted.parent / "devices.csv"
        inventory.write_text(HEADER + "SN0001,macos,a@example.com,Ops\n", encoding="utf-8")
        args += ["--inventory", str(inventory)]
    env = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "example-secret"}
    result = _invoke(*args, env=env)
    assert result.exit_code == code, result.stderr
    assert code in COMMANDS[table]
    lines = result.stderr.splitlines()
    lock = str(planted.parent / ".out.mdmgen-lock")
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"{lock}: is a symlink" in lines[0], result.stderr
    assert (planted.parent / "thesis.tex").read_text() == "years of work"
    data = json.loads(_invoke(*args, "--json", env=env).stdout)
    assert data["exit_code"] == code and lock in (data["error"] + " ".join(data["problems"]))


def test_an_undeclared_var_still_reads_as_a_malformed_option(tmp_path: Path):
    inventory = tmp_path / "devices.csv"
    inventory.write_text(HEADER + "SN0001,macos,a@example.com,Ops\n", encoding="utf-8")
    result = _invoke("validate", "--profiles", str(SHIPPED_POLICY), "--inventory", str(inventory),
                     "--var", "no_such_variable=1", "--json")
    assert result.exit_code == ExitCode.USAGE
    assert "Usage: mdmgen validate" in result.stderr and "unknown variable no_such_variable" in result.stderr
    assert result.stdout == ""  # click's usage errors have no --json form, as for any other option
