"""Policy loading and merging: safe YAML, file:line errors, base -> platform -> team."""

import json

import jsonschema
import pytest
import yaml

from mdmgen import policy
from mdmgen.models import Device, Location, MdmgenError, Platform
from mdmgen.render import Renderer

from .conftest import SHIPPED_POLICY

BASE = """\
org:
  name: Example
  identifier_prefix: com.example.mdmgen
variables:
  endpoint: https://otel.example.com:4317
settings:
  env:
    CLAUDE_CODE_ENABLE_TELEMETRY: "1"
    OTEL_EXPORTER_OTLP_ENDPOINT: "{{ endpoint }}"
  permissions:
    deny: ["Bash(curl:*)", "Read(./.env)"]
resource_attributes:
  user_email: "{{ user_email }}"
  team: "{{ team }}"
"""


def device(team="Ops", platform=Platform.LINUX, **extra):
    return Device(serial="S1", platform=platform, user_email="a@example.com", team=team,
                  extra=extra, location=Location(file="inv.csv", line=2))


def problems_of(text, name="policy.yaml"):
    try:
        policy.parse(text, name)
    except MdmgenError as exc:
        return [str(p) for p in exc.problems]
    return []


def render(text, dev=None, overrides=None):
    loaded = policy.parse(text, "policy.yaml")
    renderer = Renderer(loaded, policy.resolve_variables(loaded.policy, overrides or {}))
    assert renderer.check(["cost_center"]) == []
    settings, problems = renderer.render(dev or device())
    assert problems == []
    return settings


def test_base_settings_and_variables():
    settings = render(BASE)
    assert settings["env"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "https://otel.example.com:4317"
    assert settings["env"]["OTEL_RESOURCE_ATTRIBUTES"] == "user_email=a%40example.com,team=Ops"


def test_var_override_and_unknown_var():
    assert render(BASE, overrides={"endpoint": "https://x.example:4318"})["env"][
        "OTEL_EXPORTER_OTLP_ENDPOINT"] == "https://x.example:4318"
    loaded = policy.parse(BASE, "policy.yaml")
    with pytest.raises(ValueError, match="unknown variable nope"):
        policy.resolve_variables(loaded.policy, {"nope": "1"})


def test_merge_order_base_platform_team_and_list_replacement():
    text = BASE + """\
platforms:
  windows:
    settings:
      env: {OTEL_METRIC_EXPORT_INTERVAL: "30000", CLAUDE_CODE_ENABLE_TELEMETRY: "0"}
teams:
  security:
    settings:
      env: {CLAUDE_CODE_ENABLE_TELEMETRY: "1"}
      permissions:
        deny: ["Bash(*)"]
    resource_attributes:
      team: "sec-{{ cost_center }}"
  mobile:
    settings:
      permissions: null
    resource_attributes:
      user_email: null
"""
    win_sec = render(text, device(team="Security", platform=Platform.WINDOWS, cost_center="42"))
    assert win_sec["env"]["OTEL_METRIC_EXPORT_INTERVAL"] == "30000"  # from the platform
    assert win_sec["env"]["CLAUDE_CODE_ENABLE_TELEMETRY"] == "1"  # team beats platform
    assert win_sec["permissions"] == {"deny": ["Bash(*)"]}  # lists replace, not append
    assert win_sec["env"]["OTEL_RESOURCE_ATTRIBUTES"] == "user_email=a%40example.com,team=sec-42"
    mobile = render(text, device(team="MOBILE", cost_center="1"))  # team match ignores case
    assert "permissions" not in mobile  # null removes
    assert mobile["env"]["OTEL_RESOURCE_ATTRIBUTES"] == "team=MOBILE"


def test_undefined_template_name_names_file_line_and_key():
    text = BASE.replace("{{ endpoint }}", "{{ endpiont }}")
    loaded = policy.parse(text, "profiles/policy.yaml")
    renderer = Renderer(loaded, loaded.policy.variables)
    assert [str(p) for p in renderer.check([])] == [
        "profiles/policy.yaml:9: settings.env.OTEL_EXPORTER_OTLP_ENDPOINT: "
        "undefined name 'endpiont' in template"]


def test_template_syntax_error_is_reported():
    loaded = policy.parse(BASE.replace("{{ team }}", "{{ team "), "p.yaml")
    [problem] = Renderer(loaded, loaded.policy.variables).check([])
    assert str(problem).startswith("p.yaml:14: resource_attributes.team: template syntax error")


def test_sandbox_blocks_attribute_escapes():
    text = BASE.replace("{{ team }}", "{{ team.__class__.__mro__ }}")
    loaded = policy.parse(text, "p.yaml")
    renderer = Renderer(loaded, loaded.policy.variables)
    settings, problems = renderer.render(device())
    assert settings is None
    assert str(problems[0]).startswith("p.yaml:14: resource_attributes.team: ")
    assert "unsafe" in problems[0].message and problems[0].serial == "S1"


def test_unsafe_yaml_tags_are_refused():
    errors = problems_of(BASE + "x: !!python/object/apply:os.system ['echo hacked']\n")
    assert len(errors) == 1 and errors[0].startswith("policy.yaml:15: yaml: could not determine a constructor")


def test_validation_errors_point_at_lines():
    text = BASE.replace("identifier_prefix: com.example.mdmgen", "identifier_prefix: nodots")
    text += "teams:\n  ops:\n    setting: {}\n"
    assert problems_of(text) == [
        "policy.yaml:3: org.identifier_prefix: must be reverse-DNS, e.g. 'com.example.mdmgen'",
        "policy.yaml:17: teams.ops.setting: unknown key 'setting'; did you mean 'settings'?",
    ]


def test_a_misspelt_required_key_is_one_line_with_a_suggestion():
    text = BASE.replace("identifier_prefix: com.example.mdmgen", "identifer_prefix: com.example.mdmgen")
    assert problems_of(text) == [
        "policy.yaml:3: org.identifer_prefix: unknown key 'identifer_prefix'; did you mean 'identifier_prefix'?",
    ]


def test_an_unknown_key_with_no_near_match_lists_the_known_keys():
    errors = problems_of(BASE.replace("org:", "org:\n  colour: blue"))
    assert errors == ["policy.yaml:2: org.colour: unknown key 'colour' (known keys: name, identifier_prefix, "
                      "display_name)"]


def test_duplicate_keys_and_non_json_values_and_direct_attributes():
    text = BASE + """\
platforms:
  linux:
    settings:
      when: 2024-01-01
      env:
        OTEL_RESOURCE_ATTRIBUTES: "team=x"
teams:
  a: {}
  a: {}
  A: {}
"""
    assert problems_of(text) == [
        "policy.yaml:23: teams.a: duplicate key",
        "policy.yaml:18: platforms.linux.settings.when: date is not a JSON value; "
        "quote it to make it a string",
        "policy.yaml:20: platforms.linux.settings.env.OTEL_RESOURCE_ATTRIBUTES: set attributes "
        "under 'resource_attributes:' instead; mdmgen builds and encodes this variable itself "
        "so no value can inject an attribute",
        "policy.yaml:24: teams.A: same team as 'a' (team names ignore case, accent encoding and surrounding spaces)",
    ]


def test_bad_attribute_key_and_variable_name():
    text = BASE.replace("  team: \"{{ team }}\"", '  "team name": x').replace(
        "  endpoint:", "  team: x\n  endpoint:")
    errors = problems_of(text)
    assert any("variable 'team' would hide the device field" in e for e in errors)
    assert any("attribute name 'team name' is not a token" in e for e in errors)


def test_schema_is_json_schema_of_the_policy():
    schema = policy.schema()
    json.dumps(schema)
    assert schema["title"] == "mdmgen policy"
    assert {"org", "settings", "teams", "platforms", "variables"} <= set(schema["properties"])
    assert "org" in schema["required"]


def schema_errors(data) -> list[str]:
    """What an editor using ``mdmgen schema`` would flag (jsonschema, independent of pydantic)."""
    validator = jsonschema.Draft202012Validator(policy.schema())
    return [error.message for error in validator.iter_errors(data)]


def test_the_schema_accepts_the_shipped_policy_and_flags_what_the_validators_refuse():
    shipped = yaml.safe_load(SHIPPED_POLICY.read_text())
    assert schema_errors(shipped) == []
    bad_cases = {
        "identifier_prefix": {**shipped, "org": {**shipped["org"], "identifier_prefix": "nodots"}},
        "variable name": {**shipped, "variables": {"not-an-identifier": "x"}},
        "variable hiding a device field": {**shipped, "variables": {"team": "x"}},
        "attribute name": {**shipped, "resource_attributes": {"team name": "x"}},
        "secret_env name": {**shipped, "secret_env": ["lower"]},
        "unknown key": {**shipped, "setings": {}},
        "unknown org key": {**shipped, "org": {**shipped["org"], "identifer_prefix": "com.example.x"}},
    }
    for case, data in bad_cases.items():
        assert schema_errors(data), case
        with pytest.raises(MdmgenError):  # and the compiler refuses the same file
            policy.parse(yaml.safe_dump(data), "policy.yaml")


@pytest.mark.parametrize("value, message", [
    ("18446744073709551616", "integer out of range: a profile holds integers from -2**63 to 2**64-1"),
    ("-9223372036854775809", "integer out of range"),
    (".nan", "must be a finite number"),
    ("-.inf", "must be a finite number"),
])
def test_values_a_profile_cannot_hold_are_file_line_errors(value, message):
    errors = problems_of(BASE + f"platforms:\n  macos:\n    settings:\n      n: {value}\n")
    assert len(errors) == 1 and errors[0].startswith(f"policy.yaml:18: platforms.macos.settings.n: {message}")


def test_the_largest_integers_a_profile_holds_are_accepted():
    assert problems_of(BASE + "platforms:\n  macos:\n    settings:\n      n: 18446744073709551615\n"
                              "      m: -9223372036854775808\n") == []


def test_deeply_nested_values_are_a_file_line_error_not_a_crash():
    deep = "[" * 500 + "]" * 500
    errors = problems_of(BASE.replace("settings:\n", f"settings:\n  deep: {deep}\n", 1))
    assert len(errors) == 1
    assert errors[0].startswith("policy.yaml:7: yaml: values nest deeper than 64 levels")
    assert problems_of(BASE.replace("settings:\n", f"settings:\n  deep: {'[' * 60}{']' * 60}\n", 1)) == []


def test_the_intune_section_maps_teams_to_groups_and_refuses_an_empty_group():
    loaded = policy.parse(BASE + 'intune:\n  groups:\n    "R&D, Berlin": sg-rnd-berlin\n', "policy.yaml")
    assert loaded.policy.intune is not None and loaded.policy.intune.groups == {"R&D, Berlin": "sg-rnd-berlin"}
    assert policy.parse(BASE, "policy.yaml").policy.intune is None
    problems = problems_of(BASE + "intune:\n  groups:\n    ops: ' '\n")
    assert any("intune.groups" in p and "displayName or an object id" in p for p in problems), problems
    problems = problems_of(BASE + "intune:\n  group: {}\n")
    assert any("unknown key 'group'; did you mean 'groups'?" in p for p in problems), problems
