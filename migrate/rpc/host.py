"""XenAPI class ``host``: this host, its address and its PIFs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from migrate.rpc.dispatch import Api

API_VERSION_MAJOR = 2
API_VERSION_MINOR = 21


def record(api: Api, row: dict[str, Any]) -> dict[str, Any]:
    """The XenAPI record of a host row."""
    return {
        "uuid": row["uuid"],
        "name_label": row["name_label"],
        "name_description": "",
        "hostname": row["name_label"],
        "address": row["address"],
        "enabled": True,
        "PIFs": [api.ref(p["uuid"]) for p in api.store.all("PIF", host=row["uuid"])],
        "PBDs": [],
        "resident_VMs": [],
        "API_version_major": API_VERSION_MAJOR,
        "API_version_minor": API_VERSION_MINOR,
        "API_version_vendor": "xfer",
        "other_config": {},
    }


def get_all(api: Api, session: str) -> list[str]:
    """Every host's ref."""
    return [api.ref(row["uuid"]) for row in api.store.all("host")]


def get_all_records(api: Api, session: str) -> dict[str, dict[str, Any]]:
    """Every host's record by ref."""
    return {api.ref(row["uuid"]): record(api, row) for row in api.store.all("host")}


def get_record(api: Api, session: str, self: str) -> dict[str, Any]:
    """One host's record."""
    return record(api, api.row("host", self))


def get_by_uuid(api: Api, session: str, uuid: str) -> str:
    """The ref of the host ``uuid``."""
    return api.by_uuid("host", uuid)


def get_uuid(api: Api, session: str, self: str) -> str:
    """A host's uuid."""
    return str(api.row("host", self)["uuid"])


def get_address(api: Api, session: str, self: str) -> str:
    """A host's address, bare (no brackets)."""
    return str(api.row("host", self)["address"])


def get_name_label(api: Api, session: str, self: str) -> str:
    """A host's name."""
    return str(api.row("host", self)["name_label"])


def get_PIFs(api: Api, session: str, self: str) -> list[str]:
    """A host's PIFs."""
    return list(record(api, api.row("host", self))["PIFs"])


def get_API_version_major(api: Api, session: str, self: str) -> int:
    """The API version this host speaks, major part."""
    api.row("host", self)
    return API_VERSION_MAJOR


def get_API_version_minor(api: Api, session: str, self: str) -> int:
    """The API version this host speaks, minor part."""
    api.row("host", self)
    return API_VERSION_MINOR


METHODS = {
    "host.get_all": get_all,
    "host.get_all_records": get_all_records,
    "host.get_record": get_record,
    "host.get_by_uuid": get_by_uuid,
    "host.get_uuid": get_uuid,
    "host.get_address": get_address,
    "host.get_name_label": get_name_label,
    "host.get_PIFs": get_PIFs,
    "host.get_API_version_major": get_API_version_major,
    "host.get_API_version_minor": get_API_version_minor,
}
