"""Environment variables checked before they are used, so a malformed one is a usage error naming it.

Libraries read these variables too (httpx and OpenSSL the proxies and CA files, azure-identity the
``AZURE_*`` ones, botocore the ``AWS_*`` ones), and each fails in its own way on a bad value: a
``ValueError`` deep inside azure-identity, a TLS failure that blames the server for a CA file that
does not exist, a proxy URL that cannot be parsed. mdmgen checks the values it knows before the
first request, and says which variable to fix: exit 2, one line, the value itself only when it
cannot be a secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from .endpoints import is_loopback
from .errors import MdmgenException
from .exitcodes import ExitCode

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
HTTPX_CA = ("SSL_CERT_FILE",)
"""What mdmgen's own HTTP layer (httpx on OpenSSL's defaults) reads, with ``SSL_CERT_DIR``."""
REQUESTS_CA = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
"""What azure-identity's transport (requests) reads besides ``SSL_CERT_FILE``, which mdmgen hands it."""
BOTOCORE_CA = ("AWS_CA_BUNDLE",)
_PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")
_TENANT_RE = re.compile(r"[A-Za-z0-9.-]+")  # azure-identity's own rule (validate_tenant_id)
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")  # printable ASCII without spaces


class EnvironmentValueError(MdmgenException):
    """A variable holds a value mdmgen cannot use; the message starts with its name (exit 2)."""

    exit_code = ExitCode.USAGE

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name


def text(environ: Mapping[str, str], name: str) -> str:
    """The variable's value ("" when unset); refused when it holds bytes that are not UTF-8 (Python
    keeps them as lone surrogates, which no HTTP library can send)."""
    value = environ.get(name, "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise EnvironmentValueError(name, "holds bytes that are not UTF-8 text; set it again as UTF-8") from None
    return value


def check_network(environ: Mapping[str, str] | None = None, *, ca_files: tuple[str, ...] = HTTPX_CA,
                  truststore: bool = True) -> None:
    """What a network command's libraries read: the proxies, the CA variables of those libraries
    (``ca_files``; only theirs, so a stale variable another tool reads blocks nothing), and, for
    mdmgen's own HTTP layer, ``SSL_CERT_DIR`` and the truststore switch."""
    env = os.environ if environ is None else environ
    for name in PROXY_VARIABLES:
        if value := text(env, name).strip():
            _check_proxy(name, value)
    for name in ca_files:
        if value := text(env, name):
            _check_file(name, value, "a PEM file of CA certificates")
    if not truststore:
        return
    if value := text(env, "SSL_CERT_DIR"):
        for part in value.split(os.pathsep):
            if part and not Path(part).is_dir():
                raise EnvironmentValueError("SSL_CERT_DIR", f"{part!r} is not a folder")
    if text(env, "MDMGEN_TRUSTSTORE").strip() not in ("", "0", "1"):
        raise EnvironmentValueError("MDMGEN_TRUSTSTORE", "must be 1 (on) or 0 (off)")


def check_azure(environ: Mapping[str, str] | None = None) -> None:
    """The ``AZURE_*`` values azure-identity would otherwise refuse with a ValueError or an OSError."""
    env = os.environ if environ is None else environ
    for name in ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_USERNAME", "AZURE_PASSWORD"):
        text(env, name)
    if (tenant := text(env, "AZURE_TENANT_ID")) and not _TENANT_RE.fullmatch(tenant):
        raise EnvironmentValueError("AZURE_TENANT_ID", "must be the tenant's ID (a GUID) or its domain "
                                    "(letters, digits, '-' and '.'), as Entra ID shows it")
    if (client := text(env, "AZURE_CLIENT_ID")) and not _TOKEN_RE.fullmatch(client):
        raise EnvironmentValueError("AZURE_CLIENT_ID", "must be the app registration's client ID (a GUID), "
                                    "without spaces or control characters")
    if authority := text(env, "AZURE_AUTHORITY_HOST").strip():
        _check_authority(authority)
    for name, what in (("AZURE_CLIENT_CERTIFICATE_PATH", "a PEM file holding the certificate and its key"),
                       ("AZURE_FEDERATED_TOKEN_FILE", "the file holding the federated token")):
        if value := text(env, name):
            _check_file(name, value, what)


def _check_authority(value: str) -> None:
    name = "AZURE_AUTHORITY_HOST"
    try:
        parts = urlsplit(value if "://" in value else f"https://{value}")
        host, _port = parts.hostname, parts.port
    except ValueError:
        raise EnvironmentValueError(name, "is not a URL; give https://HOST, e.g. https://login.microsoftonline.com"
                                    ) from None
    if parts.scheme != "https":
        where = "even to loopback, " if host and is_loopback(host) else ""
        raise EnvironmentValueError(name, f"must be https://HOST (azure-identity refuses plain {parts.scheme}, "
                                    f"{where}so a token request is never sent unencrypted)")
    if not host or parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise EnvironmentValueError(name, "must be https://HOST[:PORT], e.g. https://login.microsoftonline.com, "
                                    "without credentials or a query")


def _check_proxy(name: str, value: str) -> None:
    """A proxy URL httpx can use; its user:password is never repeated."""
    try:
        parts = urlsplit(value if "://" in value else f"http://{value}")
        host, _port = parts.hostname, parts.port
    except ValueError:
        host = None
    if not host:
        raise EnvironmentValueError(name, "is not a proxy URL; give http://HOST:PORT")
    if parts.scheme not in _PROXY_SCHEMES:
        raise EnvironmentValueError(name, f"a proxy URL must start with {', '.join(s + '://' for s in _PROXY_SCHEMES)}"
                                    f", not {parts.scheme}://")


def _check_file(name: str, value: str, what: str) -> None:
    path = Path(value)
    if not path.exists():
        raise EnvironmentValueError(name, f"no such file: {value} (it should name {what})")
    if not path.is_file():
        raise EnvironmentValueError(name, f"{value} is not a file (it should name {what})")
