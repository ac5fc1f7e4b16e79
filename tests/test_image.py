"""vhd.Image: creating, reading and writing fixed, dynamic and differencing images and chains."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import vhd
from support import (
    BLOCK,
    SECTOR,
    SIZE,
    MiB,
    bat_of,
    patch,
    pattern,
    qemu_raw,
    read_all,
    run,
)
from vhd import Copy, Image, VhdError
from vhd.format import (
    DIFFERENCING,
    DYNAMIC,
    FIXED,
    PLATFORM_MACX,
    PLATFORM_W2RU,
    UNALLOCATED,
    Footer,
)


def rewrite_header(path: Path, **changes: object) -> None:
    """Replace fields of the dynamic header of the image at ``path`` (checksum redone)."""
    with Image.open(str(path), parents=False) as image:
        assert image.header is not None
        header, at = image.header, image.footer.data_offset
    patch(path, at, header.replace(**changes).build())


def uuid_of(path: Path) -> object:
    with Image.open(str(path), parents=False) as image:
        return image.footer.uuid


def base_with_data(path: Path, size: int = SIZE, *, fixed: bool = False) -> bytearray:
    """Create an image at ``path`` holding a pattern in its first 5 MiB; returns the content."""
    vhd.create(str(path), size, fixed=fixed)
    model = bytearray(size)
    data = pattern(5 * MiB, 1)
    with Image.open(str(path), writable=True) as image:
        image.write(0, data)
    model[: len(data)] = data
    return model


def child_over_base(directory: Path, parent_rel: str = "base.vhd") -> tuple[Path, Path, bytearray]:
    """``child.vhd`` in ``directory``, an empty differencing image over a base made by
    base_with_data at ``parent_rel`` from it: the child, the base and their content."""
    child = directory / "child.vhd"
    base = directory / parent_rel
    base.parent.mkdir(parents=True, exist_ok=True)
    child.parent.mkdir(parents=True, exist_ok=True)
    model = base_with_data(base)
    vhd.create_differencing(str(child), str(base))
    return child, base, model


# Creation


def test_create_dynamic(tmp_path: Path) -> None:
    path = tmp_path / "d.vhd"
    vhd.create(str(path), SIZE)
    raw = path.read_bytes()
    # footer copy, header, one sector of BAT (4 entries), maybe padding, footer
    assert 512 + 1024 + 512 + 512 <= len(raw) <= 8192
    assert len(raw) % 512 == 0
    assert raw[:512] == raw[-512:]
    with Image.open(str(path)) as image:
        assert image.disk_type == DYNAMIC
        assert image.size == SIZE
        assert image.block_size == BLOCK
        assert image.header is not None
        assert image.header.max_table_entries == 4
        assert (image.bat == UNALLOCATED).all()
        assert image.read(0, SIZE) == bytes(SIZE)
        assert image.parent is None
        assert image.chain() == [image]


def test_create_fixed(tmp_path: Path) -> None:
    path = tmp_path / "f.vhd"
    vhd.create(str(path), SIZE, fixed=True)
    assert path.stat().st_size == SIZE + 512
    with Image.open(str(path)) as image:
        assert image.disk_type == FIXED
        assert image.size == SIZE
        assert image.header is None
        assert image.read(0, SIZE) == bytes(SIZE)


def test_create_with_uuid_and_block_size(tmp_path: Path) -> None:
    u = uuid.UUID(int=42)
    path = tmp_path / "d.vhd"
    vhd.create(str(path), SIZE, block_size=512 * 1024, uuid=u)
    with Image.open(str(path)) as image:
        assert image.footer.uuid == u
        assert image.block_size == 512 * 1024
        assert image.header is not None and image.header.max_table_entries == 16


@pytest.mark.parametrize("size", [0, -512, 1000, (2040 << 30) + 512])
def test_create_rejects_bad_sizes(tmp_path: Path, size: int) -> None:
    path = tmp_path / "bad.vhd"
    with pytest.raises(VhdError):
        vhd.create(str(path), size)
    assert not path.exists()


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "d.vhd"
    path.write_bytes(b"precious")
    with pytest.raises(VhdError):
        vhd.create(str(path), SIZE)
    assert path.read_bytes() == b"precious"


def test_create_differencing_records_its_parent(tmp_path: Path) -> None:
    (tmp_path / "parents").mkdir()
    base = tmp_path / "parents" / "base.vhd"
    vhd.create(str(base), SIZE)
    child = tmp_path / "child.vhd"
    vhd.create_differencing(str(child), str(base))
    with Image.open(str(child)) as image:
        assert image.disk_type == DIFFERENCING
        assert image.size == SIZE
        assert image.header is not None
        assert image.header.parent_uuid == uuid_of(base)
        assert image.header.parent_name == "parents/base.vhd"
        assert image.parent is not None
        assert os.path.samefile(image.parent.path, base)
        located = {loc.platform_code: path for loc, path in image.meta.locator_paths()}
        assert located == {PLATFORM_MACX: "./parents/base.vhd", PLATFORM_W2RU: "./parents/base.vhd"}
        assert image.header.parent_timestamp == vhd.format.vhd_timestamp(base.stat().st_mtime)


# Writes against a bytearray model

KINDS = ["dynamic", "dynamic-512k", "fixed", "differencing", "differencing-over-fixed"]

_counter = itertools.count()

boundary_offsets = st.builds(
    lambda block, delta: min(max(block * BLOCK + delta, 0), SIZE - 1),
    st.integers(0, 4),
    st.integers(-1100, 1100),
)
offsets = st.one_of(st.integers(0, SIZE - 1), boundary_offsets)
lengths = st.one_of(st.integers(0, 1100), st.integers(0, 3 * MiB))
fills = st.sampled_from(["random", "zeros", "ones"])
writes = st.lists(st.tuples(offsets, lengths, fills, st.integers(0, 1 << 30)), max_size=5)


def new_image(directory: Path, kind: str) -> tuple[Path, bytearray]:
    """A fresh image of ``kind`` in ``directory`` and the content it starts with."""
    path = directory / "disk.vhd"
    if kind == "dynamic":
        vhd.create(str(path), SIZE)
        return path, bytearray(SIZE)
    if kind == "dynamic-512k":
        vhd.create(str(path), SIZE, block_size=512 * 1024)
        return path, bytearray(SIZE)
    if kind == "fixed":
        vhd.create(str(path), SIZE, fixed=True)
        return path, bytearray(SIZE)
    base = directory / "base.vhd"
    model = base_with_data(base, fixed=kind == "differencing-over-fixed")
    vhd.create_differencing(str(path), str(base))
    return path, model


def data_for(length: int, fill: str, seed: int) -> bytes:
    if fill == "zeros":
        return bytes(length)
    if fill == "ones":
        return b"\xff" * length
    return pattern(length, seed)


@pytest.mark.slow
@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(kind=st.sampled_from(KINDS), ops=writes)
@example(kind="dynamic", ops=[(BLOCK - 100, 300, "random", 1)])  # straddles a block, unaligned
@example(kind="dynamic", ops=[(1000, 5, "random", 2), (1003, 1, "zeros", 3)])  # sub-sector
@example(kind="differencing", ops=[(BLOCK - 1, 2, "zeros", 4)])  # zeros shadow the parent
@example(kind="differencing", ops=[(100, 10, "random", 5), (SIZE - 7, 7, "random", 6)])
@example(kind="fixed", ops=[(SIZE - 513, 513, "random", 7), (3, 1, "ones", 8)])
@example(kind="dynamic-512k", ops=[(512 * 1024 - 1, 512 * 1024 + 2, "random", 9)])
def test_writes_match_a_model(
    tmp_path: Path, kind: str, ops: list[tuple[int, int, str, int]]
) -> None:
    directory = Path(tempfile.mkdtemp(dir=tmp_path, prefix=f"{next(_counter)}-"))
    path, model = new_image(directory, kind)
    with Image.open(str(path), writable=True) as image:
        done = []
        for offset, length, fill, seed in ops:
            length = min(length, SIZE - offset)
            data = data_for(length, fill, seed)
            image.write(offset, data)
            model[offset : offset + length] = data
            done.append((offset, length))
        assert image.read(0, SIZE) == model
        # reads of pieces resolve the same way
        for offset, length in done:
            assert image.read(offset, length) == model[offset : offset + length]
    assert read_all(path) == model
    assert vhd.check(str(path)) == []
    raw = path.read_bytes()
    if kind != "fixed":
        assert raw[:512] == raw[-512:]


def test_writes_match_qemu(tmp_path: Path, qemu_img: str) -> None:
    path = tmp_path / "d.vhd"
    vhd.create(str(path), SIZE)
    model = bytearray(SIZE)
    with Image.open(str(path), writable=True) as image:
        for offset, length, seed in [(123, 4567, 1), (BLOCK - 10, 20, 2), (7 * MiB, MiB, 3)]:
            data = pattern(length, seed)
            image.write(offset, data)
            model[offset : offset + length] = data
    assert qemu_raw(qemu_img, path, tmp_path / "out.raw") == model


def test_write_into_a_qemu_image(tmp_path: Path, qemu_img: str) -> None:
    path = tmp_path / "q.vhd"
    run(qemu_img, "create", "-q", "-f", "vpc", "-o", "subformat=dynamic", str(path), "8M")
    with Image.open(str(path), writable=True) as image:
        size = image.size
        data = pattern(3 * MiB, 11)
        image.write(MiB + 1, data)
        assert image.read(MiB + 1, len(data)) == data
    model = bytearray(size)
    model[MiB + 1 : MiB + 1 + len(data)] = data
    assert qemu_raw(qemu_img, path, tmp_path / "out.raw") == model
    assert read_all(path) == model


@pytest.mark.parametrize("start", ["empty", "one-block", "exported"])
def test_qemu_io_writes_into_our_images(
    tmp_path: Path, qemu_io: str, qemu_img: str, start: str
) -> None:
    """qemu allocates new blocks where it finds room; both readers must see only what was
    written (no stale bytes of our metadata or footer inside the new blocks)."""
    path = tmp_path / "d.vhd"
    model = bytearray(SIZE)
    if start == "exported":  # a one-pass stream written to a file, as `xfer vhd convert` does
        raw = tmp_path / "src.raw"
        raw.write_bytes(bytes(2 * MiB) + b"\x33" * 512 + bytes(SIZE - 2 * MiB - 512))
        assert vhd.convert(str(raw), str(path), "vhd") > 0
    else:
        vhd.create(str(path), SIZE)
    if start == "one-block":
        with Image.open(str(path), writable=True) as image:
            image.write(2 * MiB, b"\x33" * 512)
    if start != "empty":
        model[2 * MiB : 2 * MiB + 512] = b"\x33" * 512
    commands = ["write -P 0x5a 1536 512", "write -P 7 6M 512"]
    run(qemu_io, "-f", "vpc", *[a for c in commands for a in ("-c", c)], str(path))
    model[1536 : 1536 + 512] = b"\x5a" * 512
    model[6 * MiB : 6 * MiB + 512] = b"\x07" * 512
    theirs = qemu_raw(qemu_img, path, tmp_path / "out.raw")
    assert read_all(path) == model
    assert theirs == model


def test_read_past_the_end_gives_zeros(tmp_path: Path) -> None:
    for kind in ("dynamic", "fixed"):
        directory = tmp_path / kind
        directory.mkdir()
        path, _ = new_image(directory, kind)
        with Image.open(str(path), writable=True) as image:
            image.write(SIZE - 2, b"ab")
            assert image.read(SIZE - 2, 6) == b"ab\0\0\0\0"
            assert image.read(SIZE + 100, 10) == bytes(10)


# Zero writes, allocation, bitmaps


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, BLOCK), (100, 1), (BLOCK - 300, 600), (0, SIZE), (3 * BLOCK + 511, 2)],
)
def test_zero_writes_allocate_nothing(tmp_path: Path, offset: int, length: int) -> None:
    path = tmp_path / "d.vhd"
    vhd.create(str(path), SIZE)
    before = path.read_bytes()
    with Image.open(str(path), writable=True) as image:
        image.write(offset, bytes(length))
        assert (image.bat == UNALLOCATED).all()
    assert path.read_bytes() == before


def test_zero_write_into_an_allocated_block_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "d.vhd"
    vhd.create(str(path), SIZE)
    with Image.open(str(path), writable=True) as image:
        image.write(BLOCK, b"\x01" * 4096)
        size_after_allocation = image.file.size
        image.write(BLOCK + 1000, bytes(100))
        assert image.file.size == size_after_allocation
        expected = b"\x01" * 1000 + bytes(100) + b"\x01" * (4096 - 1100)
        assert image.read(BLOCK, 4096) == expected
    bat = bat_of(path)
    assert [int(x) != UNALLOCATED for x in bat] == [False, True, False, False]


def test_write_allocates_only_touched_blocks(tmp_path: Path) -> None:
    path = tmp_path / "d.vhd"
    vhd.create(str(path), SIZE)
    with Image.open(str(path), writable=True) as image:
        image.write(BLOCK - 1, b"\x01\x02")  # straddles blocks 0 and 1
        image.write(3 * BLOCK + 5, b"\x03")
    bat = bat_of(path)
    assert [int(x) != UNALLOCATED for x in bat] == [True, True, False, True]
    # blocks are laid out in allocation order past the metadata, without overlap, and the
    # footer follows the last one
    starts = [int(bat[b]) * SECTOR for b in (0, 1, 3)]
    assert starts[0] >= 512 + 1024 + 512
    assert starts[0] + 512 + BLOCK <= starts[1]
    assert starts[1] + 512 + BLOCK <= starts[2]
    assert path.stat().st_size == starts[2] + 512 + BLOCK + 512


def test_differencing_zero_write_shadows_the_parent(tmp_path: Path) -> None:
    child, base, model = child_over_base(tmp_path)
    with Image.open(str(child), writable=True) as image:
        image.write(1000, bytes(3000))
        model[1000:4000] = bytes(3000)
        image.write(BLOCK, bytes(8192))  # sector-aligned zeros
        model[BLOCK : BLOCK + 8192] = bytes(8192)
        assert image.read(0, SIZE) == model
    assert [int(x) != UNALLOCATED for x in bat_of(child)] == [True, True, False, False]
    assert read_all(base)[1000:4000] == pattern(5 * MiB, 1)[1000:4000]


def test_differencing_reads_fall_through_where_the_bitmap_is_clear(tmp_path: Path) -> None:
    child, base, model = child_over_base(tmp_path)
    with Image.open(str(child), writable=True) as image:
        image.write(MiB + 512, b"\xee" * 1024)  # sectors 2049 and 2050 of block 0
        model[MiB + 512 : MiB + 1536] = b"\xee" * 1024
        assert image.read(0, SIZE) == model
        assert image.parent is not None
        parent_file = image.parent.file
        copies = [e for e in image.extents(0, BLOCK) if isinstance(e, Copy)]
        assert [(e.file is parent_file, e.length) for e in copies] == [
            (True, MiB + 512),
            (False, 1024),
            (True, BLOCK - MiB - 1536),
        ]
        assert image.header is not None
        entry = int(image.bat[0])
        bits = image.file.pread(512, entry * SECTOR)
    expected = bytearray(512)
    expected[2049 // 8] = (0x80 >> (2049 % 8)) | (0x80 >> (2050 % 8))
    assert bits == bytes(expected)
    # the parent is untouched
    assert read_all(base) == base_content()


def base_content() -> bytes:
    model = bytearray(SIZE)
    model[: 5 * MiB] = pattern(5 * MiB, 1)
    return bytes(model)


def test_differencing_sub_sector_write_keeps_parent_bytes(tmp_path: Path) -> None:
    child, _, model = child_over_base(tmp_path)
    with Image.open(str(child), writable=True) as image:
        image.write(SIZE - BLOCK - 1, b"XY")  # last byte of block 2, first of block 3
        model[SIZE - BLOCK - 1 : SIZE - BLOCK + 1] = b"XY"
    assert read_all(child) == model
    bat = bat_of(child)
    assert [int(x) != UNALLOCATED for x in bat] == [False, False, True, True]


def test_chain_of_three(tmp_path: Path) -> None:
    base = tmp_path / "base.vhd"
    model = base_with_data(base)
    mid = tmp_path / "mid.vhd"
    top = tmp_path / "top.vhd"
    vhd.create_differencing(str(mid), str(base))
    with Image.open(str(mid), writable=True) as image:
        image.write(MiB, b"M" * (3 * MiB))
        image.write(7 * MiB, b"m" * 100)
    model[MiB : 4 * MiB] = b"M" * (3 * MiB)
    model[7 * MiB : 7 * MiB + 100] = b"m" * 100
    mid_model = bytes(model)
    vhd.create_differencing(str(top), str(mid))
    with Image.open(str(top), writable=True) as image:
        image.write(2 * MiB - 7, b"T" * 14)
        image.write(7 * MiB + 50, bytes(20))
        image.write(6 * MiB, b"t")
    model[2 * MiB - 7 : 2 * MiB + 7] = b"T" * 14
    model[7 * MiB + 50 : 7 * MiB + 70] = bytes(20)
    model[6 * MiB] = ord("t")
    with Image.open(str(top)) as image:
        assert [os.path.basename(i.path) for i in image.chain()] == [
            "top.vhd",
            "mid.vhd",
            "base.vhd",
        ]
        assert image.read(0, SIZE) == model
    assert read_all(mid) == mid_model
    assert read_all(base) == base_content()


def test_open_without_parents(tmp_path: Path) -> None:
    child, base, _ = child_over_base(tmp_path)
    base.unlink()
    with Image.open(str(child), parents=False) as image:
        assert image.parent is None
        assert image.read(0, 4096) == bytes(4096)


# Finding the parent


def make_pair(directory: Path, parent_rel: str = "base.vhd") -> tuple[Path, Path, bytes]:
    """A base with data and a child with more, the base at ``parent_rel`` from the child."""
    child, base, model = child_over_base(directory, parent_rel)
    with Image.open(str(child), writable=True) as image:
        image.write(4 * MiB, b"child" * 1000)
    model[4 * MiB : 4 * MiB + 5000] = b"child" * 1000
    return child, base, bytes(model)


def test_parent_found_after_moving_the_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    child, _, model = make_pair(tmp_path / "a")
    os.rename(tmp_path / "a", tmp_path / "b")
    moved = tmp_path / "b" / "child.vhd"
    with Image.open(str(moved)) as image:
        assert image.parent is not None
        assert image.parent.path == str(tmp_path / "b" / "base.vhd")
        assert image.read(0, SIZE) == model
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert read_all(moved) == model
    assert read_all("../b/child.vhd") == model
    assert not child.exists()


@pytest.mark.parametrize("parent_rel", ["sub/dir/base.vhd", "../parents/base.vhd"])
def test_parent_in_another_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parent_rel: str
) -> None:
    _, _, model = make_pair(tmp_path / "one" / "child", parent_rel)
    with Image.open(str(tmp_path / "one" / "child" / "child.vhd")) as image:
        assert image.header is not None
        assert image.header.parent_name == parent_rel
    os.rename(tmp_path / "one", tmp_path / "two")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert read_all("../two/child/child.vhd") == model


def test_parent_found_through_locators_only(tmp_path: Path) -> None:
    child, base, model = make_pair(tmp_path / "a", "p/base.vhd")
    rewrite_header(child, parent_name="nowhere/else.vhd")
    with Image.open(str(child)) as image:
        assert image.header is not None and image.header.parent_name == "nowhere/else.vhd"
        assert image.parent is not None and os.path.samefile(image.parent.path, base)
        assert image.read(0, SIZE) == model


def test_parent_found_through_the_name_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    child, _base, model = make_pair(tmp_path / "a", "p/base.vhd")
    rewrite_header(child, locators=())
    os.rename(tmp_path / "a", tmp_path / "z")
    monkeypatch.chdir(tmp_path)
    with Image.open("z/child.vhd") as image:
        assert image.header is not None and image.header.locators == ()
        assert image.parent is not None
        assert os.path.samefile(image.parent.path, tmp_path / "z" / "p" / "base.vhd")
        assert image.read(0, SIZE) == model


def test_missing_parent(tmp_path: Path) -> None:
    child, base, _ = make_pair(tmp_path)
    base.unlink()
    with pytest.raises(VhdError) as info:
        Image.open(str(child))
    e = info.value
    assert e.field == "header.parent_name"
    assert e.offset == 512 + 64
    assert e.path == str(child)
    assert str(base) in e.message


def test_parent_uuid_mismatch(tmp_path: Path) -> None:
    child, base, _ = make_pair(tmp_path)
    expected = uuid_of(base)
    base.unlink()
    vhd.create(str(base), SIZE)
    with pytest.raises(VhdError) as info:
        Image.open(str(child))
    e = info.value
    assert e.field == "header.parent_uuid"
    assert e.offset == 512 + 40
    assert e.path == str(child)
    assert str(expected) in e.message and str(uuid_of(base)) in e.message


def test_parent_loop(tmp_path: Path) -> None:
    base = tmp_path / "base.vhd"
    vhd.create(str(base), SIZE)
    a, b = tmp_path / "a.vhd", tmp_path / "b.vhd"
    vhd.create_differencing(str(a), str(base))
    vhd.create_differencing(str(b), str(a))
    rewrite_header(a, parent_uuid=uuid_of(b), parent_name="b.vhd", locators=())
    for start in (a, b):
        with pytest.raises(VhdError) as info:
            Image.open(str(start))
        assert "loop" in str(info.value)
        assert info.value.field == "header.parent_name"


def test_image_that_is_its_own_parent(tmp_path: Path) -> None:
    base = tmp_path / "base.vhd"
    vhd.create(str(base), SIZE)
    a = tmp_path / "a.vhd"
    vhd.create_differencing(str(a), str(base))
    rewrite_header(a, parent_uuid=uuid_of(a), parent_name="a.vhd", locators=())
    with pytest.raises(VhdError, match="loop"):
        Image.open(str(a))


# Refused writes


@pytest.mark.parametrize("kind", ["dynamic", "fixed", "differencing"])
@pytest.mark.parametrize(
    ("offset", "length"), [(SIZE - 1, 2), (SIZE, 1), (-1, 1), (0, SIZE + 1), (SIZE + 512, 512)]
)
def test_write_beyond_the_virtual_size(tmp_path: Path, kind: str, offset: int, length: int) -> None:
    path, _ = new_image(tmp_path, kind)
    before = path.read_bytes()
    with Image.open(str(path), writable=True) as image, pytest.raises(VhdError) as info:
        image.write(offset, b"\x01" * length)
    assert "virtual size" in info.value.message
    assert path.read_bytes() == before


def test_write_up_to_the_virtual_size(tmp_path: Path) -> None:
    path, _ = new_image(tmp_path, "dynamic")
    with Image.open(str(path), writable=True) as image:
        image.write(SIZE - 3, b"end")
        image.write(SIZE, b"")
    assert read_all(path)[-4:] == b"\0end"


@pytest.mark.parametrize("kind", ["dynamic", "fixed", "differencing"])
def test_read_only_image_refuses_writes(tmp_path: Path, kind: str) -> None:
    path, _ = new_image(tmp_path, kind)
    before = path.read_bytes()
    with Image.open(str(path)) as image, pytest.raises(VhdError, match="read-only") as info:
        image.write(0, b"x" * 512)
    assert info.value.path == str(path)
    assert path.read_bytes() == before


def test_parents_are_opened_read_only(tmp_path: Path) -> None:
    child, _, _ = make_pair(tmp_path)
    with Image.open(str(child), writable=True) as image:
        assert image.file.writable
        assert image.parent is not None and not image.parent.file.writable
        with pytest.raises(VhdError, match="read-only"):
            image.parent.write(0, b"x")


# Crash safety


def test_allocation_leaves_a_valid_trailing_footer(tmp_path: Path) -> None:
    path = tmp_path / "d.vhd"
    vhd.create(str(path), SIZE)
    copy_before = path.read_bytes()[:512]
    with Image.open(str(path), writable=True) as image:
        for b in (2, 0):
            image.write(b * BLOCK + 4096, b"data")
            raw = path.read_bytes()
            assert raw[:512] == copy_before
            assert raw[-512:] == copy_before
            assert Footer.parse(raw[-512:], len(raw) - 512).current_size == SIZE
    bat = bat_of(path)
    assert len(raw) == max(int(bat[0]), int(bat[2])) * SECTOR + 512 + BLOCK + 512


@pytest.mark.parametrize("kind", ["dynamic", "differencing"])
def test_crash_at_every_step_of_an_allocation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Replaying any prefix of an allocation's steps leaves an image that opens and reads
    either the old or the new content (data, then bitmap, then the file extended to hold the
    block where the data did not reach its end, then BAT entry, then footer)."""
    path, old = new_image(tmp_path, kind)
    with Image.open(str(path), writable=True) as image:
        image.write(6 * MiB, b"first")  # an allocated block before the one being added
    old[6 * MiB : 6 * MiB + 5] = b"first"
    original = path.read_bytes()
    new = bytearray(old)
    new[2 * MiB + 1000 : 2 * MiB + 1100] = b"\x42" * 100
    steps: list[tuple[bytes | None, int]] = []  # (data, offset) or (None, new length)
    with Image.open(str(path), writable=True) as image:
        real_pwrite, real_truncate = image.file.pwrite, image.file.truncate

        def record(data: bytes | bytearray | memoryview, offset: int) -> None:
            steps.append((bytes(data), offset))
            real_pwrite(data, offset)

        def record_truncate(size: int) -> None:
            steps.append((None, size))
            real_truncate(size)

        monkeypatch.setattr(image.file, "pwrite", record)
        monkeypatch.setattr(image.file, "truncate", record_truncate)
        image.write(2 * MiB + 1000, b"\x42" * 100)
        assert image.header is not None
        table = image.header.table_offset
        at = int(image.bat[1]) * SECTOR
    footer_at = at + 512 + BLOCK
    expected = [
        at + 512 + (0 if kind == "dynamic" else 512),  # data (a whole block for dynamic)
        at,  # bitmap
        *([] if kind == "dynamic" else [footer_at]),  # extend the file to the block's end
        table + 4,  # BAT entry of block 1
        footer_at,  # footer
    ]
    assert [offset for _, offset in steps] == expected
    assert steps[-1][0] == original[:512]
    bat_step = expected.index(table + 4)
    for k in range(len(steps) + 1):
        state = bytearray(original)
        for data, offset in steps[:k]:
            if data is None:
                state.extend(bytes(max(0, offset - len(state))))
                continue
            if offset + len(data) > len(state):
                state.extend(bytes(offset + len(data) - len(state)))
            state[offset : offset + len(data)] = data
        replay = path.with_name(f"replay{k}.vhd")
        replay.write_bytes(state)
        content = read_all(replay)
        assert content == (new if k > bat_step else old), f"after {k} steps"


def test_overwritten_trailing_footer_is_recovered(tmp_path: Path) -> None:
    path = tmp_path / "d.vhd"
    vhd.create(str(path), SIZE)
    with Image.open(str(path), writable=True) as image:
        image.write(0, b"A" * 5000)
    copy = path.read_bytes()[:512]
    damaged_at = path.stat().st_size - 512
    patch(path, damaged_at, b"\xaa" * 512)
    with Image.open(str(path), writable=True) as image:
        assert image.meta.footer_problem is not None
        assert image.meta.footer_problem.field == "footer.cookie"
        assert image.meta.footer_offset == 0
        assert image.footer.build() == copy
        assert image.read(0, 5001) == b"A" * 5000 + b"\0"
        image.write(3 * BLOCK, b"B" * 100)
    raw = path.read_bytes()
    assert raw[-512:] == copy
    assert raw[:512] == copy
    with Image.open(str(path)) as image:
        assert image.meta.footer_problem is None
        assert image.meta.footer_offset == len(raw) - 512
        assert image.read(0, 5000) == b"A" * 5000
        assert image.read(3 * BLOCK, 101) == b"B" * 100 + b"\0"
    # the new block goes where the damaged footer was, past block 0, and the footer after it
    bat = bat_of(path)
    assert int(bat[0]) * SECTOR + 512 + BLOCK == damaged_at
    assert damaged_at <= int(bat[3]) * SECTOR < damaged_at + 4096
    assert len(raw) == int(bat[3]) * SECTOR + 512 + BLOCK + 512
    assert vhd.check(str(path)) == []


def test_allocation_keeps_what_lies_before_the_footer(tmp_path: Path) -> None:
    """Space between the metadata and the footer (e.g. blktap's batmap) is not reused."""
    path = tmp_path / "d.vhd"
    vhd.create(str(path), SIZE)
    raw = path.read_bytes()
    reserved = b"\xab" * 4096
    path.write_bytes(raw[:-512] + reserved + raw[-512:])
    with Image.open(str(path), writable=True) as image:
        image.write(BLOCK, b"new block")
        assert int(image.bat[1]) * SECTOR >= len(raw) - 512 + len(reserved)
    after = path.read_bytes()
    assert after[len(raw) - 512 : len(raw) - 512 + len(reserved)] == reserved
    assert after[-512:] == raw[-512:]
    assert read_all(path)[BLOCK : BLOCK + 10] == b"new block\0"


def test_fixed_image_with_a_damaged_footer_does_not_open(tmp_path: Path) -> None:
    path = tmp_path / "f.vhd"
    vhd.create(str(path), SIZE, fixed=True)
    patch(path, SIZE + 64, b"\0\0\0\0")  # the footer's checksum
    with pytest.raises(VhdError) as info:
        Image.open(str(path))
    assert info.value.field == "footer.checksum"
    assert info.value.offset == SIZE + 64


def test_truncated_fixed_image(tmp_path: Path) -> None:
    path = tmp_path / "f.vhd"
    vhd.create(str(path), SIZE, fixed=True)
    raw = path.read_bytes()
    path.write_bytes(raw[: SIZE - MiB] + raw[-512:])
    with pytest.raises(VhdError) as info:
        Image.open(str(path))
    assert info.value.field == "footer.current_size"
    assert info.value.offset == SIZE - MiB + 48


def test_copy_of_a_moved_chain(tmp_path: Path) -> None:
    child, _, model = make_pair(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    assert read_all(tmp_path / "copy" / "child.vhd") == model
    with Image.open(str(tmp_path / "copy" / "child.vhd")) as image:
        assert image.parent is not None
        assert image.parent.path == str(tmp_path / "copy" / "base.vhd")
    assert child.exists()
