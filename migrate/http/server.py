"""HTTP/1.1 server on trio and h11: requests, routing, keep-alive, limits and error answers.

h11 does the protocol (parsing, framing, keep-alive, HTTP/1.0, ``Expect: 100-continue``
bookkeeping). This module adds the :class:`Request` handlers see, the :class:`Connection` they
read the body from and answer through, a :class:`Router` keyed by method and path, the
:class:`Limits` that keep a slow or hostile client from holding a connection, and the error
answers: 400 for a malformed request, 431 for an oversized head, 408 for a head or body that
stalls, 404/405 from routing, 500 (logged on ``xfer.http``, one line to the client) for a
handler that raises. Every connection is its own task: no client can block another.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast
from urllib.parse import parse_qs, unquote, urlsplit

import h11
import trio

from migrate.addresses import AddressError, parse_host
from migrate.http.tls import TLSStream

log = logging.getLogger("xfer.http")

HeaderPairs = Iterable[tuple[str | bytes, str | bytes]]
"""Response headers as handlers give them: (name, value) pairs, text or bytes."""
Handler = Callable[["Request", "Connection"], Awaitable[None]]
"""``async def handler(request, conn) -> None``; it answers through ``conn``."""

_RECEIVE_SIZE = 65536
_JOIN_BELOW = 65536  # send smaller body pieces in one write, larger ones without copying
_LINGER = 1.0  # seconds a closing connection is drained so that the client reads our answer
_LINGER_BYTES = 64 << 20
_SENDFILE_MAX = 16 << 20  # per call, so that a fast client still lets other tasks run
_BUFFERED_SEND = 256 << 10  # TLS: pieces that stay in cache while encrypted (4 MiB: 0.7x as fast)


@dataclass(frozen=True)
class Limits:
    """Per-connection limits; sizes in bytes, timeouts in seconds."""

    max_head: int = 16 * 1024
    """Largest request head (h11's ``max_incomplete_event_size``); a larger one gets 431."""
    header_timeout: float = 10.0
    """Time to receive a complete request head, counted from the connection for the first
    request and from the head's first byte for later ones."""
    idle_timeout: float = 60.0
    """Time a kept-alive connection waits for the first byte of the next request."""
    body_timeout: float = 30.0
    """Longest wait for the next body bytes while a body is being read."""
    max_body: int = 1 << 20
    """Default bound of :meth:`Connection.read_body`."""


class HTTPError(Exception):
    """Raised by a handler (or the body reader) to answer ``status`` with a one-line text."""

    def __init__(self, status: int, message: str | None = None, headers: HeaderPairs = ()) -> None:
        self.status = status
        self.message = message or _phrase(status)
        self.headers = list(headers)
        super().__init__(f"{status} {self.message}")


@dataclass(frozen=True)
class Request:
    """A request head: ``path`` percent-decoded, ``query`` as lists, header names lower case."""

    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: list[tuple[str, str]]
    client: str | None = None
    """The peer's canonical address (IPv4-mapped IPv6 shown as IPv4), None if unknown."""
    http_version: str = "1.1"

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (any case), repeated fields joined with ``, ``."""
        key = name.lower()
        values = [value for field, value in self.headers if field == key]
        return ", ".join(values) if values else None

    @classmethod
    def from_h11(cls, event: h11.Request, client: str | None = None) -> Request:
        """The request h11 parsed, its bytes decoded as Latin-1 (never fails)."""
        target = event.target.decode("latin-1")
        path, query = split_target(target)
        return cls(
            method=event.method.decode("latin-1"),
            target=target,
            path=path,
            query=query,
            headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers],
            client=client,
            http_version=event.http_version.decode("latin-1"),
        )


def split_target(target: str) -> tuple[str, dict[str, list[str]]]:
    """The percent-decoded path and the query parameters of a request target."""
    if target.startswith("/"):
        raw_path, _, raw_query = target.partition("?")
    elif target == "*":
        return "*", {}
    else:  # absolute form, ``http://host/path?query``
        parts = urlsplit(target)
        raw_path, raw_query = parts.path or "/", parts.query
    return unquote(raw_path, errors="replace"), parse_qs(raw_query, keep_blank_values=True)


def client_address(sockaddr: object) -> str | None:
    """The canonical text of a peer's socket address (``::ffff:a.b.c.d`` becomes ``a.b.c.d``)."""
    if not (isinstance(sockaddr, tuple) and sockaddr and isinstance(sockaddr[0], str)):
        return None
    try:
        return parse_host(sockaddr[0]).address
    except AddressError:
        return sockaddr[0]


class Router:
    """Handlers by method and path; a trailing slash is ignored and HEAD falls back to GET."""

    def __init__(self) -> None:
        self._routes: dict[str, dict[str, Handler]] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        """Route ``method path`` to ``handler``."""
        self._routes.setdefault(_route_path(path), {})[method.upper()] = handler

    def route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`add`."""

        def register(handler: Handler) -> Handler:
            self.add(method, path, handler)
            return handler

        return register

    def allowed(self, path: str) -> list[str]:
        """The methods ``path`` answers, sorted (HEAD included wherever GET is)."""
        methods = set(self._routes.get(_route_path(path), {}))
        if "GET" in methods:
            methods.add("HEAD")
        return sorted(methods)

    def resolve(self, method: str, path: str) -> Handler:
        """The handler for a request; HTTPError 404 for an unknown path, 405 with ``Allow``."""
        handlers = self._routes.get(_route_path(path))
        if handlers is None:
            raise HTTPError(404, f"no resource at {path}")
        handler = handlers.get(method) or (handlers.get("GET") if method == "HEAD" else None)
        if handler is None:
            allow = ", ".join(self.allowed(path))
            raise HTTPError(405, f"{method} not allowed on {path}", [("allow", allow)])
        return handler


def _route_path(path: str) -> str:
    return path.rstrip("/") or "/"


class Connection:
    """What a handler answers through: the request body in, one response out."""

    def __init__(
        self, stream: trio.abc.Stream, h11_conn: h11.Connection, request: Request, limits: Limits
    ) -> None:
        self.request = request
        self.limits = limits
        self.status: int | None = None
        """The response status once :meth:`start_response` has sent it."""
        self._stream = stream
        self._h11 = h11_conn
        self._ended = False
        self._direct_left: int | None = None
        """Body bytes still to read off the stream, once the body is read past h11."""
        self._direct_buffer = b""
        self._pending = memoryview(b"")
        self._failure: HTTPError | None = None
        """An error met while filling a buffer, raised by the next :meth:`receive_into`."""
        self.after_body = b""
        """Bytes received past a body read off the stream (a pipelined next request)."""

    @property
    def body_complete(self) -> bool:
        """True once the whole request body has been received."""
        if self._direct_left is not None:
            return self._direct_left == 0
        return self._h11.their_state is h11.DONE

    @property
    def detached(self) -> bool:
        """Whether the body was read off the stream past h11 (see :meth:`receive_into`)."""
        return self._direct_left is not None

    @functools.cached_property
    def content_length(self) -> int | None:
        """The request's Content-Length when the body is framed by one, else None."""
        if self.request.header("transfer-encoding") is not None:
            return None
        value = self.request.header("content-length")
        return int(value) if value is not None and value.isdigit() else None

    async def receive_into(self, buffer: memoryview) -> int:
        """Fill ``buffer`` with the next request body bytes; how many (fewer at the end of the
        body, 0 after it). Sends ``100 Continue`` first if the client waits for it.

        A body framed by Content-Length is read straight off the stream after the head
        (``recv_into`` on a socket: no copy through h11); a chunked one through h11. HTTPError
        408 when no byte comes for ``body_timeout``, 400 when the client closes early; bytes
        received before such an error are returned first, the next call raises it.
        """
        if self._failure is not None:
            raise self._failure
        filled = 0
        while filled < len(buffer):
            try:
                n = await self._read_into(buffer[filled:])
            except HTTPError as e:
                if not filled:
                    raise
                self._failure = e
                return filled
            if not n:
                break
            filled += n
        return filled

    async def _read_into(self, view: memoryview) -> int:
        """Some of the next body bytes into ``view``; how many, 0 at the end of the body."""
        length = self.content_length
        if length is None:  # chunked: through h11
            if not self._pending:
                self._pending = memoryview(await self.receive())
            n = min(len(view), len(self._pending))
            view[:n] = self._pending[:n]
            self._pending = self._pending[n:]
            return n
        if self._direct_left is None:  # the body's first bytes: take over from h11
            await self._continue()
            received = self._h11.trailing_data[0]
            self._direct_buffer, self.after_body = received[:length], received[length:]
            self._direct_left = length
        want = min(len(view), self._direct_left)
        if not want:
            return 0
        if self._direct_buffer:
            n = min(want, len(self._direct_buffer))
            view[:n] = self._direct_buffer[:n]
            self._direct_buffer = self._direct_buffer[n:]
        else:
            n = await self._recv_into(view[:want])
            if n == 0:
                done = length - self._direct_left
                raise HTTPError(400, f"request body ended after {done} of {length} bytes")
        self._direct_left -= n
        return n

    async def _continue(self) -> None:
        """Send ``100 Continue`` if the client waits for it before sending the body."""
        if self._h11.they_are_waiting_for_100_continue:
            await self._send_event(
                h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
            )

    async def _recv_into(self, view: memoryview) -> int:
        with trio.move_on_after(self.limits.body_timeout):
            if isinstance(self._stream, trio.SocketStream):
                try:
                    return await self._stream.socket.recv_into(view)
                except OSError as e:
                    raise HTTPError(400, f"request body cut: {e.strerror}") from None
            if isinstance(self._stream, TLSStream):
                try:
                    return await self._stream.receive_into(view)
                except trio.BrokenResourceError as e:
                    raise HTTPError(400, f"request body cut: {e}") from None
            data = await self._receive_some(len(view))
            view[: len(data)] = data
            return len(data)
        raise HTTPError(408, f"no request body bytes for {self.limits.body_timeout} s")

    async def _receive_some(self, size: int = _RECEIVE_SIZE) -> bytes | bytearray:
        """Bytes of the body off the stream; a broken stream is HTTPError 400 (the client
        went away mid-body: the handler learns it as a failure of the request)."""
        try:
            return await self._stream.receive_some(size)
        except (trio.BrokenResourceError, OSError) as e:
            cause = e.__cause__ or e
            raise HTTPError(400, f"request body cut: {cause}") from None

    async def receive(self) -> bytes:
        """The next piece of the request body, ``b""`` at its end. Sends ``100 Continue`` first
        if the client waits for it; HTTPError 408 when no byte comes for ``body_timeout``."""
        if self._h11.their_state is h11.ERROR:
            raise HTTPError(400, "malformed request body")
        if self._h11.their_state is not h11.SEND_BODY:
            return b""
        await self._continue()
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as e:  # a bad chunk, or the connection closed early
                raise HTTPError(400, f"request body incomplete: {e}") from None
            if event is h11.NEED_DATA:
                with trio.move_on_after(self.limits.body_timeout):
                    data = await self._receive_some()
                    self._h11.receive_data(cast(bytes, data))  # h11 takes any bytes-like
                    continue
                raise HTTPError(408, f"no request body bytes for {self.limits.body_timeout} s")
            if isinstance(event, h11.Data):
                if event.data:
                    return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return b""
            else:
                raise HTTPError(400, "request body incomplete")

    async def read_body(self, max_body: int | None = None) -> bytes:
        """The whole request body (Content-Length or chunked); HTTPError 413 beyond
        ``max_body`` bytes (``limits.max_body`` by default), refused before 100 Continue."""
        limit = self.limits.max_body if max_body is None else max_body
        declared = self.request.header("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPError(413, f"request body larger than {limit} bytes")
        chunks: list[bytes] = []
        total = 0
        while chunk := await self.receive():
            total += len(chunk)
            if total > limit:
                raise HTTPError(413, f"request body larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def respond(self, status: int, headers: HeaderPairs = (), body: bytes = b"") -> None:
        """Send a whole response: ``headers``, a Content-Length and ``body``."""
        fields = [(n, v) for n, v in _encode(headers) if n.lower() != b"content-length"]
        fields.append((b"content-length", str(len(body)).encode()))
        await self.start_response(status, fields)
        await self.send(body)
        await self.end()

    async def start_response(self, status: int, headers: HeaderPairs = ()) -> None:
        """Send the status line and headers; the body follows through :meth:`send` and
        :meth:`end` (chunked for HTTP/1.1 unless ``headers`` give a Content-Length). A response
        started before the request body is complete closes the connection after it."""
        if self.status is not None:
            raise RuntimeError("response already started")
        fields = _encode(headers)
        if not self.body_complete:
            fields.append((b"connection", b"close"))
        reason = _phrase(status).encode()
        await self._send_event(h11.Response(status_code=status, headers=fields, reason=reason))
        self.status = status

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send body bytes of the started response (nothing for a HEAD request)."""
        if self.status is None:
            raise RuntimeError("send() before start_response()")
        if not data or self.request.method == "HEAD":
            return
        # passthrough: h11 frames ``data`` without copying it (any object with a length works)
        pieces = self._h11.send_with_data_passthrough(h11.Data(data=cast(bytes, data))) or []
        if len(data) < _JOIN_BELOW:
            await self._send_all(b"".join(pieces))
            return
        for piece in pieces:
            await self._send_all(piece)

    async def send_file(self, fd: int, offset: int, count: int) -> None:
        """Send ``count`` bytes of the file ``fd`` from ``offset`` as body bytes of the started
        response: h11 frames them (its data passthrough) and, on a plain socket, the kernel
        moves them (``os.sendfile``); other streams (TLS) get large buffered reads."""
        if self.status is None:
            raise RuntimeError("send_file() before start_response()")
        if count <= 0 or self.request.method == "HEAD":
            return
        span = _Span(count)
        pieces = self._h11.send_with_data_passthrough(h11.Data(data=cast(bytes, span))) or []
        for piece in pieces:
            if piece is not span:
                await self._send_all(piece)
            elif isinstance(self._stream, trio.SocketStream):
                await self._sendfile(self._stream.socket, fd, offset, count)
            else:
                await self._send_buffered(fd, offset, count)

    async def _sendfile(
        self, sock: trio.socket.SocketType, fd: int, offset: int, count: int
    ) -> None:
        out = sock.fileno()
        while count:
            try:
                n = os.sendfile(out, fd, offset, min(count, _SENDFILE_MAX))
            except BlockingIOError:
                with trio.move_on_after(self.limits.body_timeout):
                    await trio.lowlevel.wait_writable(sock)
                    continue
                raise trio.BrokenResourceError(
                    f"client read nothing for {self.limits.body_timeout} s"
                ) from None
            except OSError as e:
                raise trio.BrokenResourceError(f"sending to the client: {e.strerror}") from e
            if n == 0:
                raise OSError(f"file ended {count} bytes early at offset {offset}")
            offset, count = offset + n, count - n
            await trio.lowlevel.checkpoint()

    async def _send_buffered(self, fd: int, offset: int, count: int) -> None:
        buffer = memoryview(bytearray(min(count, _BUFFERED_SEND)))
        while count:
            n = os.preadv(fd, [buffer[: min(count, len(buffer))]], offset)
            if n == 0:
                raise OSError(f"file ended {count} bytes early at offset {offset}")
            await self._send_all(buffer[:n])
            offset, count = offset + n, count - n

    async def _send_all(self, data: bytes | bytearray | memoryview) -> None:
        """``send_all``, the client given ``body_timeout`` to take each piece."""
        with trio.move_on_after(self.limits.body_timeout):
            await self._stream.send_all(data)
            return
        raise trio.BrokenResourceError(f"client read nothing for {self.limits.body_timeout} s")

    async def end(self) -> None:
        """End the response body (idempotent)."""
        if self.status is None:
            raise RuntimeError("end() before start_response()")
        if not self._ended:
            self._ended = True
            await self._send_event(h11.EndOfMessage())

    async def _send_event(self, event: h11.Event) -> None:
        data = self._h11.send(event)
        if data:
            await self._stream.send_all(data)


class _Span:
    """Stands for ``length`` file bytes in h11's data passthrough (it only needs a length)."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


def _encode(headers: HeaderPairs) -> list[tuple[bytes, bytes]]:
    return [
        (
            n.encode("latin-1") if isinstance(n, str) else n,
            v.encode("latin-1") if isinstance(v, str) else v,
        )
        for n, v in headers
    ]


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class _Session:
    """The request loop of one connection."""

    def __init__(
        self, stream: trio.abc.Stream, router: Router, limits: Limits, client: str | None
    ) -> None:
        self.stream = stream
        self.router = router
        self.limits = limits
        self.client = client
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head)
        self.eof = False

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
            if conn.detached and conn.body_complete and self.h11.our_state is h11.DONE:
                # (DONE, not MUST_CLOSE: h11 found the connection may be kept alive)
                # the body went past h11, which still waits for it: go on with a fresh one
                self.h11 = h11.Connection(
                    h11.SERVER, max_incomplete_event_size=self.limits.max_head
                )
                if conn.after_body:  # (h11 takes empty data for the end of the connection)
                    self.h11.receive_data(conn.after_body)
                continue
            if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                return  # Connection: close, HTTP/1.0 or an unread body
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
                    data = await self.stream.receive_some(max(1, min(room, _RECEIVE_SIZE)))
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
        if _no_body_request(request):
            self.h11.next_event()  # the EndOfMessage of an empty body
        conn = Connection(self.stream, self.h11, request, self.limits)
        if not request.http_version.startswith("1."):
            message = f"HTTP/{request.http_version} not supported"
            await self._answer_error(conn, 505, message, [("connection", "close")])
            return None
        try:
            await self.router.resolve(request.method, request.path)(request, conn)
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
        if conn.status is not None:
            return False
        try:
            await conn.respond(status, [*_error_headers(), *headers], _error_body(status, message))
        except h11.LocalProtocolError:
            return False
        return True

    async def _answer_head_error(self, status: int, message: str) -> None:
        """Answer a request whose head could not be read, then close."""
        log.debug("%s -> %s %s", self.client, status, message)
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = _error_body(status, message)
        headers = [*_error_headers(), ("content-length", str(len(body))), ("connection", "close")]
        try:
            data = self.h11.send(
                h11.Response(
                    status_code=status, headers=_encode(headers), reason=_phrase(status).encode()
                )
            )
            data = (data or b"") + (self.h11.send(h11.Data(data=body)) or b"")
            data += self.h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            return
        await self.stream.send_all(data)

    async def linger(self) -> None:
        """Half-close and drain what the client still sends, so that it reads our last answer
        instead of a reset; bounded in time and bytes."""
        if self.eof or not isinstance(self.stream, trio.abc.HalfCloseableStream):
            return
        with trio.move_on_after(_LINGER):
            try:
                await self.stream.send_eof()
                drained = 0
                while drained < _LINGER_BYTES:
                    data = await self.stream.receive_some(_RECEIVE_SIZE)
                    if not data:
                        return
                    drained += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return


def _no_body_request(request: Request) -> bool:
    """True when h11 frames the request with an empty body (its end needs no more bytes)."""
    length = request.header("content-length")
    return request.header("transfer-encoding") is None and length in (None, "0")


def _error_headers() -> list[tuple[str, str]]:
    return [("content-type", "text/plain; charset=utf-8")]


def _error_body(status: int, message: str) -> bytes:
    line = " ".join(message.split())  # one line, whatever the message
    return f"{status} {_phrase(status)}: {line}\n".encode()


def _peer(stream: trio.abc.Stream) -> str | None:
    if not isinstance(stream, trio.SocketStream):
        return None
    try:
        return client_address(stream.socket.getpeername())
    except OSError:
        return None


async def serve_connection(
    stream: trio.abc.Stream,
    router: Router,
    limits: Limits | None = None,
    *,
    client: str | None = None,
) -> None:
    """Serve requests on ``stream`` until either side ends the connection, then close it.
    Never raises except for cancellation; ``client`` defaults to the socket's peer."""
    session = _Session(stream, router, limits or Limits(), client or _peer(stream))
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


async def serve(
    router: Router,
    listeners: list[trio.SocketListener],
    limits: Limits | None = None,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on every listener, each connection in its own task, until cancelled;
    ``task_status.started`` gets the listeners."""

    async def handle(stream: trio.SocketStream) -> None:
        await serve_connection(stream, router, limits)

    await trio.serve_listeners(handle, listeners, task_status=task_status)
