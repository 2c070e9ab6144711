"""Fuzzing (issue 11): the CSV loader, the YAML loader and the whole compile, over hostile inputs.

Every input ends in exactly one of two ways: output that parses and validates (the JSON parses
and matches the independent SchemaStore schema, every Mac's profile parses and carries the same
settings as its JSON), or clean ``file:line: field: message`` lines with a documented exit code.
Never a traceback, exit 70 (a bug), a hang, or a write outside the output folder.

Bounded for CI: fixed ``max_examples``, ``derandomize=True`` (the same examples on every run, so
CI cannot flake), no deadline per example but an alarm that turns a hang into a failure.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mdmgen import inventory, policy
from mdmgen.models import MdmgenError, Problem

from .conftest import require_reference, run
from .test_hostile_characters import (
    HOSTILE_TEXT,
    PROBLEM_LINE,
    WRITABLE_CHARS,
    assert_every_mac_profile_equals_its_json,
    csv_text,
    yaml_quoted,
)

SCHEMA = "claude-code-settings.schema.json"
def fuzz(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])
HANG_SECONDS = 30

GOOD_SERIALS = ["MAC1", "MAC2", "LNX1", "WIN1", "WSL1", "mac3", "A-b_c.9"]
BAD_SERIALS = ["../../outside", "..", ".", "", "a/b", "a\\b", "C:", "NUL", "nul.txt", "x" * 65, ".hidden",
               "\uff0e\uff0e", "trailing.", "CON", "x\x00y", "../manifest.json", "../.output.mdmgen-prev",
               "/etc/passwd", "MAC1\u200b"]
GOOD_PLATFORMS = ["macos", "mac", "MacOS", "linux", "windows", "wsl"]
BAD_PLATFORMS = ["beos", "", "osx\u200b", "mac\x00"]
GOOD_EMAILS = ["ann@example.com", "zoë@example.com", "b.c+d@example.org"]
BAD_EMAILS = ["bad", "", "a@b", "x\x1b@example.com", "a\u202e@example.com"]
GOOD_TEAMS = ["Ops", "Sec", "R&D, Berlin", "Caf\u00e9", "Cafe\u0301", "Équipe 😀"]
BAD_TEAMS = ["", "O\u202eps", "two\nlines", "\ufeffOps", "Z\u200bero", "x\ry", "\x1b[31mred"]
GOOD_TEMPLATES = ["{{ serial }}", "{{ team }}", "{{ user_email }}", "{{ note }}", "{{ serial|baggage }}",
                  "{{ serial ~ '-' ~ team ~ note }}", "{% for i in range(3) %}{{ i }}{% endfor %}",
                  "{{ [serial] * 3 }}",
                  "{{ note|upper|center(20) }}", "{{ '%s/%s'|format(team, serial) }}", "plain text"]
BAD_TEMPLATES = [
    "{{ undefined_name }}", "{{ serial|center(10**9) }}", "{{ 'a' * 10**9 }}",
    "{% for i in range(10**9) %}{% endfor %}",
    "{% for i in range(10**5) %}{% for j in range(10**5) %}{% endfor %}{% endfor %}", "{{ 10 ** 10 ** 10 }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}", "{{ cycler.__init__.__globals__.os }}",
    "{{ lipsum.__globals__['os'].system('id') }}", "{{ self._TemplateReference__context }}", "{{ range.__self__ }}",
    "{{ 1 / 0 }}", "{{ {}['x'] }}", "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "{{ '%c'|format(13) }}",
    "{{ '\\x00' }}", "{% include 'x' %}", "{{ unclosed", "{% for %}", "{{ user_email_sha256 }}",
    "{{ user_email|sha256 }}", "{{ raw_user_email }}", "{{ '%c'|format(27) }}[2J",
    "{{ " + "(" * 400 + ")" * 400 + " }}",
    "{{ 1" + "+1" * 2000 + " }}", "{{ range(3)|batch(10**9, 'x')|list }}", "{{ lipsum(10**6) }}",
]
ENV_GOOD = {"CLAUDE_CODE_ENABLE_TELEMETRY": '"1"', "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel.example.com:4317"}
ENV_BAD = ["OTEL_EXPORTER_OTLP_PROTOCOL: http", "OTEL_LOG_USER_PROMPTS: '1'", "lower: x",
           "CLAUDE_CODE_ENABLE_TELEMETRY: 1",
           "OTEL_RESOURCE_ATTRIBUTES: a=b", "OTEL_EXPORTER_OTLP_ENDPOINT: \"{{ note }}\""]
BAD_SCALARS = ["1e999", "18446744073709551616", "2024-01-01", "!!binary aGk=", "!!python/object/apply:os.system ['id']",
               "null", "~", "'", '"\\ud800"', '"\\x00"', '"a\\rb"', '"\\ufffe"', "*undefined_alias"]
WRITABLE_TEXT = st.lists(st.sampled_from(WRITABLE_CHARS), min_size=1, max_size=6).map("".join)


def _good(good, _bad, one_in: int = 10):
    """Always a value from ``good``: ``mostly`` for an example drawn without hostile values."""
    return good


@st.composite
def _mostly(draw, good, bad, one_in: int = 10):
    """Usually a value from ``good``, one time in ``one_in`` from ``bad`` (both strategies)."""
    # Not 0: Hypothesis draws the simplest value (the minimum) far more often than uniformly.
    return draw(bad) if draw(st.integers(0, one_in - 1)) == one_in // 2 else draw(good)


def texts() -> st.SearchStrategy[str]:
    return st.one_of(WRITABLE_TEXT.map(yaml_quoted), st.sampled_from(GOOD_TEMPLATES).map(yaml_quoted))


def scalars(hostile: bool = True) -> st.SearchStrategy[str]:
    good = st.one_of(WRITABLE_TEXT.map(yaml_quoted), st.sampled_from(GOOD_TEMPLATES).map(yaml_quoted),
                     st.sampled_from(["1", "true", "2.5", "[a, b]", "{x: 1}"]))
    bad = st.one_of(HOSTILE_TEXT.map(yaml_quoted), st.sampled_from(BAD_TEMPLATES).map(yaml_quoted),
                    st.sampled_from(BAD_SCALARS))
    return _mostly(good, bad) if hostile else good


def nested(depth: int) -> st.SearchStrategy[str]:
    return st.sampled_from(["[" * depth + "1" + "]" * depth, "{k: " * depth + "1" + "}" * depth])


def alias_bomb(levels: int) -> str:
    lines = ["  bomb0: &b0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"  bomb{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines)


@st.composite
def policies(draw, hostile: bool = True) -> bytes:
    """A policy: mostly well formed, with hostile values, keys, templates and teams mixed in, and
    sometimes structurally hostile (alias bombs, deep nesting, junk lines, broken bytes). Not
    ``hostile``: only well-formed values (still awkward: unicode, templates, quotes)."""
    mostly = _mostly if hostile else _good
    prefix = draw(mostly(st.just("com.example.mdmgen"), st.sampled_from(["bad", "com.", '"com.x\\n"'])))
    lines = ["org: {name: Example, identifier_prefix: " + prefix + "}", "settings:", "  env:"]
    chosen = draw(st.sampled_from([(), ("CLAUDE_CODE_ENABLE_TELEMETRY",), tuple(ENV_GOOD)]))  # valid together
    lines += [f"    {key}: {ENV_GOOD[key]}" for key in chosen]
    if hostile and draw(st.integers(0, 5)) == 3:
        lines.append("    " + draw(st.sampled_from(ENV_BAD)))
    if lines[-1] == "  env:":
        lines[-1] = "  env: {}"
    keys = draw(st.lists(mostly(WRITABLE_TEXT, HOSTILE_TEXT), max_size=3, unique=True))
    lines += [f"  {yaml_quoted('k' + key)}: {draw(scalars(hostile))}" for key in keys]
    shape = draw(st.integers(0, 11)) if hostile else 0
    if shape == 4:
        lines.append("  deep: " + draw(nested(draw(st.sampled_from([3, 62, 65, 500])))))
    elif shape == 5:
        lines.append(alias_bomb(draw(st.sampled_from([2, 5, 10]))))
    elif shape == 6:
        lines.append("  chain0: &c0 [x]")
        lines += [f"  chain{i}: &c{i} [*c{i - 1}]" for i in range(1, draw(st.sampled_from([10, 70])))]
    lines.append("resource_attributes:")
    names = draw(st.lists(mostly(st.sampled_from(["team", "user_email", "site"]),
                                 st.sampled_from(["bad key", "email_sha256", "a=b"])), max_size=3, unique=True))
    lines += [f"  {name}: {draw(mostly(texts(), scalars(hostile)))}" for name in names] or ["  {}"]
    teams = draw(st.lists(mostly(st.sampled_from(GOOD_TEAMS), st.sampled_from(BAD_TEAMS)), max_size=2, unique=True))
    lines.append("teams:" if teams else "teams: {}")
    # Announcements are strings in Claude Code's schema, and mdmgen does not check a setting's type
    # against it (see test_a_number_in_company_announcements_is_refused): well-formed examples keep
    # them strings, so a compile that succeeds must give schema-valid output.
    announcement = scalars(hostile) if hostile else texts()
    lines += [f"  {yaml_quoted(team)}: {{settings: {{companyAnnouncements: [{draw(announcement)}]}}}}"
              for team in teams]
    if hostile and draw(st.integers(0, 11)) == 6:
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(
            ["  bad indent", "org: again", "\t tab", "- list", "%YAML 1.1", "--- second doc", "key: [unclosed"])))
    data = "\n".join(lines).encode("utf-8") + b"\n"
    if hostile and draw(st.integers(0, 11)) == 7:  # a broken byte somewhere: NUL, invalid UTF-8, a BOM
        where = draw(st.integers(0, len(data)))
        data = data[:where] + draw(st.sampled_from([b"\x00", b"\xff", b"\xed\xa0\x80", b"\xef\xbb\xbf"])) + data[where:]
    return data


@st.composite
def inventories(draw, hostile: bool = True) -> bytes:
    """An HR export: the usual columns plus an extra one, rows mostly valid with hostile cells mixed
    in, written in one of the encodings HR tools use, sometimes with a broken byte. Not ``hostile``:
    valid rows only (still awkward: unicode teams, quotes, commas), in an encoding that decodes."""
    mostly = _mostly if hostile else _good
    header = ["serial_number", "platform", "user_email", "team",
              draw(mostly(st.just("note"), st.sampled_from(["Note", "", "team", "\x1bnote\n"])))]
    rows = [header]
    for number in range(draw(st.integers(1, 5))):
        good_serial = st.sampled_from(GOOD_SERIALS).map(lambda serial, n=number: f"{serial}{n}")  # unique
        rows.append([draw(mostly(good_serial, st.sampled_from(BAD_SERIALS + GOOD_SERIALS))),
                     draw(mostly(st.sampled_from(GOOD_PLATFORMS), st.sampled_from(BAD_PLATFORMS))),
                     draw(mostly(st.sampled_from(GOOD_EMAILS), st.sampled_from(BAD_EMAILS))),
                     draw(mostly(st.sampled_from(GOOD_TEAMS), st.sampled_from(BAD_TEAMS))),
                     draw(mostly(WRITABLE_TEXT, HOSTILE_TEXT))])
    text = csv_text(rows)
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "utf-8", "raw", "utf-8"][
        :None if hostile else 6]))
    if encoding == "raw":
        data = text.encode("utf-8", "surrogatepass")
        where = draw(st.integers(0, len(data)))
        return data[:where] + draw(st.sampled_from([b"\x00", b"\xff\xfe", b"\xc3", b"\r", b'"'])) + data[where:]
    try:
        return text.encode(encoding)
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def validator():
    schema = require_reference(SCHEMA).read_text(encoding="utf-8")
    return jsonschema.Draft7Validator(json.loads(schema))


@contextmanager
def no_hang(seconds: int = HANG_SECONDS):
    """A hang becomes a failure (the budgets should stop every input long before)."""
    def alarm(_signum, _frame):
        raise TimeoutError(f"no answer within {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def tree(root: Path) -> dict[str, bytes | str]:
    """Everything under ``root`` (links as their target, never followed)."""
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            found[key] = f"-> {path.readlink()}"
        elif path.is_file():
            found[key] = path.read_bytes()
    return found


def is_output(name: str) -> bool:
    top = name.split("/")[0]
    return top == "output" or top.startswith(".output.mdmgen-")


def assert_clean_problems(result) -> None:
    lines = result.stderr.splitlines()
    assert lines, result.output
    assert lines[-1].endswith("nothing was written.") or lines[-1].startswith("error: no device"), lines[-1]
    for line in lines[:-1]:
        assert PROBLEM_LINE.match(line) or line.startswith(("inventory/", "profiles/")), line


def assert_valid_output(out: Path, validator) -> None:
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert sorted(p.name for p in (out / "devices").iterdir()) == sorted(manifest["devices"])
    for folder in (out / "devices").iterdir():
        settings_json = json.loads((folder / "managed-settings.json").read_text(encoding="utf-8"))
        assert list(validator.iter_errors(settings_json)) == [], folder.name
    assert_every_mac_profile_equals_its_json(out)


HOSTILE_EXAMPLE = _mostly(st.just(False), st.just(True), one_in=6)
"""About one example in six draws hostile values; the others are well formed but awkward."""
SHARE: Counter[str] = Counter()
"""Examples of the whole-compile property that compiled and checked the output, and those refused."""


@fuzz(max_examples=150)
@given(inputs=HOSTILE_EXAMPLE.flatmap(lambda hostile: st.tuples(policies(hostile), inventories(hostile))),
       skip=st.booleans())
def test_a_whole_compile_of_hostile_input_ends_in_valid_output_or_clean_errors(
        tmp_path_factory, validator, inputs, skip):
    """About one example in six is hostile (most of those are refused); the others are well formed
    but awkward, so most examples compile and check every output file against the schema and every
    profile against its JSON. 139 of 150 examples compile, measured 2026-12-05 (always
    derandomized); ``test_most_whole_compiles_check_the_output`` keeps the share above 80%."""
    policy_bytes, inventory_bytes = inputs
    root = tmp_path_factory.mktemp("fuzz")
    (root / "outside").mkdir()
    (root / "outside" / "precious").write_text("untouched\n")
    (root / "profiles").mkdir()
    (root / "profiles" / "policy.yaml").write_bytes(policy_bytes)
    (root / "inventory").mkdir()
    (root / "inventory" / "devices.csv").write_bytes(inventory_bytes)
    before = tree(root)
    with no_hang():
        result = run(root, "compile", *(["--skip-invalid"] if skip else []))
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 1, 3), result.output  # 70 would be a bug; 2 is for flags, not inputs
    after = tree(root)
    assert {k: v for k, v in after.items() if not is_output(k)} == before  # nothing written outside
    if result.exit_code == 1:
        event("refused: " + result.stderr.split(": ")[1][:20] if ": " in result.stderr else "refused")
        assert_clean_problems(result)
        assert not (root / "output").exists()
    else:
        event("compiled")
        assert_valid_output(root / "output", validator)
    SHARE["refused" if result.exit_code == 1 else "compiled"] += 1
    shutil.rmtree(root)


@pytest.mark.xfail(strict=True, reason="mdmgen does not check a setting's type against Claude Code's schema: "
                   "it writes companyAnnouncements: [1], which the schema refuses (found by the fuzz property)")
def test_a_number_in_company_announcements_is_refused(workdir):
    (workdir / "profiles" / "policy.yaml").write_text(
        "org: {name: Example, identifier_prefix: com.example.mdmgen}\nsettings:\n  env: {}\n"
        "  companyAnnouncements: [1]\n", encoding="utf-8")
    (workdir / "inventory" / "devices.csv").write_text(
        "serial_number,platform,user_email,team\nLNX1,linux,ann@example.com,Ops\n", encoding="utf-8")
    assert run(workdir, "compile").exit_code == 1


def test_most_whole_compiles_check_the_output():
    """The whole-compile property proves little if most examples are refused before anything is
    written: a strategy that drifts towards refused input would pass while checking no output."""
    total = sum(SHARE.values())
    if not total:
        pytest.skip("the property test was not run (deselected)")
    assert SHARE["compiled"] / total >= 0.8, dict(SHARE)


@fuzz(max_examples=300)
@given(data=st.one_of(inventories(), st.binary(max_size=300)))
def test_the_csv_loader_returns_devices_or_problems_never_raises(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("csv") / "devices.csv"
    path.write_bytes(data)
    with no_hang():
        loaded = inventory.load([path])
    assert all(isinstance(p, Problem) and p.location.file == str(path) for p in loaded.problems)
    assert all("\n" not in str(p) for p in loaded.problems)
    for device in loaded.devices:
        assert device.location.line >= 2
        assert not any(part in device.serial for part in ("/", "\\", "..")) and device.serial[:1] != "."


@fuzz(max_examples=300)
@given(data=st.one_of(policies(), st.binary(max_size=300)))
def test_the_yaml_loader_returns_a_policy_or_file_line_problems_never_raises(data):
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return  # policy.load reports the encoding; parse takes text
    with no_hang():
        try:
            loaded = policy.parse(text, "policy.yaml")
        except MdmgenError as exc:
            assert exc.problems
            assert all(p.location.file == "policy.yaml" and "\n" not in str(p) for p in exc.problems)
            return
    assert isinstance(loaded.policy, policy.Policy)
