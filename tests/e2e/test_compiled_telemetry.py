"""Proof with the real client: the file `mdmgen compile` writes makes Claude Code export
telemetry that carries that device's own user and team, on every protocol the policy can choose.

For each protocol, the test compiles an inventory of awkward HR values with the real command
line (as IT runs it), then runs the pinned client on each compiled Linux/WSL device's folder
(bind-mounted at /etc/claude-code in a private mount namespace), against the Messages API stub,
and reads what arrives at a local OTLP receiver. The expected values are this file's own
literals, the ones written into the CSV, never values read back from mdmgen.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from .harness import run_claude
from .receivers import PROTOCOLS, Receiver, make_receiver

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_POLICY = ROOT / "profiles" / "policy.yaml"
# A test fixture, shaped like a real base64 token ('/', '+' and a trailing '=='), so a header
# parser that splits on every '=' or decodes '+' would be caught.
TOKEN = "e2e/Tok3n+fixture=="
PROMPT = "say hello, canary 5f3a9"  # must never reach the collector (content logging is off)
WAIT = 20  # seconds to wait for the exports once the client exited (it flushes on exit)

# (serial, platform, user_email, team) exactly as written into the CSV.
ROWS = [
    # The nastiest row: space, comma, '=', '&', ';', '"', '%', non-ASCII, '+' and "'" in the email.
    ("E2E-LNX-01", "linux", "zoë.o'brien+cc@example.com", 'R&D, Berlin; sales=emea & Zürich "Ops" 100%'),
    ("E2E-WSL-02", "wsl", "ann+cc@example.com", "Zürich Ops"),
    # Compiled too, but Claude Code on Linux cannot read them: not run.
    ("E2E-MAC-03", "macos", "mac+cc@example.com", "R&D, Berlin"),
    ("E2E-WIN-04", "windows", "win@example.com", "sales=emea"),
]
RUN_ON_LINUX = [serial for serial, platform, _, _ in ROWS if platform in ("linux", "wsl")]
EXPECTED = {serial: {"user_email": email, "team": team} for serial, _, email, team in ROWS}

# Resource attributes the client sets itself (service.name, os.type, host.arch, ...).
BUILTIN_PREFIXES = ("service.", "os.", "host.", "wsl.", "telemetry.", "process.")


def write_inputs(folder: Path) -> None:
    """The awkward inventory, and the shipped policy plus a bearer token header."""
    (folder / "inventory").mkdir()
    with open(folder / "inventory" / "devices.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["serial_number", "platform", "user_email", "team"])
        writer.writerows(ROWS)
    policy = SHIPPED_POLICY.read_text(encoding="utf-8")
    anchor = '    OTEL_EXPORTER_OTLP_ENDPOINT: "{{ otlp_endpoint }}"\n'
    assert anchor in policy, "the shipped policy changed; update this test's anchor"
    # The token comes only from the environment (OTEL_TOKEN, set by mdmgen_compile), as IT runs it.
    header = '    OTEL_EXPORTER_OTLP_HEADERS: "Authorization=Bearer {{ secret(\'OTEL_TOKEN\') }}"\n'
    policy = policy.replace(anchor, anchor + header)
    (folder / "profiles").mkdir()
    (folder / "profiles" / "policy.yaml").write_text(policy, encoding="utf-8")


def mdmgen_compile(folder: Path, endpoint: str, protocol: str, env: dict[str, str | None] | None = None) -> Path:
    """Run `mdmgen compile` as a separate process, the way IT runs it; return the output folder.

    ``env`` sets (or, with None, removes) environment variables for that process."""
    environ = {**os.environ, "OTEL_TOKEN": TOKEN}
    for name, value in (env or {}).items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    console_script = shutil.which("mdmgen", path=str(Path(sys.executable).parent))
    command = [console_script] if console_script else [sys.executable, "-m", "mdmgen"]
    proc = subprocess.run(
        [*command, "compile", "--var", f"otlp_endpoint={endpoint}", "--var", f"otlp_protocol={protocol}"],
        cwd=folder, capture_output=True, text=True, timeout=120, env=environ,
    )
    assert proc.returncode == 0, proc.stderr
    return folder / "output"


def got_everything(rx: Receiver) -> bool:
    return (
        "claude_code.session.count" in rx.metric_names()
        and bool(rx.events("claude_code.managed_settings_resolved"))
        and bool(rx.events("claude_code.user_prompt"))
    )


@pytest.mark.parametrize("serial", RUN_ON_LINUX)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_compiled_device_exports_its_own_identity(protocol, serial, claude_bin, messages_stub, tmp_path):
    write_inputs(tmp_path)
    with make_receiver(protocol, require_token=TOKEN) as rx:
        out = mdmgen_compile(tmp_path, rx.endpoint, protocol)

        proc = run_claude(out / "devices" / serial, messages_stub.base_url, claude=claude_bin, prompt=PROMPT)

        assert proc.returncode == 0, proc.stderr
        assert rx.wait_for(got_everything, timeout=WAIT), (rx.exports, rx.errors, proc.stderr)

    assert rx.errors == []
    assert messages_stub.proxy_attempts == [], "the client tried to reach a non-loopback host"
    assert {e.signal for e in rx.exports} == {"metrics", "logs"}
    for export in rx.exports:
        # 2. the bearer token from OTEL_EXPORTER_OTLP_HEADERS arrived as the Authorization header
        assert export.headers["authorization"] == f"Bearer {TOKEN}"
        assert export.accepted
        # 1. the resource attributes decode to exactly this device's row, on every export
        custom = {k: v for k, v in export.resource.items() if not k.startswith(BUILTIN_PREFIXES)}
        assert custom == EXPECTED[serial]
        assert export.resource["service.name"] == "claude-code"
    for event in rx.events():  # the custom attributes ride on every event too
        assert {k: event.attributes.get(k) for k in EXPECTED[serial]} == EXPECTED[serial], event.name

    # 3. the session metric and the managed-settings event, read from the bind-mounted file
    assert "claude_code.session.count" in rx.metric_names()
    [resolved] = rx.events("claude_code.managed_settings_resolved")
    assert resolved.attributes["managed_settings.sources"] == ["file"]

    # 4. the prompt arrived redacted, and its text appears nowhere in the export
    [prompt] = rx.events("claude_code.user_prompt")
    assert prompt.attributes["prompt"] == "<REDACTED>"
    exported = json.dumps([(e.resource, [(ev.name, ev.attributes, ev.body) for ev in e.events])
                           for e in rx.exports], ensure_ascii=False, default=str)
    assert "canary 5f3a9" not in exported


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_rejected_token_is_invisible_to_the_client(protocol, claude_bin, messages_stub, tmp_path):
    """Why `mdmgen preflight` exists: the collector refuses the token (401 / UNAUTHENTICATED),
    yet the client still answers and exits 0, so a wrong token only shows as missing data."""
    write_inputs(tmp_path)
    with make_receiver(protocol, reject_token=TOKEN) as rx:
        out = mdmgen_compile(tmp_path, rx.endpoint, protocol)

        proc = run_claude(out / "devices" / RUN_ON_LINUX[0], messages_stub.base_url, claude=claude_bin)

        assert proc.returncode == 0, proc.stderr
        assert "Hello!" in proc.stdout
        assert rx.wait_for(lambda r: {e.signal for e in r.exports} == {"metrics", "logs"}, timeout=WAIT)

    assert rx.exports and not any(e.accepted for e in rx.exports)
    assert rx.metric_names() == set()


PSEUDONYM_KEY = "e2e-pseudonym-key-fixture-0123456789"


@pytest.mark.parametrize("protocol", ["http/protobuf"])
def test_pseudonymised_device_exports_the_pseudonym_and_the_team_never_the_email(
        protocol, claude_bin, messages_stub, tmp_path):
    """pseudonymise_email: true, compiled and run like the case above: the collector receives the
    keyed pseudonym (computed here from the documented definition) and the readable team, and
    the email appears nowhere in the output tree nor in anything exported."""
    write_inputs(tmp_path)
    policy = tmp_path / "profiles" / "policy.yaml"
    policy.write_text(policy.read_text(encoding="utf-8") + "pseudonymise_email: true\n", encoding="utf-8")
    serial, _, email, team = ROWS[0]
    local, _, domain = email.partition("@")
    normalised = f"{local}@{domain.lower()}".casefold()
    pseudonym = "u-" + hmac.new(PSEUDONYM_KEY.encode(), normalised.encode(), hashlib.sha256).hexdigest()[:32]
    with make_receiver(protocol, require_token=TOKEN) as rx:
        out = mdmgen_compile(tmp_path, rx.endpoint, protocol,
                             env={"MDMGEN_PSEUDONYM_KEY": PSEUDONYM_KEY, "MDMGEN_PSEUDONYM_KEY_FILE": None})
        tree = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file()).decode("utf-8").casefold()
        for _, _, row_email, _ in ROWS:
            for form in (row_email, quote(row_email, safe="")):  # as written and percent-encoded
                assert form.casefold() not in tree, form

        proc = run_claude(out / "devices" / serial, messages_stub.base_url, claude=claude_bin, prompt=PROMPT)

        assert proc.returncode == 0, proc.stderr
        assert rx.wait_for(got_everything, timeout=WAIT), (rx.exports, rx.errors, proc.stderr)

    assert rx.errors == []
    for export in rx.exports:
        custom = {k: v for k, v in export.resource.items() if not k.startswith(BUILTIN_PREFIXES)}
        assert custom == {"user_email": pseudonym, "team": team}
    for event in rx.events():
        assert (event.attributes.get("user_email"), event.attributes.get("team")) == (pseudonym, team), event.name
    exported = json.dumps([(e.resource, [(ev.name, ev.attributes, ev.body) for ev in e.events])
                           for e in rx.exports], ensure_ascii=False, default=str).casefold()
    assert local.casefold() not in exported and email.casefold() not in exported
    assert pseudonym in exported
