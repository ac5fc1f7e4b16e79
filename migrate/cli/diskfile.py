"""A disk image arriving as a stream, written into a regular file (``xfer export -o FILE``):
large aligned pieces ``O_DIRECT``, zeros left as holes, a constant footprint.

The bytes are gathered in one page-aligned buffer of :data:`STAGE` bytes; each full buffer is
written at its place in the file, each run of :data:`HOLE_UNIT` units that are all zeros
skipped over (a sparse disk stays sparse), the others in one ``pwrite`` on a second
descriptor of the file opened ``O_DIRECT``. What is not aligned (the first bytes of a resumed
file up to the next :data:`ALIGN` boundary, the last bytes of the stream) goes through the
page cache, and so does everything on a file system that refuses ``O_DIRECT``.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable

import numpy as np

from migrate.storage.direct import DirectWriter
from vhd.file import pwrite_all

STAGE = 8 << 20
"""Bytes gathered before a write (a multiple of :data:`HOLE_UNIT`)."""
HOLE_UNIT = 64 << 10
"""Zeros become holes in whole units of this size, aligned in the file."""
ALIGN = 4096
"""File offsets, lengths and addresses of ``O_DIRECT`` writes are multiples of this."""


class DiskFile:
    """Writes bytes in order into the file ``path`` (open as ``fd``) from ``offset`` on;
    :meth:`finish` writes what is held and sets the file's length to where the bytes end."""

    def __init__(self, path: str, fd: int, offset: int) -> None:
        self.fd = fd
        self.end = offset
        """The file offset after the last byte given."""
        self._buffer = memoryview(mmap.mmap(-1, STAGE))
        self._address = np.frombuffer(self._buffer, dtype=np.uint8).ctypes.data
        self._held = 0
        """Bytes in the buffer, those of the file from ``end - held``; that start is aligned."""
        self._lead = -offset % ALIGN
        """Bytes still to write through the page cache before the file offset is aligned."""
        self._writer = DirectWriter(path, fd, ALIGN)

    def write(self, pieces: Iterable[bytes | memoryview]) -> None:
        """Take ``pieces``, the next bytes in order; full buffers are written at once."""
        for piece in pieces:
            view = memoryview(piece)
            if self._lead and view:
                n = min(self._lead, len(view))
                pwrite_all(self.fd, view[:n], self.end)
                self.end += n
                self._lead -= n
                view = view[n:]
            while view:
                n = min(len(view), STAGE - self._held)
                self._buffer[self._held : self._held + n] = view[:n]
                self._held += n
                self.end += n
                view = view[n:]
                if self._held == STAGE:
                    self._write_held()

    def finish(self) -> None:
        """Write what is held and set the file's length to :attr:`end` (holes at the end
        included); the ``O_DIRECT`` descriptor is closed, ``fd`` is left open."""
        try:
            self._write_held()
            os.ftruncate(self.fd, self.end)
        finally:
            self._writer.close()

    def _write_held(self) -> None:
        """Write the held bytes at their place: runs of all-zero units skipped, whole aligned
        stretches ``O_DIRECT``, a last unaligned stretch through the page cache."""
        start, data = self.end - self._held, self._buffer[: self._held]
        for a, b in _data_runs(data):
            run, offset = data[a:b], start + a
            aligned = len(run) // ALIGN * ALIGN
            self._writer.write(run[:aligned], offset, self._address + a)
            pwrite_all(self.fd, run[aligned:], offset + aligned)
        self._held = 0


def _data_runs(data: memoryview) -> list[tuple[int, int]]:
    """The (start, stop) of the runs of :data:`HOLE_UNIT` units of ``data`` that are not all
    zeros (the last unit may be shorter)."""
    whole = len(data) // HOLE_UNIT
    words = np.frombuffer(data[: whole * HOLE_UNIT], dtype=np.uint64)
    units = words.reshape(whole, HOLE_UNIT // 8).any(axis=1)
    if len(data) > whole * HOLE_UNIT:
        last = np.frombuffer(data[whole * HOLE_UNIT :], dtype=np.uint8).any()
        units = np.append(units, last)
    edges = np.flatnonzero(np.diff(np.concatenate(([False], units, [False])).astype(np.int8)))
    return [
        (int(a) * HOLE_UNIT, min(int(b) * HOLE_UNIT, len(data)))
        for a, b in zip(edges[0::2], edges[1::2], strict=True)
    ]
