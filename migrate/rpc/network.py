"""XenAPI class ``network``: one per interface name (bridge), with its PIFs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from migrate.rpc.dispatch import Api


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


def get_all(api: Api, session: str) -> list[str]:
    """Every network's ref."""
    return [api.ref(row["uuid"]) for row in api.store.all("network")]


def get_all_records(api: Api, session: str) -> dict[str, dict[str, Any]]:
    """Every network's record by ref."""
    return {api.ref(row["uuid"]): record(api, row) for row in api.store.all("network")}


def get_record(api: Api, session: str, self: str) -> dict[str, Any]:
    """One network's record."""
    return record(api, api.row("network", self))


def get_by_uuid(api: Api, session: str, uuid: str) -> str:
    """The ref of the network ``uuid``."""
    return api.by_uuid("network", uuid)


def get_uuid(api: Api, session: str, self: str) -> str:
    """A network's uuid."""
    return str(api.row("network", self)["uuid"])


def get_PIFs(api: Api, session: str, self: str) -> list[str]:
    """A network's PIFs."""
    return list(record(api, api.row("network", self))["PIFs"])


def get_name_label(api: Api, session: str, self: str) -> str:
    """A network's name."""
    return str(api.row("network", self)["name_label"])


def get_bridge(api: Api, session: str, self: str) -> str:
    """A network's bridge (interface name)."""
    return str(api.row("network", self)["bridge"])


METHODS = {
    "network.get_all": get_all,
    "network.get_all_records": get_all_records,
    "network.get_record": get_record,
    "network.get_by_uuid": get_by_uuid,
    "network.get_uuid": get_uuid,
    "network.get_PIFs": get_PIFs,
    "network.get_name_label": get_name_label,
    "network.get_bridge": get_bridge,
}
