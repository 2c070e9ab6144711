"""Imports flow downward only: each module of mdmgen imports from its own layer or the ones below.

The layers are the compile's stages in the order they run, with what every stage uses underneath
and the commands and the CLI on top. An import back up the pipeline (compile loading preflight and,
through it, httpx; the output layer loading the inventory and policy stages) made every command
slower to start and every module harder to read alone. The check reads the source with ``ast``, so
it sees function-local imports and ``TYPE_CHECKING`` ones as well: hiding an upward import inside a
function hides a cycle, it does not remove it. A new module must be placed in a layer below.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

SOURCE = ROOT / "src" / "mdmgen"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("values and rules every stage uses", (
        "mdmgen", "mdmgen.messages", "mdmgen.canonical", "mdmgen.boundary", "mdmgen.exitcodes", "mdmgen.fastpath",
        "mdmgen.progress", "mdmgen.errors", "mdmgen.runscope", "mdmgen.inputfile", "mdmgen.attributes",
        "mdmgen.endpoints", "mdmgen.environment", "mdmgen.envschema", "mdmgen.models", "mdmgen.summary",
        "mdmgen.secrets", "mdmgen.versions")),
    ("talking to others: remote errors and retries, HTTP, OTLP destinations", (
        "mdmgen.remote", "mdmgen.http", "mdmgen.otlp")),
    ("reading the inputs", (
        "mdmgen.inventory", "mdmgen.policy", "mdmgen.policy_sections", "mdmgen.templating", "mdmgen.render",
        "mdmgen.runkey")),
    ("emitting", ("mdmgen.emit", "mdmgen.shapes", "mdmgen.destinations")),
    ("the output folder", ("mdmgen.output",)),
    ("the compile", ("mdmgen.pipeline", "mdmgen.signing", "mdmgen.gitcheck")),
    ("the commands", (
        "mdmgen.compiler", "mdmgen.publish", "mdmgen.preflight", "mdmgen.adoption", "mdmgen.explain", "mdmgen.diff")),
    ("what a command prints", ("mdmgen.console",)),
    ("the command line", ("mdmgen.cli", "mdmgen.__main__")),
]
"""Lowest first. An entry names a module, or a package and everything under it."""


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    """The index of the layer ``module`` belongs to: its own entry, else its closest package's."""
    candidates = [(len(entry), index) for index, (_name, entries) in enumerate(LAYERS) for entry in entries
                  if module == entry or (entry != "mdmgen" and module.startswith(entry + "."))]
    return max(candidates)[1] if candidates else None


def imports_of(module: str, source: str, is_package: bool, known: set[str]) -> list[tuple[int, str]]:
    """(line, module) of every import of mdmgen's own modules in ``source``, wherever it sits (top
    level, in a function, under ``if TYPE_CHECKING``); ``from pkg import name`` counts as ``pkg.name``
    when that is a module, else as ``pkg``."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "mdmgen"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            if name.split(".")[0] != "mdmgen":
                continue
            found += [(node.lineno, f"{name}.{alias.name}" if f"{name}.{alias.name}" in known else name)
                      for alias in node.names]
    return found


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}


def violations(module: str, source: str, is_package: bool, known: set[str]) -> list[str]:
    """One line per import of ``module`` that reaches a layer above its own."""
    own = layer_of(module)
    assert own is not None, f"{module}: in no layer; add it to LAYERS in tests/test_layering.py"
    out = []
    for line, imported in imports_of(module, source, is_package, known):
        theirs = layer_of(imported)
        assert theirs is not None, f"{module}:{line}: imports {imported}, which is in no layer"
        if theirs > own:
            out.append(f"{module}:{line}: imports {imported} ({LAYERS[theirs][0]}) from below it "
                       f"({LAYERS[own][0]})")
    return out


def test_every_module_is_in_exactly_one_layer():
    entries = [entry for _name, group in LAYERS for entry in group]
    assert len(entries) == len(set(entries))
    assert [name for name in modules() if layer_of(name) is None] == []


def test_each_module_imports_only_from_its_own_layer_or_below():
    found = modules()
    known = set(found)
    problems = [problem for name, path in found.items()
                for problem in violations(name, path.read_text(encoding="utf-8"), path.name == "__init__.py", known)]
    assert problems == []


def test_the_output_layer_imports_no_input_stage():
    """The output folder is storage under every command (diff, preflight and the publishers read it):
    it is handed what it records (the run key, the versions) and never reads the inputs itself, not
    even from inside a function, so reading a folder never loads the inventory and policy stages."""
    found = modules()
    known = set(found)
    inputs = next(index for index, (name, _entries) in enumerate(LAYERS) if name == "reading the inputs")
    storage = {name: path for name, path in found.items() if layer_of(name) == layer_of("mdmgen.output")}
    reached = [f"{name}:{line}: imports {imported}" for name, path in storage.items()
               for line, imported in imports_of(name, path.read_text(encoding="utf-8"), path.name == "__init__.py",
                                                known)
               if layer_of(imported) == inputs]
    assert reached == []


def test_the_check_sees_an_upward_import_in_a_function_and_under_type_checking():
    """The check itself: an upward import is found wherever it hides, relative or absolute."""
    source = ("from typing import TYPE_CHECKING\n"
              "from ..models import Device\n"
              "if TYPE_CHECKING:\n"
              "    from ..pipeline import Compilation\n"
              "def later():\n"
              "    from mdmgen.publish import http\n"
              "    import mdmgen.cli\n")
    known = {"mdmgen.models", "mdmgen.pipeline", "mdmgen.publish", "mdmgen.cli", "mdmgen.output.layout"}
    lines = violations("mdmgen.output.layout", source, False, known)
    assert [line.split(": imports ")[0] for line in lines] == [
        "mdmgen.output.layout:4", "mdmgen.output.layout:6", "mdmgen.output.layout:7"]
    assert "mdmgen.pipeline (the compile)" in lines[0]


def _loaded_after(statement: str) -> list[str]:
    """The modules in sys.modules after ``statement`` in a fresh interpreter."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          check=True)
    return json.loads(done.stdout)


def test_compiling_loads_no_http_client_and_no_publisher():
    loaded = _loaded_after("import mdmgen.pipeline")
    assert "mdmgen.pipeline" in loaded
    assert [name for name in loaded if name == "httpx" or name.startswith(("httpx.", "mdmgen.publish"))] == []


@pytest.mark.parametrize("stage", ["mdmgen.output", "mdmgen.emit.registry"])
def test_reading_an_output_folder_loads_no_input_stage(stage):
    loaded = _loaded_after(f"import {stage}")
    assert stage in loaded
    above = ("mdmgen.inventory", "mdmgen.policy", "mdmgen.render", "mdmgen.templating", "mdmgen.runkey",
             "mdmgen.pipeline")
    assert [name for name in loaded if name in above] == []
