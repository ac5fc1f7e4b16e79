"""VM and VBD records: a VM's size, workload and power state, and the VDIs it sees as disks.

Plain synchronous code, run inside the host's database calls. The domain a Running or Paused
VM stands for lives in the daemon's memory (:mod:`migrate.guest`): :func:`halt_orphans` puts
the records right after a restart, when no domain of an earlier run survives.
"""

from __future__ import annotations

import uuid as uuidlib
from typing import Any, Literal

from migrate.state.store import Store

PowerState = Literal["Halted", "Running", "Paused", "Suspended"]
"""A VM's ``power_state`` as XenAPI spells it."""
LIVE: tuple[PowerState, ...] = ("Running", "Paused")
"""Power states that stand for a domain on the VM's ``resident_on`` host."""


def insert_vm(
    store: Store,
    name_label: str,
    memory: int,
    vcpus: int,
    workload: str,
    *,
    uuid: str | None = None,
) -> str:
    """Record a new Halted VM (``uuid``: the one it had on another host, for a migration's
    destination; a new one by default); its uuid."""
    uuid = uuid or str(uuidlib.uuid4())
    store.insert(
        "VM",
        {
            "uuid": uuid,
            "name_label": name_label,
            "memory": memory,
            "vcpus": vcpus,
            "workload": workload,
            "power_state": "Halted",
            "resident_on": None,
        },
    )
    return uuid


def set_power_state(store: Store, vm: str, state: PowerState, resident_on: str | None) -> None:
    """Record VM ``vm`` as ``state`` on host ``resident_on`` (None when not live)."""
    store.update("VM", vm, {"power_state": state, "resident_on": resident_on})


def delete_vm(store: Store, vm: str) -> None:
    """Forget VM ``vm`` and its VBDs (not their VDIs), in one change that event watchers
    see as deletions."""
    with store.change():
        for vbd in vbds(store, vm):
            store.delete("VBD", vbd["uuid"])
        store.delete("VM", vm)


def insert_vbd(store: Store, vm: str, vdi: str, device: str, mode: str) -> str:
    """Record a new VBD: VDI ``vdi`` seen by VM ``vm`` as disk ``device`` (``RW`` or
    ``RO``); its uuid."""
    uuid = str(uuidlib.uuid4())
    store.insert("VBD", {"uuid": uuid, "vm": vm, "vdi": vdi, "device": device, "mode": mode})
    return uuid


def device_name(userdevice: str) -> str:
    """The guest's name of disk ``userdevice`` (``0`` is ``xvda``)."""
    return "xvd" + chr(ord("a") + int(userdevice))


def vbds(store: Store, vm: str) -> list[dict[str, Any]]:
    """The VBD rows of VM ``vm``, in device order."""
    return sorted(store.all("VBD", vm=vm), key=lambda row: (len(row["device"]), row["device"]))


def vbds_of_vdi(store: Store, vdi: str) -> list[dict[str, Any]]:
    """The VBD rows that attach VDI ``vdi``."""
    return store.all("VBD", vdi=vdi)


def resident_vms(store: Store, host: str) -> list[dict[str, Any]]:
    """The VM rows recorded live on host ``host``."""
    return store.all("VM", resident_on=host)


def halt_orphans(store: Store) -> list[str]:
    """Record as Halted every VM recorded Running or Paused: at start-up, when the domains
    of an earlier run are gone (a guest dies with its daemon); their uuids."""
    uuids = [row["uuid"] for state in LIVE for row in store.all("VM", power_state=state)]
    with store.change():
        for uuid in uuids:
            set_power_state(store, uuid, "Halted", None)
    return uuids
