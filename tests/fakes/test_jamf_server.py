"""Contract tests pinning the fake Jamf Pro server to shared/reference/jamf-pro-api.md.

They drive the fake with plain ``urllib.request`` (no mdmgen code), so a client that
passes against the fake relies only on documented Jamf behaviour.  ``§`` numbers
point into the reference.
"""

from __future__ import annotations

import base64
import http.client
import json
import plistlib
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from .jamf_server import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    Computer,
    FakeJamfServer,
    OAuthClient,
)

PROFILES = "/JSSResource/osxconfigurationprofiles"

# §7.1, verbatim from the reference (jamf/mut issue #11).
REFERENCE_409_PAGE = """<html>
<head><title>Status page</title></head>
<body style="font-family: sans-serif;">
<p style="font-size: 1.2em;font-weight: bold;margin: 1em 0px;">Conflict</p>
<p>Error: Duplicate name</p>
<p>You can get technical details <a href="http://www.w3.org/Protocols/rfc2616/rfc2616-sec10.html#sec10.4.10">here</a>.<br>
Please continue your visit at our <a href="/">home page</a>.
</p>
</body>
</html>"""

UUID_UPPER = re.compile(r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}")


# ----------------------------------------------------------------------------- helpers


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.body)

    def xml(self) -> ET.Element:
        return ET.fromstring(self.body)


def call(
    base: str, method: str, path: str, *, body: bytes | None = None,
    headers: dict[str, str] | None = None, token: str | None = None, timeout: float = 10,
) -> Reply:
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(base + path, data=body, headers=hdrs, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Reply(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, err.headers, err.read())


def oauth(base: str, path: str = "/api/oauth/token", client_id: str = DEFAULT_CLIENT_ID,
          secret: str = DEFAULT_CLIENT_SECRET, **extra: str) -> Reply:
    form = {"grant_type": "client_credentials", "client_id": client_id,
            "client_secret": secret, **extra}
    return call(base, "POST", path, body=urllib.parse.urlencode(form).encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"})


def mobileconfig(identifier: str = "com.example.mdmgen.C02XXXXXXHD1",
                 top_uuid: str | None = None, nested_uuid: str | None = None,
                 env_value: str = "1") -> str:
    plist = {
        "PayloadContent": [{
            "PayloadType": "com.apple.ManagedClient.preferences",
            "PayloadIdentifier": identifier + ".mcx",
            "PayloadUUID": nested_uuid or str(uuid.uuid4()).upper(),
            "PayloadVersion": 1,
            "PayloadContent": {"com.anthropic.claudecode": {"Forced": [{"mcx_preference_settings": {
                "env": {"CLAUDE_CODE_ENABLE_TELEMETRY": env_value,
                        "SERIAL": "$SERIALNUMBER"}}}]}},
        }],
        "PayloadDisplayName": "Claude Code",
        "PayloadIdentifier": identifier,
        "PayloadType": "Configuration",
        "PayloadUUID": top_uuid or str(uuid.uuid4()).upper(),
        "PayloadVersion": 1,
    }
    return plistlib.dumps(plist).decode()


def profile_xml(
    name: str | None = "mdmgen - C02XXXXXXHD1 - Claude Code",
    payload: str | None = None,
    *,
    computer_ids: tuple[int, ...] | None = (117,),
    redeploy: str | None = "Newly Assigned",
    description: str | None = "mdmgen sha256:aaaa",
    category: str | None = "mdmgen",
    cdata: bool = False,
) -> bytes:
    """Build a §2.2/§2.3 body the way a client would (ElementTree escapes <payloads>)."""
    root = ET.Element("os_x_configuration_profile")
    general = ET.SubElement(root, "general")
    if name is not None:
        ET.SubElement(general, "name").text = name
    if description is not None:
        ET.SubElement(general, "description").text = description
    if category is not None:
        ET.SubElement(ET.SubElement(general, "category"), "name").text = category
    if redeploy is not None:
        ET.SubElement(general, "redeploy_on_update").text = redeploy
    if payload is not None and not cdata:
        ET.SubElement(general, "payloads").text = payload
    if computer_ids is not None:
        scope = ET.SubElement(root, "scope")
        ET.SubElement(scope, "all_computers").text = "false"
        computers = ET.SubElement(scope, "computers")
        for cid in computer_ids:
            ET.SubElement(ET.SubElement(computers, "computer"), "id").text = str(cid)
    text = ET.tostring(root, encoding="unicode")
    if payload is not None and cdata:
        text = text.replace("</general>", f"<payloads><![CDATA[{payload}]]></payloads></general>")
    return ('<?xml version="1.0" encoding="UTF-8"?>' + text).encode()


XML = {"Content-Type": "application/xml"}
JSON_ACCEPT = {"Accept": "application/json"}


def make_computers() -> list[Computer]:
    return [
        Computer(117, "mac-117", "C02XXXXXXHD1", email="ada@example.com", username="ada"),
        Computer(118, "mac-118", "C02YYYYYYHD2"),
        Computer(119, "mac-119", "C02ZZZZZZHD3"),
    ]


@pytest.fixture
def jamf() -> Iterator[FakeJamfServer]:
    with FakeJamfServer(make_computers()) as server:
        yield server
        assert server.internal_errors == []


@pytest.fixture
def token(jamf: FakeJamfServer) -> str:
    return oauth(jamf.url).json()["access_token"]


def create(jamf: FakeJamfServer, token: str, body: bytes, **kw: Any) -> Reply:
    return call(jamf.url, "POST", f"{PROFILES}/id/0", body=body,
                headers={**XML, **kw.pop("headers", {})}, token=token)


def get_json(jamf: FakeJamfServer, token: str, path: str) -> Reply:
    return call(jamf.url, "GET", path, headers=JSON_ACCEPT, token=token)


def error_message(page: str) -> str:
    # §7.1: how JamfUploader extracts the message.
    match = re.search(r"<p>Error:(.*?)</p>", page)
    assert match, page
    return match.group(1).strip()


# ----------------------------------------------------------------------------- §1 auth


@pytest.mark.parametrize("path", ["/api/oauth/token", "/api/v1/oauth/token"])
def test_oauth_client_credentials_on_both_paths(jamf: FakeJamfServer, path: str) -> None:
    reply = oauth(jamf.url, path)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    data = reply.json()
    assert set(data) == {"access_token", "scope", "token_type", "expires_in"}  # §1.1
    assert data["token_type"] == "Bearer"
    assert data["expires_in"] == 599
    assert data["scope"] == "api-role:1"
    assert "refresh_token" not in data
    # The token works on both Classic and the Jamf Pro API (§1).
    tok = data["access_token"]
    assert call(jamf.url, "GET", PROFILES, token=tok).status == 200
    assert call(jamf.url, "GET", "/api/v1/computers-inventory", token=tok).status == 200


def test_oauth_bad_client_is_rfc6749_400_by_default(jamf: FakeJamfServer) -> None:
    reply = oauth(jamf.url, secret="wrong")
    assert reply.status == 400
    body = reply.json()
    assert body["error"] == "invalid_client"
    assert body["error_uri"] == "https://datatracker.ietf.org/doc/html/rfc6749#section-5.2"
    assert "error_description" in body
    assert oauth(jamf.url, client_id="nobody").status == 400


def test_oauth_bad_client_can_be_401() -> None:
    with FakeJamfServer(invalid_client_status=401) as server:
        reply = oauth(server.url, secret="wrong")
        assert reply.status == 401
        assert reply.json()["error"] == "invalid_client"


def test_oauth_grant_type_content_type_and_scope(jamf: FakeJamfServer) -> None:
    assert oauth(jamf.url, grant_type="password").json()["error"] == "unsupported_grant_type"
    not_form = call(jamf.url, "POST", "/api/oauth/token", body=b"{}",
                    headers={"Content-Type": "application/json"})
    assert not_form.status == 400 and not_form.json()["error"] == "invalid_request"
    bad_scope = oauth(jamf.url, scope="api-role:99")
    assert bad_scope.status == 400 and bad_scope.json()["error"] == "invalid_scope"


def test_oauth_scope_narrowing() -> None:
    client = OAuthClient("c", "s", roles=("api-role:1", "api-role:2"), token_lifetime=60)
    with FakeJamfServer(oauth_clients=[client]) as server:
        full = oauth(server.url, client_id="c", secret="s").json()
        assert full["scope"] == "api-role:1 api-role:2"
        assert full["expires_in"] == 60  # per-client lifetime
        narrow = oauth(server.url, client_id="c", secret="s", scope="api-role:2").json()
        assert narrow["scope"] == "api-role:2"


def test_missing_invalid_and_basic_auth_get_401(jamf: FakeJamfServer) -> None:
    classic = call(jamf.url, "GET", PROFILES)
    assert classic.status == 401
    assert classic.headers["Content-Type"].startswith("text/html")
    assert "<p>The request requires user authentication</p>" in classic.text
    api = call(jamf.url, "GET", "/api/v1/computers-inventory")
    assert api.status == 401 and api.json()["httpStatus"] == 401
    assert call(jamf.url, "GET", PROFILES, token="not-a-token").status == 401
    # §1: Basic auth on Classic is no longer supported.
    basic = base64.b64encode(f"{DEFAULT_USERNAME}:{DEFAULT_PASSWORD}".encode()).decode()
    assert call(jamf.url, "GET", PROFILES,
                headers={"Authorization": f"Basic {basic}"}).status == 401
    # Unknown paths also need the token first.
    assert call(jamf.url, "GET", "/JSSResource/nothing").status == 401


def test_token_expiry_gives_401_and_a_new_token_works() -> None:
    with FakeJamfServer(oauth_token_lifetime=2) as server:
        data = oauth(server.url).json()
        assert data["expires_in"] == 2
        assert call(server.url, "GET", PROFILES, token=data["access_token"]).status == 200
        server.advance_time(2.5)
        assert call(server.url, "GET", PROFILES, token=data["access_token"]).status == 401
        fresh = oauth(server.url).json()["access_token"]  # §1.1: no refresh token
        assert call(server.url, "GET", PROFILES, token=fresh).status == 200


def test_force_expire_all_tokens_mid_run(jamf: FakeJamfServer, token: str) -> None:
    assert call(jamf.url, "GET", PROFILES, token=token).status == 200
    jamf.expire_all_tokens()
    assert call(jamf.url, "GET", PROFILES, token=token).status == 401
    assert call(jamf.url, "GET", PROFILES, token=oauth(jamf.url).json()["access_token"]
                ).status == 200


def test_basic_user_token_keep_alive_and_invalidate(jamf: FakeJamfServer) -> None:
    basic = base64.b64encode(f"{DEFAULT_USERNAME}:{DEFAULT_PASSWORD}".encode()).decode()
    reply = call(jamf.url, "POST", "/api/v1/auth/token",
                 headers={"Authorization": f"Basic {basic}"})
    assert reply.status == 200
    data = reply.json()
    assert set(data) == {"token", "expires"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", data["expires"])  # §1.2
    first = data["token"]
    assert call(jamf.url, "GET", "/api/v1/auth", token=first).status == 200

    kept = call(jamf.url, "POST", "/api/v1/auth/keep-alive", token=first)
    assert kept.status == 200
    second = kept.json()["token"]
    assert second != first
    assert call(jamf.url, "GET", "/api/v1/auth", token=first).status == 401  # old invalid
    assert call(jamf.url, "GET", PROFILES, token=second).status == 200

    gone = call(jamf.url, "POST", "/api/v1/auth/invalidate-token", token=second)
    assert gone.status == 204 and gone.body == b""
    assert call(jamf.url, "GET", PROFILES, token=second).status == 401

    wrong = base64.b64encode(b"mdmgen-admin:nope").decode()
    assert call(jamf.url, "POST", "/api/v1/auth/token",
                headers={"Authorization": f"Basic {wrong}"}).status == 401


def test_keep_alive_does_not_work_for_oauth_tokens(jamf: FakeJamfServer, token: str) -> None:
    # §1.1 (CHOICE: 401); invalidate-token does work for them.
    assert call(jamf.url, "POST", "/api/v1/auth/keep-alive", token=token).status == 401
    assert call(jamf.url, "POST", "/api/v1/auth/invalidate-token", token=token).status == 204
    assert call(jamf.url, "GET", PROFILES, token=token).status == 401


@pytest.mark.parametrize("path", ["/api/auth/keepAlive", "/api/auth/invalidateToken",
                                  "/uapi/auth/tokens"])
def test_legacy_auth_paths_are_not_implemented(jamf: FakeJamfServer, token: str,
                                               path: str) -> None:
    assert call(jamf.url, "POST", path, token=token).status == 404


# ----------------------------------------------------------------------------- §4.1 lookups


def test_classic_computer_by_serial(jamf: FakeJamfServer, token: str) -> None:
    found = get_json(jamf, token, "/JSSResource/computers/serialnumber/C02XXXXXXHD1")
    assert found.status == 200
    general = found.json()["computer"]["general"]
    assert general["id"] == 117 and isinstance(general["id"], int)  # Classic: integers
    assert general["serial_number"] == "C02XXXXXXHD1"
    assert UUID_UPPER.fullmatch(general["udid"])

    subset = get_json(
        jamf, token, "/JSSResource/computers/serialnumber/C02XXXXXXHD1/subset/General")
    assert list(subset.json()["computer"]) == ["general"]

    as_xml = call(jamf.url, "GET", "/JSSResource/computers/serialnumber/C02XXXXXXHD1",
                  token=token)
    assert as_xml.headers["Content-Type"].startswith("text/xml")
    assert as_xml.xml().findtext("general/id") == "117"

    missing = get_json(jamf, token, "/JSSResource/computers/serialnumber/NOPE")
    assert missing.status == 404
    assert "<p>The server has not found anything matching the request URI</p>" in missing.text


def inventory_path(serial: str, version: str = "v1", sections: tuple[str, ...] = (
        "GENERAL", "HARDWARE")) -> str:
    query = [("section", s) for s in sections]
    query += [("filter", f'hardware.serialNumber=="{serial}"'), ("page", "0"),
              ("page-size", "100")]
    return f"/api/{version}/computers-inventory?" + urllib.parse.urlencode(query)


def test_jamf_pro_api_inventory_by_serial(jamf: FakeJamfServer, token: str) -> None:
    path = inventory_path("C02XXXXXXHD1")
    assert "%22" in path  # quotes URL-encoded
    data = call(jamf.url, "GET", path, token=token).json()
    assert data["totalCount"] == 1
    result = data["results"][0]
    assert result["id"] == "117"  # Jamf Pro API: strings
    assert result["general"]["name"] == "mac-117"
    assert result["hardware"]["serialNumber"] == "C02XXXXXXHD1"
    assert result["udid"]

    unknown = call(jamf.url, "GET", inventory_path("NOPE"), token=token)
    assert unknown.status == 200 and unknown.json() == {"totalCount": 0, "results": []}


def test_inventory_sections_versions_and_filters(jamf: FakeJamfServer, token: str) -> None:
    only_general = call(jamf.url, "GET", inventory_path("C02XXXXXXHD1", sections=()),
                        token=token).json()["results"][0]
    assert only_general["general"] == {"name": "mac-117"}
    assert only_general["hardware"] is None  # §4.1: request HARDWARE to read the serial
    v3 = call(jamf.url, "GET", inventory_path("C02YYYYYYHD2", "v3"), token=token).json()
    assert v3["results"][0]["id"] == "118"
    either = "hardware.serialNumber==C02XXXXXXHD1,hardware.serialNumber==C02ZZZZZZHD3"
    both = call(jamf.url, "GET", "/api/v2/computers-inventory?filter="
                + urllib.parse.quote(either), token=token).json()
    assert [r["id"] for r in both["results"]] == ["117", "119"]
    bad = call(jamf.url, "GET", "/api/v1/computers-inventory?filter="
               + urllib.parse.quote('nosuch.field=="x"'), token=token)
    assert bad.status == 400 and bad.json()["httpStatus"] == 400


def test_inventory_version_is_configurable() -> None:
    with FakeJamfServer(make_computers(), inventory_versions=("v2", "v3")) as server:
        tok = oauth(server.url).json()["access_token"]
        assert call(server.url, "GET", inventory_path("C02XXXXXXHD1"), token=tok).status == 404
        assert call(server.url, "GET", inventory_path("C02XXXXXXHD1", "v2"),
                    token=tok).status == 200


# ----------------------------------------------------------------------------- §2 profiles


def test_empty_list_xml_and_json(jamf: FakeJamfServer, token: str) -> None:
    xml_reply = call(jamf.url, "GET", PROFILES, token=token)
    assert xml_reply.headers["Content-Type"].startswith("text/xml")
    assert xml_reply.xml().tag == "os_x_configuration_profiles"
    assert xml_reply.xml().findtext("size") == "0"
    assert get_json(jamf, token, PROFILES).json() == {"os_x_configuration_profiles": []}


def test_create_returns_201_xml_id_and_rewrites_top_level_identifiers(
        jamf: FakeJamfServer, token: str) -> None:
    sent_uuid = "11111111-2222-3333-4444-555555555555"
    nested_uuid = "AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE"
    payload = mobileconfig(top_uuid=sent_uuid, nested_uuid=nested_uuid)
    reply = create(jamf, token, profile_xml(payload=payload), headers=JSON_ACCEPT)
    assert reply.status == 201
    assert reply.headers["Content-Type"].startswith("text/xml")  # XML whatever Accept says
    assert reply.text.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = reply.xml()
    assert root.tag == "os_x_configuration_profile"
    profile_id = int(root.findtext("id") or 0)
    assert profile_id > 0

    general = get_json(jamf, token, f"{PROFILES}/id/{profile_id}").json()[
        "os_x_configuration_profile"]["general"]
    stored = plistlib.loads(general["payloads"].encode())
    # §6.1 / §9: new upper-case top-level PayloadUUID, PayloadIdentifier rewritten.
    assert stored["PayloadUUID"] != sent_uuid
    assert UUID_UPPER.fullmatch(stored["PayloadUUID"])
    assert stored["PayloadIdentifier"] != "com.example.mdmgen.C02XXXXXXHD1"
    assert general["uuid"] == stored["PayloadUUID"]
    # Nested identifiers are left as sent (terraform provider).
    nested = stored["PayloadContent"][0]
    assert nested["PayloadUUID"] == nested_uuid
    assert nested["PayloadIdentifier"] == "com.example.mdmgen.C02XXXXXXHD1.mcx"
    # Read-back differs in formatting and carries injected keys (§6.1).
    assert general["payloads"] != payload
    assert nested["PayloadEnabled"] is True
    assert stored["PayloadRemovalDisallowed"] is True
    # Everything else came through.
    assert nested["PayloadContent"] == plistlib.loads(payload.encode())["PayloadContent"][0][
        "PayloadContent"]
    assert general["name"] == "mdmgen - C02XXXXXXHD1 - Claude Code"
    assert general["redeploy_on_update"] == "Newly Assigned"
    assert general["level"] == "computer"
    assert general["category"] == {"id": 1, "name": "mdmgen"}

    write = jamf.profile_writes[-1]
    assert write.op == "create" and write.identifier_changed
    assert write.sent_payload_identifier == "com.example.mdmgen.C02XXXXXXHD1"


def test_create_can_keep_identifier_and_rewrite_nested_uuids() -> None:
    with FakeJamfServer(make_computers(), rewrite_identifier_on_create=False,
                        rewrite_nested_uuids_on_create=True) as server:
        tok = oauth(server.url).json()["access_token"]
        nested = "AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE"
        pid = int(create(server, tok, profile_xml(payload=mobileconfig(nested_uuid=nested))
                         ).xml().findtext("id") or 0)
        stored = server.profile(pid).plist
        assert stored["PayloadIdentifier"] == "com.example.mdmgen.C02XXXXXXHD1"
        assert stored["PayloadContent"][0]["PayloadUUID"] != nested


def test_create_with_cdata_payload_and_system_level(jamf: FakeJamfServer, token: str) -> None:
    body = profile_xml(payload=mobileconfig(), cdata=True)
    body = body.replace(b"</general>", b"<level>System</level></general>")
    assert b"<![CDATA[" in body
    reply = create(jamf, token, body)
    assert reply.status == 201
    general = get_json(jamf, token, f"{PROFILES}/name/mdmgen - C02XXXXXXHD1 - Claude Code"
                       .replace(" ", "%20")).json()["os_x_configuration_profile"]["general"]
    assert general["level"] == "computer"  # §2.2: lower-case on GET
    assert plistlib.loads(general["payloads"].encode())["PayloadType"] == "Configuration"


def test_get_by_name_xml_subsets_and_list(jamf: FakeJamfServer, token: str) -> None:
    name = "mdmgen - C02XXXXXXHD1 - Claude Code"
    pid = int(create(jamf, token, profile_xml(name, mobileconfig())).xml().findtext("id") or 0)
    encoded = urllib.parse.quote(name.upper())  # case-insensitive, URL-encoded
    as_xml = call(jamf.url, "GET", f"{PROFILES}/name/{encoded}", token=token)
    assert as_xml.status == 200
    root = as_xml.xml()
    assert root.findtext("general/id") == str(pid)
    assert root.findtext("general/redeploy_on_update") == "Newly Assigned"
    assert b"&lt;plist" in as_xml.body  # escaped XML text (§2.4)
    payload_text = root.findtext("general/payloads") or ""
    assert plistlib.loads(payload_text.encode())["PayloadType"] == "Configuration"
    assert root.findtext("scope/computers/computer/id") == "117"
    assert root.findtext("scope/computers/computer/name") == "mac-117"
    assert root.find("self_service") is not None

    general_only = get_json(jamf, token, f"{PROFILES}/id/{pid}/subset/General").json()
    assert list(general_only["os_x_configuration_profile"]) == ["general"]
    both = get_json(jamf, token, f"{PROFILES}/id/{pid}/subset/General&Scope").json()
    scope = both["os_x_configuration_profile"]["scope"]
    assert scope["computers"][0]["id"] == 117
    assert scope["all_computers"] is False
    assert scope["exclusions"]["computers"] == []

    listing = call(jamf.url, "GET", PROFILES, token=token).xml()
    assert listing.findtext("size") == "1"
    assert listing.findtext("os_x_configuration_profile/name") == name
    assert get_json(jamf, token, PROFILES).json() == {
        "os_x_configuration_profiles": [{"id": pid, "name": name}]}


def test_duplicate_name_is_html_409_in_the_documented_format(
        jamf: FakeJamfServer, token: str) -> None:
    assert create(jamf, token, profile_xml("Same Name", mobileconfig())).status == 201
    reply = create(jamf, token, profile_xml("same name", mobileconfig()))  # case-insensitive
    assert reply.status == 409
    assert reply.headers["Content-Type"].startswith("text/html")
    assert reply.text.rstrip("\n") == REFERENCE_409_PAGE
    assert error_message(reply.text) == "Duplicate name"
    assert len(jamf.profiles()) == 1


def test_other_documented_write_errors(jamf: FakeJamfServer, token: str) -> None:
    # §2.2 / §9: a payload without its plist preamble -> 409 "Error: ...".
    no_preamble = mobileconfig().split("?>", 1)[1]
    reply = create(jamf, token, profile_xml(payload=no_preamble))
    assert reply.status == 409 and error_message(reply.text)
    assert create(jamf, token, profile_xml(payload="not a plist")).status == 409
    # §7.1: malformed XML -> 400.
    malformed = create(jamf, token, b"<os_x_configuration_profile><general>")
    assert malformed.status == 400 and "<p" in malformed.text
    # §9: non-zero id on create -> 400 or 409 (CHOICE: 409).
    nonzero = call(jamf.url, "POST", f"{PROFILES}/id/5", body=profile_xml(payload=mobileconfig()),
                   headers=XML, token=token)
    assert nonzero.status == 409
    # §2.2: the category must already exist (CHOICE: 409).
    assert create(jamf, token, profile_xml(payload=mobileconfig(), category="nope")).status == 409
    # §3: unknown computer in scope (CHOICE: 409).
    assert create(jamf, token, profile_xml(payload=mobileconfig(), computer_ids=(999,))
                  ).status == 409
    # §2.1: XML bodies only (CHOICE: 415 otherwise).
    as_json = call(jamf.url, "POST", f"{PROFILES}/id/0", body=b"{}",
                   headers={"Content-Type": "application/json"}, token=token)
    assert as_json.status == 415
    # text/xml is accepted as well as application/xml.
    ok = call(jamf.url, "POST", f"{PROFILES}/id/0", body=profile_xml(payload=mobileconfig()),
              headers={"Content-Type": "text/xml; charset=UTF-8"}, token=token)
    assert ok.status == 201
    assert jamf.write_count == 8  # every attempt counts, whatever its outcome
    assert len(jamf.profile_writes) == 1  # one of them succeeded


def test_get_missing_profile_is_html_404(jamf: FakeJamfServer, token: str) -> None:
    for path in (f"{PROFILES}/id/999", f"{PROFILES}/name/nope", f"{PROFILES}/id/abc"):
        reply = get_json(jamf, token, path)
        assert reply.status == 404
        assert reply.headers["Content-Type"].startswith("text/html")
        assert "<p>The server has not found anything matching the request URI</p>" in reply.text


def test_update_merges_only_sent_elements(jamf: FakeJamfServer, token: str) -> None:
    pid = int(create(jamf, token, profile_xml("P", mobileconfig(), computer_ids=(117, 118))
                     ).xml().findtext("id") or 0)
    before = jamf.profile(pid)
    update = (b'<?xml version="1.0" encoding="UTF-8"?><os_x_configuration_profile><general>'
              b"<description>mdmgen sha256:bbbb</description></general>"
              b"</os_x_configuration_profile>")
    reply = call(jamf.url, "PUT", f"{PROFILES}/id/{pid}", body=update, headers=XML, token=token)
    assert reply.status == 201  # §2.4 [reported]
    assert reply.xml().findtext("id") == str(pid)
    after = jamf.profile(pid)
    assert after.description == "mdmgen sha256:bbbb"
    assert after.payloads == before.payloads
    assert after.scope == before.scope
    assert after.name == "P"
    write = jamf.profile_writes[-1]
    assert write.op == "update" and write.redeploy_on_update is None
    assert not write.payload_changed and not write.scope_changed


def test_update_stores_sent_identifiers_and_flags_ghost_profiles(
        jamf: FakeJamfServer, token: str) -> None:
    pid = int(create(jamf, token, profile_xml("P", mobileconfig())).xml().findtext("id") or 0)
    stored = jamf.profile(pid).plist
    # A client that copies the stored identifiers back (§6.2) changes neither.
    same = mobileconfig(identifier=stored["PayloadIdentifier"], top_uuid=stored["PayloadUUID"],
                        env_value="2")
    body = profile_xml(None, same, computer_ids=None, redeploy="All", category=None)
    assert call(jamf.url, "PUT", f"{PROFILES}/id/{pid}", body=body, headers=XML,
                token=token).status == 201
    write = jamf.profile_writes[-1]
    assert write.redeploy_on_update == "All"
    assert write.payload_changed and not write.identifier_changed and not write.uuid_changed
    # A client that re-sends its own identifier creates a ghost profile (§6.1).
    ghost = mobileconfig(identifier="com.example.other", env_value="3")
    body = profile_xml(None, ghost, computer_ids=None, redeploy="All", category=None)
    assert call(jamf.url, "PUT", f"{PROFILES}/id/{pid}", body=body, headers=XML,
                token=token).status == 201
    write = jamf.profile_writes[-1]
    assert write.identifier_changed and write.uuid_changed
    assert jamf.profile(pid).payload_identifier == "com.example.other"  # stored as sent
    assert set(jamf.installed_profile_ids(117)) == {stored["PayloadIdentifier"],
                                                     "com.example.other"}
    # GET still reads back "Newly Assigned" (§2.4).
    general = get_json(jamf, token, f"{PROFILES}/id/{pid}").json()[
        "os_x_configuration_profile"]["general"]
    assert general["redeploy_on_update"] == "Newly Assigned"


def test_redeploy_on_update_semantics(jamf: FakeJamfServer, token: str) -> None:
    pid = int(create(jamf, token, profile_xml("P", mobileconfig(env_value="1"),
                                              computer_ids=(117,))).xml().findtext("id") or 0)
    stored = jamf.profile(pid).plist
    ident = stored["PayloadIdentifier"]

    def env_on(cid: int) -> str | None:
        installed = jamf.installed_profiles(cid).get(ident)
        if installed is None:
            return None
        prefs = installed["PayloadContent"][0]["PayloadContent"]["com.anthropic.claudecode"]
        return prefs["Forced"][0]["mcx_preference_settings"]["env"][
            "CLAUDE_CODE_ENABLE_TELEMETRY"]

    assert env_on(117) == "1" and env_on(118) is None

    def put(env_value: str, redeploy: str, computers: tuple[int, ...]) -> None:
        payload = mobileconfig(identifier=ident, top_uuid=stored["PayloadUUID"],
                               env_value=env_value)
        body = profile_xml(None, payload, computer_ids=computers, redeploy=redeploy,
                           category=None)
        assert call(jamf.url, "PUT", f"{PROFILES}/id/{pid}", body=body, headers=XML,
                    token=token).status == 201

    # §6.3 "Newly Assigned": only the newly scoped Mac gets the new content.
    put("2", "Newly Assigned", (117, 118))
    assert env_on(117) == "1" and env_on(118) == "2"
    # "All": every scoped Mac gets it again.
    put("3", "All", (117, 118))
    assert env_on(117) == "3" and env_on(118) == "3"
    # Leaving scope removes the profile.
    put("3", "Newly Assigned", (118,))
    assert env_on(117) is None and env_on(118) == "3"
    assert [w.redeploy_on_update for w in jamf.profile_writes] == [
        "Newly Assigned", "Newly Assigned", "All", "Newly Assigned"]
    installs = [d.computer_id for d in jamf.deployments if d.action == "install"]
    assert installs == [117, 118, 117, 118]


def test_payload_variables_are_substituted_per_device(jamf: FakeJamfServer, token: str) -> None:
    pid = int(create(jamf, token, profile_xml("P", mobileconfig(), computer_ids=(117, 118))
                     ).xml().findtext("id") or 0)
    stored = jamf.profile(pid)
    assert "$SERIALNUMBER" in stored.payloads  # the server keeps the literal (§5)
    for cid, serial in ((117, "C02XXXXXXHD1"), (118, "C02YYYYYYHD2")):
        plist = jamf.installed_profiles(cid)[stored.payload_identifier]
        env = plist["PayloadContent"][0]["PayloadContent"]["com.anthropic.claudecode"][
            "Forced"][0]["mcx_preference_settings"]["env"]
        assert env["SERIAL"] == serial


def test_update_by_name_rename_conflict_and_missing(jamf: FakeJamfServer, token: str) -> None:
    create(jamf, token, profile_xml("A", mobileconfig()))
    create(jamf, token, profile_xml("B", mobileconfig()))
    rename = profile_xml("b", None, computer_ids=None, redeploy=None, category=None)
    clash = call(jamf.url, "PUT", f"{PROFILES}/name/A", body=rename, headers=XML, token=token)
    assert clash.status == 409 and error_message(clash.text) == "Duplicate name"
    ok = call(jamf.url, "PUT", f"{PROFILES}/name/A",
              body=profile_xml("C", None, computer_ids=None, redeploy=None, category=None),
              headers=XML, token=token)
    assert ok.status == 201
    assert jamf.profile_by_name("C") is not None
    missing = call(jamf.url, "PUT", f"{PROFILES}/id/999", body=rename, headers=XML, token=token)
    assert missing.status == 404 and missing.headers["Content-Type"].startswith("text/html")


def test_delete(jamf: FakeJamfServer, token: str) -> None:
    pid = int(create(jamf, token, profile_xml("A", mobileconfig())).xml().findtext("id") or 0)
    ident = jamf.profile(pid).payload_identifier
    assert ident in jamf.installed_profiles(117)
    reply = call(jamf.url, "DELETE", f"{PROFILES}/id/{pid}", token=token)
    assert reply.status == 200  # §9 [unverified]
    assert reply.xml().findtext("id") == str(pid)
    assert get_json(jamf, token, f"{PROFILES}/id/{pid}").status == 404
    assert call(jamf.url, "DELETE", f"{PROFILES}/id/{pid}", token=token).status == 404
    assert jamf.installed_profiles(117) == {}
    pid2 = int(create(jamf, token, profile_xml("B", mobileconfig())).xml().findtext("id") or 0)
    assert call(jamf.url, "DELETE", f"{PROFILES}/name/B", token=token).status == 200
    assert pid2 != pid  # ids are not reused
    assert [w.op for w in jamf.profile_writes] == ["create", "delete", "create", "delete"]


# ----------------------------------------------------------------------------- §4.2 groups


def test_static_groups_and_group_scope(jamf: FakeJamfServer, token: str) -> None:
    groups = "/api/v2/computer-groups/static-groups"
    body = json.dumps({"name": "mdmgen-platform", "description": "", "assignments": ["117", "118"],
                       "siteId": "-1"}).encode()
    created = call(jamf.url, "POST", groups, body=body,
                   headers={"Content-Type": "application/json"}, token=token)
    assert created.status == 201
    gid = created.json()["id"]
    assert created.json()["href"].endswith(f"{groups}/{gid}")
    dup = call(jamf.url, "POST", groups, body=body,
               headers={"Content-Type": "application/json"}, token=token)
    assert dup.status == 409 and dup.json()["errors"][0]["code"] == "DUPLICATE_FIELD"  # §7.2
    found = call(jamf.url, "GET", groups + "?filter="
                 + urllib.parse.quote('name=="mdmgen-platform"'), token=token).json()
    assert found["totalCount"] == 1 and found["results"][0]["count"] == 2
    put = call(jamf.url, "PUT", f"{groups}/{gid}", body=json.dumps({"assignments": ["119"]}
                                                                    ).encode(),
               headers={"Content-Type": "application/json"}, token=token)
    assert put.status == 200 and jamf.static_group_members(int(gid)) == [119]

    payload = mobileconfig()
    xml_body = profile_xml("G", payload, computer_ids=()).replace(
        b"<computers />",
        b"<computers /><computer_groups><computer_group><name>mdmgen-platform</name>"
        b"</computer_group></computer_groups>")
    assert create(jamf, token, xml_body).status == 201
    ident = jamf.profile_by_name("G").payload_identifier  # type: ignore[union-attr]
    assert ident in jamf.installed_profiles(119)
    assert ident not in jamf.installed_profiles(117)


# ----------------------------------------------------------------------------- faults


def test_one_off_500_on_next_n_requests(jamf: FakeJamfServer, token: str) -> None:
    jamf.fail_next(2)
    first = call(jamf.url, "GET", PROFILES, token=token)
    assert first.status == 500 and first.headers["Content-Type"].startswith("text/html")
    assert call(jamf.url, "GET", "/api/v1/computers-inventory", token=token).json()[
        "httpStatus"] == 500
    assert call(jamf.url, "GET", PROFILES, token=token).status == 200
    assert [r.fault for r in jamf.requests[-3:]] == ["status-500", "status-500", None]


def test_fault_targeted_by_method_and_path(jamf: FakeJamfServer, token: str) -> None:
    jamf.fail_next(1, 503, method="POST", path=f"{PROFILES}/*")
    assert call(jamf.url, "GET", PROFILES, token=token).status == 200
    assert create(jamf, token, profile_xml("A", mobileconfig())).status == 503
    assert jamf.profiles() == []  # the failed write did not happen
    assert create(jamf, token, profile_xml("A", mobileconfig())).status == 201


def test_cluster_lag_404_right_after_create(jamf: FakeJamfServer, token: str) -> None:
    jamf.lag_after_create(reads=1)
    pid = int(create(jamf, token, profile_xml("A", mobileconfig())).xml().findtext("id") or 0)
    lagged = get_json(jamf, token, f"{PROFILES}/id/{pid}")
    assert lagged.status == 404 and lagged.headers["Content-Type"].startswith("text/html")
    assert jamf.requests[-1].fault == "cluster-lag"
    assert get_json(jamf, token, f"{PROFILES}/id/{pid}").status == 200
    # Also by name, and hidden from the list while lagging.
    jamf.lag_after_create(reads=2)
    create(jamf, token, profile_xml("B", mobileconfig()))
    assert get_json(jamf, token, PROFILES).json()["os_x_configuration_profiles"] == [
        {"id": pid, "name": "A"}]
    assert get_json(jamf, token, f"{PROFILES}/name/B").status == 404
    assert get_json(jamf, token, f"{PROFILES}/name/B").status == 200


def test_sticky_cookie_avoids_cluster_lag(jamf: FakeJamfServer, token: str) -> None:
    jamf.lag_after_create(reads=1, honour_sticky_cookie=True)
    first = create(jamf, token, profile_xml("A", mobileconfig()))
    cookie = first.headers["Set-Cookie"].split(";")[0]
    assert cookie.startswith("APBALANCEID=")  # §8 load-balancer cookie
    pid = first.xml().findtext("id")
    assert call(jamf.url, "GET", f"{PROFILES}/id/{pid}", token=token,
                headers={"Cookie": cookie}).status == 200


def test_slow_responses(jamf: FakeJamfServer, token: str) -> None:
    """The delayed request outlasts a client timeout shorter than the delay (whatever the machine's
    load, the answer cannot come sooner); the next one is not delayed. No elapsed time is compared."""
    jamf.slow_responses(0.5, n=1, path=PROFILES)
    with pytest.raises(TimeoutError):
        call(jamf.url, "GET", PROFILES, token=token, timeout=0.1)
    assert call(jamf.url, "GET", PROFILES, token=token).status == 200
    jamf.wait_idle()
    assert [r.delayed for r in jamf.requests_to(PROFILES, "GET")] == [0.5, 0.0]


def test_no_throttling_no_429_no_rate_limit_headers(jamf: FakeJamfServer, token: str) -> None:
    # §8: Jamf has no request limiter.
    replies = [call(jamf.url, "GET", PROFILES, token=token) for _ in range(40)]
    assert {r.status for r in replies} == {200}
    for reply in replies:
        names = {n.lower() for n in reply.headers}
        assert "retry-after" not in names
        assert not any(n.startswith(("x-ratelimit", "ratelimit")) for n in names)


# ----------------------------------------------------------------------------- inspection


def test_requests_are_recorded(jamf: FakeJamfServer, token: str) -> None:
    jamf.reset_stats()
    create(jamf, token, profile_xml("A", mobileconfig()))
    call(jamf.url, "GET", f"{PROFILES}/name/A", token=token)
    call(jamf.url, "GET", PROFILES)
    assert [(r.method, r.path, r.status) for r in jamf.requests] == [
        ("POST", f"{PROFILES}/id/0", 201),
        ("GET", f"{PROFILES}/name/A", 200),
        ("GET", PROFILES, 401),
    ]
    assert jamf.write_count == 1
    assert jamf.requests_to(f"{PROFILES}*", "GET")[0].path.endswith("/name/A")
    assert b"<payloads>" in jamf.requests[0].body


@pytest.mark.parametrize("parallel", [3, 7])
def test_peak_concurrent_connections(jamf: FakeJamfServer, token: str, parallel: int) -> None:
    jamf.wait_idle()
    jamf.reset_stats()
    jamf.slow_responses(0.4)
    barrier = threading.Barrier(parallel)
    statuses: list[int] = []

    def worker() -> None:
        barrier.wait()
        statuses.append(call(jamf.url, "GET", PROFILES, token=token).status)

    threads = [threading.Thread(target=worker) for _ in range(parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * parallel
    assert jamf.peak_in_flight == parallel
    assert jamf.peak_connections == parallel
    # §8: a test for a client asserts jamf.peak_connections <= 5.
    assert (jamf.peak_connections <= 5) == (parallel <= 5)


def test_worker_threads_are_bounded() -> None:
    with FakeJamfServer(make_computers(), max_workers=2) as server:
        tok = oauth(server.url).json()["access_token"]
        server.wait_idle()
        server.reset_stats()
        server.slow_responses(0.3)
        statuses: list[int] = []
        threads = [threading.Thread(target=lambda: statuses.append(
            call(server.url, "GET", PROFILES, token=tok).status)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [200] * 4
        assert server.peak_in_flight == 2  # at most max_workers handled at once
        assert server.peak_connections == 4  # the others wait, connected
        assert [r.delayed for r in server.requests_to(PROFILES, "GET")] == [0.3] * 4  # no elapsed time compared


def test_keep_alive_connection_counts_once_and_stop_is_prompt(token: str,
                                                              jamf: FakeJamfServer) -> None:
    jamf.wait_idle()
    jamf.reset_stats()
    conn = http.client.HTTPConnection("127.0.0.1", jamf.port, timeout=5)
    for _ in range(3):
        conn.request("GET", PROFILES, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        assert resp.status == 200
        resp.read()
    assert jamf.peak_connections == 1
    assert jamf.open_connections == 1
    url = jamf.url
    stopper = threading.Thread(target=jamf.stop)  # with an idle keep-alive connection still open
    stopper.start()
    stopper.join(timeout=60)  # a hang guard only
    assert not stopper.is_alive(), "stop() waited on an idle keep-alive connection"
    assert conn.sock.recv(1) == b""  # prompt because stop closes the idle connection, not waits it out
    conn.close()
    with pytest.raises(RuntimeError):
        _ = jamf.url
    with pytest.raises(OSError):
        urllib.request.urlopen(url + PROFILES, timeout=2)


def test_seed_profile_and_context_manager() -> None:
    with FakeJamfServer(make_computers()) as server:
        pid = server.seed_profile("Existing", mobileconfig(identifier="com.example.seed"),
                                  computer_ids=(118,))
        tok = oauth(server.url).json()["access_token"]
        listing = get_json(server, tok, PROFILES).json()["os_x_configuration_profiles"]
        assert listing == [{"id": pid, "name": "Existing"}]
        assert server.profile(pid).payload_identifier == "com.example.seed"  # not rewritten
        assert "com.example.seed" in server.installed_profiles(118)
        url = server.url
    with pytest.raises(OSError):
        urllib.request.urlopen(url + PROFILES, timeout=2)


# ----------------------------------------------------------------------------- §6.1-6.2 normalising, TLS, faults


def test_normalising_mode_derives_display_metadata_from_jamf_fields() -> None:
    with FakeJamfServer(make_computers(), normalise_metadata=True, organization="Acme IT") as server:
        tok = oauth(server.url).json()["access_token"]
        payload = mobileconfig()
        pid = int(create(server, tok, profile_xml("Mac A", payload, description="for A")).xml().findtext("id") or 0)
        stored = server.profile(pid).plist
        assert (stored["PayloadDisplayName"], stored["PayloadDescription"], stored["PayloadOrganization"]) == (
            "Mac A", "for A", "Acme IT")
        assert stored["PayloadEnabled"] is True and stored["PayloadRemovalDisallowed"] is True
        sent = plistlib.loads(payload.encode())
        assert stored["PayloadContent"][0]["PayloadContent"] == sent["PayloadContent"][0]["PayloadContent"]
        # An update that sends a payload is normalised the same way, from the new description.
        update = profile_xml(None, mobileconfig(env_value="0"), computer_ids=None, description="now B")
        assert call(server.url, "PUT", f"{PROFILES}/id/{pid}", body=update, headers=XML, token=tok).status == 201
        stored = server.profile(pid).plist
        assert (stored["PayloadDisplayName"], stored["PayloadDescription"]) == ("Mac A", "now B")
        assert server.internal_errors == []


def test_default_mode_stores_the_display_metadata_as_sent(jamf: FakeJamfServer, token: str) -> None:
    pid = int(create(jamf, token, profile_xml("Mac A", mobileconfig())).xml().findtext("id") or 0)
    stored = jamf.profile(pid).plist
    assert stored["PayloadDisplayName"] == "Claude Code"
    assert "PayloadDescription" not in stored and "PayloadOrganization" not in stored


def test_store_payload_hook_changes_what_is_stored() -> None:
    def drop_env(plist: dict) -> dict:
        plist["PayloadContent"][0]["PayloadContent"] = {}
        return plist

    with FakeJamfServer(make_computers(), store_payload=drop_env) as server:
        tok = oauth(server.url).json()["access_token"]
        pid = int(create(server, tok, profile_xml("A", mobileconfig())).xml().findtext("id") or 0)
        assert server.profile(pid).plist["PayloadContent"][0]["PayloadContent"] == {}


def test_https_with_a_given_certificate(tmp_path) -> None:
    import ssl

    from .tls import self_signed

    cert, key = self_signed(tmp_path)
    with FakeJamfServer(make_computers(), tls=(cert, key)) as server:
        assert server.url.startswith("https://127.0.0.1:")
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(server.url + PROFILES, timeout=5)
        context = ssl.create_default_context(cafile=str(cert))
        request = urllib.request.Request(server.url + PROFILES)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5, context=context)
        assert refused.value.code == 401  # served over TLS, and still wants a token
        server.wait_idle()
        assert server.open_connections == 0
        assert server.internal_errors == []


def test_fault_with_headers_and_body_like_a_proxy_in_front(jamf: FakeJamfServer, token: str) -> None:
    jamf.fail_next(1, 429, path=PROFILES, headers=(("Retry-After", "7"),))
    jamf.fail_next(1, 200, path=PROFILES, body=b"<html><title>Sign in</title></html>", content_type="text/html")
    throttled = call(jamf.url, "GET", PROFILES, token=token)
    assert (throttled.status, throttled.headers["Retry-After"]) == (429, "7")
    portal = call(jamf.url, "GET", PROFILES, token=token)
    assert (portal.status, portal.body) == (200, b"<html><title>Sign in</title></html>")
    assert call(jamf.url, "GET", PROFILES, token=token).status == 200


def test_truncated_body_fault(jamf: FakeJamfServer, token: str) -> None:
    jamf.fail_next(1, path=PROFILES, truncate=True)
    with pytest.raises(http.client.IncompleteRead):
        call(jamf.url, "GET", PROFILES, headers=JSON_ACCEPT, token=token)
    assert jamf.requests[-1].fault == "truncated"
    assert get_json(jamf, token, PROFILES).json() == {"os_x_configuration_profiles": []}
