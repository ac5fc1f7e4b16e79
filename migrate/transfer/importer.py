"""Importing into a VDI: a request body decoded as it arrives and written into a staged image.

Three bodies, one path: raw bytes (written from offset 0), xapi's ``chunked=true`` framing
(:mod:`migrate.transfer.chunks`: offset/length chunks) and a VHD stream
(:class:`vhd.StreamParser`). :func:`receive_body` fills large page-aligned buffers in turn
straight off the socket (``recv_into``) while one worker thread decodes and writes the filled
ones in order; the decoders' data events are views of them, written at their virtual offsets
into a :class:`~migrate.storage.staging.StagedImage` (``O_DIRECT`` where aligned, hence the
page alignment). Nothing of the VDI changes here: the caller commits the staged image once
:meth:`Importer.close` has validated the end of the body.
"""

from __future__ import annotations

import collections
import itertools
import mmap
import queue
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

import vhd
from migrate.storage.staging import StagedImage, StagingError
from migrate.transfer import chunks
from vhd.format import MAX_VIRTUAL_SIZE

BUFFER_SIZE = 4 << 20
"""Bytes received before each write: large writes, a constant footprint per import."""
BUFFERS = 3
"""Buffers per import: one filling, one being written, one that absorbs a slow write."""


class Importer(Protocol):
    """A body decoder writing into a staged image."""

    done: bool
    """Whether the body's own end was seen (a VHD's footer, the end marker): what follows
    is not read (xapi stops there too, and Xen Orchestra cuts the connection there when it
    declared a length it could not know)."""

    def feed(self, data: memoryview) -> None:
        """Decode and write the next body bytes."""
        ...

    def close(self) -> int | None:
        """Check the body ended where it may; the virtual size it defines (None: the size
        follows the bytes written)."""
        ...


class RawImporter:
    """A raw body: its bytes in order from virtual offset 0."""

    done = False  # a raw body ends with its bytes

    def __init__(self, staged: StagedImage) -> None:
        self.staged = staged
        self.position = 0

    def feed(self, data: memoryview) -> None:
        """Write ``data`` next."""
        self.staged.write(self.position, data)
        self.position += len(data)

    def close(self) -> int | None:
        """Nothing to check: any length up to the disk's size is whole."""
        return None


class ChunkedImporter:
    """xapi's ``chunked=true`` body: offset/length chunks, then an end marker."""

    def __init__(self, staged: StagedImage) -> None:
        self.staged = staged
        # the staged image refuses what lies past the disk (413), not the framing (400)
        self.parser = chunks.ChunkParser(size_limit=MAX_VIRTUAL_SIZE)
        self.done = False

    def feed(self, data: memoryview) -> None:
        """Decode ``data`` and write the chunks' bytes."""
        for event in self.parser.feed(data):
            if isinstance(event, chunks.Data):
                self.staged.write(event.offset, event.data)
            else:
                self.done = True

    def close(self) -> int | None:
        """ChunkError unless the end marker came."""
        self.parser.close()
        return None


class VhdImporter:
    """A VHD stream (fixed, dynamic or differencing): its present sectors at their offsets."""

    def __init__(self, staged: StagedImage) -> None:
        self.staged = staged
        self.parser = vhd.StreamParser()  # the disk's own limit checked at Metadata (413)
        self.size: int | None = None
        self.done = False

    def feed(self, data: memoryview) -> None:
        """Decode ``data`` and write the image's data."""
        for event in self.parser.feed(data):
            self._apply(event)

    def _apply(self, event: vhd.stream.Event) -> None:
        if isinstance(event, vhd.Data):
            self.staged.write(event.offset, event.data)
        elif isinstance(event, vhd.Block):
            self.staged.announce(event.offset, event.length, event.full)
        elif isinstance(event, vhd.Metadata):
            size = event.footer.current_size
            if size > self.staged.limit:
                raise StagingError(
                    f"the image's virtual size {size} is larger than the disk's "
                    f"{self.staged.limit} bytes"
                )
            self.size = size
        elif isinstance(event, vhd.End):
            self.done = True

    def close(self) -> int | None:
        """VhdError unless the stream ended with its footer; the image's virtual size."""
        for event in self.parser.close():
            self._apply(event)
        return self.size


def importer(fmt: str, chunked: bool, staged: StagedImage) -> Importer:
    """The decoder for a body of format ``fmt`` (raw or vhd), in xapi's chunked framing or
    not."""
    if chunked:
        return ChunkedImporter(staged)
    if fmt == "vhd":
        return VhdImporter(staged)
    return RawImporter(staged)


async def receive_body(
    nursery: trio.Nursery,
    fill: Callable[[memoryview], Awaitable[int]],
    decoder: Importer,
    first: int,
    wrote: Callable[[int], None],
) -> None:
    """Feed a request body to ``decoder`` until it ends or the decoder is done.

    ``fill(buffer)`` receives the next body bytes into ``buffer`` (how many; fewer only at
    the end, 0 after it). :data:`BUFFERS` buffers take turns: each filled one is queued for
    one worker thread, started by a task in ``nursery`` for the whole body (its errors end
    the nursery's work), which decodes and writes the pieces in order and hands each buffer
    back once written; ``wrote(n)`` is called in trio for each piece written. The first piece
    holds ``first`` bytes (a VHD's head is decoded before the rest arrives).

    One thread for the body that never waits for trio: with a worker call per piece, the disk
    stood idle while each call's end went through the event loop and the next call started,
    0.6-1 ms a piece, 0.3-0.5 s per 2 GiB here (``curl -T`` of 2 GiB, 10 runs each
    interleaved with the former way: medians 1.77 and 1.79 s against 2.00 and 1.88 s; the
    writes themselves take 1.4-1.6 s of it). The thread tells trio of a written piece with
    ``run_sync_soon`` and calls that cannot fail (a semaphore's release, a cancel).
    """
    buffers = [memoryview(mmap.mmap(-1, BUFFER_SIZE)) for _ in range(BUFFERS)]
    free = trio.Semaphore(BUFFERS)
    """Buffers neither waiting to be written nor being written."""
    queued: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
    """The filled pieces in order, then None: the worker thread's input."""
    lengths: collections.deque[int] = collections.deque()
    """The lengths of the pieces written, not yet counted by ``wrote``."""
    token = trio.lowlevel.current_trio_token()
    receiving = trio.CancelScope()
    written = trio.Event()

    def count_written() -> None:
        while lengths:
            wrote(lengths.popleft())

    def write_pieces() -> None:  # the worker thread
        while (piece := queued.get()) is not None:
            decoder.feed(piece)
            lengths.append(len(piece))
            token.run_sync_soon(free.release)
            if decoder.done:
                token.run_sync_soon(receiving.cancel)  # what follows the body is not read
                return

    async def write() -> None:
        await trio.to_thread.run_sync(write_pieces)
        written.set()

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
                queued.put(buffer[:n])
                size = BUFFER_SIZE
    finally:
        queued.put(None)  # the worker ends once the pieces before are written, whatever happened
    await written.wait()
    count_written()
