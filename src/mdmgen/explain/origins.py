"""Where each value of a device's settings came from: the layer and policy line that set it, the
layers it overrode, and the template and the variables or inventory columns it used. Rebuilt from
the policy's own line index and the merge order of ``policy.layers_for``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from jinja2 import meta

from .. import attributes, pipeline, policy
from .. import secrets as secret_refs
from ..envschema import SECRET_ENV
from ..models import Device, Settings
from ..policy import LoadedPolicy
from ..render import Renderer
from .models import RESOURCE_ATTRIBUTES, Attribute, Origin, Overridden, SecretShown, Setting, Use


def _layer_of(prefix: tuple) -> tuple[str, str | None]:
    """``base``, ``platform`` or ``team``, and the platform's or team's name."""
    if not prefix:
        return "base", None
    return ("platform" if prefix[0] == "platforms" else "team"), str(prefix[1])


def _history(layers: list[tuple[tuple, policy.Layer]], section: str, key: tuple[str, ...]
             ) -> list[tuple[tuple, Any]]:
    """Every layer's value of ``key`` in ``section`` (settings or resource_attributes), in merge
    order, since the last one that removed it (``null`` on it or on a mapping above it): the last
    entry is what the device has, the others what it overrode (see ``policy.merge``)."""
    found: list[tuple[tuple, Any]] = []
    for prefix, layer in layers:
        node: Any = getattr(layer, section)
        for depth, part in enumerate(key):
            if not isinstance(node, dict) or part not in node:
                node = _ABSENT
                break
            node = node[part]
            if node is None or (depth < len(key) - 1 and not isinstance(node, dict)):
                found.clear()  # removed (or replaced whole) here: nothing earlier reaches the device
                node = _ABSENT
                break
        if node is not _ABSENT:
            found.append((prefix, node))
    return found


_ABSENT = object()


def _origin(loaded: LoadedPolicy, history: list[tuple[tuple, Any]], section: str, key: tuple[str, ...],
            hidden: bool) -> dict[str, Any]:
    """The fields of :class:`Origin` but the names used, from a key's history."""
    (prefix, raw), earlier = history[-1], history[:-1]
    layer, name = _layer_of(prefix)
    overridden = []
    for before, value in earlier:
        old_layer, old_name = _layer_of(before)
        overridden.append(Overridden(layer=old_layer, layer_name=old_name, value=None if hidden else value,
                                     source=str(loaded.location((*before, section, *key)))))
    template = raw if isinstance(raw, str) and _is_template(raw) else None
    return {"layer": layer, "layer_name": name, "source": str(loaded.location((*prefix, section, *key))),
            "overridden": overridden, "template": template}


def _is_template(value: str) -> bool:
    return any(marker in value for marker in ("{{", "{%", "{#"))


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _uses(renderer: Renderer, raw: Any, device: Device, var_overrides: Mapping[str, str],
          pseudonymised: bool) -> list[Use]:
    """The names the templates in ``raw`` use, each with its value and where that value comes from."""
    names: set[str] = set()
    for text in _strings(raw):
        if _is_template(text):
            names |= meta.find_undeclared_variables(renderer.env.parse(text))
    names -= set(secret_refs.SECRET_FUNCTIONS)
    fields = device.template_fields()
    row = str(device.location)
    uses = []
    for name in sorted(names):
        if name in var_overrides:
            uses.append(Use(name=name, kind="command line", value=var_overrides[name],
                            source=f"--var {name}=... on the command line"))
        elif name in renderer.variables:
            uses.append(Use(name=name, kind="variable", value=renderer.variables[name],
                            source=f"{renderer.loaded.location(('variables', name))} variables.{name}"))
        elif name == "user_email" and pseudonymised:
            uses.append(Use(name=name, kind="column", value=device.user_email, source=f"{row} column user_email",
                            note="a keyed pseudonym (HMAC under MDMGEN_PSEUDONYM_KEY) of the row's email; the "
                                 "email is not shown"))
        elif name == "raw_user_email":
            uses.append(Use(name=name, kind="column", value=None if pseudonymised else device.user_email,
                            source=f"{row} column user_email",
                            note="the row's raw email (pseudonymise_email is on): not shown" if pseudonymised
                            else None))
        elif name in fields:
            uses.append(Use(name=name, kind="column", value=fields[name], source=f"{row} column {name}"))
    return uses


def flat(settings: Settings, path: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...], Any]]:
    """Every key of the settings, mappings walked and anything else (a list too) one value."""
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            yield from flat(value, (*path, key))
        else:
            yield (*path, key), value


def settings_of(prepared: pipeline.Prepared, device: Device, settings: Settings,
              var_overrides: Mapping[str, str]) -> list[Setting]:
    loaded, renderer = prepared.loaded, prepared.renderer
    layers = policy.layers_for(loaded, device.platform, device.team_key)
    pseudonymised = prepared.pseudonymiser is not None
    values = {ref: value for ref, value in renderer.secret_values().items()}
    hidden_env = set(SECRET_ENV) | set(loaded.policy.secret_env)
    out = []
    for key, value in flat(settings):
        dotted = ".".join(key)
        if dotted == RESOURCE_ATTRIBUTES:
            out.append(_resource_attributes(prepared, device, layers, value, var_overrides))
            continue
        history = _history(layers, "settings", key)
        if not history:  # cannot happen: every key of the settings comes from a layer
            raise AssertionError(f"no policy layer sets {dotted}")
        raw = history[-1][1]
        refs = [ref for text in _strings(raw) if _is_template(text) for ref in secret_refs.references(text)]
        hidden = bool(refs) or (len(key) == 2 and key[0] == "env" and key[1] in hidden_env)
        setting = Setting(key=dotted, value=None if hidden else value, hidden=hidden,
                          uses=_uses(renderer, raw, device, var_overrides, pseudonymised),
                          **_origin(loaded, history, "settings", key, hidden))
        if hidden:
            setting.fingerprint = secret_refs.shown_fingerprint(value if isinstance(value, str) else json.dumps(value))
            setting.secrets = [SecretShown(label=ref.label, fingerprint=secret_refs.shown_fingerprint(values[ref]))
                               for ref in dict.fromkeys(refs) if ref in values]
        out.append(setting)
    return out


def _resource_attributes(prepared: pipeline.Prepared, device: Device, layers: list, encoded: str,
                         var_overrides: Mapping[str, str]) -> Setting:
    """OTEL_RESOURCE_ATTRIBUTES, which mdmgen builds from ``resource_attributes``: decoded, each entry
    with the layer and line that set it."""
    loaded, renderer = prepared.loaded, prepared.renderer
    decoded = attributes.decode(encoded)
    entries = []
    for name, value in decoded.items():
        history = _history(layers, "resource_attributes", (name,))
        if not history:
            raise AssertionError(f"no policy layer sets resource attribute {name}")
        entries.append(Attribute(key=name, value=value,
                                 uses=_uses(renderer, history[-1][1], device, var_overrides,
                                            prepared.pseudonymiser is not None),
                                 **_origin(loaded, history, "resource_attributes", (name,), False)))
    return Setting(key=RESOURCE_ATTRIBUTES, value=encoded, layer="mdmgen", attributes=entries,
                   source=str(loaded.location(("resource_attributes",))),
                   template="built and percent-encoded by mdmgen from resource_attributes")


def layers_of(loaded: LoadedPolicy, device: Device) -> list[Origin]:
    found = []
    for prefix, _layer in policy.layers_for(loaded, device.platform, device.team_key):
        layer, name = _layer_of(prefix)
        source = loaded.location(prefix or ("settings",))
        found.append(Origin(layer=layer, layer_name=name, source=str(source)))
    return found


