"""The ``env`` block schema: what a compiled device may ask Claude Code to do with telemetry.

The rules come from shared/reference/claude-code-managed-settings.md (sections 6 to 8): env values
are strings, names are upper-case identifiers, the telemetry variables take only the values the
client understands, and content logging (prompts, responses, tool content, raw API bodies) is
refused unless the policy explicitly opts in, because the org promised not to collect content.

Error messages never repeat a value: headers carry credentials.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from . import attributes
from .endpoints import check_url

ENV_NAME_PATTERN = r"^[A-Z_][A-Z0-9_]*$"
MAX_RESOURCE_ATTRIBUTES = 12
RESERVED_ATTRIBUTE_PREFIXES = ("user.", "identity.")
CONTENT_LOGGING_VARS = ("OTEL_LOG_USER_PROMPTS", "OTEL_LOG_ASSISTANT_RESPONSES",
                        "OTEL_LOG_TOOL_CONTENT", "OTEL_LOG_RAW_API_BODIES")
# Variables whose values are credentials: never printed by diff, logs or errors.
SECRET_ENV = ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
              "OTEL_EXPORTER_OTLP_LOGS_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS")
ENDPOINT_ENV = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "BETA_TRACING_ENDPOINT")
"""Variables that are URLs the client sends to (checked by :func:`mdmgen.endpoints.check_url`)."""


_EXPORTERS = {
    "METRICS": {"otlp", "prometheus", "console", "none"},
    "LOGS": {"otlp", "console", "none"},
    "TRACES": {"otlp", "console", "none"},
}

EnvName = Annotated[str, StringConstraints(pattern=ENV_NAME_PATTERN)]
ZeroOne = Literal["0", "1"]
TrueFalse = Literal["true", "false"]
Protocol = Literal["grpc", "http/json", "http/protobuf"]


class EnvBlock(BaseModel):
    """The ``env`` object of managed-settings.json. Unknown variables pass if they are strings
    with proper names; the telemetry variables below are checked value by value.

    Protocol fields are declared before the exporters so the exporter check can see them.
    """

    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)
    __pydantic_extra__: dict[EnvName, str]

    CLAUDE_CODE_ENABLE_TELEMETRY: ZeroOne | None = None
    OTEL_EXPORTER_OTLP_PROTOCOL: Protocol | None = None
    OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: Protocol | None = None
    OTEL_EXPORTER_OTLP_LOGS_PROTOCOL: Protocol | None = None
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: Protocol | None = None
    OTEL_METRICS_EXPORTER: str | None = None
    OTEL_LOGS_EXPORTER: str | None = None
    OTEL_TRACES_EXPORTER: str | None = None
    OTEL_EXPORTER_OTLP_ENDPOINT: str | None = None
    OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: str | None = None
    OTEL_EXPORTER_OTLP_LOGS_ENDPOINT: str | None = None
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: str | None = None
    BETA_TRACING_ENDPOINT: str | None = None
    OTEL_EXPORTER_OTLP_HEADERS: str | None = None
    OTEL_EXPORTER_OTLP_METRICS_HEADERS: str | None = None
    OTEL_EXPORTER_OTLP_LOGS_HEADERS: str | None = None
    OTEL_EXPORTER_OTLP_TRACES_HEADERS: str | None = None
    OTEL_RESOURCE_ATTRIBUTES: str | None = None
    OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE: Literal["delta", "cumulative"] | None = None
    OTEL_METRIC_EXPORT_INTERVAL: str | None = None
    OTEL_LOGS_EXPORT_INTERVAL: str | None = None
    OTEL_TRACES_EXPORT_INTERVAL: str | None = None
    OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT: str | None = None
    CLAUDE_CODE_OTEL_CONTENT_MAX_LENGTH: str | None = None
    CLAUDE_CODE_OTEL_FLUSH_TIMEOUT_MS: str | None = None
    CLAUDE_CODE_OTEL_SHUTDOWN_TIMEOUT_MS: str | None = None
    CLAUDE_CODE_OTEL_HEADERS_HELPER_DEBOUNCE_MS: str | None = None
    OTEL_METRICS_INCLUDE_SESSION_ID: TrueFalse | None = None
    OTEL_METRICS_INCLUDE_VERSION: TrueFalse | None = None
    OTEL_METRICS_INCLUDE_ACCOUNT_UUID: TrueFalse | None = None
    OTEL_METRICS_INCLUDE_ENTRYPOINT: TrueFalse | None = None
    OTEL_METRICS_INCLUDE_RESOURCE_ATTRIBUTES: TrueFalse | None = None
    OTEL_LOG_TOOL_DETAILS: ZeroOne | None = None
    CLAUDE_CODE_OTEL_DIAG_STDERR: ZeroOne | None = None
    CLAUDE_CODE_ENHANCED_TELEMETRY_BETA: ZeroOne | None = None
    ENABLE_BETA_TRACING_DETAILED: ZeroOne | None = None
    DISABLE_TELEMETRY: ZeroOne | None = None
    OTEL_LOG_USER_PROMPTS: ZeroOne | None = None
    OTEL_LOG_ASSISTANT_RESPONSES: ZeroOne | None = None
    OTEL_LOG_TOOL_CONTENT: ZeroOne | None = None
    OTEL_LOG_RAW_API_BODIES: str | None = None

    @field_validator("OTEL_METRICS_EXPORTER", "OTEL_LOGS_EXPORTER", "OTEL_TRACES_EXPORTER")
    @classmethod
    def _exporters(cls, value: str, info: ValidationInfo) -> str:
        signal = info.field_name.split("_")[1]  # METRICS / LOGS / TRACES
        items = [item.strip() for item in value.split(",")]
        allowed = _EXPORTERS[signal]
        unknown = [item for item in items if item not in allowed]
        if unknown:
            raise ValueError(f"must be a comma list of {', '.join(sorted(allowed))}")
        # Presence is judged on the raw input, so a misspelt protocol is one error, not three.
        present = (info.context or {}).get("present", info.data)
        if "otlp" in items and not ("OTEL_EXPORTER_OTLP_PROTOCOL" in present
                                    or f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL" in present):
            raise ValueError("uses otlp, so OTEL_EXPORTER_OTLP_PROTOCOL (or "
                             f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL) must be set")
        return value

    @field_validator(*ENDPOINT_ENV)
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return check_url(value, credentials_go="in OTEL_EXPORTER_OTLP_HEADERS")

    @field_validator("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
                     "OTEL_EXPORTER_OTLP_LOGS_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS")
    @classmethod
    def _headers(cls, value: str) -> str:
        try:
            pairs = attributes.split_pairs(value)
        except attributes.AttributeListError as exc:
            raise ValueError(f"must be 'Name=value,Name2=value2': {exc}") from None
        for index, (_key, raw) in enumerate(pairs, start=1):
            if not raw:
                raise ValueError(f"header {index} has an empty value")
        return value

    @field_validator("OTEL_RESOURCE_ATTRIBUTES")
    @classmethod
    def _resource_attributes(cls, value: str) -> str:
        try:
            decoded = attributes.decode(value)
        except attributes.AttributeListError as exc:
            raise ValueError(str(exc)) from None
        for key in decoded:
            if key.startswith(RESERVED_ATTRIBUTE_PREFIXES):
                raise ValueError(f"key {key!r} collides with Claude Code's built-in user.*/identity.* "
                                 "attributes; use e.g. 'user_email'")
        if len(decoded) > MAX_RESOURCE_ATTRIBUTES:
            raise ValueError(f"has {len(decoded)} attributes; more than {MAX_RESOURCE_ATTRIBUTES} "
                             "silently stops metric export in some client versions")
        return value

    @field_validator("OTEL_METRIC_EXPORT_INTERVAL", "OTEL_LOGS_EXPORT_INTERVAL",
                     "OTEL_TRACES_EXPORT_INTERVAL", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
                     "CLAUDE_CODE_OTEL_CONTENT_MAX_LENGTH", "CLAUDE_CODE_OTEL_FLUSH_TIMEOUT_MS",
                     "CLAUDE_CODE_OTEL_SHUTDOWN_TIMEOUT_MS",
                     "CLAUDE_CODE_OTEL_HEADERS_HELPER_DEBOUNCE_MS")
    @classmethod
    def _positive_integer(cls, value: str) -> str:
        if not (value.isascii() and value.isdigit() and int(value) > 0):
            raise ValueError("must be a positive whole number, written as a string")
        return value

    @field_validator("OTEL_LOG_RAW_API_BODIES")
    @classmethod
    def _raw_bodies(cls, value: str) -> str:
        if value not in ("0", "1") and not (value.startswith("file:") and len(value) > 5):
            raise ValueError("must be '0', '1' or 'file:<folder>'")
        return value

    @field_validator(*CONTENT_LOGGING_VARS)
    @classmethod
    def _content_logging(cls, value: str, info: ValidationInfo) -> str:
        allowed = bool((info.context or {}).get("allow_content_logging"))
        if value != "0" and not allowed:
            raise ValueError("exports prompt or code content, which the policy does not allow "
                             "(set 'allow_content_logging: true' to opt in)")
        return value


def check(env: Any, *, allow_content_logging: bool) -> list[tuple[str, str]]:
    """Validate an env block; return (variable, message) for every problem found."""
    if not isinstance(env, dict):
        return [("env", "must be a mapping of variable names to strings")]
    problems: list[tuple[str, str]] = [
        (name, "must be one line: an OTEL variable holds a URL, a list of headers or a name, and a line break "
               "or tab there would split a header or break the URL")
        for name, value in env.items()
        if isinstance(name, str) and name.startswith("OTEL_") and isinstance(value, str)
        and any(char in value for char in "\n\r\t\u2028\u2029\x85")]
    try:
        EnvBlock.model_validate(env, context={"allow_content_logging": allow_content_logging,
                                              "present": set(env)})
    except ValidationError as exc:
        for err in exc.errors(include_input=False, include_url=False):
            name = str(err["loc"][0]) if err["loc"] else "env"
            if name in env and not isinstance(env[name], str):
                message = 'must be a string; quote the value in the policy (e.g. "1")'
            else:
                message = err["msg"].removeprefix("Value error, ")
            if (name, message) not in problems:
                problems.append((name, message))
    return problems
