"""A small synchronous XenAPI client for the command line: JSON-RPC over httpx to ``/jsonrpc``.

The host is any text :func:`migrate.addresses.parse_host` accepts; without a port it is reached
on :data:`DEFAULT_PORT` (a full URL without a port uses its scheme's port, 80 or 443). An
``https`` URL is verified against the system's CAs, ``--ca FILE``, or not at all
(``--insecure``). Zoned link-local addresses (``[fe80::1%25eth0]:8080``) are connected to with
the zone as scope id: httpx keeps the RFC 6874 ``%25`` in the host it hands to the socket
layer, so the transport here decodes it before ``getaddrinfo``; over https the certificate is
checked against the bare address (an IP SAN), as the zone is local to this host.

The same transport, for ``httpx.AsyncClient`` under trio (:func:`async_transport`, reading
large pieces at a time, TLS through :class:`migrate.http.tls.TLSStream`), carries ``xfer
export``/``xfer import`` (:mod:`migrate.cli.transfer`).

Every failure is a :class:`ClientError` whose text is one line: a XenAPI failure reads
``CODE: param param``.
"""

from __future__ import annotations

import json
import ssl
import typing
from types import TracebackType
from typing import Any

import httpcore
import httpx
import trio

from migrate.addresses import Host, parse_host
from migrate.http.tls import TLSStream

DEFAULT_PORT = 8080
"""The port of ``xfer serve`` when the host text names none."""
JSONRPC_PATH = "/jsonrpc"
TIMEOUT = 30.0
"""Seconds to wait to connect, and for each read or write."""
ORIGINATOR = "xfer-cli"
READ_SIZE = 256 << 10
"""How much an async client's connection asks the socket for at a time (measured on ``::1``
with 2 GiB bodies: 256 KiB to 1 MiB about twice as fast as httpcore's 64 KiB)."""


class ClientError(Exception):
    """A call that could not be made or that failed; ``str()`` is one line."""


class ApiFailure(ClientError):
    """A XenAPI failure: the error ``code`` and its ``params``."""

    def __init__(self, code: str, params: list[Any]) -> None:
        self.code = code
        self.params = params
        text = " ".join(str(p) for p in params)
        super().__init__(f"{code}: {text}" if text else code)


def endpoint(text: str) -> tuple[Host, str]:
    """The parsed host and the JSON-RPC URL for host text (ValueError if it is not a host)."""
    host = parse_host(text)
    if host.port is None and host.scheme is None:
        host = host.with_port(DEFAULT_PORT)
    return host, host.url(JSONRPC_PATH)


def ssl_context(ca: str | None = None, insecure: bool = False) -> ssl.SSLContext:
    """A client context (TLS 1.2 or later): the system CAs, or ``ca``'s, or no verification."""
    context = ssl.create_default_context(cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _socket_host(host: str) -> str:
    """``fe80::1%25eth0`` (as httpx hands it over) as ``fe80::1%eth0``; others unchanged."""
    bare, percent, zone = host.partition("%")
    if percent and zone.startswith("25") and len(zone) > 2:
        return f"{bare}%{zone[2:]}"
    return host


class _ZoneBackend(httpcore.SyncBackend):
    """Connects to ``fe80::1%25eth0`` as ``fe80::1%eth0`` (getaddrinfo takes the zone)."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        host = _socket_host(host)
        return super().connect_tcp(host, port, timeout, local_address, socket_options)


class _AsyncZoneBackend(httpcore.TrioBackend):
    """:class:`_ZoneBackend` for ``httpx.AsyncClient`` running in ``trio.run``: its streams
    are :class:`_Stream`."""

    def __init__(self, read_size: int) -> None:
        self.read_size = read_size

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with trio.fail_after(_seconds(timeout)):
                stream = await trio.open_tcp_stream(
                    _socket_host(host), port, local_address=local_address
                )
        except trio.TooSlowError:
            raise httpcore.ConnectTimeout(f"no connection within {timeout} s") from None
        except OSError as e:
            raise httpcore.ConnectError(str(e)) from e
        for option in socket_options or ():
            stream.setsockopt(*option)
        return _Stream(stream, self.read_size)


class _Stream(httpcore.AsyncNetworkStream):
    """A trio socket stream, or a :class:`~migrate.http.tls.TLSStream` over one, for
    httpcore: reads ask for at least ``size`` bytes (httpcore asks for 64 KiB, which makes a
    large body cost one trip through h11 and httpx per 64 KiB), trio's failures become
    httpcore's. TLS is ``TLSStream``'s: ``trio.SSLStream`` returns one 16 KiB record per read,
    after allocating the whole read's size (``xfer export`` of 2 GiB over https took 11-13 s
    through it, curl 2.3-4.7 s)."""

    def __init__(self, stream: trio.SocketStream | TLSStream, size: int) -> None:
        self._stream = stream
        self._size = size

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            with trio.fail_after(_seconds(timeout)):
                return await self._stream.receive_some(max(max_bytes, self._size))
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
        tls = TLSStream(
            self._stream, ssl_context, server_side=False, server_hostname=server_hostname
        )
        try:
            with trio.fail_after(_seconds(timeout)):
                await tls.do_handshake()
        except trio.TooSlowError:
            await trio.aclose_forcefully(self._stream)
            raise httpcore.ConnectTimeout(f"no TLS handshake within {timeout} s") from None
        except trio.BrokenResourceError as e:
            await trio.aclose_forcefully(self._stream)
            raise httpcore.ConnectError(str(e)) from e
        return _Stream(tls, self._size)

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
    return float("inf") if timeout is None else timeout


class _Transport(httpx.HTTPTransport):
    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(verify=context, trust_env=False)
        self._pool = httpcore.ConnectionPool(ssl_context=context, network_backend=_ZoneBackend())


class _AsyncTransport(httpx.AsyncHTTPTransport):
    def __init__(self, context: ssl.SSLContext, read_size: int) -> None:
        super().__init__(verify=context, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context, network_backend=_AsyncZoneBackend(read_size)
        )


def transport(context: ssl.SSLContext) -> httpx.HTTPTransport:
    """A transport for ``httpx.Client`` that verifies with ``context`` and reaches zoned
    link-local addresses."""
    return _Transport(context)


def async_transport(
    context: ssl.SSLContext, *, read_size: int = READ_SIZE
) -> httpx.AsyncHTTPTransport:
    """:func:`transport` for ``httpx.AsyncClient`` under trio, reading ``read_size`` bytes at
    a time."""
    return _AsyncTransport(context, read_size)


def request_extensions(url: str) -> dict[str, Any]:
    """The httpx request extensions for ``url``: with a zoned host, the certificate is checked
    against the bare address (``sni_hostname``), not ``fe80::1%25eth0``."""
    host = parse_host(url)
    if host.zone is None:
        return {}
    return {"sni_hostname": host.address.partition("%")[0]}


class Client:
    """A XenAPI session on one host: ``with Client(url).login(user, pw) as c: c.call(...)``."""

    def __init__(
        self, url: str, *, context: ssl.SSLContext | None = None, timeout: float = TIMEOUT
    ) -> None:
        self.url = url
        self.session: str | None = None
        self._extensions = request_extensions(url)
        self._next_id = 0
        self._http = httpx.Client(
            transport=transport(context or ssl_context()), timeout=timeout, trust_env=False
        )

    def request(self, method: str, *params: Any) -> Any:
        """The result of one JSON-RPC call (no session added); ClientError on any failure."""
        self._next_id += 1
        body = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": self._next_id}
        try:
            response = self._http.post(self.url, json=body, extensions=self._extensions)
        except httpx.TimeoutException:
            raise ClientError(f"{self.url}: timed out") from None
        except httpx.HTTPError as e:
            raise ClientError(f"cannot reach {self.url}: {one_line(e)}") from None
        if response.status_code != 200:
            line = one_line(response.text) or response.reason_phrase
            raise ClientError(f"{self.url}: HTTP {response.status_code}: {line}")
        try:
            answer = response.json()
        except (ValueError, UnicodeDecodeError):
            raise ClientError(f"{self.url}: the answer is not JSON") from None
        if not isinstance(answer, dict):
            raise ClientError(f"{self.url}: the answer is not a JSON-RPC response")
        error = answer.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise ClientError(f"{self.url}: malformed JSON-RPC error {error!r}")
            data = error.get("data")
            params_ = data if isinstance(data, list) else [] if data is None else [data]
            raise ApiFailure(str(error.get("message", "UNKNOWN_ERROR")), params_)
        if "result" not in answer:
            raise ClientError(f"{self.url}: JSON-RPC response without a result")
        return answer["result"]

    def login(self, user: str, password: str) -> Client:
        """Log in (``session.login_with_password``); returns self."""
        self.session = self.request("session.login_with_password", user, password, "", ORIGINATOR)
        return self

    def call(self, method: str, *params: Any) -> Any:
        """``method(session, *params)``."""
        if self.session is None:
            raise ClientError("not logged in")
        return self.request(method, self.session, *params)

    def close(self) -> None:
        """Log out (best effort) and close the connection."""
        try:
            if self.session is not None:
                self.request("session.logout", self.session)
        except ClientError:
            pass
        finally:
            self.session = None
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def one_line(value: object) -> str:
    """``value``'s text on one line (runs of whitespace, newlines included, as one space)."""
    return " ".join(str(value).split())


def dumps(value: Any) -> str:
    """``value`` as indented JSON."""
    return json.dumps(value, indent=2, sort_keys=True)
