"""Where a device's OTLP telemetry goes, read from its ``env`` by the rule Claude Code follows: the one
rule that compile (the collector side's receivers, see ``destinations``) and ``mdmgen preflight``
(what it checks) both read destinations by.

It sits below both: compile must not load preflight (nor, through it, the HTTP layer) to know where
its devices send telemetry.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from urllib.parse import urlsplit

from . import attributes, envschema
from . import secrets as secret_refs
from .endpoints import may_carry_credentials, split_http_url
from .messages import REDACTED

SIGNALS = ("metrics", "logs")
OTLP_PROTOCOLS = typing.get_args(envschema.Protocol)
"""The protocols the env schema admits (one list for compile and preflight); each one other than
grpc has its empty body in preflight (tests/test_preflight.py checks that)."""
DEFAULT_PORTS = {"grpc": 4317, "http": 4318}


@dataclass(frozen=True)
class Target:
    """Where one signal of a device goes, as the client would send it."""

    signal: str
    protocol: str
    endpoint: str  # as written in the settings (the base or the per-signal variable)
    url: str  # what is contacted: the POST URL for http, the endpoint for grpc
    headers: tuple[tuple[str, str], ...]  # (name, value as written)
    shown: str  # the endpoint as printed: without what may hold a secret (see secret_parts)
    hidden: tuple[str, ...] = ()  # parts of the endpoint that may hold a secret: never printed

    @property
    def secrets(self) -> tuple[str, ...]:
        """Everything of this target that is never printed: header values and ``hidden``."""
        return (*(value for _name, value in self.headers), *self.hidden)


def targets_for(env: dict, secret_env: frozenset[str] = frozenset()) -> tuple[Target, ...]:
    """The OTLP destinations of one device's ``env``; raises ValueError with a message if unusable.

    ``secret_env``: the variables whose values embed a secret (the manifest's ``secret_env``); an
    endpoint read from one of them is shown without its path, query and fragment."""
    if str(env.get("CLAUDE_CODE_ENABLE_TELEMETRY", "")) != "1":
        return ()
    targets = []
    for signal in SIGNALS:
        upper = signal.upper()
        exporters = str(env.get(f"OTEL_{upper}_EXPORTER", ""))
        if "otlp" not in (item.strip() for item in exporters.split(",")):
            continue
        protocol = env.get(f"OTEL_EXPORTER_OTLP_{upper}_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        if protocol not in OTLP_PROTOCOLS:
            raise ValueError(f"{signal}: OTEL_EXPORTER_OTLP_PROTOCOL is missing or not grpc, http/json "
                             "or http/protobuf")
        per_signal = env.get(f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT")
        variable = f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT" if per_signal else "OTEL_EXPORTER_OTLP_ENDPOINT"
        endpoint = per_signal or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if not endpoint:
            raise ValueError(f"{signal}: no OTEL_EXPORTER_OTLP_ENDPOINT; the developer's environment "
                             "would decide where telemetry goes, so there is nothing to check")
        # Per the OTel spec a per-signal endpoint is used as-is; the base one gets /v1/<signal>.
        endpoint = str(endpoint)
        url = endpoint if per_signal or protocol == "grpc" else endpoint.rstrip("/") + f"/v1/{signal}"
        try:
            parts = split_http_url(url)
        except ValueError:
            raise ValueError(f"{signal}: the endpoint is not an http:// or https:// URL with a host and port") from None
        headers = _headers(env, upper)
        if headers and not may_carry_credentials(parts):
            raise ValueError(f"{signal}: refusing to send credentials over plain http to {parts.hostname}; "
                             "use https (plain http is only for loopback hosts)")
        shown, hidden = (endpoint, ()) if variable not in secret_env else secret_parts(endpoint)
        targets.append(Target(signal, protocol, endpoint, url, headers, shown, hidden))
    return tuple(targets)


def secret_parts(endpoint: str) -> tuple[str, tuple[str, ...]]:
    """An endpoint that embeds a secret, as shown (``https://host:port/[redacted]``), and the parts
    of it never to print: userinfo, path, query and fragment, together and one by one.

    Where in the value the secret sits is not recorded, so everything after the host and port is
    hidden: over-redacting a path costs a little diagnosis, under-redacting leaks a token. The
    host stays: the compile refuses a secret there (every DNS resolver and TLS handshake sees it).
    Parts shorter than a secret can be (:data:`mdmgen.secrets.MIN_SECRET_CHARS`) are only hidden
    as part of the whole."""
    parts = split_http_url(endpoint)
    origin = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    rest = endpoint[len(parts.scheme) + len("://") + len(parts.netloc):]
    userinfo = parts.netloc.rpartition("@")[0]
    whole = [endpoint, endpoint.rstrip("/"), rest, rest.rstrip("/"), userinfo, parts.path, parts.path.rstrip("/"),
             parts.query, parts.fragment]
    pieces = [piece for piece in re.split(r"[/?&=;#:@,]", f"{userinfo}{rest}")
              if len(piece) >= secret_refs.MIN_SECRET_CHARS]
    hidden = tuple(dict.fromkeys(part for part in (*whole, *pieces) if part))
    shown = origin + (f"/{REDACTED}" if rest.strip("/") or userinfo else rest)
    return shown, hidden


def _headers(env: dict, upper: str) -> tuple[tuple[str, str], ...]:
    """OTEL_EXPORTER_OTLP_HEADERS, overridden name by name by the per-signal variable."""
    merged: dict[str, tuple[str, str]] = {}
    for variable in ("OTEL_EXPORTER_OTLP_HEADERS", f"OTEL_EXPORTER_OTLP_{upper}_HEADERS"):
        text = env.get(variable)
        if not text:
            continue
        try:
            pairs = attributes.split_pairs(str(text))
        except attributes.AttributeListError as exc:
            raise ValueError(f"{variable}: {exc}") from None  # the message never holds a value
        for name, value in pairs:
            merged[name.lower()] = (name, value)
    return tuple(merged.values())


@dataclass(frozen=True, order=True)
class OtlpDestination:
    """Where one signal of at least one compiled device goes: the protocol and the URL the client
    contacts (the POST URL for http, the endpoint for grpc)."""

    signal: str  # metrics | logs
    protocol: str  # grpc | http/protobuf | http/json
    url: str

    @property
    def family(self) -> str:
        """The otlp receiver's protocol key: ``grpc`` or ``http`` (both http encodings)."""
        return "grpc" if self.protocol == "grpc" else "http"

    @property
    def host(self) -> str:
        return (urlsplit(self.url).hostname or "").lower()

    @property
    def secure(self) -> bool:
        return urlsplit(self.url).scheme == "https"

    @property
    def port(self) -> int:
        """The port the collector listens on: the endpoint's own, or the protocol's default when the
        endpoint names none (then an ingress on 443 forwards to it)."""
        return urlsplit(self.url).port or DEFAULT_PORTS[self.family]
