"""XenAPI class ``pool``: the one pool this host forms, with this host as its master.

The pool is not stored: its uuid is derived from the host's (uuid5), so it is the same at
every start, and its record from the host and the default SR.
"""

from __future__ import annotations

import uuid as uuidlib
from typing import Any

from migrate.formats.xapi import NULL_REF, ref
from migrate.host.errors import HANDLE_INVALID, UUID_INVALID, ApiError
from migrate.host.services import HostServices

NAMESPACE = uuidlib.UUID("0b6c2f4e-7a55-4c52-9d0e-5f1d3c1a9e21")
"""Namespace of the pool uuids derived from host uuids."""


def pool_uuid(host: HostServices) -> str:
    """The uuid of this host's pool."""
    return str(uuidlib.uuid5(NAMESPACE, host.uuid))


def pool_ref(host: HostServices) -> str:
    """The ref of this host's pool."""
    return ref(pool_uuid(host))


def check(host: HostServices, value: Any) -> None:
    """HANDLE_INVALID unless ``value`` is the ref of this host's pool."""
    if value != pool_ref(host):
        raise ApiError(HANDLE_INVALID, "pool", value)


def record(host: HostServices) -> dict[str, Any]:
    """The XenAPI record of the pool."""
    defaults = host.store.all("SR", is_default=1)
    default_sr = ref(defaults[0]["uuid"]) if defaults else NULL_REF
    return {
        "uuid": pool_uuid(host),
        "name_label": "",
        "name_description": "",
        "master": ref(host.uuid),
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


def get_all(host: HostServices, session: str) -> list[str]:
    """The one pool's ref."""
    return [pool_ref(host)]


def get_all_records(host: HostServices, session: str) -> dict[str, dict[str, Any]]:
    """The one pool's record by ref."""
    return {pool_ref(host): record(host)}


def get_record(host: HostServices, session: str, self: str) -> dict[str, Any]:
    """The pool's record."""
    check(host, self)
    return record(host)


def get_by_uuid(host: HostServices, session: str, uuid: str) -> str:
    """The ref of the pool ``uuid``."""
    if uuid != pool_uuid(host):
        raise ApiError(UUID_INVALID, "pool", uuid)
    return pool_ref(host)


def get_uuid(host: HostServices, session: str, self: str) -> str:
    """The pool's uuid."""
    check(host, self)
    return pool_uuid(host)


def get_name_label(host: HostServices, session: str, self: str) -> str:
    """The pool's name (empty, as for a pool xapi forms on its own)."""
    check(host, self)
    return str(record(host)["name_label"])


def get_name_description(host: HostServices, session: str, self: str) -> str:
    """The pool's description."""
    check(host, self)
    return str(record(host)["name_description"])


def get_master(host: HostServices, session: str, self: str) -> str:
    """The pool's master: this host."""
    check(host, self)
    return ref(host.uuid)


def get_default_SR(host: HostServices, session: str, self: str) -> str:
    """The default SR (``OpaqueRef:NULL`` if there is none)."""
    check(host, self)
    return str(record(host)["default_SR"])


def get_other_config(host: HostServices, session: str, self: str) -> dict[str, str]:
    """The pool's other_config (always empty)."""
    check(host, self)
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
