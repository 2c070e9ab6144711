"""Every network call ends: ``--timeout`` is a deadline for a whole request, answers are capped in size.

Hostile servers (tests/fakes/hostile.py) run on loopback over real sockets: one drips its headers,
one its body, one sends an endless body, one endless headers, one redirects to another host. The
CLI runs as a subprocess, so its exit code, its one error line and its peak memory are what a cron
job would see; a generous subprocess timeout is only a hang guard. The deadline's arithmetic is
tested with an injected clock, never by measuring time.
"""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import httpcore
import pytest

from mdmgen import http, output
from mdmgen.publish import base, flow

from .conftest import HEADER, run, write_inventory
from .fakes.hostile import ELSEWHERE, MODES, HostileServer
from .fakes.jamf_server import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from .fakes.tls import self_signed

HANG_GUARD = 120  # seconds; far beyond any bound under test, only so a regression cannot hang the suite
GIB_IN_KIB = 1 << 20  # ru_maxrss is in KiB on Linux
log = logging.getLogger("test")


class Ticks:
    """A clock that moves ``step`` seconds each time it is read."""

    def __init__(self, step: float = 1.0) -> None:
        self._counter = itertools.count(0.0, step)

    def __call__(self) -> float:
        return next(self._counter)


class StillClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --- the deadline, with an injected clock ------------------------------------------------------


class RecordingStream(httpcore.NetworkStream):
    """A stream that records the timeout of each operation, and moves the clock one second per read."""

    def __init__(self, clock: StillClock) -> None:
        self.clock = clock
        self.timeouts: list[tuple[str, float | None]] = []

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self.timeouts.append(("read", timeout))
        self.clock.now += 1.0
        return b"a"

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.timeouts.append(("write", timeout))
        self.clock.now += 1.0

    def close(self) -> None:
        pass

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore.NetworkStream:
        self.timeouts.append(("tls", timeout))
        return self


class RecordingBackend(httpcore.NetworkBackend):
    def __init__(self, clock: StillClock) -> None:
        self.stream = RecordingStream(clock)
        self.connect_timeouts: list[float | None] = []

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.connect_timeouts.append(timeout)
        return self.stream


def test_each_operation_gets_at_most_the_time_left_and_none_starts_past_the_deadline():
    clock = StillClock()
    inner = RecordingBackend(clock)
    backend = http.DeadlineBackend(clock, inner=inner)
    with backend.deadline(3.5):
        stream = backend.connect_tcp("127.0.0.1", 1, timeout=60)
        stream = stream.start_tls(None, "127.0.0.1", timeout=60)
        for _ in range(4):
            stream.read(1, timeout=60)
        with pytest.raises(httpcore.ReadTimeout):  # a drip: every read answers, the deadline still ends it
            stream.read(1, timeout=60)
    assert inner.connect_timeouts == [3.5]
    assert inner.stream.timeouts == [("tls", 3.5), ("read", 3.5), ("read", 2.5), ("read", 1.5), ("read", 0.5)]


def test_a_shorter_operation_timeout_is_kept_and_outside_a_deadline_nothing_changes():
    clock = StillClock()
    inner = RecordingBackend(clock)
    backend = http.DeadlineBackend(clock, inner=inner)
    stream = backend.connect_tcp("127.0.0.1", 1, timeout=60)
    stream.read(1, timeout=60)
    with backend.deadline(100):
        stream.read(1, timeout=2)
    assert inner.stream.timeouts == [("read", 60), ("read", 2)]


def test_a_large_request_body_is_sent_in_pieces_each_within_the_time_left():
    clock = StillClock()
    inner = RecordingBackend(clock)
    backend = http.DeadlineBackend(clock, inner=inner)
    stream = backend.connect_tcp("127.0.0.1", 1)
    with backend.deadline(2.5), pytest.raises(httpcore.WriteTimeout):
        stream.write(b"x" * (http.WRITE_PIECE * 5), timeout=60)  # a peer that reads slowly
    assert inner.stream.timeouts == [("write", 2.5), ("write", 1.5), ("write", 0.5)]


def test_the_deadline_is_per_thread_and_restored_after_a_nested_one():
    clock = StillClock()
    backend = http.DeadlineBackend(clock, inner=RecordingBackend(clock))
    with backend.deadline(10):
        with backend.deadline(2):
            assert backend.left(None, TimeoutError) == 2
        assert backend.left(None, TimeoutError) == 10
    assert backend.left(7, TimeoutError) == 7


# --- the HTTP layer against hostile servers ------------------------------------------------------


def connection(server: HostileServer, **kwargs) -> http.Connection:
    options = {"service": "Jamf Pro", "max_connections": 1, "timeout": 5.0, "user_agent": "test", "log": log,
               **kwargs}
    return http.Connection(server.url, **options)


def failure(server: HostileServer, **kwargs) -> http.TransportFailure:
    conn = connection(server, **kwargs)
    try:
        with pytest.raises(http.TransportFailure) as caught:
            conn.send("GET", "/JSSResource/osxconfigurationprofiles", doing="listing profiles")
    finally:
        conn.close()
    return caught.value


@pytest.mark.parametrize("mode", ["drip-headers", "drip-body"])
def test_a_dripping_server_is_a_timeout_at_the_deadline(mode):
    # Ticks: every read of the clock is a second later, so 5 s pass within a few real drips.
    with HostileServer(mode, interval=0.02) as server:
        exc = failure(server, clock=Ticks())
    assert exc.kind == "timeout" and not exc.transient  # up, but too slow: asking again cannot help
    assert str(exc) == (f"Jamf Pro at {server.url} did not send its whole answer within 5 s while listing profiles "
                        "(it sends too slowly; not retried)")


def test_an_endless_body_is_cut_at_the_cap_and_not_retried():
    with HostileServer("endless-body") as server:
        exc = failure(server, max_body=1 << 20)
    assert exc.kind == "too large" and not exc.transient
    assert str(exc) == (f"Jamf Pro at {server.url} sent an answer larger than 1 MiB while listing profiles; "
                        "it was not read further")


def test_an_endless_body_stops_at_the_default_cap_too():
    with HostileServer("endless-body") as server:
        exc = failure(server)
    assert f"larger than {http.MAX_BODY >> 20} MiB" in str(exc)


def test_endless_headers_are_one_line_and_not_retried():
    with HostileServer("endless-headers") as server:
        exc = failure(server)
    assert exc.kind == "too large" and not exc.transient
    assert str(exc) == f"Jamf Pro at {server.url} sent response headers larger than 100 KiB while listing profiles"


def test_a_redirect_is_an_answer_and_is_not_followed():
    with HostileServer("redirect") as server:
        conn = connection(server)
        try:
            response = conn.send("GET", "/api/v1/x", doing="listing", headers={"Authorization": "Bearer secret"})
        finally:
            conn.close()
    assert response.status == 302 and response.headers["Location"] == ELSEWHERE
    assert server.paths == ["/api/v1/x"]  # asked once; elsewhere.invalid was never resolved, let alone sent to


def test_a_socks_proxy_is_one_line_without_its_password(monkeypatch):
    for name in ("https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "socks5://user:pa55word@proxy.corp:1080")
    with pytest.raises(base.RemoteError) as caught:
        http.Connection("https://acme.jamfcloud.com", service="Jamf Pro", max_connections=1, timeout=5,
                        user_agent="test", log=log)
    assert str(caught.value) == ("the proxy socks5://proxy.corp:1080 is a socks5 proxy; mdmgen goes through http "
                                 "or https proxies only: check HTTPS_PROXY and ALL_PROXY")


# --- the CLI, as a cron job runs it ---------------------------------------------------------------


@dataclass
class Finished:
    """One mdmgen run: its exit code, output, and its own peak memory (not that of earlier children)."""

    returncode: int
    stdout: str
    stderr: str
    maxrss_kib: int


def cli(workdir: Path, *args: str, env: dict[str, str] | None = None) -> Finished:
    """``mdmgen ARGS`` as a cron job runs it. Its peak memory is read from its own rusage
    (``os.wait4``): ``RUSAGE_CHILDREN`` would be the largest of every child the suite ever waited for."""
    environ = {key: value for key, value in os.environ.items() if not key.lower().endswith("_proxy")}
    environ.update(env or {})
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "mdmgen", *args], cwd=workdir, env=environ,
                                stdout=out, stderr=err)
        guard = threading.Timer(HANG_GUARD, proc.kill)  # only so a regression cannot hang the suite
        guard.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            guard.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Finished(proc.returncode, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"),
                        usage.ru_maxrss)


def assert_bounded(result: Finished) -> list[str]:
    """Exit 7, no traceback, under 1 GiB; the error lines."""
    assert result.returncode == 7, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert 0 < result.maxrss_kib < GIB_IN_KIB
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.fixture
def macs(workdir: Path) -> Path:
    write_inventory(workdir, HEADER + "MAC0001,macos,ann@example.com,ops\nMAC0002,macos,bob@example.com,ops\n")
    assert run(workdir, "compile").exit_code == 0
    return workdir


JAMF_EXPECTED = {
    "drip-headers": "did not send its whole answer within 5 s while requesting an access token",
    "drip-body": "did not send its whole answer within 5 s while requesting an access token",
    "endless-body": f"sent an answer larger than {http.MAX_SMALL_BODY >> 20} MiB while requesting an access token",
    "endless-headers": "sent response headers larger than 100 KiB while requesting an access token",
    "redirect": f"answered 302 Found while requesting an access token: redirected to {ELSEWHERE}",
}


@pytest.mark.parametrize("mode", MODES)
def test_publish_jamf_against_a_hostile_server_is_one_line_exit_7(macs: Path, mode: str):
    with HostileServer(mode) as server:
        result = cli(macs, "publish", "jamf", "--url", server.url, "--timeout", "5",
                     env={"JAMF_CLIENT_ID": DEFAULT_CLIENT_ID, "JAMF_CLIENT_SECRET": DEFAULT_CLIENT_SECRET})
    (line,) = assert_bounded(result)
    assert line.startswith("error: Jamf Pro") and JAMF_EXPECTED[mode] in line, line
    assert server.url in line or mode == "redirect"
    assert DEFAULT_CLIENT_SECRET not in result.stdout + result.stderr
    assert server.requests == 1  # not retried: another try gets the same answer, so it ends near --timeout
    # The publish ended, so the folder's lock is free again: a compile can run.
    assert run(macs, "compile").exit_code == 0


PREFLIGHT_EXPECTED = {
    "drip-headers": "no answer within 3s",
    "drip-body": "no answer within 3s",
    "endless-body": "the answer is larger than any OTLP reply",
    "endless-headers": "the answer is larger than any OTLP reply",
    "redirect": "WRONG ENDPOINT: HTTP 302 Found",
}


@pytest.mark.parametrize("mode", MODES)
def test_preflight_against_a_hostile_collector_is_one_line_exit_7(workdir: Path, mode: str):
    write_inventory(workdir, HEADER + "LNX-1,linux,ann@example.com,ops\n")
    with HostileServer(mode) as server:
        assert run(workdir, "compile", "--var", f"otlp_endpoint={server.url}",
                   "--var", "otlp_protocol=http/protobuf").exit_code == 0
        result = cli(workdir, "preflight", "--timeout", "3")
    assert_bounded(result)
    failing = [line for line in result.stdout.splitlines() if line.strip().startswith("FAIL")]
    assert len(failing) == 2 and all(PREFLIGHT_EXPECTED[mode] in line for line in failing), result.stdout
    assert f"127.0.0.1:{server.port}" in result.stdout


# --- Entra ID through azure-identity ---------------------------------------------------------------


TENANT = "11111111-2222-3333-4444-555555555555"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("bounds-tls"))


def entra_env(monkeypatch, server: HostileServer, cert: Path) -> None:
    for name in ("AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_FEDERATED_TOKEN_FILE", "HTTPS_PROXY", "https_proxy",
                 "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    monkeypatch.setenv("AZURE_CLIENT_ID", "app")
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "entra-s3cret-value")
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", server.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))


def openid_configuration(base: str) -> dict[str, dict]:
    """The tenant's OIDC metadata, served properly: only the token request itself misbehaves."""
    return {f"/{TENANT}/v2.0/.well-known/openid-configuration": {
        "token_endpoint": f"{base}/{TENANT}/oauth2/v2.0/token",
        "authorization_endpoint": f"{base}/{TENANT}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{base}/{TENANT}/oauth2/v2.0/devicecode",
        "issuer": f"{base}/{TENANT}/v2.0", "token_endpoint_auth_methods_supported": ["client_secret_post"]}}


@pytest.mark.parametrize("mode", ["drip-headers", "endless-body"])
def test_the_entra_token_request_is_bounded_too(monkeypatch, tls_files, mode):
    from mdmgen.publish.intune.graph import GraphClient, credential_factory

    with HostileServer(mode, tls=tls_files) as server:
        server.answers.update(openid_configuration(server.url))
        entra_env(monkeypatch, server, tls_files[0])
        client = GraphClient("https://127.0.0.1:1", credential_factory(timeout=1), sleep=lambda _: None)
        try:
            with pytest.raises(base.RemoteError) as caught:
                client.request("GET", "/beta/deviceManagement/deviceConfigurations", doing="listing")
        finally:
            client.close()
    message = str(caught.value)
    assert f"Microsoft Entra ID at {server.url}" in message and "while requesting an access token" in message
    assert ("did not send its whole answer within 1 s" if mode == "drip-headers"
            else "sent an answer larger than 1 MiB") in message
    assert "\n" not in message and "entra-s3cret-value" not in message
    assert f"/{TENANT}/oauth2/v2.0/token" in server.paths  # the credential really used the bounded transport


# --- S3 (botocore) -------------------------------------------------------------------------------


def test_s3_timeouts_and_attempts_come_from_the_option_whatever_the_environment(monkeypatch):
    from mdmgen.publish import s3

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "20")  # would stretch a failing run twentyfold
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example")
    config = s3.make_client(timeout=7, region="eu-west-1").meta.config
    assert (config.connect_timeout, config.read_timeout) == (7, 7)
    assert config.retries == {"mode": "standard", "total_max_attempts": 3}


class EndlessBody:
    def __init__(self) -> None:
        self.read_sizes: list[int] = []
        self.closed = False

    def read(self, amount: int) -> bytes:
        self.read_sizes.append(amount)
        return b" " * amount

    def close(self) -> None:
        self.closed = True


def test_an_endless_s3_object_is_cut_at_the_cap():
    from mdmgen.publish import s3

    publisher = s3.S3Publisher(client=None, destination=s3.parse_destination("s3://fleet/prod"))
    body = EndlessBody()
    with pytest.raises(base.RemoteError, match=r"^s3://fleet/prod/ sent an object larger than 16 MiB while"):
        publisher._read_body({"Body": body}, s3.MAX_OBJECT, "verifying x")
    assert body.closed and sum(body.read_sizes) <= s3.MAX_OBJECT + s3.READ_CHUNK


# --- the lock ------------------------------------------------------------------------------------


class FailingPublisher:
    """Fails the way an unreachable server (or a Ctrl-C) does, after the lock was taken."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.closed = False

    def plan(self, local, *, prune, progress):
        raise self.error

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("error", [
    http.TransportFailure("Jamf Pro at https://jamf.example did not answer within 5 s while listing",
                          kind="timeout", transient=True),
    KeyboardInterrupt()], ids=["exit-7", "interrupted"])
def test_a_publish_that_cannot_finish_releases_the_lock(macs: Path, error: BaseException):
    publisher = FailingPublisher(error)
    with pytest.raises(type(error)):
        flow.run(macs / "output", lambda: publisher, destination="Jamf Pro", dry_run=False, prune=False,
                 max_delete=10, force=False)
    assert publisher.closed
    with output.locked(macs / "output"):  # exclusive, non-blocking: OutputBusy if the publish still held it
        pass
