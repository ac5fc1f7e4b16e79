"""migrate.cli.diskfile.DiskFile: a stream written into a file, O_DIRECT where aligned,
zeros as holes, on the temporary directory's file system."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrate.cli import diskfile
from migrate.cli.diskfile import ALIGN, HOLE_UNIT, STAGE, DiskFile

MiB = 1 << 20


def pieces(
    data: bytes, sizes: tuple[int, ...] = (1, 4095, 300_000, 65536, 7 * MiB)
) -> Iterator[bytes]:
    """``data`` cut in pieces of the given sizes in turn (odd ones: nothing lines up)."""
    at, turn = 0, 0
    while at < len(data):
        size = sizes[turn % len(sizes)]
        yield data[at : at + size]
        at, turn = at + size, turn + 1


def write(path: Path, data: bytes, offset: int = 0) -> DiskFile:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        disk = DiskFile(str(path), fd, offset)
        disk.write(pieces(data))
        disk.finish()
        os.fsync(fd)
    finally:
        os.close(fd)
    return disk


def test_stream_lands_whole(tmp_path: Path) -> None:
    data = os.urandom(3 * STAGE + 12345)
    out = tmp_path / "disk.raw"
    disk = write(out, data)
    assert out.read_bytes() == data and disk.end == len(data)


def test_zeros_become_holes(tmp_path: Path) -> None:
    """Data at both ends of 40 MiB of zeros: the file's length is whole, its blocks are the
    data's (to the hole unit), and zeros ending the stream are a hole too."""
    head, tail = os.urandom(MiB + 100), os.urandom(HOLE_UNIT)
    data = head + bytes(40 * MiB) + tail + bytes(5 * MiB)
    out = tmp_path / "sparse.raw"
    write(out, data)
    assert out.read_bytes() == data
    assert out.stat().st_blocks * 512 <= len(head) + len(tail) + 2 * HOLE_UNIT


def test_resume_at_an_unaligned_offset(tmp_path: Path) -> None:
    """A file that already holds 5000 bytes (a cut download) goes on from there."""
    data = os.urandom(2 * STAGE + 777)
    out = tmp_path / "resumed.raw"
    out.write_bytes(data[:5000])
    assert 5000 % ALIGN
    write(out, data[5000:], offset=5000)
    assert out.read_bytes() == data


def test_finish_after_a_cut_keeps_every_byte_given(tmp_path: Path) -> None:
    """finish() writes what was held: the file is the prefix that arrived."""
    data = os.urandom(STAGE + 3 * MiB)
    out = tmp_path / "cut.raw"
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        disk = DiskFile(str(out), fd, 0)
        disk.write(pieces(data[: STAGE + MiB + 17]))
        disk.finish()
    finally:
        os.close(fd)
    assert out.read_bytes() == data[: STAGE + MiB + 17]


def test_direct_write_refused_falls_back_to_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write the kernel refuses O_DIRECT (an offset it cannot take, let through by an
    alignment made too lax here) goes through the page cache, and so does all that follows."""
    monkeypatch.setattr(diskfile, "ALIGN", 1)
    data = os.urandom(2 * STAGE + 4097) + bytes(3 * HOLE_UNIT) + b"end"
    out = tmp_path / "refused.raw"
    out.write_bytes(data[:5000])
    fd = os.open(out, os.O_RDWR)
    try:
        disk = DiskFile(str(out), fd, 5000)
        assert disk._writer.direct_fd >= 0
        disk.write(pieces(data[5000:]))
        assert disk._writer.direct_fd == -1  # refused at the first full buffer
        disk.finish()
    finally:
        os.close(fd)
    assert out.read_bytes() == data
