"""Each way getting an Entra ID token fails reads as what it is: DNS, TLS, proxy, a refused connection,
an unknown tenant, and only a real refusal as "refused the credentials". Against the fake identity
platform, a closed port, a name that cannot resolve, and the trap proxy, through ``mdmgen publish intune``."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from .intune_helpers import publish
from .test_publish_intune_auth import graph, ready, tls_files, trap  # noqa: F401 (fixtures)


@pytest.fixture(autouse=True)
def no_backoff_waits(monkeypatch) -> list[float]:
    """azure-identity retries a failed token request itself, waiting between attempts through its
    transport's ``sleep``: the waits are recorded, not slept (about 5 s a test otherwise)."""
    from mdmgen.publish.intune.transport import BoundedTransport

    waits: list[float] = []
    monkeypatch.setattr(BoundedTransport, "sleep", lambda _self, duration: waits.append(duration), raising=False)
    return waits


def one_error(result) -> str:
    assert result.exit_code == 7, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_a_wrong_secret_is_a_refusal_with_entra_ids_reason(workdir: Path, graph, monkeypatch):  # noqa: F811
    ready(workdir, graph)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "not-the-secret")
    line = one_error(publish(workdir, graph))
    assert line.startswith("error: Microsoft Entra ID refused the credentials: AADSTS7000215")
    assert "not-the-secret" not in line


def test_an_unknown_tenant_says_so(workdir: Path, graph, monkeypatch):  # noqa: F811
    ready(workdir, graph)
    monkeypatch.setenv("AZURE_TENANT_ID", "00000000-0000-0000-0000-000000000bad")
    line = one_error(publish(workdir, graph))
    assert "does not know the tenant in AZURE_TENANT_ID" in line and "refused the credentials" not in line


def test_an_untrusted_certificate_is_a_tls_failure_naming_the_ca_variables(workdir: Path, graph,  # noqa: F811
                                                                            monkeypatch):
    ready(workdir, graph)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.delenv("SSL_CERT_FILE")
    line = one_error(publish(workdir, graph))
    assert line.startswith("error: could not verify the TLS certificate of Microsoft Entra ID at 127.0.0.1:")
    assert "REQUESTS_CA_BUNDLE or SSL_CERT_FILE" in line and "refused the credentials" not in line


def test_a_closed_port_is_a_refused_connection(workdir: Path, graph, monkeypatch):  # noqa: F811
    ready(workdir, graph)
    with socket.socket() as closed:  # bound, never listening: connections to it are refused, and no race
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        monkeypatch.setenv("AZURE_AUTHORITY_HOST", f"https://127.0.0.1:{port}")
        line = one_error(publish(workdir, graph))
    assert line == (f"error: cannot connect to Microsoft Entra ID at 127.0.0.1:{port}: the connection was refused; "
                    "check AZURE_AUTHORITY_HOST and that the host is reachable")


def test_a_name_that_does_not_resolve_is_a_dns_failure(workdir: Path, graph, monkeypatch):  # noqa: F811
    ready(workdir, graph)
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", "https://nonexistent.invalid")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "*")  # straight to the resolver, not to the trap proxy
    line = one_error(publish(workdir, graph))
    assert line == ("error: cannot resolve nonexistent.invalid, the Microsoft Entra ID host (DNS); check "
                    "AZURE_AUTHORITY_HOST and this machine's network")


def test_a_proxy_that_refuses_is_named(workdir: Path, graph, trap, monkeypatch):  # noqa: F811
    ready(workdir, graph)
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", "https://login.example.com")
    line = one_error(publish(workdir, graph))
    assert line.startswith(f"error: the proxy {trap.url} refused or could not open the connection to Microsoft Entra "
                           "ID at login.example.com")
    assert "HTTPS_PROXY and NO_PROXY" in line and "refused the credentials" not in line
    trap.seen.clear()  # the fixture checks nothing else went to the proxy


@pytest.mark.parametrize(("inner", "kind"), [
    (TimeoutError("timed out"), "timeout"), (ConnectionRefusedError(111, "Connection refused"), "refused"),
    (socket.gaierror(-2, "Name or service not known"), "dns"), (ValueError("something else"), "other"),
])
def test_the_cause_is_found_however_deep_the_library_wrapped_it(inner, kind):
    """azure-core wraps the transport's error (inner_exception), azure-identity wraps that (cause)."""
    from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

    from mdmgen.publish.intune.token_errors import kind_of

    try:
        try:
            raise ServiceRequestError("transport failed", error=inner)
        except ServiceRequestError as middle:
            raise ClientAuthenticationError("Authentication failed: transport failed") from middle
    except ClientAuthenticationError as outer:
        found = kind_of(outer)
    assert found == (kind if kind != "other" else "credentials")
