"""A fake Microsoft identity platform plus Microsoft Graph (Intune) for tests: real HTTPS on 127.0.0.1.

Written from ``shared/reference/intune-graph.md`` (the "reference"; ``§`` numbers point into it, §7 is
its suggested contract for this fake), not from any client's assumptions.  Where the reference is
silent or marks a fact [unverified], the conservative choice made here is flagged ``CHOICE:``:
conservative means *stricter than Graph is likely to be*, so a client that passes here does not rely
on leniency.

Usage::

    cert, key = self_signed(tmp_path)
    with FakeGraphServer(tls=(cert, key), page_size=2) as graph:
        graph.authority_host   # AZURE_AUTHORITY_HOST, e.g. "https://127.0.0.1:<port>"
        graph.graph_url        # "https://127.0.0.1:<port>" (Graph lives under /beta and /v1.0)
        graph.add_managed_device("C02XXXXXXHD1", user=graph.add_user("ada@example.com"))
        ...                    # drive it over HTTPS (trust ``cert`` via SSL_CERT_FILE / REQUESTS_CA_BUNDLE)
        graph.requests         # every request, secrets redacted

Identity (``graph_identity.py``): OIDC metadata and the v2.0 token endpoint (secret, certificate and
federated assertions); tokens expire on the injectable clock.  Graph, under ``/beta`` and ``/v1.0``:

* §2 ``deviceManagement/deviceConfigurations`` (``macOSCustomConfiguration``): create 201, list (paged),
  get, PATCH 204 (configurable), DELETE 204, ``/assign`` 200 replacing the set, ``/assignments``;
* §3.2 ``deviceManagement/deviceManagementScripts`` (beta only): same verbs, ``/assign`` 204;
* §4.1 ``deviceManagement/managedDevices`` with ``$filter=serialNumber eq '...'`` and ``$select``,
  ``/{id}/users``; ``users`` (by id or UPN, ``$filter``), ``/memberOf``, ``/transitiveMemberOf``;
  ``groups`` by ``displayName``, ``/members``, ``/members/$ref``; ``devices`` by ``deviceId`` (§4.2);
* §5.1 Graph error bodies, §5.3 ``@odata.nextLink`` paging with opaque ``$skiptoken``, §5.4 ``$batch``.

Faults: 429 storms (``Retry-After`` integer, absent or non-integer), one-off 5xx, token expiry, the
§5.2 write budget (per app and per tenant, on the injectable clock), a PATCH that answers success but
keeps the old payload (IntuneCD #264), missing permissions (403).
"""

from __future__ import annotations

import base64
import fnmatch
import json
import math
import re
import secrets
import ssl
import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from .graph_directory import DirectoryHandlers, Group, ManagedDevice, User, new_id
from .graph_http import (
    GraphRequest,
    HttpError,
    HttpsServer,
    ManualClock,
    RequestRecord,
    Response,
    apply_select,
    filter_matches,
    graph_error,
    json_response,
    parse_filter,
    redact_authorization,
    redact_form,
)
from .graph_identity import (
    ALL_ROLES,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_TENANT_ID,
    DEFAULT_TOKEN_LIFETIME,
    AppRegistration,
    FakeIdentity,
    Token,
    oauth_error,
)

__all__ = [
    "ALL_ROLES",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_TENANT_ID",
    "AppRegistration",
    "FakeGraphServer",
    "Group",
    "ManagedDevice",
    "ManualClock",
    "RequestRecord",
    "User",
]

MAX_PAYLOAD_BYTES = 1_000_000  # §2.1 "Maximum profile file size: 1,000,000 bytes"
# §3.2 "scripts under 200 KB".  CHOICE: 200,000 bytes (the smaller reading of "KB").
MAX_SCRIPT_BYTES = 200_000
MAX_BATCH = 20  # §5.4
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")

MACOS_CUSTOM = "#microsoft.graph.macOSCustomConfiguration"
SCRIPT_TYPE = "#microsoft.graph.deviceManagementScript"
GROUP_TARGET = "#microsoft.graph.groupAssignmentTarget"
EXCLUSION_TARGET = "#microsoft.graph.exclusionGroupAssignmentTarget"
TARGET_TYPES = (GROUP_TARGET, EXCLUSION_TARGET, "#microsoft.graph.allDevicesAssignmentTarget",
                "#microsoft.graph.allLicensedUsersAssignmentTarget")
FILTER_TYPES = ("include", "exclude", "none")
DEPLOYMENT_CHANNELS = ("deviceChannel", "userChannel")

# Server-managed properties.  CHOICE: a write that carries one is refused (400), so a client sends only
# what it means to change - the reference's PATCH example (§2.3) carries only changed fields.
READ_ONLY = ("id", "createdDateTime", "lastModifiedDateTime", "version", "supportsScopeTags")
CONFIG_WRITABLE = ("displayName", "description", "payloadName", "payloadFileName", "payload", "roleScopeTagIds",
                   "deploymentChannel")
SCRIPT_WRITABLE = ("displayName", "description", "scriptContent", "runAsAccount", "enforceSignatureCheck",
                   "fileName", "roleScopeTagIds", "runAs32Bit")

CONFIG_READ = ("DeviceManagementConfiguration.Read.All", "DeviceManagementConfiguration.ReadWrite.All")
CONFIG_WRITE = ("DeviceManagementConfiguration.ReadWrite.All",)
# §1.3: an older assign page lists DeviceManagementManagedDevices.ReadWrite.All for scripts.
SCRIPT_WRITE = ("DeviceManagementConfiguration.ReadWrite.All", "DeviceManagementManagedDevices.ReadWrite.All")
DEVICES_READ = ("DeviceManagementManagedDevices.Read.All", "DeviceManagementManagedDevices.ReadWrite.All")
USERS_READ = ("User.Read.All", "Directory.Read.All")
GROUPS_READ = ("Group.Read.All", "GroupMember.Read.All", "Directory.Read.All")
ENTRA_DEVICES_READ = ("Device.Read.All", "Device.ReadWrite.All", "Directory.Read.All")


@dataclass
class _Fault:
    status: int
    remaining: int | None  # None: until cleared (a storm)
    retry_after: int | str | None
    method: str | None
    path: str | None  # fnmatch glob on the path; None: any Graph path


Handler = Callable[[GraphRequest, re.Match[str]], Response]


class FakeGraphServer(DirectoryHandlers):
    """Fake Entra ID + Graph.  Use as a context manager, or ``start()`` / ``stop()``.

    Parameters: ``tls`` (certificate, key) - required, Graph is HTTPS only; ``apps`` (default: one app with
    ``DEFAULT_CLIENT_ID``/``DEFAULT_CLIENT_SECRET`` and every permission); ``page_size`` - the server's
    page size for every collection (small by default so clients must follow ``@odata.nextLink``);
    ``clock`` - an injectable monotonic clock for token expiry and write budgets (default: a ``ManualClock``,
    so time stands still unless a test advances it: no test depends on how fast the machine is);
    ``patch_status`` - 204 (§7) or 200 with the object (Graph docs, §2.3); ``write_budget`` /
    ``tenant_write_budget`` / ``budget_window`` - §5.2 limits (None disables); ``reverse_batch`` -
    answer ``$batch`` responses in reverse order (§5.4 says "in any order"); ``empty_last_page`` - a
    collection's last page is an empty one (§5.3 "a page can be empty").
    """

    def __init__(self, *, tls: tuple[Any, Any], tenant_id: str = DEFAULT_TENANT_ID,
                 tenant_domains: tuple[str, ...] = ("contoso.onmicrosoft.com",),
                 apps: list[AppRegistration] | None = None, token_lifetime: int = DEFAULT_TOKEN_LIFETIME,
                 page_size: int = 2, clock: Callable[[], float] | None = None, patch_status: int = 204,
                 write_budget: int | None = 100, tenant_write_budget: int | None = 200,
                 budget_window: float = 20.0, reverse_batch: bool = True, empty_last_page: bool = False) -> None:
        self.tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls_context.load_cert_chain(str(tls[0]), str(tls[1]))
        self.clock = clock or ManualClock()
        self.page_size = page_size
        self.patch_status = patch_status
        self.write_budget = write_budget
        self.tenant_write_budget = tenant_write_budget
        self.budget_window = budget_window
        self.reverse_batch = reverse_batch
        self.empty_last_page = empty_last_page
        self.patch_ignores_payload = False  # IntuneCD #264
        self.identity = FakeIdentity(tenant_id=tenant_id, tenant_domains=tenant_domains,
                                     apps=apps or [AppRegistration()], token_lifetime=token_lifetime,
                                     clock=self.clock, base_url=lambda: self.url)
        self.users: dict[str, User] = {}
        self.groups: dict[str, Group] = {}
        self.managed_devices: dict[str, ManagedDevice] = {}
        self.configurations: dict[str, dict[str, Any]] = {}
        self.scripts: dict[str, dict[str, Any]] = {}
        self.assignments: dict[str, list[dict[str, Any]]] = {}
        self.internal_errors: list[str] = []
        self._lock = threading.RLock()
        self._records: list[RequestRecord] = []
        self._faults: list[_Fault] = []
        self._cursors: dict[str, tuple[str, int]] = {}
        self._app_writes: dict[str, deque[float]] = {}
        self._tenant_writes: deque[float] = deque()
        self._httpd: HttpsServer | None = None
        self._thread: threading.Thread | None = None
        self._routes: list[tuple[re.Pattern[str], dict[str, tuple[tuple[str, ...], Handler]], bool]] = []
        self._build_routes()

    # ----------------------------------------------------------------------------------- lifecycle

    def start(self) -> FakeGraphServer:
        if self._httpd is None:
            self._httpd = HttpsServer(self.tls_context, self._process)
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            daemon=True, name="fake-graph")
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.close_all()
            if self._thread is not None:
                self._thread.join(5)
            self._httpd = self._thread = None

    def __enter__(self) -> FakeGraphServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start the server first"
        return f"https://127.0.0.1:{self._httpd.server_port}"

    authority_host = graph_url = url

    @property
    def tenant_id(self) -> str:
        return self.identity.tenant_id

    # ----------------------------------------------------------------------------------- seeding

    def add_app(self, app: AppRegistration) -> AppRegistration:
        with self._lock:
            self.identity.apps[app.client_id] = app
        return app

    def add_user(self, user_principal_name: str, mail: str | None = None, **kw: Any) -> User:
        user = User(user_principal_name, mail if mail is not None else user_principal_name, **kw)
        with self._lock:
            self.users[user.id] = user
        return user

    def add_group(self, display_name: str, members: list[Any] | None = None, **kw: Any) -> Group:
        group = Group(display_name, [self._object_id(m) for m in members or []], **kw)
        with self._lock:
            self.groups[group.id] = group
        return group

    def add_managed_device(self, serial_number: str, user: User | None = None, **kw: Any) -> ManagedDevice:
        device = ManagedDevice(serial_number, user=user, **kw)
        with self._lock:
            self.managed_devices[device.id] = device
        return device

    @staticmethod
    def _object_id(obj: Any) -> str:
        if isinstance(obj, ManagedDevice):
            return obj.entra_object_id
        return obj if isinstance(obj, str) else obj.id

    # ----------------------------------------------------------------------------------- faults

    def throttle(self, count: int | None = 1, *, retry_after: int | str | None = 1, method: str | None = None,
                 path: str | None = None) -> None:
        """The next ``count`` matching requests get 429 ``TooManyRequests`` (``count=None``: a storm until
        :meth:`clear_faults`).  ``retry_after`` None sends no header; a str such as ``"soon"`` or an HTTP
        date sends it verbatim (§5.2: it can be missing or non-integer)."""
        self.fail_next(429, count, retry_after=retry_after, method=method, path=path)

    def fail_next(self, status: int = 503, count: int | None = 1, *, retry_after: int | str | None = None,
                  method: str | None = None, path: str | None = None) -> None:
        """The next ``count`` matching requests answer ``status`` with a Graph error body.  ``path`` is an
        fnmatch glob on the request path (``"/beta/deviceManagement/*"``; an identity path such as
        ``"/*/oauth2/v2.0/token"`` gets an OAuth-shaped body); None matches every Graph path."""
        with self._lock:
            self._faults.append(_Fault(status, count, retry_after, method, path))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self.patch_ignores_payload = False

    def expire_all_tokens(self) -> None:
        with self._lock:
            self.identity.expire_all()

    # ----------------------------------------------------------------------------------- inspection

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def requests_to(self, path_glob: str, method: str | None = None) -> list[RequestRecord]:
        return [r for r in self.requests
                if fnmatch.fnmatchcase(r.path, path_glob) and (method is None or r.method == method)]

    @property
    def tokens_issued(self) -> int:
        with self._lock:
            return self.identity.issued

    def reset_requests(self) -> None:
        with self._lock:
            self._records.clear()

    def payload_of(self, config_id: str) -> bytes:
        """The stored profile bytes (decoded), as a device would receive them."""
        with self._lock:
            return base64.b64decode(self.configurations[config_id]["payload"])

    # ----------------------------------------------------------------------------------- dispatch

    def _process(self, method: str, target: str, headers: Any, body: bytes, batch_id: str | None = None) -> Response:
        split = urlsplit(target)
        path, raw_query = split.path, split.query
        token_path = path.endswith("/oauth2/v2.0/token")
        with self._lock:
            record = RequestRecord(
                seq=len(self._records) + 1, method=method, path=path, query=raw_query,
                authorization=redact_authorization(headers.get("Authorization")),
                headers={k: v for k, v in headers.items() if k.lower() != "authorization"},
                body=redact_form(body.decode("utf-8", "replace")) if token_path else body.decode("utf-8", "replace"),
                batch_id=batch_id)
            self._records.append(record)
            try:
                response = self._route(method, path, raw_query, headers, body, record)
            except HttpError as err:
                response = err.response
            except Exception:
                self.internal_errors.append(traceback.format_exc())
                response = graph_error(500, "InternalServerError", "A bug in the fake Graph server.").response
            record.status = response.status
            return response

    def _take_fault(self, method: str, path: str, graph: bool) -> _Fault | None:
        for fault in self._faults:
            if fault.method not in (None, method):
                continue
            if (fault.path is None and not graph) or (fault.path is not None
                                                      and not fnmatch.fnmatchcase(path, fault.path)):
                continue
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
            return fault
        return None

    @staticmethod
    def _fault_headers(fault: _Fault) -> list[tuple[str, str]]:
        return [] if fault.retry_after is None else [("Retry-After", str(fault.retry_after))]

    def _route(self, method: str, path: str, raw_query: str, headers: Any, body: bytes,
               record: RequestRecord) -> Response:
        identity = re.fullmatch(r"/([^/]+)/(v2\.0/\.well-known/openid-configuration|oauth2/v2\.0/token)", path)
        if identity:
            fault = self._take_fault(method, path, graph=False)
            if fault is not None:
                record.fault = f"status-{fault.status}"
                err = oauth_error(fault.status, "temporarily_unavailable", 50196, "Injected fault.")
                err.response.headers.extend(self._fault_headers(fault))
                raise err
            tenant, which = identity.groups()
            if which.startswith("v2.0") and method == "GET":
                return self.identity.openid_configuration(tenant)
            if which.startswith("oauth2") and method == "POST":
                return self.identity.token(tenant, headers, body)
            raise oauth_error(405, "invalid_request", 900561, "The endpoint only accepts POST requests.")
        graph = re.fullmatch(r"/(v1\.0|beta)(/.*)", path)
        client_request_id = headers.get("client-request-id")
        if graph is None:
            # Includes /common/discovery/instance: not needed with instance discovery off (module docstring).
            raise graph_error(404, "NotFound", f"No such endpoint on the fake: {path}")
        version, rest = graph.groups()
        token = self._authenticate(headers, client_request_id)
        fault = self._take_fault(method, path, graph=True)
        if fault is not None:
            record.fault = f"status-{fault.status}"
            codes = {429: ("TooManyRequests", "Too many requests."), 503: ("ServiceUnavailable",
                     "The service is temporarily unavailable."), 502: ("BadGateway", "Bad gateway."),
                     504: ("GatewayTimeout", "Gateway timeout.")}
            code, message = codes.get(fault.status, ("InternalServerError", "Injected fault."))
            raise graph_error(fault.status, code, message, client_request_id=client_request_id,
                              headers=self._fault_headers(fault))
        query = {k: v[0] for k, v in parse_qs(raw_query, keep_blank_values=True).items()}
        ctx = GraphRequest(version, method, rest, query, raw_query, headers, body, token, client_request_id)
        if rest == "/$batch":
            if method != "POST":
                raise graph_error(405, "MethodNotAllowed", "$batch only accepts POST.")
            return self._batch(ctx)
        for pattern, methods, beta_only in self._routes:
            match = pattern.fullmatch(rest)
            if match is None:
                continue
            if beta_only and version != "beta":
                segment = rest.strip("/").split("/")[1] if "/" in rest.strip("/") else rest.strip("/")
                raise graph_error(400, "BadRequest", f"Resource not found for the segment '{segment}'.",
                                  client_request_id=client_request_id)
            if method not in methods:
                raise graph_error(405, "MethodNotAllowed", f"{method} is not allowed on this resource.",
                                  client_request_id=client_request_id)
            roles, handler = methods[method]
            if not set(roles) & set(token.roles):
                # §5.1: 403 Authorization_RequestDenied for a missing application permission.
                raise graph_error(403, "Authorization_RequestDenied", "Insufficient privileges to complete the "
                                  f"operation. Needs one of: {', '.join(roles)}.", client_request_id=client_request_id)
            if method in WRITE_METHODS:
                self._charge_write(token, client_request_id, record)
            response = handler(ctx, match)
            if client_request_id:
                response.headers.append(("client-request-id", client_request_id))
            return response
        segment = rest.strip("/").split("/")[-1]
        raise graph_error(400, "BadRequest", f"Resource not found for the segment '{segment}'.",
                          client_request_id=client_request_id)

    def _authenticate(self, headers: Any, client_request_id: str | None) -> Token:
        """§7: ``Authorization: Bearer`` required, else 401 with a Graph error body."""
        scheme, _, value = (headers.get("Authorization") or "").partition(" ")
        challenge = [("WWW-Authenticate", f'Bearer realm="", authorization_uri="{self.url}/{self.tenant_id}'
                                          '/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"')]
        if scheme.lower() != "bearer" or not value:
            raise graph_error(401, "InvalidAuthenticationToken", "Access token is empty.",
                              client_request_id=client_request_id, headers=challenge)
        token = self.identity.lookup(value.strip())
        if token is None:
            raise graph_error(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.",
                              client_request_id=client_request_id, headers=challenge)
        if self.clock() >= token.expires_at:
            raise graph_error(401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired.",
                              client_request_id=client_request_id, headers=challenge)
        return token

    def _charge_write(self, token: Token, client_request_id: str | None, record: RequestRecord) -> None:
        """§5.2 Intune write limits: per app per tenant and per tenant, in a sliding window on the clock.
        CHOICE: only accepted writes count (a throttled write does not extend the storm); Retry-After is the
        whole seconds until the oldest write leaves the window."""
        now = self.clock()
        app = self._app_writes.setdefault(token.client_id, deque())
        for window in (app, self._tenant_writes):
            while window and window[0] <= now - self.budget_window:
                window.popleft()
        for window, limit in ((app, self.write_budget), (self._tenant_writes, self.tenant_write_budget)):
            if limit is not None and len(window) >= limit:
                wait = max(1, math.ceil(window[0] + self.budget_window - now))
                record.fault = "write-budget"
                raise graph_error(429, "TooManyRequests", "Too many requests.", client_request_id=client_request_id,
                                  headers=[("Retry-After", str(wait))])
        app.append(now)
        self._tenant_writes.append(now)

    # ----------------------------------------------------------------------------------- helpers

    def _base(self, ctx: GraphRequest) -> str:
        return f"{self.url}/{ctx.version}"

    def _context(self, ctx: GraphRequest, fragment: str) -> str:
        return f"{self._base(ctx)}/$metadata#{fragment}"

    def _page(self, ctx: GraphRequest, items: list[dict[str, Any]], fragment: str) -> Response:
        """§5.3 paging.  ``$skiptoken`` is a random key to a server-side cursor, so a client cannot build it;
        the other query options travel in the nextLink.  CHOICE: ``$top`` can only shrink the page."""
        offset = 0
        if "$skiptoken" in ctx.query:
            cursor = self._cursors.get(ctx.query["$skiptoken"])
            if cursor is None or cursor[0] != ctx.path:
                raise graph_error(400, "BadRequest", "The $skiptoken is invalid or expired.",
                                  client_request_id=ctx.client_request_id)
            offset = cursor[1]
        size = self.page_size
        if "$top" in ctx.query:
            try:
                size = max(1, min(size, int(ctx.query["$top"])))
            except ValueError:
                raise graph_error(400, "BadRequest", "Invalid $top value.") from None
        page = items[offset:offset + size]
        body: dict[str, Any] = {"@odata.context": self._context(ctx, fragment)}
        more = offset + size < len(items) or (self.empty_last_page and offset < len(items))
        if more:
            key = secrets.token_urlsafe(12)
            self._cursors[key] = (ctx.path, offset + size)
            kept = {k: v for k, v in ctx.query.items() if k != "$skiptoken"}
            body["@odata.nextLink"] = (f"{self._base(ctx)}{quote(ctx.path)}?"
                                       + urlencode({**kept, "$skiptoken": key}, quote_via=quote, safe="$,'"))
        body["value"] = [apply_select(item, ctx.query.get("$select")) for item in page]
        return json_response(200, body)

    def _filtered(self, ctx: GraphRequest, items: list[dict[str, Any]],
                  allowed: tuple[str, ...]) -> list[dict[str, Any]]:
        if "$filter" not in ctx.query:
            return items
        try:
            terms = parse_filter(ctx.query["$filter"], allowed)
        except ValueError as err:
            raise graph_error(400, "BadRequest", str(err), client_request_id=ctx.client_request_id) from None
        return [item for item in items if filter_matches(item, terms)]

    def _not_found(self, ctx: GraphRequest, what: str, key: str) -> HttpError:
        return graph_error(404, "ResourceNotFound", f"{what} with key '{key}' was not found.",
                           client_request_id=ctx.client_request_id)

    @staticmethod
    def _now_text() -> str:
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"

    def _check_properties(self, ctx: GraphRequest, data: dict[str, Any], writable: tuple[str, ...],
                          type_name: str) -> None:
        for key in data:
            if key == "@odata.type":
                continue
            if key in READ_ONLY:
                raise graph_error(400, "BadRequest", f"The property '{key}' is read-only.",
                                  client_request_id=ctx.client_request_id)
            if key not in writable or (key == "deploymentChannel" and ctx.version != "beta"):
                # §2.1: deploymentChannel is beta only.
                raise graph_error(400, "BadRequest", f"The property '{key}' does not exist on type "
                                  f"'{type_name.lstrip('#')}'. Make sure to only use property names that are "
                                  "defined by the type.", client_request_id=ctx.client_request_id)

    def _check_base64(self, ctx: GraphRequest, data: dict[str, Any], key: str, limit: int) -> None:
        if key not in data:
            return
        value = data[key]
        try:
            if not isinstance(value, str):
                raise ValueError
            decoded = base64.b64decode(value, validate=True)
        except ValueError:
            raise graph_error(400, "BadRequest", f"The property '{key}' must be a base64 string.",
                              client_request_id=ctx.client_request_id) from None
        if len(decoded) > limit:
            raise graph_error(400, "BadRequest", f"The property '{key}' is {len(decoded)} bytes decoded; the limit "
                              f"is {limit}.", client_request_id=ctx.client_request_id)

    def _check_strings(self, ctx: GraphRequest, data: dict[str, Any], keys: tuple[str, ...]) -> None:
        for key in keys:
            if key in data and not (isinstance(data[key], str) or (data[key] is None and key == "description")):
                raise graph_error(400, "BadRequest", f"The property '{key}' must be a string.",
                                  client_request_id=ctx.client_request_id)
        tags = data.get("roleScopeTagIds", [])
        if not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
            raise graph_error(400, "BadRequest", "roleScopeTagIds must be an array of strings.",
                              client_request_id=ctx.client_request_id)

    def _view(self, ctx: GraphRequest, obj: dict[str, Any], fragment: str | None = None) -> dict[str, Any]:
        view = dict(obj)
        if ctx.version != "beta":
            view.pop("deploymentChannel", None)
        if fragment:
            view = {"@odata.context": self._context(ctx, fragment), **view}
        return view

    def _patched(self, ctx: GraphRequest, obj: dict[str, Any], fragment: str) -> Response:
        if self.patch_status == 200:
            return json_response(200, self._view(ctx, obj, fragment + "/$entity"))
        return Response(204)

    # ----------------------------------------------------------------------------------- routes

    def _build_routes(self) -> None:
        guid = r"([0-9A-Za-z-]+)"
        dc, ds = "/deviceManagement/deviceConfigurations", "/deviceManagement/deviceManagementScripts"
        table: list[tuple[str, dict[str, tuple[tuple[str, ...], Handler]], bool]] = [
            (dc, {"GET": (CONFIG_READ, self._list_configs), "POST": (CONFIG_WRITE, self._create_config)}, False),
            (rf"{dc}/{guid}", {"GET": (CONFIG_READ, self._get_config), "PATCH": (CONFIG_WRITE, self._patch_config),
                               "DELETE": (CONFIG_WRITE, self._delete_config)}, False),
            (rf"{dc}/{guid}/assign", {"POST": (CONFIG_WRITE, self._assign_config)}, False),
            (rf"{dc}/{guid}/assignments", {"GET": (CONFIG_READ, self._list_config_assignments)}, False),
            (ds, {"GET": (CONFIG_READ, self._list_scripts), "POST": (SCRIPT_WRITE, self._create_script)}, True),
            (rf"{ds}/{guid}", {"GET": (CONFIG_READ, self._get_script), "PATCH": (SCRIPT_WRITE, self._patch_script),
                               "DELETE": (SCRIPT_WRITE, self._delete_script)}, True),
            (rf"{ds}/{guid}/assign", {"POST": (SCRIPT_WRITE, self._assign_script)}, True),
            (rf"{ds}/{guid}/assignments", {"GET": (CONFIG_READ, self._list_script_assignments)}, True),
            ("/deviceManagement/managedDevices", {"GET": (DEVICES_READ, self._list_managed_devices)}, False),
            (rf"/deviceManagement/managedDevices/{guid}", {"GET": (DEVICES_READ, self._get_managed_device)}, False),
            (rf"/deviceManagement/managedDevices/{guid}/users", {"GET": (DEVICES_READ, self._managed_device_users)},
             False),
            ("/users", {"GET": (USERS_READ, self._list_users)}, False),
            (r"/users/([^/]+)", {"GET": (USERS_READ, self._get_user)}, False),
            (r"/users/([^/]+)/(memberOf|transitiveMemberOf)", {"GET": (GROUPS_READ, self._user_groups)}, False),
            ("/groups", {"GET": (GROUPS_READ, self._list_groups)}, False),
            (rf"/groups/{guid}", {"GET": (GROUPS_READ, self._get_group)}, False),
            (rf"/groups/{guid}/members", {"GET": (GROUPS_READ, self._group_members)}, False),
            (rf"/groups/{guid}/members/\$ref", {"POST": (("GroupMember.ReadWrite.All",), self._add_member)}, False),
            ("/devices", {"GET": (ENTRA_DEVICES_READ, self._list_entra_devices)}, False),
        ]
        self._routes = [(re.compile(p), m, beta) for p, m, beta in table]

    # -------------------------------------------------------------- §2 deviceConfigurations

    def _config(self, ctx: GraphRequest, config_id: str) -> dict[str, Any]:
        config = self.configurations.get(config_id)
        if config is None:
            raise self._not_found(ctx, "deviceConfiguration", config_id)
        return config

    def _list_configs(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        items = self._filtered(ctx, [self._view(ctx, c) for c in self.configurations.values()], ("displayName",))
        return self._page(ctx, items, "deviceManagement/deviceConfigurations")

    def _get_config(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        config = self._config(ctx, match.group(1))
        return json_response(200, apply_select(self._view(ctx, config, "deviceManagement/deviceConfigurations/"
                                                          "$entity"), ctx.query.get("$select")))

    def _validate_config(self, ctx: GraphRequest, data: dict[str, Any]) -> None:
        self._check_properties(ctx, data, CONFIG_WRITABLE, MACOS_CUSTOM)
        self._check_strings(ctx, data, ("displayName", "description", "payloadName", "payloadFileName"))
        self._check_base64(ctx, data, "payload", MAX_PAYLOAD_BYTES)
        name = data.get("payloadFileName")
        if name is not None and not name.lower().endswith((".mobileconfig", ".xml")):
            # §2.1 "*.mobileconfig or *.xml".  CHOICE: enforced.
            raise graph_error(400, "BadRequest", "payloadFileName must end in .mobileconfig or .xml.",
                              client_request_id=ctx.client_request_id)
        if "deploymentChannel" in data and data["deploymentChannel"] not in DEPLOYMENT_CHANNELS:
            raise graph_error(400, "BadRequest", f"Invalid deploymentChannel '{data['deploymentChannel']}'.",
                              client_request_id=ctx.client_request_id)

    def _create_config(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        data = ctx.json_body()
        if data.get("@odata.type") != MACOS_CUSTOM:
            # CHOICE: deviceConfiguration is abstract, so @odata.type is required; the fake knows one type.
            raise graph_error(400, "BadRequest", "@odata.type must be '#microsoft.graph.macOSCustomConfiguration' "
                              "(the only type this fake implements).", client_request_id=ctx.client_request_id)
        self._validate_config(ctx, data)
        missing = [k for k in ("displayName", "payloadName", "payloadFileName", "payload") if not data.get(k)]
        if missing:
            # CHOICE [unverified which are required]: all four, as every documented example carries them.
            raise graph_error(400, "BadRequest", f"Missing required properties: {', '.join(missing)}.",
                              client_request_id=ctx.client_request_id)
        now = self._now_text()
        config = {"@odata.type": MACOS_CUSTOM, "id": new_id(), "lastModifiedDateTime": now,
                  "roleScopeTagIds": data.get("roleScopeTagIds") or ["0"], "supportsScopeTags": True,
                  "createdDateTime": now, "description": data.get("description"),
                  "displayName": data["displayName"], "version": 1, "payloadName": data["payloadName"],
                  "payloadFileName": data["payloadFileName"], "payload": data["payload"]}
        if ctx.version == "beta":
            # CHOICE [unverified]: deviceChannel when not sent (user channel needs user affinity, §2.1).
            config["deploymentChannel"] = data.get("deploymentChannel", "deviceChannel")
        self.configurations[config["id"]] = config
        self.assignments[config["id"]] = []
        return json_response(201, self._view(ctx, config, "deviceManagement/deviceConfigurations/$entity"))

    def _patch_config(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        config = self._config(ctx, match.group(1))
        data = ctx.json_body()
        if data.get("@odata.type") != config["@odata.type"]:
            # CHOICE: the reference's PATCH carries @odata.type (§2.3); required and must match.
            raise graph_error(400, "BadRequest", "@odata.type is required and must match the stored object.",
                              client_request_id=ctx.client_request_id)
        self._validate_config(ctx, data)
        if "deploymentChannel" in data and data["deploymentChannel"] != config.get("deploymentChannel"):
            raise graph_error(400, "BadRequest", "deploymentChannel cannot be changed after creation.",
                              client_request_id=ctx.client_request_id)
        for key, value in data.items():
            if key == "@odata.type" or (key == "payload" and self.patch_ignores_payload):
                continue  # IntuneCD #264: metadata changes, content does not
            config[key] = value
        config["version"] += 1
        config["lastModifiedDateTime"] = self._now_text()
        return self._patched(ctx, config, "deviceManagement/deviceConfigurations")

    def _delete_config(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        self._config(ctx, match.group(1))
        del self.configurations[match.group(1)]
        self.assignments.pop(match.group(1), None)
        return Response(204)

    def _parse_assignments(self, ctx: GraphRequest, entries: Any, owner_id: str) -> list[dict[str, Any]]:
        """§2.4 targets; a group target must name an existing group.  CHOICE [unverified]: unknown groups are
        400 (intunecd-monitor #40 shows assignments silently lost when the group is missing)."""
        if not isinstance(entries, list):
            raise graph_error(400, "BadRequest", "The assignments must be an array.",
                              client_request_id=ctx.client_request_id)
        result = []
        for entry in entries:
            target = entry.get("target") if isinstance(entry, dict) else None
            if not isinstance(target, dict) or target.get("@odata.type") not in TARGET_TYPES:
                raise graph_error(400, "BadRequest", "Each assignment needs a target with a known @odata.type.",
                                  client_request_id=ctx.client_request_id)
            if target["@odata.type"] in (GROUP_TARGET, EXCLUSION_TARGET) and target.get("groupId") not in self.groups:
                raise graph_error(400, "BadRequest", f"Group '{target.get('groupId')}' does not exist.",
                                  client_request_id=ctx.client_request_id)
            filter_type = target.get("deviceAndAppManagementAssignmentFilterType", "none")
            if filter_type not in FILTER_TYPES:
                raise graph_error(400, "BadRequest", f"Invalid filter type '{filter_type}'.",
                                  client_request_id=ctx.client_request_id)
            stored = {"deviceAndAppManagementAssignmentFilterId": None,
                      "deviceAndAppManagementAssignmentFilterType": "none", **target}
            key = target.get("groupId") or target["@odata.type"].rsplit(".", 1)[-1]
            # CHOICE [reported]: Intune assignment ids look like "{policyId}_{groupId}".
            result.append({"id": f"{owner_id}_{key}", "target": stored})
        return result

    def _assign_config(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        config = self._config(ctx, match.group(1))
        entries = self._parse_assignments(ctx, ctx.json_body().get("assignments"), config["id"])
        stored = [{"id": e["id"], "source": "direct", "sourceId": config["id"], "intent": "apply",
                   "target": e["target"]} for e in entries]
        self.assignments[config["id"]] = stored  # §2.4: /assign replaces the whole set
        return json_response(200, {"@odata.context": self._context(ctx, "Collection(microsoft.graph."
                                                                   "deviceConfigurationAssignment)"), "value": stored})

    def _list_config_assignments(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        config = self._config(ctx, match.group(1))
        return self._page(ctx, self.assignments[config["id"]],
                          f"deviceManagement/deviceConfigurations('{config['id']}')/assignments")

    # -------------------------------------------------------------- §3.2 deviceManagementScripts

    def _script(self, ctx: GraphRequest, script_id: str) -> dict[str, Any]:
        script = self.scripts.get(script_id)
        if script is None:
            raise self._not_found(ctx, "deviceManagementScript", script_id)
        return script

    def _validate_script(self, ctx: GraphRequest, data: dict[str, Any]) -> None:
        self._check_properties(ctx, data, SCRIPT_WRITABLE, SCRIPT_TYPE)
        self._check_strings(ctx, data, ("displayName", "description", "fileName"))
        self._check_base64(ctx, data, "scriptContent", MAX_SCRIPT_BYTES)
        if "runAsAccount" in data and data["runAsAccount"] not in ("system", "user"):
            raise graph_error(400, "BadRequest", "runAsAccount must be 'system' or 'user'.",
                              client_request_id=ctx.client_request_id)
        for key in ("enforceSignatureCheck", "runAs32Bit"):
            if key in data and not isinstance(data[key], bool):
                raise graph_error(400, "BadRequest", f"{key} must be a boolean.",
                                  client_request_id=ctx.client_request_id)
        if "fileName" in data and not str(data["fileName"]).lower().endswith(".ps1"):
            raise graph_error(400, "BadRequest", "fileName must end in .ps1.", client_request_id=ctx.client_request_id)

    def _list_scripts(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        # CHOICE [reported by Intune tools]: the list leaves scriptContent null; GET by id carries it.
        items = [{**s, "scriptContent": None} for s in self.scripts.values()]
        return self._page(ctx, self._filtered(ctx, items, ("displayName",)), "deviceManagement/deviceManagementScripts")

    def _get_script(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        return json_response(200, self._view(ctx, self._script(ctx, match.group(1)),
                                             "deviceManagement/deviceManagementScripts/$entity"))

    def _create_script(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        data = ctx.json_body()
        if data.get("@odata.type", SCRIPT_TYPE) != SCRIPT_TYPE:
            raise graph_error(400, "BadRequest", f"@odata.type must be '{SCRIPT_TYPE}'.",
                              client_request_id=ctx.client_request_id)
        self._validate_script(ctx, data)
        missing = [k for k in ("displayName", "scriptContent", "fileName", "runAsAccount") if k not in data]
        if missing:
            raise graph_error(400, "BadRequest", f"Missing required properties: {', '.join(missing)}.",
                              client_request_id=ctx.client_request_id)
        now = self._now_text()
        script = {"@odata.type": SCRIPT_TYPE, "id": new_id(), "displayName": data["displayName"],
                  "description": data.get("description"), "scriptContent": data["scriptContent"],
                  "createdDateTime": now, "lastModifiedDateTime": now, "runAsAccount": data["runAsAccount"],
                  "enforceSignatureCheck": data.get("enforceSignatureCheck", False), "fileName": data["fileName"],
                  "roleScopeTagIds": data.get("roleScopeTagIds") or ["0"], "runAs32Bit": data.get("runAs32Bit", False)}
        self.scripts[script["id"]] = script
        self.assignments[script["id"]] = []
        return json_response(201, self._view(ctx, script, "deviceManagement/deviceManagementScripts/$entity"))

    def _patch_script(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        script = self._script(ctx, match.group(1))
        data = ctx.json_body()
        if data.get("@odata.type", SCRIPT_TYPE) != SCRIPT_TYPE:
            raise graph_error(400, "BadRequest", f"@odata.type must be '{SCRIPT_TYPE}'.",
                              client_request_id=ctx.client_request_id)
        self._validate_script(ctx, data)
        for key, value in data.items():
            if key == "@odata.type" or (key == "scriptContent" and self.patch_ignores_payload):
                continue
            script[key] = value
        script["lastModifiedDateTime"] = self._now_text()
        return self._patched(ctx, script, "deviceManagement/deviceManagementScripts")

    def _delete_script(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        self._script(ctx, match.group(1))
        del self.scripts[match.group(1)]
        self.assignments.pop(match.group(1), None)
        return Response(204)

    def _assign_script(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        script = self._script(ctx, match.group(1))
        data = ctx.json_body()
        if "deviceManagementScriptAssignments" in data:
            entries = data["deviceManagementScriptAssignments"]
        elif "deviceManagementScriptGroupAssignments" in data:  # §3.2: the older body shape
            old = data["deviceManagementScriptGroupAssignments"]
            entries = [{"target": {"@odata.type": GROUP_TARGET, "groupId": (e or {}).get("targetGroupId")}}
                       for e in (old if isinstance(old, list) else [None])]
        else:
            raise graph_error(400, "BadRequest", "deviceManagementScriptAssignments is required.",
                              client_request_id=ctx.client_request_id)
        self.assignments[script["id"]] = self._parse_assignments(ctx, entries, script["id"])
        return Response(204)

    def _list_script_assignments(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        script = self._script(ctx, match.group(1))
        return self._page(ctx, self.assignments[script["id"]],
                          f"deviceManagement/deviceManagementScripts('{script['id']}')/assignments")

    # -------------------------------------------------------------- §5.4 $batch

    def _batch(self, ctx: GraphRequest) -> Response:
        """Inner requests run one by one through the whole pipeline (auth, faults, budget), so each is
        throttled on its own (§5.4).  CHOICE: ``dependsOn`` may only name an earlier request; a failed
        dependency yields 424 without running; responses come back reversed when ``reverse_batch``."""
        requests = ctx.json_body().get("requests")
        if not isinstance(requests, list) or not requests:
            raise graph_error(400, "BadRequest", "The batch needs a non-empty 'requests' array.",
                              client_request_id=ctx.client_request_id)
        if len(requests) > MAX_BATCH:
            raise graph_error(400, "BadRequest", f"The number of batch requests ({len(requests)}) exceeds the "
                              f"limit of {MAX_BATCH}.", client_request_id=ctx.client_request_id)
        ids: list[str] = []
        for item in requests:
            if not (isinstance(item, dict) and isinstance(item.get("id"), str) and isinstance(item.get("method"), str)
                    and isinstance(item.get("url"), str)) or item["id"] in ids:
                raise graph_error(400, "BadRequest", "Each batch request needs a unique 'id', a 'method' and a 'url'.",
                                  client_request_id=ctx.client_request_id)
            for dep in item.get("dependsOn") or []:
                if dep not in ids:
                    raise graph_error(400, "BadRequest", f"dependsOn '{dep}' does not name an earlier request.",
                                      client_request_id=ctx.client_request_id)
            ids.append(item["id"])
        statuses: dict[str, int] = {}
        responses = []
        for item in requests:
            result: dict[str, Any] = {"id": item["id"]}
            inner_headers = {str(k): str(v) for k, v in (item.get("headers") or {}).items()}
            failed = [d for d in item.get("dependsOn") or [] if not 200 <= statuses[d] < 300]
            url = item["url"]
            if failed:
                response = graph_error(424, "FailedDependency", f"Depends on failed request(s): {', '.join(failed)}.")\
                    .response
            elif "body" in item and not any(k.lower() == "content-type" for k in inner_headers):
                # §5.4: headers.Content-Type is required when body is present.
                response = graph_error(400, "BadRequest", "Content-Type header must be specified when a body is "
                                       "present.").response
            elif url.startswith(("http:", "https:")) or "$batch" in url:
                response = graph_error(400, "BadRequest", "Batch request urls must be relative and not $batch.")\
                    .response
            else:
                body = item.get("body")
                raw = (body if isinstance(body, str) else json.dumps(body)).encode() if "body" in item else b""
                headers = {**inner_headers, "Authorization": ctx.headers.get("Authorization") or ""}
                response = self._process(item["method"].upper(), f"/{ctx.version}/{url.lstrip('/')}",
                                         _CaseInsensitive(headers), raw, batch_id=item["id"])
            statuses[item["id"]] = response.status
            result["status"] = response.status
            result["headers"] = {k: v for k, v in response.headers if k.lower() in ("retry-after", "location")}
            if response.content_type:
                result["headers"]["Content-Type"] = response.content_type
            if response.body:
                result["body"] = response.json()
            responses.append(result)
        if self.reverse_batch:
            responses.reverse()
        return json_response(200, {"responses": responses})


class _CaseInsensitive(dict[str, str]):
    """Headers of an inner ``$batch`` request, looked up case-insensitively like ``http.client``'s."""

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        for k, v in self.items():
            if k.lower() == key.lower():
                return v
        return default
