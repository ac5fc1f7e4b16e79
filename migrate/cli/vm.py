"""``xfer vm create|list|start|shutdown|destroy``: a host's VMs over XenAPI.

A VM here is a guest process over shared memory running a workload (``idle``,
``uniform:RATE``, ``hotset:RATE:SIZE``, ``ledger``, combined with ``+``), with its disks as
VBDs to VDIs. Each command logs in, makes its calls over JSON-RPC and logs out, as
:mod:`migrate.cli.rpc`'s do; failures are one line, ``xfer: error: CODE: params``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from typing import Any

from migrate.cli.http_client import ClientError
from migrate.cli.rpc import default_sr, session_command
from migrate.cli.rpc_client import Session
from migrate.cli.units import format_size
from migrate.formats.xapi import NULL_REF

WORKLOAD_KEY = "xfer_workload"
"""The key of a VM's ``other_config`` naming the workload its guest runs."""


@session_command
async def vm_create(session: Session, args: argparse.Namespace) -> int:
    """``xfer vm create --host HOST --memory SIZE [--vcpus N] [--name NAME]
    [--workload SPEC] [--disk SIZE [--sr UUID]]``: prints the new VM's uuid. With ``--disk``,
    a new VDI (in ``--sr``, else the default SR) is attached as device 0; a failure on the
    way leaves nothing behind."""
    if args.sr is not None and args.disk is None:
        raise ValueError("--sr needs --disk (it is where the disk is made)")
    record: dict[str, Any] = {
        "name_label": args.name,
        "name_description": "",
        "memory_static_max": args.memory,
        "memory_dynamic_max": args.memory,
        "memory_dynamic_min": args.memory,
        "memory_static_min": args.memory,
        "VCPUs_max": args.vcpus,
        "VCPUs_at_startup": args.vcpus,
        "other_config": {WORKLOAD_KEY: args.workload} if args.workload else {},
    }
    vm = await session.call("VM.create", record)
    try:
        if args.disk is not None:
            await _attach_new_disk(session, vm, args)
    except ClientError:
        with contextlib.suppress(ClientError):
            await session.call("VM.destroy", vm)
        raise
    print(await session.call("VM.get_uuid", vm))
    return 0


async def _attach_new_disk(session: Session, vm: str, args: argparse.Namespace) -> None:
    """A new VDI of ``args.disk`` bytes attached to ``vm`` read-write as device 0; raw
    (``sm_config`` type ``raw``), as a guest's block backend serves only raw data."""
    sr = await session.call("SR.get_by_uuid", args.sr) if args.sr else await default_sr(session)
    name = f"{args.name} disk" if args.name else "disk"
    vdi = await session.call(
        "VDI.create",
        {
            "SR": sr,
            "virtual_size": args.disk,
            "name_label": name,
            "type": "user",
            "sm_config": {"type": "raw"},
        },
    )
    try:
        await session.call(
            "VBD.create",
            {
                "VM": vm,
                "VDI": vdi,
                "userdevice": "0",
                "mode": "RW",
                "type": "Disk",
                "bootable": True,
                "empty": False,
                "other_config": {},
            },
        )
    except ClientError:
        with contextlib.suppress(ClientError):
            await session.call("VDI.destroy", vdi)
        raise


@session_command
async def vm_list(session: Session, args: argparse.Namespace) -> int:
    """``xfer vm list --host HOST [--json]``: uuid, name, power state, memory, vCPUs and the
    host each VM runs on (its uuid; none when halted)."""
    vms: dict[str, dict[str, Any]] = await session.call("VM.get_all_records")
    hosts: dict[str, dict[str, Any]] = await session.call("host.get_all_records")
    rows: list[dict[str, Any]] = [
        {
            "uuid": str(vm.get("uuid", "")),
            "name_label": str(vm.get("name_label", "")),
            "power_state": str(vm.get("power_state", "")),
            "memory": _integer(vm, "memory_static_max"),
            "VCPUs": _integer(vm, "VCPUs_max"),
            "workload": str((vm.get("other_config") or {}).get(WORKLOAD_KEY, "")),
            "resident_on": _host_uuid(hosts, vm.get("resident_on")),
        }
        for vm in vms.values()
        # a real xapi lists its templates and dom0 among the VMs
        if not vm.get("is_a_template") and not vm.get("is_control_domain")
    ]
    rows.sort(key=lambda row: (row["name_label"], row["uuid"]))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [("UUID", "NAME", "STATE", "MEMORY", "VCPUS", "WORKLOAD", "HOST")] + [
        (
            row["uuid"],
            row["name_label"],
            row["power_state"],
            format_size(row["memory"]),
            str(row["VCPUs"]),
            row["workload"],
            row["resident_on"] or "-",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        cells = [
            cell.rjust(w) if i in (3, 4) else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
    return 0


def _integer(record: dict[str, Any], field: str) -> int:
    """An int64 field of a record (XenAPI sends them as strings over XML-RPC)."""
    value = record.get(field, 0)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ClientError(f"the host sent a VM whose {field} is not a number: {value!r}") from None


def _host_uuid(hosts: dict[str, dict[str, Any]], host: object) -> str:
    """The uuid of the host ``host`` (a ref); empty for none, the ref itself if unknown."""
    if not isinstance(host, str) or host in ("", NULL_REF):
        return ""
    return str(hosts.get(host, {}).get("uuid", host))


@session_command
async def vm_start(session: Session, args: argparse.Namespace) -> int:
    """``xfer vm start --host HOST --vm UUID [--paused]``."""
    vm = await session.call("VM.get_by_uuid", args.vm)
    await session.call("VM.start", vm, args.paused, False)
    return 0


@session_command
async def vm_shutdown(session: Session, args: argparse.Namespace) -> int:
    """``xfer vm shutdown --host HOST --vm UUID [--force]``: a clean shutdown, or with
    ``--force`` a hard one (the guest process killed)."""
    vm = await session.call("VM.get_by_uuid", args.vm)
    await session.call("VM.hard_shutdown" if args.force else "VM.clean_shutdown", vm)
    return 0


@session_command
async def vm_destroy(session: Session, args: argparse.Namespace) -> int:
    """``xfer vm destroy --host HOST --vm UUID [--force] [--disks]``: forget a halted VM
    (``--force``: shut it down hard first); ``--disks`` destroys its VDIs too."""
    vm = await session.call("VM.get_by_uuid", args.vm)
    if args.force and await session.call("VM.get_power_state", vm) != "Halted":
        await session.call("VM.hard_shutdown", vm)
    vdis = []
    if args.disks:
        for vbd in await session.call("VM.get_VBDs", vm):
            vdi = await session.call("VBD.get_VDI", vbd)
            if vdi != NULL_REF:
                vdis.append(vdi)
    await session.call("VM.destroy", vm)
    for vdi in vdis:
        await session.call("VDI.destroy", vdi)
    return 0
