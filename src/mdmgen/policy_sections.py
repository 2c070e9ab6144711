"""The policy's sections for the targets beyond the device files: ``intune:`` (how ``publish
intune`` serves teams) and ``collector:`` (the server side written to ``output/collector/``).

They are part of the one policy file and checked with it (``policy.parse``); they live here so
that ``policy`` reads as the device policy: layers, merging, variables and the loader's bounds.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from .envschema import ENV_NAME_PATTERN

ENV_NAME_RE = re.compile(ENV_NAME_PATTERN)


def _is_env_name(value: str) -> str:
    if not ENV_NAME_RE.match(value):
        raise ValueError(f"{value!r} is not an env variable name")
    return value


EnvVarName = Annotated[str, AfterValidator(_is_env_name)]
"""The name of an environment variable (the collector reads its secrets from there)."""


class Intune(BaseModel):
    """How ``mdmgen publish intune`` serves teams; the compile carries it into the output folder
    (``intune/teams.json``), because the publisher reads only that folder."""

    model_config = ConfigDict(extra="forbid")

    groups: dict[str, str] = Field(
        default_factory=dict,
        description="Team -> the Entra group (displayName or object id) whose members get the team's "
        "Intune objects. A team not listed is served by the group whose displayName is the team name, "
        "ignoring case.")

    @field_validator("groups")
    @classmethod
    def _groups(cls, value: dict[str, str]) -> dict[str, str]:
        for team, group in value.items():
            if not group.strip():
                raise ValueError(f"team {team!r}: the group must be a displayName or an object id")
        return value


DURATION_RE = re.compile(r"^[1-9][0-9]*[smhdw]$")
"""A Prometheus range duration in one unit (``7d``, ``24h``): what the generated rules use."""


class CollectorLogs(BaseModel):
    """Where the collector sends the logs signal (Claude Code's events). The ``loki`` exporter is
    gone from the collector; Loki is reached through its OTLP endpoint with ``otlphttp``."""

    model_config = ConfigDict(extra="forbid")

    exporter: Literal["loki", "clickhouse"] = Field(
        default="loki", description="'loki' (otlphttp to Loki's OTLP endpoint) or 'clickhouse'.")
    endpoint: str = Field(default="http://loki:3100/otlp", min_length=1,
                          description="Loki's OTLP endpoint, or the ClickHouse DSN (tcp://host:9000).")
    database: str = Field(default="otel", min_length=1, description="ClickHouse database.")
    logs_table_name: str = Field(default="otel_logs", min_length=1, description="ClickHouse logs table.")
    ttl: str = Field(default="720h", description="ClickHouse retention, a duration such as 720h.",
                     json_schema_extra={"pattern": r"^[1-9][0-9]*h$"})
    username_env: EnvVarName | None = Field(default=None, description="Env variable of the ClickHouse user.")
    password_env: EnvVarName | None = Field(default=None, description="Env variable of the ClickHouse password.")

    @field_validator("ttl")
    @classmethod
    def _hours(cls, value: str) -> str:
        if not re.match(r"^[1-9][0-9]*h$", value):
            raise ValueError("must be a number of hours, e.g. '720h'")
        return value


class CollectorAlerts(BaseModel):
    """The org's alert thresholds; the rules themselves are generated (see emit/collector)."""

    model_config = ConfigDict(extra="forbid")

    daily_spend_usd: float = Field(default=1000.0, gt=0, description="Alert when the whole fleet's "
                                   "spend over the last 24h is above this.")
    user_daily_spend_usd: float | None = Field(default=None, gt=0, description="Alert when one user's "
                                               "spend over the last 24h is above this (none: no rule).")
    adoption_min_ratio: float = Field(default=0.5, gt=0, le=1, description="Alert when fewer than this "
                                      "share of a team's enrolled users were active in the window.")
    adoption_window: str = Field(default="7d", description="How far back 'active' looks (Prometheus "
                                 "duration).", json_schema_extra={"pattern": DURATION_RE.pattern})
    severity: str = Field(default="warning", pattern=r"^[a-z][a-z0-9_-]{0,31}$",
                          description="The severity label every generated alert carries.")

    @field_validator("adoption_window")
    @classmethod
    def _duration(cls, value: str) -> str:
        if not DURATION_RE.match(value):
            raise ValueError("must be a duration such as '7d' or '168h'")
        return value


class CollectorKubernetes(BaseModel):
    """Names for the ingress manifests (host and port come from the compiled endpoint)."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = Field(default="observability", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    service: str = Field(default="otel-collector", pattern=r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$",
                         description="The collector's Service (and the pods' app.kubernetes.io/name).")
    ingress_class: str = Field(default="nginx", pattern=r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")
    tls_secret: str = Field(default="otel-collector-tls", pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
                            description="The kubernetes.io/tls Secret holding the endpoint's certificate.")


class Collector(BaseModel):
    """``collector:``: the server side generated from the same policy (output/collector/).

    Without this section no collector file is written. The token the devices send is found in
    the headers templates (``{{ secret('NAME') }}``); ``token_env`` names it for a policy whose
    headers hold no reference (the collector accepts every token named either way)."""

    model_config = ConfigDict(extra="forbid")

    token_env: EnvVarName | None = Field(default=None, description="Env variable holding the devices' bearer "
                                  "token on the collector, when the headers template names none.")
    previous_token_env: EnvVarName | None = Field(default=None, description="During a rotation: env variable of "
                                           "the old token, accepted beside the new one until removed.")
    logs: CollectorLogs = Field(default_factory=CollectorLogs)
    alerts: CollectorAlerts = Field(default_factory=CollectorAlerts)
    kubernetes: CollectorKubernetes = Field(default_factory=CollectorKubernetes)
    prometheus_port: int = Field(default=8889, ge=1, le=65535,
                                 description="Where the collector's prometheus exporter is scraped.")
