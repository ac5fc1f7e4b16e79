"""One request's exchange: the :class:`Connection` a handler reads the request body from and
sends its one response through.

The body comes from a :class:`~migrate.http.body.BodyReader` (``receive_into`` for bulk bytes,
``read_body`` for a whole body in a buffer of its own, held within the server's
:class:`~migrate.http.budget.BodyMemory`).
The response goes out through h11, large pieces without being copied (h11's data
passthrough), file ranges by ``os.sendfile`` on a plain socket.
"""

from __future__ import annotations

import os
from typing import cast

import h11
import trio

from migrate.http.body import BodyReader
from migrate.http.budget import BodyMemory
from migrate.http.errors import HeaderPairs, HTTPError, phrase
from migrate.http.limits import Limits
from migrate.http.routing import Request

JOIN_BELOW = 65536
"""Body pieces smaller than this are sent in one write with their framing; larger ones are
sent without being copied."""
SENDFILE_MAX = 16 << 20
"""Bytes per ``os.sendfile`` call, so that a fast client still lets other tasks run."""
BUFFERED_SEND = 256 << 10
"""Bytes read and sent at a time when sendfile cannot be used (TLS): pieces that stay in the
CPU's cache while they are encrypted."""
UNCOUNTED_BODY = 64 << 10
"""Bytes of each body read whole that are not counted in :class:`BodyMemory` (bounded by the
connection caps instead), so that small calls, a login among them, never wait for room."""
SCRATCH = 64 << 10
"""Bytes a chunked body read whole is received in at a time."""


class Connection:
    """What a handler answers through: the request body in, one response out."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        h11_conn: h11.Connection,
        request: Request,
        limits: Limits,
        content_length: int | None,
        body_memory: BodyMemory,
    ) -> None:
        self.request = request
        self.limits = limits
        self.content_length = content_length
        """The request's Content-Length when the body is framed by one, else None."""
        self.status: int | None = None
        """The response status once :meth:`start_response` has sent it."""
        self.body = BodyReader(stream, h11_conn, content_length, limits)
        self._stream = stream
        self._h11 = h11_conn
        self._body_memory = body_memory
        self._reserved = 0
        self._ended = False
        self.detached = False
        """Whether :meth:`detach` took the stream: the server then closes the connection
        when the handler returns, with no answer of its own."""

    def detach(self) -> tuple[trio.abc.Stream, bytes]:
        """Take the connection off HTTP after the request head, as xenopsd's migration
        connections are: the stream, and the bytes already received past the head (what the
        peer sent next), for the handler to go on with raw bytes. Nothing is answered through
        this Connection afterwards; the server closes the stream once the handler returns.
        RuntimeError once a response started or the body began to be read."""
        if self.status is not None:
            raise RuntimeError("cannot detach: a response started")
        if self.detached or self.body.started:
            raise RuntimeError("cannot detach: the body is being read")
        self.detached = True
        return self._stream, bytes(self._h11.trailing_data[0])

    async def receive_into(self, buffer: memoryview) -> int:
        """Fill ``buffer`` with the next request body bytes; how many (fewer at the end of the
        body, 0 after it). Sends ``100 Continue`` first if the client waits for it.

        A body framed by Content-Length is read straight off the stream (no copy through h11),
        a chunked one through h11. HTTPError 408 when the client is too slow (``body_timeout``,
        ``min_body_rate``), 400 when it closes early; bytes received before such an error are
        returned first, the next call raises it.
        """
        return await self.body.receive_into(buffer)

    async def read_body(self, max_body: int | None = None) -> bytearray:
        """The whole request body (Content-Length or chunked) in a buffer of its own, to hand
        to a parser without another copy. HTTPError 413 beyond ``max_body`` bytes
        (``limits.max_body`` by default), refused before ``100 Continue``.

        Its memory is taken from the server's body budget first (a Content-Length body's
        whole length up front, a chunked one's as it grows) and given back when the handler
        ends; 503 with ``Retry-After`` when the budget has no room in time.
        """
        limit = self.limits.max_body if max_body is None else max_body
        too_large = HTTPError(413, f"request body larger than {limit} bytes")
        length = self.content_length
        if length is not None:
            if length > limit:
                raise too_large
            await self._hold(length)
            buffer = bytearray(length)
            view = memoryview(buffer)
            filled = 0
            while filled < length:
                n = await self.body.receive_into(view[filled:])
                if not n:
                    raise HTTPError(400, f"request body ended after {filled} of {length} bytes")
                filled += n
            return buffer
        buffer = bytearray()
        scratch = memoryview(bytearray(SCRATCH))
        while n := await self.body.receive_into(scratch):
            if len(buffer) + n > limit:
                raise too_large
            await self._hold(len(buffer) + n)
            buffer += scratch[:n]
        return buffer

    async def _hold(self, size: int) -> None:
        """Have ``size`` bytes of body memory reserved for this request (see
        :data:`UNCOUNTED_BODY`)."""
        more = max(0, size - UNCOUNTED_BODY) - self._reserved
        if more > 0:
            await self._body_memory.reserve(more)
            self._reserved += more

    def release(self) -> None:
        """Give back the body memory this request holds (the server calls it when the handler
        has ended)."""
        self._body_memory.release(self._reserved)
        self._reserved = 0

    async def respond(self, status: int, headers: HeaderPairs = (), body: bytes = b"") -> None:
        """Send a whole response: ``headers``, a Content-Length and ``body``."""
        fields = [(n, v) for n, v in encode_headers(headers) if n.lower() != b"content-length"]
        fields.append((b"content-length", str(len(body)).encode()))
        await self.start_response(status, fields)
        await self.send(body)
        await self.end()

    async def start_response(self, status: int, headers: HeaderPairs = ()) -> None:
        """Send the status line and headers; the body follows through :meth:`send` and
        :meth:`end` (chunked for HTTP/1.1 unless ``headers`` give a Content-Length). A response
        started before the request body is complete closes the connection after it."""
        if self.status is not None:
            raise RuntimeError("response already started")
        fields = encode_headers(headers)
        if not self.body.complete:
            fields.append((b"connection", b"close"))
        reason = phrase(status).encode()
        await self._send_event(h11.Response(status_code=status, headers=fields, reason=reason))
        self.status = status

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send body bytes of the started response (nothing for a HEAD request)."""
        if self.status is None:
            raise RuntimeError("send() before start_response()")
        if not data or self.request.method == "HEAD":
            return
        # passthrough: h11 frames ``data`` without copying it (any object with a length works)
        pieces = self._h11.send_with_data_passthrough(h11.Data(data=cast(bytes, data))) or []
        if len(data) < JOIN_BELOW:
            await self._send_all(b"".join(pieces))
            return
        for piece in pieces:
            await self._send_all(piece)

    async def send_file(self, fd: int, offset: int, count: int) -> None:
        """Send ``count`` bytes of the file ``fd`` from ``offset`` as body bytes of the started
        response: h11 frames them (its data passthrough) and, on a plain socket, the kernel
        moves them (``os.sendfile``); other streams (TLS) get large buffered reads."""
        if self.status is None:
            raise RuntimeError("send_file() before start_response()")
        if count <= 0 or self.request.method == "HEAD":
            return
        span = _Span(count)
        pieces = self._h11.send_with_data_passthrough(h11.Data(data=cast(bytes, span))) or []
        for piece in pieces:
            if piece is not span:
                await self._send_all(piece)
            elif isinstance(self._stream, trio.SocketStream):
                await self._sendfile(self._stream.socket, fd, offset, count)
            else:
                await self._send_buffered(fd, offset, count)

    async def _sendfile(
        self, sock: trio.socket.SocketType, fd: int, offset: int, count: int
    ) -> None:
        out = sock.fileno()
        while count:
            try:
                n = os.sendfile(out, fd, offset, min(count, SENDFILE_MAX))
            except BlockingIOError:
                with trio.move_on_after(self.limits.body_timeout):
                    await trio.lowlevel.wait_writable(sock)
                    continue
                raise trio.BrokenResourceError(
                    f"client read nothing for {self.limits.body_timeout} s"
                ) from None
            except OSError as e:
                raise trio.BrokenResourceError(f"sending to the client: {e.strerror}") from e
            if n == 0:
                raise OSError(f"file ended {count} bytes early at offset {offset}")
            offset, count = offset + n, count - n
            await trio.lowlevel.checkpoint()

    async def _send_buffered(self, fd: int, offset: int, count: int) -> None:
        buffer = memoryview(bytearray(min(count, BUFFERED_SEND)))
        while count:
            n = os.preadv(fd, [buffer[: min(count, len(buffer))]], offset)
            if n == 0:
                raise OSError(f"file ended {count} bytes early at offset {offset}")
            await self._send_all(buffer[:n])
            offset, count = offset + n, count - n

    async def _send_all(self, data: bytes | bytearray | memoryview) -> None:
        """``send_all``, the client given ``body_timeout`` to take each piece."""
        with trio.move_on_after(self.limits.body_timeout):
            await self._stream.send_all(data)
            return
        raise trio.BrokenResourceError(f"client read nothing for {self.limits.body_timeout} s")

    async def end(self) -> None:
        """End the response body (idempotent)."""
        if self.status is None:
            raise RuntimeError("end() before start_response()")
        if not self._ended:
            self._ended = True
            await self._send_event(h11.EndOfMessage())

    async def _send_event(self, event: h11.Event) -> None:
        data = self._h11.send(event)
        if data:
            await self._stream.send_all(data)


class _Span:
    """Stands for ``length`` file bytes in h11's data passthrough (it only needs a length)."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


def encode_headers(headers: HeaderPairs) -> list[tuple[bytes, bytes]]:
    """``headers`` as h11 takes them (text encoded as Latin-1)."""
    return [
        (
            n.encode("latin-1") if isinstance(n, str) else n,
            v.encode("latin-1") if isinstance(v, str) else v,
        )
        for n, v in headers
    ]
