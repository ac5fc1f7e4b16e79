"""The HTTP/1.1 server on trio and h11: connections, their request loop and error answers.

h11 does the protocol (parsing, framing, keep-alive, HTTP/1.0, ``Expect: 100-continue``
bookkeeping). Each connection runs :class:`_Session`, which reads request heads, runs the
:class:`~migrate.http.routing.Router`'s handler with a :class:`~migrate.http.exchange.
Connection` and keeps the connection alive while the requests allow it, within
:class:`~migrate.http.limits.Limits`. Errors are answered: 400 for a malformed request (one
with both Content-Length and Transfer-Encoding too, and its connection closed: a proxy that
framed it the other way would see the next request elsewhere), 431 for an oversized head, 408
for a head or body too slow, 404/405 from routing, 500 (logged on ``xfer.http``, one line to
the client) for a handler that raises. :func:`serve` and :func:`serve_tls` accept connections
(:mod:`migrate.http.accept`), each its own task: no client can block another.
"""

from __future__ import annotations

import logging
import ssl
from typing import cast

import h11
import trio

from migrate.http.accept import accept_connections
from migrate.http.body import Ended
from migrate.http.budget import BodyMemory
from migrate.http.errors import (
    RETRY_AFTER,
    HeaderPairs,
    HTTPError,
    error_body,
    error_headers,
    phrase,
)
from migrate.http.exchange import Connection, encode_headers
from migrate.http.limits import Limits
from migrate.http.routing import Request, Router, peer_address
from migrate.http.tls import TLSStream

log = logging.getLogger("xfer.http")

RECEIVE_SIZE = 65536
"""Bytes asked of the stream at a time while reading a head or lingering."""
LINGER = 1.0
"""Seconds a closing connection is drained so that the client reads our answer."""
LINGER_BYTES = 64 << 20
"""Bytes drained at most from a closing connection."""


class _Session:
    """The request loop of one connection."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        router: Router,
        limits: Limits,
        client: str | None,
        body_memory: BodyMemory,
    ) -> None:
        self.stream = stream
        self.router = router
        self.limits = limits
        self.client = client
        self.body_memory = body_memory
        self.h11 = self._fresh_h11()
        self.eof = False
        self.detached = False
        """Whether a handler took the stream off HTTP (:meth:`Connection.detach`)."""

    def _fresh_h11(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head)

    async def run(self) -> None:
        first = True
        while True:
            request = await self._next_request(first)
            first = False
            if request is None:
                return
            conn = await self._handle(request)
            if conn is None:
                return
            if self.h11.our_state is not h11.DONE:
                return  # Connection: close or HTTP/1.0 (h11 wants MUST_CLOSE)
            body = conn.body.state
            if isinstance(body, Ended) and body.after is not None:
                # the body went past h11, which still waits for it: go on with a fresh one
                self.h11 = self._fresh_h11()
                if body.after:  # (h11 takes empty data for the end of the connection)
                    self.h11.receive_data(body.after)
                continue
            if self.h11.their_state is not h11.DONE:
                return  # an unread or failed body
            self.h11.start_next_cycle()

    async def _next_request(self, first: bool) -> Request | None:
        """The next request head, or None when the connection is to close (errors answered)."""
        received = bool(self.h11.trailing_data[0])
        wait = self.limits.header_timeout if first or received else self.limits.idle_timeout
        deadline = trio.current_time() + wait
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                if not self.eof:
                    await self._answer_head_error(e.error_status_hint, str(e))
                return None
            if event is h11.NEED_DATA:
                data = None
                # never more than one byte past the limit, so that h11 sees any oversized head
                room = self.limits.max_head + 1 - len(self.h11.trailing_data[0])
                with trio.move_on_at(deadline):
                    data = await self.stream.receive_some(max(1, min(room, RECEIVE_SIZE)))
                if data is None:
                    if received:  # part of a head: it can still be answered
                        await self._answer_head_error(408, "request head not received in time")
                    return None
                if not data:
                    self.eof = True
                elif not received:
                    received = True
                    if not first:
                        deadline = trio.current_time() + self.limits.header_timeout
                self.h11.receive_data(cast(bytes, data))
            elif isinstance(event, h11.Request):
                return Request.from_h11(event, self.client)
            else:  # ConnectionClosed
                return None

    async def _handle(self, request: Request) -> Connection | None:
        """Run the request's handler; its Connection, None when the connection must close."""
        length = request.header("content-length")
        if length is not None and request.header("transfer-encoding") is not None:
            # RFC 9112 section 6.1: such a request may be smuggling another one
            await self._answer_head_error(400, "both Content-Length and Transfer-Encoding given")
            return None
        # (h11 0.16 on lets 1 to 20 digits through: int() never sees thousands)
        content_length = None if length is None else int(length)
        if request.header("transfer-encoding") is None and not content_length:
            self.h11.next_event()  # the EndOfMessage of an empty body
        conn = Connection(
            self.stream, self.h11, request, self.limits, content_length, self.body_memory
        )
        try:
            if not request.http_version.startswith("1."):
                message = f"HTTP/{request.http_version} not supported"
                await self._answer_error(conn, 505, message, [("connection", "close")])
                return None
            return await self._run_handler(request, conn)
        finally:
            conn.release()

    async def _run_handler(self, request: Request, conn: Connection) -> Connection | None:
        try:
            await self.router.resolve(request.method, request.path)(request, conn)
            if conn.detached:
                self.detached = True
                return None
            if conn.status is None:
                raise RuntimeError("handler returned without a response")
            await conn.end()
        except HTTPError as e:
            answered = await self._answer_error(conn, e.status, e.message, e.headers)
            return conn if answered else None
        except h11.RemoteProtocolError as e:
            answered = await self._answer_error(conn, e.error_status_hint, str(e))
            return conn if answered else None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception:
            log.exception(
                "handler for %s %s from %s failed", request.method, request.target, self.client
            )
            await self._answer_error(conn, 500, "internal server error", [("connection", "close")])
            return None
        log.debug("%s %s %s -> %s", self.client, request.method, request.target, conn.status)
        return conn

    async def _answer_error(
        self, conn: Connection, status: int, message: str, headers: HeaderPairs = ()
    ) -> bool:
        """Answer an error if no response has started; False (close) if one has."""
        request = conn.request
        log.debug("%s %s %s -> %s %s", self.client, request.method, request.target, status, message)
        if conn.detached:
            self.detached = True
            return False
        if conn.status is not None:
            return False
        try:
            await conn.respond(status, [*error_headers(), *headers], error_body(status, message))
        except h11.LocalProtocolError:
            return False
        return True

    async def _answer_head_error(self, status: int, message: str) -> None:
        """Answer a request that cannot be served, then close."""
        log.debug("%s -> %s %s", self.client, status, message)
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = error_body(status, message)
        headers = [*error_headers(), ("content-length", str(len(body))), ("connection", "close")]
        try:
            fields = encode_headers(headers)
            reason = phrase(status).encode()
            data = self.h11.send(h11.Response(status_code=status, headers=fields, reason=reason))
            data += self.h11.send(h11.Data(data=body)) + self.h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return
        await self.stream.send_all(data)

    async def linger(self) -> None:
        """Half-close and drain what the client still sends, so that it reads our last answer
        instead of a reset; bounded in time and bytes."""
        if self.eof or self.detached:
            return
        if not isinstance(self.stream, trio.abc.HalfCloseableStream):
            return
        with trio.move_on_after(LINGER):
            try:
                await self.stream.send_eof()
                drained = 0
                while drained < LINGER_BYTES:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        return
                    drained += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return


async def serve_connection(
    stream: trio.abc.Stream,
    router: Router,
    limits: Limits | None = None,
    *,
    client: str | None = None,
    body_memory: BodyMemory | None = None,
) -> None:
    """Serve requests on ``stream`` until either side ends the connection, then close it.
    Never raises except for cancellation; ``client`` defaults to the socket's peer, the body
    memory (shared by the connections of a server) to one of this connection's own."""
    limits = limits or Limits()
    if client is None and isinstance(stream, trio.SocketStream):
        client = peer_address(stream)
    if body_memory is None:
        body_memory = BodyMemory(limits.body_memory, limits.body_memory_wait)
    session = _Session(stream, router, limits, client, body_memory)
    try:
        try:
            await session.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the client went away
        except Exception:
            log.exception("connection from %s failed", session.client)
            return
        await session.linger()
    finally:
        await trio.aclose_forcefully(stream)


def _refusal(why: str) -> bytes:
    """The answer of a connection refused for a cap: 503, then closed."""
    body = error_body(503, f"too many connections: {why}")
    fields = [
        *error_headers(),
        ("content-length", str(len(body))),
        ("retry-after", str(RETRY_AFTER)),
        ("connection", "close"),
    ]
    lines = "".join(f"{name}: {value}\r\n" for name, value in fields)
    return f"HTTP/1.1 503 {phrase(503)}\r\n{lines}\r\n".encode() + body


async def serve(
    router: Router,
    listeners: list[trio.SocketListener],
    limits: Limits | None = None,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on every listener, each connection in its own task, until cancelled;
    ``task_status.started`` gets the listeners."""
    limits = limits or Limits()
    body_memory = BodyMemory(limits.body_memory, limits.body_memory_wait)

    async def handle(stream: trio.SocketStream, client: str | None) -> None:
        await serve_connection(stream, router, limits, client=client, body_memory=body_memory)

    await accept_connections(listeners, limits, handle, _refusal, task_status=task_status)


async def serve_tls(
    router: Router,
    listeners: list[trio.SocketListener],
    context: ssl.SSLContext,
    limits: Limits | None = None,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """:func:`serve`, each accepted connection wrapped in TLS (server side). A handshake that
    fails or takes longer than ``limits.header_timeout`` closes the connection; the others
    are not affected. A refused connection is closed without an answer (it would not be TLS)."""
    limits = limits or Limits()
    body_memory = BodyMemory(limits.body_memory, limits.body_memory_wait)

    async def handle(stream: trio.SocketStream, client: str | None) -> None:
        tls = TLSStream(stream, context)
        with trio.move_on_after(limits.header_timeout) as handshake:
            try:
                await tls.do_handshake()
            except Exception as e:  # whatever the peer sent, only this connection ends
                log.debug("TLS handshake with %s failed: %s", client or "?", e.__cause__ or e)
                return
        if handshake.cancelled_caught:
            log.debug("TLS handshake with %s not done in time", client or "?")
            return
        await serve_connection(tls, router, limits, client=client, body_memory=body_memory)

    await accept_connections(listeners, limits, handle, task_status=task_status)
