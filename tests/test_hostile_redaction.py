"""Issue 11, redaction: a Jamf error page that echoes the client secret in any form, or cuts it
in two, never prints any part of it (the real client against the fake Jamf over HTTPS)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from .fakes.jamf_server import DEFAULT_CLIENT_ID
from .test_publish_jamf import compile_fleet, jamf, jamf_env, publish  # noqa: F401 (fixtures)

SECRET = "Sx/9+q&r=t%u é\"v<w>kkkkkkkkkkkk"


def echoes(secret: str) -> dict[str, str]:
    return {
        "raw": secret,
        "quote": quote(secret, safe=""),
        "quote_plus": quote_plus(secret),
        "lower hex": quote_plus(secret).lower(),
        "json": json.dumps(secret)[1:-1],
        "basic": base64.b64encode(f"{DEFAULT_CLIENT_ID}:{secret}".encode()).decode(),
    }


@pytest.mark.parametrize("form", list(echoes(SECRET)))
@pytest.mark.parametrize("offset", [0, 165])  # 165: the secret straddles the 200-character cut
def test_a_token_error_echoing_the_secret_prints_no_part_of_it(workdir: Path, jamf, monkeypatch, form, offset):  # noqa: F811
    compile_fleet(workdir, range(1))
    monkeypatch.setenv("JAMF_CLIENT_SECRET", SECRET)
    echoed = echoes(SECRET)[form]
    body = json.dumps({"error": "server_error", "error_description": "x" * offset + f"client_secret={echoed} end"})
    jamf.fail_next(5, 400, method="POST", path="/api/oauth/token", body=body.encode(),
                   content_type="application/json")
    result = publish(workdir, jamf, "-vv", "--json")
    assert result.exit_code == 7, result.output
    assert "[redact" in result.output
    for piece in (echoed[i:i + 6] for i in range(0, len(echoed) - 6, 3)):
        assert piece not in result.output, (form, piece)
    assert "kkkkkk" not in result.output


def test_an_unexpected_error_holding_a_credential_from_the_environment_prints_none_of_it(workdir: Path, monkeypatch):
    from mdmgen import pipeline

    from .conftest import run, write_inventory

    credential = "AKIA/secret+value\x1b[2J" + "z" * 30
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", credential)
    write_inventory(workdir, "serial_number,platform,user_email,team\nS1,linux,a@example.com,Ops\n")

    def broken(*_args, **_kwargs):
        raise RuntimeError("x" * 190 + f" key={quote_plus(credential)} and\nmore")

    monkeypatch.setattr(pipeline, "compile_fleet", broken)
    result = run(workdir, "compile")
    assert result.exit_code == 70
    assert len(result.stderr.splitlines()) == 1
    assert "AKIA" not in result.stderr and "zzzzzz" not in result.stderr and "\x1b" not in result.stderr
