"""Render one device's managed settings from the merged policy (sandboxed Jinja2 templates).

A string is a template only if it contains ``{{``, ``{%`` or ``{#``; everything else passes
through untouched (and costs nothing). Templates see the device's fields (serial, platform,
user_email, team and every extra inventory column) and the policy variables; an undefined
name is an error, never an empty string. With ``pseudonymise_email`` on, ``user_email`` is the
device's keyed pseudonym and only ``raw_user_email`` is the address (see ``secrets``); a template
asking for a plain hash of an email is refused before any device is rendered.
``OTEL_RESOURCE_ATTRIBUTES`` is assembled here from the rendered ``resource_attributes`` and
encoded by ``attributes.encode``, so no value from the inventory can inject or split an attribute.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from . import __version__, attributes
from .canonical import digest
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
        self.env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False,
                                                 keep_trailing_newline=True)
        self.env.filters["baggage"] = attributes.encode_value
        self._templates: dict[str, jinja2.Template] = {}
        self._merged: dict[tuple[Platform, str], tuple[dict[str, Any], dict[str, Leaf]]] = {}
        self._policy_inputs: dict[tuple[Platform, str], str] = {}
        self._uses_raw: dict[tuple[Platform, str], bool] = {}

    def check(self, extra_names: Iterable[str]) -> list[Problem]:
        """Compile every template of the policy and check the names it uses exist.

        Done once before any device is rendered, so a typo is one clear error, not one per device.
        """
        known = set(DEVICE_FIELDS) | set(self.variables) | set(extra_names)
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
                self._compile(leaf.value)
            except jinja2.TemplateSyntaxError as exc:
                problems.append(self._problem(leaf, f"template syntax error: {exc.message}"))
                continue
            for name in sorted(meta.find_undeclared_variables(ast) - known):
                problems.append(self._problem(leaf, f"undefined name {name!r} in template"))
        return problems

    def _layers(self, device: Device) -> tuple[dict[str, Any], dict[str, Leaf]]:
        key = (device.platform, device.team.casefold())
        if key not in self._merged:
            self._merged[key] = merge(layers_for(self.loaded, device.platform, device.team))
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
        key = (device.platform, device.team.casefold())
        part = self._policy_inputs.get(key)
        if part is None:
            tree, attribute_leaves = self._layers(device)
            leaves = [*_tree_leaves(tree), *attribute_leaves.values()]
            used: set[str] = set()
            for leaf in leaves:
                if _is_template(leaf.value):
                    used |= meta.find_undeclared_variables(self.env.parse(leaf.value))
            org = self.loaded.policy.org
            self._uses_raw[key] = "raw_user_email" in used
            pseudonym = {"pseudonym_key": self.pseudonymiser.key_id} if self.pseudonymiser else {}
            part = digest({
                **pseudonym,
                "generator": __version__,
                "settings": _plain(tree),
                "attributes": {name: leaf.value for name, leaf in attribute_leaves.items()},
                "variables": {name: self.variables[name] for name in sorted(used & set(self.variables))},
                "org": org.model_dump(),
                "allow_content_logging": self.loaded.policy.allow_content_logging,
            })
            self._policy_inputs[key] = part
        fields = device.template_fields()
        if self._uses_raw[key] and raw_email is not None:
            fields["raw_user_email"] = raw_email  # the output holds it anyway; case changes must re-render
        return digest({"policy": part, "device": fields})

    def uses_raw_email(self, device: Device) -> bool:
        """Whether the device's templates ask for ``raw_user_email`` (call after ``inputs``)."""
        return self._uses_raw.get((device.platform, device.team.casefold()), False)

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
                   "raw_user_email": device.user_email if raw_email is None else raw_email}
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
            return self._compile(leaf.value).render(context)
        except jinja2.TemplateError as exc:
            problems.append(self._problem(leaf, exc.message or type(exc).__name__, device))
        except Exception as exc:  # a template can raise anything (e.g. division by zero)
            problems.append(self._problem(leaf, f"template failed: {exc}", device))
        return None

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
