"""migrate.transfer.receive.receive_body: the receive/write pipeline of an import, with a
recording decoder and a body made up in memory (the HTTP tests run it over real sockets)."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest
import trio

from migrate.transfer.receive import BUFFER_SIZE, BUFFERS, IDLE, receive_body
from support import wait_until

BODY = os.urandom(5 * BUFFER_SIZE + 12345)


class Recorder:
    """A decoder that records a hash of every piece as it sees it, slower than the body
    arrives (so that buffers come back late), done after ``done_after`` bytes."""

    def __init__(self, done_after: int | None = None, fail_at: int | None = None) -> None:
        self.done = False
        self.seen: list[str] = []
        self.fed = 0
        self.threads: set[int] = set()
        self.done_after = done_after
        self.fail_at = fail_at

    def feed(self, data: memoryview) -> None:
        self.threads.add(threading.get_ident())
        if self.fail_at is not None and self.fed + len(data) > self.fail_at:
            raise ValueError(f"bad data at {self.fail_at}")
        time.sleep(0.01)  # slower than the body arrives, on purpose
        self.seen.append(hashlib.sha256(data).hexdigest())
        self.fed += len(data)
        if self.done_after is not None and self.fed >= self.done_after:
            self.done = True

    def close(self) -> int | None:
        return None


class Body:
    """``fill`` over BODY, remembering the pieces handed out; with ``block_after``, it waits
    forever once that many bytes are out (a client that keeps its connection open)."""

    def __init__(self, block_after: int | None = None, fail_after: int | None = None) -> None:
        self.at = 0
        self.sizes: list[int] = []
        self.sent: list[str] = []
        self.block_after = block_after
        self.fail_after = fail_after

    async def fill(self, buffer: memoryview) -> int:
        await trio.lowlevel.checkpoint()
        if self.block_after is not None and self.at >= self.block_after:
            await trio.sleep_forever()
        if self.fail_after is not None and self.at >= self.fail_after:
            raise ConnectionResetError("cut")
        self.sizes.append(len(buffer))
        n = min(len(buffer), len(BODY) - self.at)
        if n:
            buffer[:n] = BODY[self.at : self.at + n]
            self.sent.append(hashlib.sha256(BODY[self.at : self.at + n]).hexdigest())
            self.at += n
        return n


async def run(
    body: Body,
    decoder: Recorder,
    first: int = BUFFER_SIZE,
    limiter: trio.CapacityLimiter | None = None,
) -> list[int]:
    wrote: list[int] = []
    limiter = limiter or trio.CapacityLimiter(4)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await receive_body(nursery, body.fill, decoder, first, wrote.append, limiter)
    return wrote


async def test_every_piece_written_in_order_from_its_own_buffer() -> None:
    """The writer is slower than the body: buffers are refilled only once written, so each
    piece reaches the decoder as it was received, in order, in a worker thread."""
    body, decoder = Body(), Recorder()
    wrote = await run(body, decoder, first=65536)
    assert decoder.seen == body.sent
    assert decoder.fed == sum(wrote) == len(BODY)
    assert body.sizes[0] == 65536 and set(body.sizes[1:]) == {BUFFER_SIZE}
    assert threading.get_ident() not in decoder.threads


async def test_a_client_sending_nothing_holds_no_thread() -> None:
    """Once the pieces that came are written, the writer gives its thread back within
    IDLE seconds; the next piece starts it again, and the body still arrives whole."""
    limiter = trio.CapacityLimiter(1)
    gate = trio.Event()

    class Stalling(Body):
        async def fill(self, buffer: memoryview) -> int:
            if self.at >= 2 * BUFFER_SIZE and not gate.is_set():
                await gate.wait()  # the client sends nothing for a while
            return await super().fill(buffer)

    body, decoder = Stalling(), Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, body, decoder, BUFFER_SIZE, limiter)
        await wait_until(lambda: decoder.fed == 2 * BUFFER_SIZE, what="the first pieces")
        await wait_until(lambda: limiter.borrowed_tokens == 0, what="the thread given back")
        assert IDLE < 1
        gate.set()
    assert decoder.seen == body.sent and decoder.fed == len(BODY)


async def test_bodies_share_a_bounded_capacity() -> None:
    """Eight bodies at once through one writer thread: each arrives whole, none waits on
    another's thread for longer than its pieces take."""
    limiter = trio.CapacityLimiter(1)
    pairs = [(Body(), Recorder()) for _ in range(8)]
    async with trio.open_nursery() as nursery:
        for body, decoder in pairs:
            nursery.start_soon(run, body, decoder, BUFFER_SIZE, limiter)
    for body, decoder in pairs:
        assert decoder.seen == body.sent and decoder.fed == len(BODY)


async def test_decoder_done_stops_receiving() -> None:
    """Once the decoder saw the body's own end, what follows is not awaited: a client that
    keeps sending (or waits) past it does not hold the import."""
    body = Body(block_after=3 * BUFFER_SIZE)
    decoder = Recorder(done_after=2 * BUFFER_SIZE)
    wrote = await run(body, decoder)
    assert decoder.done and sum(wrote) == decoder.fed == 2 * BUFFER_SIZE


async def test_decoder_failure_ends_the_body() -> None:
    body, decoder = Body(), Recorder(fail_at=3 * BUFFER_SIZE)
    with pytest.raises(ExceptionGroup) as info:
        await run(body, decoder)
    assert info.group_contains(ValueError, match="bad data")
    assert decoder.fed == 3 * BUFFER_SIZE
    assert body.at <= decoder.fed + (BUFFERS + 1) * BUFFER_SIZE


async def test_receive_failure_ends_the_worker() -> None:
    """The body cut: the error comes out, after the worker wrote what was queued."""
    body, decoder = Body(fail_after=2 * BUFFER_SIZE), Recorder()
    with pytest.raises(ExceptionGroup) as info:
        await run(body, decoder)
    assert info.group_contains(ConnectionResetError)
    assert decoder.fed == 2 * BUFFER_SIZE


async def test_cancelled_while_writing() -> None:
    """Cancelled mid-body, once the first piece was written: receive_body returns (the
    worker drains and ends) before the rest of the body went in."""
    cancelled = threading.Event()

    class HeldRecorder(Recorder):
        """Holds its first piece until the cancel is made: the body cannot all go in first,
        however late the canceller runs on a loaded host."""

        def feed(self, data: memoryview) -> None:
            super().feed(data)
            if self.fed == len(data):
                cancelled.wait(10)

    body, decoder = Body(), HeldRecorder()
    limiter = trio.CapacityLimiter(1)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:

            async def cancel_once_writing() -> None:
                await wait_until(lambda: decoder.fed > 0, what="the first piece written")
                nursery.cancel_scope.cancel()
                cancelled.set()

            nursery.start_soon(cancel_once_writing)
            await receive_body(nursery, body.fill, decoder, BUFFER_SIZE, lambda n: None, limiter)
    assert 0 < decoder.fed < len(BODY)
