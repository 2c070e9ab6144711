"""``mdmgen preflight`` against local OTLP receivers, on every protocol the policy can choose.

Each test compiles a folder with the real CLI, then runs ``mdmgen preflight`` on it. The
receivers are the fake collectors of the e2e suite (tests/e2e/receivers.py): real HTTP and
gRPC servers on 127.0.0.1, so preflight's own network code runs as it would against a collector.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from mdmgen import otlp, preflight

from .conftest import HEADER, openssl_path, run, write_inventory
from .e2e.receivers import PROTOCOLS, make_receiver

TOKEN = "pf-t0ken-8c1e5a0b9d"  # a test fixture, never a real credential
ROWS = "LNX-1,linux,ann+cc@example.com,\"R&D, Berlin\"\nWSL-1,wsl,bob@example.com,sales=emea\n"


@pytest.fixture(autouse=True)
def _token_in_environment(monkeypatch):
    """The collector token reaches the compile the only way a credential may: the environment."""
    monkeypatch.setenv("PF_TOKEN", TOKEN)


def write_policy(workdir: Path, *, headers: str | None = 'Authorization=Bearer {{ secret("PF_TOKEN") }}',
                 env: dict | None = None, variables: dict | None = None, teams: dict | None = None) -> None:
    path = workdir / "profiles" / "policy.yaml"
    policy = yaml.safe_load(path.read_text(encoding="utf-8"))
    if headers is not None:
        policy["settings"]["env"]["OTEL_EXPORTER_OTLP_HEADERS"] = headers
    policy["settings"]["env"].update(env or {})
    policy["variables"].update(variables or {})
    policy["teams"] = teams or {}
    path.write_text(yaml.safe_dump(policy, sort_keys=False), encoding="utf-8")


def compile_for(workdir: Path, endpoint: str, protocol: str, *more: str) -> None:
    result = run(workdir, "compile", "--var", f"otlp_endpoint={endpoint}", "--var", f"otlp_protocol={protocol}",
                 *more)
    assert result.exit_code == 0, result.stderr


def preflight_run(workdir: Path, *args: str):
    result = run(workdir, "preflight", *args)
    for stream in (result.stdout, result.stderr):
        assert TOKEN not in stream, "a token was printed"
    return result


@pytest.fixture
def fleet(workdir: Path) -> Path:
    write_inventory(workdir, HEADER + ROWS)
    write_policy(workdir)
    return workdir


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory) -> tuple[Path, bytes, bytes]:
    """A self-signed certificate for 127.0.0.1: (cert file, cert PEM, key PEM)."""
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run([openssl_path(), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", folder / "key.pem", "-out", folder / "cert.pem", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return folder / "cert.pem", (folder / "cert.pem").read_bytes(), (folder / "key.pem").read_bytes()


def lines(output: str, check: str) -> list[str]:
    """The lines of a check (``endpoint``, ``TLS`` or ``token``): one, or one per signal."""
    return [text for text in output.splitlines() if text.split()[1:2] == [check]]


def line(output: str, check: str) -> str:
    """The line of a check when both signals got the same answer (so it names both)."""
    [found] = lines(output, check)
    assert found.endswith("  [metrics, logs]"), found
    return found


# --- the three answers ----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_accepted_token_passes(protocol, fleet):
    with make_receiver(protocol, require_token=TOKEN) as rx:
        compile_for(fleet, rx.endpoint, protocol)
        result = preflight_run(fleet)

    assert result.exit_code == 0, result.output
    assert line(result.stdout, "endpoint").startswith("  ok    endpoint  reachable")
    assert "not used: plain http to a loopback host" in line(result.stdout, "TLS")
    assert line(result.stdout, "token").startswith("  ok    token     accepted")
    assert "2 devices: LNX-1, WSL-1" in result.stdout
    # The documented fingerprint (preflight page): scrypt N=2**15, r=8, p=1, fixed salt; never a plain sha256.
    shown = hashlib.scrypt(f"Bearer {TOKEN}".encode(), salt=b"mdmgen shown value fingerprint v1", n=2**15, r=8, p=1,
                           maxmem=64 << 20, dklen=32).hex()[:8]
    assert f"Authorization=fp:{shown}" in result.stdout
    assert hashlib.sha256(f"Bearer {TOKEN}".encode()).hexdigest()[:8] not in result.stdout
    # One EMPTY export per signal, with the token as the client sends it.
    assert sorted(e.signal for e in rx.exports) == ["logs", "metrics"]
    for export in rx.exports:
        assert export.accepted and export.resource == {} and export.metrics == [] and export.events == []
        assert export.headers["authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_rejected_token_fails_and_says_so(protocol, fleet):
    with make_receiver(protocol, reject_token=TOKEN) as rx:
        compile_for(fleet, rx.endpoint, protocol)
        result = preflight_run(fleet)

    assert result.exit_code == 7, result.output
    assert line(result.stdout, "endpoint").startswith("  ok    endpoint  reachable")
    expected = "gRPC UNAUTHENTICATED" if protocol == "grpc" else "HTTP 401"
    assert line(result.stdout, "token").startswith(f"  FAIL  token     REJECTED by the collector ({expected}")
    assert "FAILED for 1 of 1 collector setting(s) (2 device(s)): token rejected." in result.stdout


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_closed_port_is_unreachable_not_a_rejected_token(protocol, fleet, closed_port):
    port = closed_port
    compile_for(fleet, f"http://127.0.0.1:{port}", protocol)
    result = preflight_run(fleet, "--device", "lnx-1")

    assert result.exit_code == 7, result.output
    assert line(result.stdout, "endpoint").startswith(f"  FAIL  endpoint  UNREACHABLE: 127.0.0.1:{port}: "
                                                      "connection refused")
    assert line(result.stdout, "token").startswith("  --    token     not checked: endpoint unreachable")
    assert "rejected" not in result.output.lower()
    assert "device LNX-1" in result.stdout


@pytest.mark.parametrize("protocol", ["http/json", "http/protobuf"])
def test_wrong_path_is_a_wrong_endpoint(protocol, fleet):
    with make_receiver(protocol, reject_token=TOKEN) as rx:
        compile_for(fleet, rx.endpoint + "/not-otlp", protocol)
        result = preflight_run(fleet)

    assert result.exit_code == 7
    assert lines(result.stdout, "endpoint") == [
        f"  FAIL  endpoint  WRONG ENDPOINT: HTTP 404 Not Found for POST /not-otlp/v1/{signal} "
        f"(no OTLP receiver on this path)  [{signal}]" for signal in ("metrics", "logs")]
    assert line(result.stdout, "token").startswith("  --    token     not checked: wrong endpoint")
    assert "rejected" not in result.output.lower()


@pytest.mark.parametrize(("protocol", "server"), [("grpc", "http/json"), ("http/json", "grpc")])
def test_port_of_another_protocol_is_no_otlp_answer(protocol, server, fleet):
    with make_receiver(server, reject_token=TOKEN) as rx:
        compile_for(fleet, rx.endpoint, protocol)
        result = preflight_run(fleet, "--timeout", "2")

    assert result.exit_code == 7, result.output
    assert "  FAIL  endpoint  NO OTLP ANSWER" in result.stdout
    assert "rejected" not in result.output.lower()


# --- TLS ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_untrusted_certificate_is_a_tls_failure(protocol, fleet, self_signed):
    _cert_file, cert, key = self_signed
    with make_receiver(protocol, reject_token=TOKEN, tls=(cert, key)) as rx:
        compile_for(fleet, rx.endpoint, protocol)
        result = preflight_run(fleet)

    assert result.exit_code == 7, result.output
    assert line(result.stdout, "endpoint").startswith("  ok    endpoint  reachable")
    assert line(result.stdout, "TLS").startswith(
        "  FAIL  TLS       FAILED: the certificate of 127.0.0.1 is not trusted: self-signed certificate")
    assert line(result.stdout, "token").startswith("  --    token     not checked: TLS failed")
    assert rx.exports == [], "nothing may be sent over an untrusted connection"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_trusted_private_ca_passes_over_tls(protocol, fleet, self_signed, monkeypatch):
    cert_file, cert, key = self_signed
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # trust it, as a private CA in the system store
    with make_receiver(protocol, require_token=TOKEN, tls=(cert, key)) as rx:
        compile_for(fleet, rx.endpoint, protocol)
        result = preflight_run(fleet)

    assert result.exit_code == 0, result.output
    assert line(result.stdout, "TLS").startswith("  ok    TLS       TLSv1.")
    assert "certificate trusted for 127.0.0.1, valid until" in result.stdout
    assert line(result.stdout, "token").startswith("  ok    token     accepted")
    assert {e.headers["authorization"] for e in rx.exports} == {f"Bearer {TOKEN}"}


@pytest.mark.parametrize("protocol", ["http/json", "http/protobuf"])
def test_proxy_variables_do_not_reroute_the_check(protocol, fleet, self_signed, monkeypatch, closed_port):
    """The probe connects directly, so the export does too: a proxy in the environment (here one
    that is not even there) neither carries the credentials nor changes the diagnosis."""
    cert_file, cert, key = self_signed
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{closed_port}")
    with make_receiver(protocol, require_token=TOKEN, tls=(cert, key)) as rx:
        compile_for(fleet, rx.endpoint, protocol)
        result = preflight_run(fleet)

    assert result.exit_code == 0, result.output
    assert line(result.stdout, "token").startswith("  ok    token     accepted")
    assert sorted(e.signal for e in rx.exports) == ["logs", "metrics"]


# --- headers as the real client sends them, per-signal settings, fleets ------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_header_values_are_sent_like_the_real_client(protocol, workdir):
    """Shared reference section 11: grpc percent-decodes header values, HTTP sends them as written,
    so a percent-encoded space only works on grpc. Preflight must tell IT the same."""
    write_inventory(workdir, HEADER + ROWS)
    write_policy(workdir, headers='Authorization=Bearer%20{{ secret("PF_TOKEN") }}')
    with make_receiver(protocol, require_token=TOKEN) as rx:
        compile_for(fleet_dir := workdir, rx.endpoint, protocol)
        result = preflight_run(fleet_dir)

    sent = {e.headers["authorization"] for e in rx.exports}
    if protocol == "grpc":
        assert (result.exit_code, sent) == (0, {f"Bearer {TOKEN}"})
    else:
        assert (result.exit_code, sent) == (7, {f"Bearer%20{TOKEN}"})
        assert "REJECTED by the collector (HTTP 401" in result.stdout


def test_per_signal_endpoint_is_used_as_is_and_reported_per_signal(workdir):
    write_inventory(workdir, HEADER + ROWS)
    with make_receiver("http/json", require_token=TOKEN) as metrics, \
            make_receiver("http/json", reject_token=TOKEN) as logs:
        write_policy(workdir, env={"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "{{ logs_url }}"},
                     variables={"logs_url": f"{logs.endpoint}/v1/logs"})
        compile_for(workdir, metrics.endpoint, "http/json")
        result = preflight_run(workdir)

    assert [e.signal for e in metrics.exports] == ["metrics"]
    assert [e.signal for e in logs.exports] == ["logs"]
    assert result.exit_code == 7
    assert "  ok    token     accepted (HTTP 200 OK)  [metrics]" in result.stdout
    assert "  FAIL  token     REJECTED by the collector (HTTP 401 Unauthorized)  [logs]" in result.stdout


def test_fleet_checks_each_distinct_setting_once(workdir):
    write_inventory(workdir, HEADER + ROWS + "LNX-2,linux,carl@example.com,Sales\n")
    with make_receiver("grpc", require_token=TOKEN) as good, make_receiver("grpc", reject_token=TOKEN) as bad:
        write_policy(workdir, variables={"sales_endpoint": bad.endpoint},
                     teams={"Sales": {"settings": {"env": {"OTEL_EXPORTER_OTLP_ENDPOINT": "{{ sales_endpoint }}"}}}})
        compile_for(workdir, good.endpoint, "grpc")
        result = preflight_run(workdir)

    assert result.exit_code == 7
    assert len(good.exports) == 2 and len(bad.exports) == 2  # once per signal, not once per device
    assert "Preflight of 2 collector setting(s) used by 3 device(s)" in result.stdout
    assert f"[1/2] grpc {good.endpoint} | headers Authorization=fp:" in result.stdout
    assert "| 2 devices: LNX-1, WSL-1" in result.stdout
    assert f"[2/2] grpc {bad.endpoint} | headers Authorization=fp:" in result.stdout
    assert "| device LNX-2" in result.stdout
    assert "FAILED for 1 of 2 collector setting(s) (1 device(s)): token rejected." in result.stdout


def _hung(_signum, _frame):
    raise AssertionError("preflight did not give up on a silent endpoint")


@pytest.mark.parametrize("protocol", ["http/json", "grpc"])
def test_timeouts_are_bounded(protocol, fleet):
    with socket.socket() as silent:  # accepts connections (kernel backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        compile_for(fleet, f"http://127.0.0.1:{silent.getsockname()[1]}", protocol)
        # A hang guard, not a timing assertion: without the timeout this would wait forever.
        signal.signal(signal.SIGALRM, _hung)
        signal.alarm(120)
        try:
            result = preflight_run(fleet, "--timeout", "0.5")
        finally:
            signal.alarm(0)

    assert result.exit_code == 7
    endpoint = lines(result.stdout, "endpoint")  # http names the path, so one line per signal
    assert len(endpoint) == (1 if protocol == "grpc" else 2)
    assert all("FAIL  endpoint  NO OTLP ANSWER" in text and "no answer within 0.5s" in text for text in endpoint)
    assert "rejected" not in result.output.lower()


# --- input problems: exit 1, nothing sent ----------------------------------------------------------


def test_missing_output_folder_is_an_input_problem(fleet):
    result = preflight_run(fleet, "--out", "nowhere")
    assert result.exit_code == 1
    assert "nowhere: no such folder; run 'mdmgen compile' first" in result.stderr


def test_unknown_serial_is_an_input_problem(fleet):
    compile_for(fleet, "http://127.0.0.1:9", "grpc")
    result = preflight_run(fleet, "--device", "NOPE-1")
    assert result.exit_code == 1
    assert "no compiled device 'NOPE-1'" in result.stderr
    assert result.stdout == ""


def hand_edited(folder: Path, **changes) -> Path:
    """An output folder with one hand-written device (compile would have refused these)."""
    env = {"CLAUDE_CODE_ENABLE_TELEMETRY": "1", "OTEL_METRICS_EXPORTER": "otlp",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_EXPORTER_OTLP_ENDPOINT": "https://127.0.0.1:4318",
           "OTEL_EXPORTER_OTLP_HEADERS": f"Authorization=Bearer {TOKEN}", **changes}
    device = folder / "output" / "devices" / "HAND-1"
    device.mkdir(parents=True)
    data = json.dumps({"env": {k: v for k, v in env.items() if v is not None}}).encode()
    (device / "managed-settings.json").write_bytes(data)
    # ... and its manifest, written by hand too: preflight reads only folders that match theirs.
    entry = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest = {"generator": "mdmgen", "version": "0", "devices": {
        "HAND-1": {"platform": "linux", "team": "t", "files": {"managed-settings.json": entry}}}}
    (folder / "output" / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_credentials_are_never_sent_over_plain_http_to_a_remote_host(tmp_path):
    hand_edited(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT="http://collector.invalid:4318")
    result = preflight_run(tmp_path)
    assert result.exit_code == 1
    assert "refusing to send credentials over plain http to collector.invalid; use https" in result.stderr


@pytest.mark.parametrize(("endpoint", "message"), [
    ("https://127.0.0.1:port", "metrics: the endpoint is not an http:// or https:// URL with a host and port"),
    (4318, "metrics: the endpoint is not an http:// or https:// URL with a host and port"),
    (None, "metrics: no OTEL_EXPORTER_OTLP_ENDPOINT"),
])
def test_unusable_settings_are_input_problems(endpoint, message, tmp_path):
    hand_edited(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
    result = preflight_run(tmp_path)
    assert result.exit_code == 1
    assert f"error: {Path('output/devices/HAND-1/managed-settings.json')}: {message}" in result.stderr
    assert result.stdout == ""


def test_targets_follow_the_otel_endpoint_rules():
    env = {"CLAUDE_CODE_ENABLE_TELEMETRY": "1", "OTEL_METRICS_EXPORTER": "otlp", "OTEL_LOGS_EXPORTER": "otlp,console",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel.example.com/otlp/",
           "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "https://logs.example.com/ingest",
           "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "http/json",
           "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer a,X-Org=acme",
           "OTEL_EXPORTER_OTLP_LOGS_HEADERS": "authorization=Bearer b"}
    metrics, logs = otlp.targets_for(env)
    assert (metrics.protocol, metrics.url) == ("http/protobuf", "https://otel.example.com/otlp/v1/metrics")
    assert (logs.protocol, logs.url) == ("http/json", "https://logs.example.com/ingest")  # as-is
    assert metrics.headers == (("Authorization", "Bearer a"), ("X-Org", "acme"))
    assert logs.headers == (("authorization", "Bearer b"), ("X-Org", "acme"))  # per-signal wins
    grpc_env = {**env, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_LOGS_EXPORTER": "none"}
    [grpc_metrics] = otlp.targets_for(grpc_env)
    assert grpc_metrics.url == "https://otel.example.com/otlp/"  # grpc: no /v1/<signal> path
    assert otlp.targets_for({**env, "CLAUDE_CODE_ENABLE_TELEMETRY": "0"}) == ()


def test_a_header_http_cannot_carry_is_not_sent_and_not_printed():
    env = {"CLAUDE_CODE_ENABLE_TELEMETRY": "1", "OTEL_METRICS_EXPORTER": "otlp",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_EXPORTER_OTLP_HEADERS": f"X-Team=café {TOKEN}"}
    with make_receiver("http/json") as rx:
        [target] = otlp.targets_for({**env, "OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint})
        result = preflight.check_target(target, timeout=2)

    assert rx.exports == []
    assert (result.endpoint.status, result.endpoint.text) == (
        preflight.FAIL, "NOT SENT: a header name or value is not valid in HTTP")
    assert result.token.text == "not checked: headers could not be sent"
    assert TOKEN not in repr(result)


def test_preflight_knows_every_protocol_the_env_schema_admits():
    """One list of OTLP protocols: a protocol compile accepts must be one preflight can send."""
    assert set(otlp.OTLP_PROTOCOLS) - {"grpc"} == set(preflight.HTTP_BODIES)


def test_preflight_waits_for_no_compile(fleet: Path):
    """Preflight reads the folder under its shared lock: while a compile holds the folder it
    exits 5 and sends nothing, like every command that reads the folder."""
    assert run(fleet, "compile").exit_code == 0
    with open(fleet / ".output.mdmgen-lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run(fleet, "preflight")
    assert result.exit_code == 5
    assert result.stderr.splitlines() == [
        "error: output: another mdmgen run (a publish?) is using this folder; try again when it has finished"]
