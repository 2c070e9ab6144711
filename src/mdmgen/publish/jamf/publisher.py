"""Publish each Mac's profile to Jamf Pro: one computer-level profile per Mac, scoped to that Mac.

Planning reads what Jamf holds, applying writes only what changed. The rules of what a profile is
and what counts as a change are in :mod:`.profiles`; talking to Jamf is :mod:`.client`'s.

* **Scope.** Level computer, installed automatically, not removable, scoped to exactly the
  computer(s) whose serial number is the Mac's (§3, §4.1: looked up with the Jamf Pro API
  inventory filter, 50 serials per request). A Mac not enrolled in Jamf gets no profile and is
  reported in the plan's notes; a profile it already has is left as it is.
* **Unchanged profiles are not written**, so no Mac gets a needless redeploy.
* **Redeploy.** A PUT whose settings changed sends ``redeploy_on_update`` ``All``, so every
  scoped Mac gets the new settings; a PUT of Jamf fields or scope only sends ``Newly Assigned``,
  so only a newly scoped Mac receives the profile (§6.3).
* **Reading back.** Every created profile is read back (which also rides out Jamf Cloud's
  404-right-after-create, §8) and must compare equal to what was sent; otherwise the next run
  would rewrite it forever, so the publish stops with the difference named.
"""

from __future__ import annotations

import logging
import plistlib
from typing import Any
from urllib.parse import quote, urlencode

from ...emit import registry
from ...http import UnexpectedAnswer
from ...messages import first_of
from ...models import Platform
from ...output import CheckedFile as LocalFile
from ...output import CheckedOutput as LocalOutput
from ...output import device_path
from ...progress import NO_PROGRESS, Progress
from ..base import (
    Action,
    Desired,
    LocalOutputError,
    Note,
    Plan,
    PlanItem,
    Remote,
    RemoteError,
    build_plan,
    copy_with_message,
    run_bounded,
)
from ..defaults import JAMF_MAX_CONNECTIONS
from .client import JamfClient, JamfHTTPError
from .profiles import (
    DISTRIBUTION,
    LEVEL,
    NAME_PREFIX,
    Listed,
    ServerKeys,
    Stored,
    Wanted,
    description,
    entries,
    jamf_fields,
    profile_name,
    profile_xml,
    serial_of,
    settings_digest,
    stored_scope,
    wanted_scope,
)

log = logging.getLogger("mdmgen.publish.jamf")

INVENTORY_VERSIONS = ("v3", "v2", "v1")
"""``computers-inventory`` versions tried, newest first, until one is served (§4.1)."""
SERIALS_PER_LOOKUP = 50
PROFILES = "/JSSResource/osxconfigurationprofiles"


class JamfPublisher:
    """Plans and applies a publish of every Mac's profile to one Jamf Pro server.

    Holds only the client and its settings: the plan's items carry what ``write`` and ``delete``
    need (``PlanItem.desired``: the :class:`Wanted` profile; ``PlanItem.remote``: the
    :class:`Listed` one), so applying never depends on state kept from planning.
    """

    noun = "profile"

    def __init__(self, client: JamfClient, *, category: str | None = None, workers: int = JAMF_MAX_CONNECTIONS):
        self.client = client
        self.category = category
        self.workers = max(1, min(workers, client.max_connections))
        self._inventory_version: str | None = None

    # -- plan --

    def plan(self, local: LocalOutput, *, prune: bool, progress: Progress = NO_PROGRESS) -> Plan:
        macs = _macs(local)
        listed = self._list_profiles()
        computers = self._computers(sorted(macs), progress)
        enrolled = {serial: ids for serial, ids in computers.items() if ids}
        unenrolled = sorted(set(macs) - set(enrolled))
        wanted = [self._want(serial, file, enrolled[serial]) for serial, file in macs.items() if serial in enrolled]
        to_read = [(serial, pid) for serial, (pid, _name) in sorted(listed.items()) if serial in enrolled]
        stored = {s.serial: s for s in run_bounded(to_read, lambda entry: self._read(entry[1], entry[0]),
                                                   workers=self.workers, progress=progress,
                                                   label="Reading Jamf Pro profiles")}
        remote = []
        for serial, (pid, _name) in sorted(listed.items()):
            if serial in macs and serial not in enrolled:
                continue  # in the inventory but not enrolled: its profile is left as it is
            found = stored.get(serial)
            remote.append(Remote(profile_name(serial), serial, found.sha256 if found else None,
                                 detail=Listed(pid, found)))
        desired = [Desired(w.name, w.sha256, w.file.size, w.serial, w.file, detail=w) for w in wanted]
        return build_plan(desired, remote, prune=prune, notes=self._notes(unenrolled, listed, computers))

    def _want(self, serial: str, file: LocalFile, computer_ids: list[int]) -> Wanted:
        profile = _parse_plist(file.read(), f"{file.path}")
        name = profile_name(serial)
        fields = jamf_fields(name, description(serial), self.category, LEVEL, DISTRIBUTION, False,
                             wanted_scope(computer_ids))
        return Wanted(serial, name, file, settings_digest(profile), fields, tuple(sorted(computer_ids)))

    def _list_profiles(self) -> dict[str, tuple[int, str]]:
        """Our profiles on the server, by serial: ``{serial: (id, name)}``."""
        data = self.client.request("GET", PROFILES, doing="listing macOS configuration profiles").json()
        found: dict[str, tuple[int, str]] = {}
        for entry in entries(data.get("os_x_configuration_profiles") if isinstance(data, dict) else None):
            serial = serial_of(str(entry.get("name", "")))
            if serial is not None and str(entry.get("id", "")).isdigit():
                found[serial] = (int(entry["id"]), str(entry["name"]))
        log.info("jamf: %d profile(s) named %s<SERIAL> on the server", len(found), NAME_PREFIX)
        return found

    def _computers(self, serials: list[str], progress: Progress) -> dict[str, list[int]]:
        """Computer ids by serial (upper-cased), through the Jamf Pro API inventory filter (§4.1)."""
        batches = [serials[i:i + SERIALS_PER_LOOKUP] for i in range(0, len(serials), SERIALS_PER_LOOKUP)]
        if not batches:
            return {}
        results = [self._lookup(batches[0])]  # alone first: it finds the inventory version served
        results += run_bounded(batches[1:], self._lookup, workers=self.workers, progress=progress,
                               label="Looking up Macs in Jamf Pro")
        found: dict[str, list[int]] = {}
        for batch in results:
            for serial, ids in batch.items():
                found.setdefault(serial, []).extend(ids)
        return {serial: sorted(set(ids)) for serial, ids in found.items()}

    def _lookup(self, batch: list[str]) -> dict[str, list[int]]:
        rsql = ",".join(f'hardware.serialNumber=="{serial}"' for serial in batch)
        found: dict[str, list[int]] = {}
        page = 0
        while True:
            query = urlencode([("section", "HARDWARE"), ("filter", rsql), ("page", page), ("page-size", 100)],
                              quote_via=quote)
            data = self._inventory(query)
            results = data.get("results") if isinstance(data, dict) else None
            for record in results if isinstance(results, list) else []:
                hardware = record.get("hardware") if isinstance(record, dict) else None
                serial = str((hardware or {}).get("serialNumber") or "").upper()
                if serial and str(record.get("id", "")).isdigit():
                    found.setdefault(serial, []).append(int(record["id"]))
            total = data.get("totalCount", 0) if isinstance(data, dict) else 0
            page += 1
            if not isinstance(total, int) or page * 100 >= total or not results:
                return found

    def _inventory(self, query: str) -> Any:
        versions = (self._inventory_version,) if self._inventory_version else INVENTORY_VERSIONS
        for version in versions:
            try:
                data = self.client.request("GET", f"/api/{version}/computers-inventory?{query}",
                                           doing="looking up Macs by serial number").json()
            except JamfHTTPError as exc:
                if exc.status == 404 and version != versions[-1]:
                    continue
                if exc.status == 404:
                    raise RemoteError(f"Jamf Pro at {self.client.base_url} serves none of "
                                      f"/api/{{{','.join(INVENTORY_VERSIONS)}}}/computers-inventory") from None
                raise
            self._inventory_version = version
            return data
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, profile_id: int, serial: str, *, just_created: bool = False) -> Stored:
        """GET one profile and reduce it to what is compared."""
        response = self.client.request("GET", f"{PROFILES}/id/{profile_id}", retry_404=just_created,
                                       doing=f"reading profile {profile_name(serial)!r} (id {profile_id})")
        data = response.json()
        try:
            data = data["os_x_configuration_profile"]
            general, scope = data.get("general") or {}, data.get("scope") or {}
        except (KeyError, TypeError, AttributeError):
            raise UnexpectedAnswer(f"Jamf Pro sent an unreadable profile {profile_name(serial)!r} "
                                   f"(id {profile_id})") from None
        category = general.get("category") if isinstance(general.get("category"), dict) else {}
        fields = jamf_fields(str(general.get("name", "")), str(general.get("description") or ""),
                             str(category.get("name", "")) if self.category is not None else None,
                             str(general.get("level", "")), str(general.get("distribution_method", "")),
                             general.get("user_removable") in (True, "true"), stored_scope(scope))
        try:
            profile = plistlib.loads(str(general.get("payloads") or "").strip().encode("utf-8"))
            if not isinstance(profile, dict):
                raise ValueError
        except Exception:  # plistlib raises several types; an unreadable payload is simply rewritten
            log.warning("jamf: the payload of %r (id %d) does not parse; it will be rewritten",
                        profile_name(serial), profile_id)
            return Stored(profile_id, serial, None, fields, None)
        return Stored(profile_id, serial, settings_digest(profile), fields, ServerKeys.of(profile))

    @staticmethod
    def _notes(unenrolled: list[str], listed: dict[str, tuple[int, str]],
               computers: dict[str, list[int]]) -> list[Note]:
        """What the summary should say beyond the plan: Macs not enrolled, serials shared by
        several computers."""
        notes = []
        if unenrolled:
            kept = [serial for serial in unenrolled if serial in listed]
            message = (f"{len(unenrolled)} Mac(s) are not enrolled in Jamf Pro (no computer has the serial): "
                       f"{first_of(unenrolled)}; no profile was made for them")
            if kept:
                message += f", and the existing profile of {len(kept)} of them was left as it is"
            notes.append(Note("unenrolled", message + ".", tuple(unenrolled)))
        shared = sorted(serial for serial, ids in computers.items() if len(ids) > 1)
        if shared:
            notes.append(Note("duplicate_serials", f"{len(shared)} serial(s) match several computers in "
                              f"Jamf Pro, and each profile is scoped to all of them: {first_of(shared)}.",
                              tuple(shared)))
        return notes

    # -- apply --

    def write(self, item: PlanItem) -> None:
        want: Wanted = item.desired
        if item.action is Action.CREATE:
            self._create(want)
        else:
            listed: Listed = item.remote
            self._update(want, listed.stored, listed.id)

    def delete(self, item: PlanItem) -> None:
        listed: Listed = item.remote
        try:
            self.client.request("DELETE", f"{PROFILES}/id/{listed.id}", accept="application/xml",
                                doing=f"deleting profile {item.key!r}")
        except JamfHTTPError as exc:
            if exc.status != 404:  # already gone
                raise

    def close(self) -> None:
        self.client.close()

    def _create(self, want: Wanted) -> None:
        body = profile_xml(want, category=self.category, payload=want.file.read().decode("utf-8"), redeploy=None)
        doing = f"creating profile {want.name!r}"
        try:
            reply = self.client.request("POST", f"{PROFILES}/id/0", body=body, content_type="application/xml",
                                        accept="application/xml", doing=doing)
        except JamfHTTPError as exc:
            if exc.status == 409 and "duplicate name" in exc.reason.lower():
                # It exists after all: an earlier attempt that timed out went through, or the listing
                # came from a Jamf Cloud node that had not seen it yet. Re-read it and update it (§8).
                self._adopt(want)
                return
            raise self._explain(exc) from None
        try:
            profile_id = int(reply.xml().findtext("id") or "")
        except ValueError:
            raise UnexpectedAnswer(f"Jamf Pro did not return the id of the new profile {want.name!r}") from None
        stored = self._read(profile_id, want.serial, just_created=True)
        self._check_stored(want, stored)

    def _adopt(self, want: Wanted) -> None:
        response = self.client.request("GET", f"{PROFILES}/name/{quote(want.name, safe='')}", retry_404=True,
                                       doing=f"reading profile {want.name!r}")
        data = response.json()
        try:
            profile_id = int(data["os_x_configuration_profile"]["general"]["id"])
        except (ValueError, KeyError, TypeError):
            raise UnexpectedAnswer(f"Jamf Pro sent an unreadable profile {want.name!r}") from None
        stored = self._read(profile_id, want.serial, just_created=True)
        if stored.sha256 != want.sha256:
            self._update(want, stored, profile_id)

    def _update(self, want: Wanted, stored: Stored | None, profile_id: int) -> None:
        settings_changed = stored is None or stored.settings != want.settings
        payload = None
        if settings_changed:
            profile = _parse_plist(want.file.read(), f"{want.file.path}")
            if stored is not None and stored.server_keys is not None:
                profile = stored.server_keys.apply(profile)
            payload = plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True).decode("utf-8")
        body = profile_xml(want, category=self.category, payload=payload,
                           redeploy="All" if settings_changed else "Newly Assigned")
        try:
            self.client.request("PUT", f"{PROFILES}/id/{profile_id}", body=body, content_type="application/xml",
                                accept="application/xml", doing=f"updating profile {want.name!r} (id {profile_id})")
        except JamfHTTPError as exc:
            if exc.status == 404:
                raise RemoteError(f"profile {want.name!r} (id {profile_id}) was deleted from Jamf Pro during the "
                                  "publish") from None
            raise self._explain(exc) from None

    def _check_stored(self, want: Wanted, stored: Stored) -> None:
        """A created profile must read back as sent, or every later run would rewrite it."""
        if stored.sha256 == want.sha256:
            return
        raise RemoteError(f"Jamf Pro stored profile {want.name!r} (id {stored.id}) differently from what was sent "
                          f"({', '.join(stored.differences(want)) or 'its payload does not parse'}), so every "
                          "publish would rewrite it; please report this")

    def _explain(self, exc: JamfHTTPError) -> JamfHTTPError:
        if exc.status == 409 and self.category is not None and "categor" in exc.reason.lower():
            return copy_with_message(exc, f"{exc}; does the category {self.category!r} exist in Jamf Pro "
                                          "(Settings > Global > Categories)?")
        return exc


def _macs(local: LocalOutput) -> dict[str, LocalFile]:
    """Each macOS device's profile file, by serial."""
    files = {f.relpath: f for f in local.files}
    macs = {}
    for serial, device in local.manifest.devices.items():
        if device.platform is Platform.MACOS and registry.MAC_PROFILE.name in device.files:
            macs[serial] = files[device_path(serial, registry.MAC_PROFILE.name)]
    return macs


def _parse_plist(data: bytes, where: str) -> dict[str, Any]:
    try:
        profile = plistlib.loads(data)
    except Exception as exc:  # plistlib raises several types for broken XML
        raise LocalOutputError(f"{where}: not a readable profile ({exc})") from None
    if not isinstance(profile, dict):
        raise LocalOutputError(f"{where}: not a configuration profile")
    return profile
