"""The memory image end to end in one process: MemorySender on a real guest into
MemoryReceiver creating a real paused guest, over a socket pair (migrate.migration.sender,
receiver, pages)."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import AsyncIterator

import numpy as np
import pytest
import trio

from migrate.formats import suspend
from migrate.formats.xenops import VmMetadata
from migrate.guest.hypervisor import GuestSpec
from migrate.guest.processes import ProcessHypervisor
from migrate.guest.workloads import check_ledger, read_ledger
from migrate.migration.channel import Channel
from migrate.migration.pages import expand_runs, page_words, union_of_runs, zero_pages
from migrate.migration.policy import PolicyConfig
from migrate.migration.receiver import ImageError, MemoryReceiver
from migrate.migration.sender import MemorySender

MiB = 1 << 20
SRC = "6b1d3c9e-0000-4000-8000-000000000001"


@pytest.fixture
async def hypervisors(
    nursery: trio.Nursery,
) -> AsyncIterator[tuple[ProcessHypervisor, ProcessHypervisor]]:
    source, destination = ProcessHypervisor(), ProcessHypervisor()
    await nursery.start(source.serve)
    await nursery.start(destination.serve)
    yield source, destination


def pair() -> tuple[Channel, Channel]:
    a, b = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return Channel(trio.SocketStream(a), "mem"), Channel(trio.SocketStream(b), "mem")


def test_union_of_runs() -> None:
    a = np.array([[2, 5], [9, 10]], dtype=np.int64)
    b = np.array([[4, 7], [12, 14]], dtype=np.int64)
    assert union_of_runs(16, a, b).tolist() == [2, 3, 4, 5, 6, 9, 12, 13]
    assert union_of_runs(16, a, np.empty((0, 2), dtype=np.int64)).tolist() == [2, 3, 4, 9]
    assert union_of_runs(16).dtype == np.int64


def test_expand_runs_and_zero_pages() -> None:
    runs = np.array([[2, 5], [9, 10], [12, 14]], dtype=np.int64)
    assert expand_runs(runs).tolist() == [2, 3, 4, 9, 12, 13]
    assert expand_runs(np.empty((0, 2), dtype=np.int64)).tolist() == []
    memory = bytearray(8 * 4096)
    memory[1 * 4096] = 1  # first word non-zero
    memory[3 * 4096 + 4000] = 7  # only the tail non-zero
    zero = zero_pages(page_words(memoryview(memory)), np.arange(8, dtype=np.int64))
    assert zero.tolist() == [True, False, True, False, True, True, True, True]


async def migrate_once(
    hypervisors: tuple[ProcessHypervisor, ProcessHypervisor],
    workload: str,
    memory: int,
    live: bool,
) -> None:
    source_hv, destination_hv = hypervisors
    source = await source_hv.create(GuestSpec(SRC, memory, workload=workload))
    await trio.sleep(0.3)  # let the workload write
    metadata = VmMetadata(SRC, "vm", memory, 1, workload)
    out, into = pair()

    async def create(meta: VmMetadata) -> object:
        assert meta == metadata
        return await destination_hv.create(
            GuestSpec(meta.uuid, meta.memory, workload=meta.workload), paused=True
        )

    receiver = MemoryReceiver(into, create, memory // 4096)  # type: ignore[arg-type]
    sender = MemorySender(source, out, PolicyConfig(), live=live)
    async with trio.open_nursery() as nursery:
        received: list[object] = []

        async def receive() -> None:
            received.append(await receiver.receive())

        nursery.start_soon(receive)
        prefix = suspend.SIGNATURE + suspend.xenops_record(metadata) + suspend.libxc_header()
        report = await sender.send(prefix, suspend.end_of_image())
    destination, got = received[0]  # type: ignore[misc]
    destination_fd = destination._ram_fd
    assert got == metadata
    assert source.paused and destination.paused
    assert hashlib.sha256(source.memory).digest() == hashlib.sha256(destination.memory).digest()
    assert destination.cpu_state() == source.cpu_state()
    if live:
        assert report.rounds and report.stop_reason
    await destination.unpause()
    await source.destroy()
    # the sender let go of the source's memory: destroying its domain unmapped it
    with open("/proc/self/maps") as maps:
        mapped = [line.split()[4] for line in maps if f"xfer-guest-{SRC}" in line]
    assert mapped == [str(os.fstat(destination_fd).st_ino)], mapped  # the destination's only
    await trio.sleep(0.3)
    if "ledger" in workload:
        await destination.pause()
        verdict = check_ledger(read_ledger(destination.memory))
        assert verdict.intact, str(verdict)
        print(verdict)
    await destination.destroy()


@pytest.mark.parametrize("workload", ["idle", "uniform:8M", "hotset:8M:4M+ledger"])
async def test_live_stream(
    hypervisors: tuple[ProcessHypervisor, ProcessHypervisor], workload: str
) -> None:
    await migrate_once(hypervisors, workload, 16 * MiB, live=True)


async def test_non_live_stream(hypervisors: tuple[ProcessHypervisor, ProcessHypervisor]) -> None:
    await migrate_once(hypervisors, "ledger", 16 * MiB, live=False)


async def test_cut_image_is_an_image_error(
    hypervisors: tuple[ProcessHypervisor, ProcessHypervisor],
) -> None:
    _, destination_hv = hypervisors
    out, into = pair()
    metadata = VmMetadata(SRC, "vm", 16 * MiB, 1, "idle")

    async def create(meta: VmMetadata) -> object:
        return await destination_hv.create(GuestSpec(meta.uuid, meta.memory), paused=True)

    receiver = MemoryReceiver(into, create)  # type: ignore[arg-type]
    await out.send(
        [
            suspend.SIGNATURE
            + suspend.xenops_record(metadata)
            + suspend.libxc_header()
            + b"\xff" * 10
        ]
    )
    await out.aclose()
    with pytest.raises(ImageError, match="memory image cut at offset"):
        await receiver.receive()
    assert receiver.domain is not None
    await receiver.domain.destroy()
