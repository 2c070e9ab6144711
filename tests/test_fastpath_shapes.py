"""The shape emitter's bytes are the bytes of ``json``/``plistlib`` (through the registry's emitters)
and its settings are what the slow renderer renders, for any string a device can carry; and
what it does not understand it leaves to the slow path."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdmgen import policy, shapes
from mdmgen.emit import registry
from mdmgen.models import Device, Location, Platform
from mdmgen.render import Renderer

POLICY = """
org: {name: "Example & <Corp> \\"q\\"", identifier_prefix: com.example.mdmgen, display_name: "Claude & <Code>"}
variables: {endpoint: "https://otel.example.com:4317"}
settings:
  env:
    OTEL_EXPORTER_OTLP_ENDPOINT: "{{ endpoint }}"
    CLAUDE_CODE_ENABLE_TELEMETRY: "1"
  companyAnnouncements: ["{{ team }} & {{ cost_center }} <b>", "100% plain"]
  nested: {deeper: {who: "{{ user_email }}", n: 3, flag: true}, serial: "{{ serial }}"}
resource_attributes: {team: "{{ team }}", cc: "{{ cost_center }}", email: "{{ user_email }}"}
teams:
  Filtered: {settings: {shout: "{{ team | upper }}"}}
"""
LOADED = policy.parse(POLICY, "policy.yaml")
VALUES = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


def device(platform: Platform, team: str, cost_center: str) -> Device:
    return Device(serial="C02ABC", platform=platform, user_email="ann@example.com", team=team,
                  extra={"cost_center": cost_center}, location=Location(file="x.csv", line=2))


def slow(renderer: Renderer, dev: Device) -> tuple[dict, dict[str, bytes]]:
    rendered, problems = renderer.render(dev)
    assert not problems and rendered is not None
    return rendered, registry.emit_device(registry.DeviceInput(device=dev, settings=rendered, policy=LOADED.policy))


@settings(max_examples=200, deadline=None)
@given(platform=st.sampled_from(list(Platform)), team=VALUES, cost_center=VALUES)
def test_shape_bytes_equal_the_emitters_bytes(platform, team, cost_center):
    renderer = Renderer(LOADED, dict(LOADED.policy.variables))
    dev = device(platform, team, cost_center)
    fast = shapes.Shaper(renderer, LOADED.policy).compile(dev)
    if team.casefold() == "filtered":
        assert fast is None  # a filter is not a plain substitution: the slow path renders it
        return
    if not all(value.isprintable() for value in (team, cost_center)):
        assert fast is None  # outside the safe set: the slow path decides what to write
        return
    assert fast is not None
    fast_settings, files = fast
    slow_settings, slow_files = slow(renderer, dev)
    assert fast_settings == slow_settings
    assert files() == slow_files


@pytest.mark.parametrize("team", ["R&D, Berlin", 'Ops "Night" Shift', "]]>", "<![CDATA[x]]>", "100% Uptime",
                                  "東京 Platform", "back\\slash", "&amp;", "x" * 5000])
def test_awkward_but_printable_names_take_the_fast_path(team):
    renderer = Renderer(LOADED, dict(LOADED.policy.variables))
    shaper = shapes.Shaper(renderer, LOADED.policy)
    for platform in Platform:
        dev = device(platform, team, "CC-1")
        fast = shaper.compile(dev)
        assert fast is not None
        assert fast[1]() == slow(renderer, dev)[1]


def _linux_notes(given: registry.DeviceInput) -> bytes:
    """A device kind registered only here: the team and serial in a text file of its own."""
    return f"team={given.settings['companyAnnouncements'][0]}\nserial={given.device.serial}\n".encode()


@pytest.mark.parametrize("escape", [None, lambda value: value.encode("utf-8")], ids=["no escaper", "an escaper"])
def test_each_kind_declares_its_escaper_in_the_registry(escape):
    """No list of known kinds: a kind that declares how it writes a string takes the fast path
    with the others, with the same bytes as its emitter; one that does not sends its platform to
    the slow path."""
    notes = registry.ArtifactKind(name="notes.txt", content_type="text/plain", read_semantic=lambda data: {},
                                  emit=_linux_notes, label="notes", platforms=frozenset({Platform.LINUX}),
                                  escape=escape)
    with registry.registered(notes):
        renderer = Renderer(LOADED, dict(LOADED.policy.variables))
        shaper = shapes.Shaper(renderer, LOADED.policy)
        linux, windows = device(Platform.LINUX, "Ops", "CC-1"), device(Platform.WINDOWS, "Ops", "CC-1")
        assert shaper.compile(windows) is not None  # a platform without the kind is not affected
        fast = shaper.compile(linux)
        if escape is None:
            assert fast is None
            return
        assert fast is not None
        assert fast[1]() == slow(renderer, linux)[1]
        assert fast[1]()["notes.txt"] == b"team=Ops & CC-1 <b>\nserial=C02ABC\n"
