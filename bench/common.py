"""What the benchmarks share: warming the page cache, running xfer."""

from __future__ import annotations

import os
import sys
from pathlib import Path

CHUNK = 8 << 20


def cache(*paths: Path) -> None:
    """Read the data extents of ``paths``, so that the timed command finds them cached.

    Nothing is dropped from the page cache: this only undoes the eviction of files left idle
    (memory pressure, or a proactive reclaimer such as DAMON on VMs).
    """
    buffer = bytearray(CHUNK)
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            size, pos = os.fstat(fd).st_size, 0
            while pos < size:
                try:
                    pos = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError:  # ENXIO: no data past pos
                    break
                end = os.lseek(fd, pos, os.SEEK_HOLE)
                while pos < end:
                    n = os.preadv(fd, [buffer], pos)
                    if n <= 0:
                        break
                    pos += n
        finally:
            os.close(fd)


def xfer_command() -> list[str]:
    """How to run xfer: the venv's entry point next to this interpreter, else ``-m``."""
    script = Path(sys.executable).parent / "xfer"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "migrate.cli.main"]
