"""Why azure-identity could not get a token, in words that point at what to fix.

azure-identity wraps every failure of ``get_token`` in ``ClientAuthenticationError("Authentication
failed: ...")``: a wrong secret, but also a name that does not resolve, a refused connection, a
proxy that says no, and a TLS certificate nobody trusts. Reading them all as "refused the
credentials" sends IT to rotate a secret that was never the problem. The cause is in the exception
chain (``__cause__``, azure-core's ``inner_exception``, urllib3's ``reason``), whichever transport
the credential uses (requests and urllib3 today; httpx or the standard library raise the same
standard exceptions underneath), so the chain is walked and the first network cause wins.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit

from ...http import TransportFailure, proxy_for

_TRANSPORT_KINDS = {"tls": "tls", "proxy": "proxy", "dns": "dns", "timeout": "timeout", "connect": "refused"}
"""The HTTP layer's failure kinds (``TransportFailure.kind``) that have their own wording here."""
_OAUTH_REFUSALS = ("invalid_client", "unauthorized_client", "invalid_grant", "invalid_scope", "AADSTS")
_CHECK_CREDENTIALS = ("check AZURE_TENANT_ID, AZURE_CLIENT_ID and the secret, certificate or federated token, and "
                      "AZURE_AUTHORITY_HOST")


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps, each once."""
    todo, seen = [exc], set()
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen or not isinstance(current, BaseException):
            continue
        seen.add(id(current))
        yield current
        todo += [current.__cause__, current.__context__, getattr(current, "inner_exception", None),
                 getattr(current, "reason", None), *(a for a in current.args if isinstance(a, BaseException))]


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def kind_of(exc: BaseException) -> str:
    """``tls``, ``proxy``, ``dns``, ``timeout``, ``refused`` (the connection), ``tenant`` (discovery
    found no such tenant), ``credentials`` (Entra ID said no) or ``other``."""
    chain = list(causes(exc))
    # Through mdmgen's bounded transport (.transport), the HTTP layer already classified the failure.
    failure = next((e for e in chain if isinstance(e, TransportFailure)), None)
    if failure is not None and failure.kind in _TRANSPORT_KINDS:
        return _TRANSPORT_KINDS[failure.kind]
    text = " ".join(str(e) for e in chain)
    names = set().union(*(_names(e) for e in chain))
    found = {
        "tls": any(isinstance(e, ssl.SSLError) for e in chain) or "SSLError" in names
        or "CERTIFICATE_VERIFY_FAILED" in text,
        "proxy": "ProxyError" in names or "Unable to connect to proxy" in text or "Tunnel connection failed" in text,
        "dns": any(isinstance(e, socket.gaierror) for e in chain) or "NameResolutionError" in names
        or "Failed to resolve" in text or "Name or service not known" in text or "nodename nor servname" in text,
        # before timeouts: urllib3's NewConnectionError is a subclass of its ConnectTimeoutError
        "refused": any(isinstance(e, ConnectionRefusedError) for e in chain) or "Connection refused" in text,
        "timeout": any(isinstance(e, TimeoutError) for e in chain) or "timed out" in text
        or bool(names & {"ConnectTimeout", "ReadTimeout", "Timeout", "ReadTimeoutError", "TimeoutException"}),
    }
    for kind, present in found.items():
        if present:
            return kind
    if "Unable to get authority configuration" in text or "OIDC Discovery failed" in text:
        return "tenant"
    if any(marker in text for marker in _OAUTH_REFUSALS) or "ClientAuthenticationError" in _names(exc):
        return "credentials"
    return "other"


def describe(exc: BaseException, authority: str, reason: str) -> str:
    """The one line for a failed token request to ``authority`` (an https URL); ``reason`` is the
    library's own first line, already redacted."""
    host = urlsplit(authority).netloc or authority
    proxy = proxy_for(authority)
    via = f" through the proxy {proxy}" if proxy else ""
    kind = kind_of(exc)
    if kind == "tls":
        return (f"could not verify the TLS certificate of Microsoft Entra ID at {host}{via} ({reason}); if a "
                "private CA or a TLS-inspecting proxy signs it, set REQUESTS_CA_BUNDLE or SSL_CERT_FILE to its "
                "certificate")
    if kind == "proxy":
        return (f"the proxy {proxy or '(from HTTPS_PROXY)'} refused or could not open the connection to Microsoft "
                f"Entra ID at {host} ({reason}); check HTTPS_PROXY and NO_PROXY")
    if kind == "dns":
        return (f"cannot resolve {urlsplit(authority).hostname or host}, the Microsoft Entra ID host (DNS); check "
                "AZURE_AUTHORITY_HOST and this machine's network")
    if kind == "timeout":
        return f"Microsoft Entra ID at {host}{via} did not answer in time ({reason}); check the network and try again"
    if kind == "refused":
        return (f"cannot connect to Microsoft Entra ID at {host}{via}: the connection was refused; check "
                "AZURE_AUTHORITY_HOST and that the host is reachable")
    if kind == "tenant":
        return (f"Microsoft Entra ID at {host} does not know the tenant in AZURE_TENANT_ID ({reason}); check "
                "AZURE_TENANT_ID, and AZURE_AUTHORITY_HOST for a national cloud")
    if kind == "credentials":
        return f"Microsoft Entra ID refused the credentials: {reason}; {_CHECK_CREDENTIALS}"
    return f"could not get a Microsoft Graph access token from {host}: {reason}"
