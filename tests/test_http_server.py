"""The HTTP server (migrate.http): curl, httpx and raw sockets against it on ::1 and 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import select
import socket
import subprocess
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from migrate.addresses import parse_host
from migrate.http.body import BodyClock
from migrate.http.errors import HTTPError
from migrate.http.exchange import Connection
from migrate.http.limits import Limits
from migrate.http.routing import Request, Router, client_address, split_target
from migrate.http.server import serve

LIMITS = Limits(header_timeout=0.5, idle_timeout=5.0, body_timeout=0.5, max_body=8 << 20)
BIG = 4 << 20
CURL = "/usr/bin/curl"


async def echo(request: Request, conn: Connection) -> None:
    body = await conn.read_body()
    answer = {
        "sha256": hashlib.sha256(body).hexdigest(),
        "length": len(body),
        "method": request.method,
        "client": request.client,
        "query": request.query,
    }
    await conn.respond(200, [("content-type", "application/json")], json.dumps(answer).encode())


async def info(request: Request, conn: Connection) -> None:
    answer = {
        "client": request.client,
        "path": request.path,
        "query": request.query,
        "version": request.http_version,
        "x-test": request.header("X-Test"),
    }
    await conn.respond(200, [("content-type", "application/json")], json.dumps(answer).encode())


async def stream(request: Request, conn: Connection) -> None:
    await conn.start_response(200, [("content-type", "text/plain")])
    for i in range(int(request.query.get("n", ["3"])[0])):
        await conn.send(f"chunk {i}\n".encode())
    await conn.end()


async def big(request: Request, conn: Connection) -> None:
    """4 MiB with a Content-Length, sent in 1 MiB pieces (the passthrough path)."""
    await conn.start_response(200, [("content-length", str(BIG))])
    for i in range(4):
        await conn.send(bytes([i]) * (1 << 20))
    await conn.end()


async def boom(request: Request, conn: Connection) -> None:
    raise RuntimeError("secret detail")


async def teapot(request: Request, conn: Connection) -> None:
    raise HTTPError(418, "short and stout")


async def pausing(request: Request, conn: Connection) -> None:
    """Reads the body 1 KiB at a time with ``receive_into``, pausing ``pause`` seconds after
    each piece (as an import does while it writes what it received)."""
    pause = float(request.query["pause"][0])
    buffer = memoryview(bytearray(1024))
    total = 0
    while n := await conn.receive_into(buffer):
        total += n
        await trio.sleep(pause)
    await conn.respond(200, body=str(total).encode())


async def raw(request: Request, conn: Connection) -> None:
    """Detach, then echo raw bytes upper-cased (the tail of the path first) until the end."""
    stream, buffered = conn.detach()
    await stream.send_all(request.path.rsplit("/", 1)[1].encode() + b":" + buffered.upper())
    while data := await stream.receive_some(65536):
        await stream.send_all(bytes(data).upper())


async def detach_late(request: Request, conn: Connection) -> None:
    await conn.read_body()
    conn.detach()


def make_router() -> Router:
    router = Router()
    router.add("POST", "/echo", echo)
    router.add("PUT", "/echo", echo)
    router.add("GET", "/info", info)
    router.add("GET", "/stream", stream)
    router.add("GET", "/big", big)
    router.add("GET", "/boom", boom)
    router.add("GET", "/teapot", teapot)
    router.add("PUT", "/pausing", pausing)
    router.add_prefix("PUT", "/raw", raw)
    router.add("PUT", "/late", detach_late)
    return router


@dataclass(frozen=True)
class Server:
    host: str
    port: int

    def url(self, path: str) -> str:
        return parse_host(self.host).url(path, port=self.port)

    async def connect(self) -> trio.SocketStream:
        return await trio.open_tcp_stream(self.host, self.port)


@pytest.fixture(params=["::1", "127.0.0.1"])
async def server(request: pytest.FixtureRequest, nursery: trio.Nursery) -> Server:
    listeners = await trio.open_tcp_listeners(0, host=request.param)
    await nursery.start(partial(serve, make_router(), listeners, LIMITS))
    return Server(request.param, listeners[0].socket.getsockname()[1])


async def read_all(stream: trio.SocketStream) -> bytes:
    """Everything until the server closes."""
    chunks = []
    while data := await stream.receive_some(65536):
        chunks.append(data)
    return b"".join(chunks)


async def read_response(stream: trio.SocketStream, buffer: bytearray) -> Response:
    """One response with a Content-Length off ``stream``; extra bytes stay in ``buffer``."""
    while b"\r\n\r\n" not in buffer:
        data = await stream.receive_some(65536)
        assert data, f"connection closed mid-head: {bytes(buffer)!r}"
        buffer += data
    response = Response.parse_head(bytes(buffer))
    del buffer[: response.head_length]
    length = int(response.headers["content-length"])
    while len(buffer) < length:
        data = await stream.receive_some(65536)
        assert data, "connection closed mid-body"
        buffer += data
    response.body = bytes(buffer[:length])
    del buffer[:length]
    return response


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    head_length: int
    body: bytes = b""

    @classmethod
    def parse_head(cls, data: bytes) -> Response:
        head, _, _ = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status, _ = status_line.split(" ", 2)
        assert version == "HTTP/1.1"
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
        return cls(int(status), headers, len(head) + 4)

    @classmethod
    def parse(cls, data: bytes) -> Response:
        response = cls.parse_head(data)
        response.body = data[response.head_length :]
        return response


async def exchange(server: Server, request: bytes) -> Response:
    """Send raw ``request``, read until the server closes, parse the one response."""
    with trio.fail_after(5):
        async with await server.connect() as s:
            await s.send_all(request)
            return Response.parse(await read_all(s))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=15, check=False)


async def curl(*args: str) -> subprocess.CompletedProcess[str]:
    """curl in a worker thread, so that the server keeps running meanwhile."""
    with trio.fail_after(15):
        return await trio.to_thread.run_sync(partial(run, CURL, "-g", "-s", "-v", *args))


# pure parts


def test_split_target() -> None:
    assert split_target("/a%20b/?x=1&x=2&y=&z") == (
        "/a b/",
        {"x": ["1", "2"], "y": [""], "z": [""]},
    )
    assert split_target("//double?") == ("//double", {})
    assert split_target("http://[::1]:80/p?q=%2F") == ("/p", {"q": ["/"]})
    assert split_target("*") == ("*", {})


def test_client_address_is_canonical() -> None:
    assert client_address(("::ffff:192.0.2.1", 80, 0, 0)) == "192.0.2.1"
    assert client_address(("2001:DB8:0::1", 80, 0, 0)) == "2001:db8::1"
    assert client_address(("127.0.0.1", 80)) == "127.0.0.1"
    assert client_address("/run/socket") is None


def test_request_header_any_case_and_joined() -> None:
    request = Request("GET", "/", "/", {}, [("accept", "a"), ("x-one", "1"), ("accept", "b")])
    assert request.header("Accept") == "a, b"
    assert request.header("X-ONE") == "1"
    assert request.header("missing") is None


def test_router_resolves_404_405_and_trailing_slash() -> None:
    router = make_router()
    assert router.resolve("GET", "/info/") is info
    assert router.resolve("HEAD", "/info") is info
    assert router.resolve("PUT", "/echo") is echo
    with pytest.raises(HTTPError) as e:
        router.resolve("GET", "/nowhere")
    assert e.value.status == 404
    with pytest.raises(HTTPError) as e:
        router.resolve("DELETE", "/echo")
    assert e.value.status == 405
    assert e.value.headers == [("allow", "POST, PUT")]


def test_router_prefixes() -> None:
    router = make_router()
    assert router.resolve("PUT", "/raw/x/y") is raw
    assert router.resolve("PUT", "/raw/x/") is raw
    with pytest.raises(HTTPError) as e:
        router.resolve("PUT", "/raw")  # the prefix itself is not below it
    assert e.value.status == 404
    with pytest.raises(HTTPError) as e:
        router.resolve("PUT", "/rawer/x")
    assert e.value.status == 404
    with pytest.raises(HTTPError) as e:
        router.resolve("GET", "/raw/x")
    assert e.value.status == 405
    router.add_prefix("PUT", "/raw/x", echo)  # the longest prefix wins
    assert router.resolve("PUT", "/raw/x/y") is echo
    assert router.resolve("PUT", "/raw/z") is raw
    router.add("PUT", "/raw/x/y", info)  # an exact route before any prefix
    assert router.resolve("PUT", "/raw/x/y") is info


# real clients


async def test_curl_keep_alive_two_urls(server: Server) -> None:
    done = await curl(server.url("/info?x=1&x=2"), server.url("/stream?n=4"))
    assert done.returncode == 0, done.stderr
    first, end = json.JSONDecoder().raw_decode(done.stdout)
    rest = done.stdout[end:]
    assert first == {
        "client": server.host,
        "path": "/info",
        "query": {"x": ["1", "2"]},
        "version": "1.1",
        "x-test": None,
    }
    assert rest == "".join(f"chunk {i}\n" for i in range(4))
    assert "Re-using existing connection" in done.stderr
    assert done.stderr.count("< HTTP/1.1 200 OK") == 2
    assert "< transfer-encoding: chunked" in done.stderr.lower()


async def test_curl_upload_with_expect_100_continue(server: Server, tmp_path: Path) -> None:
    data = os.urandom(2 << 20)
    path = tmp_path / "upload"
    path.write_bytes(data)
    done = await curl("-T", str(path), server.url("/echo?name=upload"))
    assert done.returncode == 0, done.stderr
    assert "> Expect: 100-continue" in done.stderr
    assert "< HTTP/1.1 100 Continue" in done.stderr
    assert "< HTTP/1.1 200 OK" in done.stderr
    answer = json.loads(done.stdout)
    assert answer["sha256"] == hashlib.sha256(data).hexdigest()
    assert answer["length"] == len(data)
    assert answer["method"] == "PUT"
    assert answer["query"] == {"name": ["upload"]}


async def test_curl_chunked_upload(server: Server, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    path = tmp_path / "upload"
    path.write_bytes(data)
    done = await curl(
        "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{path}", server.url("/echo")
    )
    assert done.returncode == 0, done.stderr
    assert "> Transfer-Encoding: chunked" in done.stderr
    answer = json.loads(done.stdout)
    assert (answer["sha256"], answer["length"]) == (hashlib.sha256(data).hexdigest(), len(data))
    assert answer["method"] == "POST"


async def test_curl_sees_404_and_405(server: Server) -> None:
    done = await curl("-X", "DELETE", server.url("/info"), server.url("/nowhere"))
    assert "< HTTP/1.1 405 Method Not Allowed" in done.stderr
    assert "< allow: GET, HEAD" in done.stderr
    assert "< HTTP/1.1 404 Not Found" in done.stderr
    assert "Re-using existing connection" in done.stderr


def httpx_session(server: Server) -> list[object]:
    with httpx.Client(timeout=5) as client:
        got = client.get(server.url("/info"), headers={"X-Test": "yes"})
        posted = client.post(server.url("/echo/"), content=b"hello" * 1000)
        streamed = client.get(server.url("/stream"), params={"n": 2})
        return [got.status_code, got.json(), posted.json(), streamed.text]


async def test_httpx_sync_client_in_a_thread(server: Server) -> None:
    with trio.fail_after(10):
        status, got, posted, streamed = await trio.to_thread.run_sync(httpx_session, server)
    assert status == 200
    assert got == {
        "client": server.host,
        "path": "/info",
        "query": {},
        "version": "1.1",
        "x-test": "yes",
    }
    assert isinstance(posted, dict)
    assert posted["sha256"] == hashlib.sha256(b"hello" * 1000).hexdigest()
    assert streamed == "chunk 0\nchunk 1\n"


async def test_httpx_async_client_under_trio(server: Server) -> None:
    """httpx's AsyncClient runs on trio through anyio."""
    digest = hashlib.sha256()
    with trio.fail_after(10):
        async with httpx.AsyncClient(timeout=5) as client:
            async with client.stream("GET", server.url("/big")) as response:
                assert response.status_code == 200
                assert response.headers["content-length"] == str(BIG)
                async for chunk in response.aiter_bytes():
                    digest.update(chunk)
            head = await client.head(server.url("/info"))
    expected = b"".join(bytes([i]) * (1 << 20) for i in range(4))
    assert digest.hexdigest() == hashlib.sha256(expected).hexdigest()
    assert head.status_code == 200
    assert int(head.headers["content-length"]) > 0
    assert head.content == b""


# raw sockets


async def test_keep_alive_pipelining_and_routing_errors(server: Server) -> None:
    requests = (
        b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /info HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /teapot HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /info/?a=b HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    with trio.fail_after(5):
        async with await server.connect() as s:
            await s.send_all(requests)
            buffer = bytearray()
            responses = [await read_response(s, buffer) for _ in range(5)]
    assert [r.status for r in responses] == [404, 405, 200, 418, 200]
    assert responses[0].body == b"404 Not Found: no resource at /nowhere\n"
    assert responses[1].headers["allow"] == "GET, HEAD"
    assert json.loads(responses[2].body)["sha256"] == hashlib.sha256(b"abc").hexdigest()
    assert responses[3].body == b"418 I'm a Teapot: short and stout\n"
    assert json.loads(responses[4].body)["query"] == {"a": ["b"]}
    assert all("connection" not in r.headers for r in responses)


async def test_detached_stream_carries_raw_bytes(server: Server) -> None:
    # a request with no body framing, its raw bytes in the same packet and after it
    stream = await server.connect()
    await stream.send_all(b"PUT /raw/id7 HTTP/1.1\r\nhost: x\r\ncookie: a=b\r\n\r\nfirst")
    received = bytearray()
    while len(received) < len(b"id7:FIRST"):
        received += await stream.receive_some(100)
    assert received == b"id7:FIRST"  # no HTTP answer: raw bytes only
    await stream.send_all(b"\x00second")
    received = bytearray()
    while len(received) < 7:
        received += await stream.receive_some(100)
    assert received == b"\x00SECOND"
    await stream.send_eof()
    assert await read_all(stream) == b""  # the server closed, no answer of its own


async def test_detach_after_reading_the_body_is_a_500(server: Server) -> None:
    stream = await server.connect()
    await stream.send_all(b"PUT /late HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nab")
    response = await read_all(stream)
    assert response.startswith(b"HTTP/1.1 500 ")


async def test_connection_close_is_honoured(server: Server) -> None:
    response = await exchange(server, b"GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert response.status == 200
    assert response.headers["connection"] == "close"
    assert json.loads(response.body)["path"] == "/info"


async def test_http_1_0_gets_an_answer_and_a_close(server: Server) -> None:
    response = await exchange(server, b"GET /stream?n=2 HTTP/1.0\r\n\r\n")
    assert response.status == 200
    assert response.body == b"chunk 0\nchunk 1\n"  # close-delimited, no chunked coding


async def test_malformed_request_line_is_400(server: Server) -> None:
    response = await exchange(server, b"GARBAGE\r\n\r\n")
    assert response.status == 400
    assert response.headers["connection"] == "close"
    assert response.body.startswith(b"400 Bad Request: ")
    assert response.body.count(b"\n") == 1


async def test_bad_chunked_body_is_400(server: Server) -> None:
    response = await exchange(
        server, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    )
    assert response.status == 400


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /info HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n", 400),
        (b"GET /info HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
        (b"GET /info HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"GET /in\x00fo HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /info HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\xaa" * 64 + b"\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"0" * 5000 + b"1\r\n\r\na", 400),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\nab", 400),
        (b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 501),
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 5000,
            408,
        ),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab", 408),
        (b"PUT /pausing?pause=x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\na", 500),
        (b"GET /info HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 200),
        (b"GET /info HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\na", 200),
    ],
)
async def test_bad_input_is_answered_and_the_server_carries_on(
    server: Server, request_bytes: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    response = await exchange(server, request_bytes)
    assert response.status == status
    assert response.headers["connection"] == "close"
    if status != 500:  # (a handler that raises is logged with its traceback)
        assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    again = await exchange(server, b"GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert again.status == 200


async def test_unread_body_closes_after_the_answer(server: Server) -> None:
    response = await exchange(
        server, b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
    )
    assert response.status == 404
    assert response.headers["connection"] == "close"


async def test_oversized_head_is_431(server: Server) -> None:
    request = b"GET /info HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (20 * 1024) + b"\r\n\r\n"
    response = await exchange(server, request)
    assert response.status == 431
    assert response.headers["connection"] == "close"


async def test_oversized_body_is_413_without_100_continue(server: Server) -> None:
    response = await exchange(
        server,
        b"PUT /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % (LIMITS.max_body + 1),
    )
    assert response.status == 413
    assert response.headers["connection"] == "close"


async def test_stalled_head_gets_408_while_another_client_is_served(server: Server) -> None:
    with trio.fail_after(5):
        async with await server.connect() as slow:
            await slow.send_all(b"GET /info HTTP/1.1\r\nHost: x\r\n")
            start = trio.current_time()
            # meanwhile, another client is served, before the slow one's answer
            fast = await exchange(
                server, b"GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            assert fast.status == 200
            unanswered = select.select([slow.socket.fileno()], [], [], 0)[0] == []
            assert unanswered, "the slow client was answered first"
            response = Response.parse(await read_all(slow))
            assert trio.current_time() - start >= LIMITS.header_timeout * 0.9
    assert response.status == 408


async def test_silent_client_is_closed_after_the_header_timeout(server: Server) -> None:
    with trio.fail_after(5):
        async with await server.connect() as s:
            assert await read_all(s) == b""


async def test_stalled_body_closes_the_connection(server: Server) -> None:
    with trio.fail_after(5):
        async with await server.connect() as s:
            await s.send_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123")
            start = trio.current_time()
            data = await read_all(s)
            assert trio.current_time() - start >= LIMITS.body_timeout * 0.9
    response = Response.parse(data)
    assert response.status == 408
    assert response.headers["connection"] == "close"


async def test_handler_exception_is_500_and_logged(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="xfer.http")
    response = await exchange(server, b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 500
    assert response.headers["connection"] == "close"
    assert response.body == b"500 Internal Server Error: internal server error\n"
    assert b"secret" not in response.body
    assert b"Traceback" not in response.body
    [record] = [r for r in caplog.records if r.name == "xfer.http"]
    assert record.exc_info is not None
    assert "secret detail" in caplog.text
    again = await exchange(server, b"GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert again.status == 200


async def test_ipv4_mapped_peer_is_recorded_as_ipv4(nursery: trio.Nursery) -> None:
    sock = trio.socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        await sock.bind(("::ffff:127.0.0.1", 0))
    except OSError as e:
        sock.close()
        pytest.skip(f"cannot bind an IPv4-mapped address: {e}")
    sock.listen()
    listener = trio.SocketListener(sock)
    await nursery.start(partial(serve, make_router(), [listener], LIMITS))
    server = Server("127.0.0.1", sock.getsockname()[1])
    response = await exchange(server, b"GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert json.loads(response.body)["client"] == "127.0.0.1"


# framing


async def test_content_length_with_transfer_encoding_is_400_and_closes(server: Server) -> None:
    """RFC 9112 section 6.1: a proxy reading the Content-Length would take what follows it as
    the next request; so the request is refused and nothing after it is served."""
    smuggled = b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n"
    chunked = b"3\r\nabc\r\n0\r\n\r\n"
    response = await exchange(
        server,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n%s%s" % (len(chunked), chunked, smuggled),
    )
    assert response.status == 400
    assert response.headers["connection"] == "close"
    message = b"400 Bad Request: both Content-Length and Transfer-Encoding given\n"
    assert response.body == message  # and no second response after it


# slow bodies


async def trickle(server: Server, head: bytes, piece: bytes, most: int) -> tuple[Response, int]:
    """Send ``head``, then ``piece`` every 0.1 s (``most`` times) until the server answers;
    the answer and how many pieces went before it."""
    sent = 0
    with trio.fail_after(10):
        async with await server.connect() as s:
            await s.send_all(head)

            async def feed() -> None:
                nonlocal sent
                for _ in range(most):
                    await trio.sleep(0.1)
                    await s.send_all(piece)
                    sent += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(feed)
                response = await read_response(s, bytearray())
                nursery.cancel_scope.cancel()
    return response, sent


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_trickling_body_is_cut(server: Server, chunked: bool) -> None:
    """A byte every 0.1 s restarted the body timeout (0.5 s) each time: never cut. Under the
    minimum rate (500 bytes/s, each byte earning 2 ms) it is cut within about 0.5 s, long
    before its 40 pieces."""
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: 1000"
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n" % framing
    piece = b"1\r\na\r\n" if chunked else b"a"
    response, sent = await trickle(server, head, piece, most=40)
    assert response.status == 408
    assert response.headers["connection"] == "close"
    assert sent < 20  # (the message is the clock's: see test_body_clock)


def test_body_clock() -> None:
    """mod_reqtimeout's body=30,MinRate=500: 30 s at first, 1 s more per 500 bytes, never
    more than 30 s ahead; only the waits count."""
    clock = BodyClock(30.0, 500.0)
    clock.received(1000, 10.0)  # 10 s for 1000 bytes: 2 s earned
    assert clock.left == pytest.approx(22.0)
    clock.received(10**9, 0.5)  # a burst earns no more than the whole timeout
    assert clock.left == 30.0
    for _ in range(3):
        clock.received(1, 10.0)  # a byte every 10 s
    assert clock.left == pytest.approx(0.006)
    assert str(clock.expired()) == "408 request body slower than 500 bytes/s"
    fresh = BodyClock(0.5, 500.0)
    assert str(fresh.expired()) == "408 no request body bytes for 0.5 s"
    every_byte = BodyClock(30.0, 0.0)  # no minimum rate: any byte restores the timeout
    every_byte.received(1, 29.0)
    assert every_byte.left == 30.0
    every_byte.received(0, 29.0)
    assert every_byte.left == pytest.approx(1.0)


async def test_time_a_handler_takes_between_reads_is_not_the_clients(server: Server) -> None:
    """The handler waits 0.3 s after each KiB, 1.2 s in all: more than the body timeout, but
    the client was never waited for."""
    body = os.urandom(4096)
    response = await exchange(
        server,
        b"PUT /pausing?pause=0.3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    assert (response.status, response.body) == (200, b"4096")


# bodies read whole: the memory budget


async def start(nursery: trio.Nursery, limits: Limits, host: str = "127.0.0.1") -> Server:
    listeners = await trio.open_tcp_listeners(0, host=host)
    await nursery.start(partial(serve, make_router(), listeners, limits))
    return Server(host, listeners[0].socket.getsockname()[1])


async def expect_continue(server: Server, length: int) -> trio.SocketStream:
    """A connection whose PUT of ``length`` bytes the server accepted (``100 Continue``: its
    handler holds the body's memory), the body not sent yet."""
    s = await server.connect()
    await s.send_all(
        b"PUT /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % length
    )
    assert await s.receive_some(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    return s


async def test_bodies_read_whole_wait_for_memory_then_get_503(nursery: trio.Nursery) -> None:
    """Two 512 KiB bodies take the 1 MiB budget (each beyond its first 64 KiB): a third waits,
    then gets 503 and its connection closes; a small call goes through meanwhile, and the
    memory comes back when a handler ends."""
    limits = Limits(body_timeout=5.0, body_memory=1 << 20, body_memory_wait=0.5)
    server = await start(nursery, limits)
    size = 512 << 10
    with trio.fail_after(10):
        first, second = await expect_continue(server, size), await expect_continue(server, size)
        async with first, second:
            third = await exchange(
                server,
                b"PUT /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                b"Content-Length: %d\r\n\r\n" % size,
            )
            assert third.status == 503
            assert third.headers["retry-after"] == "1"
            assert third.headers["connection"] == "close"
            small = await exchange(
                server,
                b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Content-Length: 300\r\n\r\n" + bytes(300),
            )
            assert small.status == 200
            await first.send_all(bytes(size))
            answered = await read_response(first, bytearray())
            assert json.loads(answered.body)["length"] == size
            async with await expect_continue(server, size) as fourth:
                await fourth.send_all(b"x" * size)
                assert (await read_response(fourth, bytearray())).status == 200


async def test_chunked_body_growing_past_the_budget_gets_503(nursery: trio.Nursery) -> None:
    limits = Limits(body_timeout=5.0, body_memory=1 << 20, body_memory_wait=0.5)
    server = await start(nursery, limits)
    with trio.fail_after(10):
        async with await expect_continue(server, 768 << 10):
            head = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            chunk = b"10000\r\n" + bytes(1 << 16) + b"\r\n"  # 64 KiB
            async with await server.connect() as s:
                await s.send_all(head + chunk * 8)
                response = await read_response(s, bytearray())
    assert response.status == 503
    assert response.headers["connection"] == "close"
