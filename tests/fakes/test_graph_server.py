"""Contract tests pinning the fake identity platform + Graph to shared/reference/intune-graph.md.

The HTTP side of these tests is plain ``urllib.request`` over HTTPS (no mdmgen code), so a client that
passes against the fake relies only on documented behaviour; the last group runs the real
azure-identity against the fake to prove the token library works with it and talks to nothing else.
``§`` numbers point into the reference.  No test sleeps: expiry and budgets use ``ManualClock``.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..conftest import openssl_path
from .graph_server import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    AppRegistration,
    FakeGraphServer,
    ManualClock,
)
from .tls import self_signed

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
CONFIGS = "/deviceManagement/deviceConfigurations"
SCRIPTS = "/deviceManagement/deviceManagementScripts"
MACOS = "#microsoft.graph.macOSCustomConfiguration"
GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
PROFILE = b'<?xml version="1.0" encoding="UTF-8"?><plist version="1.0"><dict/></plist>'


# ----------------------------------------------------------------------------- helpers


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """A minimal stdlib HTTPS client trusting only the test certificate."""

    def __init__(self, server: FakeGraphServer, cafile: Path) -> None:
        self.server = server
        self.context = ssl.create_default_context(cafile=str(cafile))
        self.token: str | None = None

    def call(self, method: str, url: str, body: Any = None, *, headers: dict[str, str] | None = None,
             token: str | None = "default", form: dict[str, str] | None = None) -> Reply:
        hdrs = dict(headers or {})
        data: bytes | None = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            hdrs.setdefault("Content-Type", "application/x-www-form-urlencoded")
        elif body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if token == "default":
            token = self.token
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        full = url if url.startswith("https://") else self.server.url + url
        request = urllib.request.Request(full, data=data, headers=hdrs, method=method)
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=10) as resp:
                return Reply(resp.status, resp.headers, resp.read())
        except urllib.error.HTTPError as err:
            return Reply(err.code, err.headers, err.read())

    def get_token(self, client_id: str = DEFAULT_CLIENT_ID, secret: str = DEFAULT_CLIENT_SECRET,
                  scope: str = GRAPH_SCOPE, tenant: str | None = None, **extra: str) -> Reply:
        form = {"client_id": client_id, "scope": scope, "client_secret": secret,
                "grant_type": "client_credentials", **extra}
        return self.call("POST", f"/{tenant or self.server.tenant_id}/oauth2/v2.0/token", form=form, token=None)

    def login(self, **kw: str) -> str:
        reply = self.get_token(**kw)
        assert reply.status == 200, reply.body
        self.token = reply.json()["access_token"]
        return self.token

    def get(self, path: str, **kw: Any) -> Reply:
        return self.call("GET", path, **kw)

    def all_pages(self, path: str) -> list[list[dict[str, Any]]]:
        pages, url = [], path
        while url:
            reply = self.get(url)
            assert reply.status == 200, reply.body
            pages.append(reply.json()["value"])
            url = reply.json().get("@odata.nextLink")
        return pages


def profile_body(name: str = "Claude Code - C02XXXXXXHD1", payload: bytes = PROFILE, **extra: Any) -> dict[str, Any]:
    return {"@odata.type": MACOS, "displayName": name, "description": "mdmgen sha256:3f2a",
            "payloadName": "Claude Code managed settings", "payloadFileName": "com.anthropic.claudecode.mobileconfig",
            "payload": base64.b64encode(payload).decode(), "roleScopeTagIds": ["0"], **extra}


def script_body(content: bytes = b"Write-Output 'hi'", **extra: Any) -> dict[str, Any]:
    return {"@odata.type": "#microsoft.graph.deviceManagementScript", "displayName": "Claude Code managed settings",
            "description": "mdmgen sha256:1", "scriptContent": base64.b64encode(content).decode(),
            "runAsAccount": "system", "enforceSignatureCheck": False, "fileName": "claudecode-managed.ps1",
            "roleScopeTagIds": ["0"], "runAs32Bit": False, **extra}


def graph_error_of(reply: Reply) -> dict[str, Any]:
    """§5.1 shape, asserted on every error the tests look at."""
    body = reply.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", error["innerError"]["date"])
    assert GUID.fullmatch(error["innerError"]["request-id"])
    return error


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("graph-tls"))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def graph(tls_files: tuple[Path, Path], clock: ManualClock) -> Iterator[FakeGraphServer]:
    with FakeGraphServer(tls=tls_files, clock=clock, page_size=2) as server:
        yield server
    assert server.internal_errors == []


@pytest.fixture
def client(graph: FakeGraphServer, tls_files: tuple[Path, Path]) -> Client:
    c = Client(graph, tls_files[0])
    c.login()
    return c


def create_profile(client: Client, version: str = "beta", **kw: Any) -> dict[str, Any]:
    reply = client.call("POST", f"/{version}{CONFIGS}", profile_body(**kw))
    assert reply.status == 201, reply.body
    return reply.json()


# ----------------------------------------------------------------------------- §1 identity


def test_https_only_with_the_test_certificate(graph: FakeGraphServer) -> None:
    # A client that does not trust the test CA cannot talk to the fake at all.
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(graph.url + "/v1.0/users", context=ssl.create_default_context(), timeout=10)


@pytest.mark.parametrize("tenant", ["guid", "contoso.onmicrosoft.com"])
def test_openid_configuration_points_back_at_the_fake(graph: FakeGraphServer, tls_files: Any, tenant: str) -> None:
    c = Client(graph, tls_files[0])
    path_tenant = graph.tenant_id if tenant == "guid" else tenant
    reply = c.get(f"/{path_tenant}/v2.0/.well-known/openid-configuration", token=None)
    assert reply.status == 200
    meta = reply.json()
    assert meta["token_endpoint"] == f"{graph.url}/{path_tenant}/oauth2/v2.0/token"
    assert meta["issuer"] == f"{graph.url}/{graph.tenant_id}/v2.0"  # the GUID, even for a domain path
    assert all(str(v).startswith(graph.url) for k, v in meta.items() if k.endswith("_endpoint"))


def test_token_success_shape(graph: FakeGraphServer, tls_files: Any) -> None:
    reply = Client(graph, tls_files[0]).get_token()
    assert reply.status == 200
    body = reply.json()
    assert set(body) == {"token_type", "expires_in", "ext_expires_in", "access_token"}  # §1.1
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3599 and body["ext_expires_in"] == 3599
    assert "no-store" in reply.headers["Cache-Control"]


@pytest.mark.parametrize(("kw", "status", "error", "code"), [
    ({"scope": "https://graph.microsoft.com/DeviceManagementConfiguration.ReadWrite.All"}, 400, "invalid_scope",
     1002012),
    ({"scope": "https://example.com/.default"}, 400, "invalid_resource", 500011),
    ({"secret": "wrong-secret-value"}, 401, "invalid_client", 7000215),
    ({"client_id": "00000000-0000-0000-0000-000000000000"}, 400, "unauthorized_client", 700016),
    ({"tenant": "other.onmicrosoft.com"}, 400, "invalid_request", 90002),
    ({"grant_type": "password"}, 400, "unsupported_grant_type", 70003),
])
def test_token_errors_are_oauth_shaped(graph: FakeGraphServer, tls_files: Any, kw: dict[str, str], status: int,
                                       error: str, code: int) -> None:
    reply = Client(graph, tls_files[0]).get_token(**kw)
    assert reply.status == status
    body = reply.json()
    assert body["error"] == error and body["error_codes"] == [code]  # a string, not Graph's {"error": {...}}
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    assert {"timestamp", "trace_id", "correlation_id"} <= set(body)
    assert "wrong-secret-value" not in reply.body.decode() and DEFAULT_CLIENT_SECRET not in reply.body.decode()


def test_token_without_any_credential_is_invalid_client(graph: FakeGraphServer, tls_files: Any) -> None:
    c = Client(graph, tls_files[0])
    reply = c.call("POST", f"/{graph.tenant_id}/oauth2/v2.0/token", token=None,
                   form={"client_id": DEFAULT_CLIENT_ID, "scope": GRAPH_SCOPE, "grant_type": "client_credentials"})
    assert reply.status == 401 and reply.json()["error"] == "invalid_client"


def test_federated_token_assertion(graph: FakeGraphServer, tls_files: Any) -> None:
    graph.add_app(AppRegistration("fed-app", secret=None, federated_token="header.claims.sig-from-the-ci"))
    c = Client(graph, tls_files[0])
    form = {"client_id": "fed-app", "scope": GRAPH_SCOPE, "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}
    ok = c.call("POST", f"/{graph.tenant_id}/oauth2/v2.0/token", token=None,
                form={**form, "client_assertion": "header.claims.sig-from-the-ci"})
    assert ok.status == 200
    bad = c.call("POST", f"/{graph.tenant_id}/oauth2/v2.0/token", token=None,
                 form={**form, "client_assertion": "header.claims.forged"})
    assert bad.status == 401 and bad.json()["error"] == "invalid_client"
    assert all("sig-from-the-ci" not in r.body and "forged" not in r.body for r in graph.requests)


def test_instance_discovery_is_not_served(graph: FakeGraphServer, tls_files: Any) -> None:
    reply = Client(graph, tls_files[0]).get("/common/discovery/instance?api-version=1.1", token=None)
    assert reply.status == 404


# ----------------------------------------------------------------------------- Graph authentication


def test_graph_needs_a_bearer_token(graph: FakeGraphServer, tls_files: Any) -> None:
    reply = Client(graph, tls_files[0]).get("/v1.0/users", token=None)
    assert reply.status == 401
    assert graph_error_of(reply)["code"] == "InvalidAuthenticationToken"
    assert reply.headers["WWW-Authenticate"].startswith("Bearer ")
    assert Client(graph, tls_files[0]).get("/v1.0/users", token="made-up").status == 401


def test_token_expires_on_the_injected_clock(client: Client, graph: FakeGraphServer, clock: ManualClock) -> None:
    assert client.get("/v1.0/users").status == 200
    clock.advance(3598)
    assert client.get("/v1.0/users").status == 200
    clock.advance(1)
    expired = client.get("/v1.0/users")
    assert expired.status == 401 and graph_error_of(expired)["code"] == "InvalidAuthenticationToken"
    client.login()
    assert client.get("/v1.0/users").status == 200


def test_expire_all_tokens_now(client: Client, graph: FakeGraphServer) -> None:
    graph.expire_all_tokens()
    assert client.get("/v1.0/users").status == 401
    client.login()
    assert client.get("/v1.0/users").status == 200


def test_configurable_token_lifetime(tls_files: Any, clock: ManualClock) -> None:
    with FakeGraphServer(tls=tls_files, clock=clock, token_lifetime=60) as server:
        c = Client(server, tls_files[0])
        assert c.get_token().json()["expires_in"] == 60
        c.login()
        clock.advance(60)
        assert c.get("/v1.0/users").status == 401


def test_missing_application_permission_is_403(graph: FakeGraphServer, tls_files: Any) -> None:
    graph.add_app(AppRegistration("reader", secret="reader-secret",
                                  roles=("DeviceManagementConfiguration.Read.All",)))
    c = Client(graph, tls_files[0])
    c.login(client_id="reader", secret="reader-secret")
    assert c.get(f"/beta{CONFIGS}").status == 200
    reply = c.call("POST", f"/beta{CONFIGS}", profile_body())
    assert reply.status == 403 and graph_error_of(reply)["code"] == "Authorization_RequestDenied"
    assert graph.configurations == {}


# ----------------------------------------------------------------------------- §2 macOSCustomConfiguration


def test_create_and_get_profile(client: Client) -> None:
    created = create_profile(client, deploymentChannel="deviceChannel")
    assert GUID.fullmatch(created["id"])
    assert created["@odata.type"] == MACOS and created["version"] == 1 and created["supportsScopeTags"] is True
    assert {"createdDateTime", "lastModifiedDateTime"} <= set(created)
    assert base64.b64decode(created["payload"]) == PROFILE
    got = client.get(f"/beta{CONFIGS}/{created['id']}").json()
    assert {k: v for k, v in got.items() if k != "@odata.context"} == \
        {k: v for k, v in created.items() if k != "@odata.context"}


def test_payload_limit_is_one_million_decoded_bytes(client: Client) -> None:
    assert client.call("POST", f"/beta{CONFIGS}", profile_body(payload=b"x" * 1_000_000)).status == 201
    too_big = client.call("POST", f"/beta{CONFIGS}", profile_body(payload=b"x" * 1_000_001))
    assert too_big.status == 400 and graph_error_of(too_big)["code"] == "BadRequest"


@pytest.mark.parametrize("change", [
    {"payload": "not base64!"},
    {"@odata.type": None},
    {"@odata.type": "#microsoft.graph.macOSDeviceFeaturesConfiguration"},
    {"payloadFileName": "settings.json"},
    {"unknownProperty": 1},
    {"version": 7},
    {"deploymentChannel": "sideways"},
    {"payload": None},
])
def test_create_validation(client: Client, graph: FakeGraphServer, change: dict[str, Any]) -> None:
    body = profile_body()
    for key, value in change.items():
        if value is None:
            body.pop(key)
        else:
            body[key] = value
    reply = client.call("POST", f"/beta{CONFIGS}", body)
    assert reply.status == 400 and graph_error_of(reply)["code"] == "BadRequest"
    assert graph.configurations == {}


def test_deployment_channel_is_beta_only_and_fixed(client: Client) -> None:
    reply = client.call("POST", f"/v1.0{CONFIGS}", profile_body(deploymentChannel="deviceChannel"))
    assert reply.status == 400
    v1 = create_profile(client, version="v1.0")
    assert "deploymentChannel" not in v1
    beta = create_profile(client, deploymentChannel="userChannel")
    url = f"/beta{CONFIGS}/{beta['id']}"
    same = client.call("PATCH", url, {"@odata.type": MACOS, "deploymentChannel": "userChannel"})
    assert same.status == 204
    changed = client.call("PATCH", url, {"@odata.type": MACOS, "deploymentChannel": "deviceChannel"})
    assert changed.status == 400
    assert client.get(url).json()["deploymentChannel"] == "userChannel"
    assert "deploymentChannel" not in client.get(f"/v1.0{CONFIGS}/{beta['id']}").json()


def test_patch_stores_the_payload_and_bumps_version(client: Client) -> None:
    created = create_profile(client)
    url = f"/beta{CONFIGS}/{created['id']}"
    new = base64.b64encode(PROFILE.replace(b"<dict/>", b"<dict><key>a</key><true/></dict>")).decode()
    reply = client.call("PATCH", url, {"@odata.type": MACOS, "description": "mdmgen sha256:9b1c", "payload": new})
    assert reply.status == 204 and reply.body == b""
    got = client.get(url).json()
    assert got["payload"] == new and got["description"] == "mdmgen sha256:9b1c" and got["version"] == 2
    assert client.call("PATCH", url, {"description": "no type"}).status == 400  # §2.3 body carries @odata.type


def test_patch_can_answer_200_with_the_object(tls_files: Any, clock: ManualClock) -> None:
    with FakeGraphServer(tls=tls_files, clock=clock, patch_status=200) as server:
        c = Client(server, tls_files[0])
        c.login()
        created = create_profile(c)
        reply = c.call("PATCH", f"/beta{CONFIGS}/{created['id']}", {"@odata.type": MACOS, "description": "d2"})
        assert reply.status == 200 and reply.json()["description"] == "d2" and reply.json()["version"] == 2


def test_patch_that_ignores_the_payload(client: Client, graph: FakeGraphServer) -> None:
    """IntuneCD #264: success, metadata changes, content does not - only a GET + decode can tell."""
    created = create_profile(client)
    graph.patch_ignores_payload = True
    url = f"/beta{CONFIGS}/{created['id']}"
    reply = client.call("PATCH", url, {"@odata.type": MACOS, "description": "new",
                                       "payload": base64.b64encode(b"<new/>").decode()})
    assert reply.status == 204
    got = client.get(url).json()
    assert got["description"] == "new" and base64.b64decode(got["payload"]) == PROFILE
    assert graph.payload_of(created["id"]) == PROFILE


def test_delete_profile(client: Client) -> None:
    created = create_profile(client)
    url = f"/beta{CONFIGS}/{created['id']}"
    assert client.call("DELETE", url).status == 204
    missing = client.get(url)
    assert missing.status == 404 and graph_error_of(missing)["code"] == "ResourceNotFound"
    assert client.call("DELETE", url).status == 404


def test_assign_replaces_the_whole_set(client: Client, graph: FakeGraphServer) -> None:
    g1, g2, g3 = (graph.add_group(f"group {i}") for i in range(3))
    created = create_profile(client)
    url = f"/beta{CONFIGS}/{created['id']}"

    def target(kind: str, group: Any = None) -> dict[str, Any]:
        t: dict[str, Any] = {"@odata.type": f"#microsoft.graph.{kind}"}
        if group is not None:
            t["groupId"] = group.id
        return {"target": t}

    first = client.call("POST", url + "/assign", {"assignments": [target("groupAssignmentTarget", g1),
                                                                  target("groupAssignmentTarget", g2)]})
    assert first.status == 200
    assert [a["target"]["groupId"] for a in first.json()["value"]] == [g1.id, g2.id]
    second = client.call("POST", url + "/assign", {"assignments": [
        target("groupAssignmentTarget", g3), target("exclusionGroupAssignmentTarget", g1),
        target("allDevicesAssignmentTarget")]})
    assert second.status == 200
    pages = client.all_pages(url + "/assignments")
    assert len(pages) == 2  # 3 assignments, page size 2: paged like any collection
    targets = [a["target"] for page in pages for a in page]
    assert [t["@odata.type"].rsplit(".", 1)[1] for t in targets] == [
        "groupAssignmentTarget", "exclusionGroupAssignmentTarget", "allDevicesAssignmentTarget"]
    assert g2.id not in json.dumps(targets)
    assert client.call("POST", url + "/assign", {"assignments": []}).status == 200
    assert client.all_pages(url + "/assignments") == [[]]


@pytest.mark.parametrize("assignment", [
    {"target": {"@odata.type": "#microsoft.graph.groupAssignmentTarget", "groupId": "no-such-group"}},
    {"target": {"@odata.type": "#microsoft.graph.nonsenseTarget"}},
    {"nope": {}},
])
def test_assign_validation(client: Client, assignment: dict[str, Any]) -> None:
    created = create_profile(client)
    reply = client.call("POST", f"/beta{CONFIGS}/{created['id']}/assign", {"assignments": [assignment]})
    assert reply.status == 400


# ----------------------------------------------------------------------------- §5.3 paging


def test_paging_follows_next_link(client: Client) -> None:
    ids = [create_profile(client, name=f"p{i}")["id"] for i in range(5)]
    first = client.get(f"/beta{CONFIGS}").json()
    link = first["@odata.nextLink"]
    assert link.startswith(client.server.url + f"/beta{CONFIGS}?") and "$skiptoken=" in link
    pages = client.all_pages(f"/beta{CONFIGS}")
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [c["id"] for p in pages for c in p] == ids


def test_skiptoken_is_opaque(client: Client) -> None:
    for i in range(3):
        create_profile(client, name=f"p{i}")
    link = client.get(f"/beta{CONFIGS}").json()["@odata.nextLink"]
    forged = re.sub(r"\$skiptoken=[^&]+", "$skiptoken=2", link)
    assert client.get(forged).status == 400
    assert client.get(f"/beta{CONFIGS}?$skip=2").json()["value"][0]["displayName"] == "p0"  # no $skip paging


def test_paging_keeps_filter_and_select(client: Client) -> None:
    for _ in range(3):
        create_profile(client, name="same")
    create_profile(client, name="other")
    query = urllib.parse.quote("displayName eq 'same'")
    pages = client.all_pages(f"/beta{CONFIGS}?$filter={query}&$select=id,displayName")
    rows = [row for page in pages for row in page]
    assert len(rows) == 3 and all(set(r) <= {"id", "displayName", "@odata.type"} for r in rows)


@pytest.mark.parametrize(("page_size", "empty_last", "shape"), [(1, False, [1, 1, 1]), (3, False, [3]),
                                                               (3, True, [3, []]), (2, True, [2, 1, []])])
def test_page_size_is_configurable(tls_files: Any, clock: ManualClock, page_size: int, empty_last: bool,
                                   shape: list[Any]) -> None:
    with FakeGraphServer(tls=tls_files, clock=clock, page_size=page_size, empty_last_page=empty_last) as server:
        c = Client(server, tls_files[0])
        c.login()
        for i in range(3):
            create_profile(c, name=f"p{i}")
        pages = c.all_pages(f"/beta{CONFIGS}")
        assert [len(p) if p else [] for p in pages] == shape


# ----------------------------------------------------------------------------- §3.2 scripts


def test_scripts_lifecycle(client: Client, graph: FakeGraphServer) -> None:
    created = client.call("POST", f"/beta{SCRIPTS}", script_body())
    assert created.status == 201
    script = created.json()
    assert GUID.fullmatch(script["id"]) and script["runAs32Bit"] is False
    url = f"/beta{SCRIPTS}/{script['id']}"
    listed = client.all_pages(f"/beta{SCRIPTS}")[0]
    assert listed[0]["id"] == script["id"] and listed[0]["scriptContent"] is None  # only GET by id carries it
    assert client.get(url).json()["scriptContent"] == script["scriptContent"]
    new = base64.b64encode(b"Write-Output 'v2'").decode()
    assert client.call("PATCH", url, {"@odata.type": "#microsoft.graph.deviceManagementScript",
                                      "scriptContent": new}).status == 204
    assert client.get(url).json()["scriptContent"] == new
    group = graph.add_group("Windows fleet")
    assign = client.call("POST", url + "/assign", {"deviceManagementScriptAssignments": [
        {"target": {"@odata.type": "#microsoft.graph.groupAssignmentTarget", "groupId": group.id}}]})
    assert assign.status == 204 and assign.body == b""
    assert [a["target"]["groupId"] for a in client.all_pages(url + "/assignments")[0]] == [group.id]
    legacy = client.call("POST", url + "/assign",
                         {"deviceManagementScriptGroupAssignments": [{"targetGroupId": group.id}]})
    assert legacy.status == 204
    assert client.call("DELETE", url).status == 204 and client.get(url).status == 404


def test_scripts_are_beta_only_and_validated(client: Client) -> None:
    v1 = client.call("POST", f"/v1.0{SCRIPTS}", script_body())
    assert v1.status == 400 and "deviceManagementScripts" in graph_error_of(v1)["message"]
    assert client.call("POST", f"/beta{SCRIPTS}", script_body(content=b"x" * 200_001)).status == 400
    assert client.call("POST", f"/beta{SCRIPTS}", script_body(runAsAccount="root")).status == 400
    assert client.call("POST", f"/beta{SCRIPTS}", script_body(fileName="x.sh")).status == 400


# ----------------------------------------------------------------------------- §4 devices, users, groups


def test_managed_device_by_serial_with_primary_user(client: Client, graph: FakeGraphServer) -> None:
    ada = graph.add_user("ada@example.com", mail="ada.lovelace@example.com")
    device = graph.add_managed_device("C02XXXXXXHD1", user=ada)
    graph.add_managed_device("C02OTHER0001")
    query = urllib.parse.quote("serialNumber eq 'C02XXXXXXHD1'")
    reply = client.get(f"/v1.0/deviceManagement/managedDevices?$filter={query}"
                       "&$select=id,deviceName,serialNumber,azureADDeviceId,operatingSystem,userPrincipalName")
    rows = reply.json()["value"]
    assert len(rows) == 1 and rows[0]["id"] == device.id and rows[0]["userPrincipalName"] == "ada@example.com"
    assert "emailAddress" not in rows[0] and rows[0]["azureADDeviceId"] == device.azure_ad_device_id
    users = client.get(f"/v1.0/deviceManagement/managedDevices/{device.id}/users").json()["value"]
    assert [(u["id"], u["mail"]) for u in users] == [(ada.id, "ada.lovelace@example.com")]
    assert client.get("/v1.0/users/ada@example.com").json()["mail"] == "ada.lovelace@example.com"


def test_serial_lookup_edge_cases(client: Client, graph: FakeGraphServer) -> None:
    graph.add_managed_device("C02'QUOTE")
    graph.add_managed_device("C02TWICE")
    graph.add_managed_device("C02TWICE")  # re-enrolment: two records (§4.1)

    def lookup(serial_literal: str) -> Reply:
        return client.get("/v1.0/deviceManagement/managedDevices?$filter="
                          + urllib.parse.quote(f"serialNumber eq '{serial_literal}'"))

    assert lookup("NOPE").json()["value"] == []
    assert len(lookup("C02TWICE").json()["value"]) == 2
    assert [d["serialNumber"] for d in lookup("C02''QUOTE").json()["value"]] == ["C02'QUOTE"]
    assert lookup("C02'QUOTE").status == 400  # unescaped quote: not valid OData
    assert client.get("/v1.0/deviceManagement/managedDevices?$filter="
                      + urllib.parse.quote("startswith(serialNumber,'C02')")).status == 400


def test_groups_members_and_transitive_member_of(client: Client, graph: FakeGraphServer) -> None:
    ada = graph.add_user("ada@example.com")
    inner = graph.add_group("Claude Code pilots", [ada])
    outer = graph.add_group("Claude Code", [inner])
    graph.add_group("Unrelated")
    by_name = client.get("/v1.0/groups?$filter=" + urllib.parse.quote("displayName eq 'Claude Code'")).json()
    assert [g["id"] for g in by_name["value"]] == [outer.id]
    members = client.get(f"/v1.0/groups/{outer.id}/members").json()["value"]
    assert [(m["@odata.type"], m["id"]) for m in members] == [("#microsoft.graph.group", inner.id)]
    direct = client.all_pages(f"/v1.0/users/{ada.id}/memberOf")
    assert [g["id"] for p in direct for g in p] == [inner.id]
    transitive = client.all_pages(f"/v1.0/users/{ada.id}/transitiveMemberOf")
    assert sorted(g["id"] for p in transitive for g in p) == sorted([inner.id, outer.id])


def test_add_device_to_group(client: Client, graph: FakeGraphServer) -> None:
    device = graph.add_managed_device("C02XXXXXXHD1")
    group = graph.add_group("Claude Code")
    found = client.get("/v1.0/devices?$filter=" + urllib.parse.quote(f"deviceId eq '{device.azure_ad_device_id}'")
                       + "&$select=id").json()["value"]
    assert found == [{"@odata.type": "#microsoft.graph.device", "id": device.entra_object_id}]
    ref = {"@odata.id": f"https://graph.microsoft.com/v1.0/directoryObjects/{device.entra_object_id}"}
    assert client.call("POST", f"/v1.0/groups/{group.id}/members/$ref", ref).status == 204
    again = client.call("POST", f"/v1.0/groups/{group.id}/members/$ref", ref)
    assert again.status == 400 and graph_error_of(again)
    missing = {"@odata.id": "https://graph.microsoft.com/v1.0/directoryObjects/00000000-0000-0000-0000-000000000000"}
    assert client.call("POST", f"/v1.0/groups/{group.id}/members/$ref", missing).status == 404
    assert group.members == [device.entra_object_id]


def test_adding_a_device_needs_device_readwrite(graph: FakeGraphServer, tls_files: Any) -> None:
    graph.add_app(AppRegistration("members-only", secret="s2", roles=("GroupMember.ReadWrite.All",)))
    device, group = graph.add_managed_device("C02X"), graph.add_group("g")
    c = Client(graph, tls_files[0])
    c.login(client_id="members-only", secret="s2")
    ref = {"@odata.id": f"https://graph.microsoft.com/v1.0/directoryObjects/{device.entra_object_id}"}
    assert c.call("POST", f"/v1.0/groups/{group.id}/members/$ref", ref).status == 403  # §1.3


# ----------------------------------------------------------------------------- §5.2 faults and throttling


HTTP_DATE = "Wed, 21 Oct 2026 07:28:00 GMT"


@pytest.mark.parametrize(("retry_after", "header"), [(7, "7"), (None, None), ("soon", "soon"), (HTTP_DATE, HTTP_DATE)])
def test_429_storm(client: Client, graph: FakeGraphServer, retry_after: Any, header: str | None) -> None:
    graph.throttle(None, retry_after=retry_after)
    for _ in range(4):
        reply = client.get("/v1.0/users")
        assert reply.status == 429 and reply.headers.get("Retry-After") == header
        assert graph_error_of(reply)["code"] == "TooManyRequests"
    graph.clear_faults()
    assert client.get("/v1.0/users").status == 200
    assert [r.fault for r in graph.requests_to("/v1.0/users")] == ["status-429"] * 4 + [None]


def test_one_off_503_then_success(client: Client, graph: FakeGraphServer) -> None:
    graph.fail_next(503, retry_after=2)
    first = client.get("/v1.0/users")
    assert first.status == 503 and first.headers["Retry-After"] == "2"
    assert graph_error_of(first)["code"] == "ServiceUnavailable"
    assert client.get("/v1.0/users").status == 200


def test_faults_can_target_a_method_and_path(client: Client, graph: FakeGraphServer) -> None:
    graph.fail_next(502, count=2, method="POST", path=f"/beta{CONFIGS}")
    assert client.get(f"/beta{CONFIGS}").status == 200
    assert client.call("POST", f"/beta{CONFIGS}", profile_body()).status == 502
    assert client.call("POST", f"/beta{CONFIGS}", profile_body()).status == 502
    assert client.call("POST", f"/beta{CONFIGS}", profile_body()).status == 201
    assert len(graph.configurations) == 1  # a failed write stored nothing


def test_token_endpoint_fault_is_oauth_shaped(graph: FakeGraphServer, tls_files: Any) -> None:
    graph.throttle(1, retry_after=3, path="/*/oauth2/v2.0/token")
    reply = Client(graph, tls_files[0]).get_token()
    assert reply.status == 429 and reply.headers["Retry-After"] == "3" and isinstance(reply.json()["error"], str)
    assert Client(graph, tls_files[0]).get_token().status == 200


def test_write_budget_100_per_20_seconds_per_app(client: Client, graph: FakeGraphServer, clock: ManualClock,
                                                 tls_files: Any) -> None:
    created = create_profile(client)
    url = f"/beta{CONFIGS}/{created['id']}"
    for i in range(99):
        clock.advance(0.1)
        assert client.call("PATCH", url, {"@odata.type": MACOS, "description": str(i)}).status == 204
    throttled = client.call("PATCH", url, {"@odata.type": MACOS, "description": "over"})
    assert throttled.status == 429 and graph_error_of(throttled)["code"] == "TooManyRequests"
    # The first write was at t=0; 9.9 s have passed, so it leaves the window in 10.1 s -> 11 whole seconds.
    assert throttled.headers["Retry-After"] == "11"
    assert client.get(url).status == 200  # reads are not writes
    graph.add_app(AppRegistration("second-app", secret="second-secret"))
    other = Client(graph, tls_files[0])
    other.login(client_id="second-app", secret="second-secret")
    assert other.call("PATCH", url, {"@odata.type": MACOS, "description": "other app"}).status == 204
    clock.advance(11)  # as Retry-After said
    assert client.call("PATCH", url, {"@odata.type": MACOS, "description": "later"}).status == 204


def test_write_budget_is_configurable_and_per_tenant(tls_files: Any, clock: ManualClock) -> None:
    with FakeGraphServer(tls=tls_files, clock=clock, write_budget=2, tenant_write_budget=3,
                         budget_window=5) as server:
        server.add_app(AppRegistration("b", secret="b-secret"))
        a, b = Client(server, tls_files[0]), Client(server, tls_files[0])
        a.login()
        b.login(client_id="b", secret="b-secret")
        assert [a.call("POST", f"/beta{CONFIGS}", profile_body()).status for _ in range(3)] == [201, 201, 429]
        assert [b.call("POST", f"/beta{CONFIGS}", profile_body()).status for _ in range(2)] == [201, 429]
        clock.advance(5)
        assert a.call("POST", f"/beta{CONFIGS}", profile_body()).status == 201


# ----------------------------------------------------------------------------- §5.4 $batch


def batch(client: Client, requests: list[dict[str, Any]], version: str = "v1.0") -> Reply:
    return client.call("POST", f"/{version}/$batch", {"requests": requests})


def test_batch_at_most_20(client: Client) -> None:
    requests = [{"id": str(i), "method": "GET", "url": "/users"} for i in range(21)]
    over = batch(client, requests)
    assert over.status == 400 and graph_error_of(over)["code"] == "BadRequest"
    assert len(batch(client, requests[:20]).json()["responses"]) == 20


def test_batch_inner_statuses_are_independent(client: Client, graph: FakeGraphServer) -> None:
    reply = batch(client, [
        {"id": "get", "method": "GET", "url": "/users"},
        {"id": "missing", "method": "GET", "url": f"{CONFIGS}/00000000-0000-0000-0000-000000000000"},
        {"id": "create", "method": "POST", "url": CONFIGS, "headers": {"Content-Type": "application/json"},
         "body": profile_body()},
        {"id": "no-type", "method": "POST", "url": CONFIGS, "body": profile_body()},
    ], version="beta")
    assert reply.status == 200
    responses = reply.json()["responses"]
    assert [r["id"] for r in responses] == ["no-type", "create", "missing", "get"]  # any order: here reversed
    status = {r["id"]: r["status"] for r in responses}
    assert status == {"get": 200, "missing": 404, "create": 201, "no-type": 400}
    by_id = {r["id"]: r for r in responses}
    assert by_id["missing"]["body"]["error"]["code"] == "ResourceNotFound"
    assert by_id["create"]["body"]["id"] in graph.configurations
    # Inner requests are recorded (and counted) one by one; the one refused by $batch itself never ran.
    assert {r.batch_id for r in graph.requests if r.batch_id} == {"get", "missing", "create"}


def test_batch_inner_429(client: Client, graph: FakeGraphServer) -> None:
    graph.throttle(1, retry_after=5, path="/v1.0/groups*")
    responses = batch(client, [{"id": "a", "method": "GET", "url": "/users"},
                               {"id": "b", "method": "GET", "url": "/groups"},
                               {"id": "c", "method": "GET", "url": "/groups"}]).json()["responses"]
    by_id = {r["id"]: r for r in responses}
    assert by_id["b"]["status"] == 429 and by_id["b"]["headers"]["Retry-After"] == "5"
    assert by_id["b"]["body"]["error"]["code"] == "TooManyRequests"
    assert by_id["a"]["status"] == 200 and by_id["c"]["status"] == 200


def test_batch_depends_on_and_budget(tls_files: Any, clock: ManualClock) -> None:
    with FakeGraphServer(tls=tls_files, clock=clock, write_budget=1) as server:
        c = Client(server, tls_files[0])
        c.login()
        hdr = {"Content-Type": "application/json"}
        responses = batch(c, [
            {"id": "1", "method": "POST", "url": CONFIGS, "headers": hdr, "body": profile_body()},
            {"id": "2", "method": "POST", "url": CONFIGS, "headers": hdr, "body": profile_body()},
            {"id": "3", "method": "GET", "url": "/users", "dependsOn": ["2"]},
        ], version="beta").json()["responses"]
        assert {r["id"]: r["status"] for r in responses} == {"1": 201, "2": 429, "3": 424}
        assert batch(c, [{"id": "x", "method": "GET", "url": "/users", "dependsOn": ["y"]}]).status == 400


# ----------------------------------------------------------------------------- records, secrets, threads


def test_requests_are_recorded_with_secrets_redacted(client: Client, graph: FakeGraphServer) -> None:
    client.get("/v1.0/users?$select=id")
    token_request, users = graph.requests[0], graph.requests[-1]
    assert token_request.path == f"/{graph.tenant_id}/oauth2/v2.0/token" and "client_secret=<redacted>" in \
        token_request.body
    assert (users.method, users.path, users.query, users.status) == ("GET", "/v1.0/users", "$select=id", 200)
    assert re.fullmatch(r"Bearer <sha256:[0-9a-f]{8}>", users.authorization)
    everything = repr(graph.requests)
    assert DEFAULT_CLIENT_SECRET not in everything and str(client.token) not in everything
    assert len(graph.requests_to("/v1.0/*", "GET")) == 1 and graph.tokens_issued == 1


def test_concurrent_writes_are_safe(client: Client, graph: FakeGraphServer) -> None:
    statuses: list[int] = []

    def worker(n: int) -> None:
        for i in range(6):
            statuses.append(client.call("POST", f"/beta{CONFIGS}", profile_body(name=f"w{n}-{i}")).status)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [201] * 48 and len(graph.configurations) == 48
    assert sorted(r.seq for r in graph.requests) == list(range(1, len(graph.requests) + 1))


# ----------------------------------------------------------------------------- the real azure-identity


class TrapProxy:
    """A proxy that records what a client asks it for and refuses it all.

    With ``HTTPS_PROXY`` naming it and ``NO_PROXY`` covering loopback, every request to a host other
    than the fake lands here, so the tests see attempts to reach a public Microsoft host whether or not
    this machine has a network, and such a request fails either way."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.seen.append(conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1"))
                    conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def trap(monkeypatch: pytest.MonkeyPatch) -> Iterator[TrapProxy]:
    proxy = TrapProxy()
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, proxy.url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    yield proxy
    proxy.close()


@pytest.fixture
def trusted(monkeypatch: pytest.MonkeyPatch, tls_files: Any, graph: FakeGraphServer,
            trap: TrapProxy) -> Iterator[FakeGraphServer]:
    """The environment a publisher run would have: the fake as authority host, the test CA trusted.
    After the test, nothing went anywhere but the fake (unless the test empties ``trap.seen``)."""
    for name in ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_FEDERATED_TOKEN_FILE",
                 "AZURE_USERNAME", "AZURE_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files[0]))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_files[0]))  # azure-core's transport is requests
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", graph.authority_host)
    monkeypatch.setenv("AZURE_TENANT_ID", graph.tenant_id)
    monkeypatch.setenv("AZURE_CLIENT_ID", DEFAULT_CLIENT_ID)
    yield graph
    assert trap.seen == []


def assert_token_works(graph: FakeGraphServer, tls_files: Any, token: str) -> None:
    c = Client(graph, tls_files[0])
    c.token = token
    assert c.get("/v1.0/users").status == 200


MSAL_CALLS = ["GET /{t}/v2.0/.well-known/openid-configuration", "POST /{t}/oauth2/v2.0/token"]


def calls(graph: FakeGraphServer) -> list[str]:
    return [f"{r.method} {r.path}".replace(graph.tenant_id, "{t}") for r in graph.requests]


@pytest.mark.parametrize("tenant", ["guid", "contoso.onmicrosoft.com"])
def test_client_secret_credential_gets_a_token_from_the_fake_only(trusted: FakeGraphServer, tls_files: Any,
                                                                  tenant: str) -> None:
    from azure.identity import ClientSecretCredential

    tenant_id = trusted.tenant_id if tenant == "guid" else tenant  # §1.1: the GUID or a verified domain
    credential = ClientSecretCredential(tenant_id, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET,
                                        authority=trusted.authority_host, disable_instance_discovery=True)
    token = credential.get_token(GRAPH_SCOPE)
    assert [c.replace(tenant, "{t}") for c in calls(trusted)] == MSAL_CALLS  # no discovery, nothing else
    assert "client_secret=<redacted>" in trusted.requests[1].body
    assert credential.get_token(GRAPH_SCOPE).token == token.token  # cached: no second request
    assert trusted.tokens_issued == 1
    assert_token_works(trusted, tls_files, token.token)


def test_environment_credential_with_a_secret(trusted: FakeGraphServer, tls_files: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.identity import EnvironmentCredential

    monkeypatch.setenv("AZURE_CLIENT_SECRET", DEFAULT_CLIENT_SECRET)
    token = EnvironmentCredential(disable_instance_discovery=True).get_token(GRAPH_SCOPE)
    assert calls(trusted) == MSAL_CALLS
    assert_token_works(trusted, tls_files, token.token)


def test_environment_credential_with_a_wrong_secret_fails(trusted: FakeGraphServer,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import EnvironmentCredential

    monkeypatch.setenv("AZURE_CLIENT_SECRET", "not-the-secret")
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        EnvironmentCredential(disable_instance_discovery=True).get_token(GRAPH_SCOPE)
    assert [r.status for r in trusted.requests] == [200, 401]


def _app_certificate(folder: Path, name: str) -> tuple[Path, bytes]:
    import subprocess

    key, cert = folder / f"{name}-key.pem", folder / f"{name}-cert.pem"
    subprocess.run([openssl_path(), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", f"/CN={name}"], check=True, capture_output=True)
    both = folder / f"{name}.pem"
    both.write_bytes(key.read_bytes() + cert.read_bytes())
    return both, cert.read_bytes()


def test_environment_credential_with_a_certificate(trusted: FakeGraphServer, tls_files: Any, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import EnvironmentCredential

    registered, public = _app_certificate(tmp_path, "registered")
    stranger, _ = _app_certificate(tmp_path, "stranger")
    trusted.add_app(AppRegistration("cert-app", secret=None, certificate_pem=public))
    monkeypatch.setenv("AZURE_CLIENT_ID", "cert-app")
    monkeypatch.setenv("AZURE_CLIENT_CERTIFICATE_PATH", str(registered))
    token = EnvironmentCredential(disable_instance_discovery=True).get_token(GRAPH_SCOPE)
    assert calls(trusted) == MSAL_CALLS
    assert "client_assertion=<redacted>" in trusted.requests[1].body
    assert_token_works(trusted, tls_files, token.token)
    monkeypatch.setenv("AZURE_CLIENT_CERTIFICATE_PATH", str(stranger))
    with pytest.raises(ClientAuthenticationError, match="AADSTS700027"):
        EnvironmentCredential(disable_instance_discovery=True).get_token(GRAPH_SCOPE)


def test_workload_identity_with_a_federated_token_file(trusted: FakeGraphServer, tls_files: Any, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.identity import WorkloadIdentityCredential

    trusted.add_app(AppRegistration("fed-app", secret=None, federated_token="eyJ.federated.token"))
    token_file = tmp_path / "federated-token"
    token_file.write_text("eyJ.federated.token")
    monkeypatch.setenv("AZURE_CLIENT_ID", "fed-app")
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    token = WorkloadIdentityCredential(disable_instance_discovery=True).get_token(GRAPH_SCOPE)
    # azure-identity's own AAD client, not MSAL: straight to the token endpoint, no metadata read.
    assert calls(trusted) == ["POST /{t}/oauth2/v2.0/token"]
    assert "eyJ.federated.token" not in repr(trusted.requests)
    assert_token_works(trusted, tls_files, token.token)


def test_with_instance_discovery_on_the_client_goes_elsewhere_and_fails(trusted: FakeGraphServer,
                                                                        trap: TrapProxy) -> None:
    """The guard the publisher must keep: with discovery on, MSAL asks a public Microsoft host first.
    That request fails (here at the trap; with no network, at DNS), and the fake never sees a token request."""
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import ClientSecretCredential

    credential = ClientSecretCredential(trusted.tenant_id, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET,
                                        authority=trusted.authority_host, retry_total=0)
    with pytest.raises(ClientAuthenticationError):
        credential.get_token(GRAPH_SCOPE)
    assert trusted.requests_to("*/oauth2/v2.0/token") == [] and trusted.tokens_issued == 0
    assert [line.rsplit(" ", 1)[0] for line in trap.seen] == ["CONNECT login.microsoftonline.com:443"]
    trap.seen.clear()
