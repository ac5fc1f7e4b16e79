"""migrate.rpc.vm, vbd and host.migrate_receive: VMs driven by the official XenAPI SDK over ::1
against real guest processes (migrate.guest.processes); the host's tasks running coroutines;
the VM records across a restart of xfer serve."""

from __future__ import annotations

import http.client
import json
import sqlite3
import uuid as uuidlib
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import XenAPI

from migrate.guest.processes import ProcessHypervisor
from migrate.guest.workloads import check_ledger, read_disk_ledger, read_ledger
from migrate.host import tasks
from migrate.host.errors import ApiError
from migrate.host.services import HostServices
from migrate.http.routing import Router
from migrate.http.server import serve
from migrate.interfaces import Interface, InterfaceAddress
from migrate.rpc.dispatch import Dispatcher, register_rpc
from migrate.state.schema import MIGRATIONS, VERSION
from migrate.state.store import Store
from migrate.state.vms import halt_orphans, insert_vm, set_power_state
from migrate.transfer import import_raw_vdi
from support import (
    HOST,
    PASSWORD,
    TimeoutTransport,
    close,
    failure,
    host_store,
    in_thread,
    running_daemon,
    wait_until,
    wait_until_sync,
)

MiB = 1 << 20
MEMORY = 16 * MiB
NULL = "OpaqueRef:NULL"
HOST_REF = f"OpaqueRef:{HOST}"
GLOBAL_V6 = "2001:db8::10"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    interfaces = [
        Interface(
            "eth0",
            "02:00:00:00:00:10",
            (
                InterfaceAddress("192.0.2.10", 24, "IPv4", False),
                InterfaceAddress("fe80::10", 64, "IPv6", True),
                InterfaceAddress(GLOBAL_V6, 64, "IPv6", False),
            ),
        ),
        Interface(
            "eth1",
            "02:00:00:00:00:11",
            (
                InterfaceAddress("fe80::11", 64, "IPv6", True),
                InterfaceAddress("2001:db8:1::11", 64, "IPv6", False),
            ),
        ),
        Interface("eth2", "02:00:00:00:00:12", (InterfaceAddress("fe80::12", 64, "IPv6", True),)),
    ]
    store = host_store(tmp_path, name_label="vm-host", address=GLOBAL_V6, interfaces=interfaces)
    yield store
    store.close()


@dataclass
class Server:
    host: HostServices
    port: int

    @property
    def url(self) -> str:
        return f"http://[::1]:{self.port}"

    def session(self) -> Any:
        session = XenAPI.Session(self.url)
        session.xenapi.login_with_password("root", "pw", "1.0", "tests")
        return session


@pytest.fixture
async def server(nursery: trio.Nursery, store: Store) -> Server:
    """The XenAPI (and the imports) of a host with real guests, on ::1: its tasks and
    guests served."""
    host = HostServices.open(store, HOST, ProcessHypervisor())
    router = Router()
    register_rpc(router, Dispatcher(host))
    import_raw_vdi.register(router, host)
    listeners = await trio.open_tcp_listeners(0, host="::1")
    host.port = listeners[0].socket.getsockname()[1]
    await nursery.start(host.guests.serve)
    await nursery.start(host.tasks.serve)
    await nursery.start(partial(serve, router, listeners))
    return Server(host, host.port)


def new_vm(x: Any, name: str = "vm", memory: Any = str(MEMORY), **more: Any) -> str:
    record = {"name_label": name, "memory_static_max": memory, "VCPUs_max": "1", **more}
    ref: str = x.VM.create(record)
    return ref


def jsonrpc(server: Server, method: str, *params: Any) -> Any:
    """The result of a JSON-RPC call (checked to succeed)."""
    conn = http.client.HTTPConnection("::1", server.port, timeout=30)
    try:
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
        conn.request("POST", "/jsonrpc", body=body, headers={"content-type": "application/json"})
        answer = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    assert "result" in answer, answer
    return answer["result"]


def wait_task(x: Any, task: str) -> str:
    """The status of ``task`` once it ended."""
    return str(
        wait_until_sync(
            lambda: (s := x.task.get_status(task)) not in ("pending", "cancelling") and s,
            what=f"task {task} to end",
        )
    )


# Records


async def test_vm_create_and_accessors(server: Server) -> None:
    def run() -> None:
        session = server.session()
        x = session.xenapi
        try:
            workload = {"xfer_workload": "uniform:1M"}
            vm = new_vm(x, "first", MEMORY, VCPUs_max=2, other_config=workload)
            uuid = x.VM.get_uuid(vm)
            assert vm == f"OpaqueRef:{uuid}"
            assert x.VM.get_all() == [vm]
            assert x.VM.get_by_uuid(uuid) == vm
            assert x.VM.get_by_name_label("first") == [vm]
            assert x.VM.get_name_label(vm) == "first"
            assert x.VM.get_power_state(vm) == "Halted"
            assert x.VM.get_resident_on(vm) == NULL
            assert x.VM.get_VBDs(vm) == []
            assert x.VM.get_memory_static_max(vm) == str(MEMORY)  # int64 as a string
            assert x.VM.get_VCPUs_max(vm) == "2"
            assert x.VM.get_other_config(vm) == workload
            record = x.VM.get_record(vm)
            assert record["memory_dynamic_max"] == str(MEMORY)
            assert record["allowed_operations"] == ["start", "destroy"]
            assert record["is_a_template"] is False
            assert x.VM.get_all_records() == {vm: record}
            x.VM.set_name_label(vm, "renamed")
            assert x.VM.get_name_label(vm) == "renamed"
            assert x.host.get_resident_VMs(HOST_REF) == []

            found = getattr(x.event, "from")(["vm"], "", 1.0)
            assert found["valid_ref_counts"] == {"vm": "1"}
            (event,) = found["events"]
            assert (event["class"], event["operation"], event["ref"]) == ("vm", "add", vm)
            assert event["snapshot"]["name_label"] == "renamed"
            x.VM.set_name_label(vm, "watched")
            later = getattr(x.event, "from")(["vm"], found["token"], 1.0)
            assert [(e["operation"], e["snapshot"]["name_label"]) for e in later["events"]] == [
                ("mod", "watched")
            ]

            # JSON-RPC carries the same int64 as a number
            assert jsonrpc(server, "VM.get_memory_static_max", session.handle, vm) == MEMORY

            other = new_vm(x, "second")  # defaults: one vCPU, the idle workload
            assert x.VM.get_other_config(other) == {"xfer_workload": "idle"}
            assert sorted(x.VM.get_all()) == sorted([vm, other])
            x.VM.destroy(other)
            assert x.VM.get_all() == [vm]
            assert failure(lambda: x.VM.get_record(other)) == ["HANDLE_INVALID", "VM", other]
            assert failure(lambda: x.VM.get_by_uuid("nope")) == ["UUID_INVALID", "VM", "nope"]
        finally:
            close(session)

    await in_thread(run)


async def test_vm_create_refusals(server: Server) -> None:
    def run() -> None:
        session = server.session()
        x = session.xenapi
        try:
            bad = failure(lambda: new_vm(x, memory="1000"))
            assert bad[:3] == ["INVALID_VALUE", "memory_static_max", "1000"]
            assert "multiple of 4096" in bad[3]
            assert failure(lambda: new_vm(x, memory="-4096"))[0] == "INVALID_VALUE"
            assert failure(lambda: new_vm(x, memory="lots")) == [
                "FIELD_TYPE_ERROR",
                "memory_static_max",
            ]
            assert failure(lambda: x.VM.create({"name_label": "x"})) == [
                "FIELD_TYPE_ERROR",
                "memory_static_max",
            ]
            assert failure(lambda: new_vm(x, VCPUs_max="0"))[:3] == [
                "INVALID_VALUE",
                "VCPUs_max",
                "0",
            ]
            assert failure(lambda: new_vm(x, other_config={"xfer_workload": 3})) == [
                "FIELD_TYPE_ERROR",
                "other_config",
            ]
            assert failure(lambda: x.VM.create("not a record")) == ["FIELD_TYPE_ERROR", "args"]
            bad = failure(lambda: new_vm(x, other_config={"xfer_workload": "warp:9"}))
            assert bad[:3] == ["INVALID_VALUE", "other_config:xfer_workload", "warp:9"]
            assert "workload term 'warp:9': unknown workload" in bad[3], bad
            assert x.VM.get_all() == []
        finally:
            close(session)

    await in_thread(run)


# Power operations on real guests


async def test_power_cycle(server: Server) -> None:
    guests = server.host.guests

    def run() -> None:
        session = server.session()
        x = session.xenapi
        try:
            vm = new_vm(x, other_config={"xfer_workload": "uniform:4M"})
            uuid = x.VM.get_uuid(vm)
            x.VM.start(vm, False, False)
            assert x.VM.get_power_state(vm) == "Running"
            assert x.VM.get_resident_on(vm) == HOST_REF
            assert x.host.get_resident_VMs(HOST_REF) == [vm]
            domain = guests.domain(uuid)
            assert domain is not None and not domain.paused
            assert domain.spec.memory == MEMORY and domain.spec.workload == "uniform:4M"
            assert x.VM.get_allowed_operations(vm) == [
                "clean_shutdown",
                "hard_shutdown",
                "pause",
                "migrate_send",
            ]

            assert failure(lambda: x.VM.start(vm, False, False)) == [
                "VM_BAD_POWER_STATE",
                vm,
                "halted",
                "running",
            ]
            assert failure(lambda: x.VM.destroy(vm)) == [
                "VM_BAD_POWER_STATE",
                vm,
                "halted",
                "running",
            ]
            assert failure(lambda: x.VM.unpause(vm)) == [
                "VM_BAD_POWER_STATE",
                vm,
                "paused",
                "running",
            ]

            x.VM.pause(vm)
            assert x.VM.get_power_state(vm) == "Paused" and domain.paused
            before = bytes(domain.memory)
            assert failure(lambda: x.VM.pause(vm)) == [
                "VM_BAD_POWER_STATE",
                vm,
                "running",
                "paused",
            ]
            assert failure(lambda: x.VM.clean_shutdown(vm)) == [
                "VM_BAD_POWER_STATE",
                vm,
                "running",
                "paused",
            ]
            assert bytes(domain.memory) == before  # paused: the guest wrote nothing
            x.VM.unpause(vm)
            assert x.VM.get_power_state(vm) == "Running" and not domain.paused
            wait_until_sync(lambda: bytes(domain.memory) != before, what="the guest to write")

            x.VM.clean_shutdown(vm)
            assert x.VM.get_power_state(vm) == "Halted"
            assert x.VM.get_resident_on(vm) == NULL
            assert guests.domain(uuid) is None
            assert failure(lambda: x.VM.hard_shutdown(vm)) == [
                "VM_BAD_POWER_STATE",
                vm,
                "running, paused, suspended",
                "halted",
            ]

            x.VM.start(vm, True, False)  # start_paused
            assert x.VM.get_power_state(vm) == "Paused"
            paused = guests.domain(uuid)
            assert paused is not None and paused.paused and paused is not domain
            x.VM.hard_shutdown(vm)
            assert x.VM.get_power_state(vm) == "Halted" and guests.domain(uuid) is None
            x.VM.destroy(vm)
            assert failure(lambda: x.VM.start(vm, False, False)) == ["HANDLE_INVALID", "VM", vm]
            assert failure(lambda: x.VM.start(vm, "yes", False)) == [
                "FIELD_TYPE_ERROR",
                "start_paused",
            ]
        finally:
            close(session)

    await in_thread(run)


async def test_async_power_operations(server: Server) -> None:
    def run() -> None:
        session = server.session()
        x = session.xenapi
        try:
            vm = new_vm(x)
            task = x.Async.VM.start(vm, False, False)
            assert wait_task(x, task) == "success"
            assert x.task.get_result(task) == ""
            assert x.VM.get_power_state(vm) == "Running"
            failed = x.Async.VM.start(vm, False, False)
            assert wait_task(x, failed) == "failure"
            assert x.task.get_error_info(failed) == ["VM_BAD_POWER_STATE", vm, "halted", "running"]
            task = x.Async.VM.clean_shutdown(vm)
            assert wait_task(x, task) == "success"
            assert x.VM.get_power_state(vm) == "Halted"
        finally:
            close(session)

    await in_thread(run)


async def test_a_guest_that_dies_leaves_its_vm_halted(server: Server) -> None:
    session = await in_thread(server.session)
    x = session.xenapi
    vm = await in_thread(lambda: new_vm(x))
    await in_thread(lambda: x.VM.start(vm, False, False))
    domain = server.host.guests.domain(vm.removeprefix("OpaqueRef:"))
    assert domain is not None
    await domain.destroy()  # ended by no operation on the VM: as if it crashed
    await wait_until(
        lambda: (
            server.host.store.get("VM", vm.removeprefix("OpaqueRef:"))["power_state"] == "Halted"
        ),
        what="the VM recorded Halted",
    )
    assert await in_thread(lambda: x.VM.get_resident_on(vm)) == NULL
    await in_thread(lambda: close(session))


async def test_an_unstartable_guest_is_a_clear_error(server: Server) -> None:
    """A guest that cannot be made (here: its disk's file is gone) fails the start with the
    guest's reason, and leaves the VM Halted and its disk unclaimed."""
    store = server.host.store
    sr = store.all("SR")[0]

    def run() -> None:
        session = server.session()
        x = session.xenapi
        try:
            vdi = x.VDI.create(
                {
                    "SR": f"OpaqueRef:{sr['uuid']}",
                    "virtual_size": str(MiB),
                    "sm_config": {"type": "raw"},
                }
            )
            vm = new_vm(x)
            x.VBD.create({"VM": vm, "VDI": vdi, "userdevice": "0", "mode": "RW", "type": "Disk"})
            path = Path(sr["path"]) / f"{x.VDI.get_uuid(vdi)}.vhd"
            path.rename(path.with_suffix(".moved"))
            error = failure(lambda: x.VM.start(vm, False, False))
            assert error[0] == "INTERNAL_ERROR" and "cannot open" in error[1], error
            assert x.VM.get_power_state(vm) == "Halted"
            assert x.VM.get_resident_on(vm) == NULL
            assert not server.host.claims.writing(x.VDI.get_uuid(vdi))
            path.with_suffix(".moved").rename(path)
            x.VM.start(vm, False, False)
            assert x.VM.get_power_state(vm) == "Running"
            x.VM.hard_shutdown(vm)
        finally:
            close(session)

    await in_thread(run)


# Disks


async def test_vbds(server: Server) -> None:
    sr = f"OpaqueRef:{server.host.store.all('SR')[0]['uuid']}"

    def run() -> None:
        session = server.session()
        x = session.xenapi
        try:
            vdi = x.VDI.create(
                {"SR": sr, "virtual_size": str(4 * MiB), "sm_config": {"type": "raw"}}
            )
            sparse = x.VDI.create({"SR": sr, "virtual_size": str(4 * MiB)})
            vm = new_vm(x)
            vbd = x.VBD.create(
                {"VM": vm, "VDI": vdi, "userdevice": "0", "mode": "RW", "type": "Disk"}
            )
            assert x.VM.get_VBDs(vm) == [vbd]
            assert x.VDI.get_VBDs(vdi) == [vbd]
            assert x.VBD.get_VDI(vbd) == vdi
            assert x.VBD.get_VM(vbd) == vm
            assert x.VBD.get_userdevice(vbd) == "0"
            assert x.VBD.get_device(vbd) == ""  # not attached while Halted
            record = x.VBD.get_record(vbd)
            assert (record["mode"], record["type"], record["currently_attached"]) == (
                "RW",
                "Disk",
                False,
            )
            duplicate = {"VM": vm, "VDI": sparse, "userdevice": "0", "mode": "RW", "type": "Disk"}
            assert failure(lambda: x.VBD.create(duplicate)) == ["DEVICE_ALREADY_EXISTS", "0"]
            bad_mode = {**duplicate, "userdevice": "1", "mode": "WO"}
            assert failure(lambda: x.VBD.create(bad_mode))[:3] == ["INVALID_VALUE", "mode", "WO"]
            cd = {**duplicate, "userdevice": "1", "type": "CD"}
            assert failure(lambda: x.VBD.create(cd))[:3] == ["INVALID_VALUE", "type", "CD"]
            bad_device = {**duplicate, "userdevice": "16"}
            assert failure(lambda: x.VBD.create(bad_device))[:2] == ["INVALID_VALUE", "userdevice"]
            x.VDI.snapshot(sparse, {})
            records = x.VDI.get_all_records()
            base = next(ref for ref, record in records.items() if not record["managed"])
            error = failure(lambda: x.VBD.create({**duplicate, "userdevice": "1", "VDI": base}))
            assert error == ["OPERATION_NOT_ALLOWED", f"VDI {base} is a base copy (not managed)"]
            gone = {**duplicate, "VDI": "OpaqueRef:NULL"}
            assert failure(lambda: x.VBD.create(gone)) == [
                "HANDLE_INVALID",
                "VDI",
                "OpaqueRef:NULL",
            ]

            x.VM.start(vm, False, False)
            assert x.VBD.get_device(vbd) == "xvda"
            assert x.VBD.get_currently_attached(vbd) is True
            running = {**duplicate, "userdevice": "autodetect"}
            assert failure(lambda: x.VBD.create(running)) == [
                "VM_BAD_POWER_STATE",
                vm,
                "halted",
                "running",
            ]
            assert failure(lambda: x.VBD.destroy(vbd)) == [
                "VM_BAD_POWER_STATE",
                vm,
                "halted",
                "running",
            ]
            holder = f"VM {x.VM.get_uuid(vm)}"
            assert failure(lambda: x.VDI.destroy(vdi)) == ["VDI_IN_USE", vdi, holder]
            assert failure(lambda: x.VDI.snapshot(vdi, {})) == ["VDI_IN_USE", vdi, holder]
            status, body = put_raw(server, session.handle, vdi, b"\1" * 4 * MiB)
            assert status == 409 and f"being written by {holder}" in body, (status, body)
            other = new_vm(x, "other")
            x.VBD.create({**duplicate, "VM": other, "VDI": vdi})
            assert failure(lambda: x.VM.start(other, False, False)) == [
                "VDI_IN_USE",
                vdi,
                holder,
            ]
            x.VM.hard_shutdown(vm)

            second = x.VBD.create(running)
            assert x.VBD.get_userdevice(second) == "1"
            error = failure(lambda: x.VM.start(vm, False, False))  # a dynamic VHD
            assert error[0] == "INTERNAL_ERROR" and "raw" in error[1], error
            assert x.VM.get_power_state(vm) == "Halted"
            x.VBD.destroy(second)
            assert x.VM.get_VBDs(vm) == [vbd]

            x.VDI.destroy(vdi)  # its VBDs, of Halted VMs, go with it
            assert x.VM.get_VBDs(vm) == [] and x.VM.get_VBDs(other) == []
            assert failure(lambda: x.VBD.get_record(vbd)) == ["HANDLE_INVALID", "VBD", vbd]
            x.VM.destroy(vm)
        finally:
            close(session)

    await in_thread(run)


def put_raw(server: Server, session: str, vdi: str, data: bytes) -> tuple[int, str]:
    """The status and body of ``PUT /import_raw_vdi`` of ``data`` into ``vdi``."""
    conn = http.client.HTTPConnection("::1", server.port, timeout=30)
    try:
        conn.request("PUT", f"/import_raw_vdi?vdi={vdi}&session_id={session}", body=data)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


async def test_a_guest_writes_its_disk_through_its_vbd(server: Server) -> None:
    """A ledger guest on a raw VDI: every record it committed in RAM is on the VDI's file
    after a clean shutdown, none lost or reordered."""
    store = server.host.store
    sr = store.all("SR")[0]
    session = await in_thread(server.session)
    x = session.xenapi
    args = {"SR": f"OpaqueRef:{sr['uuid']}", "virtual_size": str(4 * MiB)}
    vdi = await in_thread(lambda: x.VDI.create({**args, "sm_config": {"type": "raw"}}))
    vm = await in_thread(lambda: new_vm(x, other_config={"xfer_workload": "ledger"}))
    vbd = {"VM": vm, "VDI": vdi, "userdevice": "0", "mode": "RW", "type": "Disk"}
    await in_thread(lambda: x.VBD.create(vbd))
    await in_thread(lambda: x.VM.start(vm, False, False))
    domain = server.host.guests.domain(vm.removeprefix("OpaqueRef:"))
    assert domain is not None
    last = await wait_until(
        lambda: len(found := read_ledger(domain.memory)) >= 50 and int(found[-1][0]),
        what="50 ledger records in the guest's RAM",
    )
    await in_thread(lambda: x.VM.clean_shutdown(vm))
    path = Path(sr["path"]) / f"{vdi.removeprefix('OpaqueRef:')}.vhd"
    records = read_disk_ledger(path.read_bytes()[: 4 * MiB])
    verdict = check_ledger(records)
    assert verdict.intact, verdict
    assert verdict.last >= last, (verdict, last)
    await in_thread(lambda: close(session))


# host.migrate_receive and VM.migrate_send


def network_of(x: Any, device: str) -> str:
    for pif in x.PIF.get_all():
        if x.PIF.get_device(pif) == device:
            network: str = x.PIF.get_network(pif)
            return network
    raise AssertionError(device)


async def test_migrate_receive(server: Server) -> None:
    port = server.port

    def run() -> None:
        session = server.session()
        x = session.xenapi
        try:
            eth0 = network_of(x, "eth0")
            dest = x.host.migrate_receive(HOST_REF, eth0, {})
            assert sorted(dest) == ["SM", "host", "master", "session_id", "xenops"]
            query = f"?session_id={dest['session_id']}"
            assert dest["xenops"] == f"http://[{GLOBAL_V6}]:{port}/services/xenops{query}"
            assert dest["SM"] == f"http://[{GLOBAL_V6}]:{port}/services/SM{query}"
            assert dest["master"] == f"http://[{GLOBAL_V6}]:{port}/"
            assert dest["host"] == HOST_REF
            # the session made for the source is a session of this host
            with xmlrpc.client.ServerProxy(server.url, transport=TimeoutTransport()) as proxy:
                answer = proxy.session.get_this_host(dest["session_id"], dest["session_id"])
            assert answer == {"Status": "Success", "Value": HOST_REF}

            # a separate migration network: its own address, the master still management's
            eth1 = network_of(x, "eth1")
            dest = x.host.migrate_receive(HOST_REF, eth1, {})
            assert dest["xenops"].startswith(f"http://[2001:db8:1::11]:{port}/services/xenops?")
            assert dest["master"] == f"http://[{GLOBAL_V6}]:{port}/"

            pif = next(p for p in x.PIF.get_all() if x.PIF.get_device(p) == "eth0")
            x.PIF.set_primary_address_type(pif, "IPv4")
            dest = x.host.migrate_receive(HOST_REF, eth0, {})
            assert dest["xenops"].startswith(f"http://192.0.2.10:{port}/services/xenops?")

            lonely = next(p for p in x.PIF.get_all() if x.PIF.get_device(p) == "eth2")
            error = failure(lambda: x.host.migrate_receive(HOST_REF, network_of(x, "eth2"), {}))
            assert error[:2] == ["INTERFACE_HAS_NO_IP", lonely]
            assert "no IPv6 address that is not link-local" in error[2]
            assert failure(lambda: x.host.migrate_receive(HOST_REF, NULL, {})) == [
                "HANDLE_INVALID",
                "network",
                NULL,
            ]
            assert failure(lambda: x.host.migrate_receive(HOST_REF, eth0, "x")) == [
                "FIELD_TYPE_ERROR",
                "options",
            ]
        finally:
            close(session)

    await in_thread(run)
    # a network this host has no PIF on
    network = "0b5e0b5c-8a8f-4d1b-9c53-1f4a6f6f0009"
    server.host.store.insert(
        "network", {"uuid": network, "name_label": "elsewhere", "bridge": "nowhere"}
    )

    def elsewhere() -> None:
        session = server.session()
        try:
            ref = f"OpaqueRef:{network}"
            error = failure(lambda: session.xenapi.host.migrate_receive(HOST_REF, ref, {}))
            assert error == ["HOST_CANNOT_ATTACH_NETWORK", HOST_REF, ref]
        finally:
            close(session)

    await in_thread(elsewhere)


async def test_migrate_send_without_a_migration_service(server: Server) -> None:
    """The RPC face reaches migration only through host.migrations: without one, a clear
    refusal; the power state is checked first, as xapi does."""
    assert server.host.migrations is None

    def run() -> None:
        session = server.session()
        x = session.xenapi
        try:
            vm = new_vm(x)
            dest = x.host.migrate_receive(HOST_REF, network_of(x, "eth0"), {})
            for call in (x.VM.assert_can_migrate, x.VM.migrate_send):
                assert failure(lambda c=call: c(vm, dest, True, {}, {}, {})) == [  # type: ignore[misc]
                    "VM_BAD_POWER_STATE",
                    vm,
                    "running, paused",
                    "halted",
                ]
            x.VM.start(vm, False, False)
            for call in (x.VM.assert_can_migrate, x.VM.migrate_send):
                assert failure(lambda c=call: c(vm, dest, True, {}, {}, {})) == [  # type: ignore[misc]
                    "OPERATION_NOT_ALLOWED",
                    "this host does not offer VM migration",
                ]
            assert failure(lambda: x.VM.migrate_send(vm, "x", True, {}, {}, {})) == [
                "FIELD_TYPE_ERROR",
                "dest",
            ]
            assert failure(lambda: x.VM.migrate_send(vm, dest, "yes", {}, {}, {})) == [
                "FIELD_TYPE_ERROR",
                "live",
            ]
            task = x.Async.VM.migrate_send(vm, dest, False, {}, {}, {})
            assert wait_task(x, task) == "failure"
            assert x.task.get_error_info(task)[0] == "OPERATION_NOT_ALLOWED"
            assert x.VM.get_power_state(vm) == "Running"
            x.VM.hard_shutdown(vm)
        finally:
            close(session)

    await in_thread(run)


# Tasks running coroutines (as Async.VM.migrate_send does)


async def test_coroutine_tasks(server: Server) -> None:
    host = server.host
    session = await host.sessions.login("root", "pw", "tests", None)
    started = trio.Event()

    async def new_task() -> str:
        uuid = str(uuidlib.uuid4())
        await host.db.call(tasks.insert, host.store, uuid, session, "work")
        return uuid

    async def succeeds(task: str) -> str:
        await host.db.call(tasks.set_other_config, host.store, task, "xfer_migration", '{"a": 1}')
        return "OpaqueRef:result"

    async def fails(task: str) -> None:
        raise ApiError("VM_MIGRATE_FAILED", "x")

    async def breaks(task: str) -> None:
        raise RuntimeError("bug")

    async def forever(task: str) -> None:
        started.set()
        await trio.sleep_forever()

    def row(uuid: str) -> dict[str, Any]:
        return host.store.get("task", uuid)

    def ended(uuid: str) -> bool:
        return row(uuid)["status"] not in tasks.UNFINISHED

    done = await new_task()
    host.tasks.start_async(done, succeeds)
    await wait_until(lambda: ended(done), what="the task to end")
    assert row(done)["status"] == "success"
    assert row(done)["result"] == "<value>OpaqueRef:result</value>"
    assert tasks.other_config_of(row(done)) == {"xfer_migration": '{"a": 1}'}

    failed = await new_task()
    host.tasks.start_async(failed, fails)
    await wait_until(lambda: ended(failed), what="the task to fail")
    assert (row(failed)["status"], json.loads(row(failed)["error_info"])) == (
        "failure",
        ["VM_MIGRATE_FAILED", "x"],
    )

    broken = await new_task()
    host.tasks.start_async(broken, breaks)
    await wait_until(lambda: ended(broken), what="the task to fail")
    assert json.loads(row(broken)["error_info"]) == ["INTERNAL_ERROR", "RuntimeError: bug"]

    cancelled = await new_task()
    host.tasks.start_async(cancelled, forever)
    await started.wait()
    await host.tasks.cancel(cancelled)
    await wait_until(lambda: ended(cancelled), what="the task to be cancelled")
    assert row(cancelled)["status"] == "cancelled" and row(cancelled)["progress"] == 1.0

    def via_sdk() -> None:
        x = server.session()
        try:
            ref = f"OpaqueRef:{done}"
            assert x.xenapi.task.get_other_config(ref) == {"xfer_migration": '{"a": 1}'}
            assert x.xenapi.task.get_record(ref)["other_config"] == {"xfer_migration": '{"a": 1}'}
        finally:
            close(x)

    await in_thread(via_sdk)


# State: the schema and the start of a host


def test_migration_3_on_a_version_2_database(tmp_path: Path) -> None:
    db_path = str(tmp_path / "old.db")
    db = sqlite3.connect(db_path, isolation_level=None)
    for number in (1, 2):
        db.executescript(
            f"BEGIN; {MIGRATIONS[number - 1]}; PRAGMA user_version = {number}; COMMIT;"
        )
    db.execute(
        "INSERT INTO task VALUES ('7a1f3e0c-0000-4000-8000-0000000000aa', 'old', 's', "
        "'success', 1.0, '', '', 1.0, 2.0, 1)"
    )
    db.close()
    store = Store.open(db_path)
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == VERSION >= 3
        assert store.get("task", "7a1f3e0c-0000-4000-8000-0000000000aa")["other_config"] == "{}"
        assert store.all("VM") == [] and store.all("VBD") == []
    finally:
        store.close()


def test_vm_rows_are_checked(tmp_path: Path) -> None:
    store = host_store(tmp_path, name_label="h")
    try:
        uuid = insert_vm(store, "vm", MEMORY, 1, "idle")
        with pytest.raises(sqlite3.IntegrityError):
            store.update("VM", uuid, {"power_state": "Crashed"})
        with pytest.raises(sqlite3.IntegrityError):  # no such VDI
            store.insert(
                "VBD",
                {"uuid": "b", "vm": uuid, "vdi": "missing", "device": "0", "mode": "RW"},
            )
        set_power_state(store, uuid, "Running", HOST)
        other = insert_vm(store, "other", MEMORY, 1, "idle")
        set_power_state(store, other, "Paused", HOST)
        kept = insert_vm(store, "kept", MEMORY, 1, "idle")
        set_power_state(store, kept, "Suspended", None)
        assert sorted(halt_orphans(store)) == sorted([uuid, other])
        assert [(r["power_state"], r["resident_on"]) for r in store.all("VM", uuid=uuid)] == [
            ("Halted", None)
        ]
        assert store.get("VM", kept)["power_state"] == "Suspended"
        assert halt_orphans(store) == []
    finally:
        store.close()


def test_xfer_serve_halts_the_vms_of_an_earlier_run(tmp_path: Path) -> None:
    """A VM running when its daemon stops is Halted at the next start (its guest died with
    the daemon); the start-up says whether live migration is available."""
    with running_daemon(tmp_path) as daemon:
        vm = daemon.rpc("VM.create", {"name_label": "v", "memory_static_max": str(MEMORY)})
        daemon.rpc("VM.start", vm, False, False)
        assert daemon.rpc("VM.get_power_state", vm) == "Running"
    with running_daemon(tmp_path) as daemon:
        assert daemon.rpc("VM.get_power_state", vm) == "Halted"
        assert daemon.rpc("VM.get_resident_on", vm) == NULL
        daemon.rpc("VM.start", vm, False, False)
        assert daemon.rpc("VM.get_power_state", vm) == "Running"
    logs = "\n".join(p.read_text() for p in tmp_path.glob("stderr-*"))
    assert "live migration" in logs
    assert f"VM {vm.removeprefix('OpaqueRef:')}: its domain ended with an earlier run" in logs
    assert PASSWORD not in logs
