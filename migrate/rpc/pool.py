"""XenAPI class ``pool``: the one pool this host forms, with this host as its master.

The pool is not stored: its uuid is derived from the host's (uuid5), so it is the same at
every start, and its record from the host and the default SR.
"""

from __future__ import annotations

import uuid as uuidlib
from typing import TYPE_CHECKING, Any

from migrate.rpc.codec import ApiError

if TYPE_CHECKING:
    from migrate.rpc.dispatch import Api

NAMESPACE = uuidlib.UUID("0b6c2f4e-7a55-4c52-9d0e-5f1d3c1a9e21")
"""Namespace of the pool uuids derived from host uuids."""


def pool_uuid(api: Api) -> str:
    """The uuid of this host's pool."""
    return str(uuidlib.uuid5(NAMESPACE, api.host_uuid))


def pool_ref(api: Api) -> str:
    """The ref of this host's pool."""
    return api.ref(pool_uuid(api))


def check(api: Api, ref: Any) -> None:
    """HANDLE_INVALID unless ``ref`` is this host's pool."""
    if ref != pool_ref(api):
        raise ApiError("HANDLE_INVALID", "pool", ref)


def record(api: Api) -> dict[str, Any]:
    """The XenAPI record of the pool."""
    defaults = api.store.all("SR", is_default=1)
    default_sr = api.ref(defaults[0]["uuid"]) if defaults else "OpaqueRef:NULL"
    return {
        "uuid": pool_uuid(api),
        "name_label": "",
        "name_description": "",
        "master": api.ref(api.host_uuid),
        "default_SR": default_sr,
        "suspend_image_SR": default_sr,
        "crash_dump_SR": default_sr,
        "other_config": {},
        "gui_config": {},
        "tags": [],
        "allowed_operations": [],
        "current_operations": {},
        "ha_enabled": False,
        "ha_configuration": {},
        "wlb_enabled": False,
        "cpu_info": {},
        "restrictions": {},
        "migration_compression": False,
        "coordinator_bias": True,
    }


def get_all(api: Api, session: str) -> list[str]:
    """The one pool's ref."""
    return [pool_ref(api)]


def get_all_records(api: Api, session: str) -> dict[str, dict[str, Any]]:
    """The one pool's record by ref."""
    return {pool_ref(api): record(api)}


def get_record(api: Api, session: str, self: str) -> dict[str, Any]:
    """The pool's record."""
    check(api, self)
    return record(api)


def get_by_uuid(api: Api, session: str, uuid: str) -> str:
    """The ref of the pool ``uuid``."""
    if uuid != pool_uuid(api):
        raise ApiError("UUID_INVALID", "pool", uuid)
    return pool_ref(api)


def get_uuid(api: Api, session: str, self: str) -> str:
    """The pool's uuid."""
    check(api, self)
    return pool_uuid(api)


def get_name_label(api: Api, session: str, self: str) -> str:
    """The pool's name (empty, as for a pool xapi forms on its own)."""
    check(api, self)
    return str(record(api)["name_label"])


def get_name_description(api: Api, session: str, self: str) -> str:
    """The pool's description."""
    check(api, self)
    return str(record(api)["name_description"])


def get_master(api: Api, session: str, self: str) -> str:
    """The pool's master: this host."""
    check(api, self)
    return api.ref(api.host_uuid)


def get_default_SR(api: Api, session: str, self: str) -> str:
    """The default SR (``OpaqueRef:NULL`` if there is none)."""
    check(api, self)
    return str(record(api)["default_SR"])


def get_other_config(api: Api, session: str, self: str) -> dict[str, str]:
    """The pool's other_config (always empty)."""
    check(api, self)
    return {}


METHODS = {
    "pool.get_all": get_all,
    "pool.get_all_records": get_all_records,
    "pool.get_record": get_record,
    "pool.get_by_uuid": get_by_uuid,
    "pool.get_uuid": get_uuid,
    "pool.get_name_label": get_name_label,
    "pool.get_name_description": get_name_description,
    "pool.get_master": get_master,
    "pool.get_default_SR": get_default_SR,
    "pool.get_other_config": get_other_config,
}
