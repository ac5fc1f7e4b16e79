"""Executing plans into a file descriptor: a regular file, a pipe or a socket.

Into a regular file, zeros become holes and copies go through one reused buffer with
pread/pwrite (faster here than copy_file_range into a new file); into anything else, copies
go through ``os.sendfile`` and zeros are written from a shared zero buffer.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable

from vhd.elements import Copy, Element, Literal, Zeros
from vhd.errors import VhdError
from vhd.file import pwrite_all, write_all

BUFFER_SIZE = 4 << 20
_ZEROS = bytes(1 << 20)

Progress = Callable[[int], None]
"""Called with the number of bytes just produced."""


def write_plan(elements: Iterable[Element], fd: int, progress: Progress | None = None) -> int:
    """Write every element to ``fd`` from its current position; returns the bytes produced.

    A regular file must have nothing past the current position (zeros are left as holes).
    """
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        base = os.lseek(fd, 0, os.SEEK_CUR)
        if st.st_size > base:
            raise VhdError("destination file already holds data past its position")
        total = _to_file(elements, fd, base, progress)
        os.ftruncate(fd, base + total)
        os.lseek(fd, base + total, os.SEEK_SET)
        return total
    return _to_stream(elements, fd, progress)


def _to_file(elements: Iterable[Element], fd: int, base: int, progress: Progress | None) -> int:
    buffer = memoryview(bytearray(BUFFER_SIZE))
    pos = base
    for e in elements:
        if isinstance(e, Literal):
            pwrite_all(fd, e.data, pos)
        elif isinstance(e, Copy):
            src, done = e.file.fileno(), 0
            while done < e.length:
                n = os.preadv(src, [buffer[: min(BUFFER_SIZE, e.length - done)]], e.offset + done)
                if n <= 0:
                    raise VhdError(
                        "source file ended early", offset=e.offset + done, path=e.file.path
                    )
                pwrite_all(fd, buffer[:n], pos + done)
                done += n
                if progress:
                    progress(n)
            pos += e.length
            continue
        pos += e.length
        if progress:
            progress(e.length)
    return pos - base


def _to_stream(elements: Iterable[Element], fd: int, progress: Progress | None) -> int:
    total = 0
    for e in elements:
        if isinstance(e, Literal):
            write_all(fd, e.data)
        elif isinstance(e, Zeros):
            left = e.length
            while left:
                n = min(left, len(_ZEROS))
                write_all(fd, memoryview(_ZEROS)[:n])
                left -= n
        else:
            src, offset, left = e.file.fileno(), e.offset, e.length
            while left:
                n = os.sendfile(fd, src, offset, min(left, 1 << 30))
                if n == 0:
                    raise VhdError("source file ended early", offset=offset, path=e.file.path)
                offset, left = offset + n, left - n
        total += e.length
        if progress:
            progress(e.length)
    return total
