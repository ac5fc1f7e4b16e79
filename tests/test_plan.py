"""vhd.plan and vhd.transport: export plans over raw disks and images, and their execution."""

from __future__ import annotations

import errno
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vhd
from support import (
    BLOCK,
    SIZE,
    MiB,
    bat_of,
    disk_content,
    make_dynamic,
    materialise,
    pattern,
    read_all,
    write_raw,
)
from vhd import Copy, Image, Plan, RawDisk, VhdError, Zeros
from vhd.compare import differing_content
from vhd.convert import delta_blocks, vhd_export_plan
from vhd.disk import Disk
from vhd.elements import Element
from vhd.format import DIFFERENCING, DYNAMIC, FIXED, DynamicHeader, Footer
from vhd.plan import (
    ParentRef,
    VhdLayout,
    allocated_blocks,
    differing_blocks,
    finish_vhd,
    plan_fixed,
    plan_raw,
    plan_vhd,
)
from vhd.transport import BufferSink, CopyRangeSink, FileSink, execute, write_plan


def assert_coalesced(elements: list[Element]) -> None:
    """No empty element, no two Zeros in a row, no two Copies that continue each other."""
    for e in elements:
        assert e.length > 0, e
    for a, b in itertools.pairwise(elements):
        assert not (isinstance(a, Zeros) and isinstance(b, Zeros)), (a, b)
        if isinstance(a, Copy) and isinstance(b, Copy):
            assert not (a.file is b.file and b.offset == a.offset + a.length), (a, b)


# Sources: each writes the same content in a different kind of disk.

WRITES = [
    (MiB + 3, pattern(100_000, 1)),
    (BLOCK - 10, pattern(20, 2)),  # straddles blocks 0 and 1
    (5 * MiB, b"\x01" * 10),
    (SIZE - 512, pattern(512, 3)),
]


def expected_content() -> bytes:
    return disk_content(SIZE, WRITES)


def make_image(path: Path, kind: str) -> None:
    if kind == "differencing":
        base = path.with_name("base.vhd")
        make_dynamic(base, SIZE, WRITES[:2])
        vhd.create_differencing(str(path), str(base))
        todo = WRITES[2:]
    else:
        vhd.create(str(path), SIZE, fixed=kind == "fixed")
        todo = WRITES
    with Image.open(str(path), writable=True) as image:
        for offset, data in todo:
            image.write(offset, data)


SOURCES = ["raw", "fixed", "dynamic", "differencing"]


@contextmanager
def open_source(tmp_path: Path, kind: str) -> Iterator[Disk]:
    if kind == "raw":
        path = tmp_path / "disk.raw"
        write_raw(path, SIZE, WRITES)
        disk: RawDisk | Image = RawDisk.open(str(path))
    else:
        path = tmp_path / "disk.vhd"
        make_image(path, kind)
        disk = Image.open(str(path))
    try:
        yield disk
    finally:
        disk.close()


PLANS: dict[str, Callable[[Disk], Plan]] = {
    "raw": plan_raw,
    "fixed": plan_fixed,
    "vhd": lambda d: plan_vhd(d, allocated_blocks(d)),
    "vhd-all": lambda d: plan_vhd(d, np.arange(4)),
    "vhd-none": lambda d: plan_vhd(d, np.zeros(0, dtype=np.int64)),
    "vhd-1m": lambda d: plan_vhd(d, allocated_blocks(d, MiB), block_size=MiB),
}


@pytest.mark.parametrize("plan_name", list(PLANS))
@pytest.mark.parametrize("source", SOURCES)
def test_plan_length_and_coalescing(tmp_path: Path, source: str, plan_name: str) -> None:
    with open_source(tmp_path, source) as disk:
        plan = PLANS[plan_name](disk)
        elements = list(plan)
        assert sum(e.length for e in elements) == plan.length
        assert_coalesced(elements)
        data = materialise(elements)
        assert len(data) == plan.length
        # a plan can be produced again, identically
        assert materialise(plan) == data


@pytest.mark.parametrize("source", SOURCES)
def test_plan_raw_content(tmp_path: Path, source: str) -> None:
    with open_source(tmp_path, source) as disk:
        plan = plan_raw(disk)
        assert plan.length == SIZE
        assert materialise(plan) == expected_content()


@pytest.mark.parametrize("source", SOURCES)
def test_plan_fixed_content(tmp_path: Path, source: str) -> None:
    with open_source(tmp_path, source) as disk:
        data = materialise(plan_fixed(disk))
    assert len(data) == SIZE + 512
    assert data[:SIZE] == expected_content()
    footer = Footer.parse(data[SIZE:], SIZE)
    assert footer.disk_type == FIXED
    assert footer.current_size == SIZE


@pytest.mark.parametrize("plan_name", ["vhd", "vhd-all", "vhd-1m"])
@pytest.mark.parametrize("source", SOURCES)
def test_plan_vhd_content(tmp_path: Path, source: str, plan_name: str) -> None:
    out = tmp_path / "out.vhd"
    with open_source(tmp_path, source) as disk:
        out.write_bytes(materialise(PLANS[plan_name](disk)))
    with Image.open(str(out)) as image:
        assert image.disk_type == DYNAMIC
        assert image.size == SIZE
        assert image.read(0, SIZE) == expected_content()
    assert vhd.check(str(out)) == []


def test_plan_vhd_layout(tmp_path: Path) -> None:
    with open_source(tmp_path, "raw") as disk:
        blocks = np.array([0, 2, 3])
        plan = plan_vhd(disk, blocks)
        data = materialise(plan)
    assert len(data) == plan.length
    assert data[:512] == data[-512:]
    footer = Footer.parse(data[:512])
    header = DynamicHeader.parse(data[512:1536], 512)
    assert footer.data_offset == 512
    assert header.max_table_entries == 4
    bat = np.frombuffer(data[header.table_offset : header.table_offset + 16], ">u4").tolist()
    assert bat[1] == 0xFFFFFFFF
    starts = [bat[b] * 512 for b in (0, 2, 3)]
    # blocks in ascending virtual order, past the metadata, apart, each with a full bitmap
    assert starts[0] >= header.table_offset + header.table_size
    assert starts[0] + 512 + BLOCK <= starts[1]
    assert starts[1] + 512 + BLOCK <= starts[2]
    assert starts[2] + 512 + BLOCK <= len(data) - 512
    content = expected_content()
    for b, start in zip((0, 2, 3), starts, strict=True):
        assert data[start : start + 512] == b"\xff" * 512
        assert data[start + 512 : start + 512 + BLOCK] == content[b * BLOCK : (b + 1) * BLOCK]
    # the padding after the BAT is 0xff
    table_end = header.table_offset + 16
    assert data[table_end : header.table_offset + header.table_size] == b"\xff" * 496


def test_plan_vhd_partial_last_block(tmp_path: Path) -> None:
    size = 5 * MiB + 512
    path = tmp_path / "small.raw"
    content = pattern(size, 9)
    path.write_bytes(content)
    with closing(RawDisk.open(str(path))) as disk:
        plan = plan_vhd(disk, allocated_blocks(disk))
        assert allocated_blocks(disk).tolist() == [0, 1, 2]
        assert plan.length >= 512 + 1024 + 512 + 3 * (512 + BLOCK) + 512
        out = tmp_path / "small.vhd"
        out.write_bytes(materialise(plan))
    with Image.open(str(out)) as image:
        assert image.size == size
        assert image.read(0, size) == content


def test_plan_vhd_differencing(tmp_path: Path) -> None:
    with (
        open_source(tmp_path, "differencing") as disk,
        Image.open(str(tmp_path / "base.vhd")) as base,
    ):
        ref = ParentRef.of(base.footer, base.file.mtime, "base.vhd")
        blocks = differing_blocks(disk, base)
        plan = plan_vhd(disk, blocks, parent=ref)
        elements = list(plan)
        assert sum(e.length for e in elements) == plan.length
        assert_coalesced(elements)
        out = tmp_path / "delta.vhd"
        out.write_bytes(materialise(elements))
    with Image.open(str(out)) as image:
        assert image.disk_type == DIFFERENCING
        assert image.header is not None
        assert image.header.parent_name == "base.vhd"
        assert image.read(0, SIZE) == expected_content()
        assert image.bat.tolist().count(0xFFFFFFFF) == 4 - blocks.size


def test_plan_fixed_pads_to_whole_sectors(tmp_path: Path) -> None:
    path = tmp_path / "odd.raw"
    path.write_bytes(b"\x07" * 1000)
    with closing(RawDisk.open(str(path))) as disk:
        plan = plan_fixed(disk)
        data = materialise(plan)
    assert plan.length == len(data) == 1024 + 512
    assert data[:1024] == b"\x07" * 1000 + bytes(24)
    assert Footer.parse(data[1024:], 1024).current_size == 1024


@pytest.mark.parametrize("blocks", [[1, 0], [0, 2, 1], [1, 1], [-1, 0], [0, 4], [3, 2, 1, 0]])
def test_plan_vhd_rejects_bad_block_lists(blocks: list[int]) -> None:
    with pytest.raises(VhdError, match="ascending"):
        plan_vhd(RawDisk(None, SIZE), np.array(blocks, dtype=np.int64))


def test_plan_vhd_rejects_long_parent_names() -> None:
    ref = ParentRef(Footer.new(DYNAMIC, SIZE).uuid, 0, "x" * 257)
    with pytest.raises(VhdError):
        plan_vhd(RawDisk(None, SIZE), np.zeros(0, dtype=np.int64), parent=ref)


# Finishing a file whose block data is in place


def test_finish_vhd_completes_a_file_of_placed_blocks(tmp_path: Path) -> None:
    """Block data written into chosen slots, then the writes finish_vhd plans: a clean image
    reading as the data, whose file ends with its footer (the slot past it cut off)."""
    layout = VhdLayout.new(SIZE)
    blocks, slots = np.array([0, 2, 3]), np.array([5, 1, 2])
    datas = [pattern(BLOCK, 20 + b) for b in blocks.tolist()]
    out = tmp_path / "placed.vhd"
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for slot, data in zip(slots.tolist(), datas, strict=True):
            os.pwrite(fd, data, int(layout.slot_offset(slot)) + 512)
        os.pwrite(fd, b"junk", int(layout.slot_offset(7)))  # a slot no block keeps
        writes = finish_vhd(layout, blocks, slots)
        sink = FileSink(fd, 0)
        for offset, element in writes:
            sink.position = offset
            execute([element], sink)
        os.ftruncate(fd, writes.length)
    finally:
        os.close(fd)
    # the footer directly after the last slot's data
    assert out.stat().st_size == writes.length == int(layout.slot_offset(5)) + 512 + BLOCK + 512
    assert vhd.check(str(out)) == []
    sectors = [int(layout.slot_offset(s)) // 512 for s in (5, 1, 2)]
    with Image.open(str(out)) as image:
        assert image.read(0, SIZE) == datas[0] + bytes(BLOCK) + datas[1] + datas[2]
        assert image.bat.tolist() == [sectors[0], 0xFFFFFFFF, sectors[1], sectors[2]]


@pytest.mark.parametrize(
    ("blocks", "slots"),
    [([0, 1], [0]), ([4], [0]), ([-1], [0]), ([0], [-1]), ([1, 1], [0, 1]), ([0, 1], [2, 2])],
)
def test_finish_vhd_rejects_bad_placements(blocks: list[int], slots: list[int]) -> None:
    with pytest.raises(VhdError):
        finish_vhd(VhdLayout.new(SIZE), np.array(blocks), np.array(slots))


# Windows


@pytest.fixture(scope="module")
def window_case(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Plan, bytes]]:
    tmp_path = tmp_path_factory.mktemp("window")
    with open_source(tmp_path, "differencing") as disk:
        plan = plan_vhd(disk, allocated_blocks(disk, MiB), block_size=MiB)
        yield plan, materialise(plan)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_window(window_case: tuple[Plan, bytes], data: st.DataObject) -> None:
    plan, whole = window_case
    n = plan.length
    edges = st.one_of(
        st.integers(0, n + 1000),
        st.sampled_from([0, 511, 512, 513, 1535, 1536, 2047, 2048, 2560, n - 512, n - 1, n]),
    )
    start = data.draw(edges, "start")
    stop = data.draw(st.integers(start, n + 1000) | st.just(start), "stop")
    got = materialise(plan.window(start, stop))
    assert got == whole[start:stop]


def test_window_of_each_element_boundary(window_case: tuple[Plan, bytes]) -> None:
    plan, whole = window_case
    bounds = [0]
    for e in plan:
        bounds.append(bounds[-1] + e.length)
    assert bounds[-1] == plan.length
    for a, b in itertools.pairwise(bounds):
        window = list(plan.window(a, b))
        assert materialise(window) == whole[a:b]
        assert len([e for e in window if e.length]) == 1


# Blocks


def test_allocated_blocks(tmp_path: Path) -> None:
    with open_source(tmp_path, "dynamic") as disk:
        assert allocated_blocks(disk).tolist() == [0, 1, 2, 3]
    one = tmp_path / "one.vhd"
    vhd.create(str(one), SIZE)
    with Image.open(str(one), writable=True) as image:
        image.write(5 * MiB, b"x")
        assert allocated_blocks(image).tolist() == [2]
        assert allocated_blocks(image, MiB).tolist() == [4, 5]
        assert allocated_blocks(image, 4 * MiB).tolist() == [1]
        image.write(0, b"y")
        assert allocated_blocks(image).tolist() == [0, 2]


def test_allocated_blocks_of_a_chain_is_the_union(tmp_path: Path) -> None:
    with open_source(tmp_path, "differencing") as disk:
        assert isinstance(disk, Image)
        layers = disk.layers(BLOCK)
        assert [blocks.tolist() for _, blocks in layers] == [[2, 3], [0, 1]]
        assert allocated_blocks(disk).tolist() == [0, 1, 2, 3]


def test_allocated_blocks_of_raw_disks(tmp_path: Path) -> None:
    assert allocated_blocks(RawDisk(None, SIZE)).size == 0
    path = tmp_path / "sparse.raw"
    write_raw(path, SIZE, [(6 * MiB, b"z" * 4096)])
    with closing(RawDisk.open(str(path))) as disk:
        assert allocated_blocks(disk).tolist() == [3]
        assert allocated_blocks(disk, MiB).tolist() == [6]


@pytest.mark.parametrize("block_size", [BLOCK, MiB, 4 * MiB])
def test_differing_blocks_of_a_child_over_its_base(tmp_path: Path, block_size: int) -> None:
    base_path = tmp_path / "base.vhd"
    vhd.create(str(base_path), SIZE)
    with Image.open(str(base_path), writable=True) as image:
        image.write(0, b"b" * 100)
        image.write(3 * MiB, b"b" * 100)
    child_path = tmp_path / "child.vhd"
    vhd.create_differencing(str(child_path), str(base_path))
    with Image.open(str(child_path), writable=True) as child:
        child.write(5 * MiB, b"c")
        child.write(SIZE - 1, b"c")
    with Image.open(str(child_path)) as child, Image.open(str(base_path)) as base:
        own = child.layers(block_size)[0][1]
        assert differing_blocks(child, base, block_size).tolist() == own.tolist()
        assert differing_blocks(base, child, block_size).tolist() == own.tolist()
        assert differing_blocks(child, child, block_size).size == 0
        expected = {BLOCK: [2, 3], MiB: [4, 5, 6, 7], 4 * MiB: [1]}[block_size]
        assert own.tolist() == expected


def test_differing_blocks_of_unrelated_disks(tmp_path: Path) -> None:
    a, b = tmp_path / "a.vhd", tmp_path / "b.vhd"
    for path, offset in ((a, 0), (b, 7 * MiB)):
        vhd.create(str(path), SIZE)
        with Image.open(str(path), writable=True) as image:
            image.write(offset, b"!")
    with Image.open(str(a)) as ia, Image.open(str(b)) as ib:
        assert differing_blocks(ia, ib).tolist() == [0, 3]


def test_differing_content_against_zeros_and_a_disk(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    # block 0 data, block 1 explicit zeros, block 2 a hole, block 3 data
    write_raw(raw, SIZE, [(10, b"a"), (BLOCK, bytes(4096)), (3 * BLOCK + 7, b"b")])
    other = tmp_path / "other.vhd"
    make_dynamic(other, SIZE, [(10, b"a"), (2 * BLOCK, b"c"), (3 * BLOCK + 7, b"B")])
    with closing(RawDisk.open(str(raw))) as disk, Image.open(str(other)) as image:
        assert allocated_blocks(disk).tolist() == [0, 1, 3]
        assert differing_content(disk, None, allocated_blocks(disk)).tolist() == [0, 3]
        assert differing_content(disk, image, np.arange(4)).tolist() == [2, 3]
        assert differing_content(disk, image, np.array([0, 1])).size == 0
        assert differing_content(disk, image, np.arange(8), MiB).tolist() == [4, 6]


def test_delta_blocks_of_unrelated_disks_compare_content(tmp_path: Path) -> None:
    """No chain member in common: only blocks whose bytes differ, whichever side holds them
    (a hole against the base's data differs; explicit zeros over nothing do not)."""
    base = tmp_path / "base.vhd"
    make_dynamic(base, SIZE, [(b * BLOCK, pattern(BLOCK, b)) for b in range(3)])
    content = bytearray(read_all(base))
    content[BLOCK + 5] ^= 1  # block 1 changed
    content[2 * BLOCK : 3 * BLOCK] = bytes(BLOCK)  # block 2 emptied
    raw = tmp_path / "new.raw"
    write_raw(raw, SIZE, [(0, bytes(content[: 2 * BLOCK])), (3 * BLOCK, bytes(BLOCK))])
    copy = tmp_path / "new.vhd"
    make_dynamic(copy, SIZE, [(0, bytes(content[: 2 * BLOCK]))])
    with (
        Image.open(str(base)) as b,
        closing(RawDisk.open(str(raw))) as r,
        Image.open(str(copy)) as c,
    ):
        assert differing_blocks(r, b).tolist() == [0, 1, 2, 3]  # what metadata alone says
        assert delta_blocks(r, b).tolist() == [1, 2]
        assert delta_blocks(c, b).tolist() == [1, 2]
        assert delta_blocks(b, c).tolist() == [1, 2]
        assert delta_blocks(b, b).size == 0


def test_delta_blocks_of_a_shared_chain_are_metadata_only(tmp_path: Path) -> None:
    """A VDI and its snapshot, children of one base: every block their own layers hold, even
    one whose bytes are equal on both sides (nothing is read to find out)."""
    base = tmp_path / "base.vhd"
    make_dynamic(base, SIZE, [(0, b"base")])
    vdi, snapshot = tmp_path / "vdi.vhd", tmp_path / "snapshot.vhd"
    for child, blocks in ((vdi, [1, 2]), (snapshot, [2])):
        vhd.create_differencing(str(child), str(base))
        with Image.open(str(child), writable=True) as image:
            for b in blocks:
                image.write(b * BLOCK, b"same")
    out = tmp_path / "delta.vhd"
    with Image.open(str(vdi)) as v, Image.open(str(snapshot)) as s:
        assert delta_blocks(v, s).tolist() == [1, 2]
        out.write_bytes(materialise(vhd_export_plan(v, base=s)))
    assert [b for b, entry in enumerate(bat_of(out)) if entry != 0xFFFFFFFF] == [1, 2]
    assert read_all(out) == read_all(vdi)


# Transport


def write_to_file(plan: Plan, path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        return write_plan(plan, fd)
    finally:
        os.close(fd)


def write_to_pipe(plan: Plan) -> tuple[int, bytes]:
    r, w = os.pipe()
    chunks: list[bytes] = []

    def reader() -> None:
        while chunk := os.read(r, 1 << 20):
            chunks.append(chunk)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        written = write_plan(plan, w)
    finally:
        os.close(w)
        thread.join()
        os.close(r)
    return written, b"".join(chunks)


def test_empty_dynamic_to_raw_is_all_holes(tmp_path: Path) -> None:
    src = tmp_path / "empty.vhd"
    vhd.create(str(src), 1 << 30)
    out = tmp_path / "empty.raw"
    with Image.open(str(src)) as image:
        plan = plan_raw(image)
        assert [type(e) for e in plan] == [Zeros]
        assert write_to_file(plan, out) == 1 << 30
    st_ = out.stat()
    assert st_.st_size == 1 << 30
    assert st_.st_blocks * 512 <= 64 << 10
    fd = os.open(out, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as info:
            os.lseek(fd, 0, os.SEEK_DATA)
        assert info.value.errno == errno.ENXIO
    finally:
        os.close(fd)


def test_zeros_become_holes(tmp_path: Path) -> None:
    with open_source(tmp_path, "raw") as disk:
        plan = plan_raw(disk)
        out = tmp_path / "out.raw"
        write_to_file(plan, out)
    assert out.read_bytes() == expected_content()
    # only the written areas (and file system rounding) hold blocks
    assert out.stat().st_blocks * 512 <= 200_000 + 4 * 4096 * 4


@pytest.mark.parametrize("plan_name", ["raw", "fixed", "vhd", "vhd-1m"])
@pytest.mark.parametrize("source", SOURCES)
def test_write_plan_to_file_and_pipe(tmp_path: Path, source: str, plan_name: str) -> None:
    with open_source(tmp_path, source) as disk:
        plan = PLANS[plan_name](disk)
        expected = materialise(plan)
        out = tmp_path / "out"
        assert write_to_file(plan, out) == plan.length
        assert out.read_bytes() == expected
        written, piped = write_to_pipe(plan)
        assert written == plan.length
        assert piped == expected


SINKS = ["file", "copy_file_range", "buffer"]


def through_sink(plan: Plan, kind: str, path: Path) -> bytes:
    """``plan`` executed by the sink ``kind`` after 100 bytes already there: what it wrote."""
    if kind == "buffer":
        buffer = bytearray(b"\xee" * (100 + plan.length))
        sink: FileSink | BufferSink = BufferSink(memoryview(buffer)[100:])
        assert execute(plan, sink) == plan.length
        assert buffer[:100] == b"\xee" * 100
        return bytes(buffer[100:])
    path.write_bytes(b"\xee" * 100)
    fd = os.open(path, os.O_RDWR)
    try:
        sink = FileSink(fd, 100) if kind == "file" else CopyRangeSink(fd, 100)
        assert execute(plan, sink) == plan.length
        assert sink.position == 100 + plan.length
        os.ftruncate(fd, 100 + plan.length)
    finally:
        os.close(fd)
    data = path.read_bytes()
    assert data[:100] == b"\xee" * 100
    return data[100:]


@pytest.mark.parametrize("sink", SINKS)
@pytest.mark.parametrize("plan_name", ["raw", "vhd"])
@pytest.mark.parametrize("source", SOURCES)
def test_sinks_execute_a_plan_at_an_offset(
    tmp_path: Path, source: str, plan_name: str, sink: str
) -> None:
    with open_source(tmp_path, source) as disk:
        plan = PLANS[plan_name](disk)
        assert through_sink(plan, sink, tmp_path / "out") == materialise(plan)


@pytest.mark.parametrize("sink", [*SINKS, "pipe"])
def test_a_copy_past_the_end_of_its_file_is_an_error(tmp_path: Path, sink: str) -> None:
    src = tmp_path / "short.raw"
    src.write_bytes(b"x" * 1000)
    with closing(RawDisk.open(str(src))) as disk:
        assert disk.file is not None
        plan = Plan(2000, lambda: iter([Copy(disk.file, 0, 2000)]))
        with pytest.raises(VhdError, match="ended early") as info:
            if sink == "pipe":
                write_to_pipe(plan)
            else:
                through_sink(plan, sink, tmp_path / "out")
    assert info.value.path == str(src)
    assert info.value.offset == 1000


def test_write_plan_after_existing_bytes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with open_source(tmp_path, "raw") as disk:
        plan = plan_fixed(disk)
        fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"HEAD")
            assert write_plan(plan, fd) == plan.length
            assert os.lseek(fd, 0, os.SEEK_CUR) == 4 + plan.length
        finally:
            os.close(fd)
        assert out.read_bytes() == b"HEAD" + materialise(plan)


def test_write_plan_refuses_a_file_with_data_ahead(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_bytes(b"old data")
    fd = os.open(out, os.O_WRONLY)
    try:
        with pytest.raises(VhdError):
            write_plan(plan_raw(RawDisk(None, 4096)), fd)
    finally:
        os.close(fd)
    assert out.read_bytes() == b"old data"
