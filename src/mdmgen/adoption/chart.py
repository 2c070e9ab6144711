"""``--chart FILE``: per-team adoption (one bar per team) and daily active people (one line per team).

Drawn with matplotlib (a well-kept plotting library, the optional extra ``chart``), on the Agg
backend, so no display is needed. :func:`figure` is pure (the figure is inspectable before it is
saved); :func:`save` writes it atomically. Team names are drawn as plain text: matplotlib would read
``$...$`` in a name as mathematics, so dollars are escaped. No date is embedded, so the same report
draws the same file.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ..messages import printable
from .models import AdoptionUsageError, Report

FORMATS = (".png", ".svg")
MAX_TEAMS_IN_LEGEND = 20


def check_path(path: Path) -> None:
    """Before anything is read or sent: the format, and that matplotlib is installed (exit 2)."""
    if path.suffix.lower() not in FORMATS:
        raise AdoptionUsageError(f"--chart: {path.name!r} must end in .png or .svg")
    _figure_class()


def _figure_class() -> Any:
    """matplotlib's Figure, on the Agg backend; a one-line usage error when matplotlib is missing."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise AdoptionUsageError("--chart needs matplotlib, which is not installed: pip install 'mdmgen[chart]'") \
            from None
    matplotlib.use("Agg", force=True)
    matplotlib.rcParams["svg.hashsalt"] = "mdmgen"  # the SVG's element ids, the same every run
    return Figure


def _label(team: str) -> str:
    return printable(team).replace("$", r"\$")


def figure(report: Report) -> Any:
    """A matplotlib Figure of two panels: the share of each team's enrolled people who were active, and
    each team's active people per day of the window."""
    Figure = _figure_class()
    rows = report.teams
    fig = Figure(figsize=(12, max(4.0, 0.35 * len(rows) + 1.5)), layout="constrained")
    bars, lines = fig.subplots(1, 2)
    names = [_label(r.team) for r in rows]
    bars.barh(names, [100 * (r.ratio or 0.0) for r in rows], color="#4C72B0")
    bars.set_xlim(0, 100)
    bars.set_xlabel("active / enrolled people (%)")
    bars.set_title("Adoption per team")
    bars.invert_yaxis()
    days = list(rows[0].daily_active) if rows else []
    for row, name in zip(rows, names, strict=True):
        lines.plot([d[5:] for d in days], [row.daily_active[d] for d in days], marker="o", label=name)
    lines.set_xlabel(f"UTC day ({report.window['from']} to {report.window['to']})")
    lines.set_ylabel("active people")
    lines.set_title("Daily active people per team")
    lines.yaxis.get_major_locator().set_params(integer=True)
    if 0 < len(rows) <= MAX_TEAMS_IN_LEGEND:
        lines.legend(fontsize="small")
    return fig


def render(fig: Any, suffix: str) -> bytes:
    """The chart's bytes in the format its file's suffix names (``.png`` or ``.svg``), with no date in them."""
    fmt = suffix.lower().lstrip(".")
    metadata = {"Date": None} if fmt == "svg" else {"Software": "mdmgen"}
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, metadata=metadata)
    return buffer.getvalue()
