"""Output bytes: managed-settings.json format and the exact .mobileconfig shape."""

import json
import plistlib
import re
import xml.etree.ElementTree as ET

from mdmgen.emit import mobileconfig, settings_json

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
