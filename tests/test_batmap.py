"""blktap images carry a batmap after the BAT: tolerated on read, counted as metadata by check."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import vhd
from support import BLOCK, SIZE
from vhd.format import DYNAMIC, DynamicHeader, Footer
from vhd.stream import Data, StreamParser


def blktap_image(path: Path, data: bytes) -> None:
    """A dynamic image laid out as blktap (creator ``tap`` 1.3) writes it: BAT at 1536, the
    batmap header at 2048 and its map at 2560, then block 1 at 3072 holding ``data``."""
    footer = Footer.new(DYNAMIC, SIZE, uuid=uuid.uuid4(), data_offset=512).replace(
        creator_version=0x00010003
    )
    assert footer.creator_app == b"tap\0"
    header = DynamicHeader(table_offset=1536, max_table_entries=SIZE // BLOCK)
    bat = b"".join((3072 // 512 if b == 1 else 0xFFFFFFFF).to_bytes(4, "big") for b in range(4))
    batmap = (
        b"tdbatmap"
        + (2560).to_bytes(8, "big")  # map offset
        + (1).to_bytes(4, "big")  # map size in sectors
        + (0x00010002).to_bytes(4, "big")  # version
        + bytes(4)  # checksum (of the map; not checked by readers)
    ).ljust(512, b"\0")
    bitmap_map = bytes([0b01000000]).ljust(512, b"\0")  # block 1 fully allocated
    image = (
        footer.build()
        + header.build()
        + bat.ljust(512, b"\0")  # blktap pads the BAT with zeros
        + batmap
        + bitmap_map
        + b"\xff" * 512
        + data
        + footer.build()
    )
    path.write_bytes(image)


def test_blktap_batmap_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "tap.vhd"
    data = random.Random(7).randbytes(BLOCK)
    blktap_image(path, data)
    expected = bytes(BLOCK) + data + bytes(2 * BLOCK)

    with vhd.Image.open(str(path)) as image:
        assert image.read(0, SIZE) == expected
    assert vhd.check(str(path)) == []

    disk = bytearray(SIZE)
    parser = StreamParser()
    for event in parser.feed(path.read_bytes()) + parser.close():
        if isinstance(event, Data):
            disk[event.offset : event.offset + len(event.data)] = event.data
    assert bytes(disk) == expected


def test_block_over_the_batmap_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "tap.vhd"
    blktap_image(path, bytes(BLOCK))
    raw = bytearray(path.read_bytes())
    raw[1536 + 4 : 1536 + 8] = (2560 // 512).to_bytes(4, "big")  # block 1 onto the batmap's map
    path.write_bytes(raw)
    problems = vhd.check(str(path))
    assert [(p.field, p.offset) for p in problems] == [("bat[1]", 1540)]
