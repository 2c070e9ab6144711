"""Output bytes: managed-settings.json format and the exact .mobileconfig shape."""

import json
import plistlib
import re
import xml.etree.ElementTree as ET

import pytest

from mdmgen.emit import mobileconfig, registry, settings_json
from mdmgen.models import Device, Location, Platform

SETTINGS = {
    "env": {"OTEL_RESOURCE_ATTRIBUTES": "team=R%26D", "Z_LAST": "1", "A_FIRST": "x"},
    "permissions": {"deny": ["Read(./.env)"]},
    "note": "Tom & Jerry <cats> \"quoted\" ü",
}
META = mobileconfig.ProfileMeta(identifier="com.example.mdmgen.claudecode.C02ABC",
                                display_name="Claude Code <managed> & more",
                                organization="R&D <Ops>")


def test_json_is_sorted_indented_utf8_without_bom_with_trailing_newline():
    data = settings_json.dumps(SETTINGS)
    assert not data.startswith(b"\xef\xbb\xbf")
    assert data.endswith(b"}\n") and not data.endswith(b"\n\n")
    text = data.decode("utf-8")
    assert json.loads(text) == SETTINGS
    assert text.index('"A_FIRST"') < text.index('"OTEL_RESOURCE') < text.index('"Z_LAST"')
    assert '\n  "env": {\n    "A_FIRST": "x",' in text
    assert "ü" in text  # written as UTF-8, not \\u escapes


def test_profile_nesting_is_exactly_the_documented_chain():
    data = mobileconfig.dumps(SETTINGS, META)
    profile = plistlib.loads(data)
    assert profile["PayloadType"] == "Configuration"
    assert profile["PayloadScope"] == "System"
    assert profile["PayloadVersion"] == 1
    [payload] = profile["PayloadContent"]
    assert payload["PayloadType"] == "com.apple.ManagedClient.preferences"
    assert list(payload["PayloadContent"]) == ["com.anthropic.claudecode"]
    assert payload["PayloadContent"]["com.anthropic.claudecode"] == {
        "Forced": [{"mcx_preference_settings": SETTINGS}]}
    assert mobileconfig.check_profile(data) == []


def test_profile_identifiers_and_uuids_are_stable_unique_and_rfc4122():
    first = plistlib.loads(mobileconfig.dumps(SETTINGS, META))
    again = plistlib.loads(mobileconfig.dumps({"env": {}}, META))
    other = plistlib.loads(mobileconfig.dumps(SETTINGS, mobileconfig.ProfileMeta(
        identifier="com.example.mdmgen.claudecode.C02XYZ", display_name="x", organization="y")))
    payload = first["PayloadContent"][0]
    assert first["PayloadIdentifier"] == "com.example.mdmgen.claudecode.C02ABC"
    assert payload["PayloadIdentifier"] == "com.example.mdmgen.claudecode.C02ABC.prefs"
    uuids = {first["PayloadUUID"], payload["PayloadUUID"]}
    assert len(uuids) == 2
    for value in uuids:
        assert re.fullmatch(r"[0-9A-F]{8}-[0-9A-F]{4}-5[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}",
                            value)
    # Same identifier, other settings: the same UUIDs, so the Mac updates the profile in place.
    assert again["PayloadUUID"] == first["PayloadUUID"]
    assert other["PayloadUUID"] not in uuids


def test_special_characters_are_escaped_in_well_formed_xml():
    data = mobileconfig.dumps(SETTINGS, META)
    root = ET.fromstring(data)  # an independent XML parser must accept it
    strings = [node.text for node in root.iter("string")]
    assert "Tom & Jerry <cats> \"quoted\" ü" in strings
    assert "R&D <Ops>" in strings
    assert b"Tom &amp; Jerry &lt;cats&gt;" in data


def test_check_profile_catches_the_silent_failure_shapes():
    good = mobileconfig.build(SETTINGS, META)
    flat = mobileconfig.build(SETTINGS, META)
    flat["PayloadContent"][0]["PayloadContent"] = {"com.anthropic.claudecode": SETTINGS}
    assert any("Forced" in p for p in mobileconfig.check_profile(plistlib.dumps(flat)))
    user = dict(good, PayloadScope="User")
    assert "PayloadScope must be System" in mobileconfig.check_profile(plistlib.dumps(user))
    assert mobileconfig.check_profile(b"<not a plist")[0].startswith("does not parse")


# --- the artifact registry -----------------------------------------------------------------------


def _kind(name: str, **kwargs) -> registry.ArtifactKind:
    return registry.ArtifactKind(name=name, content_type="text/plain", read_semantic=lambda data: {},
                                 emit=lambda given: b"x\n", label=name, **kwargs)


def test_the_registry_says_who_gets_each_shipped_kind_and_where_it_is_installed():
    assert [k.name for k in registry.device_kinds()] == ["managed-settings.json", "claude-code.mobileconfig",
                                                        "claude-code.signed.mobileconfig"]
    assert [k.name for k in registry.fleet_kinds()] == [  # once per fleet, each only when the policy asks
        "intune/teams.json",  # what `publish intune` needs (`intune:`)
        "collector/otel-collector-config.yaml", "collector/prometheus-rules.yaml",  # the collector side
        "collector/dashboards/personal.json", "collector/dashboards/team-overview.json", "collector/k8s/ingress.yaml"]
    assert all(registry.SETTINGS_JSON.applies_to(p) for p in Platform)
    assert [p for p in Platform if registry.MAC_PROFILE.applies_to(p)] == [Platform.MACOS]
    windows = registry.SETTINGS_JSON.install_path(Platform.WINDOWS)
    assert windows == "C:\\Program Files\\ClaudeCode\\managed-settings.json"
    assert registry.MAC_PROFILE.install_path(Platform.MACOS) is None  # installed by the MDM, not as a file


def test_kinds_with_names_that_could_leave_the_folder_or_collide_are_refused():
    for bad in ("../x", ".hidden", "a/b", "NUL.json", ""):
        with pytest.raises(ValueError):
            _kind(bad, platforms=frozenset({Platform.LINUX}))
    for bad in ("flat.json", "../collector/x", "collector/../../x", "devices/x"):
        with pytest.raises(ValueError):
            _kind(bad, fleet=True)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(_kind("managed-settings.json", platforms=frozenset({Platform.LINUX})))


def test_a_registered_kind_is_emitted_for_the_platforms_it_names_and_gone_afterwards():
    device = Device(serial="S1", platform=Platform.LINUX, user_email="a@example.com", team="Ops",
                    location=Location(file="x.csv", line=2))
    linux_only = _kind("linux-note.txt", platforms=frozenset({Platform.LINUX}))
    given = registry.DeviceInput(device=device, settings={"env": {}}, policy=None)  # type: ignore[arg-type]
    with registry.registered(linux_only):
        assert registry.emit_device(given) == {"managed-settings.json": b'{\n  "env": {}\n}\n',
                                               "linux-note.txt": b"x\n"}
    assert registry.get("linux-note.txt") is None
    assert registry.emit_device(given) == {"managed-settings.json": b'{\n  "env": {}\n}\n'}


def test_semantic_readers_say_what_is_wrong_in_one_line():
    with pytest.raises(ValueError, match="not valid JSON"):
        registry.SETTINGS_JSON.read_semantic(b"{not json")
    with pytest.raises(ValueError, match="not a JSON object"):
        registry.SETTINGS_JSON.read_semantic(b"[1]")
    with pytest.raises(ValueError, match="does not parse as a plist"):
        registry.MAC_PROFILE.read_semantic(b"<not a plist")
    meaning = registry.MAC_PROFILE.read_semantic(mobileconfig.dumps(SETTINGS, META))
    assert meaning["settings"] == SETTINGS
    assert meaning["metadata"]["PayloadIdentifier"] == META.identifier
    assert meaning["metadata"]["payload.PayloadIdentifier"] == META.payload_identifier
