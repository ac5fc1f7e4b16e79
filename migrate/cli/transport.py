"""The one HTTP transport of the command line: ``httpx.AsyncClient`` under trio, its
connections made by :func:`migrate.net.connect`.

httpcore hands over the URL's host without brackets and with a zone still ``%25``-encoded;
it is parsed by :func:`migrate.addresses.parse_url_host` and connected to through
``getaddrinfo`` and Happy Eyeballs, IPv6 first unless told otherwise, so a zoned link-local
address reaches its interface. TLS is :class:`migrate.http.tls.TLSStream`'s, checked against
the bare address (an IP SAN: the zone is local to this host). Reads ask for
:data:`READ_SIZE` bytes at a time, as httpcore's 64 KiB makes a large body cost one trip
through h11 and httpx per 64 KiB.
"""

from __future__ import annotations

import math
import ssl
import typing
from typing import Any

import httpcore
import httpx
import trio

from migrate.addresses import Family, parse_url_host
from migrate.http.tls import TLSStream
from migrate.net import ConnectTimeout, connect

PREFER: Family = "IPv6"
"""The family whose addresses are tried first."""
READ_SIZE = 256 << 10
"""How much a connection asks the socket for at a time."""


class Transport(httpx.AsyncHTTPTransport):
    """httpx's transport with connections from :func:`migrate.net.connect`, verified with
    ``context`` when https."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(verify=context, trust_env=False)
        # httpx takes no network backend: its pool is replaced by one with ours
        self._pool = httpcore.AsyncConnectionPool(ssl_context=context, network_backend=_Backend())


class _Backend(httpcore.TrioBackend):
    """httpcore's connections through :func:`migrate.net.connect`, :data:`PREFER` first; its
    streams are :class:`_Stream`."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,  # the pool is made without one
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        target = parse_url_host(host)
        try:
            stream = await connect(target, port, prefer=PREFER, timeout=_seconds(timeout))
        except ConnectTimeout as e:
            raise httpcore.ConnectTimeout(str(e)) from None
        except OSError as e:
            raise httpcore.ConnectError(str(e)) from e
        for option in socket_options or ():
            stream.setsockopt(*option)
        return _Stream(stream)


class _Stream(httpcore.AsyncNetworkStream):
    """A trio socket stream, or a :class:`~migrate.http.tls.TLSStream` over one, for
    httpcore: reads ask for at least :data:`READ_SIZE` bytes, trio's failures become
    httpcore's. TLS is ``TLSStream``'s, as ``trio.SSLStream`` returns one 16 KiB record per
    read after allocating the whole read's size."""

    def __init__(self, stream: trio.SocketStream | TLSStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            with trio.fail_after(_seconds(timeout)):
                return await self._stream.receive_some(max(max_bytes, READ_SIZE))
        except trio.TooSlowError:
            raise httpcore.ReadTimeout(f"nothing received for {timeout} s") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise httpcore.ReadError(str(e)) from e

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            with trio.fail_after(_seconds(timeout)):
                await self._stream.send_all(buffer)
        except trio.TooSlowError:
            raise httpcore.WriteTimeout(f"nothing sent for {timeout} s") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise httpcore.WriteError(str(e)) from e

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if not isinstance(self._stream, trio.SocketStream):
            raise httpcore.ConnectError("TLS within TLS (an https proxy) is not supported")
        # the URL's host: the certificate names the address without its zone
        bare = parse_url_host(server_hostname).bare if server_hostname else None
        tls = TLSStream(self._stream, ssl_context, server_side=False, server_hostname=bare)
        try:
            with trio.fail_after(_seconds(timeout)):
                await tls.do_handshake()
        except trio.TooSlowError:
            await trio.aclose_forcefully(self._stream)
            raise httpcore.ConnectTimeout(f"no TLS handshake within {timeout} s") from None
        except trio.BrokenResourceError as e:
            await trio.aclose_forcefully(self._stream)
            raise httpcore.ConnectError(str(e)) from e
        return _Stream(tls)

    def get_extra_info(self, info: str) -> Any:
        tls = self._stream if isinstance(self._stream, TLSStream) else None
        socket = (tls.transport if tls else typing.cast(trio.SocketStream, self._stream)).socket
        if info == "ssl_object":
            return tls.ssl_object if tls else None
        if info == "socket":
            return socket
        if info == "client_addr":
            return socket.getsockname()
        if info == "server_addr":
            return socket.getpeername()
        if info == "is_readable":
            return socket.is_readable()
        return None


def _seconds(timeout: float | None) -> float:
    """httpcore's timeout as trio's: None is no limit."""
    return math.inf if timeout is None else timeout
