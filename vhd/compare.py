"""Which blocks of a disk hold other bytes than another disk (or zeros), found by reading both.

Where metadata cannot tell (a raw file's all-zero blocks, a disk against a base it shares no
chain member with), the content decides. Both sides are read a block at a time into two
reused buffers, through the same elements an export would send, and compared as bytes: memory
stays at two blocks whatever the disk's size.
"""

from __future__ import annotations

import numpy as np

from vhd.disk import Disk
from vhd.format import DEFAULT_BLOCK_SIZE
from vhd.transport import BufferSink, execute


def differing_content(
    disk: Disk, other: Disk | None, blocks: np.ndarray, block_size: int = DEFAULT_BLOCK_SIZE
) -> np.ndarray:
    """Those of ``blocks`` (block indices of ``block_size``) whose bytes in ``disk`` differ
    from ``other``'s, or from zeros when ``other`` is None; only those blocks are read."""
    mine = bytearray(block_size)
    theirs = bytearray(block_size)  # stays zeros without ``other``
    differ: list[int] = []
    for b in np.asarray(blocks, dtype=np.int64).tolist():
        start = b * block_size
        execute(disk.extents(start, block_size), BufferSink(mine))
        if other is not None:
            execute(other.extents(start, block_size), BufferSink(theirs))
        if mine != theirs:
            differ.append(b)
    return np.array(differ, dtype=np.int64)
