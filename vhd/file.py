"""The small file interface images are accessed through: positional reads and writes on an fd."""

from __future__ import annotations

import os
import stat
from typing import Self

from vhd.errors import VhdError


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """All of ``data`` written to ``fd`` at its position (a pipe or socket may take less
    per call)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
    """All of ``data`` written at ``offset`` of ``fd``; the offset after it."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
    return offset


class File:
    """An open regular file, read and written by position only (pread/pwrite).

    Plans refer to files of this type for their copies, so that a transport can hand the
    descriptor to ``os.sendfile`` or ``os.copy_file_range``.
    """

    def __init__(self, path: str, *, writable: bool = False, create: bool = False) -> None:
        flags = os.O_RDWR if writable or create else os.O_RDONLY
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        self.path = path
        self.writable = writable or create
        try:
            # Non-blocking so that opening a FIFO cannot hang; it is refused just below.
            self.fd = os.open(path, flags | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
        except OSError as e:
            raise VhdError(e.strerror or str(e), path=path) from e
        st = os.fstat(self.fd)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            os.close(self.fd)
            raise VhdError("not a regular file or block device", path=path)
        os.set_blocking(self.fd, True)
        self.size = os.lseek(self.fd, 0, os.SEEK_END)
        self.mtime = st.st_mtime
        self.identity = (st.st_dev, st.st_ino)

    def fileno(self) -> int:
        """The descriptor, for zero-copy transports."""
        return self.fd

    def pread(self, length: int, offset: int, *, field: str = "data") -> bytes:
        """Exactly ``length`` bytes at ``offset``; a short read is a VhdError naming ``field``."""
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise VhdError(
                f"file ends after {len(data)} of {length} bytes",
                field=field,
                offset=offset,
                path=self.path,
            )
        return data

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        """Write all of ``data`` at ``offset``, growing the recorded size as needed."""
        self.size = max(self.size, pwrite_all(self.fd, data, offset))

    def truncate(self, size: int) -> None:
        """Set the file's length."""
        os.ftruncate(self.fd, size)
        self.size = size

    def sync(self) -> None:
        """Flush data and metadata to stable storage."""
        os.fsync(self.fd)

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
