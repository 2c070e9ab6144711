"""Hostile policies and inventories, one finding of issue 11 each: every one ends in a clean
``file:line: field: message`` error with a documented exit code (never a traceback, exit 70,
a hang or a huge file), or in output that round-trips exactly."""

from __future__ import annotations

import json
import plistlib
import re

import pytest

from .conftest import HEADER, run, write_inventory

POLICY_HEAD = "org: {name: Example, identifier_prefix: com.example.mdmgen}\n"
ROW = "MAC1,macos,ann@example.com,Ops\n"


def write_policy(workdir, text: str) -> None:
    (workdir / "profiles" / "policy.yaml").write_text(text, encoding="utf-8")


def one_line_errors(result, *, code: int = 1) -> list[str]:
    """The problem lines of a failed run, after checking it failed cleanly and wrote nothing."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "internal error" not in result.stderr
    return [line for line in result.stderr.splitlines() if not line.endswith("nothing was written.")]


# --- 1. YAML alias bombs and deep nesting -------------------------------------------------------

def alias_bomb(levels: int = 10, width: int = 9) -> str:
    lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_its_line(workdir):
    bomb = alias_bomb()
    assert len(bomb) < 600  # a few hundred bytes that expand to 9**10 values
    write_policy(workdir, POLICY_HEAD + "settings:\n  x: &root\n" +
                 "".join("    " + line + "\n" for line in bomb.splitlines()))
    write_inventory(workdir, HEADER + ROW)
    lines = one_line_errors(run(workdir, "compile"))
    assert len(lines) == 1
    assert re.match(r"^profiles/policy\.yaml:\d+: yaml: the policy holds more than 100,000 values", lines[0])
    assert not (workdir / "output").exists()


def test_a_value_nested_500_deep_through_aliases_is_a_line_not_a_recursion_error(workdir):
    chain = "".join(f"  k{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 500))
    write_policy(workdir, POLICY_HEAD + "settings:\n  k0: &a0 [x]\n" + chain)
    write_inventory(workdir, HEADER + ROW)
    lines = one_line_errors(run(workdir, "compile"))
    assert lines == ["profiles/policy.yaml:64: yaml: values nest deeper than 64 levels once aliases are expanded"]


@pytest.mark.parametrize("nested", ["[" * 500 + "]" * 500, "{a: " * 500 + "1" + "}" * 500])
def test_a_value_written_500_deep_is_a_line(workdir, nested):
    write_policy(workdir, POLICY_HEAD + "settings:\n  x: " + nested + "\n")
    write_inventory(workdir, HEADER + ROW)
    lines = one_line_errors(run(workdir, "validate"))
    assert lines == ["profiles/policy.yaml:3: yaml: values nest deeper than 64 levels"]


def test_a_recursive_anchor_is_refused(workdir):
    write_policy(workdir, POLICY_HEAD + "settings:\n  x: &a [1, *a]\n")
    write_inventory(workdir, HEADER + ROW)
    assert one_line_errors(run(workdir, "validate")) == [
        "profiles/policy.yaml:3: yaml: an alias refers to a value that contains it (a recursive anchor)"]


def test_aliases_that_stay_small_still_work_and_point_at_their_lines(workdir):
    write_policy(workdir, POLICY_HEAD + "settings:\n  env: &e {CLAUDE_CODE_ENABLE_TELEMETRY: '1'}\n"
                 "platforms:\n  linux:\n    settings:\n      env: *e\n      permissions: *e\n")
    write_inventory(workdir, HEADER + ROW + "LNX1,linux,bob@example.com,Ops\n")
    result = run(workdir, "validate")
    assert result.exit_code == 0, result.output
