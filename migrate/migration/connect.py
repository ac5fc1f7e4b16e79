"""The source's connections to a destination: the dest map's xenops URL read, connections
opened through the host core's one connect path (Happy Eyeballs, preferred family first),
TLS for ``https``, and the request heads xenopsd sends (``PUT`` with cookies, no body
framing: raw bytes follow the head).
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio

from migrate import net
from migrate.addresses import AddressError, Host, parse_host
from migrate.http.tls import TLSStream
from migrate.migration.channel import TIMEOUT, Channel, ChannelError

ANSWER_MAX = 64 << 10
"""Bytes of a plain HTTP answer read at most."""


class DestinationError(ValueError):
    """The dest map is not usable; the message names the key and what is wrong."""


def client_ssl_context() -> ssl.SSLContext:
    """The TLS client context of migration connections: TLS 1.2 or later, the destination's
    certificate not verified (hosts of a pool carry self-signed certificates, as xapi's do
    unless its TLS verification is turned on)."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True)
class Destination:
    """Where the xenops service of the destination is: scheme, host and port, the base path
    and the query (the session) every request carries, and the session itself."""

    scheme: str
    host: Host
    port: int
    base: str
    query: str
    session: str

    @classmethod
    def from_map(cls, dest: Mapping[str, str]) -> Destination:
        """The destination of a dest map (``host.migrate_receive``); DestinationError."""
        url = dest.get("xenops")
        if not url:
            raise DestinationError("dest has no xenops URL")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise DestinationError(f"dest xenops URL {url!r}: expected http or https")
        try:
            host = parse_host(url)
        except AddressError as e:
            raise DestinationError(f"dest xenops URL {url!r}: {e}") from None
        session = dest.get("session_id") or _query_session(parts.query)
        if not session:
            raise DestinationError("dest has no session_id")
        return cls(
            parts.scheme,
            host,
            host.effective_port(),
            parts.path.rstrip("/"),
            parts.query,
            session,
        )

    def target(self, path: str) -> str:
        """The request target of ``path`` (below the base), with the query."""
        return path + (f"?{self.query}" if self.query else "")

    async def connect(self, name: str, context: ssl.SSLContext | None) -> Channel:
        """A new connection to the destination, named ``name``; ChannelError if none."""
        try:
            stream: trio.abc.Stream = await net.connect(self.host, self.port, timeout=TIMEOUT)
        except OSError as e:
            raise ChannelError(f"cannot open the {name} connection: {e}") from None
        if self.scheme == "https":
            assert isinstance(stream, trio.SocketStream)
            tls = TLSStream(
                stream, context or client_ssl_context(), server_side=False, server_hostname=None
            )
            with trio.move_on_after(TIMEOUT) as scope:
                try:
                    await tls.do_handshake()
                except trio.BrokenResourceError as e:
                    await trio.aclose_forcefully(stream)
                    raise ChannelError(f"TLS on the {name} connection: {e}") from None
            if scope.cancelled_caught:
                await trio.aclose_forcefully(stream)
                raise ChannelError(f"TLS handshake of the {name} connection timed out")
            stream = tls
        return Channel(stream, name)

    def head(self, method: str, path: str, cookies: Mapping[str, str]) -> bytes:
        """The request head of ``method path`` with ``cookies`` and the session."""
        jar = "; ".join(f"{k}={v}" for k, v in {"session_id": self.session, **cookies}.items())
        lines = [
            f"{method} {self.target(path)} HTTP/1.1",
            f"host: {self.host.host_port(self.port)}",
            f"cookie: {jar}",
            "connection: keep-alive" if method == "PUT" else "connection: close",
            "user-agent: xfer",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def open(
        self, name: str, path: str, cookies: Mapping[str, str], context: ssl.SSLContext | None
    ) -> Channel:
        """A migration connection: ``PUT path`` sent, raw bytes to follow."""
        channel = await self.connect(name, context)
        try:
            await channel.send([self.head("PUT", path, cookies)])
        except BaseException:
            await channel.aclose()
            raise
        return channel

    async def get_json(self, path: str, context: ssl.SSLContext | None) -> object:
        """``GET path`` answered 200 with JSON: the value; ChannelError otherwise."""
        channel = await self.connect("outcome", context)
        try:
            await channel.send([self.head("GET", path, {})])
            data = bytearray()
            chunk = memoryview(bytearray(16384))
            while len(data) < ANSWER_MAX:
                try:
                    n = await channel.recv_into(chunk)
                except ChannelError:
                    break  # the end of the answer
                data += chunk[:n]
        finally:
            await channel.aclose()
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        if not re.fullmatch(r"HTTP/1\.[01] 200 .*", status):
            raise ChannelError(f"GET {path}: {status or 'no answer'}")
        try:
            return json.loads(body)
        except ValueError:
            raise ChannelError(f"GET {path}: the answer is not JSON") from None


def _query_session(query: str) -> str | None:
    match = re.search(r"(?:^|&)session_id=([^&]+)", query)
    return match.group(1) if match else None
