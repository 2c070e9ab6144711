"""What ``mdmgen explain`` says about one device, as values, and its text form."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, Field

from ..errors import MdmgenException
from ..exitcodes import ExitCode
from ..models import Platform, Problem

RESOURCE_ATTRIBUTES = "env.OTEL_RESOURCE_ATTRIBUTES"
SUGGESTIONS = 3
"""How many of the nearest serials an unknown serial suggests."""


class ExplainError(MdmgenException):
    """The device cannot be explained (exit 1): one message line (``error: ...``), and the problems
    as ``compile`` prints them (``file:line: field: message``), already redacted."""

    exit_code = ExitCode.INVALID_INPUT

    def __init__(self, message: str, problems: Iterable[Problem] = ()):
        self.message = message
        self.problems = list(problems)
        super().__init__(message)

    def headline(self) -> str:
        return self.message


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



# --- the text form ----------------------------------------------------------------------------------


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
