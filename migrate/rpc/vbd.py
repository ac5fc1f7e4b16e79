"""XenAPI class ``VBD``: a VDI seen by a VM as one of its disks.

Disks are attached when their VM starts: a VBD is made and destroyed while its VM is Halted
(``VM_BAD_POWER_STATE`` otherwise), and is ``currently_attached`` while the VM is live.
"""

from __future__ import annotations

from typing import Any

from migrate.formats.xapi import ref
from migrate.host.errors import (
    DEVICE_ALREADY_EXISTS,
    FIELD_TYPE_ERROR,
    INVALID_VALUE,
    OPERATION_NOT_ALLOWED,
    ApiError,
)
from migrate.host.services import HostServices
from migrate.rpc import refs
from migrate.rpc.values import api_str
from migrate.rpc.vm import expect_state
from migrate.state import vms
from migrate.state.vms import LIVE, device_name

CLASS = "VBD"
FIELDS = (
    "uuid VM VDI device userdevice bootable mode type unpluggable currently_attached empty"
    " other_config allowed_operations current_operations status_code status_detail"
    " qos_algorithm_type qos_algorithm_params runtime_properties"
)
MAX_DEVICES = 16
"""Disks per VM (``userdevice`` 0 to 15, ``xvda`` to ``xvdp``)."""
MODES = ("RW", "RO")


def record(host: HostServices, row: dict[str, Any]) -> dict[str, Any]:
    """The XenAPI record of a VBD row."""
    live = host.store.get("VM", row["vm"])["power_state"] in LIVE
    return {
        "uuid": row["uuid"],
        "VM": ref(row["vm"]),
        "VDI": ref(row["vdi"]),
        "device": device_name(row["device"]) if live else "",
        "userdevice": row["device"],
        "bootable": row["device"] == "0",
        "mode": row["mode"],
        "type": "Disk",
        "unpluggable": False,
        "currently_attached": live,
        "empty": False,
        "other_config": {},
        "allowed_operations": [],
        "current_operations": {},
        "status_code": 0,
        "status_detail": "",
        "qos_algorithm_type": "",
        "qos_algorithm_params": {},
        "runtime_properties": {},
    }


def _userdevice(value: Any, taken: set[str]) -> str:
    """The ``userdevice`` asked for: a number below MAX_DEVICES, or ``autodetect`` for the
    lowest free one. INVALID_VALUE, or DEVICE_ALREADY_EXISTS when taken."""
    text = api_str(value, "userdevice")
    if text == "autodetect":
        free = [str(n) for n in range(MAX_DEVICES) if str(n) not in taken]
        if not free:
            raise ApiError(INVALID_VALUE, "userdevice", text, f"all {MAX_DEVICES} are taken")
        return free[0]
    if not (text.isdigit() and int(text) < MAX_DEVICES and str(int(text)) == text):
        raise ApiError(INVALID_VALUE, "userdevice", text, f"expected 0 to {MAX_DEVICES - 1}")
    if text in taken:
        raise ApiError(DEVICE_ALREADY_EXISTS, text)
    return text


def create(host: HostServices, session: str, args: Any) -> str:
    """A new VBD from a record's ``VM``, ``VDI``, ``userdevice`` (default ``autodetect``),
    ``mode`` (``RW`` or ``RO``, default ``RW``) and ``type`` (``Disk``); other fields are
    ignored. The VM must be Halted, the VDI managed (not a snapshot's base copy). Its ref."""
    if not isinstance(args, dict):
        raise ApiError(FIELD_TYPE_ERROR, "args")
    for field in ("VM", "VDI"):
        if field not in args:
            raise ApiError(FIELD_TYPE_ERROR, field)
    vm_row = refs.row(host.store, "VM", args["VM"])
    vdi_row = refs.row(host.store, "VDI", args["VDI"])
    if not vdi_row["managed"]:
        raise ApiError(OPERATION_NOT_ALLOWED, f"VDI {args['VDI']} is a base copy (not managed)")
    mode = api_str(args.get("mode", "RW"), "mode")
    if mode not in MODES:
        raise ApiError(INVALID_VALUE, "mode", mode, "expected RW or RO")
    kind = api_str(args.get("type", "Disk"), "type")
    if kind != "Disk":
        raise ApiError(INVALID_VALUE, "type", kind, "only Disk is supported")
    expect_state(args["VM"], vm_row, ("Halted",))
    taken = {row["device"] for row in vms.vbds(host.store, vm_row["uuid"])}
    device = _userdevice(args.get("userdevice", "autodetect"), taken)
    return ref(vms.insert_vbd(host.store, vm_row["uuid"], vdi_row["uuid"], device, mode))


def destroy(host: HostServices, session: str, self: str) -> None:
    """Forget a VBD (not its VDI); its VM must be Halted."""
    row = refs.row(host.store, "VBD", self)
    expect_state(ref(row["vm"]), host.store.get("VM", row["vm"]), ("Halted",))
    host.store.delete("VBD", row["uuid"])


METHODS = {"VBD.create": create, "VBD.destroy": destroy}
