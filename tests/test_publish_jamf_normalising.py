"""``mdmgen publish jamf`` against a Jamf that rewrites profile metadata, and one that does not.

Jamf and the tools around it are reported to fill the top-level ``PayloadDisplayName`` and
``PayloadDescription`` from the profile's Jamf name and description, set their own
``PayloadOrganization`` and add ``PayloadEnabled``/``PayloadRemovalDisallowed``
(shared/reference/jamf-pro-api.md §6.1-6.2). The fake does that with ``normalise_metadata``.
Either way a publish must converge: the first succeeds, an unchanged republish writes nothing,
one changed Mac is one write. A server that stores the *settings* differently stays an error.
"""

from __future__ import annotations

import pytest

from .conftest import run
from .fakes.jamf_server import FakeJamfServer
from .test_publish_jamf import (
    compile_fleet,
    computer,
    jamf_env,  # noqa: F401 - a fixture
    local_settings,
    one_line_error,
    ours,
    sent_payload,
    serial,
    settings_in,
)

PROFILES = "/JSSResource/osxconfigurationprofiles"


def publish(workdir, jamf: FakeJamfServer, *args: str):
    return run(workdir, "publish", "jamf", "--url", jamf.url, *args)


@pytest.mark.parametrize("normalise", [True, False], ids=["normalising-jamf", "storing-jamf"])
def test_a_mixed_fleet_converges_whatever_jamf_does_to_the_metadata(workdir, jamf_env, normalise):  # noqa: F811
    with FakeJamfServer([computer(i) for i in range(4)], normalise_metadata=normalise,
                        organization="Jamf's Org") as jamf:
        out = compile_fleet(workdir, range(4), others=3)  # 4 Macs, and Linux/Windows Jamf never sees
        first = publish(workdir, jamf, "--category", "mdmgen")
        assert first.exit_code == 0, first.output  # the read-back check passed
        assert "4 uploaded (4 new, 0 changed), 0 unchanged" in first.output
        for i in range(4):
            stored = ours(jamf)[f"mdmgen - Claude Code - {serial(i)}"]
            assert settings_in(stored.plist) == local_settings(out, serial(i))
            expected = stored.name if normalise else "Claude Code managed settings"
            assert stored.plist["PayloadDisplayName"] == expected

        jamf.reset_stats()
        again = publish(workdir, jamf, "--category", "mdmgen")
        assert again.exit_code == 0, again.output
        assert "0 uploaded (0 new, 0 changed), 4 unchanged" in again.output
        assert jamf.write_count == 0 and jamf.deployments == []

        name = f"mdmgen - Claude Code - {serial(2)}"
        before = ours(jamf)[name]
        compile_fleet(workdir, range(4), others=3, teams={2: "moved"})
        jamf.reset_stats()
        changed = publish(workdir, jamf, "--category", "mdmgen")
        assert changed.exit_code == 0, changed.output
        assert "1 uploaded (0 new, 1 changed), 3 unchanged" in changed.output
        assert [(w.op, w.profile_id, w.redeploy_on_update) for w in jamf.profile_writes] == [
            ("update", before.id, "All")]
        assert jamf.write_count == 1
        (put,) = jamf.requests_to(f"{PROFILES}/id/*", "PUT")
        sent = sent_payload(put)
        # What Jamf holds is sent back: its identifiers (no ghost profile) and its display metadata.
        for key in ("PayloadIdentifier", "PayloadUUID", "PayloadDisplayName"):
            assert sent[key] == before.plist[key], key
        assert list(jamf.installed_profiles(102)) == [before.payload_identifier]
        assert {d.computer_id for d in jamf.deployments} == {102}

        jamf.reset_stats()
        assert publish(workdir, jamf, "--category", "mdmgen").exit_code == 0
        assert jamf.write_count == 0
        assert jamf.internal_errors == []


def test_a_jamf_that_stores_the_settings_differently_is_a_loud_error(workdir, jamf_env):  # noqa: F811
    def drop_a_setting(plist: dict) -> dict:
        settings = plist["PayloadContent"][0]["PayloadContent"]["com.anthropic.claudecode"]["Forced"][0]
        settings["mcx_preference_settings"].pop("env", None)
        return plist

    with FakeJamfServer([computer(0)], normalise_metadata=True, store_payload=drop_a_setting) as jamf:
        compile_fleet(workdir, range(1))
        result = publish(workdir, jamf)
        assert result.exit_code == 7
        stored = ours(jamf)[f"mdmgen - Claude Code - {serial(0)}"]
        assert one_line_error(result) == (
            f"error: Jamf Pro stored profile 'mdmgen - Claude Code - {serial(0)}' (id {stored.id}) differently from "
            "what was sent (the settings), so every publish would rewrite it; please report this (the writes "
            "that finished are in place; rerun to finish)")
