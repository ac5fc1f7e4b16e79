"""XenAPI class ``VDI``: the disks of an SR (only VDIs in state ``ready`` are visible)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import vhd
from migrate.rpc.codec import ApiError
from migrate.state.store import NotFound
from migrate.storage.sr import VdiInUse, create_vdi, destroy_vdi, snapshot_vdi, vdi_path

if TYPE_CHECKING:
    from migrate.rpc.dispatch import Api

CLASS = "VDI"
FIELDS = (
    "uuid name_label name_description SR virtual_size physical_utilisation type sharable"
    " read_only managed missing is_a_snapshot snapshot_of snapshots location VBDs sm_config"
    " other_config xenstore_data tags"
)
NULL_REF = "OpaqueRef:NULL"


def _file_size(sr_path: str, uuid: str) -> int:
    try:
        return os.stat(vdi_path(sr_path, uuid)).st_size
    except OSError:
        return 0


def record(api: Api, row: dict[str, Any], sr_path: str | None = None) -> dict[str, Any]:
    """The XenAPI record of a VDI row (``sr_path``: its SR's directory, if known)."""
    if sr_path is None:
        sr_path = str(api.store.get("SR", row["sr"])["path"])
    sm_config = {"vhd-parent": row["parent"]} if row["parent"] else {}
    snapshot_of = NULL_REF
    if row["snapshot_of"] is not None:
        try:
            if api.store.get("VDI", row["snapshot_of"])["state"] == "ready":
                snapshot_of = api.ref(row["snapshot_of"])
        except NotFound:
            pass
    snapshots = api.store.all("VDI", snapshot_of=row["uuid"], is_a_snapshot=1, state="ready")
    return {
        "uuid": row["uuid"],
        "name_label": row["name_label"],
        "name_description": "",
        "SR": api.ref(row["sr"]),
        "virtual_size": int(row["virtual_size"]),
        "physical_utilisation": _file_size(sr_path, row["uuid"]),
        "type": "user",
        "sharable": False,
        "read_only": False,
        "managed": bool(row["managed"]),
        "missing": False,
        "is_a_snapshot": bool(row["is_a_snapshot"]),
        "snapshot_of": snapshot_of,
        "snapshots": [api.ref(snapshot["uuid"]) for snapshot in snapshots],
        "location": row["uuid"],
        "VBDs": [],
        "sm_config": sm_config,
        "other_config": {},
        "xenstore_data": {},
        "tags": [],
    }


def get_all_records(api: Api, session: str) -> dict[str, dict[str, Any]]:
    """Every (ready) VDI's record by ref (each SR's directory read once, not per VDI)."""
    paths = {row["uuid"]: str(row["path"]) for row in api.store.all("SR")}
    return {api.ref(row["uuid"]): record(api, row, paths[row["sr"]]) for row in api.rows("VDI")}


def set_name_label(api: Api, session: str, self: str, value: str) -> None:
    """Rename a VDI."""
    row = api.row("VDI", self)
    if not isinstance(value, str):
        raise ApiError("FIELD_TYPE_ERROR", "name_label")
    api.store.update("VDI", row["uuid"], {"name_label": value})


def _int(value: Any, field: str) -> int:
    """An API int: a JSON number, or the decimal string XML-RPC carries."""
    if isinstance(value, bool):
        raise ApiError("FIELD_TYPE_ERROR", field)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ApiError("FIELD_TYPE_ERROR", field)


def create(api: Api, session: str, args: dict[str, Any]) -> str:
    """A new empty VDI from a record's ``SR``, ``virtual_size`` and ``name_label`` (other
    fields are ignored); its ref."""
    if not isinstance(args, dict):
        raise ApiError("FIELD_TYPE_ERROR", "args")
    for field in ("SR", "virtual_size"):
        if field not in args:
            raise ApiError("FIELD_TYPE_ERROR", field)
    sr_uuid = api.row("SR", args["SR"])["uuid"]
    size = _int(args["virtual_size"], "virtual_size")
    name_label = args.get("name_label", "")
    if not isinstance(name_label, str):
        raise ApiError("FIELD_TYPE_ERROR", "name_label")
    try:
        uuid = create_vdi(api.store, sr_uuid, size, name_label)
    except vhd.VhdError as e:
        raise ApiError("INVALID_VALUE", "virtual_size", args["virtual_size"], str(e)) from None
    return api.ref(uuid)


def _not_being_written(api: Api, uuid: str, ref: str) -> None:
    if uuid in api.writing:
        raise ApiError("VDI_IN_USE", ref, "import")


def destroy(api: Api, session: str, self: str) -> None:
    """Destroy a VDI and its file; VDI_IN_USE while other VDIs name it as their parent or
    an import writes it."""
    row = api.row("VDI", self)
    _not_being_written(api, row["uuid"], self)
    try:
        destroy_vdi(api.store, row["uuid"])
    except VdiInUse:
        raise ApiError("VDI_IN_USE", self) from None
    except NotFound:
        raise ApiError("HANDLE_INVALID", "VDI", self) from None


def snapshot(api: Api, session: str, vdi: str, driver_params: dict[str, Any] | None = None) -> str:
    """Snapshot a VDI: its content so far moves into a hidden base copy (``managed`` false)
    that the VDI and the new snapshot both read through; the snapshot's ref.
    ``driver_params`` are accepted and ignored."""
    row = api.row("VDI", vdi)
    if driver_params is not None and not isinstance(driver_params, dict):
        raise ApiError("FIELD_TYPE_ERROR", "driver_params")
    if not row["managed"]:
        raise ApiError("OPERATION_NOT_ALLOWED", f"VDI {vdi} is a base copy (not managed)")
    _not_being_written(api, row["uuid"], vdi)
    try:
        uuid = snapshot_vdi(api.store, row["uuid"])
    except NotFound:
        raise ApiError("HANDLE_INVALID", "VDI", vdi) from None
    return api.ref(uuid)


METHODS = {
    "VDI.get_all_records": get_all_records,
    "VDI.set_name_label": set_name_label,
    "VDI.create": create,
    "VDI.destroy": destroy,
    "VDI.snapshot": snapshot,
}
ASYNC = frozenset({"VDI.create", "VDI.destroy", "VDI.snapshot"})
"""Long calls also served as ``Async.<name>``, returning a task."""
