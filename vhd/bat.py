"""The block allocation table: parsing and the placement rules shared by files and streams."""

from __future__ import annotations

import numpy as np

from vhd.errors import VhdError
from vhd.format import (
    FOOTER_SIZE,
    HEADER_SIZE,
    SECTOR,
    UNALLOCATED,
    DynamicHeader,
    Footer,
    table_entries,
)

MAX_LISTED = 20
"""At most this many BAT problems are listed one by one."""


def parse_bat(raw: bytes) -> np.ndarray:
    """BAT entries (big-endian u32) as a native uint32 array."""
    return np.frombuffer(raw, dtype=">u4").astype(np.uint32)


def table_problems(footer: Footer, header: DynamicHeader, limit: int | None) -> list[VhdError]:
    """Problems of the BAT's size and place: it must cover the disk, follow no overlap with the
    header or footer copy, and end before ``limit`` (None for a stream of unknown length)."""
    at = footer.data_offset
    found = []
    needed = table_entries(footer.current_size, header.block_size)
    if header.max_table_entries < needed:
        found.append(
            VhdError(
                f"{header.max_table_entries} entries cannot cover {footer.current_size} bytes "
                f"in blocks of {header.block_size} ({needed} needed)",
                field="header.max_table_entries",
                offset=at + 28,
            )
        )
    start, end = header.table_offset, header.table_offset + header.max_table_entries * 4
    if (
        start < FOOTER_SIZE
        or (start < at + HEADER_SIZE and end > at)
        or (limit is not None and end > limit)
    ):
        found.append(
            VhdError(
                f"BAT {start}..{end} overlaps the header or footer copy or lies past the end",
                field="header.table_offset",
                offset=at + 16,
            )
        )
    return found


def block_problems(
    bat: np.ndarray, header: DynamicHeader, meta_end: int, limit: int | None
) -> list[VhdError]:
    """Problems of allocated entries: each block (bitmap and data) must lie between
    ``meta_end`` and ``limit`` and overlap no other block."""
    blocks = np.flatnonzero(bat != UNALLOCATED)
    if not blocks.size:
        return []
    start = header.table_offset
    offsets = bat[blocks].astype(np.int64) * SECTOR
    stride = header.bitmap_size + header.block_size
    outside = offsets < meta_end
    if limit is not None:
        outside |= offsets + stride > limit
    found = [
        VhdError(
            f"block at byte {int(offsets[k])} (+{stride}) lies outside {meta_end}.."
            f"{'end' if limit is None else limit}",
            field=f"bat[{int(blocks[k])}]",
            offset=start + 4 * int(blocks[k]),
        )
        for k in np.flatnonzero(outside)[:MAX_LISTED].tolist()
    ]
    order = np.argsort(offsets, kind="stable")
    clash = np.flatnonzero(np.diff(offsets[order]) < stride)
    for k in clash[:MAX_LISTED].tolist():
        i, j = int(blocks[order[k]]), int(blocks[order[k + 1]])
        found.append(
            VhdError(
                f"block {j} at byte {int(offsets[order[k + 1]])} overlaps block {i}",
                field=f"bat[{j}]",
                offset=start + 4 * j,
            )
        )
    more = int(np.count_nonzero(outside)) + clash.size - len(found)
    if more > 0:
        found.append(VhdError(f"{more} more misplaced BAT entries", field="bat", offset=start))
    return found


def meta_end(footer: Footer, header: DynamicHeader) -> int:
    """Where block data may start: past the header and the BAT."""
    return max(header.table_offset + header.table_size, footer.data_offset + HEADER_SIZE)
