"""The documentation is run, not just read: its shell blocks work when pasted, and the messages
and exit codes it quotes are the ones mdmgen really prints.

The documentation is the README, every page of the site under ``docs/`` and CONTRIBUTING.md.
Every ```sh block carries a marker in an HTML comment (invisible when rendered):
``<!-- readme-test: run -->`` blocks are pasted, in order (the README, then the site's pages in
the order of its navigation), into a fresh copy of the project; ``<!-- readme-test: nightly -->``
is the nightly job, run against a fake /srv; and ``<!-- readme-test: manual: REASON -->`` blocks
need something this machine does not have (a real bucket, a Jamf tenant) or are pasted by the
test the reason names. A block without a marker fails the suite, so a new example is either
tested or says why it cannot be.
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
import yaml

from mdmgen.exitcodes import COMMANDS, ExitCode

from .conftest import ROOT, SHIPPED_POLICY, openssl_path, require_tool, run

DOCS = ROOT / "docs"
BLOCK = re.compile(r"(?:<!-- readme-test: (?P<marker>[^>]*?) -->\n)?```sh\n(?P<body>.*?)```", re.S)


def nav_pages(nav: object) -> list[str]:
    """The pages of mkdocs.yml's ``nav:``, in order."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    return [page for item in nav for page in nav_pages(item)]


def documentation() -> list[Path]:
    """README.md, the site's pages in the order of its navigation (then any page left out of it,
    which the strict build refuses anyway), and CONTRIBUTING.md."""
    ordered = [DOCS / page for page in nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])]
    others = sorted(set(DOCS.rglob("*.md")) - set(ordered))
    return [ROOT / "README.md", *ordered, *others, ROOT / "CONTRIBUTING.md"]


PAGES = {path: path.read_text(encoding="utf-8") for path in documentation()}
README = PAGES[ROOT / "README.md"]
ALL_TEXT = "\n".join(PAGES.values())


def page(name: str) -> str:
    """The text of one page of the site, by its path under docs/ ("targets/s3.md")."""
    return PAGES[DOCS / name]


def shell_blocks_by_page() -> list[tuple[Path, str | None, str]]:
    return [(path, m["marker"], m["body"]) for path, text in PAGES.items() for m in BLOCK.finditer(text)]


def shell_blocks() -> list[tuple[str | None, str]]:
    """Every ```sh block of the documentation, in reading order: (marker, body)."""
    return [(marker, body) for _path, marker, body in shell_blocks_by_page()]


def table_after(heading: str, text: str = README, start: int = 0) -> dict[str, str]:
    """The first Markdown table after ``heading`` in ``text`` (searched from ``start``): first
    column -> second column."""
    start = text.index(heading, start)
    rows: dict[str, str] = {}
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells[0] and not set(cells[0]) <= set("-:") and cells[0] not in ("Code", "Exit code", "Command"):
                rows[cells[0]] = cells[1]
        elif rows:
            break
    return rows


def test_every_shell_block_is_tested_or_says_why_not():
    blocks = shell_blocks_by_page()
    assert blocks, "no shell block found"
    assert {path.parent for path, _marker, _body in blocks} >= {ROOT, DOCS, DOCS / "targets", DOCS / "commands"}
    for path, marker, body in blocks:
        where = f"{path.relative_to(ROOT)}: {body.splitlines()[0] if body else ''}"
        assert marker is not None, f"{where}: a ```sh block has no readme-test marker"
        assert marker in ("run", "nightly") or re.fullmatch(r"manual: \S.*", marker), f"{where}: {marker}"


def test_the_copies_of_the_two_set_up_commands_are_the_readmes():
    """The quick start and the test command appear on the site and in CONTRIBUTING.md too; those
    copies are marked manual because the README's are the ones pasted, so they must be the same."""
    quick_start = next(body for marker, body in shell_blocks() if marker == "run")
    (test_command,) = [body for marker, body in shell_blocks() if marker == "manual: the test command itself"]
    copies = [(marker, body) for marker, body in shell_blocks()
              if marker and marker.startswith("manual: the README's ")]
    assert len(copies) == 3, copies
    for marker, body in copies:
        assert body == (quick_start if "quick start" in marker else test_command), marker


# --- exit codes and messages ----------------------------------------------------------------


def test_the_exit_code_tables_list_what_the_commands_do():
    """The README's short table and the site's full one list every code; the per-command tables
    the site shows are made from exitcodes.py at build time (tests/test_docs.py checks each page),
    and the pages that explain a code in their own words keep their own table, checked here."""
    assert sorted(int(code) for code in table_after("### Exit codes")) == [int(code) for code in ExitCode]
    full = page("exit-codes.md")
    assert sorted(int(code) for code in table_after("# Exit codes", full)) == [int(code) for code in ExitCode]
    assert "<!-- exit-codes: commands -->" in full
    for name, command in (("targets/s3.md", "publish s3"), ("targets/jamf.md", "publish jamf"),
                          ("targets/intune.md", "publish intune"), ("commands/adoption.md", "adoption"),
                          ("commands/explain.md", "explain")):
        codes = table_after("**Exit codes.**", page(name))
        assert sorted(int(c) for c in codes) == sorted(COMMANDS[command]), command
    preflight = table_after("| Exit code | Meaning |", page("commands/preflight.md"))
    assert sorted(int(c) for c in preflight) == sorted(COMMANDS["preflight"])


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_help_text_lists_its_exit_codes(workdir, command):
    """The wiring: each command prints its own table (a command that forgot its epilog, or got
    another command's, fails here); that the tables are right is checked against the documentation."""
    help_text = run(workdir, *command.split(), "--help").stdout
    listed = re.findall(r"^ +(\d)  ", help_text.split("Exit codes:")[1], re.M)
    assert [int(c) for c in listed] == list(COMMANDS[command])


def quoted(prefix: str, containing: str = "") -> str:
    """The documentation's inline-code sample message that starts with ``prefix`` (and holds
    ``containing``)."""
    found = [text for text in re.findall(rf"`({re.escape(prefix)}[^`]*)`", ALL_TEXT) if containing in text]
    assert found, f"the documentation quotes no message starting with {prefix!r}"
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
    text = page("policy.md")
    start = text.index("```yaml\n") + len("```yaml\n")
    example = text[start:text.index("```", start)]
    assert start < text.index("\n## "), "the Policy format page has no yaml example before its first section"
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
    """Quick start, a first look, then trying S3, Jamf and signing locally, each pasted as one block, as a
    newcomer would."""
    require_tool("curl", "the README's S3 example waits for its server with it")
    openssl_path()  # the signing example makes its certificate and verifies with it
    project = project_copy(tmp_path / "mdmgen")
    blocks = [body for marker, body in shell_blocks() if marker == "run"]
    assert len(blocks) == 5
    quick_start, first_look, try_s3, try_jamf, try_signing = blocks
    assert ".[" not in quick_start  # no extras: tests/test_fresh_install.py runs every command after it

    result = paste(quick_start, project, clean_env())
    assert result.returncode == 0, result.stdout
    assert (project / "output" / "manifest.json").is_file()
    assert "Compiled 18 devices into output/" in result.stdout

    result = paste(first_look, project, clean_env())
    assert result.returncode == 0, result.stdout
    assert "Traceback" not in result.stdout
    assert "set by base at profiles/policy.yaml:26" in result.stdout  # explain names the policy line
    assert result.stdout.splitlines()[-1] == "no difference"

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
