"""Executing plans: one dispatch over elements, and sinks that say where their bytes land.

:func:`dispatch` hands each element to a sink as ``literal(data)``, ``copy(file, offset,
length)`` or ``zeros(length)``. The sinks: a file written from an offset (copies through one
reused buffer, zeros skipped so that a new file keeps holes), the same with copies by
``os.copy_file_range``, a pipe or socket (copies by ``os.sendfile``, zeros written) and a memory
buffer (copies read straight into it). :func:`write_plan` picks the sink a descriptor needs.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

from vhd.elements import Copy, Element, Literal
from vhd.errors import VhdError
from vhd.file import File, pwrite_all, write_all

BUFFER_SIZE = 4 << 20
"""The buffer a file sink copies through."""
ZEROS = memoryview(bytes(1 << 20))
"""A shared megabyte of zeros, for sinks that must write them."""
T_co = TypeVar("T_co", covariant=True)


class Sink(Protocol[T_co]):
    """Where executed elements go, each at the position the previous one ended; its methods
    return nothing (``Sink[None]``), or what the caller awaits."""

    def literal(self, data: bytes) -> T_co:
        """The bytes ``data``."""
        ...

    def copy(self, file: File, offset: int, length: int) -> T_co:
        """``length`` bytes of ``file`` from ``offset``."""
        ...

    def zeros(self, length: int) -> T_co:
        """``length`` zero bytes."""
        ...


def dispatch(elements: Iterable[Element], sink: Sink[T_co]) -> Iterator[tuple[int, T_co]]:
    """Each element handed to ``sink`` in order, as the length it stands for and what the
    sink's method returned."""
    for e in elements:
        if isinstance(e, Literal):
            yield e.length, sink.literal(e.data)
        elif isinstance(e, Copy):
            yield e.length, sink.copy(e.file, e.offset, e.length)
        else:
            yield e.length, sink.zeros(e.length)


def execute(elements: Iterable[Element], sink: Sink[None]) -> int:
    """Hand every element to ``sink`` in order; returns the bytes they stand for."""
    return sum(length for length, _ in dispatch(elements, sink))


def _ended(file: File, offset: int) -> VhdError:
    return VhdError("source file ended early", offset=offset, path=file.path)


class FileSink:
    """Writes into the regular file ``fd`` from ``position`` on: literals by pwrite, copies
    through one reused buffer (pread, pwrite), zeros skipped (a hole where nothing was
    written, the old bytes elsewhere)."""

    def __init__(self, fd: int, position: int) -> None:
        self.fd = fd
        self.position = position
        """Where the next element goes."""
        self._buffer: memoryview | None = None

    def literal(self, data: bytes) -> None:
        """Write ``data`` at the position."""
        self.position = pwrite_all(self.fd, data, self.position)

    def copy(self, file: File, offset: int, length: int) -> None:
        """Copy through the buffer, a piece of at most :data:`BUFFER_SIZE` at a time."""
        if self._buffer is None:
            self._buffer = memoryview(bytearray(BUFFER_SIZE))
        src, buffer, end = file.fileno(), self._buffer, offset + length
        while offset < end:
            n = os.preadv(src, [buffer[: min(BUFFER_SIZE, end - offset)]], offset)
            if n <= 0:
                raise _ended(file, offset)
            self.position = pwrite_all(self.fd, buffer[:n], self.position)
            offset += n

    def zeros(self, length: int) -> None:
        """Skip ``length`` bytes."""
        self.position += length


class CopyRangeSink(FileSink):
    """A :class:`FileSink` whose copies the kernel makes (``os.copy_file_range``): no bytes
    pass through this process, and file systems that can share extents do."""

    def copy(self, file: File, offset: int, length: int) -> None:
        """Copy with ``copy_file_range``."""
        src, end = file.fileno(), offset + length
        while offset < end:
            n = os.copy_file_range(src, self.fd, end - offset, offset, self.position)
            if n == 0:
                raise _ended(file, offset)
            offset += n
            self.position += n


class StreamSink:
    """Writes to a pipe or socket ``fd`` at its position: copies by ``os.sendfile``, zeros
    from a shared zero buffer."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def literal(self, data: bytes) -> None:
        """Write ``data``."""
        write_all(self.fd, data)

    def copy(self, file: File, offset: int, length: int) -> None:
        """Send with ``sendfile``."""
        src, end = file.fileno(), offset + length
        while offset < end:
            n = os.sendfile(self.fd, src, offset, min(end - offset, 1 << 30))
            if n == 0:
                raise _ended(file, offset)
            offset += n

    def zeros(self, length: int) -> None:
        """Write ``length`` zeros."""
        while length:
            n = min(length, len(ZEROS))
            write_all(self.fd, ZEROS[:n])
            length -= n


class BufferSink:
    """Fills the writable ``buffer`` from its start: copies read straight into it (preadv),
    literals and zeros copied in."""

    def __init__(self, buffer: bytearray | memoryview) -> None:
        self.view = memoryview(buffer).cast("B")
        self.position = 0
        """Where the next element goes."""

    def literal(self, data: bytes) -> None:
        """Copy ``data`` in."""
        self.view[self.position : self.position + len(data)] = data
        self.position += len(data)

    def copy(self, file: File, offset: int, length: int) -> None:
        """Read into the buffer."""
        src, end = file.fileno(), offset + length
        while offset < end:
            n = os.preadv(src, [self.view[self.position : self.position + end - offset]], offset)
            if n <= 0:
                raise _ended(file, offset)
            offset += n
            self.position += n

    def zeros(self, length: int) -> None:
        """Fill ``length`` bytes with zeros."""
        while length:
            n = min(length, len(ZEROS))
            self.view[self.position : self.position + n] = ZEROS[:n]
            self.position += n
            length -= n


def write_plan(elements: Iterable[Element], fd: int) -> int:
    """Write every element to ``fd`` from its current position; returns the bytes produced.

    A regular file must have nothing past the current position (zeros are left as holes);
    anything else is written as a stream.
    """
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return execute(elements, StreamSink(fd))
    start = os.lseek(fd, 0, os.SEEK_CUR)
    if st.st_size > start:
        raise VhdError("destination file already holds data past its position")
    total = execute(elements, FileSink(fd, start))
    os.ftruncate(fd, start + total)
    os.lseek(fd, start + total, os.SEEK_SET)
    return total
