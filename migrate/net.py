"""Name resolution and connecting, IPv6-first: getaddrinfo only, Happy Eyeballs over every result.

Resolution goes through trio's getaddrinfo with the bare host (never brackets, zone kept for
link-local addresses); the results are ordered with the preferred family first and the
families interleaved (RFC 8305 section 4), and connection attempts start one after another,
``delay`` apart or as soon as the previous one fails, the first to succeed winning and the
others cancelled (RFC 8305 section 5). The command line's connections come through here, and
so will migration's. Listening sockets are made here too: one dual-stack ``[::]`` socket by
default, explicit (and zoned link-local) addresses, IPv6 only when asked.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import Any

import trio

from migrate.addresses import Family, Host, parse_host, sockaddr_host_port
from migrate.formats.xapi import DEFAULT_PORT
from migrate.nursery import open_nursery

SOCKET_FAMILIES: dict[Family, socket.AddressFamily] = {
    "IPv4": socket.AF_INET,
    "IPv6": socket.AF_INET6,
}
HAPPY_EYEBALLS_DELAY = 0.25
"""RFC 8305's recommended connection attempt delay, in seconds."""
CONNECT_TIMEOUT = 30.0
"""Seconds to resolve and connect, all attempts together, unless told otherwise."""

Target = tuple[socket.AddressFamily, Any]
"""An address family and the socket address to connect to."""


class ConnectError(OSError):
    """No address of a host accepted a connection; the message lists each attempt's error."""


class ConnectTimeout(ConnectError):
    """No address of a host accepted a connection within the time allowed."""


def order_targets(targets: list[Target], prefer: Family) -> list[Target]:
    """``targets`` deduplicated, the preferred family first, then the families alternating."""
    first = SOCKET_FAMILIES[prefer]
    seen: set[tuple[int, Any]] = set()
    preferred: list[Target] = []
    others: list[Target] = []
    for family, sockaddr in targets:
        if (family, sockaddr) in seen:
            continue
        seen.add((family, sockaddr))
        (preferred if family == first else others).append((family, sockaddr))
    ordered: list[Target] = []
    for i in range(max(len(preferred), len(others))):
        ordered += preferred[i : i + 1] + others[i : i + 1]
    return ordered


async def resolve(host: Host | str, port: int, *, prefer: Family = "IPv6") -> list[Target]:
    """Every TCP address of ``host``, ordered for connecting (see :func:`order_targets`)."""
    parsed = host if isinstance(host, Host) else parse_host(host)
    try:
        infos = await trio.socket.getaddrinfo(
            parsed.address, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except socket.gaierror as e:
        raise ConnectError(f"cannot resolve {parsed.address}: {e.strerror}") from None
    targets = [(family, sockaddr) for family, _, _, _, sockaddr in infos]
    return order_targets([t for t in targets if t[0] in SOCKET_FAMILIES.values()], prefer)


async def connect(
    host: Host | str,
    port: int | None = None,
    *,
    prefer: Family = "IPv6",
    delay: float = HAPPY_EYEBALLS_DELAY,
    timeout: float = CONNECT_TIMEOUT,
) -> trio.SocketStream:
    """A TCP stream to ``host`` (any form :func:`parse_host` takes) on ``port`` or its own:
    its addresses tried ``prefer`` family first, one every ``delay`` seconds, the first to
    connect winning; ConnectTimeout after ``timeout`` seconds in all."""
    parsed = host if isinstance(host, Host) else parse_host(host)
    number = parsed.effective_port(port)
    with trio.move_on_after(timeout) as scope:
        targets = await resolve(parsed, number, prefer=prefer)
        if not targets:
            raise ConnectError(f"{parsed.address} has no IPv4 or IPv6 address")
        return await _race(targets, delay)
    assert scope.cancelled_caught
    raise ConnectTimeout(f"connecting to {parsed.host_port(number)} timed out after {timeout:g} s")


async def _race(targets: list[Target], delay: float) -> trio.SocketStream:
    """Staggered attempts; the first connected socket wins and the rest are cancelled."""
    winner: trio.socket.SocketType | None = None
    errors: list[str] = []

    async def attempt(target: Target, failed: trio.Event, nursery: trio.Nursery) -> None:
        nonlocal winner
        family, sockaddr = target
        sock = trio.socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            await sock.connect(sockaddr)
        except OSError as e:
            sock.close()
            reason = os.strerror(e.errno) if e.errno else str(e)
            errors.append(f"{sockaddr_host_port(sockaddr)}: {reason}")
            failed.set()
            return
        except BaseException:
            sock.close()
            raise
        if winner is not None:  # another attempt connected at the same moment
            sock.close()
            return
        winner = sock
        nursery.cancel_scope.cancel()

    async with open_nursery() as nursery:
        for target in targets:
            failed = trio.Event()
            nursery.start_soon(attempt, target, failed, nursery)
            with trio.move_on_after(delay):
                await failed.wait()
    if winner is None:
        raise ConnectError("; ".join(errors))
    winner.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return trio.SocketStream(winner)


class ListenError(OSError):
    """A listening socket could not be set up; the message names the address and why."""


async def open_listeners(
    hosts: Sequence[Host], *, ipv6_only: bool = False, backlog: int = 128
) -> list[trio.SocketListener]:
    """A bound, listening socket for each of ``hosts`` (IPv4 or IPv6 addresses, a link-local
    one bound with its zone's scope id). The IPv6 wildcard ``::`` is dual-stack unless
    ``ipv6_only``; other IPv6 addresses are IPv6 only. ListenError if any cannot be opened
    (those already opened are closed)."""
    listeners: list[trio.SocketListener] = []
    try:
        for host in hosts:
            listeners.append(await _listen(host, ipv6_only=ipv6_only, backlog=backlog))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


async def _listen(host: Host, *, ipv6_only: bool, backlog: int) -> trio.SocketListener:
    port = DEFAULT_PORT if host.port is None else host.port
    where = host.host_port(port)
    if host.family is None:
        raise ListenError(f"cannot listen on {where}: an IP address is needed, not a name")
    bare = host.bare
    sockaddr: tuple[str, int] | tuple[str, int, int, int]
    if host.family == "IPv6":
        family = socket.AF_INET6
        sockaddr = (bare, port, 0, _scope_id(host.zone, where) if host.zone else 0)
    else:
        family = socket.AF_INET
        sockaddr = (bare, port)
    sock = trio.socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            v6only = ipv6_only or bare != "::"
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        await sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise ListenError(f"cannot listen on {where}: {e.strerror or e}") from None
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


def _scope_id(zone: str, where: str) -> int:
    if zone.isdigit():
        return int(zone)
    try:
        return socket.if_nametoindex(zone)
    except OSError:
        raise ListenError(f"cannot listen on {where}: no interface {zone!r}") from None


def listener_url(host: Host, listener: trio.SocketListener, scheme: str = "http") -> str:
    """The ``http://`` (or ``scheme``) URL of ``listener``, bound for ``host``, with the port
    it really has."""
    port = listener.socket.getsockname()[1]
    return Host(host.address, host.family).url(scheme=scheme, port=port)
