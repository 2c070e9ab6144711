"""``collector/dashboards/*.json``: Grafana dashboards over the metrics the collector exports.

- ``personal.json``: one person's usage (cost, tokens, sessions, lines of code); the person is a
  query variable over the ``user_email`` label, so no address is written into the file (and with
  ``pseudonymise_email`` the label holds only pseudonyms).
- ``team-overview.json``: adoption against enrolled headcount, and cost, per team; its ``team``
  variable is a custom variable with one option per team (see :func:`team_variable_query`).

Built with Grafana Labs' own ``grafana-foundation-sdk`` (its typed builders follow Grafana's
dashboard schema, so field names and variable shapes are Grafana's, not hand-typed), then written
as sorted JSON so the same fleet gives the same bytes. Metric names follow the translation
strategy pinned in the collector config (see ``fleet``).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    GridPos,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

from ..inputs import SentTeam
from .fleet import (
    ACTIVE_RECORD,
    COST_METRIC,
    ENROLLED_RECORD,
    LINES_METRIC,
    SESSION_METRIC,
    TOKEN_METRIC,
    grown,
    headcounts,
)

if TYPE_CHECKING:
    from ..inputs import FleetInput

PERSONAL_PATH = "collector/dashboards/personal.json"
TEAM_PATH = "collector/dashboards/team-overview.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["claude-code", "mdmgen"]


def emit_personal(given: FleetInput) -> bytes | None:
    if given.policy.collector is None:
        return None
    who = 'user_email="$user"'
    user = (dashboard.QueryVariable("user").label("User").datasource(DATASOURCE)
            .query(f"label_values({SESSION_METRIC}, user_email)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC))
    panels = [
        _stat(1, "Cost in the range (USD)",
              f"sum({grown(f'{COST_METRIC}{{{who}}}', '$__range')})", "currencyUSD", 0, 0),
        _stat(2, "Sessions in the range", f"sum({grown(f'{SESSION_METRIC}{{{who}}}', '$__range')})", "short", 8, 0),
        _stat(3, "Lines of code changed", f"sum({grown(f'{LINES_METRIC}{{{who}}}', '$__range')})", "short", 16, 0),
        _series(4, "Cost per hour by model (USD)", f"sum by (model) {grown(f'{COST_METRIC}{{{who}}}', '1h')}",
                "{{model}}", "currencyUSD", 0, 6),
        _series(5, "Tokens per hour by type", f"sum by (type) {grown(f'{TOKEN_METRIC}{{{who}}}', '1h')}",
                "{{type}}", "short", 12, 6),
    ]
    return _dumps(_dashboard("mdmgen-claude-code-personal", "Claude Code: my usage", [user], panels))


def emit_team(given: FleetInput) -> bytes | None:
    collector = given.policy.collector
    if collector is None:
        return None
    sent = given.team or SentTeam()
    teams = list(headcounts(given.devices, sent))  # the values the devices send, not the inventory's
    label = sent.label
    window = collector.alerts.adoption_window
    team_variable = (dashboard.CustomVariable("team").label("Team").multi(True).include_all(True)
                     .values(team_variable_query(teams))
                     .options([VariableOption(selected=False, text=team_label(team), value=team_pattern(team))
                               for team in teams])
                     .current(VariableOption(selected=True, text=["All"], value=["$__all"])))
    selected = f'{label}=~"{TEAM_SELECTION}"'
    legend = f"{{{{{label}}}}}"
    panels = [
        _series(1, f"Adoption: share of enrolled users active in {window}",
                f"{ACTIVE_RECORD}_{window}{{{selected}}} / on ({label}) {ENROLLED_RECORD}{{{selected}}}",
                legend, "percentunit", 0, 0),
        _series(2, f"Active users in {window}", f"{ACTIVE_RECORD}_{window}{{{selected}}}", legend, "short", 12, 0),
        _series(3, "Enrolled users (inventory)", f"{ENROLLED_RECORD}{{{selected}}}", legend, "short", 0, 9),
        _series(4, "Cost per day by team (USD)", f"sum by ({label}) {grown(f'{COST_METRIC}{{{selected}}}', '1d')}",
                legend, "currencyUSD", 12, 9),
    ]
    return _dumps(_dashboard("mdmgen-claude-code-teams", "Claude Code: team overview", [team_variable], panels))


TEAM_SELECTION = "${team:pipe}"
"""How the panels' queries use the selection: the selected options' values joined by ``|``, and
nothing else. An explicit format overrides the Prometheus data source's own escaping, which
differs between Grafana versions (whether it escapes ``"`` depends on the feature toggle
``prometheusSpecialCharsInLabelValues``); the values are already escaped (:func:`team_pattern`)."""

_WORD = re.compile(r"[A-Za-z0-9_]")
_INTERPOLATED = re.compile(r"\$(?=[A-Za-z0-9_{])|\[(?=\[)")
WORD_JOINER = "\u2060"


def team_variable_query(teams: list[str]) -> str:
    """The custom variable's ``query``: one ``label : value`` option per team, comma-separated.

    Grafana splits it (scenes ``CustomVariable.transformCsvStringToOptions``) on commas not
    written ``\\,``, turns ``\\,`` back into a comma, then splits each option at its last
    ``<space>:<space>`` into label and value, and trims both. A team name is written as the label
    with its commas escaped (a trailing ``\\`` is then followed by `` : ``, never by a separator);
    the value (:func:`team_pattern`) holds no comma, space, colon or ``$``, so neither split nor
    trim nor Grafana's interpolation of ``$var`` in the query can change it."""
    return ",".join(f"{team_label(team).replace(',', chr(92) + ',')} : {team_pattern(team)}" for team in teams)


def team_label(team: str) -> str:
    """The option's label: the team name, with a word joiner (U+2060, invisible) after a ``$``
    or ``[`` that would otherwise start a Grafana variable reference (``$team``, ``${x}``,
    ``[[x]]``), since Grafana interpolates the variable's query before splitting it."""
    return _INTERPOLATED.sub(lambda found: found.group() + WORD_JOINER, team)


def team_pattern(team: str) -> str:
    """The option's value: the body of a PromQL string whose RE2 regex matches exactly ``team``.

    Two layers: every ASCII character but letters, digits and ``_`` is backslash-escaped for the
    regex (RE2 and Python's ``re`` both read ``\\`` plus ASCII punctuation as that character);
    then, for the PromQL string, those backslashes are written ``\\\\`` and every other character
    but letters, digits and ``_`` as ``\\uXXXX`` or ``\\UXXXXXXXX``, which the PromQL lexer decodes
    before the regex sees it. The result is ASCII letters, digits, ``_`` and
    ``\\``, never ending in ``\\``: inert to Grafana's split, trim, interpolation and ``pipe`` format,
    and to PromQL's quoting."""
    regex = "".join(char if _WORD.match(char) or not char.isascii() else "\\" + char for char in team)
    body = "".join(char if _WORD.match(char) else "\\\\" if char == "\\" else
                   f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}" for char in regex)
    # A value ending in a backslash would escape the comma after it in the query: end it otherwise.
    return body[:-2] + "\\u005c" if body.endswith("\\\\") else body


def _dashboard(uid: str, title: str, variables: list, panels: list) -> dashboard.Dashboard:
    source = dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
    builder = (dashboard.Dashboard(title).uid(uid).tags(TAGS).time("now-7d", "now").refresh("5m")
               .timezone("browser").editable().with_variable(source))
    for variable in variables:
        builder = builder.with_variable(variable)
    for panel in panels:
        builder = builder.with_panel(panel)
    return builder


def _query(expr: str, legend: str = "__auto") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id("A").datasource(DATASOURCE)


def _stat(panel_id: int, title: str, expr: str, unit: str, x: int, y: int) -> stat.Panel:
    return (stat.Panel().id(panel_id).title(title).datasource(DATASOURCE).unit(unit)
            .grid_pos(GridPos(h=6, w=8, x=x, y=y)).with_target(_query(expr)))


def _series(panel_id: int, title: str, expr: str, legend: str, unit: str, x: int, y: int) -> timeseries.Panel:
    return (timeseries.Panel().id(panel_id).title(title).datasource(DATASOURCE).unit(unit)
            .grid_pos(GridPos(h=9, w=12, x=x, y=y)).with_target(_query(expr, legend)))


def _dumps(builder: dashboard.Dashboard) -> bytes:
    model: Any = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    for panel in model["panels"]:
        panel["options"] = panel.get("options") or {}  # the SDK leaves unset panel options null
    return (json.dumps(model, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
