"""XenAPI class ``network``: one per interface name (bridge), with its PIFs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from migrate.rpc.dispatch import Api

CLASS = "network"
FIELDS = "uuid name_label name_description bridge PIFs VIFs other_config"


def record(api: Api, row: dict[str, Any]) -> dict[str, Any]:
    """The XenAPI record of a network row."""
    return {
        "uuid": row["uuid"],
        "name_label": row["name_label"],
        "name_description": "",
        "bridge": row["bridge"],
        "PIFs": [api.ref(p["uuid"]) for p in api.store.all("PIF", network=row["uuid"])],
        "VIFs": [],
        "other_config": {},
    }
