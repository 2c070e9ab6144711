"""Run the stages for a whole fleet: inventory -> policy -> render -> validate -> emit.

This is the one place that knows the order of the stages; ``cli`` calls it and prints, and
later publishers and benchmarks call it too. It writes nothing: ``output`` does that.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import attributes, envschema, fastpath, inventory, policy, secrets, shapes
from .emit import registry
from .models import CompiledDevice, Device, Manifest, MdmgenError, Platform, Problem, Settings
from .progress import NO_PROGRESS, Progress
from .render import Renderer


@dataclass
class CompileResult:
    """Everything a compile produced: devices that passed, every problem, and counts."""

    devices: list[CompiledDevice] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    excluded: int = 0
    rejected: int = 0
    rendered: int = 0  # devices rendered this run; the others were unchanged and reused
    secret_env: list[str] = field(default_factory=list)
    fleet_files: dict[str, bytes] = field(default_factory=dict)  # by path from the output folder's root
    row_cache: dict[str, str] | None = None  # the rows validated this run, for the next (see rowcache)

    def per_platform(self) -> Counter[Platform]:
        return Counter(c.device.platform for c in self.devices)


def check_settings(settings: Settings, device: Device, allow_content_logging: bool,
                   origin: Callable[[str], str | None] = lambda _name: None) -> list[Problem]:
    """The validation stage: the env schema over one device's rendered settings.

    A problem is reported at the device's inventory row; ``origin`` adds where the value was
    set in the policy, since that is usually the line to fix."""
    problems = []
    for name, message in envschema.check(settings.get("env", {}), allow_content_logging=allow_content_logging):
        source = origin(name) if name != "env" else None
        problems.append(Problem(location=device.location, field=f"env.{name}" if name != "env" else name,
                                message=f"{message} (set at {source})" if source else message,
                                serial=device.serial, row=True))
    return problems


def _pseudonymiser(loaded: policy.LoadedPolicy) -> secrets.Pseudonymiser:
    """The key from the environment, or one ``file:line: pseudonymise_email: ...`` error (exit 1)."""
    try:
        return secrets.load_key()
    except secrets.PseudonymKeyError as exc:
        raise MdmgenError([Problem(location=loaded.location(("pseudonymise_email",)), field="pseudonymise_email",
                                   message=str(exc))]) from None


def _leaks(files: Mapping[str, bytes], email: str) -> bool:
    """Whether the raw email is in any of the files, as written or percent-encoded, ignoring case.

    The pseudonym replaces ``user_email``, but an extra column can hold the same address (a
    ``login`` or ``upn`` column); this catches it before it is written, rather than trusting
    every template."""
    forms = {form.casefold() for form in (email, attributes.encode_value(email), html.escape(email),
                                          json.dumps(email)[1:-1])}
    for data in files.values():
        text = data.decode("utf-8", errors="replace").casefold()
        if any(form in text for form in forms):
            return True
    return False


def compile_fleet(inventory_paths: Iterable[Path], profiles: Path,
                  var_overrides: Mapping[str, str], *, skip_invalid: bool = False,
                  previous: Manifest | None = None, progress: Progress = NO_PROGRESS,
                  email_cache: Mapping[str, str] | None = None) -> CompileResult:
    """Compile every device. Raises MdmgenError for policy problems (they affect every device);
    device problems are returned, and with ``skip_invalid`` the other devices still compile.
    Raises policy.UnknownVariable for an unknown --var name (a usage error).

    A device whose inputs fingerprint equals its entry in ``previous`` is not rendered again:
    it is returned with ``files=None`` and the output stage keeps its files. ``email_cache`` is
    the previous run's row cache (``rowcache``; None: no cache, every row validated in full).
    """
    loaded = policy.load(profiles)
    variables = policy.resolve_variables(loaded.policy, var_overrides)
    if loaded.policy.pseudonymise_email:
        email_cache = None  # a cache would keep an unkeyed digest of every address
    inv = inventory.load(list(inventory_paths), loaded.policy.columns, email_cache)
    pseudonymiser = _pseudonymiser(loaded) if loaded.policy.pseudonymise_email else None
    renderer = Renderer(loaded, variables, pseudonymiser)
    extra_names = {name for device in inv.devices for name in device.extra}
    policy_problems = renderer.check(extra_names)
    if policy_problems:
        raise MdmgenError(policy_problems + inv.problems)

    result = CompileResult(problems=list(inv.problems), excluded=inv.excluded,
                           secret_env=list(loaded.policy.secret_env), row_cache=inv.validated_emails)
    bad_serials = {p.serial for p in inv.problems if p.serial}
    allow_content = loaded.policy.allow_content_logging
    known = previous.devices if previous else {}
    shaper = shapes.Shaper(renderer, loaded.policy) if fastpath.enabled() and pseudonymiser is None else None
    progress.start(len(inv.devices), "Compiling")
    for device in inv.devices:
        progress.advance()
        if device.serial in bad_serials:
            continue
        raw_email = None
        if pseudonymiser is not None:  # from here on the device carries only its pseudonym
            raw_email = device.user_email
            device = device.model_copy(update={"user_email": pseudonymiser.pseudonym(raw_email)})
        inputs = renderer.inputs(device, raw_email)
        before = known.get(device.serial)
        if before is not None and before.inputs == inputs:
            result.devices.append(CompiledDevice(device=device, inputs=inputs))
            continue
        result.rendered += 1
        shaped = shaper.compile(device) if shaper is not None else None
        if shaped is not None:  # the fast path; with any problem the slow path compiles the device again
            settings, emit = shaped
            if not check_settings(settings, device, allow_content):
                result.devices.append(CompiledDevice(device=device, inputs=inputs, files=emit()))
                continue
        settings, problems = renderer.render(device, raw_email)
        if settings is not None:
            problems = check_settings(settings, device, allow_content,
                                      lambda name, device=device: renderer.env_origin(device, name))
        if problems or settings is None:
            result.problems.extend(problems)
            continue
        files = registry.emit_device(registry.DeviceInput(device=device, settings=settings, policy=loaded.policy))
        if raw_email is not None and not renderer.uses_raw_email(device) and _leaks(files, raw_email):
            result.problems.append(Problem(
                location=device.location, field="user_email", serial=device.serial, row=True,
                message="pseudonymise_email is on, but this row's email reaches its files through another "
                        "column or template; use 'user_email' (the pseudonym) there, or 'raw_user_email' "
                        "if the raw address is really meant"))
            continue
        result.devices.append(CompiledDevice(device=device, inputs=inputs, files=files))
    progress.finish()
    result.fleet_files = registry.emit_fleet(registry.FleetInput(
        devices=tuple(c.device for c in result.devices), policy=loaded.policy))
    bad_rows = {(p.location.file, p.location.line) for p in inv.problems if p.row}
    result.rejected = len(bad_rows) + len(inv.devices) - len(result.devices)
    if result.problems and not (skip_invalid and all(p.row for p in result.problems)):
        raise MdmgenError(result.problems)
    return result
