"""A malformed environment variable is a usage error (exit 2) in one line that names it, before any
request: not an internal error from deep inside azure-identity, httpx or botocore, and not a TLS or
"refused the credentials" message that blames the server."""

from __future__ import annotations

from pathlib import Path

import pytest

from .intune_helpers import publish as publish_intune
from .test_publish_intune_auth import graph, ready, tls_files, trap  # noqa: F401 (fixtures)
from .test_publish_jamf import compile_fleet as compile_macs
from .test_publish_jamf import jamf, jamf_env  # noqa: F401 (fixtures)
from .test_publish_jamf import publish as publish_jamf
from .test_publish_s3 import DEST, aws_env, compile_fleet, s3  # noqa: F401 (fixtures)

NOT_UTF8 = "s3cr\udcffet-value"  # the byte 0xff, as Python keeps it from a non-UTF-8 environment


def one_usage_error(result, name: str) -> str:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {name}: "), result.stderr
    assert "Traceback" not in result.output and "internal error" not in result.output
    return errors[0]


INTUNE_CASES = [
    ("AZURE_AUTHORITY_HOST", "http://login.example.com", "must be https://HOST"),
    ("AZURE_AUTHORITY_HOST", "https://admin:hunter22@login.example.com", "without credentials"),
    ("AZURE_TENANT_ID", "contoso tenant/../x", "must be the tenant's ID"),
    ("AZURE_CLIENT_ID", "id with\nnewline", "must be the app registration's client ID"),
    ("AZURE_CLIENT_CERTIFICATE_PATH", "/nonexistent/app.pem", "no such file: /nonexistent/app.pem"),
    ("AZURE_FEDERATED_TOKEN_FILE", "/nonexistent/token", "no such file: /nonexistent/token"),
    ("AZURE_CLIENT_SECRET", NOT_UTF8, "holds bytes that are not UTF-8"),
    ("REQUESTS_CA_BUNDLE", "/nonexistent/ca.pem", "no such file: /nonexistent/ca.pem"),
    ("SSL_CERT_FILE", "/nonexistent/ca.pem", "no such file: /nonexistent/ca.pem"),
    ("HTTPS_PROXY", "http://[::1", "is not a proxy URL"),
    ("HTTPS_PROXY", "http://proxy.example:port", "is not a proxy URL"),
    ("HTTPS_PROXY", "ftp://proxy.example:21", "a proxy URL must start with http://"),
    ("MDMGEN_TRUSTSTORE", "yes", "must be 1 (on) or 0 (off)"),
]


@pytest.mark.parametrize(("name", "value", "says"), INTUNE_CASES)
def test_a_malformed_variable_for_intune_is_a_usage_error_naming_it(workdir: Path, graph, monkeypatch,  # noqa: F811
                                                                      name, value, says):
    ready(workdir, graph)
    if name in ("AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_FEDERATED_TOKEN_FILE"):
        monkeypatch.delenv("AZURE_CLIENT_SECRET")
    monkeypatch.setenv(name, value)
    line = one_usage_error(publish_intune(workdir, graph), name)
    assert says in line
    assert "hunter22" not in line and "s3cr" not in line
    assert graph.requests == []  # not even a token request


JAMF_CASES = [
    ("JAMF_CLIENT_SECRET", NOT_UTF8, "holds bytes that are not UTF-8"),
    ("https_proxy", "http://[::1", "is not a proxy URL"),
    ("SSL_CERT_FILE", "/nonexistent/ca.pem", "no such file"),
]


@pytest.mark.parametrize(("name", "value", "says"), JAMF_CASES)
def test_a_malformed_variable_for_jamf_is_a_usage_error_naming_it(workdir: Path, jamf, monkeypatch,  # noqa: F811
                                                                    name, value, says):
    compile_macs(workdir, range(2))
    monkeypatch.setenv(name, value)
    line = one_usage_error(publish_jamf(workdir, jamf), name)
    assert says in line and "s3cr" not in line
    assert jamf.requests == []


S3_CASES = [
    ("AWS_DEFAULT_REGION", "us east 1", "is not an AWS region name"),
    ("AWS_PROFILE", "nope", "could not be found"),
    # AWS_MAX_ATTEMPTS is not here: mdmgen pins the attempts (s3.S3_ATTEMPTS), so botocore never reads it.
    ("AWS_ENDPOINT_URL", "http://[::1", "cannot be used"),
    ("AWS_CONFIG_FILE", None, "cannot be parsed"),
    ("AWS_CA_BUNDLE", "/nonexistent/ca.pem", "no such file: /nonexistent/ca.pem"),
    ("HTTPS_PROXY", "http://proxy.example:port", "is not a proxy URL"),
]


@pytest.mark.parametrize(("name", "value", "says"), S3_CASES)
def test_a_malformed_aws_variable_is_a_usage_error_naming_it(workdir: Path, s3, monkeypatch, tmp_path,  # noqa: F811
                                                             name, value, says):
    out = compile_fleet(workdir, range(2))
    if value is None:
        value = str(tmp_path / "aws-config")
        Path(value).write_text("[default\nregion = = =\n")
    monkeypatch.setenv(name, value)
    args = ["publish", DEST, "--out", str(out)]
    if name != "AWS_ENDPOINT_URL":
        args += ["--endpoint-url", s3.url]
    from .conftest import run

    line = one_usage_error(run(workdir, *args), name)
    assert says in line
    assert s3.requests("PUT") == [] and s3.requests("GET") == []


def test_a_bad_region_option_is_named_as_the_option(workdir: Path, s3, monkeypatch):  # noqa: F811
    from .conftest import run

    out = compile_fleet(workdir, range(2))
    result = run(workdir, "publish", DEST, "--out", str(out), "--endpoint-url", s3.url, "--region", "moon base")
    assert "--region: is not an AWS region name" in one_usage_error(result, "--region")


def test_the_values_that_work_still_work(workdir: Path, graph, monkeypatch):  # noqa: F811
    """The fixture's own values (a loopback https authority, a CA file, a loopback proxy for
    everything else) pass the checks, and so does MDMGEN_TRUSTSTORE=0."""
    ready(workdir, graph)
    monkeypatch.setenv("MDMGEN_TRUSTSTORE", "0")
    result = publish_intune(workdir, graph)
    assert result.exit_code == 0, result.output


def test_a_pseudonym_key_that_is_not_utf8_is_used_as_the_bytes_it_is(tmp_path: Path):
    """Python keeps non-UTF-8 environment bytes as surrogates; the key is those bytes (as a key file
    holding them gives), not an internal error."""
    from mdmgen.secrets import KEY_ENV, KEY_FILE_ENV, load_key

    raw = b"\xff\xfe-latin1-key-\xe4\xf6\xfc-0123456789abcdef"
    key_file = tmp_path / "key"
    key_file.write_bytes(raw)
    from_env = load_key({KEY_ENV: raw.decode("utf-8", "surrogateescape")})
    from_file = load_key({KEY_FILE_ENV: str(key_file)})
    assert from_env.key_id == from_file.key_id


def test_a_signing_password_that_is_not_utf8_opens_the_key(tmp_path: Path):
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from mdmgen.messages import SIGN_KEY_PASSWORD_ENV
    from mdmgen.signing import load_signer

    password = b"p\xe4ssw\xf6rd"  # Latin-1, as an old shell profile might export it
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mdmgen test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=90))
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.BestAvailableEncryption(password)))
    signer = load_signer(cert=tmp_path / "cert.pem", key=tmp_path / "key.pem",
                         environ={SIGN_KEY_PASSWORD_ENV: password.decode("utf-8", "surrogateescape")})
    assert signer.certificate == cert


def test_a_stale_variable_that_only_another_library_reads_blocks_nothing(workdir: Path, s3, monkeypatch):  # noqa: F811
    """botocore reads AWS_CA_BUNDLE, not REQUESTS_CA_BUNDLE or SSL_CERT_FILE: those stay another tool's business."""
    from .conftest import run

    out = compile_fleet(workdir, range(2))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/ca.pem")
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/ca.pem")
    result = run(workdir, "publish", DEST, "--out", str(out), "--endpoint-url", s3.url)
    assert result.exit_code == 0, result.output
