"""The shape fast path: render and emit once per distinct shape, then fill in each device's strings.

Devices of one platform and team share their merged policy layers, so everything about their
files is the same except the strings the templates take from the device. A *shape* is that
common part: the merged tree with every template leaf replaced by a numbered slot, and the bytes
of ``managed-settings.json`` and of the Mac profile emitted once by the real emitters
(``settings_json.dumps``, the registry's profile emitter) with a sentinel string in every slot.
Per device, the slots are filled with the device's own strings, escaped as each kind declares
in the registry (``ArtifactKind.escape``), and joined with the shape's bytes between them.

The fast path only takes what it provably understands, and hands everything else to the slow
path (``Renderer.render`` and ``registry.emit_device``), which stays the reference:

* a template leaf must be plain text and ``{{ name }}`` substitutions (no filter, no call, no
  expression, no block): its value is the concatenation, exactly what Jinja renders for strings;
* every device kind of the platform must declare its ``escape`` in the artifact registry (how
  its emitter writes a string); a kind without one takes the slow path for its platform;
* every string filled in must consist of printable characters only (``str.isprintable``), a
  conservative set on which ``json`` escapes only ``"`` and ``\\`` and ``plistlib`` only ``&<>``;
  a control character, a line break, U+FFFE or a lone surrogate takes the slow path, whatever
  the slow path then decides about it;
* a pseudonymised fleet (whose leak check reads every file) takes the slow path.

Validation is not skipped: each device's filled settings go through the same env-schema check,
and a device with any problem is compiled again by the slow path, so its messages are the slow
path's. ``MDMGEN_NO_FASTPATH=1`` turns this off; tests compare the two byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes

from . import attributes
from .emit import mobileconfig, registry
from .models import Device, Platform, Settings
from .policy import Leaf, Policy
from .render import Renderer, _is_template, header_leaf

_SENTINEL = "mdmgenslot{}x9q7z"
_SERIAL = "MDMGENSERIALSLOTx9q7z"


@dataclass(frozen=True)
class _Slot:
    """A template leaf: text and names, concatenated."""

    index: int
    parts: tuple[tuple[bool, str], ...]  # (is a name, text or name)


@dataclass(frozen=True)
class Shape:
    tree: Any  # the merged tree, leaves replaced by constants or _Slot
    attributes: tuple[tuple[str, Any], ...]  # resource attributes: (name, constant or _Slot)
    slots: int  # template leaves in the tree (the attribute list, if any, is slot ``slots``)
    files: tuple[tuple[str, tuple[bytes | int, ...], Callable[[str], bytes]], ...]  # (name, parts, escape)


class Shaper:
    """Shapes by (platform, team), made on first use; None for a shape the fast path cannot take."""

    def __init__(self, renderer: Renderer, policy: Policy):
        self.renderer = renderer
        self.policy = policy
        self._shapes: dict[tuple[Platform, str], Shape | None] = {}  # by platform and team key

    def compile(self, device: Device) -> tuple[Settings, Callable[[], dict[str, bytes]]] | None:
        """The device's settings and a function giving its files, or None: use the slow path."""
        key = (device.platform, device.team_key)  # every device of a team has its one display spelling
        if key not in self._shapes:
            self._shapes[key] = self._make(device)
        shape = self._shapes[key]
        if shape is None:
            return None
        context = {**self.renderer.variables, **device.template_fields(), "raw_user_email": device.user_email}
        values: list[str] = [""] * (shape.slots + 1)
        try:
            settings = _fill(shape.tree, context, values)
            pairs = {name: (_render(leaf, context) if isinstance(leaf, _Slot) else leaf)
                     for name, leaf in shape.attributes}
        except KeyError:
            return None  # a name this device lacks: the slow path reports it
        if shape.attributes:
            env = settings.get("env")
            if not isinstance(env, dict):
                return None
            try:
                env["OTEL_RESOURCE_ATTRIBUTES"] = values[shape.slots] = attributes.encode(pairs)
            except attributes.AttributeListError:
                return None
        if not all(value.isprintable() for value in values):
            return None
        prefix = self.policy.org.identifier_prefix

        def files() -> dict[str, bytes]:
            # The device's serial, profile identifier and its UUIDs are the device's too.
            identifier = mobileconfig.profile_identifier(prefix, device.serial)
            filled = [*values, device.serial, mobileconfig.stable_uuid(identifier),
                      mobileconfig.stable_uuid(f"{identifier}.prefs")]
            return {name: b"".join(part if isinstance(part, bytes) else escape(filled[part]) for part in parts)
                    for name, parts, escape in shape.files}

        return settings, files

    def _make(self, device: Device) -> Shape | None:
        # Derived kinds (the signed profile) are made after the compile, from these files.
        kinds = [k for k in registry.device_kinds() if k.applies_to(device.platform) and k.derived_from is None]
        if not kinds or any(k.escape is None for k in kinds):
            return None
        tree, attribute_leaves = self.renderer.merged(device)
        counter = [0]
        try:
            shaped = _shape(tree, self.renderer, counter)
            shaped_attributes = tuple((name, _shape(leaf, self.renderer, counter))
                                      for name, leaf in attribute_leaves.items())
        except _Unsupported:
            return None
        slots = counter[0]
        sentinel_values = [_SENTINEL.format(i) for i in range(slots + 1)]
        skeleton = _fill(shaped, {}, sentinel_values, sentinels=True)
        if shaped_attributes:
            env = skeleton.get("env")
            if not isinstance(env, dict):
                return None
            env["OTEL_RESOURCE_ATTRIBUTES"] = sentinel_values[slots]
        fake = device.model_copy(update={"serial": _SERIAL})
        identifier = mobileconfig.profile_identifier(self.policy.org.identifier_prefix, _SERIAL)
        tokens = {value: i for i, value in enumerate(sentinel_values)}
        n = len(sentinel_values)
        tokens.update({_SERIAL: n, mobileconfig.stable_uuid(identifier): n + 1,
                       mobileconfig.stable_uuid(f"{identifier}.prefs"): n + 2})
        pattern = re.compile("(" + "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)) + ")")
        files = []
        for kind in kinds:
            data = kind.emit(registry.DeviceInput(device=fake, settings=skeleton, policy=self.policy))
            if data is None:
                return None
            text = data.decode("utf-8")
            pieces = pattern.split(text)
            parts: list[bytes | int] = []
            for i, piece in enumerate(pieces):
                if i % 2:
                    parts.append(tokens[piece])
                elif piece:
                    parts.append(piece.encode("utf-8"))
            assert kind.escape is not None
            files.append((kind.name, tuple(parts), kind.escape))
        return Shape(tree=shaped, attributes=shaped_attributes, slots=slots, files=tuple(files))


class _Unsupported(Exception):
    """A template the fast path does not take (the slow path renders it)."""


def _shape(node: Any, renderer: Renderer, counter: list[int]) -> Any:
    if isinstance(node, dict):
        return {k: _shape(v, renderer, counter) for k, v in node.items()}
    if isinstance(node, list):
        return [_shape(v, renderer, counter) for v in node]
    assert isinstance(node, Leaf)
    if not _is_template(node.value):
        return node.value
    if header_leaf(node):
        raise _Unsupported  # a header template: the renderer checks what it renders for credentials
    ast = renderer.env.parse(node.value)
    if len(ast.body) != 1 or not isinstance(ast.body[0], nodes.Output):
        raise _Unsupported
    parts: list[tuple[bool, str]] = []
    for item in ast.body[0].nodes:
        if isinstance(item, nodes.TemplateData):
            parts.append((False, item.data))
        elif isinstance(item, nodes.Name) and item.ctx == "load":
            parts.append((True, item.name))
        else:
            raise _Unsupported
    counter[0] += 1
    return _Slot(counter[0] - 1, tuple(parts))


def _render(slot: _Slot, context: dict[str, Any]) -> str:
    out = []
    for is_name, text in slot.parts:
        if is_name:
            value = context[text]
            if not isinstance(value, str):
                raise KeyError(text)
            out.append(value)
        else:
            out.append(text)
    return "".join(out)


def _fill(node: Any, context: dict[str, Any], values: list[str], *, sentinels: bool = False) -> Any:
    if isinstance(node, dict):
        return {k: _fill(v, context, values, sentinels=sentinels) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, context, values, sentinels=sentinels) for v in node]
    if isinstance(node, _Slot):
        if sentinels:
            return values[node.index]
        values[node.index] = _render(node, context)
        return values[node.index]
    return node
