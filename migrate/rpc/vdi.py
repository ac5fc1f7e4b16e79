"""XenAPI class ``VDI``: the disks of an SR (only VDIs in state ``ready`` are visible)."""

from __future__ import annotations

import contextlib
from typing import Any

import vhd
from migrate.formats.xapi import NULL_REF, ref
from migrate.host.errors import (
    FIELD_TYPE_ERROR,
    HANDLE_INVALID,
    INVALID_VALUE,
    OPERATION_NOT_ALLOWED,
    VDI_IN_USE,
    ApiError,
)
from migrate.host.services import HostServices
from migrate.rpc import refs
from migrate.rpc.values import api_int, api_map
from migrate.state.store import NotFound
from migrate.state.vms import vbds_of_vdi
from migrate.storage.snapshot import snapshot_vdi
from migrate.storage.sr import VdiInUse, create_vdi, destroy_vdi, vdi_file_size

SM_TYPES = ("vhd", "raw")
"""``sm_config["type"]`` of a new VDI."""
CLASS = "VDI"
FIELDS = (
    "uuid name_label name_description SR virtual_size physical_utilisation type sharable"
    " read_only managed missing is_a_snapshot snapshot_of snapshots location VBDs sm_config"
    " other_config xenstore_data tags"
)


def record(host: HostServices, row: dict[str, Any], sr_path: str | None = None) -> dict[str, Any]:
    """The XenAPI record of a VDI row (``sr_path``: its SR's directory, if known)."""
    if sr_path is None:
        sr_path = str(host.store.get("SR", row["sr"])["path"])
    sm_config = {"vhd-parent": row["parent"]} if row["parent"] else {}
    snapshot_of = NULL_REF
    if row["snapshot_of"] is not None:
        with contextlib.suppress(NotFound):  # gone, or not ready
            snapshot_of = ref(host.store.get_visible("VDI", row["snapshot_of"])["uuid"])
    snapshots = host.store.all("VDI", snapshot_of=row["uuid"], is_a_snapshot=1, state="ready")
    return {
        "uuid": row["uuid"],
        "name_label": row["name_label"],
        "name_description": "",
        "SR": ref(row["sr"]),
        "virtual_size": int(row["virtual_size"]),
        "physical_utilisation": vdi_file_size(sr_path, row["uuid"]),
        "type": "user",
        "sharable": False,
        "read_only": False,
        "managed": bool(row["managed"]),
        "missing": False,
        "is_a_snapshot": bool(row["is_a_snapshot"]),
        "snapshot_of": snapshot_of,
        "snapshots": [ref(snapshot["uuid"]) for snapshot in snapshots],
        "location": row["uuid"],
        "VBDs": [ref(vbd["uuid"]) for vbd in vbds_of_vdi(host.store, row["uuid"])],
        "sm_config": sm_config,
        "other_config": {},
        "xenstore_data": {},
        "tags": [],
    }


def get_all_records(host: HostServices, session: str) -> dict[str, dict[str, Any]]:
    """Every (ready) VDI's record by ref (each SR's directory read once, not per VDI)."""
    paths = {row["uuid"]: str(row["path"]) for row in host.store.all("SR")}
    return {
        ref(row["uuid"]): record(host, row, paths[row["sr"]])
        for row in host.store.all_visible("VDI")
    }


def set_name_label(host: HostServices, session: str, self: str, value: str) -> None:
    """Rename a VDI."""
    row = refs.row(host.store, "VDI", self)
    if not isinstance(value, str):
        raise ApiError(FIELD_TYPE_ERROR, "name_label")
    host.store.update("VDI", row["uuid"], {"name_label": value})


def create(host: HostServices, session: str, args: dict[str, Any]) -> str:
    """A new empty VDI from a record's ``SR``, ``virtual_size``, ``name_label`` and
    ``sm_config["type"]`` (other fields are ignored); its ref. As on xapi's file SRs,
    ``type`` ``raw`` makes a disk whose data lies raw in its file (here a fixed VHD: what a
    VM's disk must be), ``vhd`` (the default) a sparse dynamic VHD."""
    if not isinstance(args, dict):
        raise ApiError(FIELD_TYPE_ERROR, "args")
    for field in ("SR", "virtual_size"):
        if field not in args:
            raise ApiError(FIELD_TYPE_ERROR, field)
    sr_uuid = refs.row(host.store, "SR", args["SR"])["uuid"]
    size = api_int(args["virtual_size"], "virtual_size")
    name_label = args.get("name_label", "")
    if not isinstance(name_label, str):
        raise ApiError(FIELD_TYPE_ERROR, "name_label")
    sm_type = api_map(args.get("sm_config", {}), "sm_config").get("type", "vhd")
    if sm_type not in SM_TYPES:
        raise ApiError(INVALID_VALUE, "sm_config", sm_type, "type must be vhd or raw")
    try:
        uuid = create_vdi(host.store, sr_uuid, size, name_label, fixed=sm_type == "raw")
    except vhd.VhdError as e:
        raise ApiError(INVALID_VALUE, "virtual_size", args["virtual_size"], str(e)) from None
    return ref(uuid)


def _not_being_written(host: HostServices, uuid: str, vdi: str) -> None:
    holder = host.claims.holder(uuid)
    if holder is not None:
        raise ApiError(VDI_IN_USE, vdi, holder)


def destroy(host: HostServices, session: str, self: str) -> None:
    """Destroy a VDI, its file and the VBDs that attach it; VDI_IN_USE while other VDIs
    name it as their parent, or an import or a live VM writes it."""
    row = refs.row(host.store, "VDI", self)
    _not_being_written(host, row["uuid"], self)
    attached = vbds_of_vdi(host.store, row["uuid"])
    if host.store.all("VDI", parent=row["uuid"]):
        raise ApiError(VDI_IN_USE, self)
    with host.store.change():
        for vbd in attached:
            host.store.delete("VBD", vbd["uuid"])
    try:
        destroy_vdi(host.store, row["uuid"])
    except VdiInUse:
        raise ApiError(VDI_IN_USE, self) from None
    except NotFound:
        raise ApiError(HANDLE_INVALID, "VDI", self) from None


def snapshot(
    host: HostServices, session: str, vdi: str, driver_params: dict[str, Any] | None = None
) -> str:
    """Snapshot a VDI: its content so far moves into a hidden base copy (``managed`` false)
    that the VDI and the new snapshot both read through; the snapshot's ref.
    ``driver_params`` are accepted and ignored."""
    row = refs.row(host.store, "VDI", vdi)
    if driver_params is not None and not isinstance(driver_params, dict):
        raise ApiError(FIELD_TYPE_ERROR, "driver_params")
    if not row["managed"]:
        raise ApiError(OPERATION_NOT_ALLOWED, f"VDI {vdi} is a base copy (not managed)")
    _not_being_written(host, row["uuid"], vdi)
    try:
        uuid = snapshot_vdi(host.store, row["uuid"])
    except NotFound:
        raise ApiError(HANDLE_INVALID, "VDI", vdi) from None
    return ref(uuid)


METHODS = {
    "VDI.get_all_records": get_all_records,
    "VDI.set_name_label": set_name_label,
    "VDI.create": create,
    "VDI.destroy": destroy,
    "VDI.snapshot": snapshot,
}
ASYNC = frozenset({"VDI.create", "VDI.destroy", "VDI.snapshot"})
"""Long calls also served as ``Async.<name>``, returning a task."""
