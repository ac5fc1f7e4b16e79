"""The block backend over a socketpair: reads, writes, flushes on the file, refusals sent to
the guest as errors, the quiesce of a pause (the guest's synchronous client in a thread)."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import pytest
import trio

from migrate.guest.blockback import BlockBackend, open_disk
from migrate.guest.blockwire import (
    MAX_IO,
    READ,
    REQUEST,
    RESPONSE,
    WRITE,
    BlockClient,
    BlockIOError,
)
from migrate.guest.hypervisor import DiskAttachment

SIZE = 4 << 20


@pytest.fixture
async def served(nursery: trio.Nursery, tmp_path: Path) -> tuple[BlockClient, BlockBackend, Path]:
    """A backend serving a 4 MiB raw file, and the guest's client of it."""
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(SIZE))
    fd, size = open_disk(DiskAttachment("xvda", str(path)))
    mine, theirs = socket.socketpair()
    backend = BlockBackend("xvda", fd, size, mine)
    nursery.start_soon(backend.serve)
    return BlockClient(theirs, size), backend, path


async def test_read_write_flush(served: tuple[BlockClient, BlockBackend, Path]) -> None:
    client, backend, path = served
    data = os.urandom(MAX_IO)
    await trio.to_thread.run_sync(client.write, 4096, data)
    await trio.to_thread.run_sync(client.write, SIZE - 3, b"end")
    assert path.read_bytes()[4096 : 4096 + MAX_IO] == data
    assert await trio.to_thread.run_sync(client.read, 4090, 10) == bytes(6) + data[:4]
    await trio.to_thread.run_sync(client.flush)
    await backend.quiesce()
    await backend.sync()
    assert path.read_bytes()[-3:] == b"end"


async def test_out_of_bounds_refused(served: tuple[BlockClient, BlockBackend, Path]) -> None:
    client, _, path = served
    beyond = f"write of 4 bytes at {SIZE - 2} is beyond the {SIZE}-byte disk"
    with pytest.raises(BlockIOError, match=beyond):
        await trio.to_thread.run_sync(client.write, SIZE - 2, b"four")
    assert path.stat().st_size == SIZE
    with pytest.raises(BlockIOError) as caught:
        await trio.to_thread.run_sync(client.read, 1 << 40, 1)
    assert caught.value.errno == errno.EINVAL
    assert await trio.to_thread.run_sync(client.read, 0, 4) == bytes(4)  # still served


async def test_oversized_request_ends_the_connection(
    served: tuple[BlockClient, BlockBackend, Path],
) -> None:
    client, _, _ = served

    def oversized() -> tuple[int, bytes, bytes]:
        client.sock.sendall(REQUEST.pack(WRITE, MAX_IO + 1, 0, 7))
        head = client.sock.recv(RESPONSE.size, socket.MSG_WAITALL)
        status, length, _ = RESPONSE.unpack(head)
        message = client.sock.recv(length, socket.MSG_WAITALL)
        return status, message, client.sock.recv(1)

    status, message, rest = await trio.to_thread.run_sync(oversized)
    assert status == errno.EINVAL and b"a request of 1048577 bytes" in message
    assert rest == b""  # closed


async def test_quiesce_answers_what_was_sent(
    served: tuple[BlockClient, BlockBackend, Path],
) -> None:
    """A request complete in the socket is answered before quiesce returns; a partial one
    (the guest stopped mid-send) is left alone and does not block it."""
    client, backend, path = served
    client.sock.sendall(REQUEST.pack(WRITE, 4, 100, 1) + b"done")
    with trio.fail_after(5):
        await backend.quiesce()
    assert path.read_bytes()[100:104] == b"done"
    client.sock.sendall(REQUEST.pack(WRITE, 4, 200, 2) + b"ha")
    with trio.fail_after(5):
        await backend.quiesce()
    assert path.read_bytes()[200:204] == bytes(4)


async def test_quiesce_does_not_wait_for_a_stopped_reader(
    served: tuple[BlockClient, BlockBackend, Path],
) -> None:
    """A read's answer larger than the socket holds waits for the guest to read it; a
    stopped guest never does, and the pause must not wait for it either."""
    client, backend, _ = served
    client.sock.sendall(REQUEST.pack(READ, MAX_IO, 0, 1))
    await trio.sleep(0.05)
    with trio.fail_after(5):
        await backend.quiesce()
    head = await trio.to_thread.run_sync(client.sock.recv, RESPONSE.size, socket.MSG_WAITALL)
    assert RESPONSE.unpack(head) == (0, MAX_IO, 1)


async def test_quiesce_after_the_end(served: tuple[BlockClient, BlockBackend, Path]) -> None:
    """A connection ended by a protocol violation, with bytes left unread, does not hold a
    pause forever."""
    client, backend, _ = served
    client.sock.sendall(REQUEST.pack(9, 0, 0, 1) + bytes(100))
    await trio.sleep(0.05)
    with trio.fail_after(5):
        await backend.quiesce()
