"""The versions a compile's output depends on besides its inputs: mdmgen's own code and the
libraries that shape what it writes or refuses.

Both the run key (``runkey``) and the compile state record (``output.state``, which names the
versions it was made with) read them. They live in a module of their own, importing nothing of
mdmgen's, so the output layer can read them without loading the inventory and policy stages the
run key needs.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import sys
from pathlib import Path

DEPENDENCIES = ("pydantic", "pydantic-core", "jinja2", "markupsafe", "PyYAML", "email-validator", "idna",
                "dnspython", "cryptography", "grafana-foundation-sdk")
"""The libraries whose version can change what a compile writes or refuses: the models and their
JSON (pydantic), the templates (jinja2, markupsafe), the policy reader (PyYAML), the address checks
(email-validator and what it uses), signed profiles (cryptography), the dashboards (grafana)."""


@functools.lru_cache(maxsize=1)
def dependency_versions() -> tuple[tuple[str, str], ...]:
    """(name, version) of Python and of each of :data:`DEPENDENCIES` (``-`` when not installed)."""
    found = [("python", sys.version)]
    for name in DEPENDENCIES:
        try:
            found.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            found.append((name, "-"))
    return tuple(found)


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over mdmgen's own source files (a few hundred KB): the code is an input too."""
    package = Path(__file__).parent
    outer = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        outer.update(f"{path.relative_to(package).as_posix()}\0".encode() + hashlib.sha256(path.read_bytes()).digest())
    return outer.hexdigest()
