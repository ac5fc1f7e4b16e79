"""Writing a file ``O_DIRECT`` where the data allows it and through the page cache elsewhere:
an import's staged image (:mod:`migrate.storage.staging`) and an export's output file
(:mod:`migrate.cli.diskfile`) both write this way."""

from __future__ import annotations

import errno
import os

from vhd.file import pwrite_all


class DirectWriter:
    """Writes into the file ``path``, open as ``fd``, through a second descriptor opened
    ``O_DIRECT`` when a write's file offset, length and memory address are multiples of
    ``alignment``, through ``fd`` (the page cache) otherwise. A file system that refuses
    ``O_DIRECT`` (at the open, or a write with EINVAL: it wants other alignments) gets every
    write through the page cache from then on."""

    def __init__(self, path: str, fd: int, alignment: int) -> None:
        self.fd = fd
        self.alignment = alignment
        try:
            self.direct_fd = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
            """The ``O_DIRECT`` descriptor; -1 once refused or closed."""
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self.direct_fd = -1

    def write(self, data: memoryview, offset: int, address: int) -> None:
        """Write ``data`` (lying at memory ``address``) at ``offset``, ``O_DIRECT`` if
        aligned."""
        if self.direct_fd >= 0 and not (offset | len(data) | address) % self.alignment:
            try:
                pwrite_all(self.direct_fd, data, offset)
                return
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self.close()
        pwrite_all(self.fd, data, offset)

    def close(self) -> None:
        """Close the ``O_DIRECT`` descriptor (``fd`` is the caller's)."""
        if self.direct_fd >= 0:
            os.close(self.direct_fd)
            self.direct_fd = -1
