"""A fake Jamf Pro server for tests: a real HTTP/1.1 server on 127.0.0.1.

Written from the contract in ``shared/reference/jamf-pro-api.md`` (the "reference"),
not from any client's assumptions.  Section numbers in comments (``§1.1`` ...) point
into that file.  Where the reference is silent or marks a fact ``[unverified]`` the
choice made here is flagged with ``CHOICE:``.

Usage::

    with FakeJamfServer(computers=[Computer(117, "mac-1", "C02XXXXXXHD1")]) as jamf:
        jamf.url                     # "http://127.0.0.1:<port>"
        ...                          # drive it over HTTP
        jamf.write_count             # POST/PUT/DELETE to osxconfigurationprofiles
        jamf.peak_connections        # §8: Jamf's guidance is <= 5 concurrent connections

What is implemented (see the contract tests in ``test_jamf_server.py``):

* §1.1 OAuth client credentials on ``/api/oauth/token`` and ``/api/v1/oauth/token``.
* §1.2 Basic -> bearer token, keep-alive, invalidate-token, ``GET /api/v1/auth``.
* §1, §9 every other path needs a live Bearer token, else 401.
* §2 Classic ``osxconfigurationprofiles`` list/get/subset/create/update/delete (XML bodies).
* §3 scope (computers, computer groups, exclusions, limitations).
* §4.1 computer lookup by serial (Classic and Jamf Pro API with an RSQL ``filter``).
* §4.2 static computer groups (Jamf Pro API v2/v3) - listed in the §9 contract.
* §5 optional per-device payload-variable substitution in the simulated device view.
* §6.1 create rewrites the top-level PayloadUUID/PayloadIdentifier; read-back re-indents
  and injects default keys; update stores what is sent and flags identifier changes.
* §6.1-6.2 optional metadata normalising (``normalise_metadata``): on every stored payload the
  top-level PayloadDisplayName becomes the Jamf name, PayloadDescription the Jamf description,
  PayloadOrganization the server's own, and PayloadEnabled/PayloadRemovalDisallowed are added,
  as the tools around Jamf report (they mask exactly these keys in their diffs).
* §6.3 ``redeploy_on_update`` (``All`` / ``Newly Assigned``) drives a simulated
  per-device install state, so tests can see stale content and ghost profiles.
* §7 HTML status pages (Classic), JSON errors (Jamf Pro API), RFC 6749 errors (OAuth).
* §8 no throttling at all (no 429, no rate-limit headers); peak concurrency recorded;
  Jamf Cloud cluster lag (404 right after create) and ``APBALANCEID`` sticky cookie.
* Faults: one-off status codes (with headers such as ``Retry-After`` or a body, as a load
  balancer, proxy or sign-in portal in front of Jamf would send), truncated bodies, slow
  responses, forced token expiry, cluster lag.
* HTTPS with a given certificate and key (``tls=``), so clients check certificates and go
  through real proxies with ``CONNECT``.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import fnmatch
import hmac
import html
import json
import plistlib
import queue
import re
import secrets
import socket
import socketserver
import ssl
import threading
import time
import traceback
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_PASSWORD",
    "DEFAULT_USERNAME",
    "Computer",
    "Deployment",
    "FakeJamfServer",
    "OAuthClient",
    "ProfileWrite",
    "RequestRecord",
    "StoredProfile",
    "html_error_page",
]

DEFAULT_CLIENT_ID = "mdmgen-test-client"
DEFAULT_CLIENT_SECRET = "mdmgen-test-secret"
DEFAULT_USERNAME = "mdmgen-admin"
DEFAULT_PASSWORD = "mdmgen-password"

CLASSIC_PREFIX = "/JSSResource/"
API_PREFIX = "/api/"
PROFILES_PATH = "/JSSResource/osxconfigurationprofiles"
OAUTH_TOKEN_PATHS = ("/api/oauth/token", "/api/v1/oauth/token")  # §1.1: both accepted

XML_DECL = '<?xml version="1.0" encoding="UTF-8"?>'
# CHOICE: the reference does not give response Content-Types.  Classic XML is sent
# as text/xml (what Jamf's Tomcat/Restlet stack sends), JSON as application/json.
XML_CONTENT_TYPE = "text/xml;charset=UTF-8"
JSON_CONTENT_TYPE = "application/json;charset=UTF-8"
HTML_CONTENT_TYPE = "text/html;charset=UTF-8"

# §9: "Token lifetime configurable"; §1.1: Jamf docs show expires_in 599.
DEFAULT_OAUTH_LIFETIME = 599.0
# §1.2: default user-token lifetime is 30 min [reported].
DEFAULT_USER_TOKEN_LIFETIME = 1800.0

# §2.1 and §9: write-time profile fields.
DISTRIBUTION_METHODS = ("Install Automatically", "Make Available in Self Service")
REDEPLOY_VALUES = ("Newly Assigned", "All")
LEVELS = {"computer": "computer", "system": "computer", "user": "user"}

# §7.1 messages.  Only "Duplicate name" is documented verbatim; the others are
# CHOICE (the reference says 409 covers all semantic write failures, not the text).
MSG_DUPLICATE_NAME = "Error: Duplicate name"
MSG_BAD_PAYLOAD = "Error: Problem with payload"
MSG_NO_NAME = "Error: Problem with name"
MSG_BAD_CATEGORY = "Error: Problem with category"
MSG_BAD_SITE = "Error: Problem with site"
MSG_BAD_COMPUTER = "Error: Problem with computer in scope"
MSG_BAD_GROUP = "Error: Problem with computer group in scope"
MSG_BAD_FIELD = "Error: Problem with {field}"
MSG_CREATE_ID = "Error: Object id must be 0 when creating"

# §7.1: the status page is Restlet's.  The first <p> is the reason phrase; the second
# is "Error: ..." for Jamf's semantic errors and otherwise Restlet's default
# description (the reference quotes the 404 one).  The RFC 2616 anchors follow the
# 409 example (sec10.4.10).
_STATUS_PAGES: dict[int, tuple[str, str, str]] = {
    400: ("Bad Request",
          "The request could not be understood by the server due to malformed syntax",
          "10.4.1"),
    401: ("Unauthorized", "The request requires user authentication", "10.4.2"),
    403: ("Forbidden",
          "The server understood the request, but is refusing to fulfill it", "10.4.4"),
    404: ("Not Found", "The server has not found anything matching the request URI",
          "10.4.5"),
    405: ("Method Not Allowed",
          "The method specified in the request is not allowed for the resource "
          "identified by the request URI", "10.4.6"),
    409: ("Conflict",
          "The request could not be completed due to a conflict with the current "
          "state of the resource", "10.4.10"),
    415: ("Unsupported Media Type",
          "The server is refusing to service the request because the entity of the "
          "request is in a format not supported by the requested resource for the "
          "requested method", "10.4.16"),
    500: ("Internal Server Error",
          "The server encountered an unexpected condition which prevented it from "
          "fulfilling the request", "10.5.1"),
    502: ("Bad Gateway",
          "The server, while acting as a gateway or proxy, received an invalid "
          "response from the upstream server", "10.5.3"),
    503: ("Service Unavailable",
          "The server is currently unable to handle the request due to a temporary "
          "overloading or maintenance of the server", "10.5.4"),
    504: ("Gateway Timeout",
          "The server, while acting as a gateway or proxy, did not receive a timely "
          "response from the upstream server", "10.5.5"),
}


def html_error_page(status: int, message: str | None = None) -> str:
    """Return the Classic API status page exactly in the §7.1 layout."""
    reason, description, section = _STATUS_PAGES.get(
        status, (f"Status {status}", f"Status {status}", "10")
    )
    text = html.escape(message if message is not None else description, quote=False)
    return (
        "<html>\n"
        "<head><title>Status page</title></head>\n"
        '<body style="font-family: sans-serif;">\n'
        '<p style="font-size: 1.2em;font-weight: bold;margin: 1em 0px;">'
        f"{reason}</p>\n"
        f"<p>{text}</p>\n"
        "<p>You can get technical details "
        '<a href="http://www.w3.org/Protocols/rfc2616/rfc2616-sec10.html'
        f'#sec{section}">here</a>.<br>\n'
        'Please continue your visit at our <a href="/">home page</a>.\n'
        "</p>\n"
        "</body>\n"
        "</html>\n"
    )


# --------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------


@dataclass
class Computer:
    """An enrolled Mac.  Classic ids are integers; the Jamf Pro API shows them as strings."""

    id: int
    name: str
    serial: str
    udid: str = ""
    username: str = ""
    realname: str = ""
    email: str = ""

    def __post_init__(self) -> None:
        if not self.udid:
            self.udid = str(uuid.uuid5(uuid.NAMESPACE_OID, f"fake-jamf:{self.serial}")).upper()


@dataclass
class OAuthClient:
    """An API client (§1.1).  ``roles`` are the ``api-role:<id>`` scopes it may request."""

    client_id: str
    secret: str
    roles: tuple[str, ...] = ("api-role:1",)
    token_lifetime: float | None = None  # None: use the server's oauth_token_lifetime


@dataclass
class RequestRecord:
    seq: int
    method: str
    path: str  # raw (still percent-encoded) path, without the query
    query: str
    headers: dict[str, str]
    body: bytes
    started: float
    status: int = 0
    duration: float = 0.0  # informational only: tests assert on ``delayed``, never on a wall-clock time
    delayed: float = 0.0  # the delay slow_responses() applied before answering, as asked (not measured)
    fault: str | None = None  # "status-500", "cluster-lag" ... when a fault fired


@dataclass
class ProfileWrite:
    """One successful create/update/delete of a profile (test-visible write log, §9)."""

    op: str  # "create" | "update" | "delete"
    profile_id: int
    name: str
    request_seq: int
    redeploy_on_update: str | None = None  # value sent on this write; None if omitted
    identifier_changed: bool = False  # top-level PayloadIdentifier changed (ghost, §6.1)
    uuid_changed: bool = False  # top-level PayloadUUID changed
    payload_changed: bool = False
    scope_changed: bool = False
    sent_payload_identifier: str | None = None
    stored_payload_identifier: str | None = None


@dataclass
class Deployment:
    """A simulated MDM command sent to a device as a consequence of a write (§6.3)."""

    profile_id: int
    computer_id: int
    action: str  # "install" | "remove"
    payload_identifier: str
    request_seq: int


@dataclass
class StoredProfile:
    id: int
    name: str
    description: str
    site_id: int
    site_name: str
    category_id: int
    category_name: str
    distribution_method: str
    user_removable: bool
    level: str
    uuid: str
    payloads: str
    scope: dict[str, Any]
    self_service: ET.Element | None = None

    @property
    def plist(self) -> dict[str, Any]:
        return plistlib.loads(self.payloads.encode("utf-8"))

    @property
    def payload_identifier(self) -> str:
        return str(self.plist.get("PayloadIdentifier", ""))

    @property
    def payload_uuid(self) -> str:
        return str(self.plist.get("PayloadUUID", ""))


# --------------------------------------------------------------------------------------
# Internal types
# --------------------------------------------------------------------------------------


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    truncate: bool = False  # announce the full Content-Length, send half, close the connection


@dataclass
class _Token:
    value: str
    kind: str  # "oauth" | "user"
    subject: str
    expires_at: float  # on the server's (offsettable) monotonic clock
    scope: str = ""


@dataclass
class _Fault:
    status: int
    remaining: int
    method: str | None
    path: str | None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    content_type: str | None = None
    truncate: bool = False


@dataclass
class _Delay:
    seconds: float
    remaining: int | None
    method: str | None
    path: str | None


@dataclass
class _StaticGroup:
    id: int
    name: str
    description: str
    site_id: str
    members: list[int]


@dataclass
class _Installed:
    profile_id: int
    payload: str


class _HttpError(Exception):
    def __init__(self, response: _Response) -> None:
        super().__init__(response.status)
        self.response = response


def _xml_response(status: int, root: ET.Element) -> _Response:
    text = XML_DECL + ET.tostring(root, encoding="unicode")
    return _Response(status, text.encode("utf-8"), XML_CONTENT_TYPE)


def _json_response(status: int, obj: Any) -> _Response:
    return _Response(status, json.dumps(obj).encode("utf-8"), JSON_CONTENT_TYPE)


def _html_response(status: int, message: str | None = None) -> _Response:
    return _Response(status, html_error_page(status, message).encode("utf-8"), HTML_CONTENT_TYPE)


def _classic_error(status: int, message: str | None = None) -> _HttpError:
    return _HttpError(_html_response(status, message))


def _api_error_response(
    status: int, code: str, description: str, field_name: str | None = None
) -> _Response:
    # §7.2 shape.
    error = {"code": code, "field": field_name, "description": description, "id": "0"}
    return _json_response(status, {"httpStatus": status, "errors": [error]})


def _api_error(
    status: int, code: str, description: str, field_name: str | None = None
) -> _HttpError:
    return _HttpError(_api_error_response(status, code, description, field_name))


def _oauth_error(status: int, error: str, description: str) -> _HttpError:
    # §1.1: RFC 6749 §5.2 shape, not Jamf's usual error JSON.
    body = {
        "error": error,
        "error_description": description,
        "error_uri": "https://datatracker.ietf.org/doc/html/rfc6749#section-5.2",
    }
    resp = _json_response(status, body)
    resp.headers.append(("Cache-Control", "no-store"))
    return _HttpError(resp)


def _sub(parent: ET.Element, tag: str, text: Any = None) -> ET.Element:
    child = ET.SubElement(parent, tag)
    if text is not None:
        child.text = ("true" if text else "false") if isinstance(text, bool) else str(text)
    return child


def _child_text(elem: ET.Element, tag: str) -> str | None:
    child = elem.find(tag)
    if child is None:
        return None
    return (child.text or "").strip()


def _scalar(tag: str, text: str | None) -> Any:
    value = (text or "").strip()
    if (tag == "id" or tag.endswith("_id")) and re.fullmatch(r"-?\d+", value):
        return int(value)
    return value


def _elem_to_json(elem: ET.Element) -> Any:
    """Generic Classic XML -> JSON conversion (used for the opaque self_service block)."""
    children = list(elem)
    if not children:
        value = _scalar(elem.tag, elem.text)
        if value in ("true", "false"):
            return value == "true"
        return value
    tags = [c.tag for c in children]
    if len(tags) > 1 and len(set(tags)) == 1:
        return [_elem_to_json(c) for c in children]
    return {c.tag: _elem_to_json(c) for c in children}


def _wants_json(headers: Any) -> bool:
    # §2.1, §9: JSON when Accept asks for application/json, else XML.
    accept = (headers.get("Accept") or "").lower()
    j = accept.find("application/json")
    x = accept.find("xml")
    return j >= 0 and (x < 0 or j < x)


def _media_type(headers: Any) -> str:
    return (headers.get("Content-Type") or "").split(";")[0].strip().lower()


# --------------------------------------------------------------------------------------
# Scope (§3)
# --------------------------------------------------------------------------------------

_SCOPE_BOOLS = ("all_computers", "all_jss_users")
_SCOPE_LISTS = (
    "computers", "computer_groups", "buildings", "departments", "jss_users", "jss_user_groups",
)
_LIMITATION_LISTS = ("users", "user_groups", "network_segments", "ibeacons")
_EXCLUSION_LISTS = (
    "computers", "computer_groups", "buildings", "departments", "users", "user_groups",
    "network_segments", "ibeacons", "jss_users", "jss_user_groups",
)


def _empty_scope() -> dict[str, Any]:
    return {
        "all_computers": False,
        "all_jss_users": False,
        **{name: [] for name in _SCOPE_LISTS},
        "limitations": {name: [] for name in _LIMITATION_LISTS},
        "exclusions": {name: [] for name in _EXCLUSION_LISTS},
    }


def _parse_entries(container: ET.Element) -> list[dict[str, Any]]:
    entries = []
    for child in container:
        if child.tag == "size":
            continue
        entry: dict[str, Any] = {"_tag": child.tag}
        for leaf in child:
            entry[leaf.tag] = _scalar(leaf.tag, leaf.text)
        entries.append(entry)
    return entries


def _merge_scope(current: dict[str, Any], elem: ET.Element) -> dict[str, Any]:
    """Apply a written <scope>: elements sent replace, elements omitted stay (§2.3)."""
    new = copy.deepcopy(current)
    for child in elem:
        if child.tag in _SCOPE_BOOLS:
            new[child.tag] = (child.text or "").strip().lower() == "true"
        elif child.tag in _SCOPE_LISTS:
            new[child.tag] = _parse_entries(child)
        elif child.tag in ("limitations", "exclusions"):
            allowed = _LIMITATION_LISTS if child.tag == "limitations" else _EXCLUSION_LISTS
            for sub in child:
                if sub.tag in allowed:
                    new[child.tag][sub.tag] = _parse_entries(sub)
        # CHOICE: unknown scope elements are ignored rather than rejected.
    return new


def _entries_to_xml(parent: ET.Element, tag: str, entries: list[dict[str, Any]]) -> None:
    container = _sub(parent, tag)
    for entry in entries:
        item = _sub(container, entry.get("_tag", tag.rstrip("s")))
        for key, value in entry.items():
            if key != "_tag":
                _sub(item, key, value)


def _entries_to_json(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k != "_tag"} for e in entries]


def _scope_to_xml(parent: ET.Element, scope: dict[str, Any]) -> None:
    elem = _sub(parent, "scope")
    for name in _SCOPE_BOOLS:
        _sub(elem, name, scope[name])
    for name in _SCOPE_LISTS:
        _entries_to_xml(elem, name, scope[name])
    for section, names in (("limitations", _LIMITATION_LISTS), ("exclusions", _EXCLUSION_LISTS)):
        sub = _sub(elem, section)
        for name in names:
            _entries_to_xml(sub, name, scope[section][name])


def _scope_to_json(scope: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {name: scope[name] for name in _SCOPE_BOOLS}
    for name in _SCOPE_LISTS:
        out[name] = _entries_to_json(scope[name])
    for section, names in (("limitations", _LIMITATION_LISTS), ("exclusions", _EXCLUSION_LISTS)):
        out[section] = {name: _entries_to_json(scope[section][name]) for name in names}
    return out


# --------------------------------------------------------------------------------------
# RSQL (§4.1) - a small recursive-descent evaluator
# --------------------------------------------------------------------------------------

_RSQL_OPS = ("=like=", "=in=", "=out=", "=lt=", "=le=", "=gt=", "=ge=",
             "==", "!=", "<=", ">=", "<", ">")


class _RsqlError(ValueError):
    pass


class _Rsql:
    """Supports ``==`` (``*`` wildcards), ``!=``, ``<``, ``<=``, ``>``, ``>=``, ``=lt=`` ...,
    ``=in=``/``=out=``, ``=like=``, ``;`` (AND), ``,`` (OR) and parentheses.
    Comparisons are case-insensitive (CHOICE: Jamf's MySQL collation is)."""

    def __init__(self, text: str, fields: dict[str, Callable[[Any], str]]) -> None:
        self.text = text
        self.fields = fields
        self.pos = 0
        self.tree = self._or()
        if self.pos != len(self.text):
            raise _RsqlError(f"unexpected input at {self.pos}: {self.text[self.pos:]!r}")

    def _peek(self, char: str) -> bool:
        return self.pos < len(self.text) and self.text[self.pos] == char

    def _or(self) -> Any:
        nodes = [self._and()]
        while self._peek(","):
            self.pos += 1
            nodes.append(self._and())
        return ("or", nodes)

    def _and(self) -> Any:
        nodes = [self._term()]
        while self._peek(";"):
            self.pos += 1
            nodes.append(self._term())
        return ("and", nodes)

    def _term(self) -> Any:
        if self._peek("("):
            self.pos += 1
            node = self._or()
            if not self._peek(")"):
                raise _RsqlError("missing ')'")
            self.pos += 1
            return node
        match = re.compile(r"[A-Za-z0-9_.]+").match(self.text, self.pos)
        if not match:
            raise _RsqlError(f"selector expected at {self.pos}")
        selector = match.group(0)
        if selector not in self.fields:
            raise _RsqlError(f"unsupported filter field {selector!r}")
        self.pos = match.end()
        for op in _RSQL_OPS:
            if self.text.startswith(op, self.pos):
                self.pos += len(op)
                break
        else:
            raise _RsqlError(f"operator expected at {self.pos}")
        if op in ("=in=", "=out="):
            if not self._peek("("):
                raise _RsqlError("'(' expected")
            self.pos += 1
            values = [self._value()]
            while self._peek(","):
                self.pos += 1
                values.append(self._value())
            if not self._peek(")"):
                raise _RsqlError("')' expected")
            self.pos += 1
            return ("cmp", selector, op, values)
        return ("cmp", selector, op, [self._value()])

    def _value(self) -> str:
        if self.pos < len(self.text) and self.text[self.pos] in "\"'":
            quote = self.text[self.pos]
            end = self.text.find(quote, self.pos + 1)
            if end < 0:
                raise _RsqlError("unterminated quote")
            value = self.text[self.pos + 1:end]
            self.pos = end + 1
            return value
        match = re.compile(r"[^;,()\"']+").match(self.text, self.pos)
        if not match:
            raise _RsqlError(f"value expected at {self.pos}")
        self.pos = match.end()
        return match.group(0)

    def matches(self, obj: Any) -> bool:
        return self._eval(self.tree, obj)

    def _eval(self, node: Any, obj: Any) -> bool:
        kind = node[0]
        if kind == "or":
            return any(self._eval(n, obj) for n in node[1])
        if kind == "and":
            return all(self._eval(n, obj) for n in node[1])
        _, selector, op, values = node
        actual = str(self.fields[selector](obj)).lower()
        wanted = [v.lower() for v in values]
        if op == "==":
            return fnmatch.fnmatchcase(actual, wanted[0])
        if op == "!=":
            return not fnmatch.fnmatchcase(actual, wanted[0])
        if op == "=like=":
            pattern = wanted[0] if "*" in wanted[0] else f"*{wanted[0]}*"
            return fnmatch.fnmatchcase(actual, pattern)
        if op == "=in=":
            return actual in wanted
        if op == "=out=":
            return actual not in wanted
        left: Any = actual
        right: Any = wanted[0]
        if re.fullmatch(r"-?\d+", actual) and re.fullmatch(r"-?\d+", right):
            left, right = int(actual), int(right)
        op = {"=lt=": "<", "=le=": "<=", "=gt=": ">", "=ge=": ">="}.get(op, op)
        return {"<": left < right, "<=": left <= right,
                ">": left > right, ">=": left >= right}[op]


# §4.1: fields specs/ComputersInventoryV3.yaml allows (a subset).  Others -> 400.
_INVENTORY_FIELDS: dict[str, Callable[[Computer], str]] = {
    "id": lambda c: str(c.id),
    "udid": lambda c: c.udid,
    "general.name": lambda c: c.name,
    "hardware.serialNumber": lambda c: c.serial,
    "userAndLocation.email": lambda c: c.email,
    "userAndLocation.username": lambda c: c.username,
    "userAndLocation.realname": lambda c: c.realname,
}

_INVENTORY_SECTIONS = (
    "GENERAL", "DISK_ENCRYPTION", "PURCHASING", "APPLICATIONS", "STORAGE", "USER_AND_LOCATION",
    "CONFIGURATION_PROFILES", "PRINTERS", "SERVICES", "HARDWARE", "LOCAL_USER_ACCOUNTS",
    "CERTIFICATES", "ATTACHMENTS", "PLUGINS", "PACKAGE_RECEIPTS", "FONTS", "SECURITY",
    "OPERATING_SYSTEM", "LICENSED_SOFTWARE", "IBEACONS", "SOFTWARE_UPDATES",
    "EXTENSION_ATTRIBUTES", "CONTENT_CACHING", "GROUP_MEMBERSHIPS",
)


def _camel(section: str) -> str:
    head, *rest = section.lower().split("_")
    return head + "".join(part.capitalize() for part in rest)


# §5 payload variables substituted per device (only the ones the fake has data for).
_VARIABLES: dict[str, Callable[[Computer, StoredProfile], str]] = {
    "$SERIALNUMBER": lambda c, p: c.serial,
    "$COMPUTERNAME": lambda c, p: c.name,
    "$UDID": lambda c, p: c.udid,
    "$JSSID": lambda c, p: str(c.id),
    "$PROFILEJSSID": lambda c, p: str(p.id),
    "$USERNAME": lambda c, p: c.username,
    "$FULLNAME": lambda c, p: c.realname,
    "$REALNAME": lambda c, p: c.realname,
    "$EMAIL": lambda c, p: c.email,
    "$SITENAME": lambda c, p: p.site_name,
    "$SITEID": lambda c, p: str(p.site_id),
}


# --------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection counts mean something
    server_version = "FakeJamfPro/1.0"
    sys_version = ""
    timeout = 30  # seconds an idle keep-alive connection may hold a worker
    # Headers and body go out in two writes; with Nagle on, the body waited for the client's
    # delayed ACK (~40 ms per response), a delay of this fake that real Jamf servers do not have.
    disable_nagle_algorithm = True

    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        try:
            body = self._read_body()
        except ValueError:
            self.send_error(400)
            return
        response = self.server.fake._process(self.command, self.path, self.headers, body)
        self.send_response(response.status)
        if response.content_type:
            self.send_header("Content-Type", response.content_type)
        for name, value in response.headers:
            self.send_header(name, value)
        has_body = response.status not in (204, 304) and self.command != "HEAD"
        if response.status != 204:
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if has_body and response.truncate:
            self.wfile.write(response.body[: len(response.body) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif has_body:
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


class _HTTPServer(HTTPServer):
    """HTTPServer with a fixed pool of daemon worker threads and tracked connections.

    Every connection is accepted at once (so ``peak_connections`` counts what a client
    really has open) and queued for the pool; at most ``max_workers`` are served at once.
    """

    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, fake: FakeJamfServer, max_workers: int) -> None:
        self.fake = fake
        self._closing = threading.Event()
        self._conn_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._queue: queue.SimpleQueue[tuple[Any, Any] | None] = queue.SimpleQueue()
        super().__init__(("127.0.0.1", 0), _Handler)
        self._workers = [
            threading.Thread(target=self._work, daemon=True, name=f"fake-jamf-worker-{i}")
            for i in range(max_workers)
        ]
        for worker in self._workers:
            worker.start()

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), which may do a slow reverse lookup.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self._connections.add(request)
        self.fake._connection_opened()
        self._queue.put((request, client_address))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            request, client_address = item
            try:
                if not self._closing.is_set():
                    request = self._secure(request)
                    self.finish_request(request, client_address)
            except Exception:
                pass  # broken pipes, resets and failed TLS handshakes, mostly at shutdown
            finally:
                self.shutdown_request(request)

    def _secure(self, request: socket.socket) -> socket.socket:
        """With TLS, the accepted socket wrapped and its handshake done, here in the worker so
        a client that never shakes hands cannot block the accept loop."""
        context = self.fake.tls_context
        if context is None:
            return request
        request.settimeout(10)
        secured = context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        with self._conn_lock:  # the wrapped socket is now the one to track and shut down
            self._connections.discard(request)
            self._connections.add(secured)
        try:
            secured.do_handshake()
        except BaseException:
            self.shutdown_request(secured)  # counted as closed; the caller's socket is detached
            raise
        return secured

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            known = request in self._connections
            self._connections.discard(request)
        if known:
            self.fake._connection_closed()
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass

    def close(self, timeout: float) -> None:
        """After ``shutdown()``: drop every connection, stop the workers, close."""
        self._closing.set()
        with self._conn_lock:
            sockets = list(self._connections)
        for sock in sockets:  # unblocks workers idling on keep-alive sockets
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for _ in self._workers:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        with self._conn_lock:
            leftover = list(self._connections)
        for sock in leftover:
            self.shutdown_request(sock)
        self.server_close()


# --------------------------------------------------------------------------------------
# The fake server
# --------------------------------------------------------------------------------------

Route = Callable[[re.Match[str], "_Context"], _Response]


@dataclass
class _Context:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Any
    body: bytes
    token: _Token | None
    record: RequestRecord


class FakeJamfServer:
    """Fake Jamf Pro.  Start with ``start()``/``stop()`` or use as a context manager.

    Parameters
    ----------
    computers:
        Enrolled computers (id, name, serial, ...).
    oauth_clients:
        API clients; default: one client ``DEFAULT_CLIENT_ID``/``DEFAULT_CLIENT_SECRET``.
    users:
        ``{username: password}`` for ``POST /api/v1/auth/token`` (Basic).
    oauth_token_lifetime / user_token_lifetime:
        Seconds.  Use e.g. 2 to exercise refresh, or :meth:`advance_time`.
    invalid_client_status:
        §1.1 - Jamf's spec says 400 ``invalid_client``; 401 is also seen [reported].
    categories / sites:
        ``{name: id}`` / ``{id: name}`` that already exist (§2.2: a category must exist).
    inventory_versions:
        Versions of ``computers-inventory`` served (§4.1 says keep the version
        configurable; drop "v1" to simulate its removal).
    rewrite_identifier_on_create / rewrite_nested_uuids_on_create:
        §6.1 - Jamf rewrites the top-level PayloadUUID and *usually* PayloadIdentifier;
        nested ones are left as sent per the terraform provider, while another provider
        treats them as server-controlled.  Defaults follow the §9 contract.
    inject_default_keys:
        §6.1 - read-back carries keys such as PayloadEnabled/PayloadRemovalDisallowed.
    normalise_metadata:
        §6.1-6.2 [reported] - store every payload with the top-level PayloadDisplayName set to
        the Jamf name, PayloadDescription to the Jamf description, PayloadOrganization to
        ``organization``, and PayloadEnabled/PayloadRemovalDisallowed added.
    store_payload:
        A function applied to every payload before it is stored (after any normalising), to
        simulate a server that stores the *settings* differently from what was sent.
    tls:
        ``(certificate file, key file)``: serve HTTPS with them instead of plain HTTP.
    max_workers:
        Bound on concurrent handler threads.
    """

    def __init__(
        self,
        computers: list[Computer] | None = None,
        *,
        oauth_clients: list[OAuthClient] | None = None,
        users: dict[str, str] | None = None,
        oauth_token_lifetime: float = DEFAULT_OAUTH_LIFETIME,
        user_token_lifetime: float = DEFAULT_USER_TOKEN_LIFETIME,
        invalid_client_status: int = 400,
        categories: dict[str, int] | None = None,
        sites: dict[int, str] | None = None,
        inventory_versions: tuple[str, ...] = ("v1", "v2", "v3"),
        rewrite_identifier_on_create: bool = True,
        rewrite_nested_uuids_on_create: bool = False,
        inject_default_keys: bool = True,
        normalise_metadata: bool = False,
        organization: str = "Fake Jamf Org",
        store_payload: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        tls: tuple[Any, Any] | None = None,
        max_workers: int = 32,
    ) -> None:
        self.computers: dict[int, Computer] = {c.id: c for c in (computers or [])}
        clients = oauth_clients or [OAuthClient(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)]
        self.oauth_clients = {c.client_id: c for c in clients}
        self.users = dict(users) if users is not None else {DEFAULT_USERNAME: DEFAULT_PASSWORD}
        self.oauth_token_lifetime = oauth_token_lifetime
        self.user_token_lifetime = user_token_lifetime
        self.invalid_client_status = invalid_client_status
        self.categories = dict(categories) if categories is not None else {"mdmgen": 1}
        self.sites = dict(sites or {})
        self.inventory_versions = tuple(inventory_versions)
        self.rewrite_identifier_on_create = rewrite_identifier_on_create
        self.rewrite_nested_uuids_on_create = rewrite_nested_uuids_on_create
        self.inject_default_keys = inject_default_keys
        self.normalise_metadata = normalise_metadata
        self.organization = organization
        self.store_payload = store_payload
        self.tls_context: ssl.SSLContext | None = None
        if tls is not None:
            self.tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls_context.load_cert_chain(str(tls[0]), str(tls[1]))
        self.max_workers = max_workers

        self._lock = threading.RLock()
        self._stop_event = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._clock_offset = 0.0
        self._node_id = f"aws.fake-node-{secrets.token_hex(2)}"

        self._tokens: dict[str, _Token] = {}
        self._profiles: dict[int, StoredProfile] = {}
        self._next_profile_id = 1
        self._groups: dict[int, _StaticGroup] = {}
        self._next_group_id = 1
        self._devices: dict[int, dict[str, _Installed]] = {}
        self._lagging: dict[int, int] = {}  # profile id -> reads that still 404

        self._faults: list[_Fault] = []
        self._delays: list[_Delay] = []
        self._cluster_lag_reads = 0
        self._cluster_lag_honours_cookie = False

        self._seq = 0
        self._records: list[RequestRecord] = []
        self._writes: list[ProfileWrite] = []
        self._deployments: list[Deployment] = []
        self.internal_errors: list[str] = []  # tracebacks of bugs in the fake itself
        self._open_connections = 0
        self._peak_connections = 0
        self._in_flight = 0
        self._peak_in_flight = 0

        self._routes: list[tuple[re.Pattern[str], dict[str, Route]]] = []
        self._build_routes()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeJamfServer:
        if self._httpd is not None:
            return self
        self._stop_event.clear()
        self._httpd = _HTTPServer(self, self.max_workers)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
            daemon=True, name="fake-jamf-server",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stop_event.set()  # wakes slow-response sleeps
        httpd.shutdown()  # stops accepting; waits for serve_forever to return
        httpd.close(timeout=5.0)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def __enter__(self) -> FakeJamfServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("FakeJamfServer is not running")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_context else 'http'}://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ setup helpers

    def add_computer(self, computer: Computer) -> Computer:
        with self._lock:
            self.computers[computer.id] = computer
        return computer

    def add_static_group(
        self, name: str, member_ids: list[int], group_id: int | None = None
    ) -> int:
        with self._lock:
            gid = group_id if group_id is not None else self._next_group_id
            self._next_group_id = max(self._next_group_id, gid + 1)
            self._groups[gid] = _StaticGroup(gid, name, "", "-1", list(member_ids))
            return gid

    def seed_profile(
        self,
        name: str,
        payload: str,
        *,
        computer_ids: tuple[int, ...] = (),
        description: str = "",
        category: str | None = None,
    ) -> int:
        """Put a profile on the server as if it had been there before the test.

        The payload is stored as given (no identifier rewrite) and deployed to its scope.
        """
        with self._lock:
            plist = self._parse_payload(payload)
            scope = _empty_scope()
            scope["computers"] = [{"_tag": "computer", "id": cid} for cid in computer_ids]
            scope = self._resolve_scope(scope)
            cat_id, cat_name = (-1, "No category assigned")
            if category is not None:
                cat_id, cat_name = self.categories[category], category
            profile = StoredProfile(
                id=self._next_profile_id, name=name, description=description,
                site_id=-1, site_name="None", category_id=cat_id, category_name=cat_name,
                distribution_method="Install Automatically", user_removable=False,
                level="computer", uuid=str(plist.get("PayloadUUID", "")),
                payloads=self._render_payload(plist), scope=scope,
            )
            self._next_profile_id += 1
            self._profiles[profile.id] = profile
            self._deploy(profile, self._targets(scope), 0)
            return profile.id

    # ------------------------------------------------------------------ faults

    def fail_next(
        self, n: int = 1, status: int = 500, *, method: str | None = None,
        path: str | None = None, headers: tuple[tuple[str, str], ...] = (),
        body: bytes | None = None, content_type: str | None = None, truncate: bool = False,
    ) -> None:
        """The next ``n`` matching requests get ``status`` (HTML on Classic, JSON on /api).

        ``path`` is an fnmatch glob on the raw path, e.g. ``"/JSSResource/osx*"``.
        Injected before authentication, like a failing node or proxy (§7.1: occasional
        500 under load).  Jamf itself sends no 429 and no ``Retry-After`` (§8); ``headers``,
        ``body`` and ``content_type`` are for what a load balancer, proxy or sign-in portal
        in front of it sends.  With ``truncate`` the status is the real answer's: the
        request is served normally, but only half its body is sent before the connection
        closes."""
        with self._lock:
            self._faults.append(_Fault(status, n, method.upper() if method else None, path,
                                       tuple(headers), body, content_type, truncate))

    def slow_responses(
        self, seconds: float, *, n: int | None = None, method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Delay matching requests by ``seconds`` (all of them, or the next ``n``)."""
        with self._lock:
            self._delays.append(_Delay(seconds, n, method.upper() if method else None, path))

    def lag_after_create(self, reads: int = 1, *, honour_sticky_cookie: bool = False) -> None:
        """§8 Jamf Cloud clustering: each profile created from now on is invisible (404 on
        GET by id/name, absent from the list) to the next ``reads`` GETs of profiles.

        With ``honour_sticky_cookie`` a GET carrying the ``APBALANCEID`` cookie this
        server hands out is served by "the same node" and sees the profile at once."""
        with self._lock:
            self._cluster_lag_reads = reads
            self._cluster_lag_honours_cookie = honour_sticky_cookie

    def expire_all_tokens(self) -> None:
        """Token expiry mid-run: every issued token is now expired (-> 401)."""
        with self._lock:
            for token in self._tokens.values():
                token.expires_at = float("-inf")

    def advance_time(self, seconds: float) -> None:
        """Move the server's token clock forward (no sleeping needed in tests)."""
        with self._lock:
            self._clock_offset += seconds

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._delays.clear()
            self._cluster_lag_reads = 0
            self._lagging.clear()

    # ------------------------------------------------------------------ inspection

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return sorted(self._records, key=lambda r: r.seq)

    def requests_to(self, path_glob: str, method: str | None = None) -> list[RequestRecord]:
        return [
            r for r in self.requests
            if fnmatch.fnmatchcase(r.path, path_glob)
            and (method is None or r.method == method.upper())
        ]

    @property
    def write_count(self) -> int:
        """POST/PUT/DELETE requests to osxconfigurationprofiles (any outcome)."""
        return sum(
            1 for r in self.requests
            if r.method in ("POST", "PUT", "DELETE") and r.path.startswith(PROFILES_PATH)
        )

    @property
    def profile_writes(self) -> list[ProfileWrite]:
        with self._lock:
            return list(self._writes)

    @property
    def deployments(self) -> list[Deployment]:
        with self._lock:
            return list(self._deployments)

    @property
    def peak_connections(self) -> int:
        """Most TCP connections open at once (§8: Jamf's guidance is at most 5)."""
        return self._peak_connections

    @property
    def peak_in_flight(self) -> int:
        """Most requests being processed at once."""
        return self._peak_in_flight

    @property
    def open_connections(self) -> int:
        return self._open_connections

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until no connection is open and no request is in flight (the server
        closes a ``Connection: close`` socket just after the client has read the reply)."""
        deadline = time.monotonic() + timeout
        while self._open_connections or self._in_flight:
            if time.monotonic() > deadline:
                raise TimeoutError("fake Jamf server did not become idle")
            time.sleep(0.005)

    def reset_stats(self) -> None:
        with self._lock:
            self._records.clear()
            self._writes.clear()
            self._deployments.clear()
            self._peak_connections = self._open_connections
            self._peak_in_flight = self._in_flight

    def profiles(self) -> list[StoredProfile]:
        with self._lock:
            return [copy.deepcopy(p) for p in sorted(self._profiles.values(), key=lambda p: p.id)]

    def profile(self, profile_id: int) -> StoredProfile:
        with self._lock:
            return copy.deepcopy(self._profiles[profile_id])

    def profile_by_name(self, name: str) -> StoredProfile | None:
        with self._lock:
            found = self._find_by_name(name)
            return copy.deepcopy(found) if found else None

    def static_group_members(self, group_id: int) -> list[int]:
        with self._lock:
            return list(self._groups[group_id].members)

    def installed_profiles(self, computer_id: int) -> dict[str, dict[str, Any]]:
        """Simulated device state (§6.3): top-level PayloadIdentifier -> installed plist,
        with §5 payload variables substituted for that device."""
        with self._lock:
            installed = self._devices.get(computer_id, {})
            return {ident: plistlib.loads(i.payload.encode()) for ident, i in installed.items()}

    def installed_profile_ids(self, computer_id: int) -> dict[str, int]:
        """PayloadIdentifier -> Jamf profile id, for each profile on the device."""
        with self._lock:
            return {k: v.profile_id for k, v in self._devices.get(computer_id, {}).items()}

    # ------------------------------------------------------------------ request pipeline

    def _now(self) -> float:
        return time.monotonic() + self._clock_offset

    def _connection_opened(self) -> None:
        with self._lock:
            self._open_connections += 1
            self._peak_connections = max(self._peak_connections, self._open_connections)

    def _connection_closed(self) -> None:
        with self._lock:
            self._open_connections -= 1

    def _take_delay(self, method: str, path: str) -> float:
        with self._lock:
            total = 0.0
            for delay in self._delays:
                if _rule_matches(delay.method, delay.path, method, path):
                    total += delay.seconds
                    if delay.remaining is not None:
                        delay.remaining -= 1
            self._delays = [d for d in self._delays if d.remaining is None or d.remaining > 0]
            return total

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if _rule_matches(fault.method, fault.path, method, path):
                    fault.remaining -= 1
                    self._faults = [f for f in self._faults if f.remaining > 0]
                    return fault
            return None

    def _process(self, method: str, target: str, headers: Any, body: bytes) -> _Response:
        split = urlsplit(target)
        path = split.path
        with self._lock:
            self._seq += 1
            record = RequestRecord(
                seq=self._seq, method=method, path=path, query=split.query,
                headers={k: v for k, v in headers.items()}, body=body,
                started=time.monotonic(),
            )
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
        response = _Response(500)
        try:
            delay = self._take_delay(method, path)
            if delay > 0:
                record.delayed = delay
                self._stop_event.wait(delay)
            fault = self._take_fault(method, path)
            if fault is not None and fault.truncate:
                record.fault = "truncated"
                with self._lock:
                    response = self._dispatch(method, path, split.query, headers, body, record)
                response.truncate = True
            elif fault is not None:
                record.fault = f"status-{fault.status}"
                response = self._fault_response(path, fault.status)
                if fault.body is not None:
                    response.body = fault.body
                    response.content_type = fault.content_type or response.content_type
                response.headers.extend(fault.headers)
            else:
                with self._lock:
                    response = self._dispatch(method, path, split.query, headers, body, record)
        except _HttpError as exc:
            response = exc.response
        except Exception:
            self.internal_errors.append(traceback.format_exc())
            response = self._fault_response(path, 500)
        finally:
            with self._lock:
                self._in_flight -= 1
                record.status = response.status
                record.duration = time.monotonic() - record.started
                self._records.append(record)
        # §8: Jamf Cloud hands out load-balancer cookies; clients should keep them.
        if "APBALANCEID=" not in (headers.get("Cookie") or ""):
            response.headers.append(("Set-Cookie", f"APBALANCEID={self._node_id}; Path=/"))
        return response

    @staticmethod
    def _fault_response(path: str, status: int) -> _Response:
        if path in OAUTH_TOKEN_PATHS or path.startswith(API_PREFIX):
            return _api_error_response(status, "INJECTED_FAULT", f"Injected HTTP {status}")
        return _html_response(status)

    def _dispatch(
        self, method: str, path: str, query: str, headers: Any, body: bytes,
        record: RequestRecord,
    ) -> _Response:
        is_api = path.startswith(API_PREFIX)
        if path in OAUTH_TOKEN_PATHS:
            if method != "POST":
                raise _api_error(405, "METHOD_NOT_ALLOWED", "Use POST")
            return self._oauth_token(headers, body)
        if path == "/api/v1/auth/token":
            if method != "POST":
                raise _api_error(405, "METHOD_NOT_ALLOWED", "Use POST")
            return self._basic_token(headers)
        if not (is_api or path.startswith(CLASSIC_PREFIX)):
            return _html_response(404)
        token = self._bearer(headers)
        if token is None:
            # §7.1 / §9: 401 on a missing, unknown or expired token; §1: Basic on Classic
            # is no longer supported, so it is treated as missing.
            if is_api:
                # CHOICE: Jamf Pro API 401 body in the §7.2 shape with code INVALID_TOKEN.
                return _api_error_response(401, "INVALID_TOKEN", "Unauthorized")
            return _html_response(401)
        ctx = _Context(method, path, parse_qs(query, keep_blank_values=True), headers, body,
                       token, record)
        for pattern, handlers in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            handler = handlers.get(method)
            if handler is None:
                if is_api:
                    return _api_error_response(405, "METHOD_NOT_ALLOWED", f"{method} not allowed")
                return _html_response(405)
            return handler(match, ctx)
        if is_api:
            return _api_error_response(404, "NOT_FOUND", "Not Found")
        return _html_response(404)

    def _build_routes(self) -> None:
        seg = r"([^/]+)"
        profiles = r"/JSSResource/osxconfigurationprofiles"
        self._routes = [
            (re.compile(r"/api/v1/auth"), {"GET": self._auth_details}),
            (re.compile(r"/api/v1/auth/keep-alive"), {"POST": self._keep_alive}),
            (re.compile(r"/api/v1/auth/invalidate-token"), {"POST": self._invalidate}),
            (re.compile(profiles + r"/?"), {"GET": self._list_profiles}),
            (re.compile(profiles + rf"/(id|name)/{seg}/subset/{seg}"),
             {"GET": self._get_profile}),
            (re.compile(profiles + rf"/(id|name)/{seg}"),
             {"GET": self._get_profile, "POST": self._create_profile,
              "PUT": self._update_profile, "DELETE": self._delete_profile}),
            (re.compile(rf"/JSSResource/computers/(serialnumber|id)/{seg}(?:/subset/{seg})?"),
             {"GET": self._classic_computer}),
            (re.compile(r"/api/(v\d+)/computers-inventory"), {"GET": self._inventory}),
            (re.compile(r"/api/(v2|v3)/computer-groups/static-groups"),
             {"GET": self._list_groups, "POST": self._create_group}),
            (re.compile(r"/api/(v2|v3)/computer-groups/static-groups/([^/]+)"),
             {"GET": self._get_group, "PUT": self._update_group, "DELETE": self._delete_group}),
        ]

    # ------------------------------------------------------------------ auth (§1)

    def _issue(self, kind: str, subject: str, lifetime: float, scope: str = "") -> _Token:
        token = _Token(secrets.token_urlsafe(32), kind, subject, self._now() + lifetime, scope)
        self._tokens[token.value] = token
        return token

    def _bearer(self, headers: Any) -> _Token | None:
        auth = headers.get("Authorization") or ""
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer":
            return None
        token = self._tokens.get(value.strip())
        if token is None or token.expires_at <= self._now():
            return None
        return token

    def _oauth_token(self, headers: Any, body: bytes) -> _Response:
        # §1.1: form-encoded grant_type=client_credentials, client_id, client_secret, scope.
        if _media_type(headers) != "application/x-www-form-urlencoded":
            # CHOICE: other content types -> RFC 6749 invalid_request.
            raise _oauth_error(400, "invalid_request",
                               "Content-Type must be application/x-www-form-urlencoded")
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        grant = form.get("grant_type", [""])[0]
        if grant != "client_credentials":
            raise _oauth_error(400, "unsupported_grant_type", f"Unsupported grant {grant!r}")
        client_id = form.get("client_id", [""])[0]
        secret = form.get("client_secret", [""])[0]
        # CHOICE: credentials only as form fields (§1.1), not HTTP Basic.
        client = self.oauth_clients.get(client_id)
        if client is None or not hmac.compare_digest(client.secret.encode(), secret.encode()):
            raise _oauth_error(self.invalid_client_status, "invalid_client",
                               "Client authentication failed")
        requested = form.get("scope", [""])[0].split()
        unknown = [s for s in requested if s not in client.roles]
        if unknown:
            raise _oauth_error(400, "invalid_scope", f"Unknown scope {' '.join(unknown)}")
        scope = " ".join(requested or client.roles)
        lifetime = client.token_lifetime or self.oauth_token_lifetime
        token = self._issue("oauth", client_id, lifetime, scope)
        resp = _json_response(200, {
            "access_token": token.value,
            "scope": scope,
            "token_type": "Bearer",
            "expires_in": int(lifetime),
        })
        resp.headers.append(("Cache-Control", "no-store"))
        return resp

    def _user_token_body(self, token: _Token) -> dict[str, str]:
        # §1.2: ISO-8601 with milliseconds and Z.
        remaining = token.expires_at - self._now()
        expires = datetime.now(UTC) + timedelta(seconds=remaining)
        stamp = expires.strftime("%Y-%m-%dT%H:%M:%S.") + f"{expires.microsecond // 1000:03d}Z"
        return {"token": token.value, "expires": stamp}

    def _basic_token(self, headers: Any) -> _Response:
        auth = headers.get("Authorization") or ""
        scheme, _, encoded = auth.partition(" ")
        try:
            user, _, password = base64.b64decode(encoded.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            user, password = "", ""
        expected = self.users.get(user)
        if (scheme.lower() != "basic" or expected is None
                or not hmac.compare_digest(expected.encode(), password.encode())):
            return _api_error_response(401, "INVALID_CREDENTIALS", "Unauthorized")
        token = self._issue("user", user, self.user_token_lifetime)
        return _json_response(200, self._user_token_body(token))

    def _keep_alive(self, match: re.Match[str], ctx: _Context) -> _Response:
        assert ctx.token is not None
        if ctx.token.kind != "user":
            # §1.1 "Keep-alive does not work for OAuth tokens".  CHOICE: 401.
            raise _api_error(401, "INVALID_TOKEN", "Keep-alive is not supported for OAuth tokens")
        del self._tokens[ctx.token.value]  # §1.2: the old token becomes invalid
        token = self._issue("user", ctx.token.subject, self.user_token_lifetime)
        return _json_response(200, self._user_token_body(token))

    def _invalidate(self, match: re.Match[str], ctx: _Context) -> _Response:
        assert ctx.token is not None
        del self._tokens[ctx.token.value]
        return _Response(204)

    def _auth_details(self, match: re.Match[str], ctx: _Context) -> _Response:
        assert ctx.token is not None
        # CHOICE: minimal account body; the reference only says 200 + account details.
        return _json_response(200, {
            "account": {"id": "1", "username": ctx.token.subject,
                        "accessLevel": "FullAccess", "privilegeSet": "ADMINISTRATOR"},
            "sites": [],
            "authenticationType": "CLIENT_CREDENTIALS" if ctx.token.kind == "oauth" else "JSS",
        })

    # ------------------------------------------------------------------ computers (§4.1)

    def _find_computer_by_serial(self, serial: str) -> Computer | None:
        # CHOICE: serial matching is case-insensitive (MySQL collation).
        for computer in self.computers.values():
            if computer.serial.lower() == serial.lower():
                return computer
        return None

    def _classic_computer(self, match: re.Match[str], ctx: _Context) -> _Response:
        kind, key, subset = match.group(1), unquote(match.group(2)), match.group(3)
        if kind == "serialnumber":
            computer = self._find_computer_by_serial(key)
        else:
            computer = self.computers.get(int(key)) if key.isdigit() else None
        if computer is None:
            raise _classic_error(404)
        # CHOICE: full record = general + location; unknown subset names are ignored.
        wanted = {s.lower() for s in unquote(subset).split("&")} if subset else {
            "general", "location"}
        general = {"id": computer.id, "name": computer.name,
                   "serial_number": computer.serial, "udid": computer.udid}
        location = {"username": computer.username, "realname": computer.realname,
                    "real_name": computer.realname, "email_address": computer.email}
        sections = {k: v for k, v in (("general", general), ("location", location))
                    if k in wanted}
        if _wants_json(ctx.headers):
            return _json_response(200, {"computer": sections})
        root = ET.Element("computer")
        for name, values in sections.items():
            sub = _sub(root, name)
            for key_, value in values.items():
                _sub(sub, key_, value)
        return _xml_response(200, root)

    def _inventory(self, match: re.Match[str], ctx: _Context) -> _Response:
        version = match.group(1)
        if version not in self.inventory_versions:
            raise _api_error(404, "NOT_FOUND", f"computers-inventory {version} is not served")
        sections = [s.upper() for s in ctx.query.get("section", [])] or ["GENERAL"]
        bad = [s for s in sections if s not in _INVENTORY_SECTIONS]
        if bad:
            raise _api_error(400, "INVALID_FIELD", f"Unknown section {bad[0]}", "section")
        try:
            page = int(ctx.query.get("page", ["0"])[0])
            page_size = int(ctx.query.get("page-size", ["100"])[0])
        except ValueError as exc:
            raise _api_error(400, "INVALID_FIELD", "page and page-size must be integers") from exc
        computers = sorted(self.computers.values(), key=lambda c: c.id)
        rsql = ctx.query.get("filter", [""])[0]
        if rsql:
            try:
                matcher = _Rsql(rsql, _INVENTORY_FIELDS)
            except _RsqlError as exc:
                # CHOICE: unsupported filter field or syntax -> 400 INVALID_FIELD.
                raise _api_error(400, "INVALID_FIELD", str(exc), "filter") from exc
            computers = [c for c in computers if matcher.matches(c)]
        window = computers[page * page_size:(page + 1) * page_size]
        return _json_response(200, {
            "totalCount": len(computers),
            "results": [self._inventory_record(c, sections) for c in window],
        })

    @staticmethod
    def _inventory_record(computer: Computer, sections: list[str]) -> dict[str, Any]:
        # §4.1: ids are strings; only requested sections are filled.  CHOICE: sections not
        # requested are null, requested ones the fake has no data for are {}.
        record: dict[str, Any] = {"id": str(computer.id), "udid": computer.udid}
        for section in _INVENTORY_SECTIONS:
            record[_camel(section)] = {} if section in sections else None
        if "GENERAL" in sections:
            record["general"] = {"name": computer.name}
        if "HARDWARE" in sections:
            record["hardware"] = {"serialNumber": computer.serial}
        if "USER_AND_LOCATION" in sections:
            record["userAndLocation"] = {"username": computer.username,
                                         "realname": computer.realname,
                                         "email": computer.email}
        return record

    # ------------------------------------------------------------------ static groups (§4.2)

    def _group_json(self, group: _StaticGroup) -> dict[str, Any]:
        return {"id": str(group.id), "name": group.name, "description": group.description,
                "siteId": group.site_id, "count": len(group.members)}

    def _group_from(self, match: re.Match[str]) -> _StaticGroup:
        key = match.group(2)
        group = self._groups.get(int(key)) if key.isdigit() else None
        if group is None:
            raise _api_error(404, "NOT_FOUND", f"Static group {key} not found")
        return group

    def _group_body(self, ctx: _Context) -> dict[str, Any]:
        try:
            data = json.loads(ctx.body or b"null")
        except ValueError as exc:
            raise _api_error(400, "INVALID_JSON", "Malformed JSON body") from exc
        if not isinstance(data, dict):
            raise _api_error(400, "INVALID_JSON", "JSON object expected")
        return data

    def _group_members(self, data: dict[str, Any]) -> list[int] | None:
        if "assignments" not in data:
            return None
        members = []
        for raw in data["assignments"] or []:
            cid = int(raw) if str(raw).isdigit() else None
            if cid is None or cid not in self.computers:
                # CHOICE: an unknown computer id is a 400 on the assignments field.
                raise _api_error(400, "INVALID_ID", f"Unknown computer id {raw}", "assignments")
            members.append(cid)
        return members

    def _check_group_name(self, name: Any, exclude: int | None = None) -> str:
        if not isinstance(name, str) or not name.strip():
            raise _api_error(400, "INVALID_FIELD", "name is required", "name")
        for group in self._groups.values():
            if group.id != exclude and group.name.lower() == name.lower():
                raise _api_error(409, "DUPLICATE_FIELD", f"name {name!r} already in use", "name")
        return name

    def _list_groups(self, match: re.Match[str], ctx: _Context) -> _Response:
        groups = sorted(self._groups.values(), key=lambda g: g.id)
        rsql = ctx.query.get("filter", [""])[0]
        if rsql:
            fields: dict[str, Callable[[Any], str]] = {
                "id": lambda g: str(g.id), "name": lambda g: g.name}
            try:
                matcher = _Rsql(rsql, fields)
            except _RsqlError as exc:
                raise _api_error(400, "INVALID_FIELD", str(exc), "filter") from exc
            groups = [g for g in groups if matcher.matches(g)]
        page = int(ctx.query.get("page", ["0"])[0])
        page_size = int(ctx.query.get("page-size", ["100"])[0])
        window = groups[page * page_size:(page + 1) * page_size]
        return _json_response(200, {"totalCount": len(groups),
                                    "results": [self._group_json(g) for g in window]})

    def _create_group(self, match: re.Match[str], ctx: _Context) -> _Response:
        data = self._group_body(ctx)
        name = self._check_group_name(data.get("name"))
        members = self._group_members(data) or []
        gid = self._next_group_id
        self._next_group_id += 1
        self._groups[gid] = _StaticGroup(gid, name, str(data.get("description") or ""),
                                         str(data.get("siteId", "-1")), members)
        href = f"{self.url}/api/{match.group(1)}/computer-groups/static-groups/{gid}"
        return _json_response(201, {"id": str(gid), "href": href})

    def _get_group(self, match: re.Match[str], ctx: _Context) -> _Response:
        return _json_response(200, self._group_json(self._group_from(match)))

    def _update_group(self, match: re.Match[str], ctx: _Context) -> _Response:
        group = self._group_from(match)
        data = self._group_body(ctx)
        if "name" in data:
            group.name = self._check_group_name(data["name"], exclude=group.id)
        if "description" in data:
            group.description = str(data["description"] or "")
        members = self._group_members(data)
        if members is not None:
            group.members = members  # §4.2: PUT replaces the assignments
        # CHOICE: 200 with the group object (the reference gives no PUT response).
        return _json_response(200, self._group_json(group))

    def _delete_group(self, match: re.Match[str], ctx: _Context) -> _Response:
        group = self._group_from(match)
        del self._groups[group.id]
        return _Response(204)  # CHOICE: 204, as Jamf Pro API deletes usually are

    # ------------------------------------------------------------------ profiles (§2)

    def _find_by_name(self, name: str) -> StoredProfile | None:
        # §2.1/§9: names are unique case-insensitively.
        for profile in self._profiles.values():
            if profile.name.lower() == name.lower():
                return profile
        return None

    def _lookup(self, kind: str, raw_key: str) -> StoredProfile:
        key = unquote(raw_key)
        if kind == "id":
            profile = self._profiles.get(int(key)) if re.fullmatch(r"\d+", key) else None
        else:
            profile = self._find_by_name(key)
        if profile is None:
            raise _classic_error(404)
        return profile

    def _hidden_by_lag(self, profile_id: int, ctx: _Context) -> bool:
        """§8 cluster lag: consume one lagging read for this profile if still pending."""
        remaining = self._lagging.get(profile_id, 0)
        if remaining <= 0:
            return False
        if self._cluster_lag_honours_cookie and "APBALANCEID=" in (
                ctx.headers.get("Cookie") or ""):
            return False
        if remaining == 1:
            del self._lagging[profile_id]
        else:
            self._lagging[profile_id] = remaining - 1
        ctx.record.fault = "cluster-lag"
        return True

    def _list_profiles(self, match: re.Match[str], ctx: _Context) -> _Response:
        visible = [p for p in sorted(self._profiles.values(), key=lambda p: p.id)
                   if not self._hidden_by_lag(p.id, ctx)]
        if _wants_json(ctx.headers):
            # §2.4: key per JamfUploader CLASSIC_LIST_KEY_OVERRIDES.
            return _json_response(200, {"os_x_configuration_profiles": [
                {"id": p.id, "name": p.name} for p in visible]})
        root = ET.Element("os_x_configuration_profiles")
        _sub(root, "size", len(visible))
        for p in visible:
            item = _sub(root, "os_x_configuration_profile")
            _sub(item, "id", p.id)
            _sub(item, "name", p.name)
        return _xml_response(200, root)

    def _get_profile(self, match: re.Match[str], ctx: _Context) -> _Response:
        profile = self._lookup(match.group(1), match.group(2))
        if self._hidden_by_lag(profile.id, ctx):
            raise _classic_error(404)
        subset = match.group(3) if match.re.groups >= 3 else None
        # §2.1: subset/General, Scope, SelfService; several joined with "&".
        # CHOICE: unknown subset names are ignored.
        wanted = ({s.lower() for s in unquote(subset).split("&")} if subset
                  else {"general", "scope", "selfservice"})
        if _wants_json(ctx.headers):
            out: dict[str, Any] = {}
            if "general" in wanted:
                out["general"] = self._general_json(profile)
            if "scope" in wanted:
                out["scope"] = _scope_to_json(profile.scope)
            if "selfservice" in wanted:
                out["self_service"] = (_elem_to_json(profile.self_service)
                                       if profile.self_service is not None else {})
            return _json_response(200, {"os_x_configuration_profile": out})
        root = ET.Element("os_x_configuration_profile")
        if "general" in wanted:
            self._general_xml(root, profile)
        if "scope" in wanted:
            _scope_to_xml(root, profile.scope)
        if "selfservice" in wanted:
            if profile.self_service is not None:
                root.append(copy.deepcopy(profile.self_service))
            else:
                _sub(root, "self_service")
        return _xml_response(200, root)

    @staticmethod
    def _general_fields(profile: StoredProfile) -> list[tuple[str, Any]]:
        return [
            ("id", profile.id),
            ("name", profile.name),
            ("description", profile.description),
            ("site", {"id": profile.site_id, "name": profile.site_name}),
            ("category", {"id": profile.category_id, "name": profile.category_name}),
            ("distribution_method", profile.distribution_method),
            ("user_removable", profile.user_removable),
            ("level", profile.level),  # §2.2: GET returns lower case
            ("uuid", profile.uuid),
            # §2.4: write-time instruction, always reads back as "Newly Assigned".
            ("redeploy_on_update", "Newly Assigned"),
            ("payloads", profile.payloads),
        ]

    def _general_json(self, profile: StoredProfile) -> dict[str, Any]:
        return dict(self._general_fields(profile))

    def _general_xml(self, root: ET.Element, profile: StoredProfile) -> None:
        general = _sub(root, "general")
        for key, value in self._general_fields(profile):
            if isinstance(value, dict):
                sub = _sub(general, key)
                for k, v in value.items():
                    _sub(sub, k, v)
            else:
                _sub(general, key, value)  # ElementTree escapes the payload text (§2.2)

    @staticmethod
    def _id_response(status: int, profile_id: int) -> _Response:
        # §2.4: XML whatever Accept says.
        root = ET.Element("os_x_configuration_profile")
        _sub(root, "id", profile_id)
        return _xml_response(status, root)

    def _parse_body(self, ctx: _Context) -> ET.Element:
        # §2.1: XML only, application/xml or text/xml.
        if _media_type(ctx.headers) not in ("application/xml", "text/xml"):
            # CHOICE: 415 for anything else (including a missing Content-Type).
            raise _classic_error(415)
        try:
            root = ET.fromstring(ctx.body)
        except ET.ParseError as exc:
            # §7.1: 400 malformed XML.
            raise _classic_error(400) from exc
        if root.tag != "os_x_configuration_profile":
            raise _classic_error(400)  # CHOICE: wrong root element is a 400 too
        return root

    @staticmethod
    def _parse_payload(text: str) -> dict[str, Any]:
        # §2.2 / §9: must be a plist with its XML preamble, else 409.
        if not text.lstrip().startswith("<?xml"):
            raise _classic_error(409, MSG_BAD_PAYLOAD)
        try:
            plist = plistlib.loads(text.strip().encode("utf-8"))
        except Exception as exc:
            raise _classic_error(409, MSG_BAD_PAYLOAD) from exc
        if not isinstance(plist, dict):
            raise _classic_error(409, MSG_BAD_PAYLOAD)
        return plist

    def _stored_form(self, plist: dict[str, Any], profile: StoredProfile) -> dict[str, Any]:
        """What is stored of a sent payload: normalised (``normalise_metadata``), then passed
        through ``store_payload``."""
        plist = copy.deepcopy(plist)
        if self.normalise_metadata:
            # [reported] Jamf derives the display metadata from its own fields and adds its
            # defaults; the terraform providers mask exactly these keys (§6.1, §6.2).
            plist["PayloadDisplayName"] = profile.name
            plist["PayloadDescription"] = profile.description
            plist["PayloadOrganization"] = self.organization
            plist["PayloadEnabled"] = True
            plist["PayloadRemovalDisallowed"] = not profile.user_removable
        if self.store_payload is not None:
            plist = self.store_payload(plist)
        return plist

    def _render_payload(self, plist: dict[str, Any], user_removable: bool = False) -> str:
        # §6.1: read-back is re-indented and carries injected keys.
        plist = copy.deepcopy(plist)
        if self.inject_default_keys:
            plist.setdefault("PayloadRemovalDisallowed", not user_removable)
            for item in plist.get("PayloadContent") or []:
                if isinstance(item, dict):
                    item.setdefault("PayloadEnabled", True)
        return plistlib.dumps(plist, sort_keys=False).decode("utf-8")

    def _resolve_category(self, elem: ET.Element | None) -> tuple[int, str] | None:
        if elem is None:
            return None
        cid, name = _child_text(elem, "id"), _child_text(elem, "name")
        if cid in ("-1",) or (not cid and name in ("", None, "No category assigned")):
            return (-1, "No category assigned")
        for cat_name, cat_id in self.categories.items():
            if (cid and cid == str(cat_id)) or (not cid and name
                                                 and name.lower() == cat_name.lower()):
                return (cat_id, cat_name)
        # §2.2: the category must already exist.  CHOICE: 409 with this message.
        raise _classic_error(409, MSG_BAD_CATEGORY)

    def _resolve_site(self, elem: ET.Element | None) -> tuple[int, str] | None:
        if elem is None:
            return None
        sid, name = _child_text(elem, "id"), _child_text(elem, "name")
        if sid == "-1" or (not sid and name in ("", None, "None")):
            return (-1, "None")
        for site_id, site_name in self.sites.items():
            if (sid and sid == str(site_id)) or (not sid and name == site_name):
                return (site_id, site_name)
        raise _classic_error(409, MSG_BAD_SITE)  # CHOICE

    def _resolve_scope(self, scope: dict[str, Any]) -> dict[str, Any]:
        """Validate and enrich computer and group references (§3)."""
        scope = copy.deepcopy(scope)
        for container in (scope, scope["exclusions"]):
            computers = []
            for entry in container["computers"]:
                computer = self._match_computer(entry)
                if computer is None:
                    # CHOICE: an unknown computer is a 409.  Scoping by serial_number alone
                    # is [unverified] (§3), so it is not accepted here either.
                    raise _classic_error(409, MSG_BAD_COMPUTER)
                computers.append({"_tag": entry["_tag"], "id": computer.id,
                                  "name": computer.name, "udid": computer.udid,
                                  "serial_number": computer.serial})
            container["computers"] = computers
            groups = []
            for entry in container["computer_groups"]:
                group = self._match_group(entry)
                if group is None:
                    raise _classic_error(409, MSG_BAD_GROUP)  # CHOICE
                groups.append({"_tag": entry["_tag"], "id": group.id, "name": group.name})
            container["computer_groups"] = groups
        return scope

    def _match_computer(self, entry: dict[str, Any]) -> Computer | None:
        if isinstance(entry.get("id"), int):
            return self.computers.get(entry["id"])
        for computer in self.computers.values():
            if entry.get("name") and computer.name == entry["name"]:
                return computer
            if entry.get("udid") and computer.udid.lower() == str(entry["udid"]).lower():
                return computer
        return None

    def _match_group(self, entry: dict[str, Any]) -> _StaticGroup | None:
        if isinstance(entry.get("id"), int):
            return self._groups.get(entry["id"])
        for group in self._groups.values():
            if entry.get("name") and group.name.lower() == str(entry["name"]).lower():
                return group
        return None

    def _targets(self, scope: dict[str, Any]) -> set[int]:
        def members(entries: list[dict[str, Any]]) -> set[int]:
            found: set[int] = set()
            for entry in entries:
                group = self._groups.get(entry["id"])
                found |= set(group.members) if group else set()
            return found

        if scope["all_computers"]:
            targets = set(self.computers)
        else:
            targets = {e["id"] for e in scope["computers"]} | members(scope["computer_groups"])
        exclusions = scope["exclusions"]
        excluded = {e["id"] for e in exclusions["computers"]} | members(
            exclusions["computer_groups"])
        return targets - excluded

    def _apply_general(self, profile: StoredProfile, general: ET.Element, creating: bool) -> None:
        """Copy the sent <general> elements into ``profile`` (omitted ones stay, §2.3)."""
        name = _child_text(general, "name")
        if name is not None:
            if not name:
                raise _classic_error(409, MSG_NO_NAME)  # CHOICE
            other = self._find_by_name(name)
            if other is not None and other.id != profile.id:
                raise _classic_error(409, MSG_DUPLICATE_NAME)  # §7.1
            profile.name = name
        elif creating:
            raise _classic_error(409, MSG_NO_NAME)
        description = _child_text(general, "description")
        if description is not None:
            profile.description = description
        category = self._resolve_category(general.find("category"))
        if category is not None:
            profile.category_id, profile.category_name = category
        site = self._resolve_site(general.find("site"))
        if site is not None:
            profile.site_id, profile.site_name = site
        method = _child_text(general, "distribution_method")
        if method is not None:
            if method not in DISTRIBUTION_METHODS:  # CHOICE: only the §2.2 values
                raise _classic_error(409, MSG_BAD_FIELD.format(field="distribution_method"))
            profile.distribution_method = method
        removable = _child_text(general, "user_removable")
        if removable is not None:
            profile.user_removable = removable.lower() == "true"
        level = _child_text(general, "level")
        if level is not None:
            if level.lower() not in LEVELS:
                raise _classic_error(409, MSG_BAD_FIELD.format(field="level"))
            profile.level = LEVELS[level.lower()]
        redeploy = _child_text(general, "redeploy_on_update")
        if redeploy is not None and redeploy not in REDEPLOY_VALUES:
            # CHOICE: only the two documented values (§2.2), case-sensitive.
            raise _classic_error(409, MSG_BAD_FIELD.format(field="redeploy_on_update"))

    def _create_profile(self, match: re.Match[str], ctx: _Context) -> _Response:
        if match.group(1) != "id":
            raise _classic_error(405)  # CHOICE: create is only POST .../id/0 (§2.1)
        if match.group(2) != "0":
            # §9: a non-zero id in the URL -> 400 or 409 [unverified].  CHOICE: 409.
            raise _classic_error(409, MSG_CREATE_ID)
        root = self._parse_body(ctx)
        general = root.find("general")
        if general is None:
            raise _classic_error(409, MSG_NO_NAME)
        profile = StoredProfile(
            id=0, name="", description="", site_id=-1, site_name="None", category_id=-1,
            category_name="No category assigned",
            distribution_method="Install Automatically", user_removable=False,
            level="computer", uuid="", payloads="", scope=_empty_scope(),
        )
        self._apply_general(profile, general, creating=True)
        payload_text = _child_text(general, "payloads")
        if not payload_text:
            raise _classic_error(409, MSG_BAD_PAYLOAD)  # CHOICE: payload required
        plist = self._parse_payload(payload_text)
        sent_identifier = plist.get("PayloadIdentifier")
        # §6.1 / §9: rewrite the top-level PayloadUUID (new upper-case UUID) and
        # PayloadIdentifier.  CHOICE: the new PayloadIdentifier is the new UUID string.
        new_uuid = str(uuid.uuid4()).upper()
        plist["PayloadUUID"] = new_uuid
        if self.rewrite_identifier_on_create:
            plist["PayloadIdentifier"] = new_uuid
        if self.rewrite_nested_uuids_on_create:
            for item in plist.get("PayloadContent") or []:
                if isinstance(item, dict) and "PayloadUUID" in item:
                    item["PayloadUUID"] = str(uuid.uuid4()).upper()
        profile.payloads = self._render_payload(self._stored_form(plist, profile), profile.user_removable)
        profile.uuid = new_uuid  # CHOICE: <general><uuid> mirrors the top-level PayloadUUID
        scope_elem = root.find("scope")
        if scope_elem is not None:
            profile.scope = self._resolve_scope(_merge_scope(profile.scope, scope_elem))
        self_service = root.find("self_service")
        if self_service is not None:
            profile.self_service = copy.deepcopy(self_service)
        profile.id = self._next_profile_id
        self._next_profile_id += 1
        self._profiles[profile.id] = profile
        if self._cluster_lag_reads > 0:
            self._lagging[profile.id] = self._cluster_lag_reads
        self._writes.append(ProfileWrite(
            op="create", profile_id=profile.id, name=profile.name, request_seq=ctx.record.seq,
            redeploy_on_update=_child_text(general, "redeploy_on_update"),
            identifier_changed=sent_identifier != profile.payload_identifier,
            uuid_changed=True, payload_changed=True, scope_changed=scope_elem is not None,
            sent_payload_identifier=sent_identifier,
            stored_payload_identifier=profile.payload_identifier,
        ))
        self._deploy(profile, self._targets(profile.scope), ctx.record.seq)
        return self._id_response(201, profile.id)

    def _update_profile(self, match: re.Match[str], ctx: _Context) -> _Response:
        profile = self._lookup(match.group(1), match.group(2))
        root = self._parse_body(ctx)
        updated = copy.deepcopy(profile)
        general = root.find("general")
        redeploy = None
        payload_changed = False
        sent_identifier = None
        if general is not None:
            self._apply_general(updated, general, creating=False)
            redeploy = _child_text(general, "redeploy_on_update")
            payload_text = _child_text(general, "payloads")
            if payload_text:
                # §6.1: on update Jamf stores what is sent (no identifier rewrite).
                plist = self._parse_payload(payload_text)
                sent_identifier = plist.get("PayloadIdentifier")
                updated.payloads = self._render_payload(self._stored_form(plist, updated),
                                                        updated.user_removable)
                updated.uuid = str(plist.get("PayloadUUID", updated.uuid))
                payload_changed = updated.payloads != profile.payloads
        scope_elem = root.find("scope")
        if scope_elem is not None:  # §2.3: omitting <scope> leaves it unchanged
            updated.scope = self._resolve_scope(_merge_scope(profile.scope, scope_elem))
        self_service = root.find("self_service")
        if self_service is not None:
            updated.self_service = copy.deepcopy(self_service)
        self._profiles[profile.id] = updated
        self._writes.append(ProfileWrite(
            op="update", profile_id=updated.id, name=updated.name, request_seq=ctx.record.seq,
            redeploy_on_update=redeploy,
            identifier_changed=updated.payload_identifier != profile.payload_identifier,
            uuid_changed=updated.payload_uuid != profile.payload_uuid,
            payload_changed=payload_changed,
            scope_changed=updated.scope != profile.scope,
            sent_payload_identifier=sent_identifier,
            stored_payload_identifier=updated.payload_identifier,
        ))
        # §6.3: "All" resends to every scoped device; "Newly Assigned" (also what an
        # omitted value means - CHOICE) only to devices newly added to scope.
        old_targets = self._targets(profile.scope)
        new_targets = self._targets(updated.scope)
        self._remove(profile, old_targets - new_targets, ctx.record.seq)
        resend = new_targets if redeploy == "All" else new_targets - old_targets
        self._deploy(updated, resend, ctx.record.seq)
        return self._id_response(201, updated.id)  # §2.4: 201 with the <id> body [reported]

    def _delete_profile(self, match: re.Match[str], ctx: _Context) -> _Response:
        profile = self._lookup(match.group(1), match.group(2))
        del self._profiles[profile.id]
        self._lagging.pop(profile.id, None)
        self._writes.append(ProfileWrite(
            op="delete", profile_id=profile.id, name=profile.name, request_seq=ctx.record.seq,
            stored_payload_identifier=profile.payload_identifier,
        ))
        self._remove(profile, self._targets(profile.scope), ctx.record.seq)
        # §9: 200 with the <id> body [unverified]; clients accept any 2xx.
        return self._id_response(200, profile.id)

    # ------------------------------------------------------------------ devices (§5, §6.3)

    def _device_payload(self, profile: StoredProfile, computer: Computer) -> str:
        text = profile.payloads
        for variable in sorted(_VARIABLES, key=len, reverse=True):
            value = _VARIABLES[variable](computer, profile)
            # CHOICE: a variable with no value for this device is left literal.
            if value and variable in text:
                text = text.replace(variable, html.escape(value, quote=False))
        return text

    def _deploy(self, profile: StoredProfile, computer_ids: set[int], seq: int) -> None:
        identifier = profile.payload_identifier
        for cid in sorted(computer_ids):
            computer = self.computers.get(cid)
            if computer is None:
                continue
            # macOS keys profiles by top-level PayloadIdentifier: a changed identifier
            # installs a second profile and the old one lingers (§6.1 "ghost profile").
            self._devices.setdefault(cid, {})[identifier] = _Installed(
                profile.id, self._device_payload(profile, computer))
            self._deployments.append(Deployment(profile.id, cid, "install", identifier, seq))

    def _remove(self, profile: StoredProfile, computer_ids: set[int], seq: int) -> None:
        identifier = profile.payload_identifier
        for cid in sorted(computer_ids):
            installed = self._devices.get(cid, {})
            entry = installed.get(identifier)
            if entry is not None and entry.profile_id == profile.id:
                del installed[identifier]
            self._deployments.append(Deployment(profile.id, cid, "remove", identifier, seq))


def _rule_matches(rule_method: str | None, rule_path: str | None, method: str, path: str) -> bool:
    if rule_method is not None and rule_method != method:
        return False
    return rule_path is None or fnmatch.fnmatchcase(path, rule_path)
