"""Receiving an import's body: large buffers filled off the socket while a worker thread
decodes and writes the filled ones, in order, holding its thread only while there is work.

Buffers are page-aligned (anonymous mmap) because the staged image writes aligned block data
``O_DIRECT``. One thread writes the pieces in order and tells trio of each written one with
``run_sync_soon`` (only calls that cannot fail: a semaphore's release, a cancel): a worker call
per piece would leave the disk idle while each call's end went through the event loop. The
thread gives its capacity back once no piece has come for :data:`IDLE` seconds and is started
again by the next one, so that a client that sends nothing holds no thread.
"""

from __future__ import annotations

import collections
import itertools
import mmap
import queue
import threading
from collections.abc import Awaitable, Callable

import trio

from migrate.transfer.decoders import Importer

BUFFER_SIZE = 4 << 20
"""Bytes received before each write: large writes, a constant footprint per import."""
BUFFERS = 3
"""Buffers per import: one filling, one being written, one that absorbs a slow write."""
IDLE = 0.05
"""Seconds the writer thread waits for the next piece before it gives its thread back."""


async def receive_body(
    nursery: trio.Nursery,
    fill: Callable[[memoryview], Awaitable[int]],
    decoder: Importer,
    first: int,
    wrote: Callable[[int], None],
    limiter: trio.CapacityLimiter,
) -> None:
    """Feed a request body to ``decoder`` until it ends or the decoder is done.

    ``fill(buffer)`` receives the next body bytes into ``buffer`` (how many; fewer only at
    the end, 0 after it). :data:`BUFFERS` buffers take turns: each filled one is queued for the
    writer, a worker thread under ``limiter`` started by a task in ``nursery`` (its errors end
    the nursery's work), which decodes and writes the pieces in order and hands each buffer
    back once written; ``wrote(n)`` is called in trio for each piece written. The first piece
    holds ``first`` bytes (a VHD's head is decoded before the rest arrives).
    """
    buffers = [memoryview(mmap.mmap(-1, BUFFER_SIZE)) for _ in range(BUFFERS)]
    free = trio.Semaphore(BUFFERS)
    """Buffers neither waiting to be written nor being written."""
    queued: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
    """The filled pieces in order, then None: the writer's input."""
    lengths: collections.deque[int] = collections.deque()
    """The lengths of the pieces written, not yet counted by ``wrote``."""
    token = trio.lowlevel.current_trio_token()
    receiving = trio.CancelScope()
    written = trio.Event()
    lock = threading.Lock()
    writer_running = False
    """Whether a writer is started and has not given its thread back (``lock`` held)."""

    def count_written() -> None:
        while lengths:
            wrote(lengths.popleft())

    def write_pieces() -> bool:  # the worker thread: True once the body's end is written
        nonlocal writer_running
        while True:
            try:
                piece = queued.get(timeout=IDLE)
            except queue.Empty:
                with lock:
                    if queued.empty():
                        writer_running = False
                        return False
                continue
            if piece is None:
                return True
            decoder.feed(piece)
            lengths.append(len(piece))
            token.run_sync_soon(free.release)
            if decoder.done:
                token.run_sync_soon(receiving.cancel)  # what follows the body is not read
                return True

    async def write() -> None:
        if await trio.to_thread.run_sync(write_pieces, limiter=limiter):
            written.set()

    def put(piece: memoryview | None) -> None:
        nonlocal writer_running
        with lock:
            queued.put(piece)
            start, writer_running = not writer_running, True
        if start:
            nursery.start_soon(write)

    try:
        with receiving:
            size = first
            for buffer in itertools.cycle(buffers):
                await free.acquire()
                count_written()
                n = await fill(buffer[:size])
                if not n:
                    break
                put(buffer[:n])
                size = BUFFER_SIZE
    finally:
        put(None)  # the writer ends once the pieces before are written, whatever happened
    await written.wait()
    count_written()
