"""xfer and the real qemu-img / qemu-io read and write each other's VHD images.

qemu 7.2 needs ``-f vpc`` (it would take a fixed VHD for raw), cannot ``check`` vpc images and
cannot create differencing images; it ignores the parent of one when reading it.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

import vhd
from support import (
    BLOCK,
    SECTOR,
    GiB,
    KiB,
    MiB,
    Xfer,
    disk_content,
    info_json,
    ok,
    qemu_convert_to_vpc,
    qemu_raw,
    read_all,
    run,
    write_raw,
)

# Helpers


def qemu_info(qemu_img: str, path: Path) -> dict[str, object]:
    """``qemu-img info -f vpc --output=json``."""
    info: dict[str, object] = json.loads(
        run(qemu_img, "info", "-f", "vpc", "--output=json", str(path)).stdout
    )
    return info


def xfer_size(path: Path) -> int:
    """The virtual size vhd.Image reports."""
    with vhd.Image.open(str(path)) as image:
        return image.size


def qemu_data_blocks(qemu_img: str, path: Path, block_size: int = BLOCK) -> set[int]:
    """Blocks that ``qemu-img map`` reports as holding data (allocated in the image)."""
    extents = json.loads(run(qemu_img, "map", "-f", "vpc", "--output=json", str(path)).stdout)
    blocks: set[int] = set()
    for e in extents:
        if e["data"]:
            start, end = e["start"], e["start"] + e["length"]
            blocks.update(range(start // block_size, -(-end // block_size)))
    return blocks


def xfer_create(xfer: Xfer, path: Path, size: int, fixed: bool) -> None:
    """``xfer vhd create`` a dynamic or fixed image of ``size`` bytes at ``path``."""
    options = ["--size", str(size), *(["--fixed"] if fixed else [])]
    ok(xfer("vhd", "create", str(path), *options), quiet=False)


def qemu_io_write(qemu_io: str, path: Path, writes: list[tuple[int, int, int]]) -> None:
    """``qemu-io -f vpc -c 'write -P PATTERN OFFSET LEN'`` for each (pattern, offset, length)."""
    cmds: list[str] = []
    for pattern, offset, length in writes:
        cmds += ["-c", f"write -P {pattern:#x} {offset} {length}"]
    proc = run(qemu_io, "-f", "vpc", *cmds, str(path))
    assert b"error" not in proc.stdout.lower() + proc.stderr.lower(), proc.stdout.decode()


def sparse_raw(path: Path, size: int, writes: list[tuple[int, bytes]]) -> bytes:
    """A sparse raw file of ``size`` bytes with ``writes`` applied; returns its contents."""
    write_raw(path, size, writes)
    return disk_content(size, writes)


def blocks_with_data(content: bytes, block_size: int = BLOCK) -> set[int]:
    """Indices of the ``block_size`` blocks of ``content`` holding a non-zero byte."""
    return {
        b
        for b in range(-(-len(content) // block_size))
        if content[b * block_size : (b + 1) * block_size].strip(b"\0")
    }


# Sizes: what xfer creates is what qemu sees

SIZES = {
    "10MiB": 10 * MiB,
    "10MiB+7sectors": 10 * MiB + 7 * SECTOR,
    "1GiB": GiB,
    "3GiB+512": 3 * GiB + SECTOR,
    "130GiB": 130 * GiB,
}
"""CHS-exact and not; 130 GiB is past the largest CHS geometry (about 127.5 GiB)."""

CREATED = [
    pytest.param(size, fixed, id=f"{name}-{'fixed' if fixed else 'dynamic'}")
    for name, size in SIZES.items()
    for fixed in (False, True)
    if not (fixed and size > 4 * GiB)  # fixed images stay a few (sparse) GiB
]


@pytest.mark.parametrize(("size", "fixed"), CREATED)
def test_xfer_created_size_is_exact_in_qemu(
    tmp_path: Path, xfer: Xfer, qemu_img: str, size: int, fixed: bool
) -> None:
    path = tmp_path / "disk.vhd"
    xfer_create(xfer, path, size, fixed)
    info = qemu_info(qemu_img, path)
    assert info["format"] == "vpc"
    assert info["virtual-size"] == size
    assert xfer_size(path) == size
    assert info_json(xfer, path, quiet=False)["virtual_size"] == size
    if fixed:
        assert path.stat().st_size == size + SECTOR
        assert path.stat().st_blocks * 512 < 1 * MiB, "a new fixed image should be sparse"
    else:
        assert qemu_data_blocks(qemu_img, path) == set()
        assert path.stat().st_size < 2 * MiB


@pytest.mark.parametrize("suffix", ["10M", "1G", "130G", "3145729K"])
def test_xfer_created_size_suffixes_are_exact_in_qemu(
    tmp_path: Path, xfer: Xfer, qemu_img: str, suffix: str
) -> None:
    path = tmp_path / "disk.vhd"
    ok(xfer("vhd", "create", str(path), "--size", suffix), quiet=False)
    expected = int(suffix[:-1]) << {"K": 10, "M": 20, "G": 30}[suffix[-1]]
    assert qemu_info(qemu_img, path)["virtual-size"] == expected


# Content: xfer writes, qemu reads

SMALL = 10 * MiB + 7 * SECTOR
"""Not CHS-exact, not a whole number of blocks: the last block is partial."""

XFER_WRITES = [
    (1, 100),  # unaligned inside the first sector
    (BLOCK - 300, 700),  # across the boundary of blocks 0 and 1
    (2 * BLOCK + 511, BLOCK + 5),  # unaligned, covers all of block 2, into block 3
    (3 * BLOCK + 4096, 4096),  # rewrite inside a block allocated by the previous write
    (SMALL - 10, 10),  # the last bytes of the disk, in the partial last block
    (0, 1),  # rewrite the first byte
    (SMALL - BLOCK // 2 - 3, 1000),  # inside the partial last block
]


@pytest.mark.slow
@pytest.mark.parametrize("fixed", [False, True], ids=["dynamic", "fixed"])
def test_xfer_writes_qemu_reads(tmp_path: Path, xfer: Xfer, qemu_img: str, fixed: bool) -> None:
    path = tmp_path / "disk.vhd"
    xfer_create(xfer, path, SMALL, fixed)
    rng = random.Random(1234)
    expected = bytearray(SMALL)
    with vhd.Image.open(str(path), writable=True) as image:
        for offset, length in XFER_WRITES:
            data = bytes(rng.randrange(1, 256) for _ in range(length))
            image.write(offset, data)
            expected[offset : offset + length] = data
        image.flush()
    mine = read_all(path)
    assert len(mine) == SMALL
    assert mine == expected
    theirs = qemu_raw(qemu_img, path, tmp_path / "qemu.raw")
    assert len(theirs) == SMALL
    assert theirs == mine
    reference = tmp_path / "expected.raw"
    reference.write_bytes(expected)
    run(qemu_img, "compare", "-f", "vpc", "-F", "raw", str(path), str(reference))
    assert qemu_info(qemu_img, path)["virtual-size"] == SMALL
    assert vhd.check(str(path)) == []
    if not fixed:
        # Every written byte is non-zero: exactly the blocks written to are allocated.
        assert qemu_data_blocks(qemu_img, path) == blocks_with_data(bytes(expected))


# Content: qemu writes, xfer reads

QEMU_WRITES = [
    (0xAB, 3000, 5000),  # unaligned inside block 0
    (0xCD, BLOCK - 1000, 3000),  # across blocks 0 and 1
    (0xEF, 3 * BLOCK + 77, BLOCK + 1),  # unaligned, across blocks 3 and 4
    (0x11, SMALL - 513, 513),  # the end of the disk
]


def written_by_qemu(tmp_path: Path, xfer: Xfer, qemu_io: str, fixed: bool) -> Path:
    """``disk.vhd``: a dynamic or fixed image of SMALL bytes created by xfer, then written by
    qemu-io (QEMU_WRITES)."""
    path = tmp_path / "disk.vhd"
    xfer_create(xfer, path, SMALL, fixed)
    qemu_io_write(qemu_io, path, QEMU_WRITES)
    return path


@pytest.mark.parametrize("fixed", [False, True], ids=["dynamic", "fixed"])
def test_qemu_writes_xfer_reads(
    tmp_path: Path, xfer: Xfer, qemu_img: str, qemu_io: str, fixed: bool
) -> None:
    path = written_by_qemu(tmp_path, xfer, qemu_io, fixed)
    expected = bytearray(SMALL)
    for pattern, offset, length in QEMU_WRITES:
        expected[offset : offset + length] = bytes([pattern]) * length
    assert read_all(path) == expected
    assert qemu_raw(qemu_img, path, tmp_path / "qemu.raw") == expected
    checked = xfer("vhd", "check", str(path))
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert checked.stderr == b""
    assert vhd.check(str(path)) == []

    # xfer keeps writing after qemu's allocations; qemu and xfer still agree.
    with vhd.Image.open(str(path), writable=True) as image:
        for offset, data in [(BLOCK * 2 + 5, b"\x42" * 9000), (3000 + 4999, b"\x77\x78")]:
            image.write(offset, data)
            expected[offset : offset + len(data)] = data
    assert read_all(path) == expected
    assert qemu_raw(qemu_img, path, tmp_path / "qemu2.raw") == expected
    assert vhd.check(str(path)) == []


# Images qemu-img writes


@pytest.mark.parametrize("size", [1_000_000, 5 * MiB + SECTOR], ids=["1000000", "5MiB+512"])
@pytest.mark.parametrize("force_size", [False, True], ids=["chs", "force_size"])
@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_qemu_created_images_read_by_xfer(
    tmp_path: Path, qemu_img: str, qemu_io: str, subformat: str, force_size: bool, size: int
) -> None:
    path = tmp_path / "qemu.vhd"
    options = f"subformat={subformat}" + (",force_size=on" if force_size else "")
    run(qemu_img, "create", "-q", "-f", "vpc", "-o", options, str(path), str(size))
    virtual = qemu_info(qemu_img, path)["virtual-size"]
    assert isinstance(virtual, int)
    assert size <= virtual < size + 64 * KiB  # qemu rounds up to CHS (and to a sector)
    with vhd.Image.open(str(path)) as image:
        assert image.size == virtual
        assert image.footer.type_name == subformat
        assert image.read(0, virtual) == bytes(virtual)
    assert vhd.check(str(path)) == []

    writes = [(0x5A, 1, 700), (0xA5, virtual // 2 - 333, 4096), (0x3C, virtual - 1500, 1500)]
    qemu_io_write(qemu_io, path, writes)
    theirs = qemu_raw(qemu_img, path, tmp_path / "qemu.raw")
    assert len(theirs) == virtual
    assert read_all(path) == theirs
    assert theirs[virtual - 1500 :] == b"\x3c" * 1500
    assert vhd.check(str(path)) == []

    # xfer writes into qemu's layout; qemu reads it back.
    with vhd.Image.open(str(path), writable=True) as image:
        image.write(virtual // 3 + 1, b"xfer was here" * 100)
    assert read_all(path) == qemu_raw(qemu_img, path, tmp_path / "qemu2.raw")
    assert vhd.check(str(path)) == []


def test_qemu_converted_sparse_raw_read_by_xfer(tmp_path: Path, xfer: Xfer, qemu_img: str) -> None:
    size = 20 * MiB
    rng = random.Random(7)
    raw = tmp_path / "src.raw"
    content = sparse_raw(
        raw,
        size,
        [(3_000_000, b"hello"), (15_000_000, rng.randbytes(100_000)), (size - 4, b"tail")],
    )
    path = tmp_path / "qemu.vhd"
    qemu_convert_to_vpc(qemu_img, raw, path, "dynamic")
    virtual = qemu_info(qemu_img, path)["virtual-size"]
    assert isinstance(virtual, int) and virtual >= size
    theirs = qemu_raw(qemu_img, path, tmp_path / "qemu.raw")
    mine = read_all(path)
    assert mine == theirs
    assert mine[:size] == content
    assert mine[size:] == bytes(virtual - size)
    assert xfer_size(path) == virtual
    assert vhd.check(str(path)) == []
    # Only the blocks holding data were allocated by qemu, and xfer sees the same ones.
    expected_blocks = blocks_with_data(content)
    assert qemu_data_blocks(qemu_img, path) == expected_blocks
    assert info_json(xfer, path, quiet=False)["allocated_blocks"] == len(expected_blocks)
    # xfer converts qemu's image back to raw.
    out = tmp_path / "back.raw"
    ok(xfer("vhd", "convert", str(path), str(out)), quiet=False)
    assert out.read_bytes() == mine


# xfer vhd convert, checked by qemu


def _has_data_at(path: Path, offset: int) -> bool:
    """Whether the file has a data extent (not a hole) at ``offset``."""
    with open(path, "rb") as f:
        try:
            return os.lseek(f.fileno(), offset, os.SEEK_DATA) == offset
        except OSError:
            return False


@pytest.mark.slow
def test_xfer_convert_round_trip_checked_by_qemu(tmp_path: Path, xfer: Xfer, qemu_img: str) -> None:
    size = 24 * MiB + 3 * SECTOR
    rng = random.Random(99)
    raw = tmp_path / "src.raw"
    content = sparse_raw(
        raw,
        size,
        [
            (1, b"\x01"),  # block 0
            (4 * MiB, bytes(BLOCK)),  # block 2: written explicitly, all zeros
            (BLOCK * 5 - 100, rng.randbytes(200)),  # across blocks 4 and 5
            (BLOCK * 8 + 12345, rng.randbytes(70_000)),  # block 8
            (size - 3, b"end"),  # the partial last block, 12
        ],
    )
    assert _has_data_at(raw, 4 * MiB), "the zero block must be real data, not a hole"
    expected_blocks = {0, 4, 5, 8, 12}
    assert blocks_with_data(content) == expected_blocks

    out = tmp_path / "out.vhd"
    ok(xfer("vhd", "convert", str(raw), str(out)), quiet=False)
    assert qemu_info(qemu_img, out)["virtual-size"] == size
    run(qemu_img, "compare", "-f", "vpc", "-F", "raw", str(out), str(raw))
    assert qemu_raw(qemu_img, out, tmp_path / "qemu.raw") == content
    assert read_all(out) == content
    assert vhd.check(str(out)) == []

    # Only the non-zero blocks are allocated: not the explicit zero block 2.
    assert qemu_data_blocks(qemu_img, out) == expected_blocks
    info = info_json(xfer, out, quiet=False)
    assert info["type"] == "dynamic"
    assert info["allocated_blocks"] == len(expected_blocks)
    # Footer copy, header, one sector of BAT (13 entries), 5 blocks of bitmap + data whose data
    # starts 4 KiB-aligned (the first bitmap at 3584, then one block every BLOCK + 4096), footer.
    assert out.stat().st_size == 3584 + 4 * (BLOCK + 4096) + 512 + BLOCK + 512
    with vhd.Image.open(str(out)) as image:
        allocated = {b for b in range(len(image.bat)) if image.bat[b] != 0xFFFFFFFF}
    assert allocated == expected_blocks

    back = tmp_path / "back.raw"
    ok(xfer("vhd", "convert", str(out), str(back)), quiet=False)
    assert back.stat().st_size == size
    assert back.read_bytes() == content
    run(qemu_img, "compare", "-f", "vpc", "-F", "raw", str(out), str(back))

    # Explicit --to, whatever the extension says.
    img = tmp_path / "disk.img"
    ok(xfer("vhd", "convert", str(raw), str(img), "--to", "vhd"), quiet=False)
    run(qemu_img, "compare", "-f", "vpc", "-F", "raw", str(img), str(raw))


@pytest.mark.slow
def test_xfer_convert_huge_sparse_round_trip(tmp_path: Path, xfer: Xfer, qemu_img: str) -> None:
    """130 GiB, past the largest CHS geometry, almost all holes: cheap, and sizes stay exact."""
    size = 130 * GiB
    writes = [(12345, b"head"), (128 * GiB + MiB + 1, b"middle"), (size - 4, b"tail")]
    raw = tmp_path / "big.raw"
    write_raw(raw, size, writes)
    out = tmp_path / "big.vhd"
    ok(xfer("vhd", "convert", str(raw), str(out)), quiet=False)
    assert qemu_info(qemu_img, out)["virtual-size"] == size
    assert info_json(xfer, out, quiet=False)["virtual_size"] == size
    expected_blocks = {offset // BLOCK for offset, _ in writes}
    assert qemu_data_blocks(qemu_img, out) == expected_blocks
    assert out.stat().st_size < 4 * (BLOCK + 512) + 512 * KiB
    run(qemu_img, "compare", "-f", "vpc", "-F", "raw", str(out), str(raw))
    with vhd.Image.open(str(out)) as image:
        for offset, data in writes:
            assert image.read(offset - 1, len(data) + 2) == b"\0" + data + b"\0"[: size - offset]

    back = tmp_path / "back.raw"
    ok(xfer("vhd", "convert", str(out), str(back)), quiet=False)
    assert back.stat().st_size == size
    assert back.stat().st_blocks * 512 <= len(expected_blocks) * BLOCK, "output is not sparse"
    with open(back, "rb") as f:
        for offset, data in writes:
            f.seek(offset)
            assert f.read(len(data)) == data
    run(qemu_img, "compare", "-f", "raw", "-F", "raw", str(back), str(raw))


def test_xfer_convert_raw_of_odd_size(tmp_path: Path, xfer: Xfer, qemu_img: str) -> None:
    """A raw file whose size is not a whole number of sectors: either xfer refuses it in one
    error line, or the VHD it writes shows qemu every byte (zero padded to a sector)."""
    size = 1_000_001
    raw = tmp_path / "odd.raw"
    content = random.Random(11).randbytes(size)
    raw.write_bytes(content)
    out = tmp_path / "odd.vhd"
    proc = xfer("vhd", "convert", str(raw), str(out))
    if proc.returncode != 0:
        assert proc.returncode == 1 and proc.stderr.decode().startswith("xfer: error: ")
        assert len(proc.stderr.splitlines()) == 1
        assert not out.exists()
        return
    virtual = qemu_info(qemu_img, out)["virtual-size"]
    assert isinstance(virtual, int)
    assert virtual >= size, f"qemu sees {virtual} bytes of a {size}-byte disk"
    theirs = qemu_raw(qemu_img, out, tmp_path / "qemu.raw")
    assert theirs[:size] == content
    assert theirs[size:] == bytes(len(theirs) - size)


@pytest.mark.parametrize("fixed", [False, True], ids=["dynamic", "fixed"])
def test_xfer_convert_qemu_written_vhd_to_raw(
    tmp_path: Path, xfer: Xfer, qemu_img: str, qemu_io: str, fixed: bool
) -> None:
    path = written_by_qemu(tmp_path, xfer, qemu_io, fixed)
    out = tmp_path / "disk.raw"
    ok(xfer("vhd", "convert", str(path), str(out)), quiet=False)
    assert out.read_bytes() == qemu_raw(qemu_img, path, tmp_path / "qemu.raw")
    run(qemu_img, "compare", "-f", "vpc", "-F", "raw", str(path), str(out))


# Differencing images: xfer reads them through the parent; qemu only reports their size


@pytest.mark.slow
def test_differencing_delta_and_full(tmp_path: Path, xfer: Xfer, qemu_img: str) -> None:
    size = 10 * MiB
    base, child = tmp_path / "base.vhd", tmp_path / "child.vhd"
    ok(xfer("vhd", "create", str(base), "--size", "10M"), quiet=False)
    rng = random.Random(5)
    expected = bytearray(size)
    with vhd.Image.open(str(base), writable=True) as image:
        for offset, length in [(100, 5000), (BLOCK * 2 - 10, 20), (BLOCK * 4 + 1, 4096)]:
            data = rng.randbytes(length)
            image.write(offset, data)
            expected[offset : offset + length] = data
    base_content = bytes(expected)

    ok(xfer("vhd", "create", str(child), "--parent", str(base)), quiet=False)
    info = info_json(xfer, child, quiet=False)
    assert info["type"] == "differencing"
    assert info["virtual_size"] == size
    with vhd.Image.open(str(base)) as image:
        base_uuid = str(image.footer.uuid)
    parent = info["parent"]
    assert isinstance(parent, dict)
    assert parent["uuid"] == base_uuid
    assert qemu_info(qemu_img, child)["virtual-size"] == size

    with vhd.Image.open(str(child), writable=True) as image:
        for offset, length in [
            (150, 10),  # partial sectors over the base's data in block 0
            (BLOCK * 3 + 700, 1300),  # block 3, empty in the base
            (BLOCK * 4 + 4000, 200),  # block 4, next to the base's data
            (size - 1, 1),  # the last byte
        ]:
            data = rng.randbytes(length)
            image.write(offset, data)
            expected[offset : offset + length] = data
        assert image.read(0, size) == expected
    assert read_all(base) == base_content, "writes into the child must not touch the base"
    assert vhd.check(str(child)) == []

    delta, full = tmp_path / "delta.vhd", tmp_path / "full.raw"
    ok(xfer("vhd", "convert", str(child), str(delta), "--base", str(base)), quiet=False)
    ok(xfer("vhd", "convert", str(child), str(full)), quiet=False)
    assert full.read_bytes() == expected
    assert vhd.check(str(delta)) == []

    with vhd.Image.open(str(delta)) as image:
        assert image.footer.type_name == "differencing"
        assert image.parent is not None
        assert str(image.parent.footer.uuid) == base_uuid
        assert image.read(0, image.size) == expected
    delta_info = info_json(xfer, delta, quiet=False)
    assert delta_info["type"] == "differencing"
    # The delta holds the blocks the child changed (0, 3, 4), not those of the base alone (1).
    assert delta_info["allocated_blocks"] == 3
    with vhd.Image.open(str(delta), parents=False) as image:
        assert {b for b in range(len(image.bat)) if image.bat[b] != 0xFFFFFFFF} == {0, 3, 4}
    assert qemu_info(qemu_img, delta)["virtual-size"] == size

    out = tmp_path / "out.raw"
    ok(xfer("vhd", "convert", str(delta), str(out)), quiet=False)
    assert out.read_bytes() == full.read_bytes()

    # A delta in another directory names its parent relative to itself.
    (tmp_path / "sub").mkdir()
    far = tmp_path / "sub" / "delta.vhd"
    ok(xfer("vhd", "convert", str(child), str(far), "--base", str(base)), quiet=False)
    with vhd.Image.open(str(far)) as image:
        assert image.header is not None and image.header.parent_name == "../base.vhd"
        assert image.read(0, image.size) == expected


def qemu_over(qemu_img: str, delta: Path, base: Path) -> bytes:
    """The disk qemu-img reads for ``delta`` over ``base``: qemu ignores a differencing
    image's parent, so each block ``qemu-img map`` shows allocated in ``delta`` is taken from
    its conversion, every other block from the base's."""
    mine = qemu_raw(qemu_img, delta, delta.with_suffix(".qemu.raw"))
    over = bytearray(qemu_raw(qemu_img, base, base.with_suffix(".qemu.raw")))
    for b in qemu_data_blocks(qemu_img, delta):
        over[b * BLOCK : (b + 1) * BLOCK] = mine[b * BLOCK : (b + 1) * BLOCK]
    return bytes(over)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["raw", "unrelated-vhd"])
def test_delta_of_an_unrelated_source_holds_only_the_changed_blocks(
    tmp_path: Path, xfer: Xfer, qemu_img: str, source: str
) -> None:
    """A raw disk (or a VHD of it, unrelated to the base) that is the base's content with
    192 KiB changed: the delta over the base holds the blocks the change touches, not every
    allocated block, and reads back (in qemu-img and in xfer) as the new disk exactly."""
    size = 10 * MiB
    base = tmp_path / "base.vhd"
    ok(xfer("vhd", "create", str(base), "--size", "10M"), quiet=False)
    rng = random.Random(9)
    with vhd.Image.open(str(base), writable=True) as image:
        for b in range(5):  # every block holds data, the last one only in part
            image.write(b * BLOCK + 4096, rng.randbytes(BLOCK - 8192 if b < 4 else 100 * KiB))
    new = tmp_path / "new.raw"
    ok(xfer("vhd", "convert", str(base), str(new)), quiet=False)
    changes = [(BLOCK + 100 * KiB, 64 * KiB), (4 * BLOCK - 64 * KiB, 128 * KiB)]  # blocks 1, 3, 4
    with open(new, "r+b") as f:
        for offset, length in changes:
            f.seek(offset)
            f.write(rng.randbytes(length))
    expected = new.read_bytes()
    src = new
    if source == "unrelated-vhd":
        src = tmp_path / "new.vhd"
        ok(xfer("vhd", "convert", str(new), str(src)), quiet=False)

    delta = tmp_path / "delta.vhd"
    ok(xfer("vhd", "convert", str(src), str(delta), "--base", str(base)), quiet=False)
    assert vhd.check(str(delta)) == []
    with vhd.Image.open(str(delta), parents=False) as image:
        assert [b for b, e in enumerate(image.bat.tolist()) if e != 0xFFFFFFFF] == [1, 3, 4]
    assert delta.stat().st_size < 3 * (BLOCK + 4 * KiB) + 8 * KiB
    assert qemu_data_blocks(qemu_img, delta) == {1, 3, 4}
    assert qemu_over(qemu_img, delta, base) == expected
    assert read_all(delta) == expected
    assert len(expected) == size
