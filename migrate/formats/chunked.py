"""xapi's own body framing for ``PUT /import_raw_vdi?...&chunked=true``, sans-I/O.

Each chunk is a 12-byte header, the disk offset (u64) then the data length (u32), both
little-endian, followed by that many data bytes; a header with both fields zero ends the body
(vhd-tool's ``chunked.ml``). Chunks come in any order; a zero-length chunk elsewhere writes
nothing. :class:`ChunkParser` takes any slicing of the body and returns events: :class:`Data`,
views of the fed buffers (never copies), and :class:`End`. Memory is constant and the work per
feed follows the chunks it touches, not its bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vhd.stream import Data  # bytes at a disk offset, as the VHD stream parser gives them

__all__ = [
    "END",
    "HEADER_SIZE",
    "MAX_LENGTH",
    "ChunkError",
    "ChunkParser",
    "Data",
    "End",
    "Event",
    "chunk_header",
]

_HEADER = struct.Struct("<QI")
HEADER_SIZE = _HEADER.size
"""Bytes in a chunk header: offset (u64 LE) then length (u32 LE)."""
assert HEADER_SIZE == 12

MAX_OFFSET = (1 << 64) - 1
MAX_LENGTH = (1 << 32) - 1
"""The largest length a header can carry."""

END = _HEADER.pack(0, 0)
"""The end marker: a header with offset 0 and length 0, and no data."""


def chunk_header(offset: int, length: int) -> bytes:
    """The 12-byte header announcing ``length`` data bytes to be written at disk ``offset``.

    Offset 0 with length 0 is refused: those bytes are :data:`END`, which ends the stream.
    """
    if not 0 <= offset <= MAX_OFFSET:
        raise ValueError(f"chunk offset {offset} is outside 0..{MAX_OFFSET}")
    if not 0 <= length <= MAX_LENGTH:
        raise ValueError(f"chunk length {length} is outside 0..{MAX_LENGTH}")
    if offset == 0 and length == 0:
        raise ValueError("a chunk of 0 bytes at offset 0 is the end marker; send END instead")
    return _HEADER.pack(offset, length)


class ChunkError(ValueError):
    """The chunked body is malformed; ``offset`` is the stream offset the message names."""

    def __init__(self, message: str, *, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


@dataclass(frozen=True)
class End:
    """The end marker arrived: the body is complete."""


Event = Data | End


class ChunkParser:
    """Parse one chunked body fed in arbitrary pieces, for a disk of ``size_limit`` bytes."""

    def __init__(self, *, size_limit: int) -> None:
        if size_limit < 0:
            raise ValueError(f"size_limit {size_limit} is negative")
        self.size_limit = size_limit
        self.position = 0
        """Stream offset of the next byte to be fed."""
        self._header = bytearray()
        """The start of a header split across feeds (fewer than 12 bytes)."""
        self._chunk_start = 0
        """Stream offset of the current chunk's header."""
        self._disk_offset = 0
        """Where the next data byte of the current chunk goes on the disk."""
        self._remaining = 0
        """Data bytes of the current chunk still to come."""
        self._length = 0
        """The current chunk's length."""
        self._ended = False
        self._error: ChunkError | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Consume ``data`` and return the events it completes.

        The :class:`Data` views are only valid as long as ``data`` is unchanged.
        """
        if self._error is not None:
            raise self._error
        view = memoryview(data).cast("B")
        events: list[Event] = []
        try:
            self._consume(view, events)
        except ChunkError as e:
            self._error = e
            raise
        return events

    def close(self) -> list[Event]:
        """Signal the end of the body; raises :class:`ChunkError` unless the end marker came."""
        if self._error is not None:
            raise self._error
        if self._ended:
            return []
        if self._remaining:
            got = self._length - self._remaining
            error = ChunkError(
                f"chunk at stream offset {self._chunk_start}: body ends at stream offset "
                f"{self.position} after {got} of its {self._length} data bytes",
                offset=self._chunk_start,
            )
        elif self._header:
            error = ChunkError(
                f"chunk at stream offset {self._chunk_start}: body ends at stream offset "
                f"{self.position} inside the header ({len(self._header)} of {HEADER_SIZE} bytes)",
                offset=self._chunk_start,
            )
        else:
            error = ChunkError(
                f"body ends at stream offset {self.position} without the end marker",
                offset=self.position,
            )
        self._error = error
        raise error

    def _consume(self, view: memoryview, events: list[Event]) -> None:
        pos, size = 0, len(view)
        while pos < size:
            if self._ended:
                raise ChunkError(
                    f"{size - pos} bytes at stream offset {self.position} after the end marker",
                    offset=self.position,
                )
            if self._remaining:
                take = min(self._remaining, size - pos)
                events.append(Data(self._disk_offset, view[pos : pos + take]))
                self._disk_offset += take
                self._remaining -= take
            elif self._header or size - pos < HEADER_SIZE:
                take = min(HEADER_SIZE - len(self._header), size - pos)
                if not self._header:
                    self._chunk_start = self.position
                self._header += view[pos : pos + take]
                if len(self._header) == HEADER_SIZE:
                    offset, length = _HEADER.unpack(self._header)
                    self._header.clear()
                    self._start_chunk(offset, length, events)
            else:
                take = HEADER_SIZE
                self._chunk_start = self.position
                offset, length = _HEADER.unpack_from(view, pos)
                self._start_chunk(offset, length, events)
            pos += take
            self.position += take

    def _start_chunk(self, offset: int, length: int, events: list[Event]) -> None:
        """A whole header has arrived (``position`` is still at its start or inside it)."""
        if offset == 0 and length == 0:
            self._ended = True
            events.append(End())
            return
        if offset + length > self.size_limit:
            raise ChunkError(
                f"chunk at stream offset {self._chunk_start}: data at {offset} + {length} bytes "
                f"reaches past the disk's {self.size_limit} bytes",
                offset=self._chunk_start,
            )
        self._disk_offset = offset
        self._length = length
        self._remaining = length
