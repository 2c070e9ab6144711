"""Load the policy (profiles/policy.yaml) and merge it into one settings tree per device.

The policy is YAML read with the safe loader only, checked by pydantic, and every problem points
at ``file:line`` of the offending key. Merging is base -> platform -> team:

* mappings merge key by key, recursively;
* any other value (string, number, boolean, list) replaces the earlier one whole, so an
  override restates a list completely and can shorten it;
* ``null`` removes the key inherited from an earlier layer.

Templated strings are not rendered here (that is ``render``); each leaf string keeps the
policy location it came from, so a template error names the exact key that holds it.
"""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import runscope
from .attributes import TOKEN_RE
from .errors import MdmgenException
from .exitcodes import ExitCode
from .inputfile import MAX_POLICY_BYTES, InputFileError, not_text, read_input
from .models import Location, MdmgenError, Platform, Problem, team_key, team_spelling, unencodable_text
from .policy_sections import ENV_NAME_RE, Collector, Intune

POLICY_FILENAME = "policy.yaml"
VARIABLE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REVERSE_DNS_RE = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


DEVICE_FIELDS = ("serial", "platform", "user_email", "team", "raw_user_email")
"""The names every template may use besides the inventory's extra columns and the variables.
``raw_user_email`` is the inventory's address even when ``pseudonymise_email`` is on."""
_EMAIL_WORD = re.compile(r"^(e?mail|upn|address)$")
_HASH_WORD = re.compile(r"^(hash(ed)?|sha\d*|sha3\w*|md5|blake\w*|digest)$")


def announces_email_hash(name: str) -> bool:
    """Whether a name announces a plain hash of an email (``user_email_sha256``, ``hashed_email``).

    Such a hash is reversed by hashing a guessed list of addresses, so it is refused (see
    ``secrets``). The name is split into words at ``_ - .`` and spaces, so ``mailing_shard`` is
    not taken for one."""
    words = set(re.split(r"[^a-z0-9]+", name.lower()))
    return any(_EMAIL_WORD.match(w) for w in words) and any(_HASH_WORD.match(w) for w in words)


UNKEYED_HASH_MESSAGE = ("a plain hash of an email is reversible by hashing guessed addresses; set "
                        "'pseudonymise_email: true' and use 'user_email' (a keyed pseudonym) instead")
MAX_DEPTH = 64
"""How deeply policy values may nest, counted after aliases are expanded. Real settings nest a
handful of levels; a bound keeps a hostile or broken file from exhausting the recursion of every
stage that walks the tree (merge, render, the plist writer)."""
MAX_VALUES = 100_000
"""How many values (mappings, lists and scalars) the policy may hold once its YAML aliases are
expanded. A real policy holds a few hundred; a 420-byte "billion laughs" file of 10 levels of 9
aliases expands to 3.4 billion, which every later stage would walk once per team."""
PLIST_INTEGERS = (-(2**63), 2**64 - 1)
"""The integers a property list can hold (plistlib refuses others when it writes a profile)."""


class UnknownVariable(MdmgenException, ValueError):
    """A ``--var`` names a variable the policy does not declare: a usage error (exit 2), shown as
    click shows a malformed option."""

    exit_code = ExitCode.USAGE
    click_usage = True


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing values nested deeper than :data:`MAX_DEPTH` with the line."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"values nest deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

ColumnField = Literal["serial_number", "platform", "user_email", "team", "status"]


class Org(BaseModel):
    """Who the profiles belong to; the identifier prefix makes every PayloadIdentifier."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="PayloadOrganization of every profile.")
    identifier_prefix: str = Field(
        description="Reverse-DNS prefix; a Mac's profile is '<prefix>.claudecode.<SERIAL>'.",
        json_schema_extra={"pattern": _REVERSE_DNS_RE.pattern})
    display_name: str = Field(default="Claude Code managed settings", min_length=1,
                              description="PayloadDisplayName shown on the Mac.")

    @field_validator("identifier_prefix")
    @classmethod
    def _reverse_dns(cls, value: str) -> str:
        if not _REVERSE_DNS_RE.match(value):
            raise ValueError("must be reverse-DNS, e.g. 'com.example.mdmgen'")
        return value


class Layer(BaseModel):
    """What a platform or team override may change."""

    model_config = ConfigDict(extra="forbid")

    settings: dict[str, Any] = Field(default_factory=dict,
                                     description="Managed settings merged over the earlier layers.")
    resource_attributes: dict[str, str | None] = Field(
        default_factory=dict,
        description="OTEL_RESOURCE_ATTRIBUTES entries (templates); null removes an inherited one.",
        json_schema_extra={"propertyNames": {"pattern": TOKEN_RE.pattern}})

    @field_validator("resource_attributes")
    @classmethod
    def _attribute_keys(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        for key in value:
            if not TOKEN_RE.match(key):
                raise ValueError(f"attribute name {key!r} is not a token "
                                 "(letters, digits and !#$%&'*+-.^_`|~)")
        return value


class Policy(Layer):
    """The whole policy file. ``mdmgen schema`` prints the JSON Schema of this model."""

    model_config = ConfigDict(extra="forbid", title="mdmgen policy")

    org: Org
    variables: dict[str, str] = Field(
        default_factory=dict,
        description="Named values with defaults, usable in templates; --var NAME=VALUE overrides.",
        json_schema_extra={"propertyNames": {"pattern": VARIABLE_NAME_RE.pattern,
                                             "not": {"enum": list(DEVICE_FIELDS)}}})
    columns: dict[ColumnField, str] = Field(
        default_factory=dict, description="Inventory header to use for a field, e.g. "
        "{serial_number: 'Asset Serial'}; replaces the built-in aliases for that field.")
    allow_content_logging: bool = Field(
        default=False, description="Allow OTEL_LOG_* variables that export prompt/code content.")
    secret_env: list[str] = Field(
        default_factory=list,
        description="env variables whose values are secrets: never shown by diff or logs "
        "(the OTLP headers variables always are).",
        json_schema_extra={"items": {"type": "string", "pattern": ENV_NAME_RE.pattern}})
    pseudonymise_email: bool = Field(
        default=False, description="Replace user_email everywhere mdmgen writes it with a keyed pseudonym "
        "(HMAC-SHA256 under MDMGEN_PSEUDONYM_KEY or MDMGEN_PSEUDONYM_KEY_FILE); the key is never read "
        "from the policy.")
    platforms: dict[Platform, Layer] = Field(default_factory=dict)
    teams: dict[str, Layer] = Field(default_factory=dict)
    intune: Intune | None = Field(
        default=None, description="Publishing to Microsoft Intune: present (even as 'intune: {}') makes the "
        "compile write intune/teams.json for `mdmgen publish intune`.")
    collector: Collector | None = Field(
        default=None, description="The collector side (output/collector/); none: no collector files.")

    @field_validator("secret_env")
    @classmethod
    def _secret_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not ENV_NAME_RE.match(name):
                raise ValueError(f"{name!r} is not an env variable name")
        return value

    @field_validator("variables")
    @classmethod
    def _variable_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not VARIABLE_NAME_RE.match(name):
                raise ValueError(f"variable name {name!r} is not an identifier")
            if name in DEVICE_FIELDS:
                raise ValueError(f"variable {name!r} would hide the device field of that name")
        return value


@dataclass(frozen=True)
class Leaf:
    """A policy string or scalar, with the key path it was written at (for error messages)."""

    value: Any
    path: tuple[str | int, ...]


@dataclass(frozen=True)
class LoadedPolicy:
    """A checked policy plus what is needed to point at its lines."""

    policy: Policy
    file: str
    lines: Mapping[tuple[str | int, ...], int]

    def location(self, path: tuple[str | int, ...]) -> Location:
        """The line of the longest known prefix of ``path``."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line:
                return Location(file=self.file, line=line)
        return Location(file=self.file)


def dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def policy_file(profiles: Path) -> Path:
    """``--profiles`` may name the folder (holding policy.yaml) or a .yaml/.yml file itself."""
    if profiles.suffix.lower() in (".yaml", ".yml") and not profiles.is_dir():
        return profiles
    return profiles / POLICY_FILENAME


def load(profiles: Path) -> LoadedPolicy:
    """Read, parse and check the policy; raise MdmgenError with every problem found."""
    path = policy_file(profiles)
    name = str(path)
    try:
        data = read_input(path, MAX_POLICY_BYTES)
        if kind := not_text(data):
            raise MdmgenError([Problem(location=Location(file=name), field="policy",
                                       message=f"this is {kind}, not a YAML text file: save it as UTF-8 text")])
        text = data.decode("utf-8-sig")
    except FileNotFoundError:
        raise MdmgenError([Problem(location=Location(file=name), field="policy",
                                   message="no such file")]) from None
    except InputFileError as exc:
        raise MdmgenError([Problem(location=Location(file=name), field="policy", message=str(exc))]) from None
    except UnicodeDecodeError as exc:
        raise MdmgenError([Problem(location=Location(file=name), field="policy",
                                   message=f"cannot read: {exc}")]) from None
    return parse(text, name)


def parse(text: str, name: str) -> LoadedPolicy:
    try:
        node = yaml.compose(text, Loader=_BoundedLoader)
        if node is not None:
            _expanded_size(node, name)  # raises before construction and every later walk expand the aliases
        data = yaml.load(text, Loader=_BoundedLoader)  # a subclass of the safe loader: no tags run code
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, written raw in the file
        line = text[:exc.position].count("\n") + 1
        char = chr(exc.character) if isinstance(exc.character, int) else str(exc.character)
        reason = unencodable_text(char) or f"contains U+{ord(char[:1] or '?'):04X}, which YAML does not allow"
        raise MdmgenError([Problem(location=Location(file=name, line=line), field="yaml",
                                   message=reason)]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        reason = getattr(exc, "problem", None) or str(exc)
        raise MdmgenError([Problem(location=Location(file=name, line=line), field="yaml",
                                   message=" ".join(str(reason).split()))]) from None
    lines: dict[tuple[str | int, ...], int] = {}
    problems: list[Problem] = []
    if node is not None:
        _index_lines(node, (), lines, problems, name, set())
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(Problem(location=Location(file=name, line=1), field="policy",
                                message="must be a mapping of keys (org, settings, ...)"))
        raise MdmgenError(problems)
    unreadable = _character_problems(data, LoadedPolicy(policy=Policy.model_construct(), file=name, lines=lines))
    if unreadable:  # before the schema, whose messages would repeat the characters
        raise MdmgenError(problems + unreadable)
    loaded = None
    try:
        loaded = LoadedPolicy(policy=Policy.model_validate(data), file=name, lines=lines)
    except ValidationError as exc:
        holder = LoadedPolicy(policy=Policy.model_construct(), file=name, lines=lines)
        for path, message in validation_messages(exc):
            problems.append(Problem(location=holder.location(path), field=dotted(path), message=message))
    if loaded is not None:
        problems.extend(_check_values(loaded))
    if problems:
        raise MdmgenError(problems)
    assert loaded is not None
    return loaded


def validation_messages(exc: ValidationError) -> list[tuple[tuple[str | int, ...], str]]:
    """pydantic's errors as ``(key path, message)`` for an IT admin.

    An unknown key is the usual typo, so it says so and suggests the nearest known key. A
    misspelt required key (``identifer_prefix``) would also count as "missing": that second
    error only repeats the first, so it is left out and the typo is one line.
    """
    errors = exc.errors()
    unknown = {tuple(e["loc"]) for e in errors if e["type"] == "extra_forbidden"}
    out: list[tuple[tuple[str | int, ...], str]] = []
    for err in errors:
        path = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            known = _known_keys(path[:-1])
            guess = difflib.get_close_matches(str(path[-1]), known, n=1, cutoff=0.6)
            hint = f"; did you mean {guess[0]!r}?" if guess else (
                f" (known keys: {', '.join(known)})" if known else "")
            out.append((path, f"unknown key {str(path[-1])!r}{hint}"))
        elif err["type"] == "missing" and any(
                loc[:-1] == path[:-1] and difflib.get_close_matches(str(loc[-1]), [str(path[-1])], cutoff=0.6)
                for loc in unknown):
            continue
        else:
            out.append((path, err["msg"].removeprefix("Value error, ")))
    return out


def _known_keys(parent: tuple[str | int, ...]) -> list[str]:
    """The keys the policy model accepts at a key path (empty where keys are free, as in settings)."""
    model: Any = Policy
    rest = list(parent)
    while rest:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or rest[0] not in model.model_fields:
            return []
        annotation = model.model_fields[rest.pop(0)].annotation
        optional = [a for a in typing.get_args(annotation) if a is not type(None)]
        if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(optional) == 1:
            annotation = optional[0]  # ``collector: Collector | None``: its keys are Collector's
        if typing.get_origin(annotation) is dict:  # platforms.<name>, teams.<name>: skip the free key
            if not rest:
                return []
            rest.pop(0)
            annotation = typing.get_args(annotation)[1]
        model = annotation
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _expanded_size(root: yaml.Node, name: str) -> int:
    """How many values ``root`` holds with its aliases expanded, refusing a policy that nests
    deeper than :data:`MAX_DEPTH` or holds more than :data:`MAX_VALUES` values that way.

    An alias reuses its anchor's node object, so sizes and depths are memoised per node: the cost
    is linear in the file, however many paths the aliases make. An alias of a node that contains
    itself (``&a [*a]``) would expand forever and is refused too."""
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth)
    open_nodes: set[int] = set()

    def refuse(node: yaml.Node, message: str) -> NoReturn:
        raise MdmgenError([Problem(location=Location(file=name, line=node.start_mark.line + 1), field="yaml",
                                   message=message)])

    def measure(node: yaml.Node, depth: int) -> tuple[int, int]:
        known = measured.get(id(node))
        if known is not None:
            if depth + known[1] > MAX_DEPTH:
                refuse(node, f"values nest deeper than {MAX_DEPTH} levels once aliases are expanded")
            return known
        if id(node) in open_nodes:
            refuse(node, "an alias refers to a value that contains it (a recursive anchor)")
        if depth > MAX_DEPTH:
            refuse(node, f"values nest deeper than {MAX_DEPTH} levels once aliases are expanded")
        open_nodes.add(id(node))
        values, deepest = 1, 0
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        for child in children:
            size, below = measure(child, depth + 1)
            values += size
            deepest = max(deepest, below + 1)
            if values > MAX_VALUES:
                refuse(child, f"the policy holds more than {MAX_VALUES:,} values once its aliases are expanded "
                              "(an alias bomb?)")
        open_nodes.discard(id(node))
        measured[id(node)] = (values, deepest)
        return values, deepest

    return measure(root, 0)[0]


def _index_lines(node: yaml.Node, path: tuple[str | int, ...], lines: dict, problems: list,
                 name: str, indexed: set[int]) -> None:
    """Map every key path to its line, and refuse duplicate keys (YAML would silently keep one).

    A node reached again through an alias is indexed once, at its first path: a later path finds
    its line through ``LoadedPolicy.location``'s longest known prefix (the line of the key that
    holds the alias), so the index stays as small as the file."""
    lines[path] = node.start_mark.line + 1
    if id(node) in indexed:
        return
    indexed.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                problems.append(Problem(location=Location(file=name, line=key_node.start_mark.line + 1),
                                        field=dotted((*path, key)), message="duplicate key"))
            seen.add(key)
            _index_lines(value_node, (*path, key), lines, problems, name, indexed)
            lines[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, (*path, i), lines, problems, name, indexed)


@runscope.memo  # a fleet has a few hundred teams and 100,000 rows naming them
def team_problem(team: str) -> str | None:
    """Why ``team`` cannot name a team, or None. A team name is shown to auditors (``diff``, the
    telemetry's ``team`` attribute) and matched between the inventory and the policy, so it must
    look like what it is: no invisible format characters (Unicode category Cf: the bidi controls
    such as U+202E RIGHT-TO-LEFT OVERRIDE, zero-width U+200B, U+FEFF), which make one name display
    as another, or make two names that look equal miss each other, and no character a profile
    cannot carry, nor a line break or a tab."""
    bad = unencodable_text(team)
    if bad:
        return bad
    if any(char in "\n\t\u2028\u2029" for char in team):
        return "contains a line break or a tab; a team name is one line"
    for char in team:
        if unicodedata.category(char) == "Cf":
            name = unicodedata.name(char, "format character")
            return (f"contains the invisible character U+{ord(char):04X} ({name}), which makes a team name "
                    "display as another; remove it")
    return None


def team_names(policy: Policy) -> dict[str, str]:
    """The teams the policy names, by team key (see ``models.team_key``): key -> the display spelling
    the policy gives the team (its key, trimmed and NFC). ``teams:`` names a team; so does
    ``intune: groups:``, where ``teams:`` does not (its keys that share a key with each other are
    refused by the Intune publisher, the lowest by code point is taken here). Keys of ``teams:``
    that collide are refused when the policy is loaded, so each key has one name."""
    named = {}
    if policy.intune is not None:
        for name in sorted(policy.intune.groups, reverse=True):
            named[team_key(name)] = team_spelling(name)
    named.update({team_key(name): team_spelling(name) for name in policy.teams})
    return named


def _character_problems(data: Any, holder: LoadedPolicy) -> list[Problem]:
    """Every key and string of the policy that a profile cannot carry unchanged (see
    ``models.unencodable_text``), and every team name that is not plainly readable, each at its line.

    Checked on the parsed YAML before the schema, since YAML escapes ("\\x00", "\\ud800") can
    write any character; what templates make from these is checked again when they render."""
    problems: list[Problem] = []
    pending: list[tuple[tuple[str | int, ...], Any]] = [((), data)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                child = (*path, key) if isinstance(key, (str, int)) else (*path, str(key))
                reason = team_problem(key) if path == ("teams",) and isinstance(key, str) else (
                    unencodable_text(key) if isinstance(key, str) else None)
                if reason:
                    problems.append(Problem(location=holder.location(child), field=dotted(child), message=reason))
                    continue
                pending.append((child, item))
        elif isinstance(value, list):
            pending.extend(((*path, i), item) for i, item in enumerate(value))
        elif isinstance(value, str):
            reason = unencodable_text(value)
            if reason:
                problems.append(Problem(location=holder.location(path), field=dotted(path), message=reason))
    return sorted(problems, key=lambda p: p.location.line)


def _check_values(loaded: LoadedPolicy) -> list[Problem]:
    """Settings must be JSON-shaped; team names must not collide once case is ignored."""
    problems: list[Problem] = []
    policy = loaded.policy
    for prefix, layer in all_layers(policy):
        for path, value, in_list in _walk(layer.settings, (*prefix, "settings")):
            if value is None and (prefix == () or in_list):
                problems.append(Problem(location=loaded.location(path), field=dotted(path),
                                        message="null only removes an inherited key in an override"))
            elif isinstance(path[-1], _BadKey):
                problems.append(Problem(location=loaded.location(path[:-1]), field=dotted(path),
                                        message="keys must be strings; quote the key"))
            elif isinstance(value, float) and not math.isfinite(value):
                problems.append(Problem(location=loaded.location(path), field=dotted(path),
                                        message="must be a finite number"))
            elif (isinstance(value, int) and not isinstance(value, bool)
                  and not PLIST_INTEGERS[0] <= value <= PLIST_INTEGERS[1]):
                problems.append(Problem(location=loaded.location(path), field=dotted(path), message=(
                    "integer out of range: a profile holds integers from -2**63 to 2**64-1; "
                    "quote it to make it a string")))
            elif value is not None and not isinstance(value, (str, bool, int, float)):
                problems.append(Problem(location=loaded.location(path), field=dotted(path), message=(
                    f"{type(value).__name__} is not a JSON value; quote it to make it a string")))
        env = layer.settings.get("env")
        if isinstance(env, dict) and "OTEL_RESOURCE_ATTRIBUTES" in env:
            path = (*prefix, "settings", "env", "OTEL_RESOURCE_ATTRIBUTES")
            problems.append(Problem(location=loaded.location(path), field=dotted(path), message=(
                "set attributes under 'resource_attributes:' instead; mdmgen builds and "
                "encodes this variable itself so no value can inject an attribute")))
        for key in layer.resource_attributes:
            if announces_email_hash(key):
                path = (*prefix, "resource_attributes", key)
                problems.append(Problem(location=loaded.location(path), field=dotted(path),
                                        message=UNKEYED_HASH_MESSAGE))
        if prefix == () and any(v is None for v in layer.resource_attributes.values()):
            problems.append(Problem(location=loaded.location(("resource_attributes",)),
                                    field="resource_attributes",
                                    message="null is only meaningful in an override"))
    problems.extend(_check_collector_tokens(loaded))
    folded: dict[str, str] = {}
    for team in policy.teams:
        other = folded.setdefault(team_key(team), team)
        if other != team:
            path = ("teams", team)
            problems.append(Problem(location=loaded.location(path), field=dotted(path),
                                    message=f"same team as {other!r} (team names ignore case, accent encoding "
                                            "and surrounding spaces)"))
    return problems


def _check_collector_tokens(loaded: LoadedPolicy) -> list[Problem]:
    """The collector accepts the devices' tokens as env variables, or as one file, not both: a
    policy whose headers mix ``secret()`` and ``secret_file()`` (or name two files) would leave
    some devices' token unaccepted, so it is refused where the collector section is."""
    if loaded.policy.collector is None:
        return []
    from .secrets import references  # the one parser of secret references in templates

    refs = set()
    unnamed = False  # an Authorization header whose token no reference names
    for _prefix, layer in all_layers(loaded.policy):
        env = layer.settings.get("env")
        for name, value in (env.items() if isinstance(env, dict) else ()):
            if name.startswith("OTEL_EXPORTER_OTLP_") and name.endswith("HEADERS") and isinstance(value, str):
                found = references(value)
                refs.update(found)
                unnamed |= not found and "authorization" in value.lower()
    if unnamed and not loaded.policy.collector.token_env:
        return [Problem(location=loaded.location(("collector",)), field="collector", message=(
            "the devices send an Authorization header whose token the collector cannot name; write it as "
            "{{ secret('NAME') }} in the headers, or set collector.token_env"))]
    files = sorted(ref.name for ref in refs if ref.kind == "file")
    collector = loaded.policy.collector
    env_tokens = any(ref.kind == "env" for ref in refs) or collector.token_env or collector.previous_token_env
    if len(files) > 1 or (files and env_tokens):
        return [Problem(location=loaded.location(("collector",)), field="collector", message=(
            "the devices' OTLP headers name tokens as both secret() and secret_file() (or several files, or a "
            "file beside token_env/previous_token_env); the collector accepts env variables or one token file: "
            "name every token one way"))]
    return []


class _BadKey(str):
    """A mapping key YAML read as something other than a string (``1:``, ``yes:``)."""


def _walk(value: Any, path: tuple[str | int, ...], in_list: bool = False):
    """Yield (path, leaf, leaf is a list item) for every non-container value."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                yield (*path, _BadKey(key)), item, False
                continue
            yield from _walk(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, (*path, i), True)
    else:
        yield path, value, in_list


def resolve_variables(policy: Policy, overrides: Mapping[str, str]) -> dict[str, str]:
    """Defaults from the policy, replaced by --var values; an unknown name is a usage error."""
    unknown = sorted(set(overrides) - set(policy.variables))
    if unknown:
        known = ", ".join(sorted(policy.variables)) or "none"
        raise UnknownVariable(f"unknown variable {', '.join(unknown)} (the policy defines: {known})")
    bad = [Problem(location=Location(file="--var"), field=f"variables.{name}", message=reason)
           for name, value in sorted(overrides.items()) if (reason := unencodable_text(value))]
    if bad:
        raise MdmgenError(bad)
    return {**policy.variables, **overrides}


def all_layers(policy: Policy) -> list[tuple[tuple[str | int, ...], Layer]]:
    """Every layer of the policy (base, each platform, each team), each with its key path prefix."""
    layers: list[tuple[tuple[str | int, ...], Layer]] = [((), policy)]
    layers += [(("platforms", p.value), layer) for p, layer in policy.platforms.items()]
    layers += [(("teams", t), layer) for t, layer in policy.teams.items()]
    return layers


def layers_for(loaded: LoadedPolicy, platform: Platform, key: str) -> list[tuple[tuple, Layer]]:
    """The layers that apply to a device, in merge order, each with its key path prefix. ``key`` is
    the device's ``team_key``: a ``teams:`` entry applies when its name has the same key."""
    policy = loaded.policy
    layers: list[tuple[tuple, Layer]] = [((), policy)]
    if platform in policy.platforms:
        layers.append((("platforms", platform.value), policy.platforms[platform]))
    for name, layer in policy.teams.items():
        if team_key(name) == key:
            layers.append((("teams", name), layer))
    return layers


def merge(layers: list[tuple[tuple, Layer]]) -> tuple[dict[str, Any], dict[str, Leaf]]:
    """Merge settings and resource attributes of the layers; leaves become ``Leaf``s."""
    settings: dict[str, Any] = {}
    attributes: dict[str, Leaf] = {}
    for prefix, layer in layers:
        settings = _merge_tree(settings, layer.settings, (*prefix, "settings"))
        for key, value in layer.resource_attributes.items():
            if value is None:
                attributes.pop(key, None)
            else:
                attributes[key] = Leaf(value, (*prefix, "resource_attributes", key))
    return settings, attributes


def _merge_tree(base: dict[str, Any], override: dict[str, Any], path: tuple) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict):
            earlier = merged.get(key)
            merged[key] = _merge_tree(earlier if isinstance(earlier, dict) else {}, value,
                                      (*path, key))
        else:
            merged[key] = _leaves(value, (*path, key))
    return merged


def _leaves(value: Any, path: tuple) -> Any:
    if isinstance(value, dict):
        return {k: _leaves(v, (*path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_leaves(v, (*path, i)) for i, v in enumerate(value)]
    return Leaf(value, path)


def schema() -> dict[str, Any]:
    """JSON Schema of the policy file, for editors. The rules that live in validators (reverse
    DNS, identifier and token names) are restated as patterns, so an editor flags them too."""
    return Policy.model_json_schema()
