"""The disk abstraction plans are made from, and raw disks (plain files, possibly sparse)."""

from __future__ import annotations

import bisect
import errno
import os
from collections.abc import Hashable, Iterator
from typing import Protocol

import numpy as np

from vhd.elements import Copy, Zeros
from vhd.file import File


class Disk(Protocol):
    """A virtual disk: its size, where each byte range lives, and its layers' allocations."""

    @property
    def size(self) -> int:
        """Virtual size in bytes."""
        ...

    def extents(self, offset: int, length: int) -> Iterator[Copy | Zeros]:
        """Copies and zeros covering exactly ``length`` bytes from virtual ``offset``."""
        ...

    def layers(self, block_size: int) -> list[tuple[Hashable, np.ndarray]]:
        """Each layer (top first) as (identity, ascending blocks of ``block_size`` it holds)."""
        ...


def remap(blocks: np.ndarray, from_size: int, to_size: int) -> np.ndarray:
    """Block indices of ``from_size`` blocks expressed as the ``to_size`` blocks they touch."""
    blocks = np.asarray(blocks, dtype=np.int64)
    if from_size == to_size:
        return blocks
    if from_size < to_size:
        return np.unique(blocks * from_size // to_size)
    k = from_size // to_size
    return (blocks[:, None] * k + np.arange(k, dtype=np.int64)).ravel()


def ranges_to_blocks(ranges: list[tuple[int, int]], block_size: int) -> np.ndarray:
    """Ascending indices of the blocks that byte ``ranges`` (start, end) touch."""
    if not ranges:
        return np.zeros(0, dtype=np.int64)
    parts = [np.arange(s // block_size, -(-e // block_size), dtype=np.int64) for s, e in ranges]
    return np.unique(np.concatenate(parts))


def data_ranges(file: File, size: int) -> list[tuple[int, int]]:
    """Byte ranges of ``file`` below ``size`` that hold data, found with SEEK_DATA/SEEK_HOLE.

    Costs a few system calls per extent, not a read of the file; a file system without
    SEEK_DATA support reports the whole file as data.
    """
    ranges: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(file.fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            if e.errno == errno.EINVAL:
                return [(0, size)] if size else []
            raise
        if start >= size:
            break
        end = min(os.lseek(file.fd, start, os.SEEK_HOLE), size)
        ranges.append((start, end))
        pos = end
    return ranges


class RawDisk:
    """A raw disk image of ``size`` bytes: virtual offset X is byte X of ``file``.

    The file's data extents are found once (:func:`data_ranges`); its holes read as zeros
    without being read. ``file`` may be None for an all-zero disk.
    """

    def __init__(self, file: File | None, size: int) -> None:
        self.file = file
        self.size = size
        self.ranges = data_ranges(file, size) if file is not None else []
        """Ascending, disjoint (start, end) byte ranges that may hold data."""
        self._starts = [s for s, _ in self.ranges]

    @classmethod
    def open(cls, path: str) -> RawDisk:
        """A raw disk over the file at ``path``, its data extents found by SEEK_DATA."""
        file = File(path)
        return cls(file, file.size)

    def close(self) -> None:
        """Close the underlying file."""
        if self.file is not None:
            self.file.close()

    def extents(self, offset: int, length: int) -> Iterator[Copy | Zeros]:
        """Copies of the data ranges and zeros for the gaps, over ``offset`` .. +``length``."""
        end = offset + length
        pos = offset
        i = max(0, bisect.bisect_right(self._starts, offset) - 1)
        while pos < end and i < len(self.ranges):
            start, stop = self.ranges[i]
            i += 1
            if stop <= pos:
                continue
            if start >= end:
                break
            if start > pos:
                yield Zeros(start - pos)
                pos = start
            upto = min(stop, end)
            assert self.file is not None
            yield Copy(self.file, pos, upto - pos)
            pos = upto
        if pos < end:
            yield Zeros(end - pos)

    def layers(self, block_size: int) -> list[tuple[Hashable, np.ndarray]]:
        """One layer: the file itself, holding the blocks its data ranges touch."""
        identity = self.file.identity if self.file is not None else None
        return [(identity, ranges_to_blocks(self.ranges, block_size))]
