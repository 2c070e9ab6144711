"""Compiled files against the independent SchemaStore schema (read from shared/reference/,
never copied into the project): what the community schema says a settings file may hold."""

import json
from pathlib import Path

import jsonschema
import pytest

from .conftest import ROOT, require_reference, run, write_inventory
from .test_cli import HOSTILE

SCHEMA = "claude-code-settings.schema.json"


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(require_reference(SCHEMA).read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def compiled_files(out: Path) -> list[Path]:
    files = sorted(out.glob("devices/*/managed-settings.json"))
    assert files
    return files


def test_shipped_example_matches_the_schemastore_schema(validator, tmp_path):
    out = tmp_path / "out"
    assert run(ROOT, "compile", "--out", str(out)).exit_code == 0
    for path in compiled_files(out):
        errors = [e.message for e in validator.iter_errors(json.loads(path.read_text()))]
        assert errors == [], path


def test_hostile_inventory_and_every_protocol_match_the_schema(validator, workdir):
    write_inventory(workdir, HOSTILE)
    for protocol in ("grpc", "http/json", "http/protobuf"):
        result = run(workdir, "compile", "--var", f"otlp_protocol={protocol}")
        assert result.exit_code == 0, result.stderr
        for path in compiled_files(workdir / "output"):
            settings = json.loads(path.read_text())
            assert list(validator.iter_errors(settings)) == []
            assert settings["env"]["OTEL_EXPORTER_OTLP_PROTOCOL"] == protocol


def test_the_oracle_can_fail(validator):
    """The schema does reject what mdmgen's own env schema rejects (so the test above has teeth)."""
    for bad in ({"env": {"CLAUDE_CODE_ENABLE_TELEMETRY": 1}},
                {"env": {"OTEL_EXPORTER_OTLP_PROTOCOL": "http"}},
                {"env": {"lower": "x"}}):
        assert list(validator.iter_errors(bad)), bad
