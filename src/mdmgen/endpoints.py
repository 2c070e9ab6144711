"""Where credentials may travel: the one rule every network-facing part of mdmgen applies.

Compiled settings (OTLP endpoints), publishers (S3, Jamf, Graph) and preflight all send secrets
to URLs. They must go over https; plain http is accepted only to the machine itself (loopback),
which is what test servers and local collectors use. URLs never carry credentials themselves.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import SplitResult, urlsplit


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 and ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_http_url(url: str) -> SplitResult:
    """The parts of an http(s) URL with a host (and a numeric port, if any); ValueError otherwise."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return parts


def may_carry_credentials(parts: SplitResult) -> bool:
    """The rule itself: https, or plain http to this machine."""
    return parts.scheme == "https" or is_loopback(parts.hostname or "")


def check_url(url: str, *, credentials_go: str) -> str:
    """An http(s) URL with a host, no user:password, plain http only to loopback.

    Raises ValueError with a message for the user; ``credentials_go`` says where credentials
    belong instead of the URL (e.g. "in OTEL_EXPORTER_OTLP_HEADERS")."""
    parts = split_http_url(url)
    if parts.username or parts.password:
        raise ValueError(f"must not carry credentials in the URL; they go {credentials_go}")
    if not may_carry_credentials(parts):
        raise ValueError("plain http is only allowed to a loopback host; use https")
    return url
