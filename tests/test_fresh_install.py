"""After the README's quick start, and nothing else installed, every command works.

Slow on purpose (about a minute, marked ``fresh_install``; deselect with ``-m 'not
fresh_install'``): the README's quick-start block is pasted into a fresh copy of the project, so
mdmgen is installed without extras into a new virtual environment (pip's cache makes that
quick), once for this module. Then every command's ``--help`` runs there, and each publisher
publishes for real against its test server. The servers run here, in the test environment; only
the mdmgen under test runs from the fresh one. The test extras hid a missing runtime dependency
once (``publish intune`` exited 70 with ``No module named 'azure'``): here they are not
installed, which the fixture checks.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from mdmgen.cli import main

from .fakes.graph_server import FakeGraphServer
from .fakes.jamf_server import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Computer, FakeJamfServer
from .fakes.s3_server import S3Server
from .fakes.tls import self_signed
from .intune_helpers import Row, azure_env, seed, writes
from .test_publish_s3 import aws_env  # noqa: F401 - a fixture
from .test_readme import clean_env, paste, project_copy, shell_blocks

pytestmark = pytest.mark.fresh_install

TEST_ONLY = ("pytest", "hypothesis", "moto", "jsonschema", "tree_sitter")
SHIPPED_MACS = ["C02XK1AAJGH5", "C02XK1ABJGH6", "FVFZ2ACDQ6L4", "C02YL2EFMD6R"]  # four of the six, as in the docs


def command_paths(command: click.Command = main, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command of the CLI, from its click group: (), ("compile",), ("publish", "s3"), ..."""
    yield path
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from command_paths(sub, (*path, name))


COMMANDS = list(command_paths())


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh copy of the project after the README's quick start: ``.venv`` without extras, and
    the shipped inventory compiled into ``output/``."""
    quick_start = next(body for marker, body in shell_blocks() if marker == "run")
    assert "pip install -e . " in quick_start and "[" not in quick_start, "the quick start installs extras"
    project = project_copy(tmp_path_factory.mktemp("fresh") / "mdmgen")
    result = paste(quick_start, project, clean_env())
    assert result.returncode == 0, result.stdout
    probe = "import importlib.util as u, sys; print(*[m for m in sys.argv[1:] if u.find_spec(m)])"
    found = subprocess.run([project / ".venv" / "bin" / "python", "-c", probe, *TEST_ONLY], capture_output=True,
                           text=True, check=True, timeout=120).stdout.split()
    assert found == [], "the quick start installed test-only packages, so this test would prove nothing"
    return project


def mdmgen(project: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The fresh install's ``mdmgen ARGS``, in this process's environment (as the fixtures set it)
    minus what points Python at the test environment."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("PYTEST")}
    return subprocess.run([project / ".venv" / "bin" / "mdmgen", *args], cwd=cwd or project, env=env,
                          capture_output=True, text=True, timeout=300)  # a hang guard only


def assert_clean(result: subprocess.CompletedProcess) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "internal error" not in output and "Traceback" not in output, output


def test_the_enumeration_finds_every_command():
    assert {("publish", "s3"), ("publish", "jamf"), ("publish", "intune"), ("compile",), ("preflight",)} <= set(
        COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "mdmgen")
def test_every_command_prints_its_help(fresh: Path, path: tuple[str, ...]):
    result = mdmgen(fresh, *path, "--help")
    assert_clean(result)
    assert result.stdout.startswith(f"Usage: mdmgen {' '.join(path)}".rstrip()), result.stdout


def test_version(fresh: Path):
    result = mdmgen(fresh, "--version")
    assert_clean(result)
    assert "0." in result.stdout


def test_publish_s3_to_moto(fresh: Path, aws_env):  # noqa: F811 - the fixture imported above
    with S3Server() as s3:
        s3.client().create_bucket(Bucket="fleet")
        result = mdmgen(fresh, "publish", "s3://fleet/prod", "--endpoint-url", s3.url)
        assert_clean(result)
        assert "Published s3://fleet/prod/:" in result.stderr + result.stdout
        assert s3.client().head_object(Bucket="fleet", Key="prod/manifest.json")["ContentLength"] > 0


def test_publish_jamf_to_the_fake_jamf_pro(fresh: Path, monkeypatch):
    monkeypatch.setenv("JAMF_CLIENT_ID", DEFAULT_CLIENT_ID)
    monkeypatch.setenv("JAMF_CLIENT_SECRET", DEFAULT_CLIENT_SECRET)
    with FakeJamfServer([Computer(i + 1, f"mac-{i + 1}", s) for i, s in enumerate(SHIPPED_MACS)]) as jamf:
        result = mdmgen(fresh, "publish", "jamf", "--url", jamf.url)
        assert_clean(result)
        assert sorted(p.name for p in jamf.profiles()) == sorted(f"mdmgen - Claude Code - {s}" for s in SHIPPED_MACS)
        assert jamf.internal_errors == []


def test_publish_intune_dry_run_to_the_fake_entra_and_graph(fresh: Path, tmp_path: Path, monkeypatch):
    """The issue's own case: the quick start, then ``publish intune --dry-run`` (Entra ID's token
    through azure-identity, Graph's reads), with no extras installed."""
    rows = [Row("C02MAC0001", "macos", "ann@example.com", "ops"), Row("PC0001", "windows", "bob@example.com", "ops")]
    work = tmp_path / "fleet"
    (work / "profiles").mkdir(parents=True)
    (work / "inventory").mkdir()
    (work / "profiles" / "policy.yaml").write_text((fresh / "profiles" / "policy.yaml").read_text() + "\nintune: {}\n")
    (work / "inventory" / "devices.csv").write_text(
        "serial_number,platform,user_email,team\n" + "".join(f"{r.serial},{r.platform},{r.email},{r.team}\n"
                                                             for r in rows))
    assert_clean(mdmgen(fresh, "compile", cwd=work))
    tls = self_signed(tmp_path / "tls")
    with FakeGraphServer(tls=tls) as graph:
        azure_env(monkeypatch, graph, tls[0])
        seed(graph, rows)
        result = mdmgen(fresh, "publish", "intune", "--graph-url", graph.graph_url, "--dry-run", cwd=work)
        assert_clean(result)
        assert "Proof: 1 enrolled Mac(s) and 1 enrolled PC(s) of 1 team(s)" in result.stdout + result.stderr
        assert writes(graph) == [] and graph.internal_errors == []
        assert graph.requests_to("*/oauth2/*"), "no token was asked of Entra ID"


def test_adoption_runs_without_extras_and_the_chart_asks_for_its_extra(fresh: Path, monkeypatch):
    """The Admin API source needs no extra; ``--chart`` without matplotlib is one line naming the extra."""
    from datetime import date

    from .fakes.anthropic_server import FakeAnthropicServer, user_row

    key = "sk-ant-admin01-fresh-install-key-0000"
    monkeypatch.setenv("ANTHROPIC_ADMIN_KEY", key)
    with FakeAnthropicServer(admin_key=key, today=date(2026, 8, 20)) as fake:
        fake.add(date(2026, 8, 19), user_row("Alice.Nguyen@Example.com", 2))
        args = ("adoption", "--anthropic-url", fake.url, "--today", "2026-08-20", "--json")
        result = mdmgen(fresh, *args)
        assert_clean(result)
        teams = {t["team"]: t["active"] for t in json.loads(result.stdout)["teams"]}
        assert teams["Platform Eng"] == 1
        chart = mdmgen(fresh, *args, "--chart", "adoption.png")
        assert chart.returncode == 2 and "pip install 'mdmgen[chart]'" in chart.stderr
        assert len(chart.stderr.strip().splitlines()) == 1 and not (fresh / "adoption.png").exists()
