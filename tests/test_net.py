"""migrate.net: resolution and Happy Eyeballs connecting, over real sockets on ::1 and 127.0.0.1."""

from __future__ import annotations

import socket
from functools import partial

import pytest
import trio

from migrate.net import ConnectError, ConnectTimeout, _race, connect, order_targets, resolve

V6 = socket.AF_INET6
V4 = socket.AF_INET


def test_order_prefers_a_family_and_interleaves() -> None:
    targets = [
        (V4, ("192.0.2.1", 80)),
        (V4, ("192.0.2.2", 80)),
        (V6, ("2001:db8::1", 80, 0, 0)),
        (V4, ("192.0.2.1", 80)),
        (V6, ("2001:db8::2", 80, 0, 0)),
        (V6, ("2001:db8::3", 80, 0, 0)),
    ]
    assert [a[1][0] for a in order_targets(targets, "IPv6")] == [
        "2001:db8::1",
        "192.0.2.1",
        "2001:db8::2",
        "192.0.2.2",
        "2001:db8::3",
    ]
    assert [a[1][0] for a in order_targets(targets, "IPv4")] == [
        "192.0.2.1",
        "2001:db8::1",
        "192.0.2.2",
        "2001:db8::2",
        "2001:db8::3",
    ]


async def test_resolve_literals_without_brackets() -> None:
    assert await resolve("[::1]:9", 80) == [(V6, ("::1", 80, 0, 0))]
    assert await resolve("http://127.0.0.1:9/", 81) == [(V4, ("127.0.0.1", 81))]
    assert await resolve("::ffff:127.0.0.1", 82) == [(V4, ("127.0.0.1", 82))]


class _NoSuchName(trio.abc.HostnameResolver):
    """trio's resolver hook: every name is unknown, without asking any name server."""

    async def getaddrinfo(self, *args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror(socket.EAI_NONAME, "unknown to the test resolver")

    async def getnameinfo(self, *args: object) -> tuple[str, str]:
        raise NotImplementedError


async def test_resolution_goes_through_trio_and_fails_clearly() -> None:
    previous = trio.socket.set_custom_hostname_resolver(_NoSuchName())
    try:
        with pytest.raises(
            ConnectError, match=r"cannot resolve host\.example: unknown to the test resolver"
        ):
            await resolve("host.example", 80)
    finally:
        trio.socket.set_custom_hostname_resolver(previous)


class _NeverAnswers(trio.abc.HostnameResolver):
    """trio's resolver hook: a name server that never answers."""

    async def getaddrinfo(self, *args: object, **kwargs: object) -> list[object]:
        await trio.sleep_forever()

    async def getnameinfo(self, *args: object) -> tuple[str, str]:
        raise NotImplementedError


async def test_the_timeout_covers_resolution_too() -> None:
    previous = trio.socket.set_custom_hostname_resolver(_NeverAnswers())
    try:
        with pytest.raises(ConnectTimeout, match=r"connecting to host\.example:80 timed out"):
            await connect("host.example", 80, timeout=0.2)
    finally:
        trio.socket.set_custom_hostname_resolver(previous)


async def _echo_server(nursery: trio.Nursery, host: str) -> int:
    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            async for data in stream:
                await stream.send_all(data)

    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host=host))
    port: int = listeners[0].socket.getsockname()[1]
    return port


@pytest.mark.parametrize("host", ["::1", "127.0.0.1"])
async def test_connect_to_each_loopback(host: str) -> None:
    async with trio.open_nursery() as nursery:
        port = await _echo_server(nursery, host)
        text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        stream = await connect(text)
        async with stream:
            await stream.send_all(b"ping")
            assert await stream.receive_some(4) == b"ping"
            peer = stream.socket.getpeername()
            assert peer[0] == host
        nursery.cancel_scope.cancel()


async def _closed_port(family: socket.AddressFamily, host: str) -> int:
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    await sock.bind((host, 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


async def test_falls_back_to_the_next_address() -> None:
    async with trio.open_nursery() as nursery:
        port = await _echo_server(nursery, "127.0.0.1")
        dead = await _closed_port(V6, "::1")
        stream = await _race([(V6, ("::1", dead, 0, 0)), (V4, ("127.0.0.1", port))], delay=5)
        async with stream:
            assert stream.socket.getpeername() == ("127.0.0.1", port)
        nursery.cancel_scope.cancel()


async def test_every_address_refused_lists_each_error() -> None:
    dead6 = await _closed_port(V6, "::1")
    dead4 = await _closed_port(V4, "127.0.0.1")
    with pytest.raises(ConnectError) as info:
        await _race([(V6, ("::1", dead6, 0, 0)), (V4, ("127.0.0.1", dead4))], delay=5)
    assert str(info.value) == (
        f"[::1]:{dead6}: Connection refused; 127.0.0.1:{dead4}: Connection refused"
    )


async def test_link_local_without_zone_is_refused_before_any_packet() -> None:
    with pytest.raises(ValueError, match="needs a zone"):
        await connect("[fe80::1]:80")
