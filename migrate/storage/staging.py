"""A VDI's next content, written beside it and put in place by one rename.

An import writes into a :class:`StagedImage`: a new dynamic (or, for a VDI on a snapshot
base, differencing) VHD in the VDI's part file. Block ``b`` lives in slot ``b`` of the file
whatever order blocks arrive in, so the file is sparse: blocks never written, and all-zero
pieces, stay holes. What the import does not write keeps the VDI's old content, read through
the old image's chain: a block touched only in part is first filled with its old content
(``prefill``), and at :meth:`StagedImage.finish` the blocks the old file held that the
import never touched are copied over. Only then are the metadata, bitmaps and footer that
:func:`vhd.plan.finish_vhd` places written and the file synced; the old file stays untouched
throughout, so a failed import leaves the VDI exactly as it was and exports running meanwhile
read the old content.

Block data goes straight to the disk (``O_DIRECT``) where the file system takes it and the
write is sector-aligned (a raw body's whole buffers, a VHD's sectors), since the data must be
synced anyway; the rest goes through the page cache. Plain synchronous file I/O, for the
importer's worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid as uuidlib

import numpy as np

import vhd
from migrate.storage.direct import DirectWriter
from vhd.format import DEFAULT_BLOCK_SIZE, MAX_VIRTUAL_SIZE, SECTOR
from vhd.plan import ParentRef, VhdLayout, finish_vhd, parent_name
from vhd.transport import CopyRangeSink, FileSink, execute

BLOCK_SIZE = DEFAULT_BLOCK_SIZE
DIRECT_ALIGNMENT = SECTOR
"""What an ``O_DIRECT`` write's file offset, length and memory address must be multiples
of (a disk's logical block; a file system wanting more refuses the write, and the image
then stops writing direct)."""


class StagingError(ValueError):
    """A write the staged image cannot take (outside the disk); the message says why."""


def _union(layers: list[tuple[object, np.ndarray]], entries: int) -> np.ndarray:
    """A boolean mask of ``entries`` blocks: those any of ``layers`` holds."""
    mask = np.zeros(entries, dtype=bool)
    for _, blocks in layers:
        mask[blocks[blocks < entries]] = True
    return mask


class StagedImage:
    """The new VHD of a VDI being imported, at ``path``, overlaid on ``old`` (None: empty).

    ``size`` is the virtual size when known (an existing VDI's); None lets it follow what is
    written, up to ``limit`` bytes. ``old`` stays open and owned by the caller.
    """

    def __init__(
        self,
        path: str,
        *,
        old: vhd.Image | None = None,
        size: int | None = None,
        limit: int = MAX_VIRTUAL_SIZE,
    ) -> None:
        self.path = path
        self.old = old
        self.size = size
        self.limit = limit if size is None else size
        self.end = 0
        """One past the highest virtual byte written."""
        self._parent: ParentRef | None = None
        if old is not None and old.parent is not None and old.header is not None:
            name = parent_name(path, old.parent.path)
            self._parent = ParentRef(old.header.parent_uuid, old.header.parent_timestamp, name)
        room_for = None if size is not None else self.limit
        self._layout = VhdLayout.new(
            size or SECTOR, parent=self._parent, block_size=BLOCK_SIZE, room_for=room_for
        )
        self._room_for = room_for
        entries = -(-self.limit // BLOCK_SIZE)
        self._data = self._layout.header.bitmap_size
        self._written = np.zeros(entries, dtype=bool)
        """Blocks the import wrote into (zeros included)."""
        self._stored = np.zeros(entries, dtype=bool)
        """Blocks holding bytes in this file (written non-zero data or prefilled)."""
        self._covered = np.zeros(entries, dtype=bool)
        """Blocks an announced full block of the source covers: no old content shows."""
        if old is not None:
            layers = old.layers(BLOCK_SIZE)
            self._old_top = _union(layers[:1], entries)
            self._old_below = _union(layers[1:], entries)
        else:
            self._old_top = self._old_below = np.zeros(entries, dtype=bool)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._owned = True
        self._writer = DirectWriter(path, self._fd, DIRECT_ALIGNMENT)
        """Block data ``O_DIRECT`` where aligned."""

    @property
    def changed(self) -> bool:
        """Whether anything was written (an image nothing was written to equals the old)."""
        return bool(self._written.any())

    # Writing

    def announce(self, offset: int, length: int, full: bool) -> None:
        """The source's next writes lie in ``offset`` .. +``length``; with ``full`` they cover
        it all, so no old content needs to be kept in the blocks it spans whole."""
        if not full:
            return
        first = -(-offset // BLOCK_SIZE)
        stop = (offset + length) // BLOCK_SIZE
        if offset + length >= self.limit:
            stop = -(-(offset + length) // BLOCK_SIZE)
        if stop > first:
            self._covered[first:stop] = True

    def write(self, offset: int, data: memoryview) -> None:
        """Write ``data`` at virtual ``offset``; StagingError past the disk's end."""
        end = offset + len(data)
        if offset < 0 or end > self.limit:
            raise StagingError(
                f"data at {offset} + {len(data)} bytes reaches past the disk's {self.limit} bytes"
            )
        pos = 0
        while pos < len(data):
            b, inside = divmod(offset + pos, BLOCK_SIZE)
            n = min(len(data) - pos, BLOCK_SIZE - inside)
            piece = data[pos : pos + n]
            if not (self._written[b] or self._stored[b]):
                block_end = min(BLOCK_SIZE, self.limit - b * BLOCK_SIZE)
                whole = inside == 0 and n >= block_end
                if not whole and not self._covered[b] and (self._old_top[b] or self._old_below[b]):
                    self._prefill(b)
            self._written[b] = True
            array = np.frombuffer(piece, dtype=np.uint8)
            if self._stored[b] or array.any():
                slot = int(self._layout.slot_offset(b))
                if not self._stored[b]:
                    # a block's first bytes: its slot allocated at once, so that its writes
                    # overwrite allocated space instead of extending the file piece by piece
                    os.posix_fallocate(self._fd, slot, self._layout.slot)
                self._writer.write(piece, slot + self._data + inside, array.ctypes.data)
                self._stored[b] = True
            pos += n
        self.end = max(self.end, end)

    def _prefill(self, b: int) -> None:
        """Copy block ``b``'s old content (through the old chain) into its slot."""
        assert self.old is not None
        start = b * BLOCK_SIZE
        length = max(0, min(BLOCK_SIZE, self.old.size - start))
        slot = int(self._layout.slot_offset(b)) + self._data
        execute(self.old.extents(start, length), CopyRangeSink(self._fd, slot))
        self._stored[b] = True

    # Finishing

    def finish(self, size: int | None = None) -> int:
        """Complete the image: blocks of the old file the import did not touch copied, then
        the metadata, bitmaps and footer vhd.plan places written, and the file synced.
        ``size`` (for an image whose size follows its data) defaults to what was written.
        Returns the virtual size the file holds: ``size`` rounded up to a whole sector."""
        if self.size is not None:
            size = self.size
        elif size is None:
            size = max(SECTOR, self.end)
        if size < self.end or size > self.limit:
            raise StagingError(f"virtual size {size} does not hold the {self.end} bytes written")
        for b in np.flatnonzero(self._old_top & ~self._written & ~self._stored).tolist():
            self._prefill(int(b))
        layout = VhdLayout.new(
            size,
            parent=self._parent,
            block_size=BLOCK_SIZE,
            uuid=uuidlib.uuid4(),
            room_for=self._room_for,
        )
        if layout.data_start != self._layout.data_start:
            raise AssertionError("staged layout moved")  # room_for keeps it fixed
        allocated = (self._stored | (self._written & self._old_below))[: layout.entries]
        blocks = np.flatnonzero(allocated)
        writes = finish_vhd(layout, blocks, blocks)  # block b lies in slot b
        sink = FileSink(self._fd, 0)
        for offset, element in writes:
            sink.position = offset
            execute((element,), sink)
        os.ftruncate(self._fd, writes.length)
        os.fsync(self._fd)
        return layout.size

    def sync_data(self) -> None:
        """Write what is written so far to disk (``fdatasync``): run while data still
        arrives, it leaves little for :meth:`finish` to wait for."""
        os.fdatasync(self._fd)

    def close(self) -> None:
        """Close the file (kept on disk)."""
        self._writer.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        """Close and remove the file, unless it was published or already removed: the path
        may meanwhile hold the next import's file."""
        self.close()
        if self._owned:
            self._owned = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def published(self) -> None:
        """The file was put in place of the VDI's: no longer this image's to remove."""
        self._owned = False


def disk_full(error: OSError) -> bool:
    """Whether ``error`` says the file system (or a quota) is full."""
    return error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
