"""Refs on the XenAPI wire: the record a ref or a uuid names, as xapi answers for it.

A ref is ``OpaqueRef:<uuid>`` of the record (:mod:`migrate.formats.xapi`). A ref that names no
visible record is HANDLE_INVALID, a uuid that names none UUID_INVALID. These run inside a
database call.
"""

from __future__ import annotations

from typing import Any

from migrate.formats.xapi import ref, ref_uuid
from migrate.host.errors import HANDLE_INVALID, UUID_INVALID, ApiError
from migrate.state.store import NotFound, Store


def uuid_of(cls: str, value: Any) -> str:
    """The uuid the ref ``value`` names, unchecked; HANDLE_INVALID when it is no ref."""
    uuid = ref_uuid(value)
    if uuid is None:
        raise ApiError(HANDLE_INVALID, cls, value)
    return uuid


def row(store: Store, cls: str, value: Any) -> dict[str, Any]:
    """The row of the visible record ``value`` names; HANDLE_INVALID if there is none."""
    try:
        return store.get_visible(cls, uuid_of(cls, value))
    except NotFound:
        raise ApiError(HANDLE_INVALID, cls, value) from None


def by_uuid(store: Store, cls: str, uuid: Any) -> str:
    """The ref of the visible record ``uuid``; UUID_INVALID if there is none."""
    if isinstance(uuid, str):
        try:
            store.get_visible(cls, uuid)
        except NotFound:
            pass
        else:
            return ref(uuid)
    raise ApiError(UUID_INVALID, cls, uuid)
