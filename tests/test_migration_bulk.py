"""Gather/scatter I/O in a worker thread (migrate.migration.bulk), on a real socket pair."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from migrate.migration.bulk import Stopped, readv_all, writev_all


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def test_many_buffers_each_way_exactly() -> None:
    a, b = pair()
    data = os.urandom(8 << 20)
    pieces = [memoryview(data)[i : i + 3000] for i in range(0, len(data), 3000)]  # > IOV_MAX
    into = bytearray(len(data))
    views = [memoryview(into)[i : i + 5000] for i in range(0, len(into), 5000)]
    got: list[int] = []
    reader = threading.Thread(
        target=lambda: got.append(readv_all(b.fileno(), views, 10, threading.Event()))
    )
    reader.start()
    assert writev_all(a.fileno(), pieces, 10, threading.Event()) == len(data)
    reader.join(10)
    assert got == [len(data)] and into == data
    a.close()
    b.close()


def test_end_of_connection_timeout_and_stop() -> None:
    a, b = pair()
    a.send(b"abc")
    a.close()
    with pytest.raises(ConnectionError, match="closed"):
        readv_all(b.fileno(), [memoryview(bytearray(10))], 5, threading.Event())
    b.close()
    a, b = pair()
    with pytest.raises(TimeoutError, match=r"could not receive for 0\.2 s"):
        readv_all(b.fileno(), [memoryview(bytearray(10))], 0.2, threading.Event())
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        readv_all(b.fileno(), [memoryview(bytearray(10))], 5, stop)
    a.close()
    b.close()
