"""Run the stages for a whole fleet: inventory -> policy -> render -> validate -> emit.

This is the one place that knows the order of the stages; ``cli`` calls it and prints, and
later publishers and benchmarks call it too. It writes nothing: ``output`` does that.
"""

from __future__ import annotations

import hashlib
import html
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import attributes, destinations, envschema, fastpath, inventory, policy, runkey, runscope, secrets, shapes
from .emit import registry
from .messages import redactor, secret_forms
from .models import (
    CompiledDevice,
    Device,
    Location,
    Manifest,
    ManifestDevice,
    ManifestSecret,
    MdmgenError,
    Platform,
    Problem,
    Settings,
    StatusColumn,
)
from .output.state import NewState
from .progress import NO_PROGRESS, Progress
from .render import Renderer
from .summary import RunSummary


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
    secrets: dict[str, ManifestSecret] = field(default_factory=dict)  # by label; fingerprints, never values
    state: NewState = field(default_factory=lambda: NewState(rows={}))  # for the compile state (output.state)
    status_columns: dict[str, StatusColumn] = field(default_factory=dict)  # by inventory file
    team_spellings: dict[str, dict[str, int]] = field(default_factory=dict)  # see inventory.fold_teams
    pseudonymised: bool = False  # user_email is a keyed pseudonym in every file (pseudonymise_email)

    def per_platform(self) -> Counter[Platform]:
        return Counter(c.device.platform for c in self.devices)

    def summary(self) -> RunSummary:
        counts = self.per_platform()
        return RunSummary(devices=len(self.devices), platforms={p.value: counts[p] for p in Platform},
                                  excluded=self.excluded, rejected=self.rejected, rendered=self.rendered,
                                  status_columns=self.status_columns, team_spellings=self.team_spellings)


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


def check_headers_helper(settings: Settings, device: Device) -> list[Problem]:
    """``otelHeadersHelper`` (a top-level setting, see the reference §8.3) is a command that prints
    the export headers, so no token sits in the file. The client runs it only for the HTTP
    protocols and only with telemetry on; anything else would silently send no credentials."""
    helper = settings.get("otelHeadersHelper")
    if helper is None:
        return []

    def problem(message: str) -> Problem:
        return Problem(location=device.location, field="otelHeadersHelper", message=message,
                       serial=device.serial, row=True)

    if not isinstance(helper, str) or not helper.strip():
        return [problem("must be the path of an executable or a command line (a non-empty string)")]
    env = settings.get("env") if isinstance(settings.get("env"), dict) else {}
    problems = []
    if env.get("CLAUDE_CODE_ENABLE_TELEMETRY") != "1":
        problems.append(problem("is run only with CLAUDE_CODE_ENABLE_TELEMETRY=1"))
    protocols = {env.get(f"OTEL_EXPORTER_OTLP_{s}PROTOCOL") for s in ("", "METRICS_", "LOGS_", "TRACES_")}
    if "grpc" in protocols:
        problems.append(problem("works with the http/protobuf and http/json protocols only; grpc sends only "
                                "OTEL_EXPORTER_OTLP_HEADERS"))
    return problems


@dataclass(frozen=True)
class Prepared:
    """The stages every device shares, done once: the checked policy, the inventory, the pseudonym key
    and the renderer whose templates and secrets are resolved (``compile`` and ``explain`` start here)."""

    loaded: policy.LoadedPolicy
    inventory: inventory.Inventory
    pseudonymiser: secrets.Pseudonymiser | None
    renderer: Renderer


def prepare(inventory_paths: list[Path], profiles: Path, var_overrides: Mapping[str, str],
            known_rows: Mapping[str, str] | None = None) -> Prepared:
    """Load the policy and the inventory and check every template once. Raises MdmgenError for a
    policy problem (with the inventory's), policy.UnknownVariable for an unknown --var. Problems of
    single rows stay in ``inventory.problems``: the caller decides what they stop. ``known_rows``
    are the compile state's row digests, by serial: a row with one of them is not validated again
    (keyed under the pseudonym key when pseudonymising, see ``inventory.load``)."""
    loaded = policy.load(profiles)
    variables = policy.resolve_variables(loaded.policy, var_overrides)
    pseudonymiser = _pseudonymiser(loaded) if loaded.policy.pseudonymise_email else None
    inv = inventory.load(inventory_paths, loaded.policy.columns, frozenset((known_rows or {}).values()),
                         policy.team_names(loaded.policy), pseudonymiser.row_digest if pseudonymiser else None)
    renderer = Renderer(loaded, variables, pseudonymiser)
    extra_names = inv.extra_columns | {name for device in inv.devices for name in device.extra}
    policy_problems = renderer.check(extra_names)
    if policy_problems:
        raise MdmgenError(policy_problems + inv.problems)
    return Prepared(loaded=loaded, inventory=inv, pseudonymiser=pseudonymiser, renderer=renderer)


def render_device(renderer: Renderer, device: Device, raw_email: str | None
                  ) -> tuple[Settings | None, dict[str, bytes] | None, list[Problem]]:
    """One device through render, validation and emit (the full path, with every check): its
    settings and files, or None and the problems that stopped it. ``device`` already carries its
    pseudonym when ``raw_email`` is given (see ``compile_fleet``)."""
    settings, problems = renderer.render(device, raw_email)
    if settings is not None:
        problems = check_settings(settings, device, renderer.loaded.policy.allow_content_logging,
                                  lambda name: renderer.env_origin(device, name))
        problems += check_headers_helper(settings, device)
    if problems or settings is None:
        return settings, None, problems
    files = registry.emit_device(registry.DeviceInput(device=device, settings=settings,
                                                      policy=renderer.loaded.policy))
    if leak := raw_email_leak(renderer, device, raw_email, files):
        return settings, None, [leak]
    return settings, files, []


def raw_email_leak(renderer: Renderer, device: Device, raw_email: str | None,
                   files: Mapping[str, bytes]) -> Problem | None:
    """With pseudonymise_email on, the row's raw address must not reach its files but through
    ``raw_user_email`` (see ``_leaks``)."""
    if raw_email is None or renderer.uses_raw_email(device) or not _leaks(files, raw_email):
        return None
    return Problem(location=device.location, field="user_email", serial=device.serial, row=True,
                   message="pseudonymise_email is on, but this row's email reaches its files through another "
                           "column or template; use 'user_email' (the pseudonym) there, or 'raw_user_email' "
                           "if the raw address is really meant")


def compile_fleet(inventory_paths: Iterable[Path], profiles: Path,
                  var_overrides: Mapping[str, str], *, skip_invalid: bool = False,
                  previous: Manifest | None = None, progress: Progress = NO_PROGRESS,
                  known_rows: Mapping[str, str] | None = None,
                  known_parts: Mapping[tuple[str, str], str] | None = None) -> CompileResult:
    """Compile every device. Raises MdmgenError for policy problems (they affect every device);
    device problems are returned, and with ``skip_invalid`` the other devices still compile.
    Raises policy.UnknownVariable for an unknown --var name (a usage error).

    The one reuse rule (see ``output.state``): a device whose row digest is its entry in
    ``known_rows`` (the compile state's, by serial) and whose inputs fingerprint (its row and
    the policy part that applies to it) is its entry in ``previous`` is not rendered again: it is
    returned with ``files=None`` and the output stage keeps its files and manifest line. Rows the
    state knows skip email-validator (see ``inventory.load``). Without them everything is computed.
    ``known_parts``: the state's policy parts (see ``output.state.NewState``): a device whose row,
    platform, team spelling and policy part are the recorded ones has its entry's fingerprint, which
    is then not computed again.

    Every problem's message has every resolved secret value redacted (in every form it can take)
    before it leaves: a template error such as ``{{ {}[secret("T")] }}`` names the missing key.
    """
    with runscope.run():  # the CLI command's run, or this compile's own (see runscope)
        try:
            result = _compile_fleet(inventory_paths, profiles, var_overrides, skip_invalid=skip_invalid,
                                    previous=previous, progress=progress, known_rows=known_rows or {},
                                    known_parts=known_parts or {})
        except MdmgenError as exc:
            raise MdmgenError(_redacted(exc.problems)) from None
        result.problems = _redacted(result.problems)
        return result


def _redacted(problems: list[Problem]) -> list[Problem]:
    values = secrets.resolved_values()
    if not values:
        return problems
    hide = redactor(values)  # every form of every value (see messages.secret_forms), built once
    return [p.model_copy(update={"message": hide(p.message)}) for p in problems]


def _blanks(values: Mapping[str, str]) -> dict[str, list[tuple[bytes, bytes]]]:
    """For each secret label, every form of its value and what replaces it, longest first."""
    return {label: sorted(((form.encode("utf-8"), f"<{label}>".encode()) for form in secret_forms(value)),
                          key=lambda pair: len(pair[0]), reverse=True)
            for label, value in values.items()}


def _blanked(files: Mapping[str, bytes], blanks: Mapping[str, list[tuple[bytes, bytes]]],
             labels: Iterable[str]) -> str:
    """sha256 of a device's files with each of its secrets (every form) replaced by its label, so
    two trees whose files differ only by a rotated secret give the same digest (see ``diff``)."""
    outer = hashlib.sha256()
    replacements = sorted((pair for label in labels for pair in blanks[label]), key=lambda pair: len(pair[0]),
                          reverse=True)
    for name in sorted(files):
        data = files[name]
        for form, label in replacements:
            data = data.replace(form, label)
        outer.update(f"{name}\0{hashlib.sha256(data).hexdigest()}\0".encode())
    return outer.hexdigest()[:32]  # 128 bits: a change detector, kept short for 100,000-line manifests


def _fleet_leaks(fleet_files: Mapping[str, bytes], values: Iterable[str], where: Location) -> list[Problem]:
    """A fleet file (the collector's config) must name a secret (``${env:NAME}``), never hold it."""
    problems = []
    for relpath, data in sorted(fleet_files.items()):
        text = data.decode("utf-8", errors="replace")
        if any(form in text for value in values for form in secret_forms(value)):
            problems.append(Problem(location=where, field=relpath, message=(
                "this fleet file would hold a secret value; it must refer to it instead")))
    return problems


@dataclass
class _Compilation:
    """What every device's step of one compile shares: the prepared stages, what the compile state
    and the previous manifest say (for the one reuse rule), the secrets' values and their blanks
    (for ``redacted``), the fast path and the collector side's tally. Made once per compile, by
    :func:`_start`, and dropped with it: nothing outlives the compile."""

    prepared: Prepared
    previous: Mapping[str, ManifestDevice]
    known_rows: Mapping[str, str]
    known_parts: Mapping[tuple[str, str], str]
    secret_values: dict[str, str]
    blanks: dict[str, list[tuple[bytes, bytes]]]
    shaper: shapes.Shaper | None
    telemetry: destinations.FleetDestinations
    embedded: set[str] = field(default_factory=set)  # the labels of the secrets the compiled devices embed

    @property
    def policy(self) -> policy.Policy:
        return self.prepared.loaded.policy


def _start(prepared: Prepared, previous: Manifest | None, known_rows: Mapping[str, str],
           known_parts: Mapping[tuple[str, str], str]) -> _Compilation:
    renderer = prepared.renderer
    secret_values = {ref.label: value for ref, value in renderer.secret_values().items()}
    # ``shapes`` compiles devices that share a shape once; it needs the keyless path (no pseudonym).
    use_shapes = fastpath.enabled() and prepared.pseudonymiser is None
    return _Compilation(prepared=prepared, previous=previous.devices if previous else {}, known_rows=known_rows,
                        known_parts=known_parts,
                        secret_values=secret_values, blanks=_blanks(secret_values),
                        shaper=shapes.Shaper(renderer, prepared.loaded.policy) if use_shapes else None,
                        telemetry=destinations.FleetDestinations(renderer))


def _compile_fleet(inventory_paths: Iterable[Path], profiles: Path,
                   var_overrides: Mapping[str, str], *, skip_invalid: bool,
                   previous: Manifest | None, progress: Progress,
                   known_rows: Mapping[str, str], known_parts: Mapping[tuple[str, str], str]) -> CompileResult:
    """The named steps of :func:`compile_fleet`: prepare, each device, the fleet files, the verdict
    and what the compile state will record."""
    inventory_paths = list(inventory_paths)
    digests = runkey.input_digests(inventory_paths, profiles) if fastpath.enabled() else None
    prepared = prepare(inventory_paths, profiles, var_overrides, known_rows)
    inv = prepared.inventory
    run = _start(prepared, previous, known_rows, known_parts)
    result = CompileResult(problems=list(inv.problems), excluded=inv.excluded,
                           secret_env=list(prepared.loaded.policy.secret_env),
                           status_columns=inv.status_columns, team_spellings=inv.team_spellings,
                           pseudonymised=prepared.pseudonymiser is not None)
    bad_serials = {p.serial for p in inv.problems if p.serial}
    progress.start(len(inv.devices), "Compiling")
    for device in inv.devices:
        progress.advance()
        if device.serial not in bad_serials:
            _compile_device(run, device, result)
    progress.finish()
    _compile_fleet_files(run, result)
    bad_rows = {(p.location.file, p.location.line) for p in inv.problems if p.row}
    result.rejected = len(bad_rows) + len(inv.devices) - len(result.devices)
    if result.problems and not (skip_invalid and all(p.row for p in result.problems)):
        raise MdmgenError(result.problems)
    result.state = _new_state(run, result, digests, var_overrides, skip_invalid)
    return result


def _compile_device(run: _Compilation, device: Device, result: CompileResult) -> None:
    """One device: reused under the one rule (its row digest is the compile state's and its inputs
    fingerprint the previous manifest's), else rendered, checked and emitted. Adds the compiled
    device, or its problems, to ``result``.

    The fingerprint is made of the row's fields and the policy part: with the same row (digest),
    the same platform and team spelling (what the other rows decide, see ``inventory.fold_teams``)
    and the recorded policy part, it is the entry's, and is not computed again."""
    renderer, pseudonymiser = run.prepared.renderer, run.prepared.pseudonymiser
    raw_email = None
    if pseudonymiser is not None:  # from here on the device carries only its pseudonym
        raw_email = device.user_email
        device = device.model_copy(update={"user_email": pseudonymiser.pseudonym(raw_email)})
    before = run.previous.get(device.serial)
    known_row = before is not None and run.known_rows.get(device.serial) == run.prepared.inventory.row_digests[
        device.serial]
    if (known_row and before.platform == device.platform and before.team == device.team
            and run.known_parts.get((device.platform.value, device.team_key)) == renderer.policy_part(device)):
        inputs = before.inputs  # the same fields and the same policy part: the entry's fingerprint
    else:
        inputs = renderer.inputs(device, raw_email)
    labels = tuple(ref.label for ref in renderer.secrets_used(device))  # known once the policy part is
    collecting = run.policy.collector is not None
    if known_row and inputs == before.inputs:
        run.embedded.update(labels)
        result.devices.append(CompiledDevice(device=device, inputs=inputs, secrets=labels, redacted=before.redacted))
        if collecting:
            run.telemetry.reused(device, raw_email)
        return
    result.rendered += 1
    compiled = _render(run, device, raw_email, labels)
    if isinstance(compiled, Problem):
        result.problems.append(compiled)
        return
    if isinstance(compiled, list):
        result.problems.extend(compiled)
        return
    settings, files = compiled
    run.embedded.update(labels)
    result.devices.append(CompiledDevice(device=device, inputs=inputs, files=files, secrets=labels,
                                         redacted=_blanked(files, run.blanks, labels) if labels else None))
    if collecting:
        run.telemetry.rendered(device, settings)


def _render(run: _Compilation, device: Device, raw_email: str | None, labels: tuple[str, ...]
            ) -> tuple[Settings, dict[str, bytes]] | list[Problem] | Problem:
    """A device's settings and files, by the fast path (``shapes``) for a device that embeds no
    secret, else by :func:`render_device`. With any problem on the fast path the device is compiled
    again by the slow one, so every message is the slow path's."""
    renderer = run.prepared.renderer
    shaped = run.shaper.compile(device) if run.shaper is not None and not labels else None
    if shaped is not None:
        settings, emit = shaped
        if not (check_settings(settings, device, run.policy.allow_content_logging)
                or check_headers_helper(settings, device)):
            files = emit()
            leak = raw_email_leak(renderer, device, raw_email, files)
            return leak if leak is not None else (settings, files)
    settings, files, problems = render_device(renderer, device, raw_email)
    if files is None:
        return problems
    assert settings is not None
    return settings, files


def _compile_fleet_files(run: _Compilation, result: CompileResult) -> None:
    """The collector side from what the compiled devices send, checked to hold no secret value, and
    the secrets the devices embed (fingerprints and the settings keys they are in)."""
    loaded, renderer = run.prepared.loaded, run.prepared.renderer
    compiled = tuple(c.device for c in result.devices)
    sent = None
    if loaded.policy.collector is not None:
        try:  # the team label and values the devices send, which the rules and dashboards count
            sent = run.telemetry.sent_team(compiled, loaded.location(("collector",)))
        except destinations.TeamAttributeError as exc:
            raise MdmgenError([exc.problem]) from None
    result.fleet_files = registry.emit_fleet(registry.FleetInput(
        devices=compiled, policy=loaded.policy, destinations=run.telemetry.sorted(), team=sent))
    leaks = _fleet_leaks(result.fleet_files, run.secret_values.values(), Location(file=loaded.file))
    if leaks:
        raise MdmgenError(leaks)
    keys = {ref.label: found for ref, found in renderer.secret_keys().items()}
    fingerprints = {ref.label: fp for ref, fp in renderer.secret_fingerprints().items()}
    result.secrets = {label: ManifestSecret(fingerprint=fingerprints[label], keys=keys.get(label, []))
                      for label in sorted(run.embedded)}
    result.secret_env = sorted(set(result.secret_env) | {key[4:] for label in run.embedded
                                                          for key in keys.get(label, [])
                                                          if key.startswith("env.") and key.count(".") == 1})


def _new_state(run: _Compilation, result: CompileResult, digests: list[tuple[str, str]] | None,
               var_overrides: Mapping[str, str], skip_invalid: bool) -> NewState:
    """What the compile state records: every device's row digest, and the run key and summary that
    let a night with the very same inputs be reused whole, only after a compile with no problem
    whose files were all read (the run key covers exactly those files)."""
    inv, loaded, pseudonymiser = run.prepared.inventory, run.prepared.loaded, run.prepared.pseudonymiser
    parts = {(platform.value, team): part for (platform, team), part in run.prepared.renderer.policy_parts().items()}
    if (digests is None or result.problems or result.rejected
            or [name for name, _digest in digests[:-1]] != inv.files or digests[-1][0] != loaded.file):
        return NewState(rows=inv.row_digests, parts=parts)
    fingerprints = {ref.label: fp for ref, fp in run.prepared.renderer.secret_fingerprints().items()}
    key = runkey.run_key(digests, var_overrides, skip_invalid, fingerprints,
                         pseudonymiser.key_id if pseudonymiser else None)
    return NewState(rows=inv.row_digests, parts=parts, run_key=key, secrets=tuple(sorted(fingerprints)),
                    pseudonymised=pseudonymiser is not None,
                    summary=result.summary().model_copy(update={"rendered": 0}))
