"""The token is found in the device files that need it and nowhere else (issue 11, "Tests").

Every command a nightly job runs (compile, validate, diff, publish to moto's S3), at ``-vv`` and
with ``--json``, before and after a rotation, and with an invalid row that forces error output,
runs as a real process. Then every byte it printed, every file under the work folder (output,
kept generation, manifest, the other devices) and every object in the bucket is searched for both
tokens, raw and in every escaping (percent-encoded, JSON, XML)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import HEADER, write_inventory
from .fakes.s3_server import S3Server
from .test_secrets import ROWS, write_policy

OLD = "sk/Leak+Test=9f8e7d6c5b4a"  # test fixtures, never real credentials; '/', '+', '=' get escaped
NEW = "sk/Rot&ated<9a8b7c6d5e4f>"
OPS = {"LNX1", "MAC1"}  # the team whose override embeds the token
BUCKET = "fleet"


def forms(token: str) -> list[bytes]:
    """Every way the token could be written: raw, JSON-escaped, XML-escaped, percent-encoded (as in
    the attribute and header lists), as a form field, and base64 (as in a Basic header)."""
    import base64
    import html
    import json
    from urllib.parse import quote, quote_plus

    found = {token, json.dumps(token)[1:-1], json.dumps(token)[1:-1].replace("/", "\\/"), html.escape(token),
             html.escape(token, quote=False), quote(token, safe=""), quote_plus(token),
             base64.b64encode(token.encode()).decode()}
    return sorted(form.encode("utf-8") for form in found)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                    "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
                    "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials")})
    return environ


def test_the_token_is_only_in_the_device_files_that_need_it(workdir: Path, env: dict[str, str], monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, env[name])  # for the test's own boto3 client
    write_inventory(workdir, HEADER + ROWS)
    write_policy(workdir)
    printed: list[tuple[str, bytes]] = []

    def mdmgen(*args: str, token: str, code: int | tuple[int, ...] = 0) -> None:
        proc = subprocess.run([sys.executable, "-m", "mdmgen", *args], cwd=workdir, capture_output=True,
                              env={**env, "OTEL_TOKEN": token}, timeout=120, check=False)
        printed.append((" ".join(args), proc.stdout + proc.stderr))
        assert proc.returncode in ((code,) if isinstance(code, int) else code), proc.stderr.decode()

    with S3Server() as s3:
        s3.client().create_bucket(Bucket=BUCKET)
        publish = ("publish", f"s3://{BUCKET}/mdm", "--endpoint-url", s3.url, "-vv")
        mdmgen("validate", "-vv", "--json", token=OLD)
        mdmgen("compile", "-vv", "--json", token=OLD)
        mdmgen(*publish, "--json", token=OLD)
        shutil.copytree(workdir / "output", workdir / "old", copy_function=shutil.copy2)
        # The rotation: every command again with the new token.
        mdmgen("compile", "-vv", "--json", token=NEW)
        mdmgen("compile", "-vv", token=NEW)  # a quiet night: nothing to write
        mdmgen("diff", "old", "output", token=NEW, code=1)
        mdmgen("diff", "--json", "old", "output", token=NEW, code=1)
        mdmgen(*publish, "--dry-run", token=NEW)
        mdmgen(*publish, "--json", token=NEW)
        # An invalid row forces error output, with and without --skip-invalid.
        write_inventory(workdir, HEADER + ROWS + "BAD1,beos,eve@example.com,Ops\n")
        mdmgen("validate", "-vv", "--json", token=NEW, code=1)
        mdmgen("compile", "-vv", "--json", "--skip-invalid", token=NEW, code=3)
        mdmgen("compile", "-vv", "--json", token=NEW, code=1)
        objects = {key: s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
                   for key in (o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET)["Contents"])}
        puts = {seen.key: seen.headers for seen in s3.requests("PUT")}

    diff_text = next(out for command, out in printed if command == "diff old output")
    assert b"secret OTEL_TOKEN changed (fingerprint " in diff_text
    for command, output in printed:
        for token in (OLD, NEW):
            for form in forms(token):
                assert form not in output, f"`mdmgen {command}` printed a form of a token: {form!r}"

    # Files: only the Ops devices' files, in a tree compiled with that token, hold it; mode 0600.
    holders: dict[str, set[Path]] = {OLD: set(), NEW: set()}
    for path in workdir.rglob("*"):
        if not path.is_file() or path.is_symlink() or path.parts[len(workdir.parts)] in ("profiles", "inventory"):
            continue
        data = path.read_bytes()
        for token in (OLD, NEW):
            if any(form in data for form in forms(token)):
                holders[token].add(path.relative_to(workdir))
    tree_of = {OLD: {"old"}, NEW: {"output", ".output.mdmgen-prev"}}
    for token, paths in holders.items():
        for rel in paths:
            assert rel.parts[0] in tree_of[token] and rel.parts[1] == "devices" and rel.parts[2] in OPS, rel
            assert stat.S_IMODE(os.stat(workdir / rel).st_mode) == 0o600, rel
    assert {p.parts[2] for p in holders[NEW] if p.parts[0] == "output"} == OPS  # the devices do get it
    assert {p.parts[2] for p in holders[NEW] if p.parts[0] == ".output.mdmgen-prev"} == OPS

    # The bucket: the token only in the Ops device objects, which went up encrypted.
    for key, data in objects.items():
        assert not any(form in data for form in forms(OLD)), key
        if any(form in data for form in forms(NEW)):
            assert key.split("/")[1:3] == ["devices", key.split("/")[2]] and key.split("/")[2] in OPS, key
            assert puts[key].get("x-amz-server-side-encryption") == "AES256", key
    assert b"env:OTEL_TOKEN" in objects["mdm/manifest.json"]  # named and fingerprinted, never the value
