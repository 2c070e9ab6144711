"""What emitters are given: one device (:class:`DeviceInput`) or the fleet (:class:`FleetInput`).

A module of its own, below the registry and the collector emitters, so that the registry can import
the emitters and the emitters the inputs without either importing the other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..models import Device, Settings
from ..otlp import OtlpDestination

if TYPE_CHECKING:
    from ..policy import Policy


@dataclass(frozen=True)
class DeviceInput:
    """What a device-level emitter is given: one device, its rendered settings, the policy."""

    device: Device
    settings: Settings
    policy: Policy


@dataclass(frozen=True)
class FleetInput:
    """What a fleet-level emitter is given: every compiled device (rendered this run or not) and
    the policy. Fleet files are made again on every compile: there is one of each, not one per device.

    ``destinations`` are the distinct OTLP destinations in the devices' compiled settings (sorted);
    ``pipeline`` computes them, also for devices reused from the previous output. ``team`` is the
    resource attribute carrying the team and each device's value of it, as the devices send them
    (None: the attribute ``team`` with each device's display team)."""

    devices: tuple[Device, ...]
    policy: Policy
    destinations: tuple[OtlpDestination, ...] = ()
    team: SentTeam | None = None


@dataclass(frozen=True)
class SentTeam:
    """What the devices send as their team, read from their *rendered* resource attributes: the
    attribute that carries it (the one whose template uses ``team``, see ``destinations``) and each
    device's value, by serial. The rules and dashboards count these, not the inventory column, so a
    policy that lower-cases the team or names the attribute ``department`` is counted as sent."""

    attribute: str = "team"
    values: Mapping[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The Prometheus label the attribute becomes: the exporter writes every character a label
        name cannot hold as ``_`` (``org.team`` -> ``org_team``), and prefixes a leading digit."""
        return prometheus_label(self.attribute)

    def of(self, device: Device) -> str:
        """The value ``device`` sends (its display team when it was not read, as in unit tests)."""
        return self.values.get(device.serial, device.team)


def prometheus_label(name: str) -> str:
    label = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return f"key_{label}" if label[:1].isdigit() else label
