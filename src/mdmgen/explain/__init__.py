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
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .. import pipeline, runscope
from .. import secrets as secret_refs
from ..messages import redactor
from ..models import Device, MdmgenError
from .delivery import build
from .models import SUGGESTIONS, ExplainError, Explanation

__all__ = ["ExplainError", "Explanation", "explain"]

# --- the one function cli calls -----------------------------------------------------------------


def explain(serial: str, inventory_paths: Iterable[Path], profiles: Path, var_overrides: Mapping[str, str],
            out: Path) -> Explanation:
    """Compile the device with ``serial`` as ``compile`` would, and explain it. Raises ExplainError
    (exit 1) and policy.UnknownVariable (a usage error); every message is redacted of the secrets."""
    wanted = serial.strip().upper()
    with runscope.run():  # the secrets _hider redacts: the command's run's, or this call's own
        return _explain_redacted(wanted, inventory_paths, profiles, var_overrides, out)


def _explain_redacted(wanted: str, inventory_paths: Iterable[Path], profiles: Path,
                      var_overrides: Mapping[str, str], out: Path) -> Explanation:
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
    explanation = build(prepared, device, settings, files, var_overrides, out)
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


