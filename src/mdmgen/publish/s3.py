"""Publish the output folder to S3 (or an S3-compatible endpoint) with boto3.

The bucket mirrors the folder under a prefix: ``<prefix>/devices/<SERIAL>/<file>`` and
``<prefix>/manifest.json``. How the remote state is known, and why:

* **The published manifest vouches for the objects older than it.** The manifest is uploaded
  last, so every object of a complete publish was written before it. An object whose
  LastModified (from the listing) is earlier than the manifest's, and whose size matches the
  manifest's entry, is taken to hold the manifest's sha256. Anything written after the
  manifest (the objects of an interrupted publish, or a hand edit) is not vouched for and is
  uploaded again. S3 dates objects to the second, so the manifest is written at least
  :data:`COMMIT_GAP` seconds after the last object write, and it is rewritten whenever anything
  else was written, even if its bytes are unchanged.
* **The listing says what exists**, so a deleted object is recreated and a prune sees every
  device, including those an interrupted publish left behind.
* **``--verify`` trusts nothing**: it GETs every object the output folder has and hashes the
  bytes, for stores whose timestamps cannot be trusted or a manifest restored by hand.

A no-change republish therefore costs one GET and one LIST per 1,000 objects, and no PUT.
Every PUT carries ``x-amz-checksum-sha256`` equal to the manifest's digest, so S3 refuses
(400 BadDigest) bytes that are not exactly what the manifest describes. The manifest PUT is
conditional (If-Match on the ETag read at the start, or If-None-Match: * when there was none),
so two publishes racing on one prefix cannot silently overwrite each other's manifest.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import boto3
import botocore.exceptions as bx
from botocore.config import Config
from pydantic import ValidationError

from .. import __version__
from ..emit import registry
from ..endpoints import check_url
from ..environment import BOTOCORE_CA, EnvironmentValueError, check_network
from ..messages import CREDENTIAL_VARIABLES, environment_secrets, shorten
from ..models import Manifest
from ..output import DEVICES_DIR, MANIFEST_FILE, kind_of
from ..output import CheckedOutput as LocalOutput
from ..progress import NO_PROGRESS, Progress
from .base import Desired, Plan, PlanItem, Remote, RemoteError, build_plan, run_bounded
from .defaults import S3_TIMEOUT, S3_WORKERS

COMMIT_GAP = 1.0
S3_ATTEMPTS = 3
"""botocore's standard mode default, set explicitly so ``AWS_MAX_ATTEMPTS`` or the AWS config
cannot stretch how long a failing endpoint holds a run (the README's bound depends on it)."""
MAX_MANIFEST = 256 << 20
"""The largest manifest.json read: about a million devices' lines."""
MAX_OBJECT = 16 << 20
"""The largest other object read (``--verify``): one device's or one fleet-level file."""
READ_CHUNK = 64 << 10
"""Seconds between the last object write and the manifest write (S3's LastModified resolution)."""

_PART = r"[A-Za-z0-9_-][A-Za-z0-9._-]*"
_DEVICE_KEY = re.compile(rf"^{DEVICES_DIR}/({_PART})/({_PART})$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CONFLICT = {"PreconditionFailed", "ConditionalRequestConflict"}
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                    "TokenRefreshRequired", "InvalidClientTokenId", "AuthorizationHeaderMalformed"}
_ACCESS_DENIED = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "Forbidden"}


@dataclass(frozen=True)
class Destination:
    """``s3://BUCKET/PREFIX``; ``prefix`` is empty or ends with ``/``."""

    bucket: str
    prefix: str

    def key(self, relpath: str) -> str:
        return self.prefix + relpath

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def parse_destination(url: str) -> Destination:
    """Parse ``s3://BUCKET[/PREFIX]``; raise ValueError with a message for the user."""
    if not url.startswith("s3://"):
        raise ValueError(f"{url!r}: expected s3://BUCKET/PREFIX")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(f"{bucket!r}: not a valid bucket name (3-63 characters: a-z, 0-9, '.', '-')")
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"{url!r}: the prefix must not contain '.' or '..' parts")
    return Destination(bucket, "".join(f"{p}/" for p in parts))


def check_endpoint(url: str | None) -> None:
    """Refuse an endpoint URL that would leak requests: plain http off loopback, or credentials in it."""
    if url is None:
        return
    check_url(url, credentials_go="in the AWS credential chain (environment, profile, role)")


def content_type(relpath: str) -> str:
    """The registry's content type for the file at ``relpath`` (the manifest is JSON)."""
    kind = kind_of(relpath)
    if kind is not None:
        return kind.content_type
    return "application/json" if relpath == MANIFEST_FILE else "application/octet-stream"


def checksum_header(sha256_hex: str) -> str:
    """The ``x-amz-checksum-sha256`` value: base64 of the raw digest (not of the hex)."""
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")


def make_client(*, endpoint_url: str | None = None, region: str | None = None,
                workers: int = S3_WORKERS, timeout: float = S3_TIMEOUT):
    """An S3 client on the standard AWS credential chain (env, profile, SSO, instance role).

    Raises ValueError when the endpoint in use (from the argument, or from AWS_ENDPOINT_URL(_S3)
    or the AWS config) is plain http to a host that is not loopback.

    Checksums are set deliberately: every PUT passes its own ChecksumSHA256, so the SDK's
    default extra CRC32 (boto3 >= 1.36, refused by some S3-compatible stores) is turned off
    with ``when_required``; ``--verify`` hashes what it downloads itself. Retries use botocore's
    ``standard`` mode (retried throttling, 5xx and timeouts with backoff), at most
    :data:`S3_ATTEMPTS` tries, and nothing retries on top. ``timeout`` bounds each connect and
    each socket read, so a cron job never hangs on an endpoint that accepts connections and never
    answers. botocore has no deadline for a whole request: an endpoint that keeps sending a byte
    within each ``timeout`` is bounded only by the size caps of :meth:`S3Publisher._read_body`.
    """
    config = Config(retries={"mode": "standard", "total_max_attempts": S3_ATTEMPTS},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required", max_pool_connections=workers,
                    connect_timeout=timeout, read_timeout=timeout, user_agent_extra=f"mdmgen/{__version__}")
    check_network(ca_files=BOTOCORE_CA, truststore=False)
    try:
        session = boto3.session.Session()
        client = session.client("s3", endpoint_url=endpoint_url, config=config,
                                region_name=region or session.region_name or "us-east-1")
    except (bx.ProfileNotFound, bx.ConfigParseError, bx.InvalidRegionError, ValueError) as exc:
        raise _configuration_error(exc, region) from None
    except bx.BotoCoreError as exc:
        raise _describe(exc, None, "setting up the S3 client") from None
    # The endpoint can also come from AWS_ENDPOINT_URL(_S3) or the AWS config file: check the one in use.
    check_endpoint(client.meta.endpoint_url)
    return client


def _configuration_error(exc: Exception, region: str | None,
                         environ: Mapping[str, str] | None = None) -> EnvironmentValueError:
    """A value botocore refused while the client was made, as a usage error naming where it was set:
    the variable when one holds it, else the AWS config file (botocore reads both)."""
    env = os.environ if environ is None else environ
    config = f"the AWS config file ({env.get('AWS_CONFIG_FILE') or '~/.aws/config'})"
    if isinstance(exc, bx.ProfileNotFound):
        name = next((n for n in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE") if env.get(n)), "AWS_PROFILE")
        return EnvironmentValueError(name, f"{exc}; it names no profile of {config} or the credentials file")
    if isinstance(exc, bx.ConfigParseError):
        return EnvironmentValueError("AWS_CONFIG_FILE", f"{config} cannot be parsed; is it the right file?")
    if isinstance(exc, bx.InvalidRegionError):
        name = "--region" if region else next((n for n in ("AWS_REGION", "AWS_DEFAULT_REGION") if env.get(n)),
                                              f"the region of {config}")
        return EnvironmentValueError(name, "is not an AWS region name (like eu-west-1)")
    reason = shorten(" ".join(str(exc).split()), 200, environment_secrets())
    # botocore converts AWS_* values as it reads them (AWS_MAX_ATTEMPTS=x: "invalid literal for int()")
    named = [n for n, v in sorted(env.items()) if n.startswith("AWS_") and v and repr(v) in str(exc)
             and n not in CREDENTIAL_VARIABLES]
    if not named and "URL" in str(exc):
        named = [n for n in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL") if env.get(n)]
    return EnvironmentValueError(named[0] if named else f"an AWS_* variable or {config}", f"cannot be used: {reason}")


@dataclass(frozen=True)
class RemoteObject:
    relpath: str
    size: int
    modified: datetime


@dataclass(frozen=True)
class PublishedManifest:
    """The manifest.json found on the remote; ``manifest`` is None when it does not parse."""

    etag: str
    sha256: str
    modified: datetime
    manifest: Manifest | None


@dataclass(frozen=True)
class RemoteState:
    manifest: PublishedManifest | None
    objects: dict[str, RemoteObject]
    verified: dict[str, str | None] | None = None
    """With --verify: sha256 of the bytes each object served (None: vanished meanwhile)."""


def desired_items(local: LocalOutput) -> list[Desired]:
    return [Desired(f.relpath, f.sha256, f.size, f.device, f, commit=f.relpath == MANIFEST_FILE)
            for f in local.files]


def remote_items(state: RemoteState) -> list[Remote]:
    """What the remote holds, with the digest we can vouch for (see the module docstring)."""
    published = state.manifest
    items = []
    for relpath, obj in state.objects.items():
        device = relpath.split("/")[1] if relpath.startswith(f"{DEVICES_DIR}/") else None  # None: a fleet file
        verified = state.verified
        sha = verified.get(relpath) if verified is not None else _vouched(published, obj, device)
        items.append(Remote(relpath, device, sha))
    if published is not None:  # its ETag makes the commit conditional (If-Match)
        items.append(Remote(MANIFEST_FILE, None, published.sha256, detail=published.etag))
    return items


def _vouched(published: PublishedManifest | None, obj: RemoteObject, device: str | None) -> str | None:
    if published is None or published.manifest is None or not obj.modified < published.modified:
        return None
    entry = published.manifest.devices.get(device) if device else None
    file = entry.files.get(obj.relpath.rsplit("/", 1)[1]) if entry else published.manifest.fleet.get(obj.relpath)
    return file.sha256 if file is not None and file.size == obj.size else None


class S3Publisher:
    """Plans and applies a publish to one destination. Holds the client and, while applying, the
    time of the last object write (the manifest must be dated after it)."""

    noun = "file"

    def __init__(self, client, destination: Destination, *, kms_key_id: str | None = None,
                 verify: bool = False, workers: int = S3_WORKERS, commit_gap: float = COMMIT_GAP,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.client = client
        self.destination = destination
        self.kms_key_id = kms_key_id
        self.verify = verify
        self.workers = workers
        self._commit_gap = commit_gap
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.Lock()
        self._last_write: float | None = None

    def plan(self, local: LocalOutput, *, prune: bool, progress: Progress = NO_PROGRESS) -> Plan:
        wanted = {f.relpath for f in local.files}
        state = self.read_remote(wanted, progress)
        return build_plan(desired_items(local), remote_items(state), prune=prune)

    def read_remote(self, wanted: Iterable[str], progress: Progress = NO_PROGRESS) -> RemoteState:
        """GET the manifest, LIST devices/, and with --verify GET and hash each wanted object."""
        manifest = self._get_manifest()
        published_fleet = set(manifest.manifest.fleet) if manifest and manifest.manifest else set()
        objects = self._list_objects(published_fleet | {w for w in wanted if "/" in w and not _DEVICE_KEY.match(w)})
        verified = None
        if self.verify:
            check = sorted(set(objects) & set(wanted))
            digests = run_bounded(check, self._digest, workers=self.workers, progress=progress,
                                  label="Verifying")
            verified = dict(zip(check, digests, strict=True))
        return RemoteState(manifest, objects, verified)

    def _get(self, relpath: str, doing: str) -> tuple[dict, bytes] | None:
        """GET one object under the prefix: its response and bytes, or None if there is none."""
        key = self.destination.key(relpath)
        try:
            response = self.client.get_object(Bucket=self.destination.bucket, Key=key)
            cap = MAX_MANIFEST if relpath == MANIFEST_FILE else MAX_OBJECT
            return response, self._read_body(response, cap, f"{doing} {key}")
        except bx.ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None
            raise _describe(exc, self.destination, f"{doing} {key}") from None
        except bx.BotoCoreError as exc:
            raise _describe(exc, self.destination, f"{doing} {key}") from None

    def _read_body(self, response: dict, cap: int, doing: str) -> bytes:
        """The body, read in chunks and given up past ``cap`` bytes, so an endless body ends the run
        with one line instead of memory running out."""
        body = response["Body"]
        too_large = RemoteError(f"{self.destination} sent an object larger than {cap >> 20} MiB while {doing}")
        try:
            if int(response.get("ContentLength") or 0) > cap:
                raise too_large
            chunks: list[bytes] = []
            size = 0
            while chunk := body.read(READ_CHUNK):
                size += len(chunk)
                if size > cap:
                    raise too_large
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            body.close()

    def _get_manifest(self) -> PublishedManifest | None:
        got = self._get(MANIFEST_FILE, "reading")
        if got is None:
            return None
        response, data = got
        try:
            parsed: Manifest | None = Manifest.model_validate_json(data)
        except ValidationError:
            parsed = None  # hand-edited or foreign: vouches for nothing, and is replaced
        return PublishedManifest(response["ETag"], hashlib.sha256(data).hexdigest(),
                                 response["LastModified"], parsed)

    def _list_objects(self, fleet_files: set[str]) -> dict[str, RemoteObject]:
        """Every ``devices/<SERIAL>/<file>`` object under the prefix, and every fleet-level file of a
        registered kind, of the output folder or of the published manifest (one listing per fleet
        folder); other keys are not ours."""
        fleet = fleet_files | {kind.name for kind in registry.fleet_kinds()}
        objects = {}
        for folder in [DEVICES_DIR, *sorted({relpath.split("/")[0] for relpath in fleet})]:
            prefix = self.destination.key(f"{folder}/")
            try:
                pages = self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.destination.bucket, Prefix=prefix)
                for page in pages:
                    for entry in page.get("Contents", []):
                        relpath = entry["Key"][len(self.destination.prefix):]
                        if _DEVICE_KEY.match(relpath) or relpath in fleet:
                            objects[relpath] = RemoteObject(relpath, entry["Size"], entry["LastModified"])
            except (bx.ClientError, bx.BotoCoreError) as exc:
                raise _describe(exc, self.destination, f"listing {prefix}") from None
        return objects

    def _digest(self, relpath: str) -> str | None:
        got = self._get(relpath, "verifying")
        return hashlib.sha256(got[1]).hexdigest() if got else None

    def write(self, item: PlanItem) -> None:
        """PUT one file with its SHA-256 checksum, content type and server-side encryption."""
        assert item.source is not None and item.sha256 is not None
        key = self.destination.key(item.key)
        args = {"Bucket": self.destination.bucket, "Key": key, "Body": item.source.read(),
                "ContentType": content_type(item.key), "ChecksumSHA256": checksum_header(item.sha256)}
        if self.kms_key_id:
            args.update(ServerSideEncryption="aws:kms", SSEKMSKeyId=self.kms_key_id)
        else:
            args["ServerSideEncryption"] = "AES256"
        if item.commit:
            self._wait_for_gap()
            if item.remote is not None:  # the ETag of the manifest read when planning
                args["IfMatch"] = item.remote
            else:
                args["IfNoneMatch"] = "*"
        try:
            self.client.put_object(**args)
        except bx.ClientError as exc:
            if item.commit and (_code(exc) in _CONFLICT or _code(exc) == "NoSuchKey"):
                raise RemoteError(f"{self.destination}{MANIFEST_FILE} changed while this publish ran "
                                  "(another publish to the same prefix?)") from None
            raise _describe(exc, self.destination, f"uploading {key}") from None
        except bx.BotoCoreError as exc:
            raise _describe(exc, self.destination, f"uploading {key}") from None
        if not item.commit:
            with self._lock:
                self._last_write = self._clock()

    def delete(self, item: PlanItem) -> None:
        key = self.destination.key(item.key)
        try:
            self.client.delete_object(Bucket=self.destination.bucket, Key=key)
        except (bx.ClientError, bx.BotoCoreError) as exc:
            raise _describe(exc, self.destination, f"deleting {key}") from None

    def close(self) -> None:
        self.client.close()

    def _wait_for_gap(self) -> None:
        """Make the manifest's LastModified later than every object's, at S3's 1-second resolution."""
        with self._lock:
            last = self._last_write
        if last is not None:
            remaining = last + self._commit_gap - self._clock()
            if remaining > 0:
                self._sleep(remaining)


def _code(exc: bx.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _describe(exc: Exception, destination: Destination | None, doing: str) -> RemoteError:
    """One line for the user; never repeats credentials (AWS error messages carry none we print)."""
    where = f" ({destination})" if destination else ""
    if isinstance(exc, bx.NoCredentialsError):
        return RemoteError("no AWS credentials found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                           "AWS_SECRET_ACCESS_KEY, or run with an instance or task role")
    if isinstance(exc, bx.PartialCredentialsError | bx.ProfileNotFound | bx.NoRegionError):
        return RemoteError(f"AWS configuration problem: {exc}")
    if isinstance(exc, bx.SSLError):
        return RemoteError(f"TLS error talking to the S3 endpoint while {doing}{where}: {exc}")
    if isinstance(exc, bx.ReadTimeoutError):
        url = urlsplit(str(getattr(exc, "kwargs", {}).get("endpoint_url", "")))
        endpoint = f"{url.scheme}://{url.netloc}" if url.netloc else "the S3 endpoint"
        return RemoteError(f"{endpoint} accepted the connection but did not answer in time while {doing}{where} "
                           "(each try is bounded by --timeout, and the SDK tried 3 times)")
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ConnectionClosedError):
        url = urlsplit(str(getattr(exc, "kwargs", {}).get("endpoint_url", "")))
        endpoint = f"{url.scheme}://{url.netloc}" if url.netloc else "the S3 endpoint"
        return RemoteError(f"cannot reach {endpoint} while {doing}{where}")
    if isinstance(exc, bx.ClientError):
        code = _code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket" and destination:
            return RemoteError(f"bucket {destination.bucket!r} does not exist (while {doing})")
        if code in _BAD_CREDENTIALS:
            return RemoteError(f"the AWS credentials were rejected ({code}) while {doing}; check "
                               "AWS_PROFILE or the access key")
        if code in _ACCESS_DENIED or status == 403:
            return RemoteError(f"access denied while {doing}{where}; the IAM policy needs s3:ListBucket, "
                               "s3:GetObject, s3:PutObject and (for --prune) s3:DeleteObject")
        if code in ("BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"):
            return RemoteError(f"S3 refused the bytes while {doing}: checksum mismatch ({code})")
        message = exc.response.get("Error", {}).get("Message", "")
        return RemoteError(f"S3 error while {doing}{where}: {code or status} {message}".rstrip())
    return RemoteError(f"S3 client error while {doing}{where}: {exc}")
