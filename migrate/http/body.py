"""Reading one request body: :class:`BodyReader`, a state machine over how the body is read.

A body framed by Content-Length is read past h11: what h11 had already received, then
straight off the socket (``recv_into``, or :meth:`TLSStream.receive_into`) into the caller's
buffer, bulk bytes never copied through h11; the connection then goes on with a fresh h11
connection fed what came after the body. A chunked body is read through h11. The reader is in
exactly one state (:data:`BodyState`): not started, through h11, past h11 with N bytes left,
ended, failed. Every wait for the client counts against a :class:`BodyClock`, which cuts bodies
that stall or trickle (408).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar, cast

import h11
import trio

from migrate.http.errors import HTTPError
from migrate.http.limits import Limits
from migrate.http.tls import TLSStream

T = TypeVar("T")

RECEIVE_SIZE = 65536
"""Bytes asked of the stream at a time when reading through h11."""


@dataclass
class NotStarted:
    """The body is not read yet: the client may wait for ``100 Continue``."""


@dataclass
class ThroughH11:
    """A chunked body, its pieces from h11's Data events; ``pending`` is what the last piece
    has left."""

    pending: memoryview


@dataclass
class PastH11:
    """A Content-Length body read past h11: ``buffered`` (what h11 had received of it) first,
    then the socket, ``left`` bytes in all; ``after`` is what h11 had received past it."""

    left: int
    buffered: memoryview
    after: bytes


@dataclass
class Ended:
    """The whole body was received. ``after`` is None when h11 read it (h11 goes on), else
    the bytes that came after a body read past h11 (a fresh h11 connection starts with them)."""

    after: bytes | None


@dataclass
class Failed:
    """The body cannot be read on: ``error`` answers every later read."""

    error: HTTPError


BodyState = NotStarted | ThroughH11 | PastH11 | Ended | Failed


class BodyClock:
    """How long reading a body may still wait for the client, as Apache mod_reqtimeout's
    ``body=N,MinRate=R``: N seconds at first, each R bytes received earn one second more,
    never more than N seconds ahead. Only time spent waiting for the client counts, not
    the time a handler takes between two reads (writing what it received, say)."""

    def __init__(self, timeout: float, min_rate: float) -> None:
        self.timeout = timeout
        self.min_rate = min_rate
        self.left = timeout
        """Seconds the reader may still wait."""

    def received(self, count: int, waited: float) -> None:
        """Account for a wait of ``waited`` seconds that brought ``count`` bytes."""
        earned = count / self.min_rate if self.min_rate > 0 else (self.timeout if count else 0.0)
        self.left = min(self.left - waited + earned, self.timeout)

    def expired(self) -> HTTPError:
        """The 408 for a wait that used up the time left."""
        if self.left >= self.timeout:
            return HTTPError(408, f"no request body bytes for {self.timeout:g} s")
        return HTTPError(408, f"request body slower than {self.min_rate:g} bytes/s")


class BodyReader:
    """The body of one request on ``stream``, whose head ``h11_conn`` parsed; ``length`` is
    its Content-Length, None for a chunked body."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        h11_conn: h11.Connection,
        length: int | None,
        limits: Limits,
    ) -> None:
        self._stream = stream
        self._h11 = h11_conn
        self._length = length
        self._clock = BodyClock(limits.body_timeout, limits.min_body_rate)
        self.state: BodyState = (
            NotStarted() if h11_conn.their_state is h11.SEND_BODY else Ended(after=None)
        )
        self.started = False
        """Whether the handler asked for body bytes."""

    @property
    def complete(self) -> bool:
        """True once the whole body has been received."""
        return isinstance(self.state, Ended)

    async def receive_into(self, buffer: memoryview) -> int:
        """Fill ``buffer`` with the next body bytes; how many (fewer at the end of the body, 0
        after it). HTTPError 408 when the client is too slow (:class:`BodyClock`), 400 when it
        closes early or sends a malformed chunk; bytes received before such an error are
        returned first, the next call raises it."""
        self.started = True
        filled = 0
        while filled < len(buffer):
            try:
                n = await self._read_into(buffer[filled:])
            except HTTPError as e:
                self.state = Failed(e)
                if not filled:
                    raise
                return filled
            if not n:
                break
            filled += n
        return filled

    async def _start(self) -> BodyState:
        """Begin reading the body: ``100 Continue`` sent if the client waits for it, then
        through h11 or past it."""
        if self._h11.they_are_waiting_for_100_continue:
            go_on = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
            await self._stream.send_all(self._h11.send(go_on))
        if self._length is None:
            self.state = ThroughH11(memoryview(b""))
        else:
            received = self._h11.trailing_data[0]
            body, after = memoryview(received)[: self._length], received[self._length :]
            self.state = PastH11(self._length, body, after) if self._length else Ended(after)
        return self.state

    async def _read_into(self, view: memoryview) -> int:
        """Some of the next body bytes into ``view``; how many, 0 at the end of the body."""
        state = self.state
        if isinstance(state, NotStarted):
            state = await self._start()
        if isinstance(state, PastH11):
            want = min(len(view), state.left)
            if state.buffered:
                n = min(want, len(state.buffered))
                view[:n] = state.buffered[:n]
                state.buffered = state.buffered[n:]
            else:
                n = await self._recv_into(view[:want])
                if n == 0:
                    done = cast(int, self._length) - state.left
                    message = f"request body ended after {done} of {self._length} bytes"
                    raise HTTPError(400, message)
            state.left -= n
            if not state.left:
                self.state = Ended(state.after)
            return n
        if isinstance(state, ThroughH11):
            if not state.pending:
                state.pending = memoryview(await self._next_piece())
            n = min(len(view), len(state.pending))
            view[:n] = state.pending[:n]
            state.pending = state.pending[n:]
            return n
        if isinstance(state, Failed):
            raise state.error
        return 0  # Ended

    async def _waited(self, receive: Awaitable[T], count: Callable[[T], int]) -> T:
        """What ``receive`` brings, its wait on the clock (:class:`BodyClock`); 408 when the
        clock runs out first."""
        clock = self._clock
        start = trio.current_time()
        with trio.move_on_after(clock.left):
            got = await receive
            clock.received(count(got), trio.current_time() - start)
            return got
        raise clock.expired()

    async def _recv_into(self, view: memoryview) -> int:
        """Body bytes straight off the stream into ``view``, waited for on the clock; a
        broken stream is HTTPError 400 (the client went away mid-body: the handler learns it
        as a failure of the request)."""
        return await self._waited(self._recv_into_now(view), int)

    async def _recv_into_now(self, view: memoryview) -> int:
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

    async def _receive_some(self, size: int = RECEIVE_SIZE) -> bytes | bytearray:
        try:
            return await self._stream.receive_some(size)
        except (trio.BrokenResourceError, OSError) as e:
            raise HTTPError(400, f"request body cut: {e.__cause__ or e}") from None

    async def _next_piece(self) -> bytes:
        """The next Data bytes of a body read through h11, ``b""`` at its end (the state then
        :class:`Ended`)."""
        if self._h11.their_state is h11.ERROR:
            raise HTTPError(400, "malformed request body")
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as e:  # a bad chunk, or the connection closed early
                raise HTTPError(400, f"request body incomplete: {e}") from None
            if event is h11.NEED_DATA:
                data = await self._waited(self._receive_some(), len)
                self._h11.receive_data(cast(bytes, data))  # h11 takes any bytes-like
            elif isinstance(event, h11.Data):
                if event.data:
                    return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.state = Ended(after=None)
                return b""
            else:
                raise HTTPError(400, "request body incomplete")
