"""Migration of VMs whose disks are on an SR both hosts share (``xfer serve --shared-sr``):
the shared SR's one identity, memory-only migration there and back with the ledger intact in
RAM and on the disk, the VDI known and claimed where the VM runs, refusals of disks that are
not shared, and a restart that leaves the other host's files alone."""

from __future__ import annotations

import json
import random
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from migrate.guest.workloads import check_ledger, read_disk_ledger, read_ledger
from migrate.storage.sr import IDENTITY_FILE
from support import CuttingProxy, Daemon, TimeoutTransport, running_daemon, wait_until_sync
from test_migration import dest_map, migrate, read_image, request
from test_migration_cuts import settle, through

MiB = 1 << 20
MEMORY = 32 * MiB
DISK = 4 * MiB
WORKLOAD = "hotset:20M:8M+ledger"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SR directory both hosts attach."""
    return tmp_path_factory.mktemp("shared") / "sr"


@pytest.fixture(scope="module")
def hosts(
    tmp_path_factory: pytest.TempPathFactory, shared: Path
) -> Iterator[tuple[Daemon, Daemon]]:
    """Two daemons started on the same shared SR directory."""
    with (
        running_daemon(tmp_path_factory.mktemp("a"), "--shared-sr", str(shared)) as a,
        running_daemon(tmp_path_factory.mktemp("b"), "--shared-sr", str(shared)) as b,
    ):
        yield a, b


def call(daemon: Daemon, method: str, *params: Any) -> dict[str, Any]:
    """The whole XML-RPC answer to ``method(session, PARAMS...)``, success or not."""
    with xmlrpc.client.ServerProxy(daemon.url(), transport=TimeoutTransport()) as proxy:
        answer: dict[str, Any] = getattr(proxy, method)(daemon.session, *params)
    return answer


def shared_sr(daemon: Daemon) -> str:
    """The uuid of the daemon's (one) shared SR."""
    records = daemon.rpc("SR.get_all_records").values()
    (uuid,) = [record["uuid"] for record in records if record["shared"]]
    return str(uuid)


def raw_vdi(daemon: Daemon, sr: str) -> str:
    """A new raw VDI of :data:`DISK` bytes in SR ``sr``; its uuid."""
    record = {
        "SR": daemon.rpc("SR.get_by_uuid", sr),
        "virtual_size": str(DISK),
        "name_label": "disk",
        "sm_config": {"type": "raw"},
    }
    return str(daemon.rpc("VDI.get_uuid", daemon.rpc("VDI.create", record)))


def vm_with_disk(daemon: Daemon, vdi: str, workload: str = WORKLOAD) -> str:
    """A Running VM whose disk 0 is VDI ``vdi``; its ref."""
    record = {
        "name_label": "shared",
        "memory_static_max": str(MEMORY),
        "VCPUs_max": "1",
        "other_config": {"xfer_workload": workload},
    }
    vm: str = daemon.rpc("VM.create", record)
    vbd = {
        "VM": vm,
        "VDI": daemon.rpc("VDI.get_by_uuid", vdi),
        "userdevice": "0",
        "mode": "RW",
        "type": "Disk",
    }
    daemon.rpc("VBD.create", vbd)
    daemon.rpc("VM.start", vm, False, False)
    return vm


def disk_vdis(daemon: Daemon, vm: str) -> list[str]:
    """The uuids of the VDIs of VM ``vm``'s VBDs on ``daemon``."""
    return [
        daemon.rpc("VDI.get_uuid", daemon.rpc("VBD.get_VDI", vbd))
        for vbd in daemon.rpc("VM.get_VBDs", vm)
    ]


def moved(task: dict[str, Any]) -> None:
    """The migration ``task`` succeeded, the memory equal on both sides at the pause."""
    assert task["status"] == "success", task["error_info"]
    digests = task["report"]["memory_digest"]
    assert digests["source"] == digests["destination"] != ""


def test_one_identity(hosts: tuple[Daemon, Daemon], shared: Path) -> None:
    a, b = hosts
    assert shared_sr(a) == shared_sr(b)
    identity = json.loads((shared / IDENTITY_FILE).read_text())
    assert identity == {"uuid": shared_sr(a), "shared": True}
    # the default SRs stay each host's own
    for daemon in hosts:
        assert (
            daemon.rpc("SR.get_record", daemon.rpc("SR.get_by_uuid", daemon.sr))["shared"] is False
        )
    assert a.sr != b.sr


def test_there_and_back(hosts: tuple[Daemon, Daemon], shared: Path) -> None:
    a, b = hosts
    vdi = raw_vdi(a, shared_sr(a))
    assert vdi not in b.vdis()  # made after b started: b learns of it from the migration
    vm = vm_with_disk(a, vdi)
    wait_until_sync(
        lambda: len(read_disk_ledger((shared / f"{vdi}.vhd").read_bytes()[:DISK])) >= 20,
        what="the guest's first disk records",
    )
    moved(migrate(a, vm, dest_map(b), verify="true"))
    assert b.rpc("VM.get_power_state", vm) == "Running"
    assert vm not in a.rpc("VM.get_all")
    assert disk_vdis(b, vm) == [vdi]
    assert b.vdis()[vdi]["SR"] == b.rpc("SR.get_by_uuid", shared_sr(b))
    # b holds the disk for the VM now
    answer = call(b, "VDI.destroy", b.rpc("VDI.get_by_uuid", vdi))
    assert answer["Status"] == "Failure" and answer["ErrorDescription"][0] == "VDI_IN_USE"
    time.sleep(0.3)  # the guest writes on b a while
    # and back: a released its claim when its copy was destroyed, so it can claim it again
    moved(migrate(b, vm, dest_map(a), verify="true"))
    assert a.rpc("VM.get_power_state", vm) == "Running"
    assert vm not in b.rpc("VM.get_all")
    assert disk_vdis(a, vm) == [vdi]
    time.sleep(0.3)
    status, image = request(a, "GET", f"/vm_save?vm={vm}")
    assert status == 200
    ram = check_ledger(read_ledger(read_image(image)[1]))
    assert ram.intact, str(ram)
    disk = check_ledger(read_disk_ledger((shared / f"{vdi}.vhd").read_bytes()[:DISK]))
    assert disk.intact, str(disk)
    # every record the guest committed in RAM it had written to the disk first, on either host
    assert disk.first <= 1 and disk.last >= ram.last
    a.rpc("VM.destroy", vm)
    a.rpc("VDI.destroy", a.rpc("VDI.get_by_uuid", vdi))


def test_cut_mid_image_releases_the_disk(hosts: tuple[Daemon, Daemon], shared: Path) -> None:
    """A receive cut in the middle of the memory image lets go of the disk it claimed: the
    retry of the same VM to the same host claims it again; one domain wrote the disk at a
    time, so its ledger is intact."""
    a, b = hosts
    vdi = raw_vdi(a, shared_sr(a))
    vm = vm_with_disk(a, vdi, "ledger")
    with CuttingProxy(b.port) as relay:
        assert migrate(a, vm, through(dest_map(b), relay))["status"] == "success"
        size = relay.connections[1].request_total
    here, there = b, a
    for position in sorted(random.Random(11).sample(range(size // 4, size), 3)):
        with CuttingProxy(there.port, cut_request=position, only=1) as relay:
            task = migrate(here, vm, through(dest_map(there), relay))
        assert task["status"] == "failure", position
        assert [(d.port, state) for d, state in settle(vm, a, b)] == [(here.port, "Running")]
        retry = migrate(here, vm, dest_map(there), verify="true")
        moved(retry)
        here, there = there, here
    assert disk_vdis(here, vm) == [vdi]
    here.rpc("VM.clean_shutdown", vm)
    disk = check_ledger(read_disk_ledger((shared / f"{vdi}.vhd").read_bytes()[:DISK]))
    assert disk.intact and disk.records > 20, str(disk)
    here.rpc("VM.destroy", vm)
    here.rpc("VDI.destroy", here.rpc("VDI.get_by_uuid", vdi))


def test_unshared_disk_refused(hosts: tuple[Daemon, Daemon]) -> None:
    a, b = hosts
    vdi = raw_vdi(a, a.sr)
    vm = vm_with_disk(a, vdi, "ledger")
    task = migrate(a, vm, dest_map(b))
    assert task["status"] == "failure"
    assert task["error_info"][0] == "VM_MIGRATE_FAILED"
    why = task["error_info"][4]
    assert vdi in why and a.sr in why and "issue 11" in why, why
    assert a.rpc("VM.get_power_state", vm) == "Running"
    assert vm not in b.rpc("VM.get_all")
    a.rpc("VM.hard_shutdown", vm)
    a.rpc("VM.destroy", vm)
    a.rpc("VDI.destroy", a.rpc("VDI.get_by_uuid", vdi))


def test_destination_without_the_sr_refuses(hosts: tuple[Daemon, Daemon], tmp_path: Path) -> None:
    a, _ = hosts
    sr = shared_sr(a)
    vdi = raw_vdi(a, sr)
    vm = vm_with_disk(a, vdi, "ledger")
    with running_daemon(tmp_path) as c:
        task = migrate(a, vm, dest_map(c))
        assert task["status"] == "failure"
        why = task["error_info"][4]
        assert vdi in why and sr in why and "does not have that SR" in why, why
        assert vm not in c.rpc("VM.get_all")
        assert vdi not in c.vdis()
    assert a.rpc("VM.get_power_state", vm) == "Running"
    a.rpc("VM.clean_shutdown", vm)
    a.rpc("VM.destroy", vm)
    a.rpc("VDI.destroy", a.rpc("VDI.get_by_uuid", vdi))


def test_restart_leaves_the_other_hosts_files(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    with running_daemon(tmp_path / "a", "--shared-sr", str(shared)) as a:
        sr = shared_sr(a)
        with running_daemon(tmp_path / "b", "--shared-sr", str(shared)) as b:
            known = raw_vdi(b, sr)  # b knows it; a does not yet
        mine = raw_vdi(a, sr)
        # an import of a's in progress: its part file beside the VDI
        part = shared / f".{mine}.vhd.part"
        part.write_bytes(b"\0" * 512)
        with running_daemon(tmp_path / "b", "--shared-sr", str(shared)) as b:
            assert shared_sr(b) == sr
            vdis = b.vdis()
            assert known in vdis and mine in vdis  # a's file introduced, as SR.scan does
            assert vdis[mine]["virtual_size"] == str(DISK)
        assert part.exists()
        assert (shared / f"{mine}.vhd").exists() and (shared / f"{known}.vhd").exists()
        assert mine in a.vdis()
        part.unlink()
