"""XenAPI class ``VM``: the VMs of this host, their power operations and their migration.

A VM is a row (:mod:`migrate.state.vms`); a Running or Paused one has a domain in
``host.guests`` (:mod:`migrate.guest`). Every power operation holds its VM
(:class:`~migrate.host.operations.Operations`) from the check of the power state to the
record of the outcome, and fails as xapi does: ``VM_BAD_POWER_STATE`` with the VM's ref, the
states the operation needs and the VM's own, in xapi's lower case. Migration goes through
``host.migrations`` (the daemon's :mod:`migrate.migration`), which this face never imports.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import trio

from migrate.formats.xapi import NULL_REF, ref
from migrate.guest import workloads
from migrate.guest.hypervisor import PAGE_SIZE, DiskAttachment, Domain, GuestError, GuestSpec
from migrate.guest.workloads import WorkloadError
from migrate.host.claims import vm_holder
from migrate.host.errors import (
    FIELD_TYPE_ERROR,
    HOST_NOT_ENOUGH_FREE_MEMORY,
    INTERNAL_ERROR,
    INVALID_VALUE,
    OPERATION_NOT_ALLOWED,
    VDI_IN_USE,
    VM_BAD_POWER_STATE,
    ApiError,
)
from migrate.host.migrations import Migrations
from migrate.host.services import HostServices
from migrate.rpc import refs
from migrate.rpc.values import api_bool, api_int, api_map, api_str
from migrate.state import vms
from migrate.state.store import Store
from migrate.state.vms import LIVE, PowerState, device_name
from migrate.storage.sr import vdi_path

CLASS = "VM"
FIELDS = (
    "uuid name_label name_description power_state memory_static_max memory_static_min"
    " memory_dynamic_max memory_dynamic_min memory_target VCPUs_max VCPUs_at_startup"
    " resident_on VBDs VIFs is_a_template is_a_snapshot is_control_domain allowed_operations"
    " current_operations other_config platform tags"
)
WORKLOAD_KEY = "xfer_workload"
"""The ``other_config`` key naming what the guest runs (:mod:`migrate.guest.workloads`)."""
DEFAULT_WORKLOAD = "idle"
CLAIM_WAIT = 5.0
"""Seconds a start waits for the domain of the VM's last run to release its disks."""
MAX_VCPUS = 64
ALLOWED: dict[str, list[str]] = {
    "Halted": ["start", "destroy"],
    "Running": ["clean_shutdown", "hard_shutdown", "pause", "migrate_send"],
    "Paused": ["unpause", "hard_shutdown", "migrate_send"],
    "Suspended": ["hard_shutdown"],
}
"""The operations each power state allows (``allowed_operations``)."""


def record(host: HostServices, row: dict[str, Any]) -> dict[str, Any]:
    """The XenAPI record of a VM row."""
    memory = int(row["memory"])
    operation = host.operations.current(row["uuid"])
    return {
        "uuid": row["uuid"],
        "name_label": row["name_label"],
        "name_description": "",
        "power_state": row["power_state"],
        "memory_static_max": memory,
        "memory_static_min": memory,
        "memory_dynamic_max": memory,
        "memory_dynamic_min": memory,
        "memory_target": memory if row["power_state"] in LIVE else 0,
        "VCPUs_max": int(row["vcpus"]),
        "VCPUs_at_startup": int(row["vcpus"]),
        "resident_on": ref(row["resident_on"]) if row["resident_on"] else NULL_REF,
        "VBDs": [ref(vbd["uuid"]) for vbd in vms.vbds(host.store, row["uuid"])],
        "VIFs": [],
        "is_a_template": False,
        "is_a_snapshot": False,
        "is_control_domain": False,
        "allowed_operations": [] if operation else ALLOWED[row["power_state"]],
        "current_operations": {},
        "other_config": {WORKLOAD_KEY: row["workload"]},
        "platform": {},
        "tags": [],
    }


# Checks (inside a database call)


def expect_state(vm: str, row: dict[str, Any], expected: Sequence[PowerState]) -> None:
    """VM_BAD_POWER_STATE unless the VM ``row`` (named ``vm`` by the caller) is in one of
    the ``expected`` states (inside a database call)."""
    if row["power_state"] not in expected:
        wanted = ", ".join(state.lower() for state in expected)
        raise ApiError(VM_BAD_POWER_STATE, vm, wanted, row["power_state"].lower())


def _uuid(store: Store, vm: str) -> str:
    """The uuid of the VM ``vm`` names; HANDLE_INVALID if there is none."""
    return str(refs.row(store, "VM", vm)["uuid"])


def _in_state(store: Store, vm: str, expected: Sequence[PowerState]) -> dict[str, Any]:
    """The row of VM ``vm``, checked to be in one of the ``expected`` states."""
    row = refs.row(store, "VM", vm)
    expect_state(vm, row, expected)
    return row


def _guest_spec(host: HostServices, vm: str) -> tuple[GuestSpec, list[str]]:
    """What VM ``vm`` (Halted) starts from (its row, its VBDs' VDI files) and the uuids of
    those VDIs."""
    store = host.store
    row = _in_state(store, vm, ("Halted",))
    disks, vdis = [], []
    for vbd in vms.vbds(store, row["uuid"]):
        vdi = store.get("VDI", vbd["vdi"])
        if vdi["state"] != "ready":
            raise ApiError(VDI_IN_USE, ref(vdi["uuid"]), vdi["state"])
        sr_path = str(store.get("SR", vdi["sr"])["path"])
        disks.append(DiskAttachment(device_name(vbd["device"]), vdi_path(sr_path, vdi["uuid"])))
        vdis.append(str(vdi["uuid"]))
    spec = GuestSpec(
        row["uuid"], int(row["memory"]), int(row["vcpus"]), row["workload"], tuple(disks)
    )
    return spec, vdis


async def _claim(host: HostServices, uuid: str, vdis: list[str]) -> None:
    """Claim the ``vdis`` of VM ``uuid`` for its domain (after the domain of its last run
    released them); VDI_IN_USE naming the holder when another one holds one of them."""
    holder = vm_holder(uuid)
    claimed: list[str] = []
    try:
        for vdi in vdis:
            await host.claims.wait_for_writer(vdi, CLAIM_WAIT)
            if not host.claims.claim_writer(vdi, holder):
                raise ApiError(VDI_IN_USE, ref(vdi), host.claims.holder(vdi) or "a writer")
            claimed.append(vdi)
    except BaseException:
        for vdi in claimed:
            host.claims.release_writer(vdi)
        raise


def _physical_memory() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# Creating and destroying


def create(host: HostServices, session: str, args: Any) -> str:
    """A new Halted VM from a record: ``name_label``, ``memory_static_max`` (bytes, a
    positive multiple of 4096), ``VCPUs_max`` (default 1) and ``other_config["xfer_workload"]``
    (default ``idle``, checked: :mod:`migrate.guest.workloads`) are read, other fields
    ignored; its ref."""
    if not isinstance(args, dict):
        raise ApiError(FIELD_TYPE_ERROR, "args")
    if "memory_static_max" not in args:
        raise ApiError(FIELD_TYPE_ERROR, "memory_static_max")
    memory = api_int(args["memory_static_max"], "memory_static_max")
    if memory <= 0 or memory % PAGE_SIZE:
        raise ApiError(
            INVALID_VALUE,
            "memory_static_max",
            args["memory_static_max"],
            f"must be a positive multiple of {PAGE_SIZE} bytes",
        )
    vcpus = api_int(args.get("VCPUs_max", 1), "VCPUs_max")
    if not 1 <= vcpus <= MAX_VCPUS:
        raise ApiError(INVALID_VALUE, "VCPUs_max", vcpus, f"must be 1 to {MAX_VCPUS}")
    name_label = api_str(args.get("name_label", ""), "name_label")
    other_config = api_map(args.get("other_config", {}), "other_config")
    workload = other_config.get(WORKLOAD_KEY, DEFAULT_WORKLOAD)
    try:
        workloads.parse(workload, memory)
    except WorkloadError as e:
        raise ApiError(INVALID_VALUE, f"other_config:{WORKLOAD_KEY}", workload, str(e)) from None
    return ref(vms.insert_vm(host.store, name_label, memory, vcpus, workload))


def destroy(host: HostServices, session: str, self: str) -> None:
    """Forget a Halted VM and its VBDs (not their VDIs)."""
    row = _in_state(host.store, self, ("Halted",))
    vms.delete_vm(host.store, row["uuid"])


def set_name_label(host: HostServices, session: str, self: str, value: Any) -> None:
    """Rename a VM."""
    row = refs.row(host.store, "VM", self)
    host.store.update("VM", row["uuid"], {"name_label": api_str(value, "name_label")})


def get_by_name_label(host: HostServices, session: str, label: Any) -> list[str]:
    """The refs of the VMs named ``label``."""
    if not isinstance(label, str):
        return []
    return [ref(row["uuid"]) for row in host.store.all("VM", name_label=label)]


# Power operations


async def _record(host: HostServices, uuid: str, state: PowerState) -> None:
    """Record VM ``uuid`` as ``state`` (on this host when live)."""
    resident = host.uuid if state in LIVE else None
    await host.db.call(vms.set_power_state, host.store, uuid, state, resident)


async def _domain(host: HostServices, vm: str, uuid: str, expected: Sequence[PowerState]) -> Domain:
    """The domain of VM ``uuid`` (live, as checked): one that ended unseen leaves its VM
    Halted, and VM_BAD_POWER_STATE."""
    domain = host.guests.domain(uuid)
    if domain is None:
        await _record(host, uuid, "Halted")
        wanted = ", ".join(state.lower() for state in expected)
        raise ApiError(VM_BAD_POWER_STATE, vm, wanted, "halted")
    return domain


async def start(
    host: HostServices, session: str, vm: str, start_paused: Any = False, force: Any = False
) -> None:
    """Start a Halted VM: a domain made from its record (paused with ``start_paused``).
    ``force`` is accepted and ignored, as xapi does for a VM without restrictions.
    HOST_NOT_ENOUGH_FREE_MEMORY when its memory exceeds what this host has left."""
    paused = api_bool(start_paused, "start_paused")
    api_bool(force, "force")
    uuid = await host.db.call(_uuid, host.store, vm)
    if not host.tasks.serving:
        raise ApiError(INTERNAL_ERROR, "domains are not watched (Tasks.serve)")
    with host.operations.exclusive(uuid, "start"):
        spec, vdis = await host.db.call(_guest_spec, host, vm)
        used = sum(domain.spec.memory for domain in host.guests.domains())
        available = max(0, _physical_memory() - used)
        if spec.memory > available:
            raise ApiError(HOST_NOT_ENOUGH_FREE_MEMORY, spec.memory, available)
        await _claim(host, uuid, vdis)
        domain: Domain | None = None
        try:
            domain = await host.guests.create(spec, paused=paused)
            await _record(host, uuid, "Paused" if paused else "Running")
        except BaseException as e:
            with trio.CancelScope(shield=True):
                if domain is not None:
                    await domain.destroy()
                for vdi in vdis:
                    host.claims.release_writer(vdi)
            if isinstance(e, GuestError):
                raise ApiError(INTERNAL_ERROR, f"VM {uuid} could not start: {e}") from None
            raise
        host.watch(domain, vdis)


async def _halt(host: HostServices, uuid: str, domain: Domain | None, clean: bool) -> None:
    """Destroy VM ``uuid``'s domain (``clean``: paused and its disks synced first, so that
    every disk write it was told is done is durable), wait for its disks' release and record
    it Halted; not interrupted once begun."""
    with trio.CancelScope(shield=True):
        if domain is not None:
            if clean:
                await domain.pause()
                await domain.sync_disks()
            await domain.destroy()
        for vdi in host.claims.held_by(vm_holder(uuid)):
            await host.claims.wait_for_writer(vdi, CLAIM_WAIT)
        await _record(host, uuid, "Halted")


async def clean_shutdown(host: HostServices, session: str, vm: str) -> None:
    """Stop a Running VM: its guest paused, its disk writes made durable, then destroyed."""
    uuid = await host.db.call(_uuid, host.store, vm)
    with host.operations.exclusive(uuid, "clean_shutdown"):
        await host.db.call(_in_state, host.store, vm, ("Running",))
        await _halt(host, uuid, await _domain(host, vm, uuid, ("Running",)), clean=True)


async def hard_shutdown(host: HostServices, session: str, vm: str) -> None:
    """Stop a Running, Paused or Suspended VM at once (its domain destroyed)."""
    uuid = await host.db.call(_uuid, host.store, vm)
    with host.operations.exclusive(uuid, "hard_shutdown"):
        await host.db.call(_in_state, host.store, vm, ("Running", "Paused", "Suspended"))
        await _halt(host, uuid, host.guests.domain(uuid), clean=False)


async def pause(host: HostServices, session: str, vm: str) -> None:
    """Stop a Running VM's guest, its memory kept: Paused."""
    uuid = await host.db.call(_uuid, host.store, vm)
    with host.operations.exclusive(uuid, "pause"):
        await host.db.call(_in_state, host.store, vm, ("Running",))
        await (await _domain(host, vm, uuid, ("Running",))).pause()
        await _record(host, uuid, "Paused")


async def unpause(host: HostServices, session: str, vm: str) -> None:
    """Let a Paused VM's guest run again: Running."""
    uuid = await host.db.call(_uuid, host.store, vm)
    with host.operations.exclusive(uuid, "unpause"):
        await host.db.call(_in_state, host.store, vm, ("Paused",))
        await (await _domain(host, vm, uuid, ("Paused",))).unpause()
        await _record(host, uuid, "Running")


# Migration


def _migrations(host: HostServices, live: bool) -> Migrations:
    """``host.migrations``; OPERATION_NOT_ALLOWED saying why when this host cannot migrate
    (no migration service, or a live migration on a kernel that cannot track writes)."""
    if host.migrations is None:
        raise ApiError(OPERATION_NOT_ALLOWED, "this host does not offer VM migration")
    if live:
        reason = host.guests.live_migration_support()
        if reason is not None:
            raise ApiError(OPERATION_NOT_ALLOWED, reason)
    return host.migrations


def _migration_args(
    dest: Any, live: Any, vdi_map: Any, vif_map: Any, options: Any, vgpu_map: Any
) -> tuple[dict[str, str], bool, dict[str, str]]:
    """The checked arguments of a migration call: dest, live and options."""
    checked_dest = api_map(dest, "dest")
    checked_live = api_bool(live, "live")
    for value, name in ((vdi_map, "vdi_map"), (vif_map, "vif_map"), (vgpu_map, "vgpu_map")):
        if not isinstance(value, dict):
            raise ApiError(FIELD_TYPE_ERROR, name)
    return checked_dest, checked_live, api_map(options, "options")


async def assert_can_migrate(
    host: HostServices,
    session: str,
    vm: str,
    dest: Any,
    live: Any,
    vdi_map: Any,
    vif_map: Any,
    options: Any,
    vgpu_map: Any = None,
) -> None:
    """Return if ``VM.migrate_send`` with these arguments could move the VM; the error that
    stands in the way otherwise (the VM must be Running or Paused)."""
    dest_map, is_live, opts = _migration_args(dest, live, vdi_map, vif_map, options, vgpu_map or {})
    row = await host.db.call(_in_state, host.store, vm, LIVE)
    await _migrations(host, is_live).assert_can_migrate(
        session, row["uuid"], dest_map, is_live, opts
    )


async def migrate_send(
    host: HostServices,
    session: str,
    vm: str,
    dest: Any,
    live: Any,
    vdi_map: Any,
    vif_map: Any,
    options: Any,
    vgpu_map: Any = None,
    *,
    task: str | None = None,
) -> str:
    """Move a Running or Paused VM to the host of ``dest`` (the map of that host's
    ``host.migrate_receive``); the VM's ref there. ``vdi_map``, ``vif_map`` and
    ``vgpu_map`` are accepted (disks stay on SRs both hosts share); ``options`` as
    :mod:`migrate.migration` reads them. On failure the VM runs here as before."""
    dest_map, is_live, opts = _migration_args(dest, live, vdi_map, vif_map, options, vgpu_map or {})
    uuid = (await host.db.call(_in_state, host.store, vm, LIVE))["uuid"]
    migrations = _migrations(host, is_live)
    with host.operations.exclusive(uuid, "migrate_send"):
        await host.db.call(_in_state, host.store, vm, LIVE)
        return await migrations.migrate_send(session, uuid, dest_map, is_live, opts, task)


METHODS = {
    "VM.create": create,
    "VM.destroy": destroy,
    "VM.set_name_label": set_name_label,
    "VM.get_by_name_label": get_by_name_label,
    "VM.start": start,
    "VM.clean_shutdown": clean_shutdown,
    "VM.hard_shutdown": hard_shutdown,
    "VM.pause": pause,
    "VM.unpause": unpause,
    "VM.assert_can_migrate": assert_can_migrate,
    "VM.migrate_send": migrate_send,
}
ASYNC = frozenset(
    {
        "VM.start",
        "VM.clean_shutdown",
        "VM.hard_shutdown",
        "VM.migrate_send",
        "VM.pause",
        "VM.unpause",
    }
)
"""Long calls also served as ``Async.<name>``, returning a task."""
