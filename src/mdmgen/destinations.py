"""What the collector side (emit/collector) reads from the compiled devices: the distinct OTLP
destinations, and the team each device sends.

A destination (signal, protocol, URL) is read from each device's rendered settings with the same
rule ``preflight`` checks them by (:func:`mdmgen.otlp.targets_for`). A device reused from the
previous output (``files=None``) has no rendered settings in memory. Rather than reading every
reused device's file back, or storing endpoints in the manifest, its destinations are those of
its *shape* (platform and team: the policy layers that apply) when the shape's telemetry values
are no templates over device fields, which is what policies write (``{{ otlp_endpoint }}``). Any
other shape renders the device again: correct always, slower only for such policies.

The team the collector counts is the one the devices *send*: the resource attribute whose template
uses ``team`` (``team: "{{ team|lower }}"``, ``department: "{{ team }}"``), else an attribute named
``team``, and its rendered value. For a reused device whose attribute template uses no other device
field, the value is rendered once per (template, team); otherwise the device is rendered again.
"""

from __future__ import annotations

from jinja2 import meta

from . import attributes, policy
from .emit.inputs import SentTeam
from .models import Device, Location, Problem, Settings
from .otlp import OtlpDestination, targets_for
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
        self._team_attribute: dict[tuple[str, str], str | None] = {}  # by shape; None: no attribute sends it
        self._ambiguous: dict[tuple[str, str], list[str]] = {}
        self._team_of: dict[tuple[str, str], str] = {}  # (template, display team) -> the value sent
        self.sent_teams: dict[str, str] = {}  # serial -> the team value the device sends

    def rendered(self, device: Device, settings: Settings) -> None:
        found = of_settings(settings)
        self.found |= found
        if self._shape_shared(device):
            self._by_shape.setdefault(_shape(device), found)
        name = self.team_attribute(device)
        env = settings.get("env")
        encoded = env.get("OTEL_RESOURCE_ATTRIBUTES") if isinstance(env, dict) else None
        if name is not None and isinstance(encoded, str):
            try:
                value = attributes.decode(encoded).get(name)
            except attributes.AttributeListError:
                value = None  # the env schema refused it already
            if value is not None:
                self.sent_teams[device.serial] = value

    def reused(self, device: Device, raw_email: str | None) -> None:
        known = self._by_shape.get(_shape(device)) if self._shape_shared(device) else None
        if known is not None:
            self.found |= known
            if self._reused_team(device):
                return
        settings, _problems = self._renderer.render(device, raw_email)
        if settings is not None:
            self.rendered(device, settings)

    def _reused_team(self, device: Device) -> bool:
        """Record the team a reused device sends without rendering it, when its attribute's template
        uses no device field but ``team``; False: render the device to know."""
        name = self.team_attribute(device)
        if name is None:
            return True
        leaf = self._renderer.merged(device)[1][name]
        source = leaf.value
        if not (isinstance(source, str) and any(m in source for m in _MARKERS)):
            self.sent_teams[device.serial] = str(source)
            return True
        if not self._uses(source) <= {"team", *self._renderer.variables}:
            return False
        key = (source, device.team)
        if key not in self._team_of:
            context = {**self._renderer.variables, "team": device.team}
            self._team_of[key] = self._renderer.template(source).render(context)
        self.sent_teams[device.serial] = self._team_of[key]
        return True

    def team_attribute(self, device: Device) -> str | None:
        """The resource attribute that carries the device's team: the one whose template uses
        ``team`` (``team`` itself when several do), else one named ``team``; None when none does."""
        key = _shape(device)
        if key not in self._team_attribute:
            leaves = self._renderer.merged(device)[1]
            using = [name for name, leaf in leaves.items()
                     if isinstance(leaf.value, str) and any(m in leaf.value for m in _MARKERS)
                     and "team" in self._uses(leaf.value)]
            if "team" in using or (not using and "team" in leaves):
                chosen: str | None = "team"
            elif len(using) == 1:
                chosen = using[0]
            else:
                chosen = None
                if using:
                    self._ambiguous[key] = sorted(using)
            self._team_attribute[key] = chosen
        return self._team_attribute[key]

    def sent_team(self, devices: tuple[Device, ...], where: Location) -> SentTeam:
        """The attribute every compiled device sends its team in, and their values; an error at the
        policy's ``collector:`` line when a device sends no team, or devices send it under two names,
        since per-team adoption cannot then be counted."""
        names: dict[str, Device] = {}
        for device in devices:
            name = self.team_attribute(device)
            if name is None:
                using = self._ambiguous.get(_shape(device))
                what = (f"several resource attributes use the team ({', '.join(using)}), so which one the "
                        "collector counts by is unclear; name one 'team'") if using else (
                        "no resource attribute carries the team (a template using {{ team }}), so adoption "
                        "cannot be counted per team; add one, e.g. team: \"{{ team }}\"")
                raise _problem(where, f"{what} (devices of team {device.team!r} on {device.platform.value})")
            names.setdefault(name, device)
        if len(names) > 1:
            shown = ", ".join(f"{name!r} (team {d.team!r} on {d.platform.value})" for name, d in sorted(names.items()))
            raise _problem(where, f"the devices send their team under different attributes: {shown}; the rules "
                           "and dashboards count by one label, so use one name")
        attribute = next(iter(names), "team")
        return SentTeam(attribute=attribute, values=dict(self.sent_teams))

    def _uses(self, source: str) -> set[str]:
        return meta.find_undeclared_variables(self._renderer.env.parse(source))

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


class TeamAttributeError(Exception):
    """The devices send no single team attribute: one ``file:line: collector: ...`` problem."""

    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem


def _problem(where: Location, message: str) -> TeamAttributeError:
    return TeamAttributeError(Problem(location=where, field="collector", message=message))


def _shape(device: Device) -> tuple[str, str]:
    return (device.platform.value, device.team_key)
