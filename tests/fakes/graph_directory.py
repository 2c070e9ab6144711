"""Directory and device inventory of the fake Graph (§4 of the reference): users, groups, Entra devices
and Intune managed devices, with the handlers that read them.  A mixin of ``FakeGraphServer``, split off
so each file stays readable; it relies on the server's paging and filtering helpers.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from .graph_http import GraphRequest, HttpError, Response, apply_select, graph_error, json_response


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class User:
    user_principal_name: str
    mail: str | None = None
    display_name: str = ""
    id: str = field(default_factory=new_id)

    def to_json(self) -> dict[str, Any]:
        return {"@odata.type": "#microsoft.graph.user", "id": self.id, "userPrincipalName": self.user_principal_name,
                "mail": self.mail, "displayName": self.display_name or self.user_principal_name.split("@")[0]}


@dataclass
class Group:
    """An Entra group.  ``members`` are object ids: users, Entra devices or (nested) groups."""

    display_name: str
    members: list[str] = field(default_factory=list)
    id: str = field(default_factory=new_id)

    def to_json(self) -> dict[str, Any]:
        return {"@odata.type": "#microsoft.graph.group", "id": self.id, "displayName": self.display_name,
                "securityEnabled": True, "mailEnabled": False, "groupTypes": []}


@dataclass
class ManagedDevice:
    """An Intune managed device.  ``entra_object_id`` is its Entra device object (§4.2: the object id,
    not ``azureADDeviceId``, which is the Entra device's ``deviceId``)."""

    serial_number: str
    operating_system: str = "macOS"
    user: User | None = None
    device_name: str = ""
    id: str = field(default_factory=new_id)
    azure_ad_device_id: str = field(default_factory=new_id)
    entra_object_id: str = field(default_factory=new_id)

    def to_json(self) -> dict[str, Any]:
        return {"@odata.type": "#microsoft.graph.managedDevice", "id": self.id,
                "deviceName": self.device_name or f"Mac-{self.serial_number}", "serialNumber": self.serial_number,
                "operatingSystem": self.operating_system, "osVersion": "15.1" if self.operating_system == "macOS"
                else "10.0.22631", "userPrincipalName": self.user.user_principal_name if self.user else "",
                "emailAddress": (self.user.mail or "") if self.user else "",
                "userId": self.user.id if self.user else None, "azureADDeviceId": self.azure_ad_device_id,
                "managementAgent": "mdm", "complianceState": "compliant",
                "lastSyncDateTime": "2026-01-01T00:00:00Z"}

    def entra_json(self) -> dict[str, Any]:
        return {"@odata.type": "#microsoft.graph.device", "id": self.entra_object_id,
                "deviceId": self.azure_ad_device_id, "displayName": self.device_name or f"Mac-{self.serial_number}",
                "operatingSystem": self.operating_system}



class DirectoryHandlers:
    """§4 handlers.  The attributes and helpers below are provided by ``FakeGraphServer``."""

    users: dict[str, User]
    groups: dict[str, Group]
    managed_devices: dict[str, ManagedDevice]

    def _page(self, ctx: GraphRequest, items: list[dict[str, Any]], fragment: str) -> Response:
        raise NotImplementedError

    def _filtered(self, ctx: GraphRequest, items: list[dict[str, Any]],
                  allowed: tuple[str, ...]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _context(self, ctx: GraphRequest, fragment: str) -> str:
        raise NotImplementedError

    def _not_found(self, ctx: GraphRequest, what: str, key: str) -> HttpError:
        raise NotImplementedError

    def _list_managed_devices(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        items = self._filtered(ctx, [d.to_json() for d in self.managed_devices.values()],
                               ("serialNumber", "userPrincipalName", "operatingSystem", "deviceName",
                                "azureADDeviceId", "userId"))
        return self._page(ctx, items, "deviceManagement/managedDevices")

    def _managed_device(self, ctx: GraphRequest, device_id: str) -> ManagedDevice:
        device = self.managed_devices.get(device_id)
        if device is None:
            raise self._not_found(ctx, "managedDevice", device_id)
        return device

    def _get_managed_device(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        body = self._managed_device(ctx, match.group(1)).to_json()
        return json_response(200, apply_select({"@odata.context": self._context(
            ctx, "deviceManagement/managedDevices/$entity"), **body}, ctx.query.get("$select")))

    def _managed_device_users(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        device = self._managed_device(ctx, match.group(1))
        return self._page(ctx, [device.user.to_json()] if device.user else [], "users")

    def _user(self, ctx: GraphRequest, key: str) -> User:
        if key in self.users:  # by id: a dict lookup, so a 3,000-user fleet does not cost a scan per request
            return self.users[key]
        for user in self.users.values():
            if key == user.id or key.lower() == user.user_principal_name.lower():
                return user
        raise graph_error(404, "Request_ResourceNotFound", f"Resource '{key}' does not exist or one of its queried "
                          "reference-property objects are not present.", client_request_id=ctx.client_request_id)

    def _list_users(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        items = self._filtered(ctx, [u.to_json() for u in self.users.values()], ("userPrincipalName", "mail", "id"))
        return self._page(ctx, items, "users")

    def _get_user(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        body = {"@odata.context": self._context(ctx, "users/$entity"), **self._user(ctx, match.group(1)).to_json()}
        return json_response(200, apply_select(body, ctx.query.get("$select")))

    def _user_groups(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        user = self._user(ctx, match.group(1))
        direct = {g.id for g in self.groups.values() if user.id in g.members}
        found = set(direct)
        if match.group(2) == "transitiveMemberOf":
            frontier = set(direct)
            while frontier:
                frontier = {g.id for g in self.groups.values() if set(g.members) & frontier} - found
                found |= frontier
        items = [g.to_json() for g in self.groups.values() if g.id in found]
        return self._page(ctx, self._filtered(ctx, items, ("displayName",)), "directoryObjects")

    def _group(self, ctx: GraphRequest, group_id: str) -> Group:
        group = self.groups.get(group_id)
        if group is None:
            raise graph_error(404, "Request_ResourceNotFound", f"Resource '{group_id}' does not exist or one of its "
                              "queried reference-property objects are not present.",
                              client_request_id=ctx.client_request_id)
        return group

    def _list_groups(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        items = self._filtered(ctx, [g.to_json() for g in self.groups.values()], ("displayName", "id"))
        return self._page(ctx, items, "groups")

    def _get_group(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        body = {"@odata.context": self._context(ctx, "groups/$entity"), **self._group(ctx, match.group(1)).to_json()}
        return json_response(200, apply_select(body, ctx.query.get("$select")))

    def _directory_object(self, object_id: str) -> dict[str, Any] | None:
        if object_id in self.users:
            return self.users[object_id].to_json()
        if object_id in self.groups:
            return self.groups[object_id].to_json()
        for device in self.managed_devices.values():
            if device.entra_object_id == object_id:
                return device.entra_json()
        return None

    def _group_members(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        group = self._group(ctx, match.group(1))
        items = [obj for obj in map(self._directory_object, group.members) if obj is not None]
        return self._page(ctx, items, "directoryObjects")

    def _add_member(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        """§4.2: 204; 400 when already a member; 404 when the object does not exist."""
        group = self._group(ctx, match.group(1))
        ref = ctx.json_body().get("@odata.id")
        object_id = str(ref).rstrip("/").rsplit("/", 1)[-1] if isinstance(ref, str) else ""
        if not isinstance(ref, str) or "/directoryObjects/" not in ref:
            raise graph_error(400, "BadRequest", "Invalid @odata.id: expected .../directoryObjects/{id}.",
                              client_request_id=ctx.client_request_id)
        obj = self._directory_object(object_id)
        if obj is None:
            raise graph_error(404, "Request_ResourceNotFound", f"Resource '{object_id}' does not exist or one of its "
                              "queried reference-property objects are not present.",
                              client_request_id=ctx.client_request_id)
        if obj["@odata.type"] == "#microsoft.graph.device" and "Device.ReadWrite.All" not in ctx.token.roles:
            # §1.3: adding a device needs GroupMember.ReadWrite.All and Device.ReadWrite.All.
            raise graph_error(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.",
                              client_request_id=ctx.client_request_id)
        if object_id in group.members:
            raise graph_error(400, "Request_BadRequest", "One or more added object references already exist for the "
                              "following modified properties: 'members'.", client_request_id=ctx.client_request_id)
        group.members.append(object_id)
        return Response(204)

    def _list_entra_devices(self, ctx: GraphRequest, match: re.Match[str]) -> Response:
        items = self._filtered(ctx, [d.entra_json() for d in self.managed_devices.values()], ("deviceId",
                                                                                              "displayName"))
        return self._page(ctx, items, "devices")
