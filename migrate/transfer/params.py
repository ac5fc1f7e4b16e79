"""A transfer request's parameters, as xapi reads them: from the query or, failing that, a
cookie (xapi lets every query parameter come as one); and the records they name.
"""

from __future__ import annotations

from typing import Any

from migrate.formats.xapi import FORMATS, REF_PREFIX, ref_uuid
from migrate.http.errors import HTTPError
from migrate.http.routing import Request, param
from migrate.state.store import NotFound, Store
from migrate.storage.sr import vdi_path


def disk_format(request: Request) -> str:
    """The ``format`` parameter (default raw); HTTPError 400 unless raw or vhd."""
    fmt = param(request, "format") or "raw"
    if fmt not in FORMATS:
        raise HTTPError(400, f"format={fmt}: expected raw or vhd")
    return fmt


def lookup(store: Store, cls: str, name: str, value: str) -> dict[str, Any]:
    """The visible record the parameter ``name`` names by uuid or ref; HTTPError 404 if there
    is none. Inside a database call."""
    uuid = ref_uuid(value) if value.startswith(REF_PREFIX) else value
    try:
        if uuid is None:
            raise NotFound(value)
        return store.get_visible(cls, uuid)
    except NotFound:
        raise HTTPError(404, f"{name}={value}: no such {cls}") from None


def vdi_file(store: Store, row: dict[str, Any]) -> str:
    """The file of the VDI ``row``."""
    return vdi_path(store.get("SR", row["sr"])["path"], row["uuid"])
