"""The daemon's block backend: serves one guest disk over a socket (the
:mod:`~migrate.guest.blockwire` protocol) with ``pread``/``pwrite`` on the VDI's file.

Raw files are served whole; a fixed VHD (raw data then a footer) is served as its data. Other
formats (dynamic and differencing VHDs) are refused with a GuestError. :meth:`quiesce` is
the pause's half on the disk side: it returns when no complete request is left unanswered.
Durability is :meth:`sync` (and the guest's flush requests), apart: an ``fdatasync`` costs a
journal commit (4.5 ms median, 15 ms at worst, measured on ext4 under load), a large part of
a 20 ms migration downtime.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
import struct
import termios

import trio

from migrate.guest.blockwire import FLUSH, MAX_IO, MAX_MESSAGE, OPS, READ, REQUEST, RESPONSE, WRITE
from migrate.guest.hypervisor import DiskAttachment, GuestError
from vhd.format import FIXED, FOOTER_SIZE, Footer, trailing_footer_offset

_QUIESCE_SPINS = 100


def open_disk(disk: DiskAttachment) -> tuple[int, int]:
    """Open the file of ``disk`` for the guest: (fd, bytes the guest sees). GuestError when
    it is missing, not a regular file, or not a raw disk."""
    try:
        fd = os.open(disk.path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise GuestError(f"disk {disk.device}: cannot open {disk.path}: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise GuestError(f"disk {disk.device}: {disk.path} is not a regular file")
        return fd, _raw_size(disk, fd, info.st_size)
    except BaseException:
        os.close(fd)
        raise


def _raw_size(disk: DiskAttachment, fd: int, size: int) -> int:
    if size >= FOOTER_SIZE:
        for at in (trailing_footer_offset(size), 0):
            raw = os.pread(fd, FOOTER_SIZE, at)
            if Footer.problems(raw, at):
                continue
            footer = Footer.parse(raw, at)
            if footer.disk_type != FIXED or at != size - FOOTER_SIZE:
                raise GuestError(
                    f"disk {disk.device}: {disk.path} is a {footer.type_name} VHD; guest disks "
                    "must be raw (a raw file or a fixed VHD)"
                )
            if footer.current_size > at:
                raise GuestError(
                    f"disk {disk.device}: {disk.path} is a fixed VHD of {footer.current_size} "
                    f"bytes in a file of {size}"
                )
            return footer.current_size
    if size == 0:
        raise GuestError(f"disk {disk.device}: {disk.path} is empty")
    return size


class BlockBackend:
    """Serves disk ``device`` (``size`` bytes of the file ``fd``) to the guest at the other
    end of ``sock``. Owns ``fd`` and ``sock``: :meth:`close` closes them."""

    def __init__(self, device: str, fd: int, size: int, sock: socket.socket) -> None:
        self.device = device
        self.fd = fd
        self.size = size
        self.sock = sock
        sock.setblocking(False)
        self._buffer = bytearray(REQUEST.size + MAX_IO)
        self._have = 0
        self._busy = False  # a request being executed
        self._sending = False  # an answer waiting for room in the socket
        self._done = False
        self._unsynced = False

    def close(self) -> None:
        """Close the file and the socket; idempotent."""
        self.sock.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    async def serve(self) -> None:
        """Answer the guest's requests until it closes its end (or a protocol violation,
        answered with an error, ends the connection)."""
        try:
            while True:
                await trio.lowlevel.wait_readable(self.sock)
                self._busy = True
                try:
                    if not await self._serve_available():
                        return
                finally:
                    self._busy = False
        finally:
            self._done = True
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)

    async def quiesce(self) -> None:
        """Return once every complete request the (stopped) guest sent is answered: its
        acknowledged writes are in the file (the host's page cache), which every reader of
        the file on this host sees. A request the guest was stopped in the middle of sending
        stays unanswered: it was not acknowledged, and the guest sends it again when it
        resumes."""
        spins = 0
        while not self._done and (self._busy or (not self._sending and self._unread())):
            spins += 1
            await (trio.sleep(0) if spins < _QUIESCE_SPINS else trio.sleep(0.0005))

    def _unread(self) -> bool:
        """Whether the guest sent bytes the backend has not received yet."""
        if self.sock.fileno() < 0:
            return False
        raw = fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        return bool(struct.unpack("i", raw)[0])

    async def sync(self) -> None:
        """Make every acknowledged write durable (``fdatasync`` in a worker thread, when
        there was a write since the last)."""
        if self._unsynced and self.fd >= 0:
            self._unsynced = False
            await trio.to_thread.run_sync(os.fdatasync, self.fd)

    async def _serve_available(self) -> bool:
        """Receive what is there and answer each complete request; False at the end."""
        view = memoryview(self._buffer)
        while True:
            try:
                got = self.sock.recv_into(view[self._have :])
            except BlockingIOError:
                return True
            if got == 0:
                return False
            self._have += got
            while self._have >= REQUEST.size:
                op, length, offset, tag = REQUEST.unpack_from(self._buffer)
                if op not in OPS or length > MAX_IO:
                    what = f"op {op}" if op not in OPS else f"a request of {length} bytes"
                    await self._answer(errno.EINVAL, tag, f"{what} (at most {MAX_IO} bytes)")
                    return False
                end = REQUEST.size + (length if op == WRITE else 0)
                if self._have < end:
                    break
                await self._execute(op, offset, length, tag, view[REQUEST.size : end])
                self._buffer[: self._have - end] = self._buffer[end : self._have]
                self._have -= end

    async def _execute(
        self, op: int, offset: int, length: int, tag: int, payload: memoryview
    ) -> None:
        if op != FLUSH and (offset > self.size or length > self.size - offset):
            bounds = f"{OPS[op]} of {length} bytes at {offset}"
            await self._answer(errno.EINVAL, tag, f"{bounds} is beyond the {self.size}-byte disk")
            return
        try:
            if op == WRITE:
                done = 0
                while done < length:
                    done += os.pwrite(self.fd, payload[done:], offset + done)
                self._unsynced = True
                await self._answer(0, tag)
            elif op == READ:
                data = os.pread(self.fd, length, offset)
                await self._answer(0, tag, data.ljust(length, b"\0"))
            else:
                self._unsynced = False
                await trio.to_thread.run_sync(os.fdatasync, self.fd)
                await self._answer(0, tag)
        except OSError as e:
            await self._answer(e.errno or errno.EIO, tag, f"{OPS[op]}: {e.strerror}")

    async def _answer(self, status: int, tag: int, body: bytes | str = b"") -> None:
        if isinstance(body, str):
            body = body.encode()[:MAX_MESSAGE]
        data = RESPONSE.pack(status, len(body), tag) + body
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                # The request is done; only its answer waits for a guest that may be stopped.
                self._busy, self._sending = False, True
                try:
                    await trio.lowlevel.wait_writable(self.sock)
                finally:
                    self._busy, self._sending = True, False
