"""The env schema: each rule the users asked for, accepted and refused."""

import pytest

from mdmgen.envschema import check

GOOD = {
    "CLAUDE_CODE_ENABLE_TELEMETRY": "1",
    "OTEL_METRICS_EXPORTER": "otlp",
    "OTEL_LOGS_EXPORTER": "otlp",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel.company.com:4317",
    "OTEL_RESOURCE_ATTRIBUTES": "user_email=a%40example.com,team=Ops",
}


def problems(**changes):
    env = {**GOOD, **changes}
    env = {k: v for k, v in env.items() if v is not None}
    return check(env, allow_content_logging=False)


def test_the_org_rollout_is_valid():
    assert problems() == []


@pytest.mark.parametrize("changes, variable, fragment", [
    ({"CLAUDE_CODE_ENABLE_TELEMETRY": 1}, "CLAUDE_CODE_ENABLE_TELEMETRY", "must be a string"),
    ({"lower_case": "x"}, "lower_case", "pattern"),
    ({"1ABC": "x"}, "1ABC", "pattern"),
    ({"SOME_FLAG": True}, "SOME_FLAG", "must be a string"),
    ({"CLAUDE_CODE_ENABLE_TELEMETRY": "yes"}, "CLAUDE_CODE_ENABLE_TELEMETRY", "'0' or '1'"),
    ({"OTEL_METRICS_EXPORTER": "otlp,zipkin"}, "OTEL_METRICS_EXPORTER", "comma list"),
    ({"OTEL_LOGS_EXPORTER": "prometheus"}, "OTEL_LOGS_EXPORTER", "comma list"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http"}, "OTEL_EXPORTER_OTLP_PROTOCOL", "'grpc'"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "otel.company.com:4317"}, "OTEL_EXPORTER_OTLP_ENDPOINT",
     "http:// or https://"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://"}, "OTEL_EXPORTER_OTLP_ENDPOINT", "with a host"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel.company.com:4317"},
     "OTEL_EXPORTER_OTLP_ENDPOINT", "loopback"),
    ({"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://10.0.0.1:4318/v1/logs"},
     "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "loopback"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://u:p@otel.company.com"},
     "OTEL_EXPORTER_OTLP_ENDPOINT", "credentials"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel:99999"}, "OTEL_EXPORTER_OTLP_ENDPOINT",
     "valid URL"),
    ({"OTEL_METRIC_EXPORT_INTERVAL": "0"}, "OTEL_METRIC_EXPORT_INTERVAL", "positive"),
    ({"OTEL_LOGS_EXPORT_INTERVAL": "5s"}, "OTEL_LOGS_EXPORT_INTERVAL", "positive"),
    ({"OTEL_METRICS_INCLUDE_VERSION": "1"}, "OTEL_METRICS_INCLUDE_VERSION", "'true' or 'false'"),
    ({"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "Delta"},
     "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "'delta' or 'cumulative'"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "user.email=a%40b.c"}, "OTEL_RESOURCE_ATTRIBUTES", "built-in"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "identity.team=x"}, "OTEL_RESOURCE_ATTRIBUTES", "built-in"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "team=a,team=b"}, "OTEL_RESOURCE_ATTRIBUTES", "more than once"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "team="}, "OTEL_RESOURCE_ATTRIBUTES", "empty value"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "team=R&D, Berlin"}, "OTEL_RESOURCE_ATTRIBUTES", "no '='"),
    ({"OTEL_RESOURCE_ATTRIBUTES": ",".join(f"k{i}=v" for i in range(13))},
     "OTEL_RESOURCE_ATTRIBUTES", "more than 12"),
    ({"OTEL_EXPORTER_OTLP_HEADERS": "Bearer abc"}, "OTEL_EXPORTER_OTLP_HEADERS", "no '='"),
    ({"OTEL_EXPORTER_OTLP_HEADERS": "Authorization="}, "OTEL_EXPORTER_OTLP_HEADERS", "empty"),
    ({"OTEL_LOG_USER_PROMPTS": "1"}, "OTEL_LOG_USER_PROMPTS", "allow_content_logging"),
    ({"OTEL_LOG_ASSISTANT_RESPONSES": "1"}, "OTEL_LOG_ASSISTANT_RESPONSES", "allow_content"),
    ({"OTEL_LOG_TOOL_CONTENT": "1"}, "OTEL_LOG_TOOL_CONTENT", "allow_content_logging"),
    ({"OTEL_LOG_RAW_API_BODIES": "file:/tmp/x"}, "OTEL_LOG_RAW_API_BODIES", "allow_content"),
    ({"OTEL_LOG_RAW_API_BODIES": "yes"}, "OTEL_LOG_RAW_API_BODIES", "file:<folder>"),
])
def test_refused(changes, variable, fragment):
    found = problems(**changes)
    assert [name for name, _ in found] == [variable], found
    assert fragment in found[0][1]


@pytest.mark.parametrize("changes", [
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4317"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.5:4317"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://[::1]:4318"},
    {"OTEL_EXPORTER_OTLP_PROTOCOL": None, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/json",
     "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "http/protobuf"},
    {"OTEL_METRICS_EXPORTER": "otlp,prometheus", "OTEL_LOGS_EXPORTER": "none"},
    {"OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer s3cr3t,X-Tenant=acme"},
    {"OTEL_LOG_USER_PROMPTS": "0", "OTEL_LOG_RAW_API_BODIES": "0"},
    {"OTEL_METRIC_EXPORT_INTERVAL": "60000", "OTEL_METRICS_INCLUDE_VERSION": "true"},
    {"SOME_OTHER_TOOL_SETTING": "anything at all"},
])
def test_accepted(changes):
    assert problems(**changes) == []


def test_otlp_exporters_need_a_protocol():
    found = problems(OTEL_EXPORTER_OTLP_PROTOCOL=None)
    assert [name for name, _ in found] == ["OTEL_METRICS_EXPORTER", "OTEL_LOGS_EXPORTER"]
    assert "OTEL_EXPORTER_OTLP_PROTOCOL (or OTEL_EXPORTER_OTLP_LOGS_PROTOCOL)" in found[1][1]


def test_content_logging_is_allowed_when_the_policy_opts_in():
    env = {**GOOD, "OTEL_LOG_USER_PROMPTS": "1", "OTEL_LOG_RAW_API_BODIES": "file:/var/log/cc"}
    assert check(env, allow_content_logging=True) == []


def test_all_problems_are_reported_together():
    found = problems(CLAUDE_CODE_ENABLE_TELEMETRY="2", OTEL_METRIC_EXPORT_INTERVAL="-1",
                     OTEL_LOG_USER_PROMPTS="1")
    assert {name for name, _ in found} == {"CLAUDE_CODE_ENABLE_TELEMETRY",
                                           "OTEL_METRIC_EXPORT_INTERVAL", "OTEL_LOG_USER_PROMPTS"}


def test_header_values_never_appear_in_messages():
    secret = "Sup3rS3cretT0ken"
    for value in (f"Authorization Bearer {secret}", f"Authorization=Bearer {secret},={secret}",
                  f"{secret}=", f"Authorization={secret},x"):
        found = problems(OTEL_EXPORTER_OTLP_HEADERS=value)
        assert found, value
        assert all(secret not in message for _, message in found)


def test_env_must_be_a_mapping():
    assert check(["A=1"], allow_content_logging=False) == [
        ("env", "must be a mapping of variable names to strings")]
