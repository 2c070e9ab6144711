"""The distinct OTLP destinations of a compiled fleet, for the collector side (emit/collector).

A destination (signal, protocol, URL) is read from each device's rendered settings with the same
rule ``preflight`` checks them by (:func:`mdmgen.preflight.targets_for`). A device reused from the
previous output (``files=None``) has no rendered settings in memory. Rather than reading every
reused device's file back, or storing endpoints in the manifest, its destinations are those of
its *shape* (platform and team: the policy layers that apply) when the shape's telemetry values
are no templates over device fields, which is what policies write (``{{ otlp_endpoint }}``). Any
other shape renders the device again: correct always, slower only for such policies.
"""

from __future__ import annotations

from jinja2 import meta

from . import policy
from .emit.collector.fleet import OtlpDestination
from .models import Device, Settings
from .preflight import targets_for
from .render import Renderer

_TELEMETRY_PREFIXES = ("OTEL_", "CLAUDE_CODE_ENABLE_TELEMETRY")
_MARKERS = ("{{", "{%", "{#")


def of_settings(settings: Settings) -> frozenset[OtlpDestination]:
    """Where one device's telemetry goes; nothing for a device that exports none."""
    env = settings.get("env")
    if not isinstance(env, dict):
        return frozenset()
    try:
        targets = targets_for(env)
    except ValueError:  # compile's env schema already refused what matters; nothing to receive
        return frozenset()
    return frozenset(OtlpDestination(t.signal, t.protocol, t.url) for t in targets)


class FleetDestinations:
    """Collects the destinations of every compiled device, rendered this run or reused."""

    def __init__(self, renderer: Renderer):
        self._renderer = renderer
        self._by_shape: dict[tuple[str, str], frozenset[OtlpDestination]] = {}
        self._shared: dict[tuple[str, str], bool] = {}
        self.found: set[OtlpDestination] = set()

    def rendered(self, device: Device, settings: Settings) -> None:
        found = of_settings(settings)
        self.found |= found
        if self._shape_shared(device):
            self._by_shape.setdefault(_shape(device), found)

    def reused(self, device: Device, raw_email: str | None) -> None:
        known = self._by_shape.get(_shape(device)) if self._shape_shared(device) else None
        if known is not None:
            self.found |= known
            return
        settings, _problems = self._renderer.render(device, raw_email)
        if settings is not None:
            self.rendered(device, settings)

    def sorted(self) -> tuple[OtlpDestination, ...]:
        return tuple(sorted(self.found))

    def _shape_shared(self, device: Device) -> bool:
        """Whether every device of this shape has the same telemetry values (no device field in them)."""
        key = _shape(device)
        if key not in self._shared:
            tree, _attributes = policy.merge(policy.layers_for(self._renderer.loaded, device.platform, device.team_key))
            env = tree.get("env")
            leaves = [leaf for name, leaf in env.items() if name.startswith(_TELEMETRY_PREFIXES)] \
                if isinstance(env, dict) else []
            self._shared[key] = all(self._same_for_every_device(leaf) for leaf in leaves)
        return self._shared[key]

    def _same_for_every_device(self, leaf: object) -> bool:
        """A plain value, or a template over the policy's variables only."""
        if not isinstance(leaf, policy.Leaf):
            return False  # a nested value under a telemetry name: not worth reasoning about
        if not (isinstance(leaf.value, str) and any(m in leaf.value for m in _MARKERS)):
            return True
        return meta.find_undeclared_variables(self._renderer.env.parse(leaf.value)) <= set(self._renderer.variables)


def _shape(device: Device) -> tuple[str, str]:
    return (device.platform.value, device.team_key)
