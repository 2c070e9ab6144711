"""Render one device's managed settings from the merged policy (sandboxed Jinja2 templates).

A string is a template only if it contains ``{{``, ``{%`` or ``{#``; everything else passes
through untouched (and costs nothing). Templates see the device's fields (serial, platform,
user_email, team and every extra inventory column) and the policy variables; an undefined
name is an error, never an empty string. With ``pseudonymise_email`` on, ``user_email`` is the
device's keyed pseudonym and only ``raw_user_email`` is the address (see ``secrets``); a template
asking for a plain hash of an email is refused before any device is rendered.
``{{ secret("NAME") }}`` and ``{{ secret_file("PATH") }}`` are resolved once, in ``check``, before
any device is rendered (see ``secrets``); a device's inputs fingerprint carries only their keyed
fingerprints, and a credential in a header must come from one of them.
``OTEL_RESOURCE_ATTRIBUTES`` is assembled here from the rendered ``resource_attributes`` and
encoded by ``attributes.encode``, so no value from the inventory can inject or split an attribute.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from jinja2 import meta, nodes

from . import __version__, attributes
from . import secrets as secret_refs
from .canonical import digest
from .envschema import ENDPOINT_ENV, SECRET_ENV
from .models import Device, Platform, Problem, Settings
from .policy import (
    DEVICE_FIELDS,
    UNKEYED_HASH_MESSAGE,
    Leaf,
    LoadedPolicy,
    all_layers,
    announces_email_hash,
    dotted,
    layers_for,
    merge,
)
from .secrets import Pseudonymiser
from .templating import make_environment

_MARKERS = ("{{", "{%", "{#")


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and any(m in value for m in _MARKERS)


class Renderer:
    """Holds a policy's compiled templates and merged layers, shared by every device.

    Merging and compiling happen once per (platform, team) and once per template, not once
    per device, so large fleets cost little more than the templates themselves.
    """

    def __init__(self, loaded: LoadedPolicy, variables: Mapping[str, str],
                 pseudonymiser: Pseudonymiser | None = None):
        self.loaded = loaded
        self.variables = dict(variables)
        self.pseudonymiser = pseudonymiser
        self.env = make_environment()  # sandboxed and bounded in time and size (see templating)
        self.env.filters["baggage"] = attributes.encode_value
        self._secret_functions = {secret_refs.SECRET_FUNCTION: self._secret_env,
                                  secret_refs.SECRET_FILE_FUNCTION: self._secret_file}
        self._secret_values: dict[secret_refs.SecretRef, str] = {}
        self._secret_fingerprints: dict[secret_refs.SecretRef, str] = {}
        self._secret_keys: dict[secret_refs.SecretRef, set[str]] = {}
        self._refs: dict[str, list[secret_refs.SecretRef]] = {}
        self._secrets_used: dict[tuple[Platform, str], list[secret_refs.SecretRef]] = {}
        self._templates: dict[str, jinja2.Template] = {}
        self._merged: dict[tuple[Platform, str], tuple[dict[str, Any], dict[str, Leaf]]] = {}
        self._policy_inputs: dict[tuple[Platform, str], str] = {}
        self._uses_raw: dict[tuple[Platform, str], bool] = {}

    def check(self, extra_names: Iterable[str]) -> list[Problem]:
        """Compile every template of the policy and check the names it uses exist.

        Done once before any device is rendered, so a typo is one clear error, not one per device.
        """
        known = set(DEVICE_FIELDS) | set(self.variables) | set(extra_names) | set(secret_refs.SECRET_FUNCTIONS)
        first_use: dict[secret_refs.SecretRef, Leaf] = {}
        problems: list[Problem] = []
        for clash in sorted(set(self.variables) & set(extra_names)):
            problems.append(Problem(location=self.loaded.location(("variables", clash)),
                                    field=f"variables.{clash}",
                                    message="an inventory column has the same name; rename one"))
        for leaf in _policy_leaves(self.loaded):
            if not _is_template(leaf.value):
                continue
            try:
                ast = self.env.parse(leaf.value)
                hashing = _unkeyed_hashing(ast)
                if hashing:
                    problems.append(self._problem(leaf, f"{hashing}: {UNKEYED_HASH_MESSAGE}"))
                    continue
                refs = self._refs[leaf.value] = secret_refs.references_in(ast)
                self._compile(leaf.value)
            except jinja2.TemplateSyntaxError as exc:
                problems.append(self._problem(leaf, f"template syntax error: {exc.message}"))
                continue
            except secret_refs.SecretReferenceError as exc:
                problems.append(self._problem(leaf, str(exc)))
                continue
            if refs and "resource_attributes" in leaf.path:
                problems.append(self._problem(leaf, "a secret in a resource attribute is sent with every metric "
                                              "and event to whoever reads the telemetry; put it in a header"))
                continue
            for ref in refs:
                first_use.setdefault(ref, leaf)
                self._secret_keys.setdefault(ref, set()).add(_settings_key(leaf.path))
            for name in sorted(meta.find_undeclared_variables(ast) - known):
                problems.append(self._problem(leaf, f"undefined name {name!r} in template"))
        problems += self._literal_credentials()
        problems += self._resolve_secrets(first_use)
        return problems

    def _literal_credentials(self) -> list[Problem]:
        """A header credential written in the policy (or taken from a variable) instead of a secret."""
        problems = []
        for leaf in _policy_leaves(self.loaded):
            if header_leaf(leaf) and isinstance(leaf.value, str):
                for name in secret_refs.literal_credentials(leaf.value):
                    problems.append(self._problem(leaf, _LITERAL_CREDENTIAL.format(name=name)))
        return problems

    def _resolve_secrets(self, first_use: dict[secret_refs.SecretRef, Leaf]) -> list[Problem]:
        """Read every referenced secret once; a missing one is an error at the first line using it."""
        problems = []
        policy_dir = Path(self.loaded.file).parent
        for ref, leaf in first_use.items():
            try:
                value = secret_refs.resolve(ref, policy_dir)
            except secret_refs.SecretValueError as exc:
                problems.append(self._problem(leaf, f"{ref.call()}: {exc}"))
                continue
            secret_refs.remember(value)
            self._secret_values[ref] = value
            self._secret_fingerprints[ref] = secret_refs.fingerprint(ref, value)
        return problems

    def secret_values(self) -> dict[secret_refs.SecretRef, str]:
        """Every resolved secret and its value (to blank them for ``diff`` and keep them out of fleet files)."""
        return dict(self._secret_values)

    def secret_fingerprints(self) -> dict[secret_refs.SecretRef, str]:
        return dict(self._secret_fingerprints)

    def secret_keys(self) -> dict[secret_refs.SecretRef, list[str]]:
        """The settings keys (``env.OTEL_EXPORTER_OTLP_HEADERS``) whose values embed each secret."""
        return {ref: sorted(keys) for ref, keys in self._secret_keys.items()}

    def secrets_used(self, device: Device) -> list[secret_refs.SecretRef]:
        """The secrets the device's templates embed (call after ``inputs`` or ``policy_part``)."""
        return self._secrets_used.get((device.platform, device.team_key), [])  # see policy_part

    def _secret_env(self, name: str) -> str:
        return self._secret_value(secret_refs.SecretRef("env", name))

    def _secret_file(self, path: str) -> str:
        return self._secret_value(secret_refs.SecretRef("file", path))

    def _secret_value(self, ref: secret_refs.SecretRef) -> str:
        try:
            return self._secret_values[ref]
        except KeyError:  # check() resolves every constant reference; anything else never gets here
            raise jinja2.TemplateRuntimeError(f"{ref.call()} was not resolved before rendering") from None

    def _layers(self, device: Device) -> tuple[dict[str, Any], dict[str, Leaf]]:
        key = (device.platform, device.team_key)
        if key not in self._merged:
            self._merged[key] = merge(layers_for(self.loaded, device.platform, device.team_key))
        return self._merged[key]

    def merged(self, device: Device) -> tuple[dict[str, Any], dict[str, Leaf]]:
        """The device's merged settings tree and resource attributes, as Leafs (``shapes`` reads them)."""
        return self._layers(device)

    def inputs(self, device: Device, raw_email: str | None = None) -> str:
        """Fingerprint of everything this device's files are made from.

        Only the policy layers that apply to the device and the variables its templates use
        count, so changing one team's override or one --var re-renders exactly the devices it
        can affect, and nothing else. With pseudonymisation on, ``device.user_email`` is already
        the pseudonym, so the fingerprint (which sits in the manifest) is no unkeyed hash of the
        email; the key counts through its ``key_id``, so a rotation re-renders every device.
        """
        part = self.policy_part(device)
        fields = device.template_fields()
        if self._uses_raw[(device.platform, device.team_key)] and raw_email is not None:
            fields["raw_user_email"] = raw_email  # the output holds it anyway; case changes must re-render
        return digest({"policy": part, "device": fields})

    def policy_part(self, device: Device) -> str:
        """Fingerprint of the policy part of :meth:`inputs`: everything of the policy the files of a
        device of this platform and team are made from (the same for every such device)."""
        key = (device.platform, device.team_key)
        part = self._policy_inputs.get(key)
        if part is None:
            tree, attribute_leaves = self._layers(device)
            leaves = [*_tree_leaves(tree), *attribute_leaves.values()]
            used: set[str] = set()
            refs: list[secret_refs.SecretRef] = []
            for leaf in leaves:
                if _is_template(leaf.value):
                    used |= meta.find_undeclared_variables(self.env.parse(leaf.value))
                    refs += [r for r in self._refs.get(leaf.value, []) if r not in refs]
            self._secrets_used[key] = sorted(refs, key=lambda r: r.label)
            fingerprints = {r.label: self._secret_fingerprints.get(r, "") for r in self._secrets_used[key]}
            org = self.loaded.policy.org
            self._uses_raw[key] = "raw_user_email" in used
            pseudonym = {"pseudonym_key": self.pseudonymiser.key_id} if self.pseudonymiser else {}
            part = digest({
                **pseudonym,
                **({"secrets": fingerprints} if fingerprints else {}),  # keyed: never the values
                "generator": __version__,
                "settings": _plain(tree),
                "attributes": {name: leaf.value for name, leaf in attribute_leaves.items()},
                "variables": {name: self.variables[name] for name in sorted(used & set(self.variables))},
                "org": org.model_dump(),
                "allow_content_logging": self.loaded.policy.allow_content_logging,
            })
            self._policy_inputs[key] = part
        return part

    def policy_parts(self) -> dict[tuple[Platform, str], str]:
        """Every policy part computed so far, by platform and team key (for the compile state)."""
        return dict(self._policy_inputs)

    def uses_raw_email(self, device: Device) -> bool:
        """Whether the device's templates ask for ``raw_user_email`` (call after ``inputs``)."""
        return self._uses_raw.get((device.platform, device.team_key), False)

    def env_origin(self, device: Device, name: str) -> str | None:
        """Where in the policy the device's ``env`` variable comes from, as ``file:line key``,
        so a validation error names the line to fix, not only the inventory row."""
        tree, attribute_leaves = self._layers(device)
        if name == "OTEL_RESOURCE_ATTRIBUTES" and attribute_leaves:
            leaf = next(iter(attribute_leaves.values()))
            path = leaf.path[:-1]
        else:
            env = tree.get("env")
            leaf = env.get(name) if isinstance(env, dict) else None
            if not isinstance(leaf, Leaf):
                return None
            path = leaf.path
        return f"{self.loaded.location(path)} {dotted(path)}"

    def render(self, device: Device, raw_email: str | None = None) -> tuple[Settings | None, list[Problem]]:
        """The device's settings, or None and the problems that stopped it.

        ``raw_email`` is the inventory's address when ``device.user_email`` holds its pseudonym;
        only a template that names ``raw_user_email`` sees it."""
        tree, attribute_leaves = self._layers(device)
        context = {**self.variables, **device.template_fields(),
                   "raw_user_email": device.user_email if raw_email is None else raw_email,
                   **self._secret_functions}  # last: a column called 'secret' cannot hide them
        problems: list[Problem] = []
        settings = self._render_tree(tree, context, device, problems)
        rendered_attributes = {
            name: self._render_leaf(leaf, context, device, problems)
            for name, leaf in attribute_leaves.items()
        }
        if problems:
            return None, problems
        if rendered_attributes:
            env = settings.setdefault("env", {})
            if isinstance(env, dict):
                try:
                    env["OTEL_RESOURCE_ATTRIBUTES"] = attributes.encode(rendered_attributes)
                except attributes.AttributeListError as exc:
                    return None, [self._problem(next(iter(attribute_leaves.values())), str(exc),
                                                device)]
        return settings, []

    def _render_tree(self, node: Any, context: dict, device: Device, problems: list) -> Any:
        if isinstance(node, dict):
            return {k: self._render_tree(v, context, device, problems) for k, v in node.items()}
        if isinstance(node, list):
            return [self._render_tree(v, context, device, problems) for v in node]
        return self._render_leaf(node, context, device, problems)

    def _render_leaf(self, leaf: Leaf, context: dict, device: Device, problems: list) -> Any:
        if not _is_template(leaf.value):
            return leaf.value
        try:
            rendered = self._compile(leaf.value).render(context)
            if header_leaf(leaf):
                self._check_rendered_header(leaf, rendered, device, problems)
            elif endpoint_leaf(leaf) and self._refs.get(leaf.value):
                return self._check_rendered_endpoint(leaf, rendered, device, problems)
            return rendered
        except Exception as exc:  # a template can raise anything (e.g. division by zero)
            if self._refs.get(leaf.value):
                # Its message could hold the value in any escaping ({}[secret("T")|tojson] names the
                # key it missed): only the kind of error is shown, and the line to look at.
                message = (f"template failed ({type(exc).__name__}); the message is not shown because this "
                           "template reads a secret and it could repeat the value")
            elif isinstance(exc, jinja2.TemplateError):
                message = exc.message or type(exc).__name__
            else:
                message = f"template failed: {exc}"
            problems.append(self._problem(leaf, message, device))
        return None

    def _check_rendered_header(self, leaf: Leaf, rendered: str, device: Device, problems: list) -> None:
        """A credential header whose rendered value holds none of its template's secrets got its
        token from a variable, a ``--var`` or a column: refused like a literal one."""
        values = [self._secret_values[r] for r in self._refs.get(leaf.value, []) if r in self._secret_values]
        try:
            pairs = attributes.split_pairs(rendered)
        except attributes.AttributeListError:
            return  # the env schema reports the format
        for name, value in pairs:
            if secret_refs.credential_header(name, value) and not any(v in value for v in values):
                problems.append(self._problem(leaf, _LITERAL_CREDENTIAL.format(name=name), device))

    def _check_rendered_endpoint(self, leaf: Leaf, rendered: str, device: Device, problems: list) -> str | None:
        """An endpoint may embed a secret in its path or query (some collectors take an ingest key
        there), never in its host or port: every DNS resolver and TLS handshake on the way sees the
        host, and ``preflight`` shows it (it hides the rest of such an endpoint, see ``preflight``)."""
        try:
            host = urlsplit(rendered).netloc.rpartition("@")[2].casefold()
        except ValueError:
            return rendered  # the env schema reports the format
        values = [self._secret_values[r] for r in self._refs[leaf.value] if r in self._secret_values]
        if any(value.casefold() in host for value in values):
            problems.append(self._problem(leaf, "a secret in the host name of an endpoint is seen by every DNS "
                                          "resolver and TLS handshake; put it in a header (or the path)", device))
            return None
        return rendered

    def template(self, source: str) -> jinja2.Template:
        """The compiled template of ``source`` (compiled once per run, shared with rendering)."""
        return self._compile(source)

    def _compile(self, source: str) -> jinja2.Template:
        template = self._templates.get(source)
        if template is None:
            template = self._templates[source] = self.env.from_string(source)
        return template

    def _problem(self, leaf: Leaf, message: str, device: Device | None = None) -> Problem:
        suffix = f" (device {device.serial})" if device else ""
        return Problem(location=self.loaded.location(leaf.path), field=dotted(leaf.path),
                       message=message + suffix, serial=device.serial if device else None,
                       row=device is not None)


_LITERAL_CREDENTIAL = ('header {name!r} carries a credential that is not read from a secret; write it as '
                       '{{{{ secret("NAME") }}}} (an environment variable) or {{{{ secret_file("PATH") }}}}, '
                       'never in the policy or a --var (which shows in ps)')


def _settings_key(path: tuple[str | int, ...]) -> str:
    """The key a settings leaf has in the compiled file (``env.X``), lists counting whole, as ``diff``
    compares them; a resource attribute counts as ``env.OTEL_RESOURCE_ATTRIBUTES``."""
    if "resource_attributes" in path:
        return "env.OTEL_RESOURCE_ATTRIBUTES"
    rest = path[1:] if path[0] == "settings" else path[3:]
    keys = []
    for part in rest:
        if isinstance(part, int):
            break
        keys.append(str(part))
    return ".".join(keys)


def endpoint_leaf(leaf: Leaf) -> bool:
    """Whether a settings leaf becomes an endpoint variable (a URL the client sends to)."""
    path = leaf.path
    rest = path[1:] if path and path[0] == "settings" else path[3:] if len(path) > 3 and path[2] == "settings" else ()
    return len(rest) == 2 and rest[0] == "env" and rest[1] in ENDPOINT_ENV


def header_leaf(leaf: Leaf) -> bool:
    """Whether a settings leaf becomes an OTLP header variable."""
    path = leaf.path
    rest = path[1:] if path and path[0] == "settings" else path[3:] if len(path) > 3 and path[2] == "settings" else ()
    return len(rest) == 2 and rest[0] == "env" and rest[1] in SECRET_ENV


def _unkeyed_hashing(ast: nodes.Template) -> str | None:
    """What in a template asks for a plain hash of an email, or None.

    Jinja has no hashing filter and the sandbox cannot import one, so a template cannot compute a
    hash; what it can do is ask for one (``user_email | sha256``, which would otherwise fail as an
    unknown filter) or use an inventory column that holds one (``email_sha256``)."""
    for node in ast.find_all(nodes.Filter):
        if announces_email_hash(f"email_{node.name}"):
            return f"filter {node.name!r}"
    for name in sorted(meta.find_undeclared_variables(ast)):
        if announces_email_hash(name):
            return f"column {name!r}"
    return None


def _plain(node: Any) -> Any:
    """The merged tree without the Leaf wrappers (for fingerprints)."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node.value


def _policy_leaves(loaded: LoadedPolicy) -> Iterable[Leaf]:
    """Every value of every layer, with its path (templates are checked even if no device uses them)."""
    policy = loaded.policy
    for prefix, layer in all_layers(policy):
        settings, attribute_leaves = merge([(prefix, layer)])
        yield from _tree_leaves(settings)
        yield from attribute_leaves.values()


def _tree_leaves(node: Any) -> Iterable[Leaf]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _tree_leaves(value)
    elif isinstance(node, list):
        for value in node:
            yield from _tree_leaves(value)
    elif isinstance(node, Leaf):
        yield node
