"""Signed profiles (``compile --sign-cert/--sign-key/--sign-p12``), checked with the real ``openssl``.

Certificates and keys are made with the openssl CLI (a CA and a leaf it issued, a leaf without
digitalSignature, a stray key, a PKCS#12, an encrypted key, an EC identity); only the expired
and not-yet-valid certificates are made with ``cryptography``, because OpenSSL 3.0's CLI cannot
back-date one. Every signed file is verified by ``openssl cms -verify`` against the CA, and the
content openssl extracts must equal the unsigned profile byte for byte.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import plistlib
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from mdmgen import output
from mdmgen.emit import cms

from .conftest import openssl_path, run, snapshot
from .fakes.jamf_server import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Computer, FakeJamfServer
from .fakes.s3_server import S3Server

UNSIGNED = "claude-code.mobileconfig"
SIGNED = "claude-code.signed.mobileconfig"
MACS = ["MAC0001", "MAC0002", "MAC0003"]
P12_PASSWORD = "p12 pass phrase"
KEY_PASSWORD = "pem pass phrase"


def openssl(*args: str, cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([openssl_path(), *args], cwd=cwd, input=stdin, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result


def _write_ext(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _issue(folder: Path, name: str, ext: str, *, ca: str = "ca") -> None:
    """A leaf ``name.pem``/``name.key`` issued by the CA, with the given v3 extensions."""
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=mdmgen test {name}", cwd=folder)
    _write_ext(folder, f"{name}.ext", ext)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-set_serial",
            str(abs(hash(name)) % 10**9), "-days", "30", "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
            cwd=folder)


def _dated(folder: Path, name: str, not_before: dt.datetime, not_after: dt.datetime) -> None:
    """A self-signed certificate valid only between two dates (made with cryptography)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"mdmgen test {name}")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), True)
            .sign(key, hashes.SHA256()))
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """Every identity the tests use, made once (RSA key generation is the costly part)."""
    folder = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "365",
            "-subj", "/CN=mdmgen test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    _issue(folder, "leaf", "keyUsage=critical,digitalSignature\n")
    _issue(folder, "renewed", "keyUsage=critical,digitalSignature\n")
    _issue(folder, "nosign", "keyUsage=critical,keyEncipherment\n")
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "stray.key", cwd=folder)
    openssl("pkcs12", "-export", "-in", "leaf.pem", "-inkey", "leaf.key", "-certfile", "ca.pem", "-out", "leaf.p12",
            "-passout", f"pass:{P12_PASSWORD}", cwd=folder)
    (folder / "cut.p12").write_bytes((folder / "leaf.p12").read_bytes()[:-100])  # a copy cut short
    openssl("x509", "-in", "leaf.pem", "-outform", "DER", "-out", "leaf.der", cwd=folder)
    openssl("pkey", "-in", "leaf.key", "-aes256", "-passout", f"pass:{KEY_PASSWORD}", "-out", "leaf.enc.key",
            cwd=folder)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ec.key",
            "-out", "ec.pem", "-days", "30", "-subj", "/CN=mdmgen test EC", "-addext",
            "keyUsage=critical,digitalSignature", cwd=folder)
    now = dt.datetime.now(dt.UTC)
    _dated(folder, "expired", now - dt.timedelta(days=30), now - dt.timedelta(days=1))
    _dated(folder, "future", now + dt.timedelta(days=1), now + dt.timedelta(days=30))
    _dated(folder, "ending", now - dt.timedelta(days=300), now + dt.timedelta(days=5, hours=1))
    return folder


@pytest.fixture
def project(workdir: Path, pki: Path) -> Path:
    """A project with three Macs and a Linux box, and the PKI copied into ``pki/``."""
    shutil.copytree(pki, workdir / "pki")
    write_fleet(workdir, {})
    return workdir


def write_fleet(workdir: Path, emails: dict[str, str]) -> None:
    lines = ["serial_number,platform,user_email,team"]
    lines += [f"{sn},macos,{emails.get(sn, sn.lower() + '@example.com')},Platform Eng" for sn in MACS]
    lines.append("LNX0001,linux,lnx@example.com,Platform Eng")
    (workdir / "inventory" / "devices.csv").write_text("\n".join(lines) + "\n")


def compile_signed(workdir: Path, *extra: str, cert: str = "pki/leaf.pem", key: str = "pki/leaf.key"):
    result = run(workdir, "compile", "--sign-cert", cert, "--sign-key", key, *extra)
    assert result.exit_code == 0, result.output
    return result


def device(workdir: Path, sn: str, name: str, out: str = "output") -> Path:
    return workdir / out / "devices" / sn / name


def verified_content(workdir: Path, signed: Path, ca: str = "pki/ca.pem") -> bytes:
    """What the real openssl extracts from a signed profile after verifying it against ``ca``."""
    result = openssl("cms", "-verify", "-binary", "-inform", "DER", "-in", str(signed), "-CAfile", ca, cwd=workdir)
    return result.stdout


def assert_embeds(workdir: Path, sn: str) -> None:
    """The Mac's signed profile verifies against the CA and carries its unsigned profile exactly."""
    assert verified_content(workdir, device(workdir, sn, SIGNED)) == device(workdir, sn, UNSIGNED).read_bytes()


def manifest(workdir: Path, out: str = "output") -> dict:
    return json.loads((workdir / out / "manifest.json").read_text())


# --- what is written -------------------------------------------------------------------------


def test_each_mac_gets_a_signed_profile_that_openssl_verifies_and_that_embeds_the_unsigned_file(project):
    compile_signed(project)
    for sn in MACS:
        unsigned = device(project, sn, UNSIGNED).read_bytes()
        signed = device(project, sn, SIGNED)
        assert verified_content(project, signed) == unsigned  # byte for byte: Binary kept the line ends
        assert not signed.read_bytes().startswith(b"<?xml")  # DER, not the XML
    assert not device(project, "LNX0001", SIGNED).exists()
    # openssl smime agrees, and checks the signer certificate is the one given
    smime = openssl("smime", "-verify", "-binary", "-inform", "DER", "-in", str(device(project, MACS[0], SIGNED)),
                    "-CAfile", "pki/ca.pem", "-signer", "signer.pem", cwd=project)
    assert smime.stdout == device(project, MACS[0], UNSIGNED).read_bytes()
    assert (project / "signer.pem").read_bytes() == (project / "pki" / "leaf.pem").read_bytes()


def test_the_manifest_lists_the_signed_file_as_derived_from_the_unsigned_one(project):
    compile_signed(project)
    entries = manifest(project)["devices"]
    leaf = x509.load_pem_x509_certificate((project / "pki" / "leaf.pem").read_bytes())
    for sn in MACS:
        files, derived = entries[sn]["files"], entries[sn]["derived"]
        assert set(files) == {UNSIGNED, SIGNED, "managed-settings.json"}
        assert files[SIGNED]["sha256"] == hashlib.sha256(device(project, sn, SIGNED).read_bytes()).hexdigest()
        assert derived == {SIGNED: {"from": UNSIGNED, "from_sha256": files[UNSIGNED]["sha256"],
                                    "signer_sha256": derived[SIGNED]["signer_sha256"]}}
        expected_signer = hashlib.sha256(hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).digest())
        assert derived[SIGNED]["signer_sha256"] == expected_signer.hexdigest()
    assert "derived" not in entries["LNX0001"]


def test_the_unsigned_files_and_their_digests_are_the_same_as_without_signing(project):
    """The unsigned tree stays canonical: signing adds files, it changes none."""
    run(project, "compile", "--out", "plain")
    compile_signed(project)
    plain, signed = manifest(project, "plain")["devices"], manifest(project)["devices"]
    for sn, entry in plain.items():
        assert {n: f for n, f in signed[sn]["files"].items() if n != SIGNED} == entry["files"]
        for name in entry["files"]:
            assert device(project, sn, name).read_bytes() == device(project, sn, name, "plain").read_bytes()


def test_compiling_without_the_signing_options_removes_the_signed_files(project):
    run(project, "compile", "--out", "plain")
    compile_signed(project)
    result = run(project, "compile")
    assert result.exit_code == 0, result.output
    assert not any(device(project, sn, SIGNED).exists() for sn in MACS)
    assert (project / "output" / "manifest.json").read_bytes() == (project / "plain" / "manifest.json").read_bytes()


# --- only what changed is signed -------------------------------------------------------------


def _stats(workdir: Path) -> dict[str, tuple[int, int]]:
    return {sn: (device(workdir, sn, SIGNED).stat().st_ino, device(workdir, sn, SIGNED).stat().st_mtime_ns)
            for sn in MACS}


def test_a_quiet_night_signs_nothing_and_writes_nothing(project):
    compile_signed(project)
    before, manifest_bytes = _stats(project), (project / "output" / "manifest.json").read_bytes()
    tree = snapshot(project / "output")
    result = compile_signed(project, "-v")
    assert "(nothing written)" in result.output
    assert "signed 0 profile(s); 3 unchanged signed profile(s) kept" in result.output
    assert _stats(project) == before
    assert snapshot(project / "output") == tree
    assert (project / "output" / "manifest.json").read_bytes() == manifest_bytes


def test_a_changed_mac_is_the_only_one_signed_again(project):
    compile_signed(project)
    before = _stats(project)
    write_fleet(project, {MACS[1]: "someone.else@example.com"})
    result = compile_signed(project, "-v")
    assert "signed 1 profile(s); 2 unchanged signed profile(s) kept" in result.output
    after = _stats(project)
    assert [sn for sn in MACS if after[sn] != before[sn]] == [MACS[1]]
    assert b"someone.else" in device(project, MACS[1], UNSIGNED).read_bytes()
    assert_embeds(project, MACS[1])
    entry = manifest(project)["devices"][MACS[1]]
    assert entry["derived"][SIGNED]["from_sha256"] == entry["files"][UNSIGNED]["sha256"]


def test_a_renewed_certificate_signs_every_mac_again(project):
    compile_signed(project)
    before = manifest(project)["devices"][MACS[0]]["derived"][SIGNED]["signer_sha256"]
    result = compile_signed(project, "-v", cert="pki/renewed.pem", key="pki/renewed.key")
    assert "signed 3 profile(s); 0 unchanged" in result.output
    assert manifest(project)["devices"][MACS[0]]["derived"][SIGNED]["signer_sha256"] != before
    signer = openssl("cms", "-verify", "-binary", "-inform", "DER", "-in", str(device(project, MACS[0], SIGNED)),
                     "-CAfile", "pki/ca.pem", "-signer", "signer.pem", cwd=project)
    assert signer.returncode == 0
    assert (project / "signer.pem").read_bytes() == (project / "pki" / "renewed.pem").read_bytes()


def test_a_deleted_or_edited_signed_file_is_signed_again(project):
    compile_signed(project)
    device(project, MACS[0], SIGNED).unlink()
    device(project, MACS[2], SIGNED).write_bytes(b"tampered")
    result = compile_signed(project)
    assert "Repaired 2 files" in result.output
    for sn in (MACS[0], MACS[2]):
        assert_embeds(project, sn)


def test_a_full_compile_checks_the_signed_files_and_keeps_them(project):
    compile_signed(project)
    before = _stats(project)
    result = compile_signed(project, "--full", "-v")
    assert "signed 0 profile(s); 3 unchanged signed profile(s) kept" in result.output
    assert _stats(project) == before


def test_a_manifest_whose_derived_entry_names_no_listed_file_is_not_an_mdmgen_manifest(project):
    compile_signed(project)
    path = project / "output" / "manifest.json"
    path.write_text(path.read_text().replace('"from": "claude-code.mobileconfig"', '"from": "elsewhere.mobileconfig"'))
    with pytest.raises(output.OutputError, match="not a valid mdmgen manifest"):
        output.read(project / "output")


def test_pkcs12_with_its_password_from_the_environment(project, monkeypatch):
    monkeypatch.setenv("MDMGEN_SIGN_P12_PASSWORD", P12_PASSWORD)
    result = run(project, "compile", "--sign-p12", "pki/leaf.p12")
    assert result.exit_code == 0, result.output
    assert P12_PASSWORD not in result.output
    for sn in MACS:
        assert_embeds(project, sn)


def test_an_encrypted_pem_key_with_its_password_from_the_environment(project, monkeypatch):
    monkeypatch.setenv("MDMGEN_SIGN_KEY_PASSWORD", KEY_PASSWORD)
    compile_signed(project, key="pki/leaf.enc.key")
    assert_embeds(project, MACS[0])


def test_a_certificate_about_to_expire_signs_with_a_warning(project):
    result = compile_signed(project, cert="pki/ending.pem", key="pki/ending.key")
    assert "pki/ending.pem: the signing certificate expires on " in result.output
    assert "(in 5 day(s)); renew it before then" in result.output
    assert "expires on" not in compile_signed(project).output  # 30 days left: no warning


def test_a_key_password_set_for_an_unencrypted_key_does_no_harm(project, monkeypatch):
    monkeypatch.setenv("MDMGEN_SIGN_KEY_PASSWORD", KEY_PASSWORD)
    compile_signed(project)
    assert_embeds(project, MACS[0])


def test_an_ec_identity_signs_too(project):
    compile_signed(project, cert="pki/ec.pem", key="pki/ec.key")
    for sn in MACS:
        content = verified_content(project, device(project, sn, SIGNED), ca="pki/ec.pem")
        assert content == device(project, sn, UNSIGNED).read_bytes()


def test_a_chain_after_the_certificate_is_included(project):
    (project / "pki" / "chain.pem").write_bytes((project / "pki" / "leaf.pem").read_bytes()
                                                + (project / "pki" / "ca.pem").read_bytes())
    compile_signed(project, cert="pki/chain.pem")
    certs = openssl("pkcs7", "-inform", "DER", "-in", str(device(project, MACS[0], SIGNED)), "-print_certs",
                    cwd=project).stdout.decode()
    assert "mdmgen test CA" in certs and "mdmgen test leaf" in certs


# --- refused before anything is written --------------------------------------------------------


REFUSED = [
    (["--sign-cert", "pki/expired.pem", "--sign-key", "pki/expired.key"], {}, 1,
     "pki/expired.pem: --sign-cert: the certificate expired on "),
    (["--sign-cert", "pki/future.pem", "--sign-key", "pki/future.key"], {}, 1,
     "pki/future.pem: --sign-cert: the certificate is not valid before "),
    (["--sign-cert", "pki/nosign.pem", "--sign-key", "pki/nosign.key"], {}, 1,
     "pki/nosign.pem: --sign-cert: the certificate's key usage does not include digitalSignature"),
    (["--sign-cert", "pki/leaf.pem", "--sign-key", "pki/stray.key"], {}, 1,
     "pki/stray.key: --sign-key: does not match the certificate in pki/leaf.pem"),
    (["--sign-cert", "pki/leaf.pem", "--sign-key", "pki/leaf.enc.key"], {}, 1,
     "pki/leaf.enc.key: --sign-key: the key is encrypted: set MDMGEN_SIGN_KEY_PASSWORD"),
    (["--sign-cert", "pki/leaf.pem", "--sign-key", "pki/leaf.enc.key"], {"MDMGEN_SIGN_KEY_PASSWORD": "wrong"}, 1,
     "pki/leaf.enc.key: --sign-key: not a readable PEM private key or MDMGEN_SIGN_KEY_PASSWORD is not its password"),
    (["--sign-p12", "pki/leaf.p12"], {"MDMGEN_SIGN_P12_PASSWORD": "wrong"}, 1,
     "pki/leaf.p12: --sign-p12: cannot open the PKCS#12 file: MDMGEN_SIGN_P12_PASSWORD is not its password"),
    (["--sign-p12", "pki/leaf.p12"], {}, 1,
     "pki/leaf.p12: --sign-p12: cannot open the PKCS#12 file: it is protected by a password: set "
     "MDMGEN_SIGN_P12_PASSWORD"),
    (["--sign-p12", "pki/leaf.pem"], {"MDMGEN_SIGN_P12_PASSWORD": "wrong"}, 1,
     "pki/leaf.pem: --sign-p12: cannot open the PKCS#12 file: this is a PEM file, not PKCS#12: pass the "
     "certificate with --sign-cert and the key with --sign-key"),
    (["--sign-p12", "pki/cut.p12"], {"MDMGEN_SIGN_P12_PASSWORD": P12_PASSWORD}, 1,
     "pki/cut.p12: --sign-p12: cannot open the PKCS#12 file: the file is damaged: it should be "),
    (["--sign-p12", "pki/leaf.der"], {"MDMGEN_SIGN_P12_PASSWORD": P12_PASSWORD}, 1,
     "pki/leaf.der: --sign-p12: cannot open the PKCS#12 file: not a PKCS#12 file (.p12 or .pfx)"),
    (["--sign-cert", "pki/leaf.key", "--sign-key", "pki/leaf.key"], {}, 1,
     "pki/leaf.key: --sign-cert: not a PEM certificate"),
    (["--sign-cert", "pki/missing.pem", "--sign-key", "pki/leaf.key"], {}, 1,
     "pki/missing.pem: --sign-cert: no such file"),
    (["--sign-cert", "pki", "--sign-key", "pki/leaf.key"], {}, 1, "pki: --sign-cert: is not a regular file"),
    (["--sign-cert", "pki/leaf.pem"], {}, 2, "--sign-cert and --sign-key go together"),
    (["--sign-key", "pki/leaf.key"], {}, 2, "--sign-cert and --sign-key go together"),
    (["--sign-p12", "pki/leaf.p12", "--sign-cert", "pki/leaf.pem"], {}, 2, "do not also pass --sign-cert"),
]


@pytest.mark.parametrize(("args", "env", "code", "message"), REFUSED, ids=[m[:40] for *_, m in REFUSED])
def test_a_bad_signing_identity_is_one_line_and_nothing_is_written(project, monkeypatch, args, env, code, message):
    compile_signed(project)
    tree = snapshot(project / "output")
    for name in ("MDMGEN_SIGN_KEY_PASSWORD", "MDMGEN_SIGN_P12_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    write_fleet(project, {MACS[0]: "changed@example.com"})  # there would be something to write
    result = run(project, "compile", *args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    if code == 1:
        assert [line for line in result.output.splitlines() if line.startswith("pki")] == [
            line for line in result.output.splitlines() if message in line]
    assert snapshot(project / "output") == tree
    for secret in ("PRIVATE KEY", P12_PASSWORD, KEY_PASSWORD, "wrong"):
        assert secret not in result.output.replace("MDMGEN_SIGN", "")


# --- the one reader, diff and the publishers -----------------------------------------------------


def test_the_reader_accepts_signed_files_and_refuses_a_planted_one(project):
    compile_signed(project)
    output.read(project / "output")  # every digest, and every signed file's embedded content
    (device(project, MACS[0], "claude-code.extra.mobileconfig")).write_bytes(device(project, MACS[0], SIGNED)
                                                                            .read_bytes())
    with pytest.raises(output.OutputError, match=r"claude-code\.extra\.mobileconfig is not in manifest\.json"):
        output.read(project / "output")


def test_the_reader_refuses_a_signed_file_that_embeds_another_profile(project):
    """Structural, not only digests: a manifest edited to vouch for another signed file is caught."""
    compile_signed(project)
    other = device(project, MACS[1], SIGNED).read_bytes()
    device(project, MACS[0], SIGNED).unlink()
    device(project, MACS[0], SIGNED).write_bytes(other)
    data = manifest(project)
    data["devices"][MACS[0]]["files"][SIGNED] = {"sha256": hashlib.sha256(other).hexdigest(), "size": len(other)}
    text = (project / "output" / "manifest.json").read_text()
    line = next(line for line in text.splitlines() if line.strip().startswith(f'"{MACS[0]}"'))
    entry = json.dumps(data["devices"][MACS[0]], sort_keys=True, ensure_ascii=False, separators=(", ", ": "))
    (project / "output" / "manifest.json").write_text(text.replace(line, f'    "{MACS[0]}": {entry},'))
    with pytest.raises(output.OutputError, match=f"devices/{MACS[0]}/{SIGNED} does not embed {UNSIGNED} byte for byte"):
        output.read(project / "output")


def test_the_embedded_content_reader_refuses_what_is_not_an_attached_signature():
    with pytest.raises(ValueError, match="not a CMS signed profile"):
        cms.embedded_content(b'<?xml version="1.0"?><plist/>')
    with pytest.raises(ValueError):
        cms.embedded_content(b"\x30\x84\xff\xff\xff\xff")  # a length far past the end


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_the_embedded_content_reader_answers_any_bytes_with_content_or_one_value_error(data):
    try:
        content = cms.embedded_content(b"\x30" + data)
    except ValueError as exc:
        assert "\n" not in str(exc)
    else:
        assert len(content) < len(data)


def test_every_truncation_of_a_signed_profile_is_refused(project):
    compile_signed(project)
    signed = device(project, MACS[0], SIGNED).read_bytes()
    assert cms.embedded_content(signed) == device(project, MACS[0], UNSIGNED).read_bytes()
    for cut in range(0, len(signed), 7):
        with pytest.raises(ValueError):
            cms.embedded_content(signed[:cut])


def test_diff_compares_the_unsigned_profiles_and_ignores_signatures(project):
    compile_signed(project, "--out", "a")
    compile_signed(project, "--out", "b", cert="pki/renewed.pem", key="pki/renewed.key")  # other signatures
    assert device(project, MACS[0], SIGNED, "a").read_bytes() != device(project, MACS[0], SIGNED, "b").read_bytes()
    same = run(project, "diff", "a", "b")
    assert same.exit_code == 0, same.output
    write_fleet(project, {MACS[2]: "changed@example.com"})
    compile_signed(project, "--out", "b", cert="pki/renewed.pem", key="pki/renewed.key")
    changed = run(project, "diff", "a", "b")
    assert changed.exit_code == 1, changed.output
    assert f"~ {MACS[2]}" in changed.output and "changed" in changed.output.split(f"~ {MACS[2]}")[1]
    assert "signed profile" not in changed.output  # the change is shown once, from the unsigned files
    run(project, "compile", "--out", "plain")
    turned_on = run(project, "diff", "plain", "a")
    assert turned_on.exit_code == 1
    assert f"signed profile {SIGNED}: (absent) -> \"present\"" in turned_on.output


def test_s3_publishes_the_signed_profiles_as_profiles_and_a_republish_uploads_nothing(project, monkeypatch, tmp_path):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                        "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")
                        }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    compile_signed(project)
    with S3Server() as s3:
        client = s3.client()
        client.create_bucket(Bucket="fleet")
        first = run(project, "publish", "s3://fleet/prod", "--endpoint-url", s3.url)
        assert first.exit_code == 0, first.output
        for sn in MACS:
            got = client.get_object(Bucket="fleet", Key=f"prod/devices/{sn}/{SIGNED}")
            assert got["Body"].read() == device(project, sn, SIGNED).read_bytes()
            assert got["ContentType"] == "application/x-apple-aspen-config"
        s3.reset_counts()
        compile_signed(project)  # a quiet night
        again = run(project, "publish", "s3://fleet/prod", "--endpoint-url", s3.url)
        assert again.exit_code == 0, again.output
        assert s3.requests("PUT") == []


def test_jamf_gets_the_unsigned_profile_only(project, monkeypatch):
    monkeypatch.setenv("JAMF_CLIENT_ID", DEFAULT_CLIENT_ID)
    monkeypatch.setenv("JAMF_CLIENT_SECRET", DEFAULT_CLIENT_SECRET)
    compile_signed(project)
    with FakeJamfServer([Computer(100 + i, f"mac-{i}", sn) for i, sn in enumerate(MACS)]) as jamf:
        result = run(project, "publish", "jamf", "--url", jamf.url)
        assert result.exit_code == 0, result.output
        assert "3 uploaded (3 new, 0 changed)" in result.output
        posts = [r for r in jamf.requests if r.method == "POST" and "osxconfigurationprofiles" in r.path]
        assert len(posts) == 3
        for record in posts:
            payload = (ET.fromstring(record.body).findtext("general/payloads") or "").encode()
            sent = plistlib.loads(payload)  # XML: a signed (DER) profile would not parse
            sn = sent["PayloadIdentifier"].rsplit(".", 1)[1]
            assert sent == plistlib.loads(device(project, sn, UNSIGNED).read_bytes())
        assert jamf.internal_errors == []


def test_the_private_key_never_reaches_the_output(project):
    compile_signed(project)
    key = serialization.load_pem_private_key((project / "pki" / "leaf.key").read_bytes(), None)
    numbers = key.private_numbers()
    secret = b"".join(n.to_bytes((n.bit_length() + 7) // 8, "big") for n in (numbers.d, numbers.p, numbers.q))
    windows = [secret[i:i + 24] for i in range(0, len(secret) - 24, 24)]  # pieces of d, p and q
    for path in (project / "output").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"PRIVATE KEY" not in data and not any(w in data for w in windows), path


def test_a_signed_profile_that_embeds_a_secret_is_mode_0600_like_its_profile(project, monkeypatch):
    """The signed file carries its profile, token included: it is as private as the profile."""
    import stat

    import yaml

    path = project / "profiles" / "policy.yaml"
    policy = yaml.safe_load(path.read_text(encoding="utf-8"))
    policy["variables"]["otlp_protocol"] = "http/protobuf"
    policy["settings"]["env"]["OTEL_EXPORTER_OTLP_HEADERS"] = 'Authorization=Bearer {{ secret("SIGN_TOKEN") }}'
    path.write_text(yaml.safe_dump(policy, sort_keys=False), encoding="utf-8")
    monkeypatch.setenv("SIGN_TOKEN", "tok-Sg7Kq2Lm9Vb4Xc1Z")
    compile_signed(project)
    for sn in MACS:
        for name in (UNSIGNED, SIGNED):
            assert stat.S_IMODE(device(project, sn, name).stat().st_mode) == 0o600, (sn, name)
        assert_embeds(project, sn)
