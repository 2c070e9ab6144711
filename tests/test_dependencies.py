"""Every module mdmgen imports is installed by a plain ``pip install .``, and every runtime
dependency is used.

A module that only the test extras install works under the tests and crashes after the quick
start (``publish intune`` once did, with ``No module named 'azure'``), so this reads every
import in ``src/mdmgen`` (function-local ones included) from the source, maps it to the
distribution that provides it, and compares with ``[project] dependencies`` in pyproject.toml.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path

from .conftest import ROOT

SOURCE = ROOT / "src" / "mdmgen"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

# A runtime dependency no module imports by name, each with its reason.
USED_WITHOUT_IMPORT: dict[str, str] = {}


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them (``PyYAML`` = ``pyyaml``, ``a_b`` = ``a-b``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: list[str]) -> set[str]:
    return {normalise(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req)[0]) for req in requirements}


RUNTIME = requirement_names(PYPROJECT["project"]["dependencies"])
EXTRAS = {extra: requirement_names(reqs) for extra, reqs in PYPROJECT["project"]["optional-dependencies"].items()}


def guarded_by_import_error(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether an import sits in a ``try`` whose handler catches ImportError: an optional module,
    whose absence the code turns into its own message."""
    while node in parents:
        child, node = node, parents[node]
        if isinstance(node, ast.Try) and child in node.body:
            for handler in node.handlers:
                names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
                if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names):
                    return True
    return False


def third_party_imports() -> dict[str, list[tuple[str, bool]]]:
    """Dotted module name -> [(``file:line``, guarded)] for every absolute import outside the
    standard library and mdmgen itself."""
    found: dict[str, list[tuple[str, bool]]] = {}
    for path in sorted(SOURCE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.partition(".")[0]
                if top in sys.stdlib_module_names or top in ("mdmgen", "__future__"):
                    continue
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                found.setdefault(module, []).append((where, guarded_by_import_error(node, parents)))
    return found


@cache
def top_level_owners() -> dict[str, list[str]]:
    return metadata.packages_distributions()


@cache
def files_of(dist: str) -> frozenset[Path]:
    return frozenset(Path(metadata.distribution(dist).locate_file(f)).resolve()
                     for f in metadata.distribution(dist).files or ())


def distribution_of(module: str) -> str:
    """The distribution providing ``module``, from importlib.metadata: the one that owns its top-level
    name, or for a namespace package that several share (``azure``), the one that installed the file."""
    candidates = sorted({normalise(c) for c in top_level_owners().get(module.partition(".")[0], [])})
    if len(candidates) == 1:
        return candidates[0]
    parts = module.split(".")
    for end in range(len(parts), 1, -1):
        spec = find_spec(".".join(parts[:end]))
        if spec is not None and spec.origin:
            owners = [dist for dist in candidates if Path(spec.origin).resolve() in files_of(dist)]
            if owners:
                return owners[0]
    raise AssertionError(f"no installed distribution provides {module!r} (candidates: {candidates})")


def test_the_scan_sees_the_imports_that_matter():
    """The scan itself: it finds a function-local import, and a guarded optional one."""
    imports = third_party_imports()
    assert any(where.startswith("src/mdmgen/publish/intune/graph.py") and not guarded
               for where, guarded in imports["azure.identity"])
    assert all(guarded for _where, guarded in imports["truststore"])
    assert "grpc" in imports and "json" not in imports and "mdmgen.cli" not in imports


def test_every_module_mdmgen_imports_is_a_runtime_dependency():
    """An unguarded import must come from ``[project] dependencies``. A guarded one (``try: import
    x / except ImportError``) is optional: it must come from an extra other than ``test``, so the
    message the code prints (``pip install 'mdmgen[EXTRA]'``) names something installable."""
    missing, optional_wrong = [], []
    for module, places in sorted(third_party_imports().items()):
        dist = distribution_of(module)
        for where, guarded in places:
            if guarded:
                if not any(dist in names for extra, names in EXTRAS.items() if extra != "test"):
                    optional_wrong.append(f"{where}: {module} ({dist}) is optional but in no extra but 'test'")
            elif dist not in RUNTIME:
                missing.append(f"{where}: {module} comes from {dist}, which is not in [project] dependencies")
    assert not missing, "\n".join(missing)
    assert not optional_wrong, "\n".join(optional_wrong)


def test_every_runtime_dependency_is_imported_or_says_why_not():
    imported = {distribution_of(module) for module, places in third_party_imports().items()
                if not all(guarded for _where, guarded in places)}
    unused = RUNTIME - imported - {normalise(name) for name in USED_WITHOUT_IMPORT}
    assert not unused, f"runtime dependencies no module of mdmgen imports: {sorted(unused)}"
