"""Random access to VHD images (fixed, dynamic, differencing) and their parent chains.

An :class:`Image` reads its metadata through a :class:`~vhd.file.File`, resolves reads into
plan elements (copies from the right file of the chain, or zeros) and writes any byte range in
a crash-safe order: data, then bitmap, then BAT entry, then footer.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterator
from typing import Self

import numpy as np

from vhd import bitmap
from vhd.bat import block_problems, meta_end, parse_bat, table_problems
from vhd.disk import RawDisk, remap
from vhd.elements import Copy, Zeros
from vhd.errors import VhdError
from vhd.file import File
from vhd.format import (
    DIFFERENCING,
    DYNAMIC,
    FIXED,
    FOOTER_SIZE,
    HEADER_SIZE,
    SECTOR,
    UNALLOCATED,
    DynamicHeader,
    Footer,
    ParentLocator,
    block_position,
    trailing_footer_offset,
)
from vhd.transport import BufferSink, execute

MAX_CHAIN_LENGTH = 128
"""Longest parent chain we follow (xapi itself stops at 30)."""


class ImageMetadata:
    """What an image file says about itself, validated against the file's size."""

    def __init__(self, file: File) -> None:
        self.file = file
        self.footer_problem: VhdError | None = None
        self.footer, self.footer_offset = self._read_footer(file)
        self.header: DynamicHeader | None = None
        self.bat = np.zeros(0, dtype=np.uint32)
        if self.footer.disk_type == FIXED:
            if file.size - FOOTER_SIZE < self.footer.current_size:
                raise VhdError(
                    f"fixed image holds {file.size - FOOTER_SIZE} bytes of data, footer says "
                    f"{self.footer.current_size}",
                    field="footer.current_size",
                    offset=self.footer_offset + 48,
                )
            return
        self.header = self._read_header(file)
        self.bat = self._read_bat(file, self.header)

    @property
    def limit(self) -> int:
        """Where block data must end: the trailing footer, or the file's end without one."""
        return self.footer_offset if self.footer_problem is None else self.file.size

    def _read_footer(self, file: File) -> tuple[Footer, int]:
        if file.size < FOOTER_SIZE:
            raise VhdError(f"file of {file.size} bytes is too short for a footer", field="footer")
        offset = trailing_footer_offset(file.size)
        try:
            return Footer.parse(file.pread(FOOTER_SIZE, offset, field="footer"), offset), offset
        except VhdError as trailing:
            try:
                copy = Footer.parse(file.pread(FOOTER_SIZE, 0, field="footer copy"), 0)
            except VhdError:
                raise trailing from None
            if copy.disk_type == FIXED:
                raise trailing from None
            self.footer_problem = trailing
            return copy, 0

    def _read_header(self, file: File) -> DynamicHeader:
        at = self.footer.data_offset
        if at + HEADER_SIZE > self.limit:
            raise VhdError(
                f"dynamic header at {at} lies past the end of the image",
                field="footer.data_offset",
                offset=self.footer_offset + 16,
            )
        header = DynamicHeader.parse(file.pread(HEADER_SIZE, at, field="header"), at)
        problems = table_problems(self.footer, header, self.limit)
        if problems:
            raise problems[0]
        return header

    def _read_bat(self, file: File, header: DynamicHeader) -> np.ndarray:
        raw = file.pread(header.max_table_entries * 4, header.table_offset, field="bat")
        bat = parse_bat(raw)
        problems = block_problems(bat, header, meta_end(self.footer, header), self.limit)
        if problems:
            raise problems[0]
        return bat

    def locator_paths(self) -> list[tuple[ParentLocator, str]]:
        """The paths the parent locators hold, each with its locator."""
        assert self.header is not None
        paths = []
        for loc in self.header.locators:
            if loc.data_length == 0 or loc.data_offset + loc.data_length > self.file.size:
                continue
            path = loc.decode(self.file.pread(loc.data_length, loc.data_offset, field="locator"))
            if path:
                paths.append((loc, path))
        return paths


class Image:
    """An open VHD image and, for a differencing image, its open parent chain."""

    def __init__(self, meta: ImageMetadata, parent: Image | None = None) -> None:
        self.meta = meta
        self.file = meta.file
        self.path = meta.file.path
        self.footer = meta.footer
        self.header = meta.header
        self.bat = meta.bat
        self.parent = parent
        self.size = self.footer.current_size
        self._allocated = np.flatnonzero(self.bat != UNALLOCATED)
        self._raw = RawDisk(self.file, self.size) if self.footer.disk_type == FIXED else None
        self._raw_stale = False

    @classmethod
    def open(cls, path: str, *, writable: bool = False, parents: bool = True) -> Image:
        """Open the image at ``path`` and, with ``parents``, its whole parent chain (read-only)."""
        return cls._open(path, writable, parents, [])

    @classmethod
    def _open(cls, path: str, writable: bool, parents: bool, seen: list[File]) -> Image:
        file = File(path, writable=writable)
        try:
            if any(f.identity == file.identity for f in seen):
                raise VhdError("parent chain loops back to this file", field="header.parent_name")
            if len(seen) >= MAX_CHAIN_LENGTH:
                raise VhdError(f"parent chain longer than {MAX_CHAIN_LENGTH} images")
            meta = ImageMetadata(file)
            parent = None
            if parents and meta.footer.disk_type == DIFFERENCING:
                parent = cls._open_parent(meta, [*seen, file])
            return cls(meta, parent)
        except VhdError as e:
            file.close()
            raise e.at(path) from None
        except BaseException:
            file.close()
            raise

    @classmethod
    def _open_parent(cls, meta: ImageMetadata, seen: list[File]) -> Image:
        assert meta.header is not None
        header = meta.header
        parent_path = find_parent(meta)
        parent = cls._open(parent_path, False, True, seen)
        if parent.footer.uuid != header.parent_uuid:
            parent.close()
            raise VhdError(
                f"parent {parent_path} has uuid {parent.footer.uuid}, "
                f"expected {header.parent_uuid}",
                field="header.parent_uuid",
                offset=meta.footer.data_offset + 40,
            )
        return parent

    @property
    def block_size(self) -> int:
        """Block size in bytes (the whole disk for a fixed image)."""
        return self.header.block_size if self.header else max(self.size, SECTOR)

    @property
    def disk_type(self) -> int:
        """FIXED, DYNAMIC or DIFFERENCING."""
        return self.footer.disk_type

    def chain(self) -> list[Image]:
        """This image and its ancestors, top first."""
        images: list[Image] = []
        image: Image | None = self
        while image is not None:
            images.append(image)
            image = image.parent
        return images

    def close(self) -> None:
        """Close this image's file and its parents'."""
        for image in self.chain():
            image.file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Reading

    def extents(self, offset: int, length: int) -> Iterator[Copy | Zeros]:
        """Copies (from this image or an ancestor) and zeros covering ``offset`` .. +``length``."""
        end = offset + length
        inside = min(end, self.size)
        if self._raw is not None:
            yield from self._fixed().extents(offset, max(0, inside - offset))
        else:
            yield from self._dynamic_extents(offset, inside)
        if end > max(offset, inside):
            yield Zeros(end - max(offset, inside))

    def _dynamic_extents(self, pos: int, end: int) -> Iterator[Copy | Zeros]:
        assert self.header is not None
        bs, bitmap_size = self.header.block_size, self.header.bitmap_size
        allocated = self._allocated
        while pos < end:
            b = pos // bs
            entry = int(self.bat[b])
            if entry == UNALLOCATED:
                k = int(np.searchsorted(allocated, b))
                stop = min(end, int(allocated[k]) * bs if k < allocated.size else end)
                yield from self._below(pos, stop - pos)
                pos = stop
                continue
            block_start = b * bs
            stop = min(end, block_start + bs)
            first = (pos - block_start) // SECTOR
            count = (stop - 1 - block_start) // SECTOR - first + 1
            bits = self.file.pread(bitmap_size, entry * SECTOR, field=f"bitmap of block {b}")
            data = entry * SECTOR + bitmap_size
            for run, n, present in bitmap.runs(bits, first, count):
                lo = max(pos, block_start + (first + run) * SECTOR)
                hi = min(stop, block_start + (first + run + n) * SECTOR)
                if present:
                    yield Copy(self.file, data + lo - block_start, hi - lo)
                else:
                    yield from self._below(lo, hi - lo)
            pos = stop

    def _fixed(self) -> RawDisk:
        """A fixed image's data extents, found again after writes may have filled holes."""
        assert self._raw is not None
        if self._raw_stale:
            self._raw = RawDisk(self.file, self.size)
            self._raw_stale = False
        return self._raw

    def _below(self, offset: int, length: int) -> Iterator[Copy | Zeros]:
        """What shows through where this image holds nothing: the parent's data, or zeros."""
        if self.parent is None:
            yield Zeros(length)
        else:
            yield from self.parent.extents(offset, length)

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the virtual disk at ``offset`` (zeros past the end)."""
        out = bytearray(length)
        execute(self.extents(offset, length), BufferSink(out))
        return bytes(out)

    def layers(self, block_size: int) -> list[tuple[Hashable, np.ndarray]]:
        """Each image of the chain, by uuid, with the blocks of ``block_size`` it holds."""
        out: list[tuple[Hashable, np.ndarray]] = []
        for image in self.chain():
            if image._raw is not None:
                blocks = image._fixed().layers(block_size)[0][1]
            else:
                blocks = remap(image._allocated, image.block_size, block_size)
            out.append((image.footer.uuid, blocks))
        return out

    # Writing

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at virtual ``offset``, allocating blocks as needed."""
        if not self.file.writable:
            raise VhdError("image is open read-only", path=self.path)
        view = memoryview(data).cast("B")
        if offset < 0 or offset + len(view) > self.size:
            raise VhdError(
                f"write of {len(view)} bytes at {offset} exceeds the virtual size {self.size}",
                path=self.path,
            )
        if not view:
            return
        start = offset // SECTOR * SECTOR
        end = -(-(offset + len(view)) // SECTOR) * SECTOR
        if start != offset or end != offset + len(view):
            head = self.read(start, SECTOR)
            tail = self.read(end - SECTOR, SECTOR)
            buf = bytearray(end - start)
            buf[:SECTOR] = head
            buf[-SECTOR:] = tail
            buf[offset - start : offset - start + len(view)] = view
            view = memoryview(buf)
        if self._raw is not None:
            self.file.pwrite(view, start)
            self._raw_stale = True
            return
        assert self.header is not None
        bs = self.header.block_size
        pos = start
        while view:
            b = pos // bs
            n = min(len(view), (b + 1) * bs - pos)
            self._write_block(b, pos - b * bs, view[:n])
            view, pos = view[n:], pos + n

    def _write_block(self, b: int, offset: int, data: memoryview) -> None:
        assert self.header is not None
        entry = int(self.bat[b])
        first, count = offset // SECTOR, len(data) // SECTOR
        if entry == UNALLOCATED:
            if self.disk_type == DYNAMIC and not np.frombuffer(data, np.uint8).any():
                return
            self._allocate(b, offset, data)
            return
        self.file.pwrite(data, entry * SECTOR + self.header.bitmap_size + offset)
        old = self.file.pread(self.header.bitmap_size, entry * SECTOR, field=f"bitmap of block {b}")
        new = bitmap.set_range(old, first, count)
        if new != old:
            self.file.pwrite(new, entry * SECTOR)

    def _free_offset(self) -> int:
        """Where the next block's bitmap goes: past every block, table, locator and the footer,
        placed so that its data starts on a 4 KiB boundary."""
        assert self.header is not None
        h = self.header
        ends = [self.footer.data_offset + HEADER_SIZE, h.table_offset + h.table_size]
        ends += [loc.data_offset + loc.space_bytes for loc in h.locators]
        if self._allocated.size:
            last = int(self.bat[self._allocated].max()) * SECTOR
            ends.append(last + h.bitmap_size + h.block_size)
        if self.meta.footer_problem is None:
            ends.append(self.meta.footer_offset)
        return block_position(-(-max(ends) // SECTOR) * SECTOR, h.bitmap_size)

    def _allocate(self, b: int, offset: int, data: memoryview) -> None:
        """Give block ``b`` room at the end: data, then bitmap, then BAT entry, then footer."""
        assert self.header is not None
        h = self.header
        at = self._free_offset()
        if at // SECTOR >= UNALLOCATED:
            raise VhdError("image full: block offset exceeds the BAT's 32-bit range")
        first, count = offset // SECTOR, len(data) // SECTOR
        if self.disk_type == DYNAMIC:
            block = bytearray(h.block_size)
            block[offset : offset + len(data)] = data
            self.file.pwrite(block, at + h.bitmap_size)
            bits = bitmap.full(h.bitmap_size)
        else:
            self.file.pwrite(data, at + h.bitmap_size + offset)
            bits = bitmap.set_range(bytes(h.bitmap_size), first, count)
        self.file.pwrite(bits, at)
        footer_at = at + h.bitmap_size + h.block_size
        if self.file.size < footer_at:
            self.file.truncate(footer_at)  # the block lies inside the file before the BAT says so
        self.file.pwrite((at // SECTOR).to_bytes(4, "big"), h.table_offset + 4 * b)
        self.bat[b] = at // SECTOR
        self._allocated = np.flatnonzero(self.bat != UNALLOCATED)
        self.file.pwrite(self.footer.build(), footer_at)
        self.meta.footer_offset = footer_at
        self.meta.footer_problem = None

    def flush(self) -> None:
        """Make every write so far durable."""
        self.file.sync()


def find_parent(meta: ImageMetadata) -> str:
    """The path of a differencing image's parent: its locators first, then its parent name.

    Relative paths are taken relative to the child's directory.
    """
    assert meta.header is not None
    base = os.path.dirname(os.path.abspath(meta.file.path))
    tried = []
    candidates = [path for _, path in meta.locator_paths()]
    if meta.header.parent_name:
        candidates.append(meta.header.parent_name)
    for path in candidates:
        full = os.path.normpath(os.path.join(base, path))
        if os.path.isfile(full):
            return full
        tried.append(full)
    raise VhdError(
        f"parent {meta.header.parent_uuid} not found (tried: {', '.join(tried) or 'nothing'})",
        field="header.parent_name",
        offset=meta.footer.data_offset + 64,
    )
