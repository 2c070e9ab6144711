"""``mdmgen publish jamf`` over HTTPS through a real forward proxy (tinyproxy), as on a corporate network.

The fake Jamf Pro server serves HTTPS with a throw-away certificate that the client trusts
through ``SSL_CERT_FILE`` only; the proxy is a real tinyproxy process on loopback, given to
mdmgen only by the usual environment variables. The proxy's log shows which tunnels it made.
"""

from __future__ import annotations

import sys

import pytest

from .conftest import run
from .fakes.jamf_server import FakeJamfServer
from .fakes.proxy import TinyProxy
from .fakes.tls import self_signed
from .test_publish_jamf import (
    compile_fleet,
    computer,
    jamf_env,  # noqa: F401 - a fixture
    one_line_error,
    serial,
)

PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def clean_proxy_env(monkeypatch, jamf_env):  # noqa: F811
    """No proxy variable from the machine running the tests, in either case."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


@pytest.fixture
def https_jamf(certificate, clean_proxy_env):
    clean_proxy_env.setenv("SSL_CERT_FILE", str(certificate[0]))
    with FakeJamfServer([computer(i) for i in range(4)], tls=certificate, normalise_metadata=True) as jamf:
        yield jamf
        assert jamf.internal_errors == []


@pytest.fixture
def proxy(tmp_path):
    with TinyProxy(tmp_path / "proxy") as running:
        yield running


def publish(workdir, jamf: FakeJamfServer):
    return run(workdir, "publish", "jamf", "--url", jamf.url)


def test_through_https_proxy_a_normalising_jamf_converges(workdir, https_jamf, proxy, clean_proxy_env):
    """The issue's "done when": proxy given only by HTTPS_PROXY, a Jamf that rewrites metadata,
    a mixed fleet: the first publish succeeds, a republish writes nothing, one change is one write."""
    clean_proxy_env.setenv("HTTPS_PROXY", proxy.url)
    compile_fleet(workdir, range(4), others=3)
    first = publish(workdir, https_jamf)
    assert first.exit_code == 0, first.output
    assert "4 uploaded (4 new, 0 changed)" in first.output
    tunnels = proxy.connects()
    assert tunnels and set(tunnels) == {f"127.0.0.1:{https_jamf.port}"}
    assert len(tunnels) <= 5  # keep-alive: a handful of tunnels, not one per request
    assert len(https_jamf.requests) > len(tunnels)

    https_jamf.reset_stats()
    assert publish(workdir, https_jamf).exit_code == 0
    assert https_jamf.write_count == 0

    compile_fleet(workdir, range(4), others=3, teams={1: "moved"})
    https_jamf.reset_stats()
    changed = publish(workdir, https_jamf)
    assert changed.exit_code == 0, changed.output
    assert [(w.op, w.redeploy_on_update) for w in https_jamf.profile_writes] == [("update", "All")]
    assert https_jamf.write_count == 1
    assert len(proxy.connects()) > len(tunnels)  # the later runs went through the proxy too


def test_no_proxy_goes_around_the_proxy(workdir, https_jamf, proxy, clean_proxy_env):
    clean_proxy_env.setenv("HTTPS_PROXY", proxy.url)
    clean_proxy_env.setenv("NO_PROXY", "example.com,127.0.0.1")
    compile_fleet(workdir, range(2))
    result = publish(workdir, https_jamf)
    assert result.exit_code == 0, result.output
    assert proxy.connects() == []
    assert len(https_jamf.profiles()) == 2


def test_a_proxy_that_refuses_the_tunnel_is_one_line(workdir, https_jamf, tmp_path, clean_proxy_env):
    with TinyProxy(tmp_path / "strict", connect_ports=(443,)) as strict:  # tunnels to 443 only
        clean_proxy_env.setenv("https_proxy", strict.url)
        compile_fleet(workdir, range(1))
        result = publish(workdir, https_jamf)
        assert result.exit_code == 7
        assert one_line_error(result) == (
            f"error: the proxy {strict.url} refused to connect to 127.0.0.1 while requesting an access token "
            "(403 Access violation); check HTTPS_PROXY and NO_PROXY")
        assert strict.connects() == [f"127.0.0.1:{https_jamf.port}"]  # asked once, not retried
    assert https_jamf.requests == []


def test_a_proxy_that_is_not_there_is_one_line(workdir, https_jamf, clean_proxy_env, closed_port):
    port = closed_port
    clean_proxy_env.setenv("HTTPS_PROXY", f"http://user:pr0xy-pass@127.0.0.1:{port}")
    compile_fleet(workdir, range(1))
    result = publish(workdir, https_jamf)
    assert result.exit_code == 7
    assert one_line_error(result) == (
        f"error: cannot reach {https_jamf.url} through the proxy http://127.0.0.1:{port} while requesting an "
        "access token: Connection refused")
    assert "pr0xy-pass" not in result.output


def test_an_untrusted_certificate_through_the_proxy_is_a_tls_error(workdir, https_jamf, proxy, clean_proxy_env):
    clean_proxy_env.setenv("HTTPS_PROXY", proxy.url)
    clean_proxy_env.delenv("SSL_CERT_FILE")
    compile_fleet(workdir, range(1))
    result = publish(workdir, https_jamf)
    assert result.exit_code == 7
    assert one_line_error(result) == (
        "error: TLS: the certificate of 127.0.0.1 is not trusted (self-signed certificate) while requesting an "
        "access token; to trust a private CA, set SSL_CERT_FILE (or MDMGEN_TRUSTSTORE=1 for the system's store)")
    assert https_jamf.requests == []  # nothing, not even the credentials, went over the untrusted tunnel


def test_plain_http_to_loopback_never_goes_through_a_proxy(workdir, jamf_env, proxy, clean_proxy_env):  # noqa: F811
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        clean_proxy_env.setenv(name, proxy.url)
    with FakeJamfServer([computer(0)]) as jamf:
        compile_fleet(workdir, range(1))
        result = publish(workdir, jamf)
        assert result.exit_code == 0, result.output
        assert len(jamf.profiles()) == 1
    assert proxy.log_text().count("Request (file descriptor") == 0  # the credentials never met the proxy
    assert serial(0) not in proxy.log_text()


def test_the_operating_systems_trust_store_can_be_used_instead(workdir, https_jamf, proxy, clean_proxy_env):
    """MDMGEN_TRUSTSTORE=1: truststore's context (the keychain on macOS; on Linux OpenSSL's paths,
    SSL_CERT_FILE included), still through the proxy."""
    clean_proxy_env.setenv("MDMGEN_TRUSTSTORE", "1")
    clean_proxy_env.setenv("HTTPS_PROXY", proxy.url)
    compile_fleet(workdir, range(1))
    result = publish(workdir, https_jamf)
    assert result.exit_code == 0, result.output
    assert proxy.connects()


def test_the_trust_store_asked_for_but_not_installed_is_one_line(workdir, https_jamf, clean_proxy_env):
    clean_proxy_env.setenv("MDMGEN_TRUSTSTORE", "1")
    clean_proxy_env.setitem(sys.modules, "truststore", None)  # as if the package were not installed
    compile_fleet(workdir, range(1))
    result = publish(workdir, https_jamf)
    assert result.exit_code == 7
    assert one_line_error(result) == ("error: MDMGEN_TRUSTSTORE is set but the truststore package is not installed: "
                                      "pip install 'mdmgen[truststore]', or unset it")
    assert https_jamf.requests == []
