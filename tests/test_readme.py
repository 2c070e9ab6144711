"""The README is run, not just read: its shell blocks work when pasted, and the messages and
exit codes it quotes are the ones mdmgen really prints.

Every ```sh block carries a marker in an HTML comment (invisible when rendered):
``<!-- readme-test: run -->`` blocks are pasted, in order, into a fresh copy of the project;
``<!-- readme-test: nightly -->`` is the nightly job, run against a fake /srv; and
``<!-- readme-test: manual: REASON -->`` blocks need something this machine does not have (a
real bucket, a Jamf tenant). A block without a marker fails the suite, so a new example is
either tested or says why it cannot be.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mdmgen.exitcodes import COMMANDS, ExitCode

from .conftest import ROOT, SHIPPED_POLICY, openssl_path, require_tool, run

README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"(?:<!-- readme-test: (?P<marker>[^>]*?) -->\n)?```sh\n(?P<body>.*?)```", re.S)


def shell_blocks() -> list[tuple[str | None, str]]:
    return [(m["marker"], m["body"]) for m in BLOCK.finditer(README)]


def table_after(heading: str, start: int = 0) -> dict[str, str]:
    """The first Markdown table after ``heading`` (searched from ``start``): first column ->
    second column."""
    start = README.index(heading, start)
    rows: dict[str, str] = {}
    for line in README[start:].splitlines()[1:]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells[0] and not set(cells[0]) <= set("-:") and cells[0] not in ("Code", "Exit code", "Command"):
                rows[cells[0]] = cells[1]
        elif rows:
            break
    return rows


def test_every_shell_block_is_tested_or_says_why_not():
    markers = [marker for marker, _body in shell_blocks()]
    assert markers, "no shell block found"
    for marker in markers:
        assert marker is not None, "a ```sh block in the README has no readme-test marker"
        assert marker in ("run", "nightly") or re.fullmatch(r"manual: \S.*", marker), marker


# --- exit codes and messages ----------------------------------------------------------------


def test_the_exit_code_tables_list_what_the_commands_do():
    shared = table_after("### Exit codes")
    assert sorted(int(code) for code in shared) == [int(code) for code in ExitCode]
    per_command = table_after("Which command exits with which code")
    listed = {name.strip("`").removeprefix("mdmgen "): sorted(int(c) for c in codes.split(","))
              for name, codes in per_command.items()}
    assert listed == {command: sorted(codes) for command, codes in COMMANDS.items()}
    for heading, command in (("## Publishing to S3", "publish s3"), ("## Publishing to Jamf Pro", "publish jamf"),
                             ("## Publishing to Microsoft Intune", "publish intune"),
                             ("## Adoption: `mdmgen adoption`", "adoption"),
                             ("## Explaining a device: `mdmgen explain`", "explain")):
        codes = table_after("**Exit codes.**", README.index(heading))
        assert sorted(int(c) for c in codes) == sorted(COMMANDS[command]), command
    preflight = table_after("| Exit code | Meaning |", README.index("### `mdmgen preflight`"))
    assert sorted(int(c) for c in preflight) == sorted(COMMANDS["preflight"])


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_help_text_lists_its_exit_codes(workdir, command):
    """The wiring: each command prints its own table (a command that forgot its epilog, or got
    another command's, fails here); that the tables are right is checked against the README."""
    help_text = run(workdir, *command.split(), "--help").stdout
    listed = re.findall(r"^ +(\d)  ", help_text.split("Exit codes:")[1], re.M)
    assert [int(c) for c in listed] == list(COMMANDS[command])


def quoted(prefix: str, containing: str = "") -> str:
    """The README's inline-code sample message that starts with ``prefix`` (and holds ``containing``)."""
    found = [text for text in re.findall(rf"`({re.escape(prefix)}[^`]*)`", README) if containing in text]
    assert found, f"the README quotes no message starting with {prefix!r}"
    return found[0]


def shipped_project(tmp_path: Path, policy_text: str | None = None) -> Path:
    shutil.copytree(ROOT / "inventory", tmp_path / "inventory")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "policy.yaml").write_text(policy_text or SHIPPED_POLICY.read_text())
    return tmp_path


def test_the_undefined_name_sample_is_what_the_shipped_policy_prints(tmp_path):
    typo = SHIPPED_POLICY.read_text().replace("{{ otlp_endpoint }}", "{{ otlp_endpont }}")
    result = run(shipped_project(tmp_path, typo), "validate")
    assert result.exit_code == 1
    assert quoted("profiles/policy.yaml:", "undefined name") in result.stderr.splitlines()


def test_the_unknown_key_sample_is_what_the_shipped_policy_prints(tmp_path):
    typo = SHIPPED_POLICY.read_text().replace("  identifier_prefix:", "  identifer_prefix:")
    result = run(shipped_project(tmp_path, typo), "validate")
    assert result.exit_code == 1
    assert quoted("profiles/policy.yaml:10: org.identifer_prefix") in result.stderr.splitlines()


def test_the_set_at_sample_names_the_line_of_the_shipped_policy(tmp_path):
    result = run(shipped_project(tmp_path), "validate", "--var", "otlp_endpoint=http://otel.company.com:4317")
    assert result.exit_code == 1
    assert quoted("(set at profiles/policy.yaml:") in result.stderr


def test_the_policy_example_compiles_against_the_shipped_inventory(tmp_path):
    """The first thing a reader copies: the example of "Policy format", with the shipped inventory."""
    section = README.index("## Policy format")
    start = README.index("```yaml\n", section) + len("```yaml\n")
    example = README[start:README.index("```", start)]
    assert start < README.index("\n## ", section + 1), "the Policy format section has no yaml example"
    project = shipped_project(tmp_path, example)
    result = run(project, "compile", "--json", "--out", "out")
    assert result.exit_code == 0, result.output
    settings = (project / "out" / "devices" / "FVFX3GHJQ05N" / "managed-settings.json").read_text()
    assert "cost_center=CC-2100" in settings  # the team override and its extra inventory column


def test_the_status_note_and_platform_samples_are_what_mdmgen_prints(tmp_path):
    project = shipped_project(tmp_path)
    hr = project / "inventory" / "hr.csv"
    header = "Serial,OS,Email,Team,Active Status\n"
    hr.write_text(header + "S1,Windwos,a@example.com,Ops,Yes\nS2,Ubuntu,b@example.com,Ops,Yes\n")
    result = run(project, "validate")
    assert result.exit_code == 1
    sample = quoted("'Windwos' is not a platform")
    assert "inventory/hr.csv:2: platform: " + sample in result.stderr.splitlines()
    hr.write_text(header + "S2,Ubuntu,b@example.com,Ops,Yes\n")
    result = run(project, "validate")
    assert result.exit_code == 0
    assert quoted("Note: ") in result.stderr.splitlines()


# --- the shell blocks, pasted ---------------------------------------------------------------


def project_copy(dest: Path) -> Path:
    """The project as a fresh clone would have it: tracked and untracked-but-not-ignored files."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, names):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def paste(block: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a block as a shell would after pasting it, then end whatever it left in the background.

    Output goes to a file, not a pipe: a server the block started in the background keeps the
    shell's stderr open, and reading a pipe to its end would wait for that server.
    """
    log = cwd / f".paste-{os.getpid()}.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(["bash", "-eo", "pipefail", "-c", block], cwd=cwd, env=env, stdout=sink,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            proc.wait(timeout=600)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    output = log.read_text()
    log.unlink()
    return subprocess.CompletedProcess(block, proc.returncode, output, "")


def clean_env() -> dict[str, str]:
    """The environment of a person's shell: none of the test run's AWS or Jamf variables."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "JAMF_", "VIRTUAL_ENV", "PYTEST"))}


def test_the_run_blocks_work_when_pasted_in_order(tmp_path):
    """Quick start, then trying S3, Jamf and signing locally, each pasted as one block, as a newcomer would."""
    require_tool("curl", "the README's S3 example waits for its server with it")
    openssl_path()  # the signing example makes its certificate and verifies with it
    project = project_copy(tmp_path / "mdmgen")
    blocks = [body for marker, body in shell_blocks() if marker == "run"]
    assert len(blocks) == 4
    quick_start, try_s3, try_jamf, try_signing = blocks
    assert ".[" not in quick_start  # no extras: tests/test_fresh_install.py runs every command after it

    result = paste(quick_start, project, clean_env())
    assert result.returncode == 0, result.stdout
    assert (project / "output" / "manifest.json").is_file()
    assert "Compiled 18 devices into output/" in result.stdout

    result = paste(try_s3, project, clean_env())
    assert result.returncode == 0, result.stdout
    assert "Traceback" not in result.stdout
    assert "Published s3://acme-mdm/claude-code/: 25 uploaded (25 new, 0 changed)" in result.stdout

    result = paste(try_jamf, project, clean_env())
    assert result.returncode == 0, result.stdout
    assert "Traceback" not in result.stdout
    summaries = [line for line in result.stdout.splitlines() if line.startswith("Published Jamf Pro")]
    assert len(summaries) == 2, result.stdout
    assert "4 uploaded (4 new, 0 changed)" in summaries[0]  # 4 new, 2 not enrolled
    assert "0 uploaded (0 new, 0 changed), 4 unchanged" in summaries[1]  # no write
    assert "2 Mac(s) are not enrolled" in result.stdout

    result = paste(try_signing, project, clean_env())
    assert result.returncode == 0, result.stdout
    assert "Traceback" not in result.stdout
    assert "the signed profile embeds the unsigned one" in result.stdout
    summaries = [line for line in result.stdout.splitlines() if line.startswith("Compiled 18 devices")]
    assert len(summaries) == 2, result.stdout
    assert "(nothing written)" not in summaries[0] and "(nothing written)" in summaries[1]
    assert len(list((project / "output" / "devices").glob("*/claude-code.signed.mobileconfig"))) == 6


def test_the_nightly_job_leaves_a_clean_audit_repository(tmp_path):
    """The nightly script, with /srv moved into a temporary folder: every night's result is
    committed and nothing of mdmgen's own state is left untracked."""
    (nightly,) = [body for marker, body in shell_blocks() if marker == "nightly"]
    srv = tmp_path / "srv"
    (srv / "mdmgen").mkdir(parents=True)
    (srv / "mdmgen" / ".venv").symlink_to(Path(sys.executable).parent.parent)
    shutil.copytree(ROOT / "profiles", srv / "mdmgen" / "profiles")
    shutil.copytree(ROOT / "inventory", srv / "hr-export")
    audit = srv / "audit"
    audit.mkdir()
    subprocess.run(["git", "init", "-q", str(audit)], check=True)
    env = {**clean_env(), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    script = nightly.replace("/srv/", f"{srv}/")
    assert "/srv" not in script.replace(str(srv), "")

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(audit), *args], check=True, capture_output=True, text=True).stdout

    for night in (1, 2):
        result = paste(script, tmp_path, env)
        assert result.returncode == 0, result.stdout
        assert git("status", "--porcelain", "--untracked-files=all") == ""
        assert len(git("log", "--oneline").splitlines()) == 1, f"night {night}"  # a quiet night commits nothing
    assert "output/manifest.json" in git("ls-files")
    assert (audit / ".gitignore").read_text().splitlines().count(".*.mdmgen-*") == 1


def test_ci_runs_exactly_the_readme_test_command():
    """What CI runs is what a newcomer pastes: .ci/run ends with the README's test command, and
    that command installs the tools the suite needs (as root) before it runs the tests."""
    (command,) = [body.strip() for marker, body in shell_blocks() if marker == "manual: the test command itself"]
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == command
    assert command.startswith("bash tests/install-tools.sh && ") and command.endswith(" -m pytest")


def test_install_tools_installs_nothing_and_fails_nothing_when_it_cannot(tmp_path):
    """Not root, or no apt-get: the script says what is missing and exits 0 (the tests then skip
    with one reason); with CI set it fails, since CI must have every tool."""
    shims = tmp_path / "bin"
    shims.mkdir()
    for tool in ("bash", "dirname", "id"):  # just what the script itself runs; no tinyproxy, no apt-get
        (shims / tool).symlink_to(shutil.which(tool))
    env = {**clean_env(), "PATH": str(shims)}
    env.pop("CI", None)
    script = str(ROOT / "tests" / "install-tools.sh")
    quiet = subprocess.run([shims / "bash", script], env=env, capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 0, quiet.stderr
    assert "not installing the Debian packages tinyproxy prometheus openssl curl npm" in quiet.stderr
    failing = subprocess.run([shims / "bash", script], env={**env, "CI": "true"}, capture_output=True, text=True,
                             timeout=60)
    assert failing.returncode == 1 and "tinyproxy" in failing.stderr
