"""Live migration between two real ``xfer serve`` daemons on ::1 (migrate.migration): each
workload, memory compared at the pause, the ledger intact on the destination, the source's
copy gone; save and restore; refusals."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from migrate.formats import libxc, suspend
from migrate.formats.xenops import VmMetadata
from migrate.guest.workloads import check_ledger, read_ledger
from support import Daemon, TimeoutTransport, running_daemon, wait_until_sync  # noqa: F401

MiB = 1 << 20
MEMORY = 32 * MiB


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Daemon]]:
    """Two daemons: a source and a destination."""
    with (
        running_daemon(tmp_path_factory.mktemp("source")) as source,
        running_daemon(tmp_path_factory.mktemp("destination")) as destination,
    ):
        yield source, destination


def read_image(data: bytes) -> tuple[VmMetadata, bytearray, bytes]:
    """The metadata, memory and CPU state of a whole suspend image."""
    reader = suspend.ImageReader()
    memory = bytearray()
    cpu = b""
    metadata = None
    at = 0
    while (n := reader.need()) > 0:
        event = reader.feed(data[at : at + n])
        at += n
        if isinstance(event, suspend.Xenops):
            metadata = event.metadata
            memory = bytearray(metadata.memory)
        elif isinstance(event, libxc.Pages):
            words = np.frombuffer(memory, dtype=np.uint64).reshape(-1, 512)
            words[event.zero_pfns.astype(np.int64)] = 0
            for start, end in event.runs.tolist():
                size = (end - start) * 4096
                memory[start * 4096 : end * 4096] = data[at : at + size]
                at += size
            reader.payload_done()
        elif isinstance(event, libxc.HvmContext):
            cpu = event.data
    assert at == len(data), "bytes after End_of_image"
    assert metadata is not None
    return metadata, memory, cpu


def request(daemon: Daemon, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One request to ``daemon`` with its session; status and body."""
    conn = http.client.HTTPConnection("::1", daemon.port, timeout=60)
    try:
        sep = "&" if "?" in path else "?"
        conn.request(method, f"{path}{sep}session_id={daemon.session}", body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def start_vm(daemon: Daemon, workload: str, memory: int = MEMORY, name: str = "vm") -> str:
    record = {
        "name_label": name,
        "memory_static_max": str(memory),
        "VCPUs_max": "1",
        "other_config": {"xfer_workload": workload},
    }
    vm: str = daemon.rpc("VM.create", record)
    daemon.rpc("VM.start", vm, False, False)
    return vm


def dest_map(destination: Daemon) -> dict[str, str]:
    """``host.migrate_receive`` of the destination on its loopback network."""
    host = destination.rpc("host.get_all")[0]
    for pif in destination.rpc("PIF.get_all"):
        if destination.rpc("PIF.get_device", pif) == "lo":
            network = destination.rpc("PIF.get_network", pif)
            dest: dict[str, str] = destination.rpc("host.migrate_receive", host, network, {})
            return dest
    raise AssertionError("the destination has no loopback PIF")


def migrate(source: Daemon, vm: str, dest: dict[str, str], **options: str) -> dict[str, Any]:
    """``Async.VM.migrate_send``; the ended task's record (status, result, report)."""
    task = source.rpc("Async.VM.migrate_send", vm, dest, True, {}, {}, options)
    status = wait_until_sync(
        lambda: (s := source.rpc("task.get_status", task)) not in ("pending", "cancelling") and s,
        timeout=120,
        what="the migration task to end",
    )
    record: dict[str, Any] = source.rpc("task.get_record", task)
    record["status"] = status
    report = record["other_config"].get("xfer_migration")
    record["report"] = json.loads(report) if report else None
    return record


@pytest.mark.parametrize("workload", ["idle", "uniform:16M", "hotset:20M:8M+ledger", "ledger"])
def test_live_migration(hosts: tuple[Daemon, Daemon], workload: str) -> None:
    source, destination = hosts
    vm = start_vm(source, workload)
    task = migrate(source, vm, dest_map(destination), verify="true")
    assert task["status"] == "success", task["error_info"]
    assert task["progress"] == 1.0
    report = task["report"]
    assert report["state"] == "done" and report["rounds"] and report["stop_reason"]
    assert report["memory"] == MEMORY and report["downtime"] > 0
    digests = report["memory_digest"]
    assert digests["source"] == digests["destination"] != ""
    # the VM runs on the destination only
    assert destination.rpc("VM.get_power_state", vm) == "Running"
    assert source.rpc("VM.get_all") == [] or vm not in source.rpc("VM.get_all")
    if "ledger" in workload:
        status, image = request(destination, "GET", f"/vm_save?vm={vm}")
        assert status == 200
        metadata, memory, _ = read_image(image)
        assert metadata.uuid == vm.removeprefix("OpaqueRef:")
        verdict = check_ledger(read_ledger(memory))
        assert verdict.intact, str(verdict)
        assert destination.rpc("VM.get_power_state", vm) == "Halted"
        destination.rpc("VM.destroy", vm)
    else:
        destination.rpc("VM.hard_shutdown", vm)
        destination.rpc("VM.destroy", vm)


def test_save_and_restore(hosts: tuple[Daemon, Daemon]) -> None:
    source, destination = hosts
    vm = start_vm(source, "ledger")
    time.sleep(0.5)  # records to carry (a tick a millisecond; a loaded host starts guests late)
    status, image = request(source, "GET", f"/vm_save?vm={vm}")
    assert status == 200
    assert source.rpc("VM.get_power_state", vm) == "Halted"
    before = check_ledger(read_ledger(read_image(image)[1]))
    assert before.intact
    # restored on the other host, it carries on
    status, body = request(destination, "PUT", "/vm_restore", image)
    assert status == 200, body
    assert body.decode() == vm
    assert destination.rpc("VM.get_power_state", vm) == "Running"
    time.sleep(0.5)
    status, again = request(destination, "GET", f"/vm_save?vm={vm}")
    after = check_ledger(read_ledger(read_image(again)[1]))
    assert after.intact and after.last > before.last and after.first <= before.last
    # a truncated image is refused and leaves nothing running
    status, body = request(destination, "PUT", "/vm_restore", image[: len(image) // 2])
    assert status == 400 and b"memory image" in body
    assert destination.rpc("VM.get_power_state", vm) == "Halted"
    for daemon in hosts:
        daemon.rpc("VM.destroy", vm) if vm in daemon.rpc("VM.get_all") else None


def test_refusals(hosts: tuple[Daemon, Daemon]) -> None:
    source, destination = hosts
    vm = start_vm(source, "idle")
    dest = dest_map(destination)
    task = migrate(source, vm, dest, compress="true")
    assert task["status"] == "failure"
    assert task["error_info"][0] == "INVALID_VALUE"
    task = migrate(source, vm, {**dest, "xenops": dest["xenops"].replace("/services", "/nowhere")})
    assert task["status"] == "failure"
    assert task["error_info"][0] == "VM_MIGRATE_FAILED"
    assert "404" in task["error_info"][4]
    bad = {**dest, "session_id": "OpaqueRef:00000000-0000-0000-0000-000000000000"}
    bad["xenops"] = bad["xenops"].split("?")[0]
    task = migrate(source, vm, bad)
    assert task["status"] == "failure" and "401" in task["error_info"][4]
    assert source.rpc("VM.get_power_state", vm) == "Running"
    assert vm not in destination.rpc("VM.get_all")
    source.rpc("VM.hard_shutdown", vm)
    source.rpc("VM.destroy", vm)
