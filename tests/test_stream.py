"""vhd.StreamParser: one-pass import of VHD streams fed in arbitrary slicings."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import vhd
from support import BLOCK, SIZE, MiB, materialise, pattern, qemu_convert_to_vpc, read_all
from vhd import Block, Data, End, Image, Metadata, StreamParser, VhdError
from vhd.format import DIFFERENCING, DYNAMIC, FIXED, DynamicHeader, Footer, checksum
from vhd.plan import ParentRef, allocated_blocks, differing_blocks, plan_vhd


@dataclass(frozen=True)
class Case:
    """A stream, the disk content it is applied onto, and the content it must produce."""

    stream: bytes
    base: bytes
    expected: bytes
    fixed: bool
    blocks: int = 0


def build_cases(tmp: Path) -> dict[str, Case]:
    cases: dict[str, Case] = {}

    # a dynamic image written out of order: physical order 3, 0, 2
    dyn = tmp / "dyn.vhd"
    vhd.create(str(dyn), SIZE)
    with Image.open(str(dyn), writable=True) as image:
        image.write(SIZE - 1000, pattern(1000, 1))
        image.write(3, pattern(70_000, 2))
        image.write(BLOCK - 1, bytes(2))  # zeros into allocated block 0, unallocated block 1
        image.write(5 * MiB + 7, pattern(3, 3))
    dyn_content = read_all(dyn)
    cases["file-dynamic"] = Case(dyn.read_bytes(), bytes(SIZE), dyn_content, False, 3)

    with Image.open(str(dyn)) as image:
        blocks = allocated_blocks(image)
        plan = plan_vhd(image, blocks)
        cases["plan-dynamic"] = Case(materialise(plan), bytes(SIZE), dyn_content, False, 3)
        plan = plan_vhd(image, allocated_blocks(image, MiB), block_size=MiB)
        cases["plan-1m"] = Case(materialise(plan), bytes(SIZE), dyn_content, False, 6)

    # small blocks, and a disk that ends inside its last block
    small = tmp / "small.vhd"
    vhd.create(str(small), SIZE, block_size=512 << 10)
    partial = tmp / "partial.vhd"
    vhd.create(str(partial), 5 * MiB + 512)
    for path in (small, partial):
        with Image.open(str(path), writable=True) as image:
            image.write(image.size - 1000, pattern(1000, 1))
            image.write(3, pattern(70_000, 2))
            image.write(3 * MiB + 7, pattern(3, 3))
    cases["file-512k"] = Case(small.read_bytes(), bytes(SIZE), read_all(small), False, 3)
    cases["file-partial"] = Case(
        partial.read_bytes(), bytes(5 * MiB + 512), read_all(partial), False, 3
    )

    # a differencing image with partial bitmaps over a base with data
    base = tmp / "base.vhd"
    vhd.create(str(base), SIZE)
    with Image.open(str(base), writable=True) as image:
        image.write(0, pattern(5 * MiB, 4))
    base_content = read_all(base)
    child = tmp / "child.vhd"
    vhd.create_differencing(str(child), str(base))
    with Image.open(str(child), writable=True) as image:
        image.write(7 * MiB, pattern(513, 5))
        image.write(1000, bytes(2000))
        image.write(BLOCK + 4096, pattern(4096, 6))
    child_content = read_all(child)
    cases["file-differencing"] = Case(child.read_bytes(), base_content, child_content, False, 3)

    with Image.open(str(child)) as image, Image.open(str(base)) as parent:
        ref = ParentRef.of(parent.footer, parent.file.mtime, "base.vhd")
        plan = plan_vhd(image, differing_blocks(image, parent), parent=ref)
        cases["plan-delta"] = Case(materialise(plan), base_content, child_content, False, 3)

    fixed = tmp / "fixed.vhd"
    vhd.create(str(fixed), SIZE, fixed=True)
    with Image.open(str(fixed), writable=True) as image:
        image.write(100, pattern(10_000, 7))
        image.write(SIZE - 3, b"end")
    cases["file-fixed"] = Case(fixed.read_bytes(), b"", read_all(fixed), True)
    return cases


def build_qemu_cases(tmp: Path, qemu_img: str) -> dict[str, Case]:
    raw = bytearray(SIZE)
    raw[100:5000] = pattern(4900, 8)
    raw[3 * MiB : 3 * MiB + 100] = b"x" * 100
    raw[-1] = 1
    src = tmp / "src.raw"
    src.write_bytes(raw)
    cases = {}
    for sub in ("dynamic", "fixed"):
        out = tmp / f"q-{sub}.vhd"
        qemu_convert_to_vpc(qemu_img, src, out, sub)
        stream = out.read_bytes()
        size = Footer.parse(stream[-512:], len(stream) - 512).current_size
        assert size >= SIZE  # qemu rounds up to a CHS size
        expected = bytes(raw) + bytes(size - SIZE)
        assert read_all(out) == expected
        fixed = sub == "fixed"
        cases[f"qemu-{sub}"] = Case(stream, b"" if fixed else bytes(size), expected, fixed, 3)
    return cases


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    return build_cases(tmp_path_factory.mktemp("streams"))


@pytest.fixture(scope="module")
def qemu_cases(tmp_path_factory: pytest.TempPathFactory, qemu_img: str) -> dict[str, Case]:
    return build_qemu_cases(tmp_path_factory.mktemp("qemu-streams"), qemu_img)


@dataclass
class Result:
    content: bytearray
    kinds: list[type]
    metadata: Metadata
    end: End


def feed_all(
    case: Case, chunks: list[bytes | memoryview], parser: StreamParser | None = None
) -> Result:
    """Feed ``chunks`` and close; apply every Data event at once onto the case's base."""
    parser = parser or StreamParser()
    content = bytearray(case.base)
    kinds: list[type] = []
    metadata: list[Metadata] = []
    ends: list[End] = []
    block: list[Block] = []

    def apply(events: Sequence[object]) -> None:
        for e in events:
            kinds.append(type(e))
            if isinstance(e, Block):
                block[:] = [e]
            elif isinstance(e, Data):
                assert isinstance(e.data, memoryview)
                end = e.offset + len(e.data)
                if block:  # dynamic: inside the announced block
                    assert block[0].offset <= e.offset
                    assert end <= block[0].offset + block[0].length
                if end > len(content):
                    content.extend(bytes(end - len(content)))
                content[e.offset : end] = e.data
            elif isinstance(e, Metadata):
                metadata.append(e)
            else:
                assert isinstance(e, End)
                ends.append(e)

    for chunk in chunks:
        apply(parser.feed(chunk))
    apply(parser.close())
    assert len(metadata) == 1 and len(ends) == 1
    return Result(content, kinds, metadata[0], ends[0])


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def slicings(draw: st.DrawFn, length: int) -> list[int]:
    """Cut points: small chunks (down to single bytes) over the metadata, a few chunks of any
    size, larger steps over the bulk, and small chunks again over the last bytes."""
    cuts, pos = [], 0
    for size in draw(st.lists(st.integers(1, 64), max_size=60)):
        pos += size
        cuts.append(pos)
    for size in draw(st.lists(st.integers(1, 1024) | st.integers(1, 3 * MiB), max_size=8)):
        pos += size
        cuts.append(pos)
    step = draw(st.integers(64 << 10, 4 * MiB))
    tail = length - draw(st.integers(0, 1100))
    while pos + step < tail:
        pos += step
        cuts.append(pos)
    for size in draw(st.lists(st.integers(1, 200), max_size=10)):
        tail += size
        cuts.append(tail)
    cuts.append(tail)
    return cuts


def check_result(case: Case, result: Result) -> None:
    assert result.content == case.expected
    kinds = result.kinds
    assert kinds[-1] is End
    if case.fixed:
        assert kinds[-2] is Metadata
        assert set(kinds[:-2]) == {Data}
        assert result.metadata.footer.disk_type == FIXED
        assert result.metadata.header is None
    else:
        assert kinds[0] is Metadata
        assert set(kinds[1:-1]) <= {Block, Data}
        assert kinds.count(Block) == case.blocks
        assert result.metadata.footer.disk_type in (DYNAMIC, DIFFERENCING)
        assert result.metadata.header is not None
        assert result.metadata.blocks == case.blocks
    assert result.end.footer == Footer.parse(case.stream[-512:], len(case.stream) - 512)


NAMES = [
    "file-dynamic",
    "plan-dynamic",
    "plan-1m",
    "file-512k",
    "file-partial",
    "file-differencing",
    "plan-delta",
    "file-fixed",
]

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    # shrinking multi-megabyte streams takes minutes: report the failing slicing as found
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(
    name=st.sampled_from(NAMES),
    data=st.data(),
)
def test_random_slicings(cases: dict[str, Case], name: str, data: st.DataObject) -> None:
    case = cases[name]
    cuts = data.draw(slicings(len(case.stream)), "cuts")
    check_result(case, feed_all(case, list(split(case.stream, cuts))))


@SETTINGS
@given(name=st.sampled_from(["qemu-dynamic", "qemu-fixed"]), data=st.data())
def test_random_slicings_of_qemu_images(
    qemu_cases: dict[str, Case], name: str, data: st.DataObject
) -> None:
    case = qemu_cases[name]
    cuts = data.draw(slicings(len(case.stream)), "cuts")
    check_result(case, feed_all(case, list(split(case.stream, cuts))))


@pytest.mark.parametrize("name", NAMES)
def test_whole_stream_at_once_and_byte_by_byte_metadata(cases: dict[str, Case], name: str) -> None:
    case = cases[name]
    check_result(case, feed_all(case, [case.stream]))
    meta = 512 + 1024 + 512 + 1024 + 512  # footer copy, header, BAT, locators, a bitmap
    chunks: list[bytes | memoryview] = [case.stream[i : i + 1] for i in range(meta)]
    chunks.append(memoryview(case.stream)[meta:-600])
    chunks += [case.stream[i : i + 1] for i in range(len(case.stream) - 600, len(case.stream))]
    check_result(case, feed_all(case, chunks))


def test_bytearray_and_memoryview_chunks(cases: dict[str, Case]) -> None:
    case = cases["plan-delta"]
    stream = case.stream
    chunks: list[bytes | memoryview] = [
        memoryview(bytearray(stream[:3000])),
        memoryview(stream)[3000 : 3 * MiB],
        memoryview(bytearray(stream[3 * MiB :])),
    ]
    check_result(case, feed_all(case, chunks))


def test_metadata_event(cases: dict[str, Case]) -> None:
    case = cases["plan-delta"]
    bat_end = layout(case.stream)[0] + 16
    parser = StreamParser()
    events = parser.feed(case.stream[: bat_end - 1])  # footer copy, header, all but 1 BAT byte
    assert events == []
    events = parser.feed(case.stream[bat_end - 1 : bat_end])
    assert len(events) == 1 and isinstance(events[0], Metadata)
    meta = events[0]
    assert meta.footer == Footer.parse(case.stream[:512])
    assert meta.footer.disk_type == DIFFERENCING
    assert meta.header is not None
    assert meta.header.parent_name == "base.vhd"
    assert meta.header.max_table_entries == 4
    assert meta.blocks == 3


def test_events_point_at_virtual_offsets(cases: dict[str, Case]) -> None:
    case = cases["file-differencing"]
    parser = StreamParser()
    events = parser.feed(case.stream) + parser.close()
    data = [(e.offset, len(e.data)) for e in events if isinstance(e, Data)]
    # the child holds sectors 1..5 of block 0 (zeros written at 1000..3000), 8 sectors at
    # BLOCK + 4096 and 2 sectors at 7 MiB: only those are passed on, in physical order
    assert data == [(7 * MiB, 1024), (512, 2560), (BLOCK + 4096, 4096)]


def test_block_events_announce_each_block_and_whether_it_is_full(
    cases: dict[str, Case], tmp_path: Path
) -> None:
    # partial bitmaps: the differencing child holds a few sectors of each of its blocks
    parser = StreamParser()
    events = parser.feed(cases["file-differencing"].stream) + parser.close()
    blocks = [e for e in events if isinstance(e, Block)]
    assert blocks == [
        Block(3 * BLOCK, BLOCK, False),
        Block(0, BLOCK, False),
        Block(BLOCK, BLOCK, False),
    ]
    # a one-pass export has full bitmaps; a last block cut by the virtual size is full too
    src = tmp_path / "full.vhd"
    vhd.create(str(src), BLOCK + 3 * 512)
    with Image.open(str(src), writable=True) as image:
        image.write(0, pattern(BLOCK + 3 * 512, 2))
    with Image.open(str(src)) as image:
        stream = b"".join(
            e.data
            if isinstance(e, vhd.Literal)
            else bytes(e.length)
            if isinstance(e, vhd.Zeros)
            else e.file.pread(e.length, e.offset)
            for e in plan_vhd(image, allocated_blocks(image))
        )
    parser = StreamParser()
    events = parser.feed(stream) + parser.close()
    assert [e for e in events if isinstance(e, Block)] == [
        Block(0, BLOCK, True),
        Block(BLOCK, 3 * 512, True),
    ]


# Zero copy


def test_data_events_are_views_of_the_fed_chunk(cases: dict[str, Case]) -> None:
    case = cases["plan-dynamic"]
    stream = case.stream
    first_block = layout(stream)[1][0][1] + 512  # data of the first block in the stream
    head, body = stream[:first_block], stream[first_block:]
    parser = StreamParser()
    assert [type(e) for e in parser.feed(head)] == [Metadata, Block]
    events = parser.feed(body)
    data = [e for e in events if isinstance(e, Data)]
    assert data
    for e in data:
        assert e.data.obj is body
    assert sum(len(e.data) for e in data) == 3 * BLOCK
    # the footer right after the last block ends the stream, before the end of the input
    assert isinstance(events[-1], End)
    assert parser.close() == []


def test_fixed_data_events_are_views_of_the_fed_chunk(cases: dict[str, Case]) -> None:
    case = cases["file-fixed"]
    stream = case.stream
    parser = StreamParser()
    first = parser.feed(stream[:512])
    assert [(e.offset, len(e.data)) for e in first if isinstance(e, Data)] == [(0, 512)]
    chunk = stream[512:]
    events = parser.feed(chunk)
    assert [
        (e.offset, len(e.data), e.data.obj is chunk) for e in events if isinstance(e, Data)
    ] == [(512, SIZE - 512, True)]
    assert all(isinstance(e, Data) for e in events)
    assert [type(e) for e in parser.close()] == [Metadata, End]


# Truncation


def layout(stream: bytes) -> tuple[int, list[tuple[int, int]]]:
    """The BAT offset of a dynamic stream and its (block, byte offset) in physical order."""
    header = DynamicHeader.parse(stream[512:1536], 512)
    at, n = header.table_offset, header.max_table_entries
    bat = np.frombuffer(stream[at : at + 4 * n], ">u4").tolist()
    return at, sorted(
        ((b, v * 512) for b, v in enumerate(bat) if v != 0xFFFFFFFF), key=lambda x: x[1]
    )


TRUNCATIONS = [
    # (where, bytes past it, field being read)
    ("start", 0, "footer copy"),
    ("start", 100, "footer copy"),
    ("start", 511, "footer copy"),
    ("start", 600, "header"),
    ("start", 1535, "header"),
    ("bat", 0, "bat"),
    ("bat", 15, "bat"),
    ("bat", 16, "image data"),  # between the BAT and the first block
    ("block0", 0, "bitmap of block {0}"),
    ("block0", 1, "bitmap of block {0}"),
    ("block0", 511, "bitmap of block {0}"),
    ("block0", 513, "image data"),
    ("block0", 512 + BLOCK - 1, "image data"),
    ("block1", 0, "bitmap of block {1}"),
    ("block1", 512 + BLOCK - 1, "image data"),
]


@pytest.mark.parametrize(("where", "past", "field"), TRUNCATIONS)
def test_truncated_dynamic_stream(
    cases: dict[str, Case], where: str, past: int, field: str
) -> None:
    case = cases["file-dynamic"]
    table, blocks = layout(case.stream)
    assert [b for b, _ in blocks] == [3, 0, 2]  # physical order
    base = {"start": 0, "bat": table, "block0": blocks[0][1], "block1": blocks[1][1]}[where]
    cut = base + past
    field = field.format(blocks[0][0], blocks[1][0])
    parser = StreamParser()
    parser.feed(case.stream[:cut])
    with pytest.raises(VhdError) as info:
        parser.close()
    assert info.value.field == field
    assert info.value.offset == cut
    assert "ends early" in info.value.message
    # the parser stays failed
    with pytest.raises(VhdError):
        parser.close()
    with pytest.raises(VhdError):
        parser.feed(b"more")


@pytest.mark.parametrize("missing", [100, 512])
@pytest.mark.parametrize("name", ["file-dynamic", "plan-dynamic"])
def test_dynamic_stream_cut_in_its_trailing_footer(
    cases: dict[str, Case], name: str, missing: int
) -> None:
    case = cases[name]
    parser = StreamParser()
    parser.feed(case.stream[:-missing])
    with pytest.raises(VhdError) as info:
        parser.close()
    # every block arrived: what is missing is the footer, and the error should say so
    assert info.value.field is not None
    assert info.value.field.startswith("footer"), str(info.value)


def test_truncated_locators_of_a_delta(cases: dict[str, Case]) -> None:
    case = cases["plan-delta"]
    parser = StreamParser()
    parser.feed(case.stream[:2100])  # inside the parent locators after the BAT
    with pytest.raises(VhdError, match="ends early"):
        parser.close()


def test_truncated_fixed_stream(cases: dict[str, Case]) -> None:
    case = cases["file-fixed"]
    parser = StreamParser()
    for cut in (100, 700):
        parser = StreamParser()
        parser.feed(case.stream[:cut])
        with pytest.raises(VhdError):
            parser.close()
    parser = StreamParser()
    parser.feed(case.stream[: MiB + 512])
    with pytest.raises(VhdError) as info:
        parser.close()
    assert info.value.field == "footer.cookie"
    assert info.value.offset == MiB


def test_empty_stream() -> None:
    parser = StreamParser()
    assert parser.feed(b"") == []
    with pytest.raises(VhdError) as info:
        parser.close()
    assert (info.value.field, info.value.offset) == ("footer copy", 0)


# Damaged endings


def with_footer(stream: bytes, footer: bytes) -> bytes:
    return stream[:-512] + footer


def test_trailing_footer_different_from_the_copy(cases: dict[str, Case]) -> None:
    case = cases["plan-dynamic"]
    other = Footer.parse(case.stream[-512:]).replace(timestamp=12345).build()
    stream = with_footer(case.stream, other)
    parser = StreamParser()
    parser.feed(stream)
    with pytest.raises(VhdError) as info:
        parser.close()
    assert info.value.field == "footer"
    assert info.value.offset == len(stream) - 512
    assert "differs" in info.value.message


def test_trailing_footer_with_a_bad_checksum(cases: dict[str, Case]) -> None:
    case = cases["file-differencing"]
    footer = bytearray(case.stream[-512:])
    footer[200] ^= 1
    parser = StreamParser()
    parser.feed(with_footer(case.stream, bytes(footer)))
    with pytest.raises(VhdError) as info:
        parser.close()
    assert info.value.field == "footer.checksum"
    assert info.value.offset == len(case.stream) - 512 + 64


@pytest.mark.parametrize("name", ["plan-dynamic", "file-fixed"])
def test_data_after_the_end(cases: dict[str, Case], name: str) -> None:
    case = cases[name]
    parser = StreamParser()
    parser.feed(case.stream)
    parser.close()
    with pytest.raises(VhdError) as info:
        parser.feed(b"x")
    assert "after the end" in info.value.message
    assert info.value.offset == len(case.stream)


@pytest.mark.parametrize("name", ["plan-dynamic", "file-differencing", "file-fixed"])
@pytest.mark.parametrize("extra", [1, 100, 512, 4096])
def test_junk_after_the_footer(cases: dict[str, Case], name: str, extra: int) -> None:
    case = cases[name]
    parser = StreamParser()
    with pytest.raises(VhdError):  # at once for a dynamic stream, whose footer ends it
        parser.feed(case.stream + b"\x01" * extra)
        parser.close()


def test_padding_before_the_trailing_footer(cases: dict[str, Case]) -> None:
    """When bytes lie between the last block and the footer, the footer is the stream's last
    512 bytes: the stream ends at close, with the same content."""
    case = cases["plan-dynamic"]
    padded = case.stream[:-512] + bytes(1536) + case.stream[-512:]
    result = feed_all(case, [padded[:-700], padded[-700:]])
    assert result.content == case.expected
    parser = StreamParser()
    assert not any(isinstance(e, End) for e in parser.feed(padded))
    assert [type(e) for e in parser.close()] == [End]


def test_fixed_stream_with_its_footer_twice(cases: dict[str, Case]) -> None:
    case = cases["file-fixed"]
    parser = StreamParser()
    parser.feed(case.stream + case.stream[-512:])
    with pytest.raises(VhdError) as info:
        parser.close()
    assert info.value.field == "footer.current_size"


def test_fixed_footer_claiming_another_size(cases: dict[str, Case]) -> None:
    case = cases["file-fixed"]
    footer = Footer.parse(case.stream[-512:]).replace(current_size=SIZE - 512).build()
    parser = StreamParser()
    parser.feed(with_footer(case.stream, footer))
    with pytest.raises(VhdError) as info:
        parser.close()
    assert (info.value.field, info.value.offset) == ("footer.current_size", SIZE + 48)


def test_dynamic_stream_with_a_damaged_footer_copy(cases: dict[str, Case]) -> None:
    case = cases["plan-dynamic"]
    stream = bytearray(case.stream)
    stream[300] ^= 0xFF
    parser = StreamParser()
    parser.feed(bytes(stream))
    with pytest.raises(VhdError) as info:
        parser.close()
    assert info.value.field == "footer.disk_type"
    assert "damaged" in info.value.message


# Limits


def test_virtual_size_above_max_size(cases: dict[str, Case]) -> None:
    case = cases["plan-dynamic"]
    parser = StreamParser(max_size=SIZE - 512)
    with pytest.raises(VhdError) as info:
        parser.feed(case.stream[:512])
    assert (info.value.field, info.value.offset) == ("footer.current_size", 48)
    with pytest.raises(VhdError):
        parser.feed(case.stream[512:])
    # exactly at the limit is fine
    check_result(case, feed_all(case, [case.stream], StreamParser(max_size=SIZE)))


def test_fixed_data_above_max_size(cases: dict[str, Case]) -> None:
    case = cases["file-fixed"]
    parser = StreamParser(max_size=4 * MiB)
    received = 0
    with pytest.raises(VhdError) as info:
        for i in range(0, len(case.stream), 64 << 10):
            for e in parser.feed(case.stream[i : i + (64 << 10)]):
                if isinstance(e, Data):
                    received += len(e.data)
    assert info.value.field == "data"
    # the parser stops before passing on more than the limit
    assert received <= 4 * MiB
    check_result(case, feed_all(case, [case.stream], StreamParser(max_size=SIZE)))


# Malformed metadata


def patch_header(stream: bytes, offset: int, value: bytes) -> bytes:
    out = bytearray(stream)
    out[512 + offset : 512 + offset + len(value)] = value
    out[512 + 36 : 512 + 40] = checksum(out[512:1536], 36).to_bytes(4, "big")
    return bytes(out)


def test_bad_header_in_a_stream(cases: dict[str, Case]) -> None:
    case = cases["plan-dynamic"]
    stream = patch_header(case.stream, 32, (3 * MiB).to_bytes(4, "big"))
    parser = StreamParser()
    with pytest.raises(VhdError) as info:
        parser.feed(stream[:4096])
    assert (info.value.field, info.value.offset) == ("header.block_size", 512 + 32)


def test_overlapping_blocks_in_a_stream(cases: dict[str, Case]) -> None:
    case = cases["plan-dynamic"]
    stream = bytearray(case.stream)
    table = layout(case.stream)[0]
    bat = np.frombuffer(stream[table : table + 16], ">u4").copy()
    allocated = [i for i, v in enumerate(bat.tolist()) if v != 0xFFFFFFFF]
    bat[allocated[1]] = bat[allocated[0]] + 1
    stream[table : table + 16] = bat.tobytes()
    parser = StreamParser()
    with pytest.raises(VhdError) as info:
        parser.feed(bytes(stream[:4096]))
    assert info.value.field == f"bat[{allocated[1]}]"
    assert info.value.offset == table + 4 * allocated[1]
