"""Sector bitmaps: bit i (MSB first) of a block's bitmap says whether sector i is present."""

from __future__ import annotations

import numpy as np

_FULL: dict[int, bytes] = {}


def full(size: int) -> bytes:
    """A bitmap of ``size`` bytes with every bit set."""
    bitmap = _FULL.get(size)
    if bitmap is None:
        bitmap = _FULL[size] = b"\xff" * size
    return bitmap


def runs(bitmap: bytes, first: int, count: int) -> list[tuple[int, int, bool]]:
    """Runs of equal bits in sectors ``first`` .. ``first + count - 1``: (start, length, present).

    Starts are relative to ``first``. Vectorised with numpy: no per-sector Python loop.
    """
    nbytes = (first + count + 7) // 8
    head = bitmap[:nbytes]
    if head == full(nbytes):
        return [(0, count, True)]
    if head.count(0) == nbytes:
        return [(0, count, False)]
    bits = np.unpackbits(np.frombuffer(head, np.uint8))[first : first + count]
    edges = np.flatnonzero(bits[1:] != bits[:-1]) + 1
    starts = [0, *edges.tolist()]
    ends = [*edges.tolist(), count]
    return [(s, e - s, bool(bits[s])) for s, e in zip(starts, ends, strict=True)]


def set_range(bitmap: bytes, first: int, count: int) -> bytes:
    """``bitmap`` with the bits of sectors ``first`` .. ``first + count - 1`` set."""
    bits = np.unpackbits(np.frombuffer(bitmap, np.uint8))
    bits[first : first + count] = 1
    return np.packbits(bits).tobytes()
