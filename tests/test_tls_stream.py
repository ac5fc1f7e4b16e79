"""migrate.http.tls: TLSStream (the server side) against Python's ssl client, over real
sockets on ::1 and 127.0.0.1."""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from migrate.http.tls import TLSStream, server_ssl_context
from test_tls import make_certificate

MiB = 1 << 20
RECORD = 16384  # the largest TLS record's plaintext


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("cert"))


@pytest.fixture
def contexts(certificate: tuple[Path, Path]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The daemon's server context and a client context that trusts its certificate."""
    cert, key = certificate
    return server_ssl_context(str(cert), str(key)), ssl.create_default_context(cafile=str(cert))


@asynccontextmanager
async def connected(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext], host: str = "::1", handshake: bool = True
) -> AsyncIterator[tuple[TLSStream, trio.SSLStream[trio.SocketStream]]]:
    """A TLSStream and the client's trio.SSLStream at the other end of a real connection,
    both handshaken (with ``handshake``)."""
    server_context, client_context = contexts
    listeners = await trio.open_tcp_listeners(0, host=host)
    async with listeners[0]:
        port = listeners[0].socket.getsockname()[1]
        client_tcp = await trio.open_tcp_stream(host, port)
        server = TLSStream(await listeners[0].accept(), server_context)
        client = trio.SSLStream(client_tcp, client_context, server_hostname=host)
        try:
            with trio.fail_after(10):
                if handshake:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(server.do_handshake)
                        nursery.start_soon(client.do_handshake)
                yield server, client
        finally:
            await trio.aclose_forcefully(client_tcp)
            await trio.aclose_forcefully(server.transport)


async def read_all(stream: TLSStream, size: int = 4 * MiB) -> tuple[bytes, list[int]]:
    """Everything ``stream`` receives until its end, and the count of each receive_into."""
    buffer = memoryview(bytearray(size))
    data, counts = bytearray(), []
    while n := await stream.receive_into(buffer):
        data += buffer[:n]
        counts.append(n)
    return bytes(data), counts


@pytest.mark.parametrize("host", ["::1", "127.0.0.1"])
async def test_upload_arrives_many_records_per_call(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext], host: str
) -> None:
    """8 MiB sent in 1 MiB writes arrive whole and in order, most calls returning several
    records; the client's close_notify ends the stream."""
    body = os.urandom(8 * MiB)
    async with connected(contexts, host) as (server, client):

        async def send() -> None:
            for start in range(0, len(body), MiB):
                await client.send_all(body[start : start + MiB])
            await client.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            received, counts = await read_all(server)
    assert received == body
    assert max(counts) > 4 * RECORD, counts
    assert len(counts) < len(body) // RECORD // 4, len(counts)


async def test_tls12_upload(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    contexts[1].maximum_version = ssl.TLSVersion.TLSv1_2
    body = os.urandom(3 * MiB + 123)
    async with connected(contexts) as (server, client):
        assert client.version() == "TLSv1.2"  # type: ignore[attr-defined]

        async def send() -> None:
            await client.send_all(body)
            await client.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            received, _ = await read_all(server)
    assert received == body


async def test_download_ends_with_close_notify(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """What send_all sends arrives whole; aclose sends close_notify, so that a strict client
    (not https_compatible) sees a clean end rather than a truncation."""
    body = os.urandom(5 * MiB + 7)
    async with connected(contexts) as (server, client):
        received = bytearray()

        async def receive() -> None:
            while data := await client.receive_some(MiB):
                received.extend(data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await server.send_all(body)
            await server.send_all(b"")
            await server.aclose()
    assert received == body


async def test_half_close(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """send_eof: the client sees a clean end (close_notify) and can still send, the server
    still receives; sending after it is ClosedResourceError."""
    async with connected(contexts) as (server, client):
        await server.send_all(b"answer")
        await server.send_eof()
        assert await client.receive_some() == b"answer"
        assert await client.receive_some() == b""
        await client.send_all(b"more body")
        assert await server.receive_some() == b"more body"
        with pytest.raises(trio.ClosedResourceError):
            await server.send_all(b"late")
        await server.send_eof()  # again: nothing more


async def test_small_reads_lose_nothing(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """receive_some smaller than a record: the rest of the record comes with the next calls."""
    body = os.urandom(3 * RECORD)
    async with connected(contexts) as (server, client):
        await client.send_all(body)
        await client.aclose()
        received = bytearray()
        while data := await server.receive_some(1000):
            assert len(data) <= 1000
            received += data
    assert received == body


async def test_peer_gone_without_close_notify_is_an_end(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """A client that closes its socket without close_notify (as many HTTPS clients do):
    what it sent, then the end of the stream, no error (HTTP's framing tells a cut body).
    TLS 1.2: a TLS 1.3 client that closes without reading the session tickets sent after the
    handshake makes its kernel answer with a reset, not a close."""
    contexts[1].maximum_version = ssl.TLSVersion.TLSv1_2
    async with connected(contexts) as (server, client):
        await client.send_all(b"x" * 100_000)
        await client.transport_stream.aclose()
        received, _ = await read_all(server)
    assert received == b"x" * 100_000


async def test_forged_record_breaks_the_stream(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """An application-data record that does not authenticate: BrokenResourceError naming
    the TLS failure, and the stream stays broken."""
    async with connected(contexts) as (server, client):
        await client.send_all(b"before")
        assert await server.receive_some() == b"before"
        await client.transport_stream.send_all(b"\x17\x03\x03\x00\x40" + os.urandom(64))
        buffer = memoryview(bytearray(MiB))
        with pytest.raises(trio.BrokenResourceError, match="TLS"):
            await server.receive_into(buffer)
        with pytest.raises(trio.BrokenResourceError):
            await server.receive_into(buffer)


async def test_handshake_with_plain_http_fails(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async with connected(contexts, handshake=False) as (server, client):
        await client.transport_stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(trio.BrokenResourceError, match="handshake"):
            await server.do_handshake()
        await server.aclose()
        answer = await client.transport_stream.receive_some(4096)  # nothing in clear text
        assert not answer.startswith(b"HTTP/"), answer


async def test_handshake_with_a_vanished_client_fails(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async with connected(contexts, handshake=False) as (server, client):
        await client.transport_stream.aclose()
        with pytest.raises(trio.BrokenResourceError):
            await server.do_handshake()


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


async def test_idle_streams_hold_little_memory(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """A stream's 1 MiB receive buffer is taken only as reads reach it: 200 streams that
    received nothing add a few MiB, not 200 (each bytearray(1 MiB) would be written through)."""
    a, b = trio.socket.socketpair()
    with a, b:
        before = _rss_mib()
        streams = [TLSStream(trio.SocketStream(a), contexts[0]) for _ in range(200)]
        grown = _rss_mib() - before
    assert len(streams) == 200 and grown < 20, grown


async def test_one_receiver_at_a_time(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    async with connected(contexts) as (server, client), trio.open_nursery() as nursery:
        nursery.start_soon(server.receive_some)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await server.receive_some()
        await client.send_all(b"wake")
