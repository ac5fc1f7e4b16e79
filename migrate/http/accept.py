"""Accepting connections: one loop per listener, each connection its own task, within caps.

:class:`ConnectionCaps` counts connections in total and per client (its address, or its /64
for IPv6: :func:`migrate.addresses.client_network`); one over either
cap is refused at once (a short answer if the server has one, then closed) and logged at most
once a second per address, so that many connections from a few clients cannot take every
descriptor. When ``accept`` fails for want of descriptors or memory (EMFILE, ENFILE,
ENOBUFS, ENOMEM), the loop pauses, longer each time up to a second, with one line when that
starts and one when accepting works again (``trio.serve_listeners`` logs a traceback every
100 ms instead).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable

import trio

from migrate.addresses import client_network, sockaddr_host_port
from migrate.http.limits import Limits
from migrate.http.routing import peer_address

log = logging.getLogger("xfer.http")

CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""What ``accept`` fails with when the process or the system is out of descriptors or
memory: waiting helps, giving up does not."""
FIRST_PAUSE = 0.01
MAX_PAUSE = 1.0
"""Seconds accepting pauses after such a failure: doubling from the first to the last."""
LOG_EVERY = 1.0
"""Seconds between two lines about refused connections from one address."""
_DRAIN_READS = 4
"""64 KiB reads of what a refused client already sent, at most."""
_FORGET_AT = 4096
"""Addresses whose last refusal line is remembered before old ones are forgotten."""

ConnectionHandler = Callable[[trio.SocketStream, "str | None"], Awaitable[None]]
"""``async def handle(stream, client)``, ``client`` the peer's canonical address; the stream is
closed after it returns."""


class ConnectionCaps:
    """Connections open, in total and per client address, against ``total`` and
    ``per_client`` caps."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.open = 0
        self.by_client: dict[str | None, int] = {}
        self._logged: dict[str | None, tuple[float, int]] = {}
        """Per address: when its last refusal was logged, and refusals since."""
        self._forget_at = _FORGET_AT

    def admit(self, client: str | None) -> str | None:
        """Count a new connection from ``client``; None if admitted, else why it is not."""
        if self.open >= self.total:
            return f"{self.open} connections open, the most the server takes"
        count = self.by_client.get(client, 0)
        if count >= self.per_client:
            return f"{count} connections open from this address, the most it may have"
        self.open += 1
        self.by_client[client] = count + 1
        return None

    def release(self, client: str | None) -> None:
        """Count a connection from ``client`` closed."""
        self.open -= 1
        count = self.by_client.pop(client) - 1
        if count:
            self.by_client[client] = count

    def log_refusal(self, client: str | None, why: str) -> None:
        """Log a refused connection, at most once every :data:`LOG_EVERY` seconds per
        address (the line counts those not logged)."""
        now = trio.current_time()
        last, unlogged = self._logged.get(client, (-math.inf, 0))
        if now - last < LOG_EVERY:
            self._logged[client] = (last, unlogged + 1)
            return
        if len(self._logged) >= self._forget_at:  # forget addresses not refused lately
            self._logged = {a: v for a, v in self._logged.items() if now - v[0] < LOG_EVERY}
            self._forget_at = max(_FORGET_AT, 2 * len(self._logged))
        self._logged[client] = (now, 0)
        more = f" ({unlogged} more refused since the last line)" if unlogged else ""
        log.warning("refused a connection from %s: %s%s", client or "?", why, more)


async def accept_connections(
    listeners: list[trio.SocketListener],
    limits: Limits,
    handle: ConnectionHandler,
    refusal: Callable[[str], bytes] | None = None,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on every listener until cancelled, each admitted connection served by
    ``handle`` in its own task; ``refusal(why)`` is what a refused one is sent before it is
    closed (nothing without it). The listeners are closed at the end; ``task_status.started``
    gets them."""
    caps = ConnectionCaps(limits.max_connections, limits.max_client_connections)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, caps, handle, refusal, nursery)
        task_status.started(listeners)


async def _accept_loop(
    listener: trio.SocketListener,
    caps: ConnectionCaps,
    handle: ConnectionHandler,
    refusal: Callable[[str], bytes] | None,
    nursery: trio.Nursery,
) -> None:
    where = _where(listener)
    paused_since: float | None = None
    pause = FIRST_PAUSE
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as e:
                if e.errno not in CAPACITY_ERRNOS:
                    raise
                if paused_since is None:
                    paused_since, pause = trio.current_time(), FIRST_PAUSE
                    log.warning(
                        "cannot accept connections on %s: %s; trying again every %g s at most",
                        where,
                        os.strerror(e.errno),
                        MAX_PAUSE,
                    )
                else:
                    pause = min(pause * 2, MAX_PAUSE)
                await trio.sleep(pause)
                continue
            if paused_since is not None:
                paused = trio.current_time() - paused_since
                log.warning("accepting connections on %s again after %.1f s", where, paused)
                paused_since = None
            client = peer_address(stream)
            network = client_network(client)
            why = caps.admit(network)
            if why is None:
                nursery.start_soon(_serve, stream, client, network, caps, handle)
            else:
                caps.log_refusal(network, why)
                _refuse(stream, refusal(why) if refusal is not None else b"")


async def _serve(
    stream: trio.SocketStream,
    client: str | None,
    network: str,
    caps: ConnectionCaps,
    handle: ConnectionHandler,
) -> None:
    try:
        await handle(stream, client)
    finally:
        caps.release(network)
        await trio.aclose_forcefully(stream)


def _refuse(stream: trio.SocketStream, answer: bytes) -> None:
    """Close a refused connection at once, ``answer`` sent first if the socket takes it
    without waiting. What the client already sent is read first: closing a socket with
    unread bytes resets the connection, and the client would not see the answer."""
    sock = stream.socket
    try:
        if answer:
            with contextlib.suppress(BlockingIOError):
                for _ in range(_DRAIN_READS):
                    if not os.read(sock.fileno(), 65536):
                        break
            os.write(sock.fileno(), answer)
            sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        sock.close()


def _where(listener: trio.SocketListener) -> str:
    """The listener's address and port, for log lines."""
    return sockaddr_host_port(listener.socket.getsockname())
