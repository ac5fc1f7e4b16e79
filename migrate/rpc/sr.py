"""XenAPI class ``SR``: storage repositories, directories of VHD files."""

from __future__ import annotations

from typing import Any

from migrate.formats.xapi import ref
from migrate.host.services import HostServices
from migrate.storage.sr import ready_vdis

CLASS = "SR"
FIELDS = (
    "uuid name_label name_description type content_type shared VDIs PBDs virtual_allocation"
    " other_config sm_config"
)
SR_TYPE = "ext"
"""What xapi calls a local SR of VHD files."""


def record(host: HostServices, row: dict[str, Any]) -> dict[str, Any]:
    """The XenAPI record of an SR row."""
    vdis = ready_vdis(host.store, row["uuid"])
    return {
        "uuid": row["uuid"],
        "name_label": row["name_label"],
        "name_description": "",
        "type": SR_TYPE,
        "content_type": "",
        "shared": bool(row["shared"]),
        "VDIs": [ref(v["uuid"]) for v in vdis],
        "PBDs": [],
        "virtual_allocation": sum(int(v["virtual_size"]) for v in vdis),
        "other_config": {},
        "sm_config": {},
    }


def get_by_name_label(host: HostServices, session: str, label: str) -> list[str]:
    """The refs of the SRs named ``label``."""
    if not isinstance(label, str):
        return []
    return [ref(row["uuid"]) for row in host.store.all("SR", name_label=label)]


METHODS = {"SR.get_by_name_label": get_by_name_label}
