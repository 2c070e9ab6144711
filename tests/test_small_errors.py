"""Small messages from the first-hour trial: each says what is wrong and suggests only what exists."""

from __future__ import annotations

from pathlib import Path

from .conftest import HEADER, run, write_inventory
from .test_publish_intune_auth import graph, tls_files, trap  # noqa: F401 (fixtures)


def test_diff_of_a_missing_folder_suggests_no_option_diff_does_not_have(workdir: Path):
    write_inventory(workdir, HEADER + "S1,linux,a@example.com,Ops\n")
    assert run(workdir, "compile").exit_code == 0
    for args in (("output", "missing"), ("missing", "output")):
        result = run(workdir, "diff", *args)
        assert result.exit_code == 2
        assert result.stderr.splitlines() == [
            "error: missing: no such folder; diff compares two output folders written by `mdmgen compile`"]
        assert "--out" not in result.stderr
    assert not list(workdir.glob("*missing*"))  # not even a lock file beside it


def test_publish_intune_checks_teams_json_before_the_credentials_or_any_request(workdir: Path, graph, monkeypatch):  # noqa: F811
    """The folder's own problem (compiled without an 'intune:' section) is said first, even when the
    credentials are missing too, and nothing reaches the identity platform or Graph."""
    from .intune_helpers import publish

    write_inventory(workdir, HEADER + "C02AAA0001,macos,ada@example.com,ops\nPC01,windows,bo@example.com,ops\n")
    assert run(workdir, "compile").exit_code == 0  # the shipped policy has no 'intune:' section
    for unset in ((), ("AZURE_CLIENT_SECRET",)):
        for name in unset:
            monkeypatch.delenv(name)
        result = publish(workdir, graph)
        assert result.exit_code == 1, result.output
        assert "no intune/teams.json; add an 'intune:' section to the policy" in result.stderr
        assert graph.requests == []
