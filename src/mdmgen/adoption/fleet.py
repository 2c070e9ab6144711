"""The enrolled fleet as ``mdmgen adoption`` reads it: the one checked reader, under the shared lock.

Each device's person is what the device itself sends: the ``user_email`` resource attribute of its
compiled ``managed-settings.json`` (``env.OTEL_RESOURCE_ATTRIBUTES``), the attribute the generated
collector rules and dashboards count people by. So the report and the telemetry name one person
alike, and with ``pseudonymise_email`` it is the pseudonym the device sends, never an address. The
team is the manifest's, the one display spelling the compile gave the team's devices.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .. import attributes, output
from ..emit import registry
from ..emit.collector import fleet as collector_fleet
from ..emit.collector import prometheus_rules
from ..emit.inputs import prometheus_label
from ..output import CheckedOutput, device_path
from .models import Device, Fleet

PERSON_ATTRIBUTE = "user_email"
"""The resource attribute that names the person (the label the generated rules count by)."""
SETTINGS = registry.SETTINGS_JSON.name


def read(out: Path) -> Fleet:
    """The fleet of the output folder ``out``, each device's person as the device sends it (turn it
    into an identity key with :meth:`Fleet.keyed`). Every file is checked against the manifest, under
    the shared lock, so a compile cannot swap the folder mid-read. Raises ``output.OutputUnusable``
    (exit 1), or ``OutputBusy`` (5) while a compile holds the folder."""
    with output.as_input(), output.locked(out, shared=True):
        folder = output.read(out, check=output.Check.DIGESTS)
        devices = tuple(_device(folder, serial, entry.team)
                        for serial, entry in sorted(folder.manifest.devices.items()))
        return Fleet(devices=devices, pseudonymised=bool(folder.manifest.pseudonymised),
                     team_label=_team_label(folder))


def _device(folder: CheckedOutput, serial: str, team: str) -> Device:
    file = folder.file(device_path(serial, SETTINGS))
    if file is None:
        return Device(serial=serial, team=team, person=None)
    try:
        settings = json.loads(file.read())
        env = settings.get("env") if isinstance(settings, dict) else None
        sent = env.get("OTEL_RESOURCE_ATTRIBUTES") if isinstance(env, dict) else None
        person = attributes.decode(sent).get(PERSON_ATTRIBUTE) if isinstance(sent, str) else None
    except (ValueError, attributes.AttributeListError) as exc:
        raise output.OutputError(f"{file.path}: cannot read the resource attributes: {exc}") from None
    return Device(serial=serial, team=team, person=person or None)


def _team_label(folder: CheckedOutput) -> str:
    """The label the generated rules count teams by (the attribute the devices send it in)."""
    file = folder.file(prometheus_rules.PATH)
    if file is None:
        return "team"
    try:
        rules = yaml.safe_load(file.read())
        for group in rules.get("groups", []):
            for rule in group.get("rules", []):
                if rule.get("record") == collector_fleet.ENROLLED_RECORD and rule.get("labels"):
                    label = str(next(iter(rule["labels"])))
                    return prometheus_label(label)
    except (yaml.YAMLError, AttributeError, TypeError) as exc:
        raise output.OutputError(f"{file.path}: cannot read the team label: {exc}") from None
    return "team"
