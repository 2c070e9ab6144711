"""``mdmgen publish s3://...`` against moto's S3 over real HTTP on loopback.

Requests are counted where the server receives them (tests/fakes/s3_server.py), the output
folders come from the real ``mdmgen compile``, and the kill test kills a real subprocess.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mdmgen.emit import registry
from mdmgen.publish import base, local
from mdmgen.publish import s3 as s3pub

from .conftest import run
from .fakes.s3_server import S3Server

BUCKET = "fleet"
DEST = f"s3://{BUCKET}/prod"
PLATFORMS = ("macos", "linux", "windows", "wsl")
PROFILE = "claude-code.mobileconfig"
SETTINGS = "managed-settings.json"


# --- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture
def aws_env(monkeypatch, tmp_path: Path) -> dict[str, str]:
    """Dummy credentials in the environment, and no other source the chain could find."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_DEFAULT_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def s3(aws_env) -> S3Server:
    with S3Server() as server:
        server.client().create_bucket(Bucket=BUCKET)
        server.reset_counts()
        yield server


def compile_fleet(workdir: Path, devices, *, teams: dict[int, str] | None = None,
                  platforms: dict[int, str] | None = None) -> Path:
    """Write an inventory of the given device numbers and run the real ``mdmgen compile``."""
    teams, platforms = teams or {}, platforms or {}
    lines = ["serial_number,platform,user_email,team"]
    for i in devices:
        platform = platforms.get(i, PLATFORMS[i % 4])
        lines.append(f"SN{i:05d},{platform},user{i}@example.com,{teams.get(i, f'team{i % 3}')}")
    (workdir / "inventory" / "devices.csv").write_text("\n".join(lines) + "\n")
    result = run(workdir, "compile")
    assert result.exit_code == 0, result.output
    return workdir / "output"


def publish(workdir: Path, s3: S3Server, *args: str, dest: str = DEST):
    return run(workdir, "publish", dest, "--endpoint-url", s3.url, *args)


def local_tree(out: Path) -> dict[str, bytes]:
    files = {"manifest.json": (out / "manifest.json").read_bytes()}
    files.update({p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "devices").rglob("*")
                  if p.is_file()})
    return files


def remote_tree(s3: S3Server, prefix: str = "prod/") -> dict[str, bytes]:
    """Every object under the prefix, read with the admin client (its requests are then forgotten)."""
    client = s3.client()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            for o in page.get("Contents", [])]
    tree = {k[len(prefix):]: client.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}
    s3.reset_counts()
    return tree


def put_keys(s3: S3Server) -> list[str]:
    return [seen.key for seen in s3.requests("PUT")]


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


# --- publishing ------------------------------------------------------------------------------


def test_first_publish_mirrors_the_output_folder(workdir: Path, s3: S3Server):
    out = compile_fleet(workdir, range(8))
    result = publish(workdir, s3)
    assert result.exit_code == 0, result.output
    assert "Published s3://fleet/prod/: 11 uploaded (11 new, 0 changed), 0 unchanged, 0 deleted." in result.output
    assert put_keys(s3)[-1] == "prod/manifest.json"  # last, after every device file
    assert len(put_keys(s3)) == 11  # 8 settings files, 2 Mac profiles, the manifest
    assert remote_tree(s3) == local_tree(out)


def test_content_types_and_default_encryption(workdir: Path, s3: S3Server):
    compile_fleet(workdir, range(4))
    assert publish(workdir, s3).exit_code == 0
    client = s3.client()
    heads = {key: client.head_object(Bucket=BUCKET, Key=f"prod/{key}") for key in
             ("manifest.json", f"devices/SN00000/{PROFILE}", f"devices/SN00000/{SETTINGS}")}
    assert heads["manifest.json"]["ContentType"] == "application/json"
    assert heads[f"devices/SN00000/{SETTINGS}"]["ContentType"] == "application/json"
    assert heads[f"devices/SN00000/{PROFILE}"]["ContentType"] == "application/x-apple-aspen-config"
    assert {h["ServerSideEncryption"] for h in heads.values()} == {"AES256"}
    assert {s.headers["x-amz-server-side-encryption"] for s in s3.requests("PUT")} == {"AES256"}


def test_kms_key_is_used_when_given(workdir: Path, s3: S3Server):
    compile_fleet(workdir, range(2))
    key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    assert publish(workdir, s3, "--sse-kms-key-id", key).exit_code == 0
    puts = s3.requests("PUT")
    assert {s.headers["x-amz-server-side-encryption"] for s in puts} == {"aws:kms"}
    assert {s.headers["x-amz-server-side-encryption-aws-kms-key-id"] for s in puts} == {key}
    head = s3.client().head_object(Bucket=BUCKET, Key="prod/manifest.json")
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", key)


def test_every_put_carries_the_sha256_of_the_manifest_seen_server_side(workdir: Path, s3: S3Server):
    out = compile_fleet(workdir, range(6))
    assert publish(workdir, s3).exit_code == 0
    digests = {f.relpath: f.sha256 for f in local.read_output(out).files}
    puts = s3.requests("PUT")
    assert len(puts) == len(digests)
    for seen in puts:
        relpath = seen.key.removeprefix("prod/")
        sent = seen.headers["x-amz-checksum-sha256"]
        assert sent == base64.b64encode(hashlib.sha256(seen.body).digest()).decode()
        assert sent == base64.b64encode(bytes.fromhex(digests[relpath])).decode()


def test_checksum_header_is_base64_of_the_raw_digest():
    empty = hashlib.sha256(b"").hexdigest()
    assert s3pub.checksum_header(empty) == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="


def test_bytes_corrupted_in_transit_are_refused_and_nothing_is_committed(workdir: Path, s3: S3Server):
    compile_fleet(workdir, range(4))
    s3.corrupt_next_puts(1)
    result = publish(workdir, s3, "--jobs", "1")
    assert result.exit_code == 7
    error = one_line_error(result)
    assert "checksum mismatch (BadDigest)" in error and "nothing was committed" in error
    assert "prod/manifest.json" not in put_keys(s3)
    s3.reset_counts()
    assert publish(workdir, s3).exit_code == 0  # a rerun converges
    assert "prod/manifest.json" in put_keys(s3)


# --- incremental -----------------------------------------------------------------------------


def test_republish_without_change_makes_no_put(workdir: Path, s3: S3Server):
    compile_fleet(workdir, range(12))
    assert publish(workdir, s3).exit_code == 0
    s3.reset_counts()
    result = publish(workdir, s3)
    assert result.exit_code == 0
    assert "0 uploaded (0 new, 0 changed), 16 unchanged, 0 deleted" in result.output
    assert s3.requests("PUT") == [] and s3.requests("DELETE") == []
    fleet_folders = {kind.name.split("/")[0] for kind in registry.fleet_kinds()}  # intune/: one listing each
    assert (len(s3.gets()), len(s3.lists())) == (1, 1 + len(fleet_folders))  # the manifest, one page of devices/


def test_one_changed_device_puts_exactly_its_files_and_the_manifest(workdir: Path, s3: S3Server):
    compile_fleet(workdir, range(12))
    assert publish(workdir, s3).exit_code == 0
    out = compile_fleet(workdir, range(12), teams={4: "moved"})  # SN00004 is a Mac: two files
    s3.reset_counts()
    result = publish(workdir, s3)
    assert result.exit_code == 0
    assert put_keys(s3)[-1] == "prod/manifest.json"
    assert sorted(put_keys(s3)) == ["prod/devices/SN00004/claude-code.mobileconfig",
                                    "prod/devices/SN00004/managed-settings.json", "prod/manifest.json"]
    assert "3 uploaded (0 new, 3 changed), 13 unchanged" in result.output  # the manifest counts too
    assert remote_tree(s3) == local_tree(out)


def test_a_hand_deleted_object_is_recreated(workdir: Path, s3: S3Server):
    out = compile_fleet(workdir, range(6))
    assert publish(workdir, s3).exit_code == 0
    s3.client().delete_object(Bucket=BUCKET, Key=f"prod/devices/SN00001/{SETTINGS}")
    s3.reset_counts()
    assert publish(workdir, s3).exit_code == 0
    assert sorted(put_keys(s3)) == [f"prod/devices/SN00001/{SETTINGS}", "prod/manifest.json"]
    assert remote_tree(s3) == local_tree(out)


def test_a_hand_edited_object_is_replaced_because_it_is_newer_than_the_manifest(workdir: Path, s3: S3Server):
    out = compile_fleet(workdir, range(6))
    assert publish(workdir, s3).exit_code == 0
    s3.client().put_object(Bucket=BUCKET, Key=f"prod/devices/SN00002/{SETTINGS}", Body=b'{"hand": "edit"}\n')
    s3.reset_counts()
    assert publish(workdir, s3).exit_code == 0
    assert sorted(put_keys(s3)) == [f"prod/devices/SN00002/{SETTINGS}", "prod/manifest.json"]
    assert remote_tree(s3) == local_tree(out)


def test_verify_catches_an_edit_that_the_published_manifest_vouches_for(workdir: Path, s3: S3Server):
    out = compile_fleet(workdir, range(6))
    assert publish(workdir, s3).exit_code == 0
    client = s3.client()
    edited = f"prod/devices/SN00003/{SETTINGS}"
    original = client.get_object(Bucket=BUCKET, Key=edited)["Body"].read()
    client.put_object(Bucket=BUCKET, Key=edited, Body=original.replace(b"1", b"2"))  # same size
    time.sleep(1.1)  # then the manifest is put back by hand, so it is newer than the edit
    client.put_object(Bucket=BUCKET, Key="prod/manifest.json", Body=(out / "manifest.json").read_bytes())
    s3.reset_counts()
    assert publish(workdir, s3).exit_code == 0
    assert put_keys(s3) == []  # the manifest vouches for the edited object: only --verify can tell
    s3.reset_counts()
    result = publish(workdir, s3, "--verify")
    assert result.exit_code == 0, result.output
    assert sorted(put_keys(s3)) == [edited, "prod/manifest.json"]
    assert len(s3.gets()) == 1 + len(local_tree(out)) - 1  # the manifest, then every device object
    assert remote_tree(s3) == local_tree(out)


def test_an_interrupted_publish_then_a_revert_is_repaired(workdir: Path, s3: S3Server):
    """Objects written after the manifest are not trusted, even if the manifest's digest matches."""
    original = compile_fleet(workdir, range(6))
    assert publish(workdir, s3).exit_code == 0
    before = local_tree(original)
    compile_fleet(workdir, range(6), teams={1: "moved"})
    s3.fail("PUT", r"manifest\.json$", status=403, code="AccessDenied")
    failed = publish(workdir, s3)
    assert failed.exit_code == 7
    assert "nothing was committed" in one_line_error(failed)
    s3.clear_faults()
    reverted = compile_fleet(workdir, range(6))
    assert local_tree(reverted) == before
    s3.reset_counts()
    assert publish(workdir, s3).exit_code == 0
    assert f"prod/devices/SN00001/{SETTINGS}" in put_keys(s3)
    assert remote_tree(s3) == before


def test_a_publish_killed_midway_converges_when_rerun(workdir: Path, s3: S3Server, aws_env):
    out = compile_fleet(workdir, range(40))
    total = len(local_tree(out))
    s3.slow_puts(0.2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mdmgen", "publish", DEST, "--out", str(out), "--endpoint-url", s3.url,
         "--jobs", "2"],
        env={**os.environ, **aws_env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(s3.requests("PUT")) < 6 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    s3.clear_faults()
    half = remote_tree(s3)
    assert "manifest.json" not in half  # never committed
    assert 0 < len(half) < total
    result = publish(workdir, s3)
    assert result.exit_code == 0, result.output
    assert remote_tree(s3) == local_tree(out)
    assert publish(workdir, s3).exit_code == 0
    assert put_keys(s3) == []


def test_the_manifest_is_written_a_second_after_the_last_object(workdir: Path, s3: S3Server):
    out = compile_fleet(workdir, range(2))
    sleeps: list[float] = []
    publisher = s3pub.S3Publisher(s3pub.make_client(endpoint_url=s3.url), s3pub.parse_destination(DEST),
                                  sleep=sleeps.append)
    plan = publisher.plan(local.read_output(out), prune=False)
    base.apply(plan, write=publisher.write, delete=publisher.delete)
    assert len(sleeps) == 1 and 0.5 < sleeps[0] <= 1.0


def test_a_manifest_changed_by_someone_else_during_the_publish_is_not_overwritten(workdir: Path, s3: S3Server):
    out = compile_fleet(workdir, range(4))
    for attempt in (1, 2):  # first with no published manifest (If-None-Match), then with one (If-Match)
        publisher = s3pub.S3Publisher(s3pub.make_client(endpoint_url=s3.url), s3pub.parse_destination(DEST),
                                      commit_gap=0)
        plan = publisher.plan(local.read_output(out), prune=False)
        assert plan.of(base.Action.CREATE, base.Action.UPDATE)
        theirs = json.dumps({"someone": "else", "attempt": attempt}).encode()
        s3.client().put_object(Bucket=BUCKET, Key="prod/manifest.json", Body=theirs)
        with pytest.raises(base.RemoteError, match=r"manifest\.json changed while this publish ran"):
            base.apply(plan, write=publisher.write, delete=publisher.delete)
        assert s3.client().get_object(Bucket=BUCKET, Key="prod/manifest.json")["Body"].read() == theirs


# --- prune and its guard ---------------------------------------------------------------------


def test_without_prune_devices_that_left_stay_published(workdir: Path, s3: S3Server):
    compile_fleet(workdir, range(10))
    assert publish(workdir, s3).exit_code == 0
    compile_fleet(workdir, range(9))
    s3.reset_counts()
    result = publish(workdir, s3)
    assert result.exit_code == 0
    assert s3.requests("DELETE") == []
    assert "1 remote file(s) of 1 device(s) no longer in output/ were left in place" in result.output
    assert f"devices/SN00009/{SETTINGS}" in remote_tree(s3)


def test_prune_above_the_threshold_is_refused_and_force_allows_it(workdir: Path, s3: S3Server):
    compile_fleet(workdir, range(20))
    assert publish(workdir, s3).exit_code == 0
    out = compile_fleet(workdir, range(14))  # a truncated export: 30% of the fleet missing
    s3.reset_counts()
    refused = publish(workdir, s3, "--prune")
    assert refused.exit_code == 6
    assert one_line_error(refused) == (
        "error: refusing to delete 6 of 20 published devices (30% > --max-delete 10%); the inventory may "
        "be truncated. Check it, then rerun with --max-delete 30 or --force")
    assert s3.requests("PUT") == [] and s3.requests("DELETE") == []  # nothing at all was changed
    assert publish(workdir, s3, "--prune", "--max-delete", "29").exit_code == 6
    s3.reset_counts()
    forced = publish(workdir, s3, "--prune", "--force")
    assert forced.exit_code == 0, forced.output
    assert "0 uploaded" not in forced.output and "7 deleted" in forced.output  # 6 devices, one a Mac
    methods = [s.method for s in s3.requests() if s.method in ("PUT", "DELETE")]
    assert methods == ["PUT"] + ["DELETE"] * 7  # the manifest first, deletions after it
    assert remote_tree(s3) == local_tree(out)


def test_prune_within_the_threshold_deletes_after_the_manifest(workdir: Path, s3: S3Server):
    compile_fleet(workdir, range(20))
    assert publish(workdir, s3).exit_code == 0
    out = compile_fleet(workdir, [i for i in range(20) if i != 5])  # 5%
    s3.reset_counts()
    result = publish(workdir, s3, "--prune")
    assert result.exit_code == 0, result.output
    assert [(s.method, s.key) for s in s3.requests() if s.method in ("PUT", "DELETE")] == [
        ("PUT", "prod/manifest.json"), ("DELETE", f"prod/devices/SN00005/{SETTINGS}")]
    assert remote_tree(s3) == local_tree(out)


def test_a_mac_that_became_linux_loses_its_profile_without_counting_as_a_deleted_device(workdir, s3):
    compile_fleet(workdir, range(4))
    assert publish(workdir, s3).exit_code == 0
    out = compile_fleet(workdir, range(4), platforms={0: "linux"})
    result = publish(workdir, s3, "--prune", "--max-delete", "0")
    assert result.exit_code == 0, result.output
    assert remote_tree(s3) == local_tree(out)


def test_prune_also_removes_what_an_interrupted_publish_left_behind(workdir: Path, s3: S3Server):
    compile_fleet(workdir, range(10))
    assert publish(workdir, s3).exit_code == 0
    s3.client().put_object(Bucket=BUCKET, Key=f"prod/devices/SN00099/{SETTINGS}", Body=b"{}\n")
    s3.client().put_object(Bucket=BUCKET, Key="prod/devices/README", Body=b"not ours")
    result = publish(workdir, s3, "--prune")
    assert result.exit_code == 0
    tree = remote_tree(s3)
    assert f"devices/SN00099/{SETTINGS}" not in tree
    assert "devices/README" in tree  # not a device file: never touched


# --- dry run ---------------------------------------------------------------------------------


def test_dry_run_prints_the_plan_and_changes_nothing(workdir: Path, s3: S3Server):
    compile_fleet(workdir, range(4))
    result = publish(workdir, s3, "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"create  devices/SN00000/{PROFILE}" in result.output
    assert "create  manifest.json" in result.output
    assert "Dry run for s3://fleet/prod/: would upload 6 (6 new, 0 changed), 0 unchanged, would delete 0; " \
           "nothing was changed." in result.output
    assert {s.method for s in s3.requests()} == {"GET"}
    assert remote_tree(s3) == {}


def test_dry_run_of_a_refused_prune_shows_the_plan_and_exits_6(workdir: Path, s3: S3Server):
    compile_fleet(workdir, range(10))
    assert publish(workdir, s3).exit_code == 0
    compile_fleet(workdir, range(5))
    before = remote_tree(s3)
    result = publish(workdir, s3, "--dry-run", "--prune")
    assert result.exit_code == 6
    assert f"delete  devices/SN00009/{SETTINGS}" in result.output
    assert "refusing to delete 5 of 10" in one_line_error(result)
    assert {s.method for s in s3.requests()} == {"GET"}
    assert remote_tree(s3) == before


def test_json_summary(workdir: Path, s3: S3Server):
    compile_fleet(workdir, range(4))
    result = run(workdir, "publish", DEST, "--endpoint-url", s3.url, "--json", "--dry-run")
    data = json.loads(result.stdout)
    assert data["exit_code"] == 0 and data["dry_run"] is True
    assert (data["create"], data["update"], data["unchanged"], data["delete"]) == (6, 0, 0, 0)
    assert data["plan"]["create"][-1] == "manifest.json"
    result = run(workdir, "publish", DEST, "--endpoint-url", s3.url, "--json")
    data = json.loads(result.stdout)
    assert (data["uploaded"], data["devices"]) == (6, {"published": 0, "deleted": 0})


# --- errors ----------------------------------------------------------------------------------


def test_missing_bucket(workdir: Path, s3: S3Server):
    compile_fleet(workdir, range(2))
    result = publish(workdir, s3, dest="s3://no-such-bucket/prod")
    assert result.exit_code == 7
    assert one_line_error(result) == ("error: bucket 'no-such-bucket' does not exist "
                                      "(while reading prod/manifest.json)")


def test_access_denied(workdir: Path, s3: S3Server):
    compile_fleet(workdir, range(2))
    s3.fail("GET", "^fleet$")
    result = publish(workdir, s3)
    assert result.exit_code == 7
    assert "error: access denied while listing prod/devices/ (s3://fleet/prod/); the IAM policy needs" \
        in one_line_error(result)


def test_rejected_credentials(workdir: Path, s3: S3Server):
    compile_fleet(workdir, range(2))
    s3.fail("GET", "manifest", code="InvalidAccessKeyId")
    result = publish(workdir, s3)
    assert result.exit_code == 7
    error = one_line_error(result)
    assert "the AWS credentials were rejected (InvalidAccessKeyId)" in error
    assert "testing" not in error


def test_no_credentials(workdir: Path, s3: S3Server, monkeypatch):
    compile_fleet(workdir, range(2))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    result = publish(workdir, s3)
    assert result.exit_code == 7
    assert one_line_error(result).startswith("error: no AWS credentials found")
    assert s3.requests() == []


def test_unreachable_endpoint(workdir: Path, aws_env, closed_port):
    compile_fleet(workdir, range(2))
    port = closed_port
    result = run(workdir, "publish", DEST, "--endpoint-url", f"http://127.0.0.1:{port}")
    assert result.exit_code == 7
    assert one_line_error(result).startswith(f"error: cannot reach http://127.0.0.1:{port} while reading")


def test_an_endpoint_that_never_answers_fails_within_the_timeout(workdir: Path, aws_env):
    """A server that accepts connections and never answers must not hold a cron job for
    minutes: each try is bounded by --timeout and botocore's standard mode tries 3 times."""
    compile_fleet(workdir, range(2))
    accepted: list[socket.socket] = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        server.settimeout(0.05)
        port = server.getsockname()[1]
        stop = threading.Event()

        def accept_and_stay_silent() -> None:
            while not stop.is_set():
                try:
                    accepted.append(server.accept()[0])
                except TimeoutError:
                    continue

        thread = threading.Thread(target=accept_and_stay_silent, daemon=True)
        thread.start()
        try:
            result = run(workdir, "publish", DEST, "--endpoint-url", f"http://127.0.0.1:{port}",
                         "--timeout", "0.3")
        finally:
            stop.set()
            thread.join()
            for conn in accepted:
                conn.close()
    assert result.exit_code == 7
    assert one_line_error(result).startswith(
        f"error: http://127.0.0.1:{port} accepted the connection but did not answer in time while reading")
    assert len(accepted) == 3  # one request, tried 3 times, then given up


@pytest.mark.parametrize("args, expected", [
    (["s3://A/prod"], "not a valid bucket name"),
    (["s3://fleet/../x"], "must not contain '.' or '..'"),
    (["s3://fleet/p", "--endpoint-url", "http://s3.example.com"], "plain http is only allowed to a loopback"),
    (["s3://fleet/p", "--endpoint-url", "https://key:secret@s3.example.com"], "must not carry credentials"),
])
def test_usage_errors(workdir: Path, args, expected):
    result = run(workdir, "publish", *args)
    assert result.exit_code == 2
    assert expected in result.output
    assert "secret" not in result.output


def test_a_plain_http_endpoint_from_the_environment_is_refused_too(workdir: Path, s3: S3Server, monkeypatch):
    compile_fleet(workdir, range(2))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3.example.com")
    result = run(workdir, "publish", DEST)
    assert result.exit_code == 2
    assert "plain http is only allowed to a loopback host" in result.output
    assert s3.requests() == []


def test_the_s3_subcommand_can_also_be_named(workdir: Path, s3: S3Server):
    compile_fleet(workdir, range(2))
    result = run(workdir, "publish", "s3", DEST, "--endpoint-url", s3.url)
    assert result.exit_code == 0, result.output
    assert run(workdir, "publish", "ftp://x").exit_code == 2


def test_a_missing_or_inconsistent_output_folder_is_refused_before_any_request(workdir: Path, s3: S3Server):
    result = publish(workdir, s3)
    assert result.exit_code == 1
    assert one_line_error(result) == "error: output: no such folder; run `mdmgen compile` first or pass --out"
    out = compile_fleet(workdir, range(2))
    (out / "devices" / "SN00001" / SETTINGS).write_text("{}\n")
    result = publish(workdir, s3)
    assert result.exit_code == 1
    assert "does not match its manifest.json: devices/SN00001/managed-settings.json differs" \
        in one_line_error(result)
    assert s3.requests() == []


# --- pure pieces -----------------------------------------------------------------------------


def test_destination_parsing():
    assert s3pub.parse_destination("s3://fleet") == s3pub.Destination("fleet", "")
    assert s3pub.parse_destination("s3://fleet//a/b/") == s3pub.Destination("fleet", "a/b/")
    assert s3pub.parse_destination("s3://fleet/a").key("manifest.json") == "a/manifest.json"
    assert str(s3pub.parse_destination("s3://fleet/a")) == "s3://fleet/a/"


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000", "http://localhost:9000", "http://[::1]:9000",
                                 "https://s3.eu-west-1.amazonaws.com", None])
def test_allowed_endpoints(url):
    s3pub.check_endpoint(url)


def test_remote_items_trust_only_objects_older_than_the_published_manifest():
    from datetime import UTC, datetime

    from mdmgen.models import Manifest

    manifest = Manifest.model_validate({"generator": "mdmgen", "version": "0", "devices": {"A": {
        "platform": "linux", "team": "t", "inputs": "x",
        "files": {SETTINGS: {"sha256": "aa", "size": 3}}}}})
    t = [datetime(2026, 1, 1, 0, 0, s, tzinfo=UTC) for s in range(3)]
    rel = f"devices/A/{SETTINGS}"

    def digest(modified, size=3, parsed=manifest, verified=None):
        state = s3pub.RemoteState(s3pub.PublishedManifest('"e"', "mm", t[1], parsed),
                                  {rel: s3pub.RemoteObject(rel, size, modified)}, verified)
        return {r.key: r.sha256 for r in s3pub.remote_items(state)}

    assert digest(t[0]) == {rel: "aa", "manifest.json": "mm"}
    assert digest(t[1])[rel] is None  # same second as the manifest: not provably older
    assert digest(t[2])[rel] is None
    assert digest(t[0], size=4)[rel] is None
    assert digest(t[0], parsed=None)[rel] is None
    assert digest(t[2], verified={rel: "bb"})[rel] == "bb"


def test_error_messages_never_include_the_secret(workdir: Path, s3: S3Server, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-do-not-print")
    compile_fleet(workdir, range(2))
    s3.fail("GET", "manifest", code="SignatureDoesNotMatch")
    result = publish(workdir, s3, "-vv")
    assert result.exit_code == 7
    assert "s3cr3t" not in result.output
