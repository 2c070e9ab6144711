"""Secrets never reach git by following the documentation.

``compile`` warns, once, when it writes device files that embed a secret inside a git work tree
where they are not ignored; and the documented nightly job, run with the documented secrets example,
commits no token into the audit repository's history. Both use the real ``git``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mdmgen import gitcheck

from .conftest import ROOT, run, write_inventory
from .test_readme import clean_env, paste, shell_blocks

TOKEN = "tok-git-0123456789abc"  # a test fixture, never a real credential
ROTATED = "tok-git-rotated-98765"
ROWS = "serial_number,platform,user_email,team\nLNX-1,linux,ann@example.com,Ops\nMAC-1,macos,bob@example.com,Ops\n"
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_NOSYSTEM": "1"}

if shutil.which("git") is None:
    if os.environ.get("CI"):
        raise RuntimeError("git is not on PATH; these tests need it (CI must have it)")
    pytest.skip("git is not on PATH", allow_module_level=True)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout


@pytest.fixture
def project(workdir: Path, monkeypatch) -> Path:
    """The documented secrets example (profiles/examples/otel-token.yaml) as the policy."""
    monkeypatch.setenv("OTEL_TOKEN", TOKEN)
    shutil.copy(ROOT / "profiles" / "examples" / "otel-token.yaml", workdir / "profiles" / "policy.yaml")
    write_inventory(workdir, ROWS)
    return workdir


def compile_json(project: Path, *args: str) -> tuple[dict, str]:
    result = run(project, "compile", "--json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def test_secret_bearing_files_in_a_work_tree_are_warned_about_once(project):
    git(project, "init", "-q")

    summary, stderr = compile_json(project)

    [line] = warnings_of(stderr)  # one line for the fleet, not one per device
    assert line == ("warning: 6 secret-bearing file(s) under output/devices/ and .output.mdmgen-prev/ (the kept "
                    f"generation beside output) are inside the git work tree {project.resolve()} and not ignored: "
                    "add output/devices/ and .*.mdmgen-* to its .gitignore, or `git add` would commit the secrets")
    assert summary["warnings"] == [line]
    assert TOKEN not in stderr


def test_quiet_still_warns_and_the_kept_generation_counts_too(project):
    git(project, "init", "-q")
    (project / ".gitignore").write_text("output/devices/\n")
    compile_json(project)
    os.environ["OTEL_TOKEN"] = ROTATED  # restored by the fixture's monkeypatch

    result = run(project, "compile", "--quiet")  # writes again: the kept generation is rebuilt

    assert result.exit_code == 0, result.stderr
    [line] = warnings_of(result.stderr)
    assert "under .output.mdmgen-prev/ (the kept generation beside output)" in line
    assert "add .*.mdmgen-* to its .gitignore" in line


def test_ignored_files_are_not_warned_about(project):
    git(project, "init", "-q")
    (project / ".gitignore").write_text("output/devices/\n.*.mdmgen-*\n")

    summary, stderr = compile_json(project)

    assert warnings_of(stderr) == [] and "warnings" not in summary
    assert subprocess.run(["git", "-C", str(project), "status", "--porcelain"], capture_output=True, text=True,
                          check=True).stdout.count("devices") == 0


def test_outside_a_work_tree_or_without_secrets_nothing_is_said(project, tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(project.parent))  # tmp_path may sit inside a repository
    summary, stderr = compile_json(project)
    assert warnings_of(stderr) == [] and "warnings" not in summary

    git(project, "init", "-q")
    shutil.copy(ROOT / "profiles" / "policy.yaml", project / "profiles" / "policy.yaml")  # no secret()
    summary, stderr = compile_json(project)
    assert warnings_of(stderr) == [] and "warnings" not in summary


def test_a_quiet_night_does_not_start_git(project, monkeypatch):
    git(project, "init", "-q")
    (project / ".gitignore").write_text("output/devices/\n.*.mdmgen-*\n")
    compile_json(project)
    monkeypatch.setattr(gitcheck, "secrets_not_ignored", lambda *_: pytest.fail("git was asked on a quiet night"))

    summary, _stderr = compile_json(project)

    assert summary["changes"]["written"] is False


def test_a_tracked_file_is_warned_about_even_when_ignored_later(project):
    git(project, "init", "-q")
    compile_json(project)
    git(project, "add", "output/devices")
    (project / ".gitignore").write_text("output/devices/\n.*.mdmgen-*\n")
    os.environ["OTEL_TOKEN"] = ROTATED

    _summary, stderr = compile_json(project)

    [line] = warnings_of(stderr)
    assert line.startswith("warning: 3 secret-bearing file(s) under output/devices/ are inside the git work tree")


def test_the_nightly_job_with_the_secrets_example_commits_no_token(tmp_path):
    """The documented nightly job, with the secrets example as the policy, for two nights
    (the token rotated in between): the audit repository's history holds the manifest and no token."""
    (nightly,) = [body for marker, body in shell_blocks() if marker == "nightly"]
    srv = tmp_path / "srv"
    (srv / "mdmgen" / "profiles").mkdir(parents=True)
    (srv / "mdmgen" / ".venv").symlink_to(Path(sys.executable).parent.parent)
    shutil.copy(ROOT / "profiles" / "examples" / "otel-token.yaml", srv / "mdmgen" / "profiles" / "policy.yaml")
    shutil.copytree(ROOT / "inventory", srv / "hr-export")
    audit = srv / "audit"
    audit.mkdir()
    git(audit, "init", "-q")
    script = nightly.replace("/srv/", f"{srv}/")

    outputs = []
    for night, token in enumerate((TOKEN, ROTATED), start=1):
        result = paste(script, tmp_path, {**clean_env(), **GIT_ENV, "OTEL_TOKEN": token})
        assert result.returncode == 0, result.stdout
        assert git(audit, "status", "--porcelain", "--untracked-files=all") == ""
        assert len(git(audit, "log", "--oneline").splitlines()) == night
        outputs.append(result.stdout)
    assert "output/manifest.json" in git(audit, "ls-files")
    assert not [name for name in git(audit, "ls-files").splitlines() if name.startswith("output/devices/")]
    everything = subprocess.run(  # every object of the repository, whatever refers to it
        "git rev-list --all --objects | cut -d' ' -f1 | git cat-file --batch", shell=True, cwd=audit,
        capture_output=True, check=True).stdout
    assert TOKEN.encode() not in everything and ROTATED.encode() not in everything
    # The compile warned once, on the first night, before the job added the rule.
    assert [len(warnings_of(text)) for text in outputs] == [1, 0]
