"""Signed profiles: ``compile --sign-cert CERT.pem --sign-key KEY.pem`` (or ``--sign-p12 FILE.p12``).

Each Mac's ``claude-code.signed.mobileconfig`` is a DER CMS SignedData with the unsigned profile
attached, byte for byte (``PKCS7Options.Binary``: without it the content is canonicalised to
CRLF line ends and no longer equals the file), SHA-256, the signing certificate and any chain
certificates of the PEM file or the PKCS#12 included (reference: apple-profiles-and-anchors.md §4).

Why it is a separate, derived file and how it stays quiet:

* **The unsigned profile stays canonical.** A signature carries a signing time (and ECDSA a
  random nonce), so two signatures of the same profile never have the same bytes (§4.3). The
  manifest's device digests, ``diff`` and Jamf (which strips signatures and re-signs, §4.3 rule 5)
  all use the unsigned file; the signed one is a ``derived`` kind in the artifact registry.
* **Signed last, and only what changed.** This stage runs after the compile. A Mac whose
  unsigned profile has the digest its signed file was made from, with the same certificates
  (the manifest's ``derived`` entry: ``from``, ``from_sha256``, ``signer_sha256``), keeps its
  signed file: it is hard-linked like every unchanged file, so a quiet night writes nothing and
  the manifest keeps its bytes. A changed profile, a new certificate (a renewal) or a signed
  file that did not check out is signed again. Compiling without the signing options removes
  the signed files: the output folder holds what this compile was asked to make.
* **Checked before anything is written.** The key must match the certificate, the certificate
  must be valid now and, when it has a key usage extension, allow ``digitalSignature``. Extended
  key usage is not checked: the reference names no rule for it, and profiles are commonly signed
  with TLS server, S/MIME or code-signing certificates.

Key material is read with the bounded ``inputfile.read_input`` and never printed. Passwords come
from the environment only (``MDMGEN_SIGN_KEY_PASSWORD`` for an encrypted PEM key,
``MDMGEN_SIGN_P12_PASSWORD`` for a PKCS#12 file), never a flag, where ``ps`` would show them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

from .emit import cms, registry
from .inputfile import InputFileError, not_text, read_input
from .messages import SIGN_KEY_PASSWORD_ENV, SIGN_P12_PASSWORD_ENV
from .models import CompiledDevice, DerivedFile, Location, ManifestDevice, MdmgenError, Problem
from .output import CheckedOutput, device_path
from .output.manifest import Derived, file_entry
from .progress import NO_PROGRESS, Progress

log = logging.getLogger(__name__)

KEY_PASSWORD_ENV = SIGN_KEY_PASSWORD_ENV
P12_PASSWORD_ENV = SIGN_P12_PASSWORD_ENV
MAX_SIGNING_FILE_BYTES = 1 << 20
"""A certificate chain, a key or a PKCS#12 file is a few kilobytes; a megabyte is not one of them."""
SIGNED = registry.SIGNED_MAC_PROFILE
EXPIRY_WARNING = timedelta(days=14)
"""A nightly compile warns this long before the signing certificate expires (and then fails)."""


@dataclass(frozen=True)
class Signer:
    """A checked signing identity: the certificate, its private key, and the chain to include."""

    certificate: x509.Certificate
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the DER of the signing certificate, then the chain: recorded in the manifest,
        so a renewed certificate (or a changed chain) signs every profile again."""
        digest = hashlib.sha256()
        for cert in (self.certificate, *self.chain):
            digest.update(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())
        return digest.hexdigest()

    def sign(self, profile: bytes) -> bytes:
        """The DER CMS SignedData of ``profile``, attached (never ``DetachedSignature``)."""
        builder = pkcs7.PKCS7SignatureBuilder().set_data(profile).add_signer(
            self.certificate, self.key, hashes.SHA256())
        for cert in self.chain:
            builder = builder.add_certificate(cert)
        signed = builder.sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
        if cms.embedded_content(signed) != profile:  # the promise the reader checks; cheap to keep here
            raise RuntimeError("the signed profile does not embed the unsigned one byte for byte")
        return signed


class SigningError(MdmgenError):
    """The signing identity cannot be used (exit 1, before the output folder is locked)."""

    def headline(self) -> str:
        return f"{len(self.problems)} problem(s) with the signing identity; nothing was written."


def _problem(path: Path, option: str, message: str) -> Problem:
    return Problem(location=Location(file=str(path)), field=option, message=message)


def _read(path: Path, option: str) -> bytes:
    try:
        return read_input(path, MAX_SIGNING_FILE_BYTES)
    except FileNotFoundError:
        raise SigningError([_problem(path, option, "no such file")]) from None
    except InputFileError as exc:
        raise SigningError([_problem(path, option, str(exc))]) from None


def _password(environ: Mapping[str, str], name: str) -> bytes | None:
    value = environ.get(name)
    # surrogateescape: the bytes as they are in the environment, even when they are not UTF-8
    return value.encode("utf-8", "surrogateescape") if value else None


def load_signer(*, cert: Path | None = None, key: Path | None = None, p12: Path | None = None,
                environ: Mapping[str, str] | None = None, now: datetime | None = None) -> Signer:
    """The checked signer from a PEM certificate (chain allowed) and key, or a PKCS#12 file.

    Raises SigningError with one ``FILE: --option: message`` problem per thing to fix; no message
    carries key material or a password."""
    env = os.environ if environ is None else environ
    if p12 is not None:
        private_key, certificate, chain = _load_p12(p12, env)
        where, option = p12, "--sign-p12"
    else:
        assert cert is not None and key is not None, "the command line requires both"
        certificates = _load_certificates(cert)
        private_key = _load_key(key, env)
        matching = [c for c in certificates if _same_public_key(c, private_key)]
        if not matching:
            raise SigningError([_problem(key, "--sign-key", f"does not match the certificate in {cert} "
                                        "(its public key is another one)")])
        certificate = matching[0]
        chain = [c for c in certificates if c is not certificate]
        where, option = cert, "--sign-cert"
    now = now or datetime.now(UTC)
    problems = _certificate_problems(certificate, now)
    if problems:
        raise SigningError([_problem(where, option, message) for message in problems])
    left = certificate.not_valid_after_utc - now
    if left < EXPIRY_WARNING:
        log.warning("%s: the signing certificate expires on %s UTC (in %d day(s)); renew it before then",
                    where, f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M}", left.days)
    return Signer(certificate, private_key, tuple(chain))


def _load_certificates(path: Path) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(_read(path, "--sign-cert"))
    except ValueError:
        raise SigningError([_problem(path, "--sign-cert", "not a PEM certificate (-----BEGIN CERTIFICATE-----)")]) \
            from None
    return certificates


def _load_key(path: Path, env: Mapping[str, str]) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    data = _read(path, "--sign-key")
    password = _password(env, KEY_PASSWORD_ENV)
    try:
        try:
            key = serialization.load_pem_private_key(data, password)
        except TypeError:
            if password is None:
                raise SigningError([_problem(path, "--sign-key", f"the key is encrypted: set {KEY_PASSWORD_ENV} "
                                            "to its password")]) from None
            key = serialization.load_pem_private_key(data, None)  # the variable is set, the key is not encrypted
    except (ValueError, UnsupportedAlgorithm):
        hint = f" or {KEY_PASSWORD_ENV} is not its password" if password is not None else ""
        raise SigningError([_problem(path, "--sign-key", f"not a readable PEM private key{hint}")]) from None
    return _signing_key(key, path, "--sign-key")


def _load_p12(path: Path, env: Mapping[str, str]):
    data = _read(path, "--sign-p12")
    password = _password(env, P12_PASSWORD_ENV)
    try:
        key, certificate, chain = pkcs12.load_key_and_certificates(data, password)
    except (ValueError, UnsupportedAlgorithm):
        # OpenSSL says "invalid password or PKCS12 data" for both; the file's shape tells them apart.
        why = _not_pkcs12(data) or (f"{P12_PASSWORD_ENV} is not its password" if password is not None
                                    else f"it is protected by a password: set {P12_PASSWORD_ENV}")
        raise SigningError([_problem(path, "--sign-p12", f"cannot open the PKCS#12 file: {why}")]) from None
    if key is None or certificate is None:
        raise SigningError([_problem(path, "--sign-p12", "holds no private key and certificate pair")])
    if not _same_public_key(certificate, key):
        raise SigningError([_problem(path, "--sign-p12", "its key does not match its certificate")])
    return _signing_key(key, path, "--sign-p12"), certificate, list(chain)


_PKCS7_OID = bytes.fromhex("06092a864886f70d0107")  # 1.2.840.113549.1.7 (data, signedData): a PFX's authSafe


def _not_pkcs12(data: bytes) -> str | None:
    """Why ``data`` is not a whole PKCS#12 file, or None when it is shaped like one (RFC 7292: a DER
    SEQUENCE holding version 3 and a PKCS#7 ContentInfo), so only the password can be wrong."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return ("this is a PEM file, not PKCS#12: pass the certificate with --sign-cert and the key with "
                "--sign-key")
    if len(data) < 2 or data[0] != 0x30:  # every DER file starts with a SEQUENCE
        kind = not_text(data)
        return f"this is {kind}, not a PKCS#12 file (.p12 or .pfx)" if kind else "not a PKCS#12 file (.p12 or .pfx)"
    size, start = data[1], 2
    if size & 0x80:  # long form: the next (size & 0x7f) bytes hold the length
        count = size & 0x7F
        size, start = int.from_bytes(data[2:2 + count], "big"), 2 + count
    if data[start:start + 3] != b"\x02\x01\x03" or _PKCS7_OID not in data[start:start + 24]:
        return "not a PKCS#12 file (.p12 or .pfx)"
    if start + size != len(data):
        return (f"the file is damaged: it should be {start + size} bytes and is {len(data)} (cut short in a copy, "
                "or with something added?)")
    return None


def _signing_key(key: object, path: Path, option: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise SigningError([_problem(path, option, "only RSA and EC keys can sign a profile")])
    return key


def _same_public_key(certificate: x509.Certificate, key: object) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        theirs = certificate.public_key().public_bytes(serialization.Encoding.DER, spki)
        ours = key.public_key().public_bytes(serialization.Encoding.DER, spki)  # type: ignore[attr-defined]
    except (AttributeError, ValueError, UnsupportedAlgorithm):
        return False
    return theirs == ours


def _certificate_problems(certificate: x509.Certificate, now: datetime) -> list[str]:
    """Why the certificate cannot sign now: validity, and the key usage when it has one (RFC 5280
    §4.2.1.3: without the extension, the key is not restricted)."""
    problems = []
    if now < certificate.not_valid_before_utc:
        problems.append(f"the certificate is not valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if now > certificate.not_valid_after_utc:
        problems.append(f"the certificate expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    except ValueError:
        problems.append("the certificate's extensions cannot be read")
        usage = None
    if usage is not None and not usage.digital_signature:
        problems.append("the certificate's key usage does not include digitalSignature, so it cannot sign")
    return problems


def sign_devices(compiled: list[CompiledDevice], previous: CheckedOutput | None, signer: Signer | None,
                 progress: Progress = NO_PROGRESS) -> dict[str, dict[str, Derived]]:
    """The signed profile of every Mac, by serial then file name, for ``output.write``.

    A signed file that is still right (see the module docstring) comes back without bytes: the
    writer keeps the one on disk. With no signer, none (the writer drops earlier signed files)."""
    if signer is None:
        return {}
    fingerprint = signer.fingerprint
    derived: dict[str, dict[str, Derived]] = {}
    progress.start(len(compiled), "Signing")
    for item in compiled:
        progress.advance()
        if SIGNED.applies_to(item.device.platform):
            made = _signed_profile(item, previous, signer, fingerprint)
            if made is not None:
                derived[item.device.serial] = {SIGNED.name: made}
    progress.finish()
    signed = sum(1 for files in derived.values() if files[SIGNED.name].data is not None)
    log.info("signed %d profile(s); %d unchanged signed profile(s) kept", signed, len(derived) - signed)
    return derived


def _signed_profile(item: CompiledDevice, previous: CheckedOutput | None, signer: Signer,
                    fingerprint: str) -> Derived | None:
    """One Mac's signed profile: kept when made from these profile bytes with these certificates
    and still intact on disk, else signed now; None when the Mac has no profile."""
    serial, source = item.device.serial, SIGNED.derived_from
    assert source is not None
    before = previous.manifest.devices.get(serial) if previous is not None else None
    if item.files is not None:
        data = item.files.get(source)
        if data is None:
            return None
        source_sha256 = hashlib.sha256(data).hexdigest()
    else:  # not rendered again (inputs unchanged): its profile is the previous tree's
        assert previous is not None and before is not None
        if source not in before.files:
            return None
        data, source_sha256 = None, before.files[source].sha256
    made = DerivedFile(source=source, from_sha256=source_sha256, signer_sha256=fingerprint)
    if previous is not None and before is not None and _still_right(previous, serial, before, made):
        return Derived(entry=before.files[SIGNED.name], made=made)
    if data is None:
        checked = previous.file(device_path(serial, source)) if previous is not None else None
        assert checked is not None
        data = checked.read()  # checked against its digest in the manifest
    signed = signer.sign(data)
    return Derived(entry=file_entry(signed), made=made, data=signed)


def _still_right(previous: CheckedOutput, serial: str, before: ManifestDevice, made: DerivedFile) -> bool:
    return ((before.derived or {}).get(SIGNED.name) == made and SIGNED.name in before.files
            and device_path(serial, SIGNED.name) not in previous.problems)
