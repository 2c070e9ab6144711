"""``mdmgen preflight``: before a rollout, prove that the compiled collector settings work.

For every signal a compiled device exports over OTLP (metrics, logs) this sends one *empty*
export to the collector the way Claude Code would: the same protocol, endpoint and headers.
Each destination gets three answers, one line each, so a wrong token never looks like a wrong
endpoint:

- ``endpoint``: a TCP connection opens, and an OTLP receiver answers on that path or service;
- ``TLS``: the certificate is valid for the host (https), or TLS is not used (http to loopback);
- ``token``: the collector accepted the headers (HTTP 2xx, gRPC OK) or rejected them (HTTP 401
  or 403, gRPC UNAUTHENTICATED or PERMISSION_DENIED).

Like the real client (shared/reference/claude-code-managed-settings.md, section 11), grpc
percent-decodes header values and the HTTP protocols send them as written. Header values are
credentials: they are never printed; a header is shown as its name and a slow, salted
fingerprint of its value (``secrets.shown_fingerprint``), never a plain hash a guess could match.
Credentials only travel over https, or over http to a loopback host.

The endpoint and TLS answers come from a probe (a TCP connection, then a TLS handshake with the
system's CAs, ``SSL_CERT_FILE`` honoured); the export then goes over the shared HTTP layer
(:mod:`mdmgen.http`) for the HTTP protocols, and grpcio for grpc. All of it connects
directly: proxy variables are not used, so what is checked is this machine's direct path.

Each step ends within ``--timeout``: the TCP connect, the TLS handshake (Python's socket timeout
is a deadline for the whole handshake), and each export as a whole, headers and body included
(the HTTP layer's deadline; a gRPC call's timeout is its deadline). Answers are capped in size
(an OTLP reply is tiny), so a collector or proxy that drips or never stops sending still ends.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

from . import __version__, envschema, output
from . import secrets as secret_refs
from .emit import registry
from .emit.registry import SETTINGS_SECTION
from .endpoints import is_loopback
from .errors import MdmgenException
from .exitcodes import ExitCode
from .http import MAX_SMALL_BODY, Connection, TransportFailure, reason_phrase
from .messages import first_of, redactor
from .otlp import Target, targets_for
from .secrets import shown_fingerprint

GRPC_METHODS = {
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}
# What an empty Export*ServiceRequest looks like on each protocol.
HTTP_BODIES = {"http/json": (b"{}", "application/json"),
               "http/protobuf": (b"", "application/x-protobuf")}
USER_AGENT = f"mdmgen-preflight/{__version__}"
GRPC_MAX_METADATA = 16 << 10
log = logging.getLogger(__name__)

OK, FAIL, SKIP = "ok", "FAIL", "--"


class PreflightError(MdmgenException):
    """The output folder cannot be checked as it is, and nothing was sent (exit 1). Each problem is
    one ``error:`` line on stderr; ``--json`` adds that nothing was sent."""

    exit_code = ExitCode.INVALID_INPUT
    headline_printed = False

    def __init__(self, problems: list[str]):
        self.problems = [f"error: {line}" for line in problems]
        super().__init__("\n".join(problems))

    def headline(self) -> str:
        return "nothing was sent"


# --- what to check: read from the compiled output --------------------------------------------


@dataclass
class Destination:
    """One distinct (protocol, endpoint, headers) combination and the devices that use it."""

    targets: tuple[Target, ...]
    serials: list[str] = field(default_factory=list)


@dataclass
class Plan:
    destinations: list[Destination]
    silent: list[str]  # devices that export no OTLP telemetry: nothing to check


def load(out: Path, serial: str | None = None) -> Plan:
    """Read the compiled devices (one with ``serial``) and group them by destination.

    The folder is read through the one checked reader (its manifest, safe names, no symlinks,
    the shared lock), and each settings file is checked against its digest as it is read.
    """
    if not out.is_dir():
        raise PreflightError([f"{out}: no such folder; run 'mdmgen compile' first, or pass --out"])
    settings_kind = registry.SETTINGS_JSON
    try:
        with output.checked(out, check=output.Check.NAMES) as tree:
            serials = sorted(s for s, d in tree.manifest.devices.items() if settings_kind.name in d.files)
            if serial is not None:
                wanted = [s for s in serials if s == serial.upper()]
                if not wanted:
                    raise PreflightError([f"{out}/{output.DEVICES_DIR}: no compiled device {serial!r}"])
                serials = wanted
            if not serials:
                raise PreflightError([f"{out}/{output.DEVICES_DIR}: holds no compiled device"])
            secret_env = frozenset(envschema.SECRET_ENV) | frozenset(tree.manifest.secret_env)
            by_targets: dict[tuple[Target, ...], Destination] = {}
            silent: list[str] = []
            problems: list[str] = []
            for name in serials:
                relpath = output.device_path(name, settings_kind.name)
                path = out / relpath  # as the user named the folder, for the messages
                file = tree.file(relpath)
                assert file is not None
                try:
                    settings = settings_kind.read_semantic(file.read())[SETTINGS_SECTION]
                    env = settings.get("env", {})
                    if not isinstance(env, dict):
                        raise ValueError("'env' is not an object")
                    targets = targets_for(env, secret_env)
                except output.OutputError as exc:
                    problems.append(str(exc))
                    continue
                except ValueError as exc:
                    problems.append(f"{path}: {exc}")
                    continue
                if targets:
                    by_targets.setdefault(targets, Destination(targets)).serials.append(name)
                else:
                    silent.append(name)
    except output.OutputBusy:
        raise  # a compile is replacing the folder: exit 5, like every command that reads it
    except output.OutputError as exc:
        raise PreflightError([str(exc)]) from None
    if problems:
        raise PreflightError(problems)
    for targets in by_targets:
        for target in targets:
            for value in target.secrets:
                secret_refs.remember(value)  # so no log line shows it (the CLI's log formatter)
    if not by_targets:
        raise PreflightError([f"{out}/{output.DEVICES_DIR}: no checked device exports OTLP telemetry (needs "
                              "CLAUDE_CODE_ENABLE_TELEMETRY=1 and an otlp exporter); nothing to check"])
    return Plan(list(by_targets.values()), silent)


# --- the checks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    status: str  # OK, FAIL or SKIP
    text: str
    kind: str = ""  # for a FAIL, its short name in the summary: "unreachable", "token rejected"...


@dataclass(frozen=True)
class SignalResult:
    signal: str
    endpoint: Outcome
    tls: Outcome
    token: Outcome

    @property
    def failed(self) -> bool:
        return FAIL in (self.endpoint.status, self.tls.status, self.token.status)


def check_target(target: Target, timeout: float) -> SignalResult:
    """Connect, shake hands, send one empty export; never raises for network trouble."""
    parts = urlsplit(target.url)
    host, secure = parts.hostname or "", parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    scrub = redactor(target.secrets)  # header values and a secret-bearing endpoint's path, in any form
    not_checked = Outcome(SKIP, "not checked: endpoint unreachable")

    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        unreachable = Outcome(FAIL, f"UNREACHABLE: {where}: {_os_reason(exc, timeout)}", "unreachable")
        return SignalResult(target.signal, unreachable,
                            not_checked if secure else _plain_http(host), not_checked)

    tls = _plain_http(host)
    if secure:
        context = _tls_context(grpc=target.protocol == "grpc")
        try:
            sock = context.wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            tls = Outcome(FAIL, f"FAILED: the certificate of {host} is not trusted: "
                          f"{scrub(exc.verify_message or exc.reason or 'verification failed')}",
                          "TLS failed")
            return SignalResult(target.signal, Outcome(OK, f"reachable: {where}"), tls,
                                Outcome(SKIP, "not checked: TLS failed"))
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            tls = Outcome(FAIL, f"FAILED: handshake with {where}: {scrub(_os_reason(exc, timeout))}", "TLS failed")
            return SignalResult(target.signal, Outcome(OK, f"reachable: {where}"), tls,
                                Outcome(SKIP, "not checked: TLS failed"))
        tls = Outcome(OK, _tls_summary(sock, host))

    sock.close()  # the export opens its own connection; the probe above gave the clear diagnosis
    if target.protocol == "grpc":
        endpoint, token = _export_grpc(target, host, port, secure, timeout, scrub)
    else:
        endpoint, token = _export_http(target, parts, timeout, scrub)
    if endpoint.status == OK:
        endpoint = Outcome(OK, f"reachable: {where}, {endpoint.text}")
    return SignalResult(target.signal, endpoint, tls, token)


def _plain_http(host: str) -> Outcome:
    return Outcome(SKIP, "not used: plain http to a loopback host" if is_loopback(host) else "not used: plain http")


def _tls_context(*, grpc: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()  # the system's trusted CAs (SSL_CERT_FILE honoured)
    if grpc:
        context.set_alpn_protocols(["h2"])
    return context


def _tls_summary(sock: ssl.SSLSocket, host: str) -> str:
    cert = sock.getpeercert() or {}
    until = ""
    if cert.get("notAfter"):
        expires = datetime.fromtimestamp(ssl.cert_time_to_seconds(cert["notAfter"]), tz=UTC)
        until = f", valid until {expires:%Y-%m-%d}"
    return f"{sock.version()}, certificate trusted for {host}{until}"


def _export_http(target: Target, parts, timeout: float, scrub: Callable[[str], str]) -> tuple[Outcome, Outcome]:
    """One empty export through the shared HTTP layer, directly (no proxy: the probe was direct
    too, as is the grpc check), with the headers as written: the HTTP exporters do not
    percent-decode them."""
    body, content_type = HTTP_BODIES[target.protocol]
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {"Content-Type": content_type, **dict(target.headers)}
    collector = Connection(f"{parts.scheme}://{parts.netloc}", service="the collector", max_connections=1,
                           timeout=timeout, user_agent=USER_AGENT, log=log, log_prefix="preflight: ",
                           ssl_context=_tls_context(grpc=False) if parts.scheme == "https" else None,
                           use_proxy=False, max_body=MAX_SMALL_BODY)
    not_sent = (Outcome(FAIL, "NOT SENT: a header name or value is not valid in HTTP", "bad header"),
                Outcome(SKIP, "not checked: headers could not be sent"))
    try:
        response = collector.send("POST", path, headers=headers, content=body, doing="exporting")
    except TransportFailure as exc:
        if exc.kind == "request":
            return not_sent
        reasons = {"timeout": f"no answer within {timeout:g}s", "protocol": "the answer is not HTTP",
                   "too large": "the answer is larger than any OTLP reply (not read further)",
                   "dropped": "the collector closed the connection", "connect": "connection refused or reset"}
        return (Outcome(FAIL, f"NO OTLP ANSWER to POST {scrub(path)}: {reasons.get(exc.kind, exc.kind)}",
                        "no OTLP answer"),
                Outcome(SKIP, "not checked: no answer from the collector"))
    except (UnicodeError, ValueError):  # a header httpx cannot even encode; its message would repeat it
        return not_sent
    finally:
        collector.close()
    answer = f"HTTP {response.status} {reason_phrase(response.status)}".strip()
    return _classify(target, scrub(answer), response.status, scrub(path))


def _classify(target: Target, answer: str, status: int, path: str) -> tuple[Outcome, Outcome]:
    if 200 <= status < 300:
        return Outcome(OK, f"OTLP collector answered {answer}"), _accepted(target, answer)
    if status in (401, 403):
        return Outcome(OK, f"OTLP collector answered {answer}"), _rejected(target, answer)
    if 300 <= status < 400 or status in (404, 405):
        return (Outcome(FAIL, f"WRONG ENDPOINT: {answer} for POST {path} (no OTLP receiver on this path)",
                        "wrong endpoint"),
                Outcome(SKIP, "not checked: wrong endpoint"))
    if status == 415:
        return (Outcome(FAIL, f"WRONG PROTOCOL: {answer}; the collector does not take {target.protocol} here",
                        "wrong protocol"),
                Outcome(SKIP, "not checked: wrong protocol"))
    return (Outcome(FAIL, f"COLLECTOR ERROR: {answer} for an empty export to {path}", "collector error"),
            Outcome(SKIP, f"not checked: the collector answered {answer}, not an auth answer"))


def _accepted(target: Target, answer: str) -> Outcome:
    if not target.headers:
        return Outcome(OK, f"accepted without credentials ({answer}; no headers configured)")
    return Outcome(OK, f"accepted ({answer})")


def _rejected(target: Target, answer: str) -> Outcome:
    if not target.headers:
        return Outcome(FAIL, f"REJECTED ({answer}): the collector wants credentials and the settings send none",
                       "token rejected")
    return Outcome(FAIL, f"REJECTED by the collector ({answer})", "token rejected")


def _export_grpc(target: Target, host: str, port: int, secure: bool, timeout: float,
                 scrub: Callable[[str], str]) -> tuple[Outcome, Outcome]:
    import grpc  # only this check needs it; keeps `mdmgen compile` fast to start

    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    # The call's timeout is a deadline for all of it (connect, TLS, metadata, message); an OTLP
    # reply is tiny, so a larger message or metadata block is refused rather than read.
    options = [("grpc.primary_user_agent", USER_AGENT), ("grpc.enable_http_proxy", 0),
               ("grpc.enable_retries", 0), ("grpc.max_receive_message_length", MAX_SMALL_BODY),
               ("grpc.max_metadata_size", GRPC_MAX_METADATA)]
    if secure:
        credentials = grpc.ssl_channel_credentials(root_certificates=_system_roots())
        channel = grpc.secure_channel(address, credentials, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    # The client percent-decodes grpc header values (section 11); metadata names are lower-case.
    metadata = [(name.lower(), unquote(value)) for name, value in target.headers]
    try:
        with channel:
            export = channel.unary_unary(GRPC_METHODS[target.signal])  # bytes in, bytes out
            export(b"", metadata=metadata, timeout=timeout)  # b"": an empty Export*ServiceRequest
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = scrub(str(exc.details() if hasattr(exc, "details") else "") or "")[:200]
        answer = f"gRPC {code.name}"
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return Outcome(OK, f"OTLP collector answered {answer}"), _rejected(target, answer)
        if code is grpc.StatusCode.UNIMPLEMENTED:
            return (Outcome(FAIL, f"WRONG ENDPOINT: {answer}; no OTLP {target.signal} service at {address}",
                            "wrong endpoint"),
                    Outcome(SKIP, "not checked: wrong endpoint"))
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            details = f"no answer within {timeout:g}s"
        return (Outcome(FAIL, f"NO OTLP ANSWER: {answer}: {details}", "no OTLP answer"),
                Outcome(SKIP, f"not checked: the collector answered {answer}, not an auth answer"))
    except Exception:  # e.g. metadata grpc refuses; its message would repeat the value
        return (Outcome(FAIL, "NOT SENT: a header cannot be sent as gRPC metadata", "bad header"),
                Outcome(SKIP, "not checked: headers could not be sent"))
    return Outcome(OK, "OTLP collector answered gRPC OK"), _accepted(target, "gRPC OK")


def _system_roots() -> bytes | None:
    """The CA bundle Python's TLS check used, so grpc trusts the same roots (None: grpc's own)."""
    cafile = ssl.get_default_verify_paths().cafile
    try:
        return Path(cafile).read_bytes() if cafile else None
    except OSError:
        return None


def _os_reason(exc: OSError, timeout: float) -> str:
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the host name"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens on this port)"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.__class__.__name__
    return exc.strerror or exc.__class__.__name__


# --- the report ----------------------------------------------------------------------------------


def check_destination(destination: Destination, timeout: float) -> list[SignalResult]:
    return [check_target(target, timeout) for target in destination.targets]


@dataclass
class Checked:
    """One destination and the answers it got."""

    destination: Destination
    results: list[SignalResult]

    @property
    def kinds(self) -> list[str]:
        return failure_kinds(self.results)


@dataclass
class Result:
    """A whole preflight: what was checked, how it went, and the command's exit code."""

    plan: Plan
    timeout: float
    checked: list[Checked] = field(default_factory=list)

    @property
    def failed(self) -> list[Checked]:
        return [c for c in self.checked if c.kinds]

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.REMOTE_FAILED if self.failed else ExitCode.OK

    def as_json(self) -> dict:
        """The machine-readable report (``--json``): every collector setting with its endpoints as
        shown (never a secret), header names with fingerprints, device counts, and each check's
        status (``ok``, ``failed`` or ``skipped``), text and kind."""
        return {
            "exit_code": int(self.exit_code),
            "timeout": self.timeout,
            "devices": sum(len(c.destination.serials) for c in self.checked),
            "silent_devices": len(self.plan.silent),
            "failed": list(dict.fromkeys(kind for c in self.failed for kind in c.kinds)),
            "collector_settings": [_checked_json(c) for c in self.checked],
        }


_JSON_STATUS = {OK: "ok", FAIL: "failed", SKIP: "skipped"}


def _checked_json(checked: Checked) -> dict:
    targets = {t.signal: t for t in checked.destination.targets}
    hide = redactor(value for t in targets.values() for value in t.secrets)  # belt and braces
    signals = []
    for result in checked.results:
        target = targets[result.signal]
        signals.append({
            "signal": result.signal, "protocol": target.protocol, "endpoint": target.shown,
            "headers": {name: shown_fingerprint(value) for name, value in target.headers},
            "checks": {check: {"status": _JSON_STATUS[outcome.status], "text": hide(outcome.text),
                               "kind": outcome.kind}
                       for check, outcome in (("endpoint", result.endpoint), ("tls", result.tls),
                                              ("token", result.token))},
        })
    serials = checked.destination.serials
    return {"devices": len(serials), "serials": serials, "failed": checked.kinds, "signals": signals}


def run(plan: Plan, timeout: float, say: Callable[[str], None], *, quiet: bool = False) -> Result:
    """Check every destination of ``plan`` in turn, telling ``say`` each line as it is known (with
    ``quiet``, only the lines of what failed). Every line is redacted of every secret of the plan
    once more before it is said, whatever produced it."""
    hide = redactor(value for d in plan.destinations for t in d.targets for value in t.secrets)
    tell = lambda line: say(hide(line))  # noqa: E731 - one short closure, named for reading
    destinations = plan.destinations
    devices = sum(len(d.serials) for d in destinations)
    if not quiet:
        tell(f"Preflight of {len(destinations)} collector setting(s) used by {devices} device(s), "
             f"one empty OTLP export per signal (timeout {timeout:g}s per step):")
    result = Result(plan, timeout)
    for index, destination in enumerate(destinations, start=1):
        checked = Checked(destination, check_destination(destination, timeout))
        result.checked.append(checked)
        if quiet and not checked.kinds:
            continue
        tell(f"[{index}/{len(destinations)}] {describe(destination)}")
        for line in report_lines(checked.results):
            if not quiet or line.lstrip().startswith(FAIL):
                tell(line)
    if plan.silent and not quiet:
        tell(f"Not checked: {len(plan.silent)} device(s) export no OTLP telemetry.")
    if result.failed:
        kinds = ", ".join(dict.fromkeys(kind for c in result.failed for kind in c.kinds))
        tell(f"Preflight FAILED for {len(result.failed)} of {len(destinations)} collector setting(s) "
             f"({sum(len(c.destination.serials) for c in result.failed)} device(s)): {kinds}.")
    elif not quiet:
        tell(f"Preflight passed: every collector was reachable and accepted the export ({devices} device(s)).")
    return result


def describe(destination: Destination) -> str:
    """The heading of a destination: protocol, endpoint (as shown: see :func:`secret_parts`),
    header names with fingerprints, devices."""
    targets = destination.targets
    if len({(t.protocol, t.endpoint) for t in targets}) == 1:  # two endpoints may look alike when shown
        where = f"{targets[0].protocol} {targets[0].shown}"
    else:
        where = "; ".join(f"{t.signal}: {t.protocol} {t.shown}" for t in targets)
    header_sets = {t.headers for t in targets}
    if len(header_sets) == 1:
        headers = _describe_headers(targets[0].headers)
    else:
        headers = "; ".join(f"{t.signal} {_describe_headers(t.headers)}" for t in targets)
    serials = destination.serials
    shown = first_of(serials, 3)
    devices = f"device {shown}" if len(serials) == 1 else f"{len(serials)} devices: {shown}"
    return f"{where} | {headers} | {devices}"


def _describe_headers(headers: tuple[tuple[str, str], ...]) -> str:
    if not headers:
        return "no headers"
    return "headers " + ", ".join(f"{name}={shown_fingerprint(value)}" for name, value in headers)


def report_lines(results: list[SignalResult]) -> list[str]:
    """One line per check (endpoint, TLS, token); signals share a line when their answer is the same."""
    lines = []
    for label, pick in (("endpoint", lambda r: r.endpoint), ("TLS", lambda r: r.tls),
                        ("token", lambda r: r.token)):
        outcomes = [(r.signal, pick(r)) for r in results]
        if len({outcome for _, outcome in outcomes}) == 1:
            outcome = outcomes[0][1]
            signals = ", ".join(signal for signal, _ in outcomes)
            lines.append(f"  {outcome.status:<4}  {label:<8}  {outcome.text}  [{signals}]")
        else:
            lines += [f"  {outcome.status:<4}  {label:<8}  {outcome.text}  [{signal}]" for signal, outcome in outcomes]
    return lines


def failure_kinds(results: list[SignalResult]) -> list[str]:
    """Short names of what failed, for the summary: 'unreachable', 'TLS failed', 'token rejected'..."""
    outcomes = [o for r in results for o in (r.endpoint, r.tls, r.token) if o.status == FAIL]
    return list(dict.fromkeys(o.kind for o in outcomes))
