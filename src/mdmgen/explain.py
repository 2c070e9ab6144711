"""``mdmgen explain SERIAL``: every setting of one device, where it came from, and where it goes.

When a developer says "my telemetry shows the wrong team", IT needs the layer and the policy line
that set each value, the template and the columns or variables it used, the files the device
gets, the channels that deliver them and which of those the client reads first. The device is
compiled exactly as ``compile`` compiles it (``pipeline.prepare`` and ``pipeline.render_device``,
the same renderer, checks and emitters), in memory; nothing is written. Where each value was set
comes from the policy's own line index and the merge order of ``policy.layers_for``.

The output folder is only read, through the one checked reader, to say whether it holds the same
bytes. Secrets are shown by label and fingerprint (``secrets.shown_fingerprint``), never by value,
and with ``pseudonymise_email`` the raw address is never shown; as a last guard, every string of
the explanation is redacted of every form of those values before it is printed.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from jinja2 import meta
from pydantic import BaseModel, Field

from . import attributes, output, pipeline, policy
from . import secrets as secret_refs
from .emit import mobileconfig, registry
from .envschema import SECRET_ENV
from .messages import redactor
from .models import Device, MdmgenError, Platform, Problem, Settings
from .policy import LoadedPolicy
from .render import Renderer

RESOURCE_ATTRIBUTES = "env.OTEL_RESOURCE_ATTRIBUTES"
SUGGESTIONS = 3
"""How many of the nearest serials an unknown serial suggests."""


class ExplainError(Exception):
    """The device cannot be explained (exit 1): one message line, and the problems as ``compile``
    prints them (``file:line: field: message``), already redacted."""

    def __init__(self, message: str, problems: Iterable[Problem] = ()):
        self.message = message
        self.problems = list(problems)
        super().__init__(message)


class Use(BaseModel):
    """A name a template used: a policy variable, a ``--var``, or a column of the device's row."""

    name: str
    kind: str  # "variable", "command line", "column"
    value: str | None
    source: str
    note: str | None = None


class Overridden(BaseModel):
    """An earlier layer's value of a key, replaced by a later layer (its policy text, not rendered)."""

    layer: str
    layer_name: str | None = None
    source: str
    value: Any = None


class SecretShown(BaseModel):
    label: str
    fingerprint: str


class Origin(BaseModel):
    """Where one value comes from: the layer and line that set it, the layers it overrode, and the
    template and names it was rendered with."""

    layer: str
    layer_name: str | None = None
    source: str
    overridden: list[Overridden] = Field(default_factory=list)
    template: str | None = None
    uses: list[Use] = Field(default_factory=list)


class Attribute(Origin):
    """One decoded entry of OTEL_RESOURCE_ATTRIBUTES."""

    key: str
    value: str


class Setting(Origin):
    """One key of the device's managed settings (``env.NAME``; a list counts whole, as it merges)."""

    key: str
    value: Any
    hidden: bool = False  # a secret-bearing value: only ``fingerprint`` and ``secrets`` are shown
    fingerprint: str | None = None
    secrets: list[SecretShown] = Field(default_factory=list)
    attributes: list[Attribute] | None = None


class DeviceFile(BaseModel):
    name: str
    install_path: str | None
    delivered_as: str
    sha256: str
    size: int
    output: str  # current, stale, missing, not compared
    note: str | None = None


class Channel(BaseModel):
    name: str
    command: str
    files: list[str]
    source: str  # the managed source the client sees it as: plist, file
    note: str


class Explanation(BaseModel):
    serial: str
    platform: Platform
    team: str
    user_email: str | None
    pseudonymised: bool
    row: str
    layers: list[Origin]
    settings: list[Setting]
    files: list[DeviceFile]
    output_folder: str
    output_state: str
    channels: list[Channel]
    reads_first: str
    warnings: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        first = ("key", "value", "layer", "layer_name", "source", "overridden")  # what a reader looks for first
        for setting in data["settings"]:
            for attribute in setting["attributes"] or []:
                attribute.update({k: attribute.pop(k) for k in [*first, *attribute] if k in attribute})
            setting.update({k: setting.pop(k) for k in [*first, *setting] if k in setting})
        return {"exit_code": 0, **data}

    def lines(self) -> list[str]:
        """The text form (see the README's "mdmgen explain")."""
        return _text(self)


# --- the one function cli calls -----------------------------------------------------------------


def explain(serial: str, inventory_paths: Iterable[Path], profiles: Path, var_overrides: Mapping[str, str],
            out: Path) -> Explanation:
    """Compile the device with ``serial`` as ``compile`` would, and explain it. Raises ExplainError
    (exit 1) and policy.UnknownVariable (a usage error); every message is redacted of the secrets."""
    wanted = serial.strip().upper()
    try:
        prepared = pipeline.prepare(list(inventory_paths), profiles, var_overrides)
        return _explain(prepared, wanted, var_overrides, out)
    except MdmgenError as exc:
        hide = _hider([])
        problems = [p.model_copy(update={"message": hide(p.message)}) for p in exc.problems]
        raise ExplainError(f"error: {len(problems)} problem(s) stop every compile; nothing to explain",
                           problems) from None
    except ExplainError as exc:
        hide = _hider([])
        raise ExplainError(hide(exc.message), [p.model_copy(update={"message": hide(p.message)})
                                               for p in exc.problems]) from None


def _explain(prepared: pipeline.Prepared, serial: str, var_overrides: Mapping[str, str], out: Path) -> Explanation:
    inv, renderer = prepared.inventory, prepared.renderer
    stopping = [p for p in inv.problems if not p.row]
    if stopping:  # an unreadable file or a missing column: compile writes nothing at all
        raise MdmgenError(stopping)
    device = _find(prepared, serial)
    raw_email = None
    if prepared.pseudonymiser is not None:
        raw_email = device.user_email
        device = device.model_copy(update={"user_email": prepared.pseudonymiser.pseudonym(raw_email)})
    renderer.inputs(device, raw_email)  # as compile does: it learns which secrets and names the device uses
    settings, files, problems = pipeline.render_device(renderer, device, raw_email)
    if files is None or settings is None:
        raise ExplainError(f"error: {device.serial}: {len(problems)} problem(s) (listed above); compile rejects "
                           "this device", problems)
    explanation = _build(prepared, device, settings, files, var_overrides, out)
    others = len({(p.location.file, p.location.line) for p in inv.problems}) - (device.serial in _bad_serials(inv))
    if others > 0:
        explanation.notes.append(f"{others} other row(s) of the inventory have problems: `mdmgen compile` stops on "
                                 "them unless --skip-invalid")
    return _redacted(explanation, raw_email)


def _bad_serials(inv) -> set[str]:
    return {p.serial for p in inv.problems if p.serial}


def _find(prepared: pipeline.Prepared, serial: str) -> Device:
    """The device with ``serial``, or ExplainError: excluded by status, rejected (its problems, as
    compile lists them), or unknown (with the nearest serials)."""
    inv = prepared.inventory
    device = next((d for d in inv.devices if d.serial == serial), None)
    rejected = inv.rejected_rows.get(serial)
    if device is not None and serial not in _bad_serials(inv) and rejected is None:
        return device
    if rejected is not None or device is not None:
        problems = [p for p in inv.problems if p.serial == serial or p.location == rejected]
        raise ExplainError(f"error: {serial}: its row has {len(problems)} problem(s) (listed above); compile "
                           "rejects it", problems)
    if serial in inv.excluded_rows:
        where, status = inv.excluded_rows[serial]
        raise ExplainError(f"error: {serial}: excluded at {where} by its status {status!r}; an excluded row gets "
                           "no files")
    known = [d.serial for d in inv.devices] + list(inv.excluded_rows) + list(inv.rejected_rows)
    close = difflib.get_close_matches(serial, known, n=SUGGESTIONS, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    files = ", ".join(inv.files) or "no file"
    raise ExplainError(f"error: no device {serial!r} in the inventory ({files}){hint}")


# --- where each value came from --------------------------------------------------------------------


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


def _flat(settings: Settings, path: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...], Any]]:
    """Every key of the settings, mappings walked and anything else (a list too) one value."""
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            yield from _flat(value, (*path, key))
        else:
            yield (*path, key), value


def _settings(prepared: pipeline.Prepared, device: Device, settings: Settings,
              var_overrides: Mapping[str, str]) -> list[Setting]:
    loaded, renderer = prepared.loaded, prepared.renderer
    layers = policy.layers_for(loaded, device.platform, device.team_key)
    pseudonymised = prepared.pseudonymiser is not None
    values = {ref: value for ref, value in renderer.secret_values().items()}
    hidden_env = set(SECRET_ENV) | set(loaded.policy.secret_env)
    out = []
    for key, value in _flat(settings):
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


def _layers(loaded: LoadedPolicy, device: Device) -> list[Origin]:
    found = []
    for prefix, _layer in policy.layers_for(loaded, device.platform, device.team_key):
        layer, name = _layer_of(prefix)
        source = loaded.location(prefix or ("settings",))
        found.append(Origin(layer=layer, layer_name=name, source=str(source)))
    return found


# --- the files, the output folder and the channels ------------------------------------------------


def _build(prepared: pipeline.Prepared, device: Device, settings: Settings, files: Mapping[str, bytes],
           var_overrides: Mapping[str, str], out: Path) -> Explanation:
    loaded = prepared.loaded
    on_disk, state = _output_files(out, device.serial)
    listed = []
    for name, data in files.items():
        kind = registry.get(name)
        path = kind.install_path(device.platform) if kind else None
        there = on_disk.get(name) if on_disk is not None else None
        status = ("not compared" if on_disk is None else "missing" if there is None
                  else "current" if there == data else "stale")
        listed.append(DeviceFile(name=name, install_path=path, sha256=hashlib.sha256(data).hexdigest(),
                                 size=len(data), output=status,
                                 delivered_as="file" if path else f"configuration profile ({_PLIST})"))
    channels = _channels(device.platform, files, loaded.policy.intune is not None)
    explanation = Explanation(
        serial=device.serial, platform=device.platform, team=device.team,
        user_email=device.user_email, pseudonymised=prepared.pseudonymiser is not None,
        row=str(device.location), layers=_layers(loaded, device),
        settings=_settings(prepared, device, settings, var_overrides), files=listed,
        output_folder=str(out), output_state=state, channels=channels, reads_first=_READS_FIRST[device.platform])
    explanation.warnings += _warnings(device, files, on_disk or {}, out)
    for name in sorted(set(on_disk or {}) - set(files)):
        explanation.notes.append(f"{out}/ also holds {name} for this device (made by a later stage, or no longer "
                                 "compiled for it)")
    return explanation


_PLIST = f"the {mobileconfig.PREFERENCE_DOMAIN} preference domain"


def _output_files(out: Path, serial: str) -> tuple[dict[str, bytes] | None, str]:
    """The device's files in the output folder (None: not compared) and one line saying why."""
    if not out.exists():
        return None, f"no output folder at {out}/: nothing to compare"
    try:
        with output.checked(out, check=output.Check.NAMES) as tree:
            entry = tree.manifest.devices.get(serial)
            if entry is None:
                return {}, f"{out}/ has no files for this device (not compiled since it was added?)"
            found = {}
            for name in entry.files:
                if name in (entry.derived or {}):
                    continue  # a signed profile: made from its source, said by _derived
                checked = tree.file(output.device_path(serial, name))
                if checked is not None:
                    found[name] = checked.read(verify=False)
            return found, f"compared with {out}/" + _derived(entry, out)
    except output.OutputBusy as exc:
        return None, f"not compared: {exc}"
    except output.OutputError as exc:
        return None, f"not compared: {exc}"


def _derived(entry, out: Path) -> str:
    """The signed profiles of the device in the output folder, and the source each was made from:
    a signed profile is current when its source is (the reader checks it was made from that one)."""
    return "".join(f"; {out}/ also holds {name}, signed from its {made.source} of sha256 {made.from_sha256[:12]}…"
                   for name, made in sorted((entry.derived or {}).items()))


def _channels(platform: Platform, files: Mapping[str, bytes], intune: bool) -> list[Channel]:
    profile, settings_json = registry.MAC_PROFILE.name, registry.SETTINGS_JSON.name
    s3 = Channel(name="S3", command="mdmgen publish s3", files=[settings_json], source="file",
                 note="config management pulls it and installs it at the path above")
    found = []
    if platform is Platform.MACOS and profile in files:
        found.append(Channel(name="Jamf Pro", command="mdmgen publish jamf", files=[profile], source="plist",
                             note="this Mac's own profile, scoped to it"))
        if intune:
            found.append(Channel(name="Intune", command="mdmgen publish intune", files=[profile], source="plist",
                                 note="the team's profile, which Intune fills in with this Mac's email"))
        s3 = s3.model_copy(update={"note": s3.note + "; the profile is uploaded too, for an MDM's custom upload"})
    if platform is Platform.WINDOWS and intune:
        found.append(Channel(name="Intune", command="mdmgen publish intune", files=[settings_json], source="file",
                             note="the team's PowerShell platform script writes this PC's file, run as SYSTEM"))
    found.append(s3)
    return found


_READS_FIRST = {
    Platform.MACOS: "the profile (plist) outranks managed-settings.json: with both delivered the Mac ignores the "
                    "file, except that env merges per variable (reference §3.2); server-managed settings, where "
                    "they apply, outrank both",
    Platform.WINDOWS: "HKLM\\SOFTWARE\\Policies\\ClaudeCode outranks managed-settings.json; mdmgen writes no "
                      "registry value, so this PC reads the file unless something else sets HKLM (then each env "
                      "variable HKLM sets comes from there)",
    Platform.LINUX: "managed-settings.json, the only managed source on Linux (managed-settings.d/*.json merge after "
                    "it)",
    Platform.WSL: "managed-settings.json under /etc/claude-code; the Windows sources only with "
                  "wslInheritsWindowsSettings, and then they win",
}


def _warnings(device: Device, files: Mapping[str, bytes], on_disk: Mapping[str, bytes], out: Path) -> list[str]:
    """What would make the device get something else than this compile: stale files in the output
    folder (publishers deliver from there), and two channels delivering different settings."""
    warnings = [f"{out}/devices/{device.serial}/{name} differs from this compile: run `mdmgen compile` before "
                "publishing" for name, data in files.items() if name in on_disk and on_disk[name] != data]
    delivered = {name: on_disk.get(name, data) for name, data in files.items()}
    profile, settings_json = registry.MAC_PROFILE.name, registry.SETTINGS_JSON.name
    if profile in delivered and settings_json in delivered:
        try:
            a = mobileconfig.settings_of(delivered[profile])
            b = json.loads(delivered[settings_json])
        except (ValueError, KeyError, IndexError, TypeError):
            return [*warnings, f"{out}/devices/{device.serial}: a delivered file does not parse"]
        flat_a, flat_b = dict(_flat(a)), dict(_flat(b))
        keys = sorted(".".join(k) for k in set(flat_a) | set(flat_b) if flat_a.get(k) != flat_b.get(k))
        if keys:
            warnings.append(f"the profile and managed-settings.json would deliver different settings ({', '.join(keys)}"
                            "); this Mac reads the profile and ignores the file except per-variable env")
    return warnings


# --- redaction and the text form --------------------------------------------------------------------


def _hider(extra: list[str]):
    return redactor([*secret_refs.resolved_values(), *extra])


def _redacted(explanation: Explanation, raw_email: str | None) -> Explanation:
    """Every string of the explanation without any form of a secret value or, with pseudonymisation,
    of the raw email: a template can carry them into a value in ways no field above foresaw."""
    hide = _hider([raw_email] if raw_email else [])

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return hide(value)
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return Explanation.model_validate(walk(explanation.model_dump(mode="json")))


def _shown(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _where(origin: Origin) -> str:
    layer = origin.layer + (f" {origin.layer_name}" if origin.layer_name else "")
    return f"{layer} at {origin.source}"


def _origin_lines(origin: Origin, indent: str) -> list[str]:
    line = f"{indent}set by {_where(origin)}"
    if origin.template:
        line += f" from the template {origin.template}"
    lines = [line]
    for use in origin.uses:
        value = "(not shown)" if use.value is None else _shown(use.value)
        lines.append(f"{indent}  {use.name} = {value}: {use.kind}, {use.source}"
                     + (f" ({use.note})" if use.note else ""))
    for before in origin.overridden:
        shown = "" if before.value is None else f" (was {_shown(before.value)})"
        lines.append(f"{indent}overrides {_where(before)}{shown}")
    return lines


def _text(e: Explanation) -> list[str]:
    email = f"{e.user_email} (keyed pseudonym)" if e.pseudonymised else e.user_email
    lines = [f"{e.serial}: {e.platform.value}, team {e.team}, {email}, row {e.row}",
             "Layers: " + ", ".join(_where(o) for o in e.layers), "", "Settings:"]
    for s in e.settings:
        if s.attributes is not None:
            lines.append(f"  {s.key} = {_shown(s.value)}")
            lines.append(f"    {s.template} at {s.source}; decoded:")
            for a in s.attributes:
                lines.append(f"    {a.key} = {_shown(a.value)}")
                lines += _origin_lines(a, "      ")
            continue
        value = f"(secret-bearing, not shown; {s.fingerprint})" if s.hidden else _shown(s.value)
        lines.append(f"  {s.key} = {value}")
        lines += [f"    embeds secret {x.label} ({x.fingerprint})" for x in s.secrets]
        lines += _origin_lines(s, "    ")
    lines += ["", f"Files ({e.output_state}):"]
    for f in e.files:
        lines.append(f"  {f.name} -> {f.install_path or f.delivered_as}")
        lines.append(f"    sha256 {f.sha256} ({f.size} bytes); output folder: {f.output}")
    lines += ["", f"Channels for {e.platform.value}:"]
    lines += [f"  {c.name} (`{c.command}`): {', '.join(c.files)}, read as {c.source}; {c.note}" for c in e.channels]
    lines.append(f"Read first: {e.reads_first}")
    lines += [f"warning: {w}" for w in e.warnings] + [f"note: {n}" for n in e.notes]
    return lines
