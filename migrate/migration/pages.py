"""Guest pages to and from a migration connection, without a per-page Python loop.

Sending: pages become PAGE_DATA records (at most 1024 pages each) whose header is made by
:mod:`migrate.formats.libxc` and whose data goes straight from the guest's mapping: each run of
consecutive pages one memoryview, many records gathered into one ``sendmsg``. Round 0 finds the
all-zero pages with numpy (the first word of each page, then the whole page for those whose
first word is zero) and sends them as XALLOC entries, without data. A record whose pages are
too scattered to make good iovecs is gathered by numpy into one buffer first.

Receiving: the data of a record goes by ``recv_into`` straight into the guest's mapping, one
run at a time (or, scattered, into one buffer that numpy spreads); XALLOC pages are zeroed
where earlier data had landed (untouched memory is zero already, and is left untouched).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from migrate.formats.libxc import PAGE_DATA_MAX, PAGE_SIZE, Pages, page_data_header, page_runs
from migrate.migration.channel import IOV_MAX, Buffer, Channel

WORDS = PAGE_SIZE // 8
BATCH_BYTES = 32 << 20
"""Bytes gathered before a send."""
SCATTERED = 64
"""Runs in a record above which its pages are gathered into one buffer (one copy) rather
than sent as one iovec each."""


def page_words(memory: memoryview) -> npt.NDArray[np.uint64]:
    """The guest's memory as a (pages, 512) array of 64-bit words, sharing its mapping."""
    return np.frombuffer(memory, dtype=np.uint64).reshape(-1, WORDS)


def expand_runs(runs: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The pages of ``[start, end)`` runs, in order."""
    if len(runs) == 0:
        return np.empty(0, dtype=np.int64)
    lengths = runs[:, 1] - runs[:, 0]
    total = int(lengths.sum())
    # each page's number: its run's start plus its position within the run
    starts = np.repeat(runs[:, 0] - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return starts + np.arange(total, dtype=np.int64)


def union_of_runs(pages: int, *runs: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The pages of all the ``[start, end)`` runs of a guest of ``pages`` pages, each once,
    ascending. A mask, not ``np.union1d``: the first call of that in a process took 14 ms
    (numpy loading its sorting), and this runs in the downtime."""
    mask = np.zeros(pages, dtype=bool)
    for each in runs:
        mask[expand_runs(each)] = True
    return np.flatnonzero(mask).astype(np.int64)


def zero_pages(words: npt.NDArray[np.uint64], pfns: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """Which of ``pfns`` are all zero: their first word, then the whole page of those whose
    first word is zero (random or written memory is decided by one word a page)."""
    zero: npt.NDArray[np.bool_] = words[pfns, 0] == 0
    candidates = np.flatnonzero(zero)
    if len(candidates):
        zero[candidates] = ~words[pfns[candidates]].any(axis=1)
    return zero


class PageSender:
    """PAGE_DATA records of one guest's memory onto ``channel``; ``sent`` counts their bytes,
    ``progress(bytes)`` is called after each send."""

    def __init__(
        self, memory: memoryview, channel: Channel, progress: Callable[[int], None] | None = None
    ) -> None:
        self.memory = memory.cast("B")
        self.words = page_words(self.memory)
        self.channel = channel
        self.progress = progress
        self.sent = 0
        self._buffers: list[Buffer] = []
        self._pending = 0

    def release(self) -> None:
        """Let go of the guest's memory, so that destroying the domain unmaps it."""
        self.words = page_words(memoryview(bytearray()))
        with contextlib.suppress(BufferError):
            self.memory.release()

    async def send_pages(self, pfns: npt.NDArray[np.int64], detect_zero: bool) -> int:
        """Send ``pfns`` in records of 1024; zero pages as XALLOC when ``detect_zero``.
        Bytes queued (sent by :meth:`flush` at the latest)."""
        before = self.sent + self._pending
        for first in range(0, len(pfns), PAGE_DATA_MAX):
            chunk = pfns[first : first + PAGE_DATA_MAX]
            zero = zero_pages(self.words, chunk) if detect_zero else None
            await self._record(chunk, zero)
        return self.sent + self._pending - before

    async def send_runs(self, runs: npt.NDArray[np.int64], detect_zero: bool = False) -> int:
        """Send the pages of ``[start, end)`` runs (see :meth:`send_pages`)."""
        return await self.send_pages(expand_runs(runs), detect_zero)

    async def _record(
        self, pfns: npt.NDArray[np.int64], zero: npt.NDArray[np.bool_] | None
    ) -> None:
        if zero is not None and not zero.any():
            zero = None
        self._queue(page_data_header(pfns, zero))
        data = pfns if zero is None else pfns[~zero]
        runs = page_runs(data)
        if len(runs) > SCATTERED:
            self._queue(self.words[data].data.cast("B"))
        else:
            memory = self.memory
            for start, end in runs.tolist():
                self._queue(memory[start * PAGE_SIZE : end * PAGE_SIZE])
        if self._pending >= BATCH_BYTES or len(self._buffers) >= IOV_MAX:
            await self.flush()

    def _queue(self, buffer: Buffer) -> None:
        self._buffers.append(buffer)
        self._pending += len(buffer)

    async def send_bytes(self, data: bytes) -> None:
        """Queue other records' bytes, in order with the pages."""
        self._queue(data)

    async def flush(self) -> None:
        """Send what is queued."""
        if not self._buffers:
            return
        buffers, pending = self._buffers, self._pending
        self._buffers, self._pending = [], 0
        await self.channel.send(buffers)
        self.sent += pending
        if self.progress is not None:
            self.progress(self.sent)


class PageReceiver:
    """Receives the data of PAGE_DATA records into a guest's memory."""

    def __init__(self, memory: memoryview, channel: Channel) -> None:
        self.memory = memory.cast("B")
        self.words = page_words(self.memory)
        self.channel = channel
        self.written = np.zeros(len(self.words), dtype=bool)
        """Pages that received data so far (an XALLOC page among them is zeroed)."""

    def release(self) -> None:
        """Let go of the guest's memory, so that destroying the domain unmaps it."""
        self.words = page_words(memoryview(bytearray()))
        with contextlib.suppress(BufferError):
            self.memory.release()

    async def receive(self, pages: Pages) -> None:
        """Receive the ``pages.payload`` bytes of data of ``pages`` into memory and zero its
        XALLOC pages (those that had data)."""
        if len(pages.zero_runs):
            zero = pages.zero_pfns.astype(np.int64)
            self.words[zero[self.written[zero]]] = 0
        if not pages.payload:
            return
        data = pages.data_pfns.astype(np.int64)
        self.written[data] = True
        if len(pages.runs) > SCATTERED:
            bounce = np.empty((len(data), WORDS), dtype=np.uint64)
            await self.channel.recv_exactly_into(bounce.data.cast("B"))
            self.words[data] = bounce
            return
        memory = self.memory
        runs = pages.runs.tolist()
        await self.channel.recv_exactly_into_all(
            [memory[s * PAGE_SIZE : e * PAGE_SIZE] for s, e in runs]
        )
