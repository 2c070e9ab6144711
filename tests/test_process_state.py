"""No process-wide mutable state outlives a run (issue 23).

A test process, or any long-lived caller, compiles many times: what one compile resolved (a
secret), parsed (a manifest) or checked (100,000 serials) must not reach the next. What a run
needs to keep lives in ``runscope`` for that run only; this file proves two runs in one process
give what two fresh processes give, and that no module keeps a mutable table or cache of its own
except the constants allowed below, each with its reason."""

from __future__ import annotations

import ast
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import yaml
from click.testing import CliRunner

import mdmgen
from mdmgen import runscope, secrets
from mdmgen.cli import main
from mdmgen.console import Report

from .conftest import HEADER, SHIPPED_POLICY

PACKAGE = Path(mdmgen.__file__).parent
FIRST = "tok-Process1Aa9Bb8Cc7"  # test fixtures, never real credentials
ROTATED = "tok-Process2Dd6Ee5Ff4"
ROWS = ("LNX1,linux,ann@example.com,Ops\nMAC1,macos,bob@example.com,Ops\n"
        "WIN1,windows,dan@example.com,Sales\n")

# Module-level containers that are constants: built at import, never changed after. Keyed by name,
# not module, so moving one to another module needs no change here.
ALLOWED = {
    "__all__": "the public names of a package",
    "PLATFORM_LABELS": "display names of the four platforms",
    "_RESOURCE_ERRNOS": "errno -> message for running out of memory, files or disk",
    "TAGS": "the Grafana tags of the generated dashboards",
    "DEFAULT_PORTS": "default OTLP ports by protocol",
    "OTLP_PATHS": "OTLP signal paths of the collector ingress",
    "PATH_TYPES": "ingress path types",
    "_EXPORTERS": "the OTLP exporter names the env schema knows",
    "COMMANDS": "exit codes by command (the documented table)",
    "_READS_FIRST": "which setting source Claude Code reads first, by platform",
    "HEADER_ALIASES": "inventory header spellings",
    "PLATFORM_ALIASES": "inventory platform spellings",
    "_NAMED_ESCAPES": "how a newline, return and tab are shown",
    "_CONTROL_NAMES": "names of two control characters in messages",
    "GRPC_METHODS": "OTLP gRPC method per signal",
    "HTTP_BODIES": "an empty OTLP export body per signal",
    "_JSON_STATUS": "preflight outcome names for --json",
    "_TRANSPORT_KINDS": "token-endpoint failure kinds",
    "_PRIVILEGES": "the Jamf privileges each call needs",
    "_CONFLICT": "S3 error codes meaning a conflict",
    "_BAD_CREDENTIALS": "S3 error codes meaning bad credentials",
    "_ACCESS_DENIED": "S3 error codes meaning access denied",
    "_SCRYPT": "the scrypt parameters of fingerprints",
    "_FILTER_ESTIMATES": "the template budget's cost estimate per filter",
    "_STR_METHOD_ESTIMATES": "the template budget's cost estimate per str method",
    "_KINDS": "the artifact-kind registry: filled at import (and by registry.registered, which removes its "
              "kind when its block ends); holds code, never user data",
}
# Caches allowed to live as long as the process: pure functions of nothing a user supplies.
ALLOWED_CACHES = {
    "_unprintable": "one compiled regex built from the Unicode table, no argument",
    "dependency_versions": "the installed versions of mdmgen's dependencies, no argument",
    "code_digest": "a digest of mdmgen's own source files, no argument",
    "_email_validator": "the email-validator module, imported on first use, no argument",
}
REGISTRIES = {"_KINDS"}  # changed by the function that fills them, on purpose (see its reason)
MUTABLE_CALLS = {"dict", "list", "set", "bytearray", "defaultdict", "OrderedDict", "Counter", "deque", "ChainMap",
                 "WeakValueDictionary", "WeakKeyDictionary", "WeakSet"}
MUTATORS = {"append", "extend", "insert", "remove", "pop", "popitem", "clear", "update", "setdefault", "add",
            "discard", "sort", "reverse", "__setitem__", "__delitem__"}


# --- two runs in one process = two fresh processes ------------------------------------------------


def _project(root: Path) -> None:
    """A fresh project at ``root``: the shipped policy with a secret header on Ops, three devices."""
    if root.exists():
        shutil.rmtree(root)
    (root / "profiles").mkdir(parents=True)
    policy = yaml.safe_load(SHIPPED_POLICY.read_text(encoding="utf-8"))
    policy["teams"] = {"Ops": {"settings": {"env": {
        "OTEL_EXPORTER_OTLP_HEADERS": 'Authorization=Bearer {{ secret("PROC_TOKEN") }}'}}}}
    (root / "profiles" / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False), encoding="utf-8")
    (root / "inventory").mkdir()
    (root / "inventory" / "devices.csv").write_text(HEADER + ROWS, encoding="utf-8")


def _args(root: Path) -> list[str]:
    return ["compile", "-q", "--inventory", str(root / "inventory"), "--profiles", str(root / "profiles"),
            "--out", str(root / "output")]


def _tree(root: Path) -> dict[str, bytes]:
    out = root / "output"
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


# The nights compared: a first compile, the secret rotated, a night with no change (its kept
# generation's manifest is the current one: the second read reuses the first's parse), and a
# changed inventory.
NIGHTS = [(FIRST, None), (ROTATED, None), (ROTATED, None), (ROTATED, "LNX2,linux,eve@example.com,Ops\n")]


def _nights(root: Path, compile_once) -> list[dict[str, bytes]]:
    _project(root)
    trees = []
    for token, extra_row in NIGHTS:
        if extra_row:
            with (root / "inventory" / "devices.csv").open("a", encoding="utf-8") as f:
                f.write(extra_row)
        compile_once(token)
        trees.append(_tree(root))
    return trees


def test_compiles_in_one_process_give_what_fresh_processes_give(tmp_path):
    root = tmp_path / "project"  # the same path both times: a tree may name its own files

    def in_process(token: str) -> None:
        result = CliRunner().invoke(main, _args(root), env={"PROC_TOKEN": token}, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        # Nothing of the run is left: no secret for the next run to redact or hold, no cached name.
        assert secrets.resolved_values() == []
        assert runscope.slot(secrets.Resolved, secrets.Resolved) is None

    def fresh_process(token: str) -> None:
        env = {**os.environ, "PROC_TOKEN": token}
        done = subprocess.run([sys.executable, "-m", "mdmgen", *_args(root)], env=env, capture_output=True,
                              text=True, timeout=300)  # a hang guard only
        assert done.returncode == 0, done.stderr

    same_process = _nights(root, in_process)
    fresh = _nights(root, fresh_process)
    assert same_process == fresh
    # The comparison compares something: the rotation reached the files, the new row its folder.
    ops_file = "devices/LNX1/managed-settings.json"
    assert FIRST.encode() in fresh[0][ops_file] and ROTATED.encode() in fresh[1][ops_file]
    assert not any(FIRST.encode() in data for data in fresh[1].values())
    assert "devices/LNX2/managed-settings.json" in fresh[3]


def test_a_run_keeps_its_state_until_it_ends_and_no_longer():
    assert secrets.resolved_values() == []
    with runscope.run():
        secrets.remember(FIRST)
        with runscope.run():  # a compile inside a command joins the command's run
            secrets.remember(ROTATED)
        assert secrets.resolved_values() == [FIRST, ROTATED]
    assert secrets.resolved_values() == []
    with runscope.run():
        assert secrets.resolved_values() == []  # the next run starts empty
    secrets.remember(FIRST)  # outside a run nothing is kept
    assert secrets.resolved_values() == []


def test_a_memo_computes_once_per_run_and_afresh_after():
    calls: list[str] = []

    @runscope.memo
    def shout(word: str) -> str:
        calls.append(word)
        return word.upper()

    with runscope.run():
        assert [shout("a"), shout("a"), shout("b")] == ["A", "A", "B"]
    assert calls == ["a", "b"]
    with runscope.run():
        shout("a")
    assert calls == ["a", "b", "a"]
    assert shout("a") == "A" and calls[-1] == "a"  # outside a run: computed, not kept


# --- no module keeps state of its own -------------------------------------------------------------


def _modules() -> list[tuple[str, ast.Module]]:
    return [(path.relative_to(PACKAGE.parent).as_posix(), ast.parse(path.read_text(encoding="utf-8")))
            for path in sorted(PACKAGE.rglob("*.py"))]


def _mutable(value: ast.expr | None) -> bool:
    if isinstance(value, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)):
        return True
    return isinstance(value, ast.Call) and ast.unparse(value.func).split(".")[-1] in MUTABLE_CALLS


def _module_containers() -> dict[str, list[str]]:
    """Names bound at module level to a mutable container, with where."""
    found: dict[str, list[str]] = {}
    for where, tree in _modules():
        for node in tree.body:
            if isinstance(node, ast.Assign) and _mutable(node.value):
                targets = [t for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and _mutable(node.value) and isinstance(node.target, ast.Name):
                targets = [node.target]
            else:
                continue
            for target in targets:
                found.setdefault(target.id, []).append(f"{where}:{node.lineno}")
    return found


def test_no_module_keeps_a_mutable_table_but_the_allowed_constants():
    found = _module_containers()
    unexplained = {name: where for name, where in found.items() if name not in ALLOWED}
    assert not unexplained, ("module-level mutable state outlives a run: keep it in the run (runscope) or on "
                             f"an object the run owns, or, for a constant, add it to ALLOWED with why: {unexplained}")
    stale = set(ALLOWED) - set(found)
    assert not stale, f"no longer defined; remove from ALLOWED: {stale}"


def test_no_code_changes_an_allowed_constant():
    constants = set(ALLOWED) - REGISTRIES
    changed = []
    for where, tree in _modules():
        for node in ast.walk(tree):
            target = None
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
                for t in getattr(node, "targets", None) or [node.target]:
                    if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name):
                        target = t.value.id
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and isinstance(node.func.value, ast.Name) and node.func.attr in MUTATORS:
                target = node.func.value.id
            elif isinstance(node, ast.Global):
                changed += [f"{where}:{node.lineno}: global {name}" for name in node.names]
            if target in constants:
                changed.append(f"{where}:{node.lineno}: {target}")
    assert not changed, f"module-level state changed after import: {changed}"


def test_no_cache_outlives_a_run_but_the_allowed_ones():
    caches = {}
    for where, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for decorator in node.decorator_list:
                    text = ast.unparse(decorator)
                    if "cache" in text and "cached_property" not in text:  # a property's cache is its object's
                        caches[node.name] = f"{where}:{node.lineno}: @{text}"
    unexplained = {name: where for name, where in caches.items() if name not in ALLOWED_CACHES}
    assert not unexplained, ("a process-wide cache keeps what one run computed for every later one: use "
                             f"@runscope.memo, or add a pure no-user-data cache to ALLOWED_CACHES: {unexplained}")
    assert not set(ALLOWED_CACHES) - set(caches), "no longer cached; remove from ALLOWED_CACHES"



def test_a_log_line_from_a_worker_thread_is_redacted_too(capsys):
    """Publishing logs from a pool of threads, which start outside the run's context: the log
    formatter holds the run's secrets itself rather than looking them up from the thread."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        with runscope.run():
            Report(as_json=False, quiet=False, verbose=2)
            secrets.remember(FIRST)
            worker = threading.Thread(target=lambda: logging.getLogger("mdmgen.test").warning("sent %s", FIRST))
            worker.start()
            worker.join()
    finally:
        root.handlers[:], root.level = saved
    err = capsys.readouterr().err
    assert "sent " in err and FIRST not in err


def test_a_command_leaves_the_process_logging_as_it_found_it(tmp_path):
    """A command logs to its own stderr while it runs, then puts the root logger's handlers and level
    back: a caller running commands in its own process keeps its logging, and no handler is left
    writing to a stream the command was given."""
    (tmp_path / "profiles").mkdir()
    shutil.copy(SHIPPED_POLICY, tmp_path / "profiles" / "policy.yaml")
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "devices.csv").write_text(HEADER + ROWS, encoding="utf-8")
    root = logging.getLogger()
    before = (root.handlers[:], root.level)
    result = CliRunner().invoke(main, ["-C", str(tmp_path), "compile", "-vv"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert "mdmgen: DEBUG: " in result.stderr or "mdmgen: INFO: " in result.stderr
    assert (root.handlers, root.level) == before
