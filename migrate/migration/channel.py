"""A migration connection past its HTTP head: raw bytes both ways, with a deadline on every
wait.

On a plain TCP socket, sends gather many buffers (page runs of the guest's mapping) into one
``sendmsg`` (at most :data:`IOV_MAX` at a time) and receives go with ``recv_into`` straight
into their destination; over TLS, the stream's ``send_all`` and ``receive_into``. The 2-byte
sync messages of xenopsd's handshake go through here too, and a peer that answers HTTP
instead (an error before it took the connection over) is read as the error it is.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import trio

from migrate.formats import xenops
from migrate.http.tls import TLSStream
from migrate.migration import bulk

T = TypeVar("T")

IOV_MAX = bulk.IOV_MAX
"""Buffers one ``sendmsg`` takes at most."""
BULK = 1 << 20
"""Bytes from which a send or a receive of several buffers goes through :mod:`bulk`."""
TIMEOUT = 30.0
"""Seconds a wait for the peer may last by default."""
HTTP_HEAD_MAX = 16 << 10
"""Bytes of an HTTP answer read at most to report it."""

Buffer = bytes | bytearray | memoryview


class ChannelError(Exception):
    """The connection failed: cut, timed out, or the peer said something wrong or refused;
    the message says which and where."""


class RemoteError(ChannelError):
    """The peer reported a failure (a sync message carrying its error text)."""


class Channel:
    """One raw migration connection (``stream``, and ``buffered``: bytes already received of
    it), named ``name`` in messages (``vm``, ``mem``)."""

    def __init__(
        self, stream: trio.abc.Stream, name: str, buffered: bytes = b"", timeout: float = TIMEOUT
    ) -> None:
        self.stream = stream
        self.name = name
        self.timeout = timeout
        self.sent = 0
        """Bytes sent so far."""
        self.received = 0
        """Bytes received so far."""
        self._buffered = memoryview(buffered)
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None

    # sending

    async def send(self, buffers: Sequence[Buffer]) -> None:
        """Send ``buffers`` in order: gathered by ``sendmsg`` on a socket (no copy)."""
        if self._socket is None:
            for buffer in buffers:
                if len(buffer):
                    await self._wait(self.stream.send_all(buffer), "send")
                    self.sent += len(buffer)
            return
        pending = [memoryview(b).cast("B") for b in buffers if len(b)]
        if sum(len(b) for b in pending) >= BULK:
            self.sent += await self._in_thread(bulk.writev_all, pending, "send")
            return
        while pending:
            batch = pending[:IOV_MAX]
            n = await self._wait(self._socket.sendmsg(batch), "send")
            self.sent += n
            bulk._advance(pending, n)  # what went dropped, the rest of a buffer kept

    async def send_sync(self, error: str | None = None) -> None:
        """Send a sync message: success, or ``error``'s text."""
        await self.send([xenops.sync_ok() if error is None else xenops.sync_error(error)])

    # receiving

    async def recv_into(self, view: memoryview) -> int:
        """Some bytes into ``view`` (at least one): what was buffered first, then the
        connection. ChannelError at the end of the connection."""
        if self._buffered:
            n = min(len(view), len(self._buffered))
            view[:n] = self._buffered[:n]
            self._buffered = self._buffered[n:]
        elif self._socket is not None:
            n = await self._wait(self._socket.recv_into(view), "receive")
        elif isinstance(self.stream, TLSStream):
            n = await self._wait(self.stream.receive_into(view), "receive")
        else:
            data = await self._wait(self.stream.receive_some(len(view)), "receive")
            n = len(data)
            view[:n] = data
        if n == 0:
            raise ChannelError(f"the {self.name} connection ended after {self.received} bytes")
        self.received += n
        return n

    async def recv_exactly_into(self, view: memoryview) -> None:
        """Fill ``view`` entirely."""
        filled = 0
        while filled < len(view):
            filled += await self.recv_into(view[filled:])

    async def recv_exactly_into_all(self, views: Sequence[memoryview]) -> None:
        """Fill every view of ``views``, in order (large amounts: scattered by ``readv``
        in a worker thread on a plain socket)."""
        if self._socket is None or self._buffered or sum(len(v) for v in views) < BULK:
            for view in views:
                await self.recv_exactly_into(view)
            return
        self.received += await self._in_thread(bulk.readv_all, list(views), "receive")

    async def _in_thread(
        self,
        io: Callable[[int, Sequence[memoryview], float, threading.Event], int],
        buffers: list[memoryview],
        what: str,
    ) -> int:
        """``io`` on this connection's socket in a worker thread (see :mod:`bulk`)."""
        assert self._socket is not None
        stop = threading.Event()
        try:
            return await trio.to_thread.run_sync(
                io, self._socket.fileno(), buffers, self.timeout, stop, abandon_on_cancel=True
            )
        except (OSError, bulk.Stopped) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise ChannelError(
                f"the {self.name} connection failed ({what}, after {self.sent} bytes sent "
                f"and {self.received} received): {why}"
            ) from None
        finally:
            stop.set()

    async def recv_exactly(self, count: int) -> bytes:
        """The next ``count`` bytes (small reads only: ``count`` is never from the peer)."""
        buffer = bytearray(count)
        await self.recv_exactly_into(memoryview(buffer))
        return bytes(buffer)

    async def recv_sync(self, what: str, timeout: float | None = None) -> None:
        """Wait for a sync message (``what`` the peer was to do, for errors): return on
        success; RemoteError with the peer's text, or with an HTTP answer's status line and
        body when the peer answered HTTP (it refused the request)."""
        saved, self.timeout = self.timeout, self.timeout if timeout is None else timeout
        try:
            head = await self.recv_exactly(2)
            if head == b"HT":
                raise RemoteError(f"{what}: refused: {await self._http_answer()}")
            length = xenops.parse_sync(head)
            if length:
                text = (await self.recv_exactly(length)).decode("utf-8", "replace")
                raise RemoteError(f"{what}: {text}")
        finally:
            self.timeout = saved

    async def _http_answer(self) -> str:
        """The rest of an HTTP answer whose first two bytes were read: its status and text."""
        data = bytearray(b"HT")
        chunk = bytearray(4096)
        with trio.move_on_after(self.timeout):
            while len(data) < HTTP_HEAD_MAX:
                try:
                    n = await self.recv_into(memoryview(chunk))
                except ChannelError:
                    break
                data += chunk[:n]
                head, sep, body = data.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if sep and length and len(body) >= int(length.group(1)):
                    break
        first, _, rest = bytes(data).partition(b"\r\n\r\n")
        status = first.split(b"\r\n", 1)[0].decode("latin-1")
        text = rest.decode("utf-8", "replace").strip()
        return f"{status}: {text}" if text else status

    async def _wait(self, operation: Awaitable[T], what: str) -> T:
        """``operation`` within the timeout; its failures as ChannelError."""
        with trio.move_on_after(self.timeout):
            try:
                return await operation
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
                why = e.strerror if isinstance(e, OSError) and e.strerror else str(e.__cause__ or e)
                raise ChannelError(
                    f"the {self.name} connection failed ({what}, after {self.sent} bytes sent "
                    f"and {self.received} received): {why}"
                ) from None
        raise ChannelError(
            f"the {self.name} connection timed out: could not {what} for {self.timeout:g} s"
        )

    async def aclose(self) -> None:
        """Close the connection (at once, without waiting for the peer; also while being
        cancelled, so that closing one channel after another closes them all)."""
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self.stream)
