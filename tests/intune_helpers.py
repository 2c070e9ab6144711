"""Helpers for the ``mdmgen publish intune`` tests: compile a fleet, seed the fake tenant, and look at
Intune's objects the way a device would see them.

The device view (:func:`delivered_to`) is written from the reference, not from the publisher: a
device gets every object assigned to a group its primary user is in (transitively); Intune pastes
``{{mail}}`` and ``{{serialnumber}}`` raw into the profile (intune-graph.md §2.5); the client then
reads the settings and percent-decodes the attribute and header lists.
"""

from __future__ import annotations

import base64
import json
import plistlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .conftest import run
from .fakes.graph_server import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, FakeGraphServer, User

DOMAIN = "com.anthropic.claudecode"
LISTS = ("OTEL_RESOURCE_ATTRIBUTES", "OTEL_EXPORTER_OTLP_HEADERS")


@dataclass
class Row:
    serial: str
    platform: str
    email: str
    team: str
    extra: str = ""


def compile_rows(workdir: Path, rows: list[Row], *, intune: str = "intune: {}", extra_policy: str = "",
                 extra_header: str = "", expect: int = 0) -> Path:
    policy = workdir / "profiles" / "policy.yaml"
    text = policy.read_text()
    if "\nintune:" not in text:
        policy.write_text(text + "\n" + intune + "\n" + extra_policy)
    header = "serial_number,platform,user_email,team" + (f",{extra_header}" if extra_header else "")
    lines = [header] + [f"{r.serial},{r.platform},\"{r.email}\",\"{r.team}\"" + (f",{r.extra}" if extra_header else "")
                        for r in rows]
    (workdir / "inventory" / "devices.csv").write_text("\n".join(lines) + "\n")
    result = run(workdir, "compile")
    assert result.exit_code == expect, result.output
    return workdir / "output"


def seed(graph: FakeGraphServer, rows: list[Row], *, groups: dict[str, str] | None = None,
         mail: dict[str, str] | None = None, skip: tuple[str, ...] = ()) -> dict[str, User]:
    """One user per email (mail = the email unless ``mail`` overrides), one managed device per row
    (except ``skip``), and one group per team named ``groups.get(team, team)`` holding its users."""
    users: dict[str, User] = {}
    members: dict[str, list[str]] = {}
    for row in rows:
        user = users.get(row.email)
        if user is None:
            user = users[row.email] = graph.add_user(row.email, mail=(mail or {}).get(row.email, row.email))
        if row.serial not in skip:
            graph.add_managed_device(row.serial, user=user,
                                     operating_system="macOS" if row.platform == "macos" else "Windows")
        members.setdefault(row.team, [])
        if user.id not in members[row.team]:
            members[row.team].append(user.id)
    for team, ids in members.items():
        graph.add_group((groups or {}).get(team, team), members=ids)
    return users


def azure_env(monkeypatch: Any, graph: FakeGraphServer, cert: Path) -> None:
    for name in ("AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_USERNAME", "AZURE_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_TENANT_ID", graph.tenant_id)
    monkeypatch.setenv("AZURE_CLIENT_ID", DEFAULT_CLIENT_ID)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", DEFAULT_CLIENT_SECRET)
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", graph.authority_host)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


def publish(workdir: Path, graph: FakeGraphServer, *args: str):
    return run(workdir, "publish", "intune", "--graph-url", graph.graph_url, *args)


def writes(graph: FakeGraphServer) -> list[str]:
    """Every write Graph accepted or refused (``$batch`` is a read here: it carries only GETs)."""
    return [f"{r.method} {r.path}" for r in graph.requests
            if r.method in ("POST", "PATCH", "PUT", "DELETE") and not r.path.endswith("/$batch")
            and "/oauth2/" not in r.path]


def user_groups(graph: FakeGraphServer, user: User) -> set[str]:
    found = {g.id for g in graph.groups.values() if user.id in g.members}
    while True:
        more = {g.id for g in graph.groups.values() if set(g.members) & found} - found
        if not more:
            return found
        found |= more


def assigned_objects(graph: FakeGraphServer, user: User) -> list[tuple[str, dict[str, Any]]]:
    """(kind, object) of every configuration and script assigned to one of the user's groups."""
    groups = user_groups(graph, user)
    out = []
    for kind, store in (("macos", graph.configurations), ("windows", graph.scripts)):
        for oid, obj in store.items():
            targets = {a["target"].get("groupId") for a in graph.assignments.get(oid, [])}
            if targets & groups:
                out.append((kind, obj))
    return out


def decode_lists(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings as the client reads them: attribute and header lists split at ',' and '=' and
    percent-decoded (claude-code-managed-settings.md §8.1)."""
    view = json.loads(json.dumps(settings))
    env = view.get("env", {})
    for name in LISTS:
        if name in env:
            pairs = [member.split("=", 1) for member in env[name].split(",")]
            env[name] = {key.strip(): unquote(value.strip()) for key, value in pairs}
    return view


def mac_view(payload: bytes, *, mail: str, serial: str) -> dict[str, Any]:
    """What the Mac's client reads from a team profile after Intune's substitutions."""
    text = payload.decode("utf-8").replace("{{mail}}", mail).replace("{{serialnumber}}", serial)
    profile = plistlib.loads(text.encode("utf-8"))
    return decode_lists(profile["PayloadContent"][0]["PayloadContent"][DOMAIN]["Forced"][0]["mcx_preference_settings"])


def compiled(out: Path, serial: str) -> bytes:
    return (out / "devices" / serial / "managed-settings.json").read_bytes()


def payload(obj: dict[str, Any]) -> bytes:
    return base64.b64decode(obj["payload"] if "payload" in obj else obj["scriptContent"])


GRAPH_URL = "https://graph.microsoft.com"
GRAPH_TOKEN = "graph-t0k3n"


class FixedToken:
    """A credential that always has the same token: scripted Graph tests leave Entra ID out."""

    def get_token(self, *_scopes: str, **_kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken(GRAPH_TOKEN, 1 << 40)


def scripted_graph(script: Any, **kwargs: Any) -> Any:
    """A real GraphClient whose requests the ``script`` (tests/scripted.py) answers."""
    from mdmgen.publish.intune.graph import GraphClient

    return GraphClient(GRAPH_URL, FixedToken, transport=script, **kwargs)
