"""XenAPI class ``host``: this host, its address and its PIFs."""

from __future__ import annotations

from typing import Any

from migrate.formats.xapi import ref
from migrate.host.services import HostServices

CLASS = "host"
FIELDS = (
    "uuid name_label name_description hostname address enabled PIFs PBDs resident_VMs"
    " API_version_major API_version_minor API_version_vendor other_config"
)
API_VERSION_MAJOR = 2
API_VERSION_MINOR = 21


def record(host: HostServices, row: dict[str, Any]) -> dict[str, Any]:
    """The XenAPI record of a host row."""
    return {
        "uuid": row["uuid"],
        "name_label": row["name_label"],
        "name_description": "",
        "hostname": row["name_label"],
        "address": row["address"],
        "enabled": True,
        "PIFs": [ref(p["uuid"]) for p in host.store.all("PIF", host=row["uuid"])],
        "PBDs": [],
        "resident_VMs": [],
        "API_version_major": API_VERSION_MAJOR,
        "API_version_minor": API_VERSION_MINOR,
        "API_version_vendor": "xfer",
        "other_config": {},
    }
