"""migrate.cli.saved_image: a suspend image file read back into RAM, CPU state and metadata,
as the demo and the VM tests look into a saved guest; a cut or damaged image refused."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from migrate.cli.saved_image import check_image, read_saved_vm
from migrate.formats import libxc
from migrate.formats.libxc import PAGE_SIZE, StreamError
from test_suspend import CONTEXT, METADATA, PAGES, image, libxc_stream, page


def test_an_image_reads_back_into_ram(tmp_path: Path) -> None:
    path = tmp_path / "vm.img"
    # page 2 comes with data first, then as XALLOC (all zero) in a later record
    first = libxc.page_data_header(np.array([2], dtype=np.uint64)) + page(2)
    stream = libxc_stream()
    head = stream.index(
        libxc.page_data_header(
            np.array([0, 1, 2, 5], dtype=np.uint64), np.array([0, 0, 1, 0], dtype=bool)
        )
    )
    path.write_bytes(image(stream=stream[:head] + first + stream[head:]))
    saved = read_saved_vm(str(path))
    assert saved.metadata == METADATA and saved.cpu_state == CONTEXT
    expected = bytearray(PAGES * PAGE_SIZE)
    for pfn in (0, 1, 5):
        expected[pfn * PAGE_SIZE : (pfn + 1) * PAGE_SIZE] = page(pfn)
    assert saved.memory[:] == expected


@pytest.mark.parametrize("cut", [5, 100, 3000, -20, -1])
def test_a_cut_image_is_refused(tmp_path: Path, cut: int) -> None:
    data = image()
    path = tmp_path / "vm.img"
    path.write_bytes(data[:cut])
    with pytest.raises(ValueError, match="ends"):
        read_saved_vm(str(path))


def test_a_damaged_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vm.img"
    path.write_bytes(b"XenSavedDomv1-\n" + image()[15:])
    with pytest.raises(StreamError, match="signature"):
        read_saved_vm(str(path))


def check(path: Path) -> object:
    fd = os.open(path, os.O_RDONLY)
    try:
        return check_image(fd, str(path))
    finally:
        os.close(fd)


def test_check_image_reads_every_record_but_the_page_data(tmp_path: Path) -> None:
    path = tmp_path / "vm.img"
    data = bytearray(image())
    path.write_bytes(data)
    assert check(path) == METADATA
    # page data is not looked at: a changed page still passes
    data[data.index(page(0))] ^= 0xFF
    path.write_bytes(data)
    assert check(path) == METADATA


@pytest.mark.parametrize("cut", [0, 5, 100, 3000, -20, -1])
def test_check_image_refuses_a_cut_image(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "vm.img"
    path.write_bytes(image()[:cut])
    with pytest.raises(ValueError, match=r"ends at offset|ends before"):
        check(path)


def test_check_image_refuses_what_follows_the_end(tmp_path: Path) -> None:
    path = tmp_path / "vm.img"
    path.write_bytes(image() + b"x")
    with pytest.raises(ValueError, match="bytes follow the image's End_of_image"):
        check(path)
