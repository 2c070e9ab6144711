"""``mdmgen publish intune``: each standard way of authenticating, nothing sent to a public Microsoft
host when the authority is another one, missing permissions, and objects that repeat our names."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import openssl_path
from .fakes.graph_server import ALL_ROLES, AppRegistration, FakeGraphServer
from .fakes.test_graph_server import TrapProxy
from .fakes.tls import self_signed
from .intune_helpers import GRAPH_TOKEN, GRAPH_URL, Row, azure_env, compile_rows, publish, scripted_graph, seed, writes
from .scripted import Script

ROWS = [Row("C02AAA0001", "macos", "ada@example.com", "ops"), Row("C02AAA0002", "macos", "bob@example.com", "ops"),
        Row("PC00000001", "windows", "cy@example.com", "ops")]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("intune-auth-tls"))


@pytest.fixture
def trap(monkeypatch) -> Iterator[TrapProxy]:
    """Every request to a host other than loopback lands at this proxy, which refuses it."""
    proxy = TrapProxy()
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, proxy.url)
    yield proxy
    proxy.close()


@pytest.fixture
def graph(tls_files, monkeypatch, trap) -> Iterator[FakeGraphServer]:
    with FakeGraphServer(tls=tls_files, page_size=2) as server:
        azure_env(monkeypatch, server, tls_files[0])
        yield server
        assert server.internal_errors == []
    assert trap.seen == []  # nothing went to a public Microsoft host (or anywhere else)


def ready(workdir: Path, graph: FakeGraphServer) -> None:
    compile_rows(workdir, ROWS)
    seed(graph, ROWS)


def test_workload_identity_federation_from_a_token_file(workdir: Path, graph: FakeGraphServer, monkeypatch,
                                                         tmp_path: Path):
    ready(workdir, graph)
    graph.add_app(AppRegistration("gh-actions-app", secret=None, federated_token="eyJ.github.oidc-token-value"))
    token_file = tmp_path / "azure-token"
    token_file.write_text("eyJ.github.oidc-token-value")
    monkeypatch.delenv("AZURE_CLIENT_SECRET")
    monkeypatch.setenv("AZURE_CLIENT_ID", "gh-actions-app")
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    result = publish(workdir, graph, "-vv")
    assert result.exit_code == 0, result.output
    assert len(graph.configurations) == 1 and len(graph.scripts) == 1
    assert "oidc-token-value" not in result.output


def test_a_client_certificate(workdir: Path, graph: FakeGraphServer, monkeypatch, tmp_path: Path):
    ready(workdir, graph)
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run([openssl_path(), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=mdmgen"], check=True, capture_output=True)
    both = tmp_path / "app.pem"
    both.write_bytes(key.read_bytes() + cert.read_bytes())
    graph.add_app(AppRegistration("cert-app", secret=None, certificate_pem=cert.read_bytes()))
    monkeypatch.delenv("AZURE_CLIENT_SECRET")
    monkeypatch.setenv("AZURE_CLIENT_ID", "cert-app")
    monkeypatch.setenv("AZURE_CLIENT_CERTIFICATE_PATH", str(both))
    result = publish(workdir, graph)
    assert result.exit_code == 0, result.output
    assert "client_assertion=<redacted>" in graph.requests_to("*/oauth2/v2.0/token")[0].body


def test_only_ssl_cert_file_is_enough_for_both_libraries(workdir: Path, graph: FakeGraphServer, monkeypatch):
    ready(workdir, graph)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    result = publish(workdir, graph)
    assert result.exit_code == 0, result.output


def test_a_missing_permission_names_it(workdir: Path, graph: FakeGraphServer, monkeypatch):
    ready(workdir, graph)
    roles = tuple(r for r in ALL_ROLES if r != "DeviceManagementConfiguration.ReadWrite.All")
    graph.add_app(AppRegistration("read-only-app", roles=(*roles, "DeviceManagementConfiguration.Read.All")))
    monkeypatch.setenv("AZURE_CLIENT_ID", "read-only-app")
    result = publish(workdir, graph)
    assert result.exit_code == 7, result.output
    assert "needs the application permission DeviceManagementConfiguration.ReadWrite.All" in result.output


def test_a_second_object_with_our_name_is_refused_then_pruned(workdir: Path, graph: FakeGraphServer):
    """A copy assigned to the same group gives each Mac two profiles for the domain: left in place
    (no --prune) the proof refuses, naming it; --prune deletes it and the proof holds."""
    ready(workdir, graph)
    assert publish(workdir, graph).exit_code == 0
    (original,) = graph.configurations.values()
    copy = {**original, "id": "00000000-0000-0000-0000-00000000c0de"}
    graph.configurations[copy["id"]] = copy
    graph.assignments[copy["id"]] = list(graph.assignments[original["id"]])
    graph.reset_requests()
    result = publish(workdir, graph)
    assert result.exit_code == 1 and writes(graph) == []
    assert "no team needs: --prune deletes it" in result.output
    assert original["id"] in result.output and original["displayName"] in result.output
    result = publish(workdir, graph, "--prune", "--force")
    assert result.exit_code == 0, result.output
    assert len(graph.configurations) == 1 and len(writes(graph)) == 1 and writes(graph)[0].startswith("DELETE")


# --- the Graph client on its own ------------------------------------------------------------------


def test_a_next_link_to_another_host_is_not_followed():
    from mdmgen.publish.base import RemoteError

    script = Script()
    client = scripted_graph(script)
    with pytest.raises(RemoteError, match="next link to another host"):
        list(client.pages("https://graph.example.net/v1.0/users", doing="test"))
    client.close()
    script.assert_done()  # nothing was sent, the token least of all


def test_paging_follows_next_links_on_graph_until_there_is_none():
    script = (Script().on("GET", "/v1.0/users", json={"value": [{"id": "a"}, {"id": "b"}],
                                                     "@odata.nextLink": f"{GRAPH_URL}/v1.0/users?$skiptoken=x1"})
              .on("GET", "/v1.0/users?$skiptoken=x1", json={"value": [{"id": "c"}]}))
    client = scripted_graph(script)
    assert [user["id"] for user in client.pages("/v1.0/users", doing="test")] == ["a", "b", "c"]
    client.close()
    script.assert_done()
    assert {r.headers["Authorization"] for r in script.requests} == {f"Bearer {GRAPH_TOKEN}"}


def test_batch_splits_by_20_judges_each_answer_and_waits_for_an_inner_429():
    users = {f"{i:08d}-0000-4000-8000-000000000000": f"u{i}@example.com" for i in range(30)}
    throttled: list[str] = []

    def answer(request):
        responses = []
        for inner in json.loads(request.content)["requests"]:
            user = inner["url"].split("/")[2].split("?")[0]
            if len(throttled) < 2 and inner["id"] not in throttled:  # two inner requests of the first batch
                throttled.append(inner["id"])
                responses.append({"id": inner["id"], "status": 429, "headers": {"Retry-After": "7"},
                                  "body": {"error": {"code": "TooManyRequests", "message": "slow down"}}})
            elif user in users:
                responses.append({"id": inner["id"], "status": 200, "body": {"id": user, "mail": users[user]}})
            else:
                responses.append({"id": inner["id"], "status": 404,
                                  "body": {"error": {"code": "Request_ResourceNotFound", "message": "gone"}}})
        return httpx.Response(200, json={"responses": responses[::-1]})  # in any order (§5.4)

    script = Script().on("POST", "/v1.0/$batch", answer=answer, times=3)
    waits: list[float] = []
    client = scripted_graph(script, sleep=waits.append)
    urls = {f"k{i}": f"/users/{user}?$select=id,mail" for i, user in enumerate(users)}
    urls["missing"] = "/users/00000000-0000-0000-0000-000000000000?$select=id"
    answers = client.batch("v1.0", urls, doing="test")
    client.close()
    script.assert_done()
    assert {k: a.status for k, a in answers.items()} == {**{f"k{i}": 200 for i in range(30)}, "missing": 404}
    assert answers["k3"].body["mail"] == "u3@example.com"
    sent = [[inner["id"] for inner in json.loads(r.content)["requests"]] for r in script.requests]
    assert [len(ids) for ids in sent] == [20, 11, 2]  # 31 requests: 20 + 11, then the 2 throttled ones again
    assert sorted(sent[2]) == sorted(throttled)
    assert waits == [7.0]


def test_a_refusal_that_echoes_the_secret_at_the_cut_shows_no_part_of_it():
    """The library's message is redacted before it is cut to one short line: a secret straddling
    the cut would otherwise be printed in part, where no redaction can recognise it."""
    from azure.core.exceptions import ClientAuthenticationError

    from mdmgen.publish.base import RemoteError
    from mdmgen.publish.intune.graph import GraphClient

    secret = "Zq8~client-SECRET-0123456789abcdef"

    class Refusing:
        def get_token(self, *_scopes, **_kw):
            raise ClientAuthenticationError(message="x" * 290 + secret + " (echoed by the identity platform)")

    client = GraphClient(GRAPH_URL, Refusing, secrets=(secret,))
    with pytest.raises(RemoteError) as info:
        client.get_json("/v1.0/users", doing="test")
    client.close()
    text = str(info.value)
    assert "refused the credentials" in text
    assert not any(secret[i:i + 4] in text for i in range(len(secret) - 3)), text


def test_a_graph_error_that_echoes_the_secret_at_the_cut_shows_no_part_of_it():
    from mdmgen.http import Response
    from mdmgen.publish.intune.graph import GraphClient

    secret = "Zq8~client-SECRET-0123456789abcdef"
    body = json.dumps({"error": {"code": "BadRequest", "message": "y" * 180 + secret + " was not expected"}})
    client = GraphClient(GRAPH_URL, lambda: None, secrets=(secret,))
    error = client._error("GET", "/v1.0/users", Response(400, httpx.Headers(), body.encode(), doing="listing users"))
    client.close()
    text = str(error)
    assert "BadRequest" in text
    assert not any(secret[i:i + 4] in text for i in range(len(secret) - 3)), text
