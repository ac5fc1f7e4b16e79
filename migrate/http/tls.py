"""TLS over a trio socket: :class:`TLSStream`, ``ssl.SSLObject`` on memory BIOs, which reads
in large pieces; the server's connections and the CLI's (through httpx) both use it.

``trio.SSLStream`` returns one TLS record (16 KiB) per ``receive_some`` and pays trio's checks
and a checkpoint for each, which bound a large upload more than the cipher does.
:meth:`TLSStream.receive_into` instead reads what the socket holds (up to
:data:`RECEIVE_SIZE`) into the incoming BIO at once and decrypts every whole record in it
straight into the caller's buffer.

Like ``trio.SSLStream(..., https_compatible=True)``, a peer that closes its connection without
TLS's ``close_notify`` ends the stream as an end of file (HTTP's own framing tells a cut body),
and :meth:`TLSStream.aclose` sends ``close_notify`` without waiting for the peer's. Unlike it,
the stream half-closes (:meth:`TLSStream.send_eof`: ``close_notify``, then reading on), so
that the server can drain what a client still sends after an early answer, as it does over
TCP, and the client reads that answer rather than a reset. One task
may receive while another sends; two receiving (or two sending) at once is
``trio.BusyResourceError``.
"""

from __future__ import annotations

import contextlib
import mmap
import ssl
from typing import cast

import trio

RECEIVE_SIZE = 1 << 20
"""Bytes read off the socket at most at once (several dozen records)."""
SEND_PIECE = 256 << 10
"""Bytes encrypted at a time by :meth:`TLSStream.send_all`: pieces that stay in the CPU's
cache between encrypting them and copying them to the socket."""


class TLSStream(trio.abc.HalfCloseableStream):
    """TLS over ``transport``: the server's side, or with ``server_side=False`` the client's
    (``server_hostname`` sent as SNI and the certificate checked against it as ``context``
    says); :meth:`do_handshake` before anything else."""

    def __init__(
        self,
        transport: trio.SocketStream,
        context: ssl.SSLContext,
        *,
        server_side: bool = True,
        server_hostname: str | None = None,
    ) -> None:
        self.transport = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        """The TLS state (``version()``, ``cipher()``, ``selected_alpn_protocol()``...)."""
        self._buffer = memoryview(mmap.mmap(-1, RECEIVE_SIZE))
        """Anonymous memory: its pages are taken as reads first reach them, so a connection
        that never receives a large body never holds the whole buffer."""
        self._send_lock = trio.StrictFIFOLock()
        """Held while encrypted bytes go to the transport: a receive may have some to send too
        (TLS 1.3 post-handshake messages) while :meth:`send_all` runs."""
        self._scratch: memoryview | None = None
        self._receiving = False
        self._sending = False
        self._eof = False
        """Whether the peer's end of the connection was seen."""
        self._sent_eof = False
        self._broken: str | None = None
        """Why the stream failed: every later call fails the same way."""

    async def do_handshake(self) -> None:
        """Run the TLS handshake; ``trio.BrokenResourceError`` (caused by the ``ssl`` error)
        if it fails or the peer goes away."""
        while True:
            try:
                self.ssl_object.do_handshake()
                break
            except ssl.SSLWantReadError:
                if self._eof:
                    why = "TLS handshake failed: the peer closed the connection"
                    raise self._break(why) from None
                await self._flush()
                await self._refill()
            except ssl.SSLError as e:
                await self._flush_quietly()  # the alert that tells the peer why
                raise self._break(f"TLS handshake failed: {e}") from e
        await self._flush()

    async def receive_into(self, view: memoryview) -> int:
        """Decrypt into ``view`` what has arrived, waiting only if nothing has; how many bytes,
        0 at the end of the stream."""
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this TLS stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint()
            self._check()
            filled = 0
            while filled < len(view):
                try:
                    # (typeshed has it return bytes; given a buffer, it returns the count)
                    n = cast(int, self.ssl_object.read(len(view) - filled, view[filled:]))
                except ssl.SSLWantReadError:
                    if filled or self._eof:
                        break
                    await self._flush()  # what reading wrote (a TLS 1.3 key update's answer)
                    await self._refill()
                    continue
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    break  # close_notify, or the peer closed without one
                except ssl.SSLError as e:
                    raise self._break(f"TLS: {e}") from e
                if not n:
                    break
                filled += n
            return filled
        finally:
            self._receiving = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """At most ``max_bytes`` (default and at most :data:`RECEIVE_SIZE`) of what has
        arrived, ``b""`` at the end of the stream; decrypted into a buffer kept for it, so
        that no large buffer is allocated per call."""
        if self._scratch is None:
            self._scratch = memoryview(mmap.mmap(-1, RECEIVE_SIZE))
        view = self._scratch[: min(max_bytes or RECEIVE_SIZE, RECEIVE_SIZE)]
        n = await self.receive_into(view)
        return bytes(view[:n])

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send ``data``."""
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this TLS stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check()
            if self._sent_eof:
                raise trio.ClosedResourceError("send_all after send_eof")
            view = memoryview(data)
            for start in range(0, len(view), SEND_PIECE):
                try:
                    self.ssl_object.write(view[start : start + SEND_PIECE])
                except ssl.SSLError as e:
                    raise self._break(f"TLS: {e}") from e
                await self._flush()
            if not view:
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        """Send ``close_notify``, the end of what this side sends; receiving goes on (TLS 1.3
        defines it as a half-close, and OpenSSL reads on after sending it)."""
        await trio.lowlevel.checkpoint()
        self._check()
        if self._sent_eof:
            return
        self._sent_eof = True
        # SSLWantReadError: our close_notify is written, the peer's is not read
        with contextlib.suppress(ssl.SSLError):
            self.ssl_object.unwrap()
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        """Return when the transport can take more bytes."""
        await self.transport.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Send ``close_notify`` (not waiting for the peer's) and close the transport."""
        try:
            # SSLWantReadError: our close_notify is written, the peer's is not read
            with contextlib.suppress(ssl.SSLError):
                self.ssl_object.unwrap()
            await self._flush_quietly()
        finally:
            await self.transport.aclose()

    async def _refill(self) -> None:
        """Read what the socket holds into the incoming BIO (at its end, tell the BIO: the
        next read reports it)."""
        view = self._buffer
        try:
            n = await self.transport.socket.recv_into(view)
        except OSError as e:
            raise self._break(f"receiving: {e.strerror}") from e
        if not n:
            self._eof = True
            self._incoming.write_eof()
        else:
            self._incoming.write(view[:n])

    async def _flush(self) -> None:
        """Send what the TLS object has written (records, alerts, handshake messages)."""
        async with self._send_lock:
            data = self._outgoing.read()
            if data:
                try:
                    await self.transport.send_all(data)
                except trio.BrokenResourceError as e:
                    raise self._break(f"sending: {e.__cause__ or e}") from e

    def _check(self) -> None:
        if self._broken is not None:
            raise trio.BrokenResourceError(self._broken)

    def _break(self, why: str) -> trio.BrokenResourceError:
        """The error to raise for a failure that ends the stream, remembered."""
        self._broken = why
        return trio.BrokenResourceError(why)

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._flush()


class TlsError(ValueError):
    """The TLS certificate or key cannot be used; the message says which and why."""


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for ``cert`` and ``key`` (PEM files), TLS 1.2 or later."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as e:
        raise TlsError(f"TLS certificate or key: {e.strerror}: {e.filename}") from None
    except (ssl.SSLError, OSError) as e:
        raise TlsError(f"cannot use TLS certificate {cert} with key {key}: {e}") from None
    return context
