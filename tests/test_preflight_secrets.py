"""A secret embedded in an endpoint (its path, its query) or in a header reaches no output.

The policy puts one secret in the base endpoint's path, one in the metrics endpoint's query and
one in the ``Authorization`` header. The compile, ``diff`` and ``preflight`` (text, ``-q``, ``-v``,
``-vv``, ``--json``) run through the real CLI against a real OTLP receiver on 127.0.0.1
(tests/e2e/receivers.py), so preflight's own network code, its logs and the HTTP layer's logs
all run; none of their output may hold any of the three values in any common form.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import yaml

from mdmgen import otlp, preflight
from mdmgen.messages import REDACTED

from .conftest import HEADER, run, write_inventory
from .e2e.receivers import make_receiver

# Test fixtures, never real credentials. The query one holds characters a URL encodes.
PATH_SECRET = "ingest-k3y-5f0a9c71"
QUERY_SECRET = "q-s3cret/+9b7d"
TOKEN = "hdr-t0ken-8c1e5a0b9d"
ROTATED = {"PF_PATH": "ingest-k3y-rotated-2", "PF_QUERY": "q-rotated/+77"}
ROWS = "LNX-1,linux,ann@example.com,Ops\nMAC-1,macos,bob@example.com,Ops\n"


def forms(secret: str) -> set[str]:
    return {secret, quote(secret, safe=""), quote_plus(secret), quote(secret, safe="").lower()}


def assert_hidden(result, *secrets: str) -> None:
    for stream in (result.stdout, result.stderr):
        for secret in secrets or (PATH_SECRET, QUERY_SECRET, TOKEN, *ROTATED.values()):
            for form in forms(secret):
                assert form not in stream, f"{form!r} was printed"


@pytest.fixture
def fleet(workdir: Path, monkeypatch) -> Path:
    monkeypatch.setenv("PF_PATH", PATH_SECRET)
    monkeypatch.setenv("PF_QUERY", QUERY_SECRET)
    monkeypatch.setenv("PF_TOKEN", TOKEN)
    write_inventory(workdir, HEADER + ROWS)
    path = workdir / "profiles" / "policy.yaml"
    policy = yaml.safe_load(path.read_text(encoding="utf-8"))
    policy["settings"]["env"].update({
        "OTEL_EXPORTER_OTLP_ENDPOINT": '{{ otlp_endpoint }}/ingest/{{ secret("PF_PATH") }}',
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": '{{ otlp_endpoint }}/v1/metrics?key={{ secret("PF_QUERY") }}',
        "OTEL_EXPORTER_OTLP_HEADERS": 'Authorization=Bearer {{ secret("PF_TOKEN") }}',
    })
    path.write_text(yaml.safe_dump(policy, sort_keys=False), encoding="utf-8")
    return workdir


def compile_to(fleet: Path, endpoint: str, out: str = "output"):
    result = run(fleet, "compile", "--json", "-vv", "--out", out, "--var", f"otlp_endpoint={endpoint}",
                 "--var", "otlp_protocol=http/json")
    assert result.exit_code == 0, result.stderr
    assert_hidden(result)
    return result


def test_secrets_in_endpoint_and_header_reach_no_preflight_output(fleet, monkeypatch):
    with make_receiver("http/json", require_token=TOKEN) as rx:
        compile_to(fleet, rx.endpoint)
        # Each command is a run of its own (see runscope): preflight's knows none of the compile's secrets.
        monkeypatch.delenv("PF_PATH")
        monkeypatch.delenv("PF_QUERY")
        monkeypatch.delenv("PF_TOKEN")
        runs = {args: run(fleet, "preflight", *args) for args in [(), ("-q",), ("-v",), ("-vv",), ("--json",)]}
        sent = [(e.signal, e.headers["authorization"]) for e in rx.exports]

    for result in runs.values():
        assert_hidden(result)
        assert result.exit_code == 7, result.output
    # It really sent them: the metrics export (query secret, header) was accepted; the base
    # endpoint's path is no OTLP receiver here, so the logs export got a 404 naming the path.
    assert ("metrics", f"Bearer {TOKEN}") in sent
    text = runs[()].stdout
    shown = f"{rx.endpoint}/{REDACTED}"
    assert f"[1/1] metrics: http/json {shown}; logs: http/json {shown} | headers Authorization=fp:" in text
    assert "  ok    token     accepted (HTTP 200 OK)  [metrics]" in text
    assert f"WRONG ENDPOINT: HTTP 404 Not Found for POST {REDACTED}/v1/logs" in text
    # The HTTP layer's debug log names the request, redacted; -q prints only what failed.
    assert f"preflight: POST {REDACTED}/v1/logs -> 404" in runs[("-vv",)].stderr
    assert "ok" not in runs[("-q",)].stdout.split()
    assert "WRONG ENDPOINT" in runs[("-q",)].stdout
    # --json: the report on stderr, the machine-readable result on stdout.
    data = json.loads(runs[("--json",)].stdout)
    assert "WRONG ENDPOINT" in runs[("--json",)].stderr
    assert (data["exit_code"], data["devices"], data["failed"]) == (7, 2, ["wrong endpoint"])
    [setting] = data["collector_settings"]
    assert setting["serials"] == ["LNX-1", "MAC-1"]
    by_signal = {s["signal"]: s for s in setting["signals"]}
    assert {s["endpoint"] for s in by_signal.values()} == {shown}
    assert by_signal["metrics"]["checks"]["token"]["status"] == "ok"
    assert by_signal["logs"]["checks"]["endpoint"] == {
        "status": "failed", "kind": "wrong endpoint",
        "text": f"WRONG ENDPOINT: HTTP 404 Not Found for POST {REDACTED}/v1/logs (no OTLP receiver on this path)"}


def test_secrets_in_endpoint_reach_no_diff_output(fleet, monkeypatch):
    endpoint = "https://otel.example.com:4318"
    compile_to(fleet, endpoint, "before")
    for name, value in ROTATED.items():
        monkeypatch.setenv(name, value)
    compile_to(fleet, endpoint, "after")

    for args in [("before", "after"), ("--json", "before", "after")]:
        result = run(fleet, "diff", *args)
        assert result.exit_code == 1, result.output
        assert_hidden(result)
    assert "secret PF_PATH changed (fingerprint" in run(fleet, "diff", "before", "after").stdout


def test_a_secret_in_an_endpoints_host_is_refused_without_printing_it(fleet):
    path = fleet / "profiles" / "policy.yaml"
    policy = yaml.safe_load(path.read_text(encoding="utf-8"))
    policy["settings"]["env"]["OTEL_EXPORTER_OTLP_ENDPOINT"] = 'https://{{ secret("PF_PATH") }}.otel.example.com'
    path.write_text(yaml.safe_dump(policy, sort_keys=False), encoding="utf-8")

    result = run(fleet, "compile", "--json", "--var", "otlp_protocol=http/json")

    assert result.exit_code == 1
    assert_hidden(result)
    assert "OTEL_EXPORTER_OTLP_ENDPOINT: a secret in the host name of an endpoint" in result.stderr
    assert not (fleet / "output").exists()


@pytest.mark.parametrize(("endpoint", "shown"), [
    ("https://otel.example.com:4318/ingest/abcdefgh12", f"https://otel.example.com:4318/{REDACTED}"),
    ("https://otel.example.com/v1/metrics?key=abcdefgh12", f"https://otel.example.com/{REDACTED}"),
    ("http://127.0.0.1:4318", "http://127.0.0.1:4318"),
    ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/"),
])
def test_a_secret_bearing_endpoint_is_shown_as_its_origin(endpoint, shown):
    env = {"CLAUDE_CODE_ENABLE_TELEMETRY": "1", "OTEL_METRICS_EXPORTER": "otlp",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
    [target] = otlp.targets_for(env, frozenset({"OTEL_EXPORTER_OTLP_ENDPOINT"}))
    assert target.shown == shown
    assert "abcdefgh12" not in preflight.describe(preflight.Destination((target,), ["S1"]))
    [plain] = otlp.targets_for(env)  # not secret-bearing: shown as written
    assert (plain.shown, plain.hidden) == (endpoint, ())


def test_quiet_preflight_that_passes_prints_nothing(fleet, monkeypatch):
    path = fleet / "profiles" / "policy.yaml"
    policy = yaml.safe_load(path.read_text(encoding="utf-8"))
    env = policy["settings"]["env"]
    env["OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"] = '{{ otlp_endpoint }}/v1/logs?k={{ secret("PF_PATH") }}'
    path.write_text(yaml.safe_dump(policy, sort_keys=False), encoding="utf-8")
    with make_receiver("http/protobuf", require_token=TOKEN) as rx:
        result = run(fleet, "compile", "--var", f"otlp_endpoint={rx.endpoint}", "--var", "otlp_protocol=http/protobuf")
        assert result.exit_code == 0, result.stderr
        quiet = run(fleet, "preflight", "-q")
        as_json = run(fleet, "preflight", "--json", "-q")

    assert (quiet.exit_code, quiet.stdout, quiet.stderr) == (0, "", "")
    data = json.loads(as_json.stdout)
    assert (as_json.exit_code, as_json.stderr, data["exit_code"], data["failed"]) == (0, "", 0, [])
    assert {s["endpoint"] for s in data["collector_settings"][0]["signals"]} == {f"{rx.endpoint}/{REDACTED}"}
    assert {e.signal for e in rx.accepted()} == {"metrics", "logs"}  # sent with the query as written
    assert_hidden(as_json)


def test_a_folder_that_cannot_be_checked_is_one_json_error(tmp_path):
    result = run(tmp_path, "preflight", "--json", "--out", "missing")

    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "exit_code": 1, "error": "nothing was sent",
        "problems": ["error: missing: no such folder; run 'mdmgen compile' first, or pass --out"]}
    assert result.stderr == "error: missing: no such folder; run 'mdmgen compile' first, or pass --out\n"
