"""``collector/otel-collector-config.yaml``: the OpenTelemetry Collector (contrib) the devices send to.

- one ``otlp`` receiver per protocol and port the compiled devices use, each behind
  ``bearertokenauth`` when the devices send a token;
- ``bearertokenauth`` accepting every token reference the devices' headers name (``${env:NAME}``,
  never a value), plus the old token during a rotation (``previous_token_env``), or the token file;
- ``memory_limiter`` first, then the collision processor, then (metrics only)
  ``deltatocumulative``, then ``batch``;
- a ``prometheus`` exporter with a pinned ``translation_strategy`` (the rules and dashboards
  depend on the metric names it makes);
- the logs exporter the policy chooses: ``otlphttp`` to Loki's OTLP endpoint (the ``loki``
  exporter is gone) or ``clickhouse`` with its current keys.
Facts: shared/reference/collector-side.md, section 1.

The collector expands ``${env:NAME}`` (and ``${NAME}``) in every string of its config, then
reads ``$$`` as one ``$`` (opentelemetry-collector ``confmap``: ``findURI`` skips a ``${``
preceded by an odd number of ``$``, then ``escapeDollarSigns``). So every ``$`` of a value that
comes from the policy (an endpoint, a table name, a token file's path) is written ``$$``, and only
mdmgen's own references (:class:`EnvRef`) are written ``${env:NAME}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .fleet import TRANSLATION_STRATEGY, Receiver, Tokens, dump_yaml, receivers, tokens

if TYPE_CHECKING:
    from ...policy import Collector
    from ..inputs import FleetInput

PATH = "collector/otel-collector-config.yaml"
AUTH = "bearertokenauth"
COLLISION_PROCESSOR = "attributes/user-email"
COLLISION_COMMENT = """\
# user_email collision, resolved on purpose: the devices send mdmgen's resource attribute
# `user_email` (the inventory's address, or its keyed pseudonym with pseudonymise_email), and
# OAuth sessions also carry the client's own `user.email`. The prometheus exporter turns `.`
# into `_`, so both would become the one label `user_email` (values joined or doubled). This
# processor deletes the client's `user.email`, so `user_email` is always mdmgen's: one value,
# the one the adoption rules and dashboards count, and never a raw address when the policy
# pseudonymises emails.
"""
TEMPORALITY_PROCESSOR = "deltatocumulative"
TEMPORALITY_COMMENT = """\
# Claude Code exports its counters with delta temporality by default; Prometheus stores
# cumulative counters. The prometheus exporter adds a delta to the last value only when it starts
# exactly where that value ended (one process, no gap), and otherwise replaces it, so restarts,
# idle intervals and several sessions would read as counter resets and lose counts. This
# processor keeps one running total per series, so the exporter only ever sees cumulative sums.
# (`deltatocumulative`: the name older releases know too; v0.161.0 also calls it `delta_to_cumulative`.)
"""
SIGNALS = ("metrics", "logs")


def emit(given: FleetInput) -> bytes | None:
    collector = given.policy.collector
    if collector is None or not given.destinations:
        return None
    found = receivers(given.destinations)
    accepted = tokens(given)
    config: dict[str, Any] = {}
    if accepted:
        config["extensions"] = {AUTH: _auth(accepted)}
    config["receivers"] = {r.name: _receiver(r, bool(accepted)) for r in found}
    config["processors"] = {
        "memory_limiter": {"check_interval": "1s", "limit_percentage": 80, "spike_limit_percentage": 25},
        COLLISION_PROCESSOR: {"actions": [{"key": "user.email", "action": "delete"}]},
        TEMPORALITY_PROCESSOR: {},
        "batch": {},
    }
    logs_name, logs_exporter = _logs_exporter(collector)
    config["exporters"] = {
        "prometheus": {"endpoint": f"0.0.0.0:{collector.prometheus_port}",
                       "translation_strategy": TRANSLATION_STRATEGY},
        logs_name: logs_exporter,
    }
    exporters = {"metrics": "prometheus", "logs": logs_name}
    pipelines = {}
    for signal in SIGNALS:
        names = [r.name for r in found if signal in r.signals]
        if names:
            processors = ["memory_limiter", COLLISION_PROCESSOR,
                          *([TEMPORALITY_PROCESSOR] if signal == "metrics" else []), "batch"]
            pipelines[signal] = {"receivers": names, "processors": processors, "exporters": [exporters[signal]]}
    config["service"] = {**({"extensions": [AUTH]} if accepted else {}), "pipelines": pipelines}
    text = dump_yaml(_literal(config))
    for name, comment in ((COLLISION_PROCESSOR, COLLISION_COMMENT), (TEMPORALITY_PROCESSOR, TEMPORALITY_COMMENT)):
        # A key indented by two at a line's start is one of a top-level section: the processor's.
        text = text.replace(f"\n  {name}:", "\n" + _indent(comment, "  ") + f"  {name}:", 1)
    return (_header(found, accepted) + text).encode("utf-8")


class EnvRef(str):
    """A reference mdmgen means the collector to expand: the name of an environment variable."""

    def expansion(self) -> str:
        return f"${{env:{self}}}"


def _literal(value: Any) -> Any:
    """``value`` as the collector must read it: ``$`` doubled in every string but an :class:`EnvRef`."""
    if isinstance(value, EnvRef):
        return value.expansion()
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, dict):
        return {_key(key): _literal(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_literal(item) for item in value]
    return value


def _key(key: str) -> str:
    """Keys are not unescaped by the collector (only values are), and mdmgen writes none with a ``$``."""
    if "$" in key:
        raise AssertionError(f"a collector config key holds '$': {key!r}")
    return key


def _receiver(receiver: Receiver, authenticated: bool) -> dict[str, Any]:
    protocol: dict[str, Any] = {"endpoint": f"0.0.0.0:{receiver.port}"}
    if authenticated:
        protocol["auth"] = {"authenticator": AUTH}
    return {"protocols": {receiver.family: protocol}}


def _auth(accepted: Tokens) -> dict[str, Any]:
    """One env token as ``token``, several (devices with different tokens, or a rotation) as
    ``tokens``; a token file as ``filename`` (re-read when it changes, which is how a file token rotates)."""
    if accepted.file is not None and not accepted.env:
        return {"filename": accepted.file}
    refs = [EnvRef(name) for name in accepted.env]
    return {"token": refs[0]} if len(refs) == 1 else {"tokens": refs}


def _logs_exporter(collector: Collector) -> tuple[str, dict[str, Any]]:
    logs = collector.logs
    if logs.exporter == "loki":
        return "otlphttp/loki", {"endpoint": logs.endpoint}
    exporter: dict[str, Any] = {"endpoint": logs.endpoint, "database": logs.database}
    if logs.username_env:
        exporter["username"] = EnvRef(logs.username_env)
    if logs.password_env:
        exporter["password"] = EnvRef(logs.password_env)
    exporter.update({"logs_table_name": logs.logs_table_name, "ttl": logs.ttl, "create_schema": True})
    return "clickhouse", exporter


def _header(found: list[Receiver], accepted: Tokens) -> str:
    lines = ["# Generated by mdmgen from the policy and the inventory; do not edit (recompile instead).",
             "# Receivers: the protocols and ports the compiled devices send to "
             f"({', '.join(f'{r.family} :{r.port}' for r in found)}).",
             f"# Metric names assume translation_strategy {TRANSLATION_STRATEGY} (pinned below).",
             "# Set the environment variables named by ${env:...} on the collector."
             if accepted.env else "# The devices send no bearer token: the receivers are not authenticated."]
    return "\n".join(lines) + "\n"


def _indent(text: str, prefix: str) -> str:
    return "".join(prefix + line + "\n" for line in text.splitlines())
