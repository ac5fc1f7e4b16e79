"""Serving connections (migrate.http.accept, migrate.http.server.serve and serve_tls): caps on
connections in total and per client address, accept's pause when descriptors run out, TLS
around each connection; over real sockets on loopback addresses."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path

import pytest
import trio

from migrate.http.limits import Limits
from migrate.http.server import serve, serve_tls
from migrate.http.tls import server_ssl_context
from test_http_server import Response, Server, make_router, read_all, read_response
from test_tls import make_certificate

INFO = b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n"
INFO_CLOSE = b"GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


async def start(nursery: trio.Nursery, limits: Limits | None = None) -> Server:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(partial(serve, make_router(), listeners, limits))
    return Server("127.0.0.1", listeners[0].socket.getsockname()[1])


async def connect_from(source: str, server: Server) -> trio.SocketStream:
    """A connection to ``server`` from the loopback address ``source`` (any of 127.0.0.0/8)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        await sock.bind((source, 0))
        await sock.connect((server.host, server.port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def served(server: Server, attempts: int = 50) -> Response:
    """The answer to ``GET /info`` from 127.0.0.9, asked again (every 0.1 s, ``attempts``
    times) while the server refuses the connection."""
    for _ in range(attempts):
        async with await connect_from("127.0.0.9", server) as s:
            await s.send_all(INFO_CLOSE)
            data = await read_all(s)
        response = Response.parse(data)
        if response.status != 503:
            return response
        await trio.sleep(0.1)
    return response


async def test_connections_over_a_cap_are_refused_at_once(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await start(nursery, Limits(max_connections=6, max_client_connections=3))
    with trio.fail_after(10):
        crowd = [await connect_from("127.0.0.2", server) for _ in range(3)]
        for _ in range(3):  # a fourth from the same address: refused, logged once
            async with await connect_from("127.0.0.2", server) as refused:
                response = Response.parse(await read_all(refused))
            assert response.status == 503
            assert response.headers["connection"] == "close"
            assert response.headers["retry-after"] == "1"
            assert b"3 connections open from this address" in response.body
        crowd += [await connect_from("127.0.0.3", server) for _ in range(3)]
        response = await served(server, attempts=1)  # a seventh: over the total cap
        assert response.status == 503
        assert b"6 connections open" in response.body
        for stream in crowd[:3]:
            await stream.aclose()
        assert (await served(server)).status == 200  # once the server saw them close
        for stream in crowd[3:]:
            await stream.aclose()
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len([line for line in refusals if "127.0.0.2" in line]) == 1, refusals
    assert len([line for line in refusals if "127.0.0.9" in line]) == 1, refusals
    assert all(r.exc_info is None for r in caplog.records)


async def test_the_default_caps_leave_room_for_a_login(nursery: trio.Nursery) -> None:
    """1000 idle connections from 40 addresses and 200 slow uploads from 10 others: a client
    from another address is still served."""
    server = await start(nursery)
    async with trio.open_nursery() as clients:
        streams: list[trio.SocketStream] = []
        with trio.fail_after(60):
            for i in range(1000):
                streams.append(await connect_from(f"127.0.1.{i % 40 + 1}", server))
            for i in range(200):
                upload = await connect_from(f"127.0.2.{i % 10 + 1}", server)
                await upload.send_all(
                    b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 9999\r\n\r\na"
                )
                streams.append(upload)
            response = await served(server, attempts=1)
            for stream in streams:
                clients.start_soon(stream.aclose)
    assert response.status == 200
    assert json.loads(response.body)["client"] == "127.0.0.9"


EMFILE_SERVER = textwrap.dedent(
    """
    import logging, resource, sys
    from functools import partial

    import trio

    sys.path.insert(0, sys.argv[1])
    from migrate.http.limits import Limits
    from migrate.http.server import serve
    from test_http_server import make_router

    async def main() -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        print(listeners[0].socket.getsockname()[1], flush=True)
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, hard))
        await serve(make_router(), listeners, Limits(header_timeout=30))

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    trio.run(main)
    """
)


async def wait_for_line(lines: trio.MemoryReceiveChannel[str], text: str) -> list[str]:
    """The lines read up to the first that holds ``text``."""
    seen = []
    async for line in lines:
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"{text!r} never logged: {seen}")


async def test_accept_pauses_quietly_while_descriptors_run_out(tmp_path: Path) -> None:
    """The server process may hold 40 descriptors: 45 clients take them all. Accepting
    pauses with one line (trio's serve_listeners logged a traceback every 100 ms), and
    resumes with one more once the clients are gone; then a request is answered."""
    tests = str(Path(__file__).parent)
    process = subprocess.Popen(
        [sys.executable, "-c", EMFILE_SERVER, tests],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    send, lines = trio.open_memory_channel[str](1000)

    def read_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            trio.from_thread.run(send.send, line)
        trio.from_thread.run(send.aclose)

    try:
        assert process.stdout is not None
        port = int(await trio.to_thread.run_sync(process.stdout.readline, abandon_on_cancel=True))
        server = Server("127.0.0.1", port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(trio.to_thread.run_sync, read_stderr, abandon_on_cancel=True)
            )
            with trio.fail_after(20):
                crowd = [await server.connect() for _ in range(45)]
                before = await wait_for_line(lines, "cannot accept connections")
                for stream in crowd:
                    await stream.aclose()
                during = await wait_for_line(lines, "again after")
                async with await server.connect() as s:
                    await s.send_all(INFO_CLOSE)
                    response = Response.parse(await read_all(s))
                assert response.status == 200
            process.terminate()
            after = [line async for line in lines]
    finally:
        process.kill()
        process.wait(10)
    log = before + during + after
    assert "Too many open files" in before[-1]
    assert not [line for line in during[:-1] if line.strip()], log
    assert not [line for line in log if "Traceback" in line or "serve_listeners" in line], log


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
