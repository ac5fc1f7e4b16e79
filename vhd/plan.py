"""Export plans: a stream described as elements before any byte of it is read or sent.

An element is literal bytes, a copy of N bytes from a file at an offset, or N zero bytes. A
plan knows its total length up front and yields its elements lazily, in constant memory;
:mod:`vhd.transport` executes it. Planning reads metadata (footers, tables, bitmaps) through
the images, never data. Which blocks a VHD holds: :func:`allocated_blocks`, or for a delta
:func:`differing_blocks`; :func:`finish_vhd` places the metadata of a file whose blocks were
written in place beforehand.
"""

from __future__ import annotations

import os
import uuid as uuidlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from vhd import bitmap
from vhd.disk import Disk
from vhd.elements import Copy, Element, Literal, Zeros, coalesce
from vhd.errors import VhdError
from vhd.format import (
    DEFAULT_BLOCK_SIZE,
    DIFFERENCING,
    DYNAMIC,
    FIXED,
    FOOTER_SIZE,
    HEADER_SIZE,
    PLATFORM_MACX,
    PLATFORM_W2RU,
    SECTOR,
    UNALLOCATED,
    DynamicHeader,
    Footer,
    ParentLocator,
    block_position,
    block_slot,
    table_entries,
    vhd_timestamp,
)


def _clip(e: Element, skip: int, length: int) -> Element:
    if isinstance(e, Literal):
        return Literal(e.data[skip : skip + length])
    if isinstance(e, Copy):
        return Copy(e.file, e.offset + skip, length)
    return Zeros(length)


@dataclass(frozen=True)
class Plan:
    """A stream of known ``length`` whose elements are produced on demand."""

    length: int
    produce: Callable[[], Iterator[Element]]

    def __iter__(self) -> Iterator[Element]:
        return coalesce(self.produce())

    def window(self, start: int, stop: int) -> Iterator[Element]:
        """The elements of bytes ``start`` .. ``stop - 1`` only (for HTTP ranges)."""
        pos = 0
        for e in self:
            end = pos + e.length
            if end > start and pos < stop:
                lo, hi = max(pos, start), min(end, stop)
                yield e if (lo, hi) == (pos, end) else _clip(e, lo - pos, hi - lo)
            if end >= stop:
                return
            pos = end


@dataclass(frozen=True)
class ParentRef:
    """What a differencing image records about its parent."""

    uuid: uuidlib.UUID
    timestamp: int
    name: str

    @classmethod
    def of(cls, footer: Footer, mtime: float, name: str) -> ParentRef:
        """The reference to an image with this ``footer`` and file ``mtime``, stored as ``name``."""
        return cls(footer.uuid, vhd_timestamp(mtime), name)


def plan_raw(disk: Disk) -> Plan:
    """The disk's contents as a raw stream of exactly its virtual size."""
    return Plan(disk.size, lambda: disk.extents(0, disk.size))


def plan_fixed(disk: Disk, *, uuid: uuidlib.UUID | None = None) -> Plan:
    """A fixed VHD: the raw contents (zero-padded to a whole sector), then a footer."""
    size = -(-disk.size // SECTOR) * SECTOR
    footer = Footer.new(FIXED, size, uuid=uuid).build()

    def produce() -> Iterator[Element]:
        yield from disk.extents(0, size)
        yield Literal(footer)

    return Plan(size + FOOTER_SIZE, produce)


def _locators(parent: ParentRef, start: int) -> tuple[tuple[ParentLocator, ...], bytes]:
    """MacX and W2ru locators naming ``parent.name`` relative to the child, and their data."""
    name = parent.name
    payloads = [
        (PLATFORM_MACX, f"file://./{name}".encode()),
        (PLATFORM_W2RU, (".\\" + name.replace("/", "\\")).encode("utf-16-le")),
    ]
    locators, data = [], bytearray()
    for code, payload in payloads:
        space = -(-len(payload) // SECTOR) * SECTOR
        locators.append(ParentLocator(code, space, len(payload), start + len(data)))
        data += payload.ljust(space, b"\0")
    return tuple(locators), bytes(data)


@dataclass(frozen=True)
class VhdLayout:
    """Where a dynamic (or differencing) VHD written in one go puts its parts.

    Metadata first: footer copy, header, BAT, parent locators; block ``i`` of the file (not of
    the disk) at ``slot_offset(i)``: its bitmap, then its data on a 4 KiB boundary; the footer
    right after the last block. ``data_start`` may leave room beyond the BAT (a table that
    grows, a hole in a sparse file).
    """

    size: int
    header: DynamicHeader
    locator_data: bytes
    data_start: int
    uuid: uuidlib.UUID | None

    @classmethod
    def new(
        cls,
        size: int,
        *,
        parent: ParentRef | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        uuid: uuidlib.UUID | None = None,
        room_for: int | None = None,
    ) -> VhdLayout:
        """The layout of a ``size``-byte image (rounded up to a sector); ``room_for`` a larger
        size whose table the data area leaves room for."""
        size = -(-size // SECTOR) * SECTOR
        table_offset = SECTOR + HEADER_SIZE
        header = DynamicHeader(
            table_offset=table_offset,
            max_table_entries=table_entries(size, block_size),
            block_size=block_size,
        )
        room = header
        if room_for is not None and room_for > size:
            room = header.replace(max_table_entries=table_entries(room_for, block_size))
        locator_start = table_offset + header.table_size
        locator_data = b""
        if parent is not None:
            if len(parent.name.encode("utf-16-be")) > 512:
                raise VhdError(f"parent name longer than 256 characters: {parent.name!r}")
            locators, locator_data = _locators(parent, locator_start)
            header = header.replace(
                parent_uuid=parent.uuid,
                parent_timestamp=parent.timestamp,
                parent_name=parent.name,
                locators=locators,
            )
        metadata_end = table_offset + room.table_size + len(locator_data)
        data_start = block_position(metadata_end, header.bitmap_size)
        return cls(size, header, locator_data, data_start, uuid)

    @property
    def entries(self) -> int:
        """Blocks in the disk (BAT entries)."""
        return int(self.header.max_table_entries)

    @property
    def slot(self) -> int:
        """Bytes from one block's bitmap to the next one's."""
        return block_slot(self.header.block_size, self.header.bitmap_size)

    def slot_offset(self, index: int | np.ndarray) -> int | np.ndarray:
        """File offset of the bitmap of the file's ``index``-th block (ints or an array)."""
        return self.data_start + index * self.slot

    def metadata_end(self) -> int:
        """End of footer copy, header, BAT and locators."""
        return self.header.table_offset + self.header.table_size + len(self.locator_data)

    def footer_offset(self, last: int | None) -> int:
        """Where the footer goes when the file's last block is ``last`` (None: no block)."""
        if last is None:
            return self.metadata_end()
        end = int(self.slot_offset(last)) + self.header.bitmap_size + self.header.block_size
        if end // SECTOR > UNALLOCATED:
            raise VhdError("image too large for 32-bit sector addresses in the BAT")
        return end

    def footer(self) -> bytes:
        """The footer (and its copy at offset 0)."""
        disk_type = DYNAMIC if self.header.parent_uuid.int == 0 else DIFFERENCING
        return Footer.new(disk_type, self.size, uuid=self.uuid, data_offset=SECTOR).build()

    def table(self, blocks: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """The BAT: block ``blocks[i]`` in the file's slot ``slots[i]``, the others unallocated."""
        bat = np.full(self.entries, UNALLOCATED, dtype=np.int64)
        bat[blocks] = np.asarray(self.slot_offset(slots), dtype=np.int64) // SECTOR
        return bat

    def metadata(self, bat: np.ndarray, footer: bytes) -> bytes:
        """Footer copy, header, BAT (``bat``: sector of each block's bitmap) and locators."""
        table = np.asarray(bat, dtype=">u4").tobytes().ljust(self.header.table_size, b"\xff")
        return footer + self.header.build() + table + self.locator_data


@dataclass(frozen=True)
class FileWrites:
    """Elements to write at given offsets of a file, and the ``length`` the file then has."""

    length: int
    produce: Callable[[], Iterator[tuple[int, Element]]]

    def __iter__(self) -> Iterator[tuple[int, Element]]:
        return self.produce()


def finish_vhd(layout: VhdLayout, blocks: np.ndarray, slots: np.ndarray) -> FileWrites:
    """What completes a file laid out as ``layout`` whose data of block ``blocks[i]`` already
    lies in slot ``slots[i]``: metadata at 0 (footer copy, header, BAT, locators), a full
    bitmap before each block's data, the footer right after the last slot (or the metadata).

    Blocks hold whole data, so every bitmap is full. The file must end with the footer:
    anything past it is to be cut off (:attr:`FileWrites.length`).
    """
    blocks = np.asarray(blocks, dtype=np.int64)
    slots = np.asarray(slots, dtype=np.int64)
    if blocks.shape != slots.shape or (
        blocks.size and (blocks.min() < 0 or blocks.max() >= layout.entries or slots.min() < 0)
    ):
        raise VhdError("blocks and slots must pair up, blocks inside the disk")
    if np.unique(blocks).size != blocks.size or np.unique(slots).size != slots.size:
        raise VhdError("a block or a slot is listed twice")
    footer_at = layout.footer_offset(int(slots.max()) if slots.size else None)
    bat = layout.table(blocks, slots)
    footer = layout.footer()
    full = Literal(bitmap.full(layout.header.bitmap_size))

    def produce() -> Iterator[tuple[int, Element]]:
        yield 0, Literal(layout.metadata(bat, footer))
        for at in np.asarray(layout.slot_offset(slots), dtype=np.int64).tolist():
            yield at, full
        yield footer_at, Literal(footer)

    return FileWrites(footer_at + FOOTER_SIZE, produce)


def plan_vhd(
    disk: Disk,
    blocks: np.ndarray,
    *,
    parent: ParentRef | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    uuid: uuidlib.UUID | None = None,
) -> Plan:
    """A one-pass dynamic VHD (differencing when ``parent`` is given) holding ``blocks``.

    Layout, as vhd-tool streams it: footer copy, header, BAT, parent locators, then each block
    of ``blocks`` (sorted ascending) as a full bitmap and ``block_size`` bytes, then the footer.
    Block data starts on 4 KiB boundaries (zero padding before each bitmap). A size that is not
    a whole number of sectors is rounded up with zeros, as qemu-img does.
    """
    layout = VhdLayout.new(disk.size, parent=parent, block_size=block_size, uuid=uuid)
    blocks = np.asarray(blocks, dtype=np.int64)
    if blocks.size and (
        blocks[0] < 0 or blocks[-1] >= layout.entries or np.any(np.diff(blocks) <= 0)
    ):
        raise VhdError("block list must be ascending, unique and inside the disk")
    # The footer follows the last block (or the metadata) directly: qemu puts its next block
    # right after the last one, and would otherwise expose a footer left in padding as data.
    footer_at = layout.footer_offset(blocks.size - 1 if blocks.size else None)
    bat = layout.table(blocks, np.arange(blocks.size, dtype=np.int64))
    footer = layout.footer()
    bitmap_size = layout.header.bitmap_size
    padding = layout.slot - bitmap_size - block_size
    full = bitmap.full(bitmap_size)

    def produce() -> Iterator[Element]:
        yield Literal(layout.metadata(bat, footer))
        gap = layout.data_start - layout.metadata_end()
        for b in blocks.tolist():
            yield Zeros(gap)
            yield Literal(full)
            start = b * block_size
            inside = max(0, min(block_size, disk.size - start))
            yield from disk.extents(start, inside)
            yield Zeros(block_size - inside)
            gap = padding
        yield Literal(footer)

    return Plan(footer_at + FOOTER_SIZE, produce)


def allocated_blocks(disk: Disk, block_size: int = DEFAULT_BLOCK_SIZE) -> np.ndarray:
    """Blocks of ``block_size`` that any layer of ``disk`` has data in, ascending."""
    return _union(blocks for _, blocks in disk.layers(block_size))


def differing_blocks(disk: Disk, base: Disk, block_size: int = DEFAULT_BLOCK_SIZE) -> np.ndarray:
    """Blocks that may differ between ``disk`` and ``base``, from metadata alone.

    Layers both chains share cannot hold a difference; every block allocated in a layer only
    one side has may. This is vhd-tool's rule for delta exports.
    """
    mine = dict(disk.layers(block_size))
    theirs = dict(base.layers(block_size))
    return _union(
        blocks
        for layers, other in ((mine, theirs), (theirs, mine))
        for key, blocks in layers.items()
        if key not in other
    )


def _union(arrays: Iterable[np.ndarray]) -> np.ndarray:
    parts = [a for a in arrays if a.size]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def parent_name(child_path: str, parent_path: str) -> str:
    """How a child at ``child_path`` names ``parent_path``: relative to the child's directory."""
    return os.path.relpath(
        os.path.abspath(parent_path), os.path.dirname(os.path.abspath(child_path))
    )
