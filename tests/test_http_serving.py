"""Serving connections (migrate.http.server.serve and serve_tls): TLS around each connection;
over real sockets on loopback addresses."""

from __future__ import annotations

import json
import ssl
from functools import partial
from pathlib import Path

import pytest
import trio

from migrate.daemon import server_ssl_context
from migrate.http.limits import Limits
from migrate.http.server import serve_tls
from test_http_server import make_router, read_all, read_response
from test_tls import make_certificate

INFO = b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n"
INFO_CLOSE = b"GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


# TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("cert"))


async def test_tls_connections_are_served_past_the_handshake_timeout(
    nursery: trio.Nursery, certificate: tuple[Path, Path]
) -> None:
    """The handshake has ``header_timeout``; a connection kept alive longer is served on,
    while a client that never shakes hands and a plain HTTP one are closed."""
    cert, key = certificate
    limits = Limits(header_timeout=0.5, idle_timeout=5.0)
    listeners = await trio.open_tcp_listeners(0, host="::1")
    context = server_ssl_context(str(cert), str(key))
    await nursery.start(partial(serve_tls, make_router(), listeners, context, limits))
    port = listeners[0].socket.getsockname()[1]
    client_context = ssl.create_default_context(cafile=str(cert))
    with trio.fail_after(10):
        async with await trio.open_tcp_stream("::1", port) as silent:
            async with await trio.open_tcp_stream("::1", port) as plain:
                await plain.send_all(INFO_CLOSE)
                assert await read_all(plain) == b""
            tcp = await trio.open_tcp_stream("::1", port)
            async with trio.SSLStream(tcp, client_context, server_hostname="::1") as tls:
                buffer = bytearray()
                await tls.send_all(INFO)
                assert (await read_response(tls, buffer)).status == 200
                await trio.sleep(0.7)
                await tls.send_all(INFO)
                answer = await read_response(tls, buffer)
                assert json.loads(answer.body)["client"] == "::1"
            assert await read_all(silent) == b""
