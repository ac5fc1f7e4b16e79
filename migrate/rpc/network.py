"""XenAPI class ``network``: one per interface name (bridge), with its PIFs."""

from __future__ import annotations

from typing import Any

from migrate.formats.xapi import ref
from migrate.host.services import HostServices

CLASS = "network"
FIELDS = "uuid name_label name_description bridge PIFs VIFs other_config"


def record(host: HostServices, row: dict[str, Any]) -> dict[str, Any]:
    """The XenAPI record of a network row."""
    return {
        "uuid": row["uuid"],
        "name_label": row["name_label"],
        "name_description": "",
        "bridge": row["bridge"],
        "PIFs": [ref(p["uuid"]) for p in host.store.all("PIF", network=row["uuid"])],
        "VIFs": [],
        "other_config": {},
    }
