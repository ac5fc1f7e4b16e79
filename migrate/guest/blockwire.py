"""The guest's disk protocol: requests and responses on a stream socket to the daemon's block
backend (:mod:`migrate.guest.blockback`), and the guest's synchronous client.

A request is a 24-byte header (op u8, 3 zero bytes, length u32, offset u64, tag u64, little
endian), followed for a write by ``length`` bytes. The response is a 16-byte header (status
i32: 0 or an errno, length u32, tag u64) followed by ``length`` bytes: the data of a read, or
the UTF-8 message of an error. One request at a time per disk, at most :data:`MAX_IO` bytes.
No trio: the guest program uses it.
"""

from __future__ import annotations

import socket
import struct

REQUEST = struct.Struct("<B3xIQQ")
RESPONSE = struct.Struct("<iIQ")
READ, WRITE, FLUSH = 1, 2, 3
OPS = {READ: "read", WRITE: "write", FLUSH: "flush"}
MAX_IO = 1 << 20
"""Largest read or write of one request."""
MAX_MESSAGE = 4096
"""Longest error message a response carries."""


class BlockIOError(OSError):
    """The backend failed a request (its errno and message), or the connection broke."""


class BlockClient:
    """A guest's disk of ``size`` bytes behind the backend at the other end of ``sock``."""

    def __init__(self, sock: socket.socket, size: int) -> None:
        self.sock = sock
        self.size = size
        self._tag = 0
        self._head = bytearray(RESPONSE.size)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Write ``data`` at ``offset``; returns once the backend acknowledged it."""
        self._call(WRITE, offset, len(data), data)

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``."""
        return self._call(READ, offset, length, b"")

    def flush(self) -> None:
        """Make every acknowledged write durable."""
        self._call(FLUSH, 0, 0, b"")

    def _call(self, op: int, offset: int, length: int, payload: bytes | memoryview) -> bytes:
        self._tag += 1
        self.sock.sendall(REQUEST.pack(op, length, offset, self._tag))
        if payload:
            self.sock.sendall(payload)
        self._recv_exactly(memoryview(self._head))
        status, size, tag = RESPONSE.unpack(self._head)
        body = bytearray(size)
        self._recv_exactly(memoryview(body))
        if tag != self._tag:
            raise BlockIOError(0, f"disk response for request {tag}, expected {self._tag}")
        if status:
            raise BlockIOError(status, body.decode("utf-8", "replace"))
        return bytes(body)

    def _recv_exactly(self, view: memoryview) -> None:
        while len(view):
            got = self.sock.recv_into(view)
            if got == 0:
                raise BlockIOError(0, "the block backend closed the disk connection")
            view = view[got:]
