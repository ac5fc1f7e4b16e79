"""XenAPI class ``SR``: storage repositories, directories of VHD files."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from migrate.storage.sr import ready_vdis

if TYPE_CHECKING:
    from migrate.rpc.dispatch import Api

SR_TYPE = "ext"
"""What xapi calls a local SR of VHD files."""


def record(api: Api, row: dict[str, Any]) -> dict[str, Any]:
    """The XenAPI record of an SR row."""
    vdis = ready_vdis(api.store, row["uuid"])
    return {
        "uuid": row["uuid"],
        "name_label": row["name_label"],
        "name_description": "",
        "type": SR_TYPE,
        "content_type": "",
        "shared": False,
        "VDIs": [api.ref(v["uuid"]) for v in vdis],
        "PBDs": [],
        "virtual_allocation": sum(int(v["virtual_size"]) for v in vdis),
        "other_config": {},
        "sm_config": {},
    }


def get_all(api: Api, session: str) -> list[str]:
    """Every SR's ref."""
    return [api.ref(row["uuid"]) for row in api.store.all("SR")]


def get_all_records(api: Api, session: str) -> dict[str, dict[str, Any]]:
    """Every SR's record by ref."""
    return {api.ref(row["uuid"]): record(api, row) for row in api.store.all("SR")}


def get_record(api: Api, session: str, self: str) -> dict[str, Any]:
    """One SR's record."""
    return record(api, api.row("SR", self))


def get_by_uuid(api: Api, session: str, uuid: str) -> str:
    """The ref of the SR ``uuid``."""
    return api.by_uuid("SR", uuid)


def get_by_name_label(api: Api, session: str, label: str) -> list[str]:
    """The refs of the SRs named ``label``."""
    if not isinstance(label, str):
        return []
    return [api.ref(row["uuid"]) for row in api.store.all("SR", name_label=label)]


def get_VDIs(api: Api, session: str, self: str) -> list[str]:
    """An SR's (ready) VDIs."""
    row = api.row("SR", self)
    return [api.ref(v["uuid"]) for v in ready_vdis(api.store, row["uuid"])]


def get_uuid(api: Api, session: str, self: str) -> str:
    """An SR's uuid."""
    return str(api.row("SR", self)["uuid"])


def get_name_label(api: Api, session: str, self: str) -> str:
    """An SR's name."""
    return str(api.row("SR", self)["name_label"])


def get_type(api: Api, session: str, self: str) -> str:
    """An SR's type."""
    api.row("SR", self)
    return SR_TYPE


METHODS = {
    "SR.get_all": get_all,
    "SR.get_all_records": get_all_records,
    "SR.get_record": get_record,
    "SR.get_by_uuid": get_by_uuid,
    "SR.get_by_name_label": get_by_name_label,
    "SR.get_VDIs": get_VDIs,
    "SR.get_uuid": get_uuid,
    "SR.get_name_label": get_name_label,
    "SR.get_type": get_type,
}
