"""``mdmgen publish jamf`` against the fake Jamf Pro server (tests/fakes/jamf_server.py) over real HTTP.

The output folders come from the real ``mdmgen compile``, the command is the real CLI, and the
assertions are about what the server saw and holds: requests, writes, scopes, and the profiles
its simulated Macs have installed.
"""

from __future__ import annotations

import json
import plistlib
import re
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mdmgen.publish import base, local
from mdmgen.publish import jamf as jamfpub

from .conftest import run
from .fakes.jamf_server import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    Computer,
    FakeJamfServer,
    html_error_page,
)
from .scripted import Script

PROFILES = "/JSSResource/osxconfigurationprofiles"
TOKEN = "/api/oauth/token"
DOMAIN = "com.anthropic.claudecode"


# --- fixtures and helpers --------------------------------------------------------------------


def serial(i: int) -> str:
    return f"MAC{i:04d}"


def computer(i: int) -> Computer:
    return Computer(100 + i, f"mac-{i}", serial(i))


@pytest.fixture
def jamf_env(monkeypatch) -> None:
    monkeypatch.setenv("JAMF_CLIENT_ID", DEFAULT_CLIENT_ID)
    monkeypatch.setenv("JAMF_CLIENT_SECRET", DEFAULT_CLIENT_SECRET)


def server(macs: int = 8, **kwargs) -> FakeJamfServer:
    return FakeJamfServer([computer(i) for i in range(macs)], **kwargs)


@pytest.fixture
def jamf(jamf_env):
    with server() as fake:
        yield fake
        assert fake.internal_errors == []


def compile_fleet(workdir: Path, macs, *, teams: dict[int, str] | None = None, others: int = 2) -> Path:
    """Compile Macs MAC0000.. (the given numbers) plus ``others`` Linux/Windows devices."""
    teams = teams or {}
    lines = ["serial_number,platform,user_email,team"]
    lines += [f"{serial(i)},macos,user{i}@example.com,{teams.get(i, f'team{i % 3}')}" for i in macs]
    lines += [f"PC{i:04d},{('linux', 'windows')[i % 2]},pc{i}@example.com,ops" for i in range(others)]
    (workdir / "inventory" / "devices.csv").write_text("\n".join(lines) + "\n")
    result = run(workdir, "compile")
    assert result.exit_code == 0, result.output
    return workdir / "output"


def publish(workdir: Path, jamf: FakeJamfServer, *args: str):
    return run(workdir, "publish", "jamf", "--url", jamf.url, *args)


def ours(jamf: FakeJamfServer) -> dict[str, object]:
    return {p.name: p for p in jamf.profiles()}


def settings_in(plist: dict) -> dict:
    return plist["PayloadContent"][0]["PayloadContent"][DOMAIN]["Forced"][0]["mcx_preference_settings"]


def local_settings(out: Path, sn: str) -> dict:
    return json.loads((out / "devices" / sn / "managed-settings.json").read_text())


def sent_payload(record) -> dict:
    return plistlib.loads((ET.fromstring(record.body).findtext("general/payloads") or "").encode())


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def writes(jamf: FakeJamfServer) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in jamf.requests if r.method in ("POST", "PUT", "DELETE")
            and r.path.startswith(PROFILES)]


# --- first publish ---------------------------------------------------------------------------


def test_first_publish_makes_one_profile_per_mac_scoped_to_exactly_that_mac(workdir: Path, jamf):
    out = compile_fleet(workdir, range(4))
    result = publish(workdir, jamf, "--category", "mdmgen")
    assert result.exit_code == 0, result.output
    assert f"Published Jamf Pro {jamf.url}: 4 uploaded (4 new, 0 changed), 0 unchanged, 0 deleted." in result.output
    profiles = ours(jamf)
    assert sorted(profiles) == [f"mdmgen - Claude Code - {serial(i)}" for i in range(4)]  # no Linux/Windows
    local_profile = plistlib.loads((out / "devices" / serial(0) / "claude-code.mobileconfig").read_bytes())
    for i in range(4):
        stored = profiles[f"mdmgen - Claude Code - {serial(i)}"]
        assert (stored.category_name, stored.level, stored.distribution_method, stored.user_removable) == (
            "mdmgen", "computer", "Install Automatically", False)
        scope = stored.scope
        assert [c["id"] for c in scope["computers"]] == [100 + i]
        assert scope["all_computers"] is False and scope["computer_groups"] == []
        assert all(not entries for entries in scope["exclusions"].values())
        assert settings_in(stored.plist) == local_settings(out, serial(i))
        assert stored.plist["PayloadDisplayName"] == local_profile["PayloadDisplayName"]
        assert stored.plist["PayloadScope"] == "System"
        assert serial(i) in stored.description
        # Each Mac has exactly this one profile installed, with its own settings.
        installed = jamf.installed_profiles(100 + i)
        assert list(installed) == [stored.payload_identifier]
        assert settings_in(installed[stored.payload_identifier]) == local_settings(out, serial(i))
    assert [w.op for w in jamf.profile_writes] == ["create"] * 4
    assert jamf.installed_profiles(150) == {}


def test_the_unsigned_compiled_profile_is_what_is_uploaded(workdir: Path, jamf):
    out = compile_fleet(workdir, range(2))
    assert publish(workdir, jamf).exit_code == 0
    for record in jamf.requests_to(f"{PROFILES}/id/0", "POST"):
        sent = sent_payload(record)
        sn = sent["PayloadIdentifier"].rsplit(".", 1)[1]
        assert sent == plistlib.loads((out / "devices" / sn / "claude-code.mobileconfig").read_bytes())
        assert record.headers["Content-Type"] == "application/xml"
        assert record.body.startswith(b'<?xml version="1.0" encoding="UTF-8"?><os_x_configuration_profile>')


# --- incremental -----------------------------------------------------------------------------


def test_republish_without_change_writes_nothing(workdir: Path, jamf):
    compile_fleet(workdir, range(6))
    assert publish(workdir, jamf).exit_code == 0
    jamf.reset_stats()
    result = publish(workdir, jamf)
    assert result.exit_code == 0, result.output
    assert "0 uploaded (0 new, 0 changed), 6 unchanged, 0 deleted" in result.output
    assert jamf.write_count == 0
    assert jamf.deployments == []  # no Mac got anything again
    # A token, the list, one inventory lookup for all six Macs, one GET per profile.
    assert sorted((r.method, re.sub(r"/id/\d+$", "/id/N", r.path)) for r in jamf.requests) == sorted(
        [("POST", "/api/oauth/token"), ("GET", PROFILES), ("GET", "/api/v3/computers-inventory")]
        + [("GET", f"{PROFILES}/id/N")] * 6)


def test_one_changed_mac_is_one_write_with_redeploy_all_and_no_ghost(workdir: Path, jamf):
    compile_fleet(workdir, range(6))
    assert publish(workdir, jamf).exit_code == 0
    name = f"mdmgen - Claude Code - {serial(4)}"
    before = ours(jamf)[name]
    out = compile_fleet(workdir, range(6), teams={4: "moved"})
    jamf.reset_stats()
    result = publish(workdir, jamf)
    assert result.exit_code == 0, result.output
    assert "1 uploaded (0 new, 1 changed), 5 unchanged" in result.output
    assert writes(jamf) == [("PUT", f"{PROFILES}/id/{before.id}")]
    (write,) = jamf.profile_writes
    assert (write.op, write.redeploy_on_update, write.payload_changed) == ("update", "All", True)
    assert not write.identifier_changed and not write.uuid_changed  # Jamf's identifiers were sent back
    # The Mac got the new settings in place of the old profile: one profile, no ghost.
    installed = jamf.installed_profiles(104)
    assert list(installed) == [before.payload_identifier]
    assert "team=moved" in settings_in(installed[before.payload_identifier])["env"]["OTEL_RESOURCE_ATTRIBUTES"]
    assert settings_in(ours(jamf)[name].plist) == local_settings(out, serial(4))
    assert {d.computer_id for d in jamf.deployments} == {104}


def test_identifiers_jamf_rewrote_are_not_a_change_and_are_sent_back_on_update(workdir: Path, jamf_env):
    with server(rewrite_nested_uuids_on_create=True) as jamf:
        compile_fleet(workdir, range(3))
        assert publish(workdir, jamf).exit_code == 0
        name = f"mdmgen - Claude Code - {serial(1)}"
        stored = ours(jamf)[name].plist
        mine = plistlib.loads((workdir / "output/devices" / serial(1) / "claude-code.mobileconfig").read_bytes())
        assert stored["PayloadIdentifier"] != mine["PayloadIdentifier"]  # the fake rewrote them (§6.1)
        assert stored["PayloadUUID"] != mine["PayloadUUID"]
        assert stored["PayloadContent"][0]["PayloadUUID"] != mine["PayloadContent"][0]["PayloadUUID"]
        jamf.reset_stats()
        assert publish(workdir, jamf).exit_code == 0
        assert jamf.write_count == 0  # rewritten identifiers and injected keys are no change
        compile_fleet(workdir, range(3), teams={1: "moved"})
        assert publish(workdir, jamf).exit_code == 0
        (put,) = jamf.requests_to(f"{PROFILES}/id/*", "PUT")
        sent = sent_payload(put)
        assert (sent["PayloadIdentifier"], sent["PayloadUUID"]) == (stored["PayloadIdentifier"], stored["PayloadUUID"])
        nested, stored_nested = sent["PayloadContent"][0], stored["PayloadContent"][0]
        assert (nested["PayloadIdentifier"], nested["PayloadUUID"]) == (
            stored_nested["PayloadIdentifier"], stored_nested["PayloadUUID"])
        assert list(jamf.installed_profiles(101)) == [stored["PayloadIdentifier"]]
        assert jamf.internal_errors == []


def test_a_metadata_only_change_is_written_without_a_redeploy(workdir: Path, jamf):
    compile_fleet(workdir, range(3))
    assert publish(workdir, jamf).exit_code == 0
    jamf.reset_stats()
    result = publish(workdir, jamf, "--category", "mdmgen")
    assert result.exit_code == 0, result.output
    assert len(jamf.profile_writes) == 3
    assert {(w.op, w.redeploy_on_update, w.payload_changed) for w in jamf.profile_writes} == {
        ("update", "Newly Assigned", False)}
    assert all(b"<payloads>" not in r.body for r in jamf.requests_to(f"{PROFILES}/id/*", "PUT"))
    assert jamf.deployments == []
    assert {p.category_name for p in jamf.profiles()} == {"mdmgen"}
    jamf.reset_stats()
    assert publish(workdir, jamf, "--category", "mdmgen").exit_code == 0
    assert jamf.write_count == 0


def test_scope_edits_and_a_reenrolled_mac_are_put_right_without_redeploying_the_others(workdir: Path, jamf):
    compile_fleet(workdir, range(3))
    assert publish(workdir, jamf).exit_code == 0
    # Someone widens the scope of MAC0000's profile by hand; MAC0002 is re-enrolled under a new id.
    pid = ours(jamf)[f"mdmgen - Claude Code - {serial(0)}"].id
    token = jamf_token(jamf)
    widen = (b'<?xml version="1.0" encoding="UTF-8"?><os_x_configuration_profile><scope><computers>'
             b"<computer><id>100</id></computer><computer><id>101</id></computer></computers></scope>"
             b"</os_x_configuration_profile>")
    assert http(jamf, "PUT", f"{PROFILES}/id/{pid}", widen, token) == 201
    assert len(jamf.installed_profiles(101)) == 2  # MAC0001 now has someone else's settings too
    jamf.computers.pop(102)
    jamf.add_computer(Computer(202, "mac-2-new", serial(2)))
    jamf.reset_stats()
    result = publish(workdir, jamf)
    assert result.exit_code == 0, result.output
    assert "2 uploaded (0 new, 2 changed), 1 unchanged" in result.output
    assert {(w.redeploy_on_update, w.payload_changed, w.scope_changed) for w in jamf.profile_writes} == {
        ("Newly Assigned", False, True)}
    assert len(jamf.installed_profiles(101)) == 1
    assert [(d.computer_id, d.action) for d in jamf.deployments if d.action == "install"] == [(202, "install")]


def test_settings_edited_in_jamf_are_restored(workdir: Path, jamf):
    out = compile_fleet(workdir, range(2))
    assert publish(workdir, jamf).exit_code == 0
    stored = ours(jamf)[f"mdmgen - Claude Code - {serial(0)}"]
    edited = stored.plist
    settings_in(edited)["env"]["OTEL_METRICS_EXPORTER"] = "none"
    body = ET.Element("os_x_configuration_profile")
    ET.SubElement(ET.SubElement(body, "general"), "payloads").text = plistlib.dumps(edited).decode()
    assert http(jamf, "PUT", f"{PROFILES}/id/{stored.id}", ET.tostring(body), jamf_token(jamf)) == 201
    jamf.reset_stats()
    assert publish(workdir, jamf).exit_code == 0
    assert [(w.op, w.redeploy_on_update) for w in jamf.profile_writes] == [("update", "All")]
    assert settings_in(ours(jamf)[stored.name].plist) == local_settings(out, serial(0))


# --- unenrolled Macs, prune and its guard ----------------------------------------------------


def test_macs_not_enrolled_in_jamf_are_reported_not_fatal(workdir: Path, jamf):
    compile_fleet(workdir, [0, 1, 20, 21])  # 20 and 21 are not in Jamf
    result = publish(workdir, jamf)
    assert result.exit_code == 0, result.output
    assert "2 uploaded (2 new, 0 changed)" in result.output
    assert ("note: 2 Mac(s) are not enrolled in Jamf Pro (no computer has the serial): MAC0020, MAC0021; "
            "no profile was made for them.") in result.output
    assert sorted(ours(jamf)) == [f"mdmgen - Claude Code - {serial(i)}" for i in (0, 1)]
    data = json.loads(run(workdir, "publish", "jamf", "--url", jamf.url, "--json").stdout)
    assert data["notes"]["unenrolled"]["items"] == ["MAC0020", "MAC0021"]
    assert data["exit_code"] == 0 and data["unchanged"] == 2


def test_the_profile_of_a_mac_that_left_jamf_but_not_the_inventory_is_left_alone(workdir: Path, jamf):
    compile_fleet(workdir, range(4))
    assert publish(workdir, jamf).exit_code == 0
    jamf.computers.pop(103)  # MAC0003 was removed from Jamf (re-imaging, say)
    jamf.reset_stats()
    result = publish(workdir, jamf, "--prune", "--force")
    assert result.exit_code == 0, result.output
    assert jamf.write_count == 0
    assert f"mdmgen - Claude Code - {serial(3)}" in ours(jamf)
    assert "MAC0003; no profile was made for them, and the existing profile of 1 of them was left as it is" \
        in result.output


def test_without_prune_profiles_of_macs_that_left_stay(workdir: Path, jamf):
    compile_fleet(workdir, range(8))
    assert publish(workdir, jamf).exit_code == 0
    compile_fleet(workdir, range(7))
    jamf.reset_stats()
    result = publish(workdir, jamf)
    assert result.exit_code == 0
    assert jamf.write_count == 0
    assert "1 remote profile(s) of 1 device(s) no longer in output/ were left in place (--prune deletes them)" \
        in result.output


def test_prune_above_the_threshold_is_refused_and_force_allows_it(workdir: Path, jamf):
    compile_fleet(workdir, range(8))
    assert publish(workdir, jamf).exit_code == 0
    compile_fleet(workdir, range(5))  # a truncated export: 3 of 8 Macs missing
    jamf.reset_stats()
    refused = publish(workdir, jamf, "--prune")
    assert refused.exit_code == 6
    assert one_line_error(refused) == (
        "error: refusing to delete 3 of 8 published devices (38% > --max-delete 10%); the inventory may be "
        "truncated. Check it, then rerun with --max-delete 38 or --force")
    assert jamf.write_count == 0
    dry = publish(workdir, jamf, "--prune", "--dry-run")
    assert dry.exit_code == 6 and f"delete  mdmgen - Claude Code - {serial(7)}" in dry.output
    assert jamf.write_count == 0
    forced = publish(workdir, jamf, "--prune", "--force")
    assert forced.exit_code == 0, forced.output
    assert "0 uploaded (0 new, 0 changed), 5 unchanged, 3 deleted." in forced.output
    assert [m for m, _path in writes(jamf)] == ["DELETE"] * 3
    assert sorted(w.name for w in jamf.profile_writes if w.op == "delete") == [
        f"mdmgen - Claude Code - {serial(i)}" for i in (5, 6, 7)]
    assert sorted(ours(jamf)) == [f"mdmgen - Claude Code - {serial(i)}" for i in range(5)]
    assert jamf.installed_profiles(107) == {}  # the Mac no longer has it


def test_prune_never_touches_profiles_mdmgen_did_not_name(workdir: Path, jamf):
    from .fakes.test_jamf_server import mobileconfig

    for name in ("Passcode Policy", "mdmgen - Claude Code - MAC0001 (copy)", "Claude Code - MAC0002"):
        jamf.seed_profile(name, mobileconfig())
    compile_fleet(workdir, range(1))
    result = publish(workdir, jamf, "--prune", "--max-delete", "0")
    assert result.exit_code == 0, result.output
    assert len(ours(jamf)) == 4
    assert writes(jamf) == [("POST", f"{PROFILES}/id/0")]


def test_dry_run_prints_the_plan_and_writes_nothing(workdir: Path, jamf):
    compile_fleet(workdir, range(3))
    result = publish(workdir, jamf, "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"Plan for Jamf Pro {jamf.url}:\ncreate  mdmgen - Claude Code - MAC0000\n" in result.output
    assert "would upload 3 (3 new, 0 changed), 0 unchanged, would delete 0; nothing was changed." in result.output
    assert jamf.write_count == 0 and jamf.profiles() == []


# --- faults ----------------------------------------------------------------------------------


def test_one_off_500s_are_retried(workdir: Path, jamf):
    compile_fleet(workdir, range(4))
    jamf.fail_next(1, 500, path="/api/oauth/token")
    jamf.fail_next(1, 500, method="GET", path=PROFILES)
    jamf.fail_next(1, 502, method="POST", path=f"{PROFILES}/id/0")
    jamf.fail_next(1, 503, path="/api/*/computers-inventory")
    result = publish(workdir, jamf)
    assert result.exit_code == 0, result.output
    assert sorted((r.fault, r.method, r.path) for r in jamf.requests if r.fault) == [
        ("status-500", "GET", PROFILES), ("status-500", "POST", "/api/oauth/token"),
        ("status-502", "POST", f"{PROFILES}/id/0"), ("status-503", "GET", "/api/v3/computers-inventory")]
    assert len(ours(jamf)) == 4 and [w.op for w in jamf.profile_writes] == ["create"] * 4


def test_a_lasting_server_error_fails_with_one_line(workdir: Path, jamf):
    compile_fleet(workdir, range(2))
    jamf.fail_next(50, 503, method="GET", path=PROFILES, headers=(("Retry-After", "0"),))  # no real waits
    result = publish(workdir, jamf)
    assert result.exit_code == 7
    assert one_line_error(result) == ("error: Jamf Pro answered 503 Service Unavailable while listing macOS "
                                      "configuration profiles: The server is currently unable to handle the "
                                      "request due to a temporary overloading or maintenance of the server "
                                      "(gave up after 5 attempts)")
    assert jamf.write_count == 0


def test_a_404_right_after_create_is_waited_out(workdir: Path, jamf):
    compile_fleet(workdir, range(3))
    jamf.lag_after_create(reads=2)  # Jamf Cloud: other nodes do not see a new profile yet
    result = publish(workdir, jamf)
    assert result.exit_code == 0, result.output
    assert [r.fault for r in jamf.requests].count("cluster-lag") == 6
    assert len(jamf.requests_to(f"{PROFILES}/id/0", "POST")) == 3  # no profile was created twice
    assert len(ours(jamf)) == 3


def test_the_sticky_session_cookie_is_kept(workdir: Path, jamf):
    compile_fleet(workdir, range(3))
    jamf.lag_after_create(reads=2, honour_sticky_cookie=True)
    result = publish(workdir, jamf)
    assert result.exit_code == 0, result.output
    first, *rest = jamf.requests
    assert "Cookie" not in first.headers
    assert {r.headers.get("Cookie", "").split("=")[0] for r in rest} == {"APBALANCEID"}
    assert not any(r.fault for r in jamf.requests)  # the same node served every read


def test_slow_responses_time_out_and_are_retried_without_duplicates(workdir: Path, jamf):
    compile_fleet(workdir, range(3))
    jamf.slow_responses(1.0, n=1, method="GET", path=f"{PROFILES}")
    jamf.slow_responses(1.0, n=1, method="POST", path=f"{PROFILES}/id/0")
    result = publish(workdir, jamf, "--timeout", "0.3", "--jobs", "1")
    assert result.exit_code == 0, result.output
    jamf.wait_idle()  # the requests that timed out finish on the server after the publish
    assert [r.delayed for r in jamf.requests_to(PROFILES, "GET")] == [1.0, 0.0]  # the slow one timed out
    # The POST that timed out still went through on the server; its retry was adopted, not duplicated.
    assert sorted(ours(jamf)) == [f"mdmgen - Claude Code - {serial(i)}" for i in range(3)]
    assert [w.op for w in jamf.profile_writes].count("create") == 3
    jamf.reset_stats()
    assert publish(workdir, jamf).exit_code == 0
    assert jamf.write_count == 0


def test_a_token_expiring_mid_run_is_renewed(workdir: Path, jamf):
    compile_fleet(workdir, range(8))
    jamf.slow_responses(0.05, method="POST", path=f"{PROFILES}/*")
    done = threading.Event()

    def expire_after_three_creates():
        while not done.is_set():
            if len(jamf.requests_to(f"{PROFILES}/id/0", "POST")) >= 3:
                jamf.expire_all_tokens()
                return
            time.sleep(0.002)

    watcher = threading.Thread(target=expire_after_three_creates)
    watcher.start()
    try:
        result = publish(workdir, jamf)
    finally:
        done.set()
        watcher.join()
    assert result.exit_code == 0, result.output
    assert any(r.status == 401 for r in jamf.requests)
    assert len(jamf.requests_to("/api/oauth/token", "POST")) == 2
    assert len(ours(jamf)) == 8 and [w.op for w in jamf.profile_writes].count("create") == 8


def test_the_token_is_renewed_before_it_expires():
    now = [1000.0]
    token = {"token_type": "Bearer", "expires_in": 599}
    script = (Script().on("POST", TOKEN, json={**token, "access_token": "first"}).on("GET", PROFILES, times=2)
              .on("POST", TOKEN, json={**token, "access_token": "second"}).on("GET", PROFILES))
    client = jamfpub.JamfClient("https://acme.jamfcloud.example", DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET,
                                clock=lambda: now[0], transport=script)
    for advance in (0, 500, 45):  # the token lasts 599 s; it is renewed 60 s before the end (539 s)
        now[0] += advance
        client.request("GET", PROFILES, doing="listing")
    client.close()
    script.assert_done()  # renewed ahead: never a 401
    assert [r.headers["Authorization"] for r in script.requests if r.method == "GET"] == [
        "Bearer first", "Bearer first", "Bearer second"]


def test_the_other_token_path_is_used_when_the_first_is_not_served(workdir: Path, jamf):
    compile_fleet(workdir, range(2))
    jamf.fail_next(100, 404, path="/api/oauth/token")
    result = publish(workdir, jamf)
    assert result.exit_code == 0, result.output
    token_requests = [r.path for r in jamf.requests if r.path.endswith("/oauth/token")]
    assert token_requests == ["/api/oauth/token", "/api/v1/oauth/token"]


def test_an_older_inventory_api_version_is_used_when_v3_is_not_served(workdir: Path, jamf_env):
    with server(inventory_versions=("v1",)) as jamf:
        compile_fleet(workdir, range(60))  # 2 lookup batches of 50
        assert publish(workdir, jamf).exit_code == 0
        lookups = [r.path for r in jamf.requests if "computers-inventory" in r.path]
        assert lookups == ["/api/v3/computers-inventory", "/api/v2/computers-inventory",
                           "/api/v1/computers-inventory", "/api/v1/computers-inventory"]
        assert len(ours(jamf)) == 8  # 52 of the 60 are not enrolled


def test_a_409_page_becomes_one_line(workdir: Path, jamf):
    compile_fleet(workdir, range(1))
    result = publish(workdir, jamf, "--category", "No Such Category")
    assert result.exit_code == 7
    assert one_line_error(result) == (
        "error: Jamf Pro answered 409 Conflict while creating profile 'mdmgen - Claude Code - MAC0000': Problem "
        "with category; does the category 'No Such Category' exist in Jamf Pro (Settings > Global > Categories)? "
        "(the writes that finished are in place; rerun to finish)")


def test_error_reason_reads_every_error_shape():
    page = html_error_page(409, "Error: Duplicate name").encode()
    assert jamfpub.error_reason("text/html;charset=UTF-8", page) == "Duplicate name"
    assert jamfpub.error_reason("text/html", html_error_page(404).encode()) == (
        "The server has not found anything matching the request URI")
    api = json.dumps({"httpStatus": 409, "errors": [{"code": "DUPLICATE_FIELD", "description": "name taken"}]})
    assert jamfpub.error_reason("application/json", api.encode()) == "name taken"
    oauth = json.dumps({"error": "invalid_client", "error_description": "Client authentication failed"})
    assert jamfpub.error_reason("application/json", oauth.encode()) == "invalid_client Client authentication failed"
    assert jamfpub.error_reason("text/plain", b"line one\nline two") == "line one line two"


def test_a_profile_that_appears_between_plan_and_create_is_updated_not_duplicated(workdir: Path, jamf):
    from .fakes.test_jamf_server import mobileconfig

    out = compile_fleet(workdir, range(2))
    client = jamfpub.JamfClient.from_environment(jamf.url)
    publisher = jamfpub.JamfPublisher(client)
    plan = publisher.plan(local.read_output(out), prune=False)
    assert plan.counts()["create"] == 2
    name = f"mdmgen - Claude Code - {serial(0)}"
    pid = jamf.seed_profile(name, mobileconfig(), computer_ids=(100,))  # e.g. an attempt that timed out
    base.apply(plan, write=publisher.write, delete=publisher.delete, workers=publisher.workers)
    publisher.close()
    assert [r.status for r in jamf.requests_to(f"{PROFILES}/id/0", "POST")].count(409) == 1
    assert sorted(ours(jamf)) == [name, f"mdmgen - Claude Code - {serial(1)}"]
    update = next(w for w in jamf.profile_writes if w.profile_id == pid)
    assert (update.op, update.redeploy_on_update, update.identifier_changed) == ("update", "All", False)
    assert settings_in(ours(jamf)[name].plist) == local_settings(out, serial(0))


def test_a_missing_privilege_is_named(workdir: Path, jamf):
    compile_fleet(workdir, range(1))
    jamf.fail_next(1, 403, method="POST", path=f"{PROFILES}/*")
    result = publish(workdir, jamf)
    assert result.exit_code == 7
    assert "error: Jamf Pro answered 403 Forbidden while creating profile 'mdmgen - Claude Code - MAC0000': the API " \
           "client's role needs the 'Create macOS Configuration Profiles' privilege" in one_line_error(result)


def test_at_most_five_connections_at_once(workdir: Path, jamf):
    compile_fleet(workdir, range(8))
    jamf.slow_responses(0.05)
    jamf.wait_idle()
    jamf.reset_stats()
    result = publish(workdir, jamf, "--jobs", "5")
    assert result.exit_code == 0, result.output
    assert 2 <= jamf.peak_connections <= 5
    assert jamf.peak_in_flight <= 5
    assert run(workdir, "publish", "jamf", "--url", jamf.url, "--jobs", "6").exit_code == 2


# --- credentials, URLs and secrets -----------------------------------------------------------


def test_missing_credentials(workdir: Path, jamf, monkeypatch):
    compile_fleet(workdir, range(1))
    monkeypatch.delenv("JAMF_CLIENT_SECRET")
    result = publish(workdir, jamf)
    assert result.exit_code == 7
    assert one_line_error(result).startswith("error: JAMF_CLIENT_SECRET is not set: create an API client in Jamf Pro")
    assert jamf.requests == []


def test_rejected_credentials(workdir: Path, jamf, monkeypatch):
    compile_fleet(workdir, range(1))
    monkeypatch.setenv("JAMF_CLIENT_SECRET", "wrong-s3cr3t-value")
    result = publish(workdir, jamf, "-vv")
    assert result.exit_code == 7
    assert one_line_error(result) == ("error: Jamf Pro rejected the API client credentials (invalid_client): check "
                                      "JAMF_CLIENT_ID and JAMF_CLIENT_SECRET, and that the API client is enabled")
    assert "s3cr3t" not in result.output
    assert [r.path for r in jamf.requests] == ["/api/oauth/token"]


@pytest.mark.parametrize("url, expected", [
    ("http://jamf.example.com", "plain http is only allowed to a loopback host"),
    ("https://admin:secret@acme.jamfcloud.com", "must not carry credentials in the URL"),
    ("acme.jamfcloud.com", "must be an http:// or https:// URL with a host"),
    ("https://acme.jamfcloud.com/?x=1", "must not have a query or fragment"),
])
def test_url_usage_errors(workdir: Path, url: str, expected: str):
    result = run(workdir, "publish", "jamf", "--url", url)
    assert result.exit_code == 2
    assert expected in result.output
    assert "secret" not in result.output


def test_unreachable_server(workdir: Path, jamf_env, closed_port):
    compile_fleet(workdir, range(1))
    port = closed_port
    result = run(workdir, "publish", "jamf", "--url", f"http://127.0.0.1:{port}")
    assert result.exit_code == 7
    assert one_line_error(result) == (f"error: cannot reach http://127.0.0.1:{port} while requesting an access "
                                      "token: Connection refused")


def test_tls_failure(workdir: Path, jamf):
    compile_fleet(workdir, range(1))
    result = run(workdir, "publish", "jamf", "--url", f"https://127.0.0.1:{jamf.port}")  # the fake speaks http
    assert result.exit_code == 7
    assert one_line_error(result).startswith("error: TLS error talking to 127.0.0.1 while requesting an access token")


def test_secrets_and_tokens_never_appear_in_any_output(workdir: Path, jamf, monkeypatch):
    compile_fleet(workdir, range(4))
    jamf.fail_next(1, 500, method="POST", path=f"{PROFILES}/*")
    outputs = [publish(workdir, jamf, "-vv").output]
    jamf.expire_all_tokens()
    compile_fleet(workdir, range(4), teams={1: "moved"})
    outputs.append(publish(workdir, jamf, "-vv", "--json").output)
    jamf.fail_next(1, 409, method="PUT")
    compile_fleet(workdir, range(4), teams={1: "back"})
    outputs.append(publish(workdir, jamf, "-vv").output)
    monkeypatch.setenv("JAMF_CLIENT_SECRET", DEFAULT_CLIENT_SECRET + "-wrong")
    outputs.append(publish(workdir, jamf, "-vv").output)
    tokens = {r.headers["Authorization"].split()[1] for r in jamf.requests if "Authorization" in r.headers}
    assert len(tokens) >= 2
    text = "\n".join(outputs)
    assert "jamf: GET /JSSResource/osxconfigurationprofiles -> 200" in text  # -vv did log requests
    for secret in (DEFAULT_CLIENT_SECRET, *tokens):
        assert secret not in text


# --- helpers that talk to the fake directly (as an admin would in the Jamf UI) ---------------


def jamf_token(jamf: FakeJamfServer) -> str:
    import urllib.parse
    import urllib.request

    form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": DEFAULT_CLIENT_ID,
                                   "client_secret": DEFAULT_CLIENT_SECRET}).encode()
    with urllib.request.urlopen(urllib.request.Request(jamf.url + "/api/oauth/token", data=form)) as reply:
        return json.loads(reply.read())["access_token"]


def http(jamf: FakeJamfServer, method: str, path: str, body: bytes, token: str) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(jamf.url + path, data=body, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/xml"})
    try:
        with urllib.request.urlopen(request) as reply:
            return reply.status
    except urllib.error.HTTPError as err:
        return err.code
