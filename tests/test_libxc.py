"""migrate.formats.libxc: the libxc v3 x86 HVM stream, written and read back, and every refusal."""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migrate.formats import libxc
from migrate.formats.libxc import (
    PAGE_SIZE,
    DomainHeader,
    End,
    Event,
    HvmContext,
    HvmParams,
    ImageHeader,
    Pages,
    StaticDataEnd,
    StreamError,
    StreamReader,
    TscInfo,
    page_data_header,
    page_runs,
)

MEMORY_PAGES = 64


def read_stream(
    data: bytes, memory_pages: int = MEMORY_PAGES, piece: int | None = None
) -> tuple[list[Event], bytearray]:
    """Drive a reader over ``data`` as an I/O layer would: feed ``need()`` bytes (or at most
    ``piece`` at a time), copy page data into a memory image run by run, zero XALLOC runs."""
    memory = bytearray(b"\xaa" * memory_pages * PAGE_SIZE)
    reader = StreamReader(memory_pages)
    events: list[Event] = []
    pos = 0
    while (n := reader.need()) > 0:
        take = min(n, piece) if piece else n
        chunk = data[pos : pos + take]
        if not chunk:
            reader.end_of_input()
        pos += len(chunk)
        event = reader.feed(chunk)
        if event is None:
            continue
        events.append(event)
        if isinstance(event, Pages):
            assert reader.payload() == event.payload
            for start, stop in event.zero_runs:
                memory[start * PAGE_SIZE : stop * PAGE_SIZE] = bytes((stop - start) * PAGE_SIZE)
            for start, stop in event.runs:
                size = (stop - start) * PAGE_SIZE
                if pos + size > len(data):
                    reader.end_of_input()
                memory[start * PAGE_SIZE : stop * PAGE_SIZE] = data[pos : pos + size]
                pos += size
            reader.payload_done()
    reader.feed(data[pos:])  # anything after the end is refused
    assert reader.done
    reader.end_of_input()
    return events, memory


def page(n: int) -> bytes:
    """A page whose every byte is ``n`` (never zero for n > 0)."""
    return bytes([n % 255 + 1]) * PAGE_SIZE


def pages_record(pfns: list[int], zero: list[bool] | None = None) -> bytes:
    """A whole PAGE_DATA record: the header, then the data of the non-zero pages."""
    mask = np.array(zero if zero is not None else [False] * len(pfns), dtype=bool)
    header = page_data_header(np.array(pfns, dtype=np.uint64), mask if zero is not None else None)
    return header + b"".join(page(p) for p, z in zip(pfns, mask, strict=True) if not z)


CONTEXT = b"cpu state: registers" * 3
PARAMS = [(2, 0xFEFFF), (5, 1), (0xFFFFFFFFFFFFFFFF, 0x8000000000000000)]


def stream(*records: bytes, tail: bytes | None = None) -> bytes:
    """A stream: headers, STATIC_DATA_END, ``records``, then ``tail`` (default: the CPU state
    and END)."""
    if tail is None:
        tail = (
            libxc.tsc_info(1, 2_000_000, 123456789, 7)
            + libxc.hvm_params(PARAMS)
            + libxc.hvm_context(CONTEXT)
            + libxc.end()
        )
    return (
        libxc.image_header()
        + libxc.domain_header()
        + libxc.static_data_end()
        + b"".join(records)
        + tail
    )


GOOD = stream(
    pages_record([0, 1, 2, 3, 10, 9, 20]),
    pages_record([4, 5, 6, 7, 8], zero=[False, True, True, False, False]),
    pages_record([1, 63], zero=[True, False]),  # a later round overwrites pfn 1 with zeros
    pages_record([30, 31], zero=[True, True]),  # no data at all
)


def expected_memory() -> bytes:
    memory = bytearray(b"\xaa" * MEMORY_PAGES * PAGE_SIZE)
    for p in (0, 2, 3, 10, 9, 20, 4, 7, 8, 63):
        memory[p * PAGE_SIZE : (p + 1) * PAGE_SIZE] = page(p)
    for p in (1, 5, 6, 30, 31):
        memory[p * PAGE_SIZE : (p + 1) * PAGE_SIZE] = bytes(PAGE_SIZE)
    return bytes(memory)


# -- writers ---------------------------------------------------------------------------------


def test_headers_byte_for_byte() -> None:
    assert libxc.image_header() == bytes.fromhex("ffffffffffffffff58454e46000000030000000000000000")
    assert libxc.domain_header(4, 17) == struct.pack("<IHHII", 2, 12, 0, 4, 17)
    assert libxc.static_data_end() == struct.pack("<II", 0x10, 0)
    assert libxc.end() == bytes(8)


def test_records_are_padded_to_8() -> None:
    record = libxc.hvm_context(b"abc")
    assert record == struct.pack("<II", 9, 3) + b"abc" + bytes(5)
    assert len(libxc.hvm_context(bytes(8))) == 16
    assert libxc.tsc_info(1, 2, 3, 4) == struct.pack("<IIIIQII", 8, 24, 1, 2, 3, 4, 0)
    assert libxc.hvm_params([(1, 2)]) == struct.pack("<IIIIQQ", 0xA, 24, 1, 0, 1, 2)


def test_page_data_header_layout() -> None:
    pfns = np.array([7, 8, 0xF_FFFF_FFFF_FFFF], dtype=np.uint64)
    header = page_data_header(pfns, np.array([False, True, False]))
    count = 3
    length = 8 + 8 * count + 2 * PAGE_SIZE
    assert header[:16] == struct.pack("<IIII", 1, length, count, 0)
    entries = struct.unpack("<3Q", header[16:])
    assert entries == (7, (0xE << 60) | 8, 0xF_FFFF_FFFF_FFFF)
    assert len(page_data_header(np.arange(1024, dtype=np.uint64))) == 16 + 8 * 1024


@pytest.mark.parametrize(
    ("pfns", "zero", "message"),
    [
        (np.array([], dtype=np.uint64), None, "1 to 1024"),
        (np.arange(1025, dtype=np.uint64), None, "1 to 1024"),
        (np.array([[1, 2]], dtype=np.uint64), None, "1 to 1024"),
        (np.array([1 << 52], dtype=np.uint64), None, "outside"),
        (np.array([-1], dtype=np.int64), None, "outside"),
        (np.array([1.0]), None, "integers"),
        (np.array([1, 2], dtype=np.uint64), np.array([True]), "shape"),
    ],
)
def test_page_data_header_refuses(pfns: np.ndarray, zero: np.ndarray | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        page_data_header(pfns, zero)


def test_writers_refuse() -> None:
    with pytest.raises(ValueError, match="empty"):
        libxc.hvm_context(b"")
    with pytest.raises(ValueError, match="exceeds 16777216"):
        libxc.hvm_context(bytes(libxc.HVM_CONTEXT_MAX + 1))
    with pytest.raises(ValueError, match="1025 HVM parameters exceed 1024"):
        libxc.hvm_params([(1, 2)] * 1025)


def test_page_runs() -> None:
    assert page_runs(np.array([], dtype=np.uint64)).shape == (0, 2)
    runs = page_runs(np.array([3, 4, 5, 9, 8, 10, 11, 2], dtype=np.uint64))
    assert runs.dtype == np.int64
    assert runs.tolist() == [[3, 6], [9, 10], [8, 9], [10, 12], [2, 3]]


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("piece", [None, 1, 3, 4096, 5000])
def test_round_trip(piece: int | None) -> None:
    events, memory = read_stream(GOOD, piece=piece)
    assert events[:3] == [ImageHeader(3), DomainHeader(4, 17), StaticDataEnd()]
    pages = [e for e in events if isinstance(e, Pages)]
    assert [p.pfns.tolist() for p in pages] == [
        [0, 1, 2, 3, 10, 9, 20],
        [4, 5, 6, 7, 8],
        [1, 63],
        [30, 31],
    ]
    assert pages[0].runs.tolist() == [[0, 4], [10, 11], [9, 10], [20, 21]]
    assert pages[0].payload == 7 * PAGE_SIZE
    assert pages[1].data.tolist() == [True, False, False, True, True]
    assert pages[1].runs.tolist() == [[4, 5], [7, 9]]
    assert pages[1].zero_runs.tolist() == [[5, 7]]
    assert pages[1].types.tolist() == [0, 0xE, 0xE, 0, 0]
    assert pages[1].data_pfns.tolist() == [4, 7, 8]
    assert pages[1].zero_pfns.tolist() == [5, 6]
    assert pages[3].payload == 0 and pages[3].runs.shape == (0, 2)
    assert events[-4:] == [
        TscInfo(1, 2_000_000, 123456789, 7),
        HvmParams(tuple(PARAMS)),
        HvmContext(CONTEXT),
        End(),
    ]
    assert bytes(memory) == expected_memory()


def test_context_before_params_and_no_tsc() -> None:
    """libxc's own saver writes HVM_CONTEXT before HVM_PARAMS; TSC info is optional."""
    data = stream(
        pages_record([0]),
        tail=libxc.hvm_context(b"x") + libxc.hvm_params([]) + libxc.end(),
    )
    events, _ = read_stream(data)
    assert events[-3:] == [HvmContext(b"x"), HvmParams(()), End()]


def test_page_table_types_carry_data() -> None:
    """Types 1-4 and 9-12 (page tables, PV) carry data as libxc defines them."""
    header = bytearray(page_data_header(np.array([0, 1], dtype=np.uint64)))
    struct.pack_into("<Q", header, 16, (0x9 << 60) | 0)
    struct.pack_into("<Q", header, 24, (0x4 << 60) | 1)
    events, memory = read_stream(stream(bytes(header) + page(0) + page(1)))
    pages = next(e for e in events if isinstance(e, Pages))
    assert pages.types.tolist() == [9, 4] and pages.data.all()
    assert memory[:PAGE_SIZE] == page(0)


def test_optional_unknown_record_is_skipped() -> None:
    optional = struct.pack("<II", 0x80000123, 5) + b"hello" + bytes(3)
    events, _ = read_stream(stream(optional, pages_record([0]), optional))
    assert sum(isinstance(e, Pages) for e in events) == 1


def test_need_is_bounded_and_exact() -> None:
    big = b"c" * (3 << 20)
    data = stream(tail=libxc.hvm_context(big) + libxc.end())
    reader = StreamReader(MEMORY_PAGES)
    pos, needs = 0, []
    while (n := reader.need()) > 0:
        needs.append(n)
        event = reader.feed(data[pos : pos + n])
        pos += n
    assert max(needs) == libxc.MAX_NEED
    assert needs[:3] == [24, 16, 8]
    assert isinstance(event, End)
    assert pos == len(data) == reader.offset


def test_reader_usage_errors() -> None:
    reader = StreamReader(MEMORY_PAGES)
    with pytest.raises(RuntimeError, match="at most 24"):
        reader.feed(bytes(25))
    with pytest.raises(RuntimeError, match="no page data"):
        reader.payload()
    with pytest.raises(RuntimeError, match="no page data"):
        reader.payload_done()
    assert reader.feed(b"") is None
    with pytest.raises(ValueError, match="positive"):
        StreamReader(0)
    reader = StreamReader(MEMORY_PAGES)
    data = stream(pages_record([0]))
    pos = 0
    while not isinstance(reader.feed(data[pos : pos + reader.need()]), Pages):
        pos = reader.offset
    with pytest.raises(RuntimeError, match="payload"):
        reader.need()
    with pytest.raises(RuntimeError, match="payload"):
        reader.feed(b"x")


def test_offsets_count_page_data_and_a_base() -> None:
    data = stream(pages_record([0, 1]), tail=b"")
    reader = StreamReader(MEMORY_PAGES, offset=1000)
    pos = 0
    while True:
        event = reader.feed(data[pos : pos + reader.need()])
        pos = reader.offset - 1000
        if isinstance(event, Pages):
            break
    reader.payload_done()
    assert reader.offset == 1000 + len(data)
    with pytest.raises(StreamError) as e:
        reader.feed(struct.pack("<II", 0x77, 0))
    assert e.value.offset == 1000 + len(data)
    assert e.value.record == "record type 0x77"


# -- refusals --------------------------------------------------------------------------------


def refused(data: bytes, memory_pages: int = MEMORY_PAGES) -> StreamError:
    """The error reading ``data`` fed whole units and fed byte by byte; both must agree."""
    errors = []
    for piece in (None, 1):
        with pytest.raises(StreamError) as e:
            read_stream(data, memory_pages, piece=piece)
        errors.append(e.value)
    assert str(errors[0]) == str(errors[1])
    return errors[0]


HEADERS = libxc.image_header() + libxc.domain_header()
SDE_AT = len(HEADERS)
AFTER_SDE = SDE_AT + 8


def with_bytes(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


@pytest.mark.parametrize(
    ("offset", "new", "record", "message"),
    [
        (0, b"\xff\xff\xff\xfe", "image header", "marker 0xfffffffeffffffff"),
        (8, b"XENG", "image header", "id 0x58454e47"),
        (12, struct.pack(">I", 2), "image header", "version 2"),
        (12, struct.pack(">I", 4), "image header", "version 4"),
        (16, struct.pack(">H", 1), "image header", "big-endian"),
        (16, struct.pack(">H", 2), "image header", "reserved option bits"),
        (18, b"\x00\x01", "image header", "reserved fields"),
        (20, b"\x00\x00\x00\x01", "image header", "reserved fields"),
        (24, struct.pack("<I", 1), "domain header", "guest type 1 (x86 PV)"),
        (24, struct.pack("<I", 3), "domain header", "guest type 3 (x86 PVH)"),
        (24, struct.pack("<I", 9), "domain header", "guest type 9 (unknown)"),
        (28, struct.pack("<H", 16), "domain header", "page shift 16"),
        (30, struct.pack("<H", 1), "domain header", "reserved"),
    ],
)
def test_bad_headers(offset: int, new: bytes, record: str, message: str) -> None:
    error = refused(with_bytes(GOOD, offset, new))
    assert error.record == record
    assert error.offset == (0 if record == "image header" else 24)
    assert message in str(error)


def record(rtype: int, body: bytes = b"") -> bytes:
    return struct.pack("<II", rtype, len(body)) + body + bytes(-len(body) % 8)


@pytest.mark.parametrize(
    ("rtype", "message"),
    [
        (0x02, "X86_PV_INFO.*PV-only"),
        (0x07, "SHARED_INFO.*PV-only"),
        (0x0C, "X86_PV_VCPU_MSRS.*PV-only"),
        (0x0B, "TOOLSTACK.*obsolete"),
        (0x0D, "VERIFY.*verify"),
        (0x0E, "CHECKPOINT .*checkpointed"),
        (0x0F, "CHECKPOINT_DIRTY_PFN_LIST.*checkpointed"),
        (0x11, "X86_CPUID_POLICY.*CPUID"),
        (0x12, "X86_MSR_POLICY.*MSR"),
        (0x13, "record type 0x13 .*unknown record type"),
        (0x7FFFFFFF, "record type 0x7fffffff .*unknown record type"),
    ],
)
def test_unknown_and_unsupported_records(rtype: int, message: str) -> None:
    error = refused(stream(record(rtype, bytes(8))))
    assert error.offset == AFTER_SDE
    assert error.record in str(error)
    assert f"at stream offset {AFTER_SDE}" in str(error)
    assert re.search(message, str(error)), str(error)


def test_record_over_128_mib() -> None:
    header = struct.pack("<II", 9, (128 << 20) + 1)
    error = refused(stream(header, tail=b""))
    assert (error.record, error.offset) == ("HVM_CONTEXT", AFTER_SDE)
    assert "134217729 bytes exceeds the 128 MiB limit" in str(error)
    # The limit itself is accepted (an optional record, skipped): the stream is then truncated.
    header = struct.pack("<II", 0x80000001, 128 << 20)
    error = refused(stream(header, tail=b""))
    assert "ends" in str(error)
    # An optional record over the limit is refused too, never skipped.
    error = refused(stream(struct.pack("<II", 0x80000001, 0xFFFFFFFF), tail=b""))
    assert "exceeds the 128 MiB limit" in str(error)


CPU_STATE = libxc.hvm_params([]) + libxc.hvm_context(b"x")


@pytest.mark.parametrize(
    ("data", "record", "offset", "message"),
    [
        (HEADERS + pages_record([0]), "PAGE_DATA", SDE_AT, "before STATIC_DATA_END"),
        (HEADERS + libxc.hvm_context(b"x"), "HVM_CONTEXT", SDE_AT, "before STATIC_DATA_END"),
        (HEADERS + libxc.end(), "END", SDE_AT, "before STATIC_DATA_END"),
        (stream(libxc.static_data_end()), "STATIC_DATA_END", AFTER_SDE, "a second"),
        (
            stream(tail=CPU_STATE + pages_record([0]) + libxc.end()),
            "PAGE_DATA",
            AFTER_SDE + len(CPU_STATE),
            "after HVM_PARAMS: the pages must precede the CPU state",
        ),
        (
            stream(tail=libxc.tsc_info() + pages_record([0])),
            "PAGE_DATA",
            AFTER_SDE + 32,
            "after X86_TSC_INFO",
        ),
        (
            stream(tail=CPU_STATE + libxc.hvm_context(b"y")),
            "HVM_CONTEXT",
            AFTER_SDE + len(CPU_STATE),
            "a second HVM_CONTEXT",
        ),
        (
            stream(tail=CPU_STATE + libxc.hvm_params([])),
            "HVM_PARAMS",
            AFTER_SDE + len(CPU_STATE),
            "a second HVM_PARAMS",
        ),
        (
            stream(tail=libxc.tsc_info() + libxc.tsc_info()),
            "X86_TSC_INFO",
            AFTER_SDE + 32,
            "a second X86_TSC_INFO",
        ),
        (
            stream(pages_record([0]), tail=libxc.hvm_params([]) + libxc.end()),
            "END",
            AFTER_SDE + len(pages_record([0])) + 16,
            "before HVM_CONTEXT",
        ),
    ],
)
def test_wrong_order(data: bytes, record: str, offset: int, message: str) -> None:
    error = refused(data)
    assert (error.record, error.offset) == (record, offset)
    assert message in str(error)


def feed_all(reader: StreamReader, data: bytes) -> None:
    """Feed ``data`` whole units at a time, skipping over page data."""
    pos = 0
    while (n := reader.need()) > 0:
        event = reader.feed(data[pos : pos + n])
        pos += n
        if isinstance(event, Pages):
            pos += reader.payload()
            reader.payload_done()


def test_anything_after_end() -> None:
    reader = StreamReader(MEMORY_PAGES)
    feed_all(reader, GOOD)
    assert reader.done and reader.offset == len(GOOD)
    end_at = len(GOOD) - 8
    with pytest.raises(StreamError, match=f"END at stream offset {end_at}: 1 bytes follow"):
        reader.feed(b"\x00")
    with pytest.raises(StreamError, match="follow"):  # and the reader stays failed
        reader.end_of_input()


@pytest.mark.parametrize(
    ("body", "memory_pages", "message"),
    [
        (struct.pack("<II", 0, 0), MEMORY_PAGES, "count 0 is outside 1..1024"),
        (struct.pack("<II", 1025, 0), MEMORY_PAGES, "count 1025 is outside 1..1024"),
        (struct.pack("<IIQ", 1, 1, 0) + page(0), MEMORY_PAGES, "reserved field"),
        (struct.pack("<IIQ", 1, 0, 64) + page(0), 64, "entry 0: pfn 0x40 is beyond the guest's 64"),
        (
            struct.pack("<IIQQ", 2, 0, 3, (1 << 52) - 1) + page(0) * 2,
            64,
            "entry 1: pfn 0xfffffffffffff is beyond",
        ),
        (struct.pack("<IIQ", 1, 0, 5 << 60), MEMORY_PAGES, "entry 0: page type 0x5 is invalid"),
        (struct.pack("<IIQ", 1, 0, 8 << 60), MEMORY_PAGES, "page type 0x8 is invalid"),
        (struct.pack("<IIQ", 1, 0, 0xD << 60), MEMORY_PAGES, "page type 0xd (BROKEN)"),
        (struct.pack("<IIQQ", 2, 0, 1, 0xF << 60), MEMORY_PAGES, "entry 1: page type 0xf (XTAB"),
        (struct.pack("<IIQ", 1, 0, 1 << 52) + page(0), MEMORY_PAGES, "reserved bits 59-52"),
        (struct.pack("<IIQ", 1, 0, 0), MEMORY_PAGES, "body of 16 bytes, expected 4112"),
        (
            struct.pack("<IIQ", 1, 0, 0xE << 60) + page(0),
            MEMORY_PAGES,
            "body of 4112 bytes, expected 16 for 1 pfns of which 0 carry data",
        ),
        (struct.pack("<II", 2, 0) + bytes(8), MEMORY_PAGES, "too short for 2 pfns"),
        (b"\x01\x00\x00\x00", MEMORY_PAGES, "no room for the page count"),
    ],
)
def test_bad_page_data(body: bytes, memory_pages: int, message: str) -> None:
    error = refused(stream(record(1, body)), memory_pages)
    assert (error.record, error.offset) == ("PAGE_DATA", AFTER_SDE)
    assert message in str(error)


@pytest.mark.parametrize(
    ("data", "record", "message"),
    [
        (record(0x08, bytes(16)), "X86_TSC_INFO", "body of 16 bytes, expected 24"),
        (record(0x08, bytes(20) + b"\x01" + bytes(3)), "X86_TSC_INFO", "reserved"),
        (record(0x09), "HVM_CONTEXT", "empty"),
        (record(0x0A, bytes(4)), "HVM_PARAMS", "not 8 + 16 bytes per parameter"),
        (record(0x0A, bytes(8 + 8)), "HVM_PARAMS", "not 8 + 16 bytes per parameter"),
        (record(0x0A, struct.pack("<II", 2, 0) + bytes(16)), "HVM_PARAMS", "count 2"),
        (record(0x0A, struct.pack("<II", 0, 1)), "HVM_PARAMS", "reserved"),
        (struct.pack("<II", 0x0A, 8 + 16 * 1025), "HVM_PARAMS", "holds over 1024 parameters"),
        (struct.pack("<II", 9, (16 << 20) + 1), "HVM_CONTEXT", "16777217 bytes exceeds 16777216"),
        (struct.pack("<II", 9, 3) + b"abc" + b"\x00\x00\x01\x00\x00", "HVM_CONTEXT", "padding"),
    ],
)
def test_bad_record_bodies(data: bytes, record: str, message: str) -> None:
    error = refused(stream(data, tail=b""))
    assert (error.record, error.offset) == (record, AFTER_SDE)
    assert message in str(error)


def test_static_data_end_with_a_body() -> None:
    error = refused(HEADERS + record(0x10, bytes(8)))
    assert (error.record, error.offset) == ("STATIC_DATA_END", SDE_AT)
    assert "body of 8 bytes, expected 0" in str(error)


def test_end_with_a_body() -> None:
    data = stream(tail=CPU_STATE + record(0, bytes(8)))
    error = refused(data)
    assert error.record == "END"
    assert "body of 8 bytes, expected 0" in str(error)


def test_truncation_at_every_byte() -> None:
    """Every proper prefix of a small stream is refused as truncated, naming where it was."""
    small = stream(
        pages_record([0, 1], zero=[False, True]),
        tail=libxc.tsc_info()
        + libxc.hvm_params([(1, 2)])
        + libxc.hvm_context(b"ctx")
        + libxc.end(),
    )
    read_stream(small)
    for cut in range(len(small)):
        with pytest.raises(StreamError) as e:
            read_stream(small[:cut])
        message = str(e.value)
        assert "ends" in message, message
        assert e.value.offset <= cut
        if cut < 24:
            assert e.value.record == "image header"
        elif cut < 40:
            assert e.value.record == "domain header"


def test_truncation_messages() -> None:
    with pytest.raises(StreamError, match="image header at stream offset 0: the stream ends at"):
        read_stream(b"")
    data = stream(pages_record([0]))
    page_at = AFTER_SDE
    with pytest.raises(
        StreamError, match=f"PAGE_DATA at stream offset {page_at}: .* 4096 bytes of page data"
    ):
        read_stream(data[: page_at + 16 + 8 + 100])
    with pytest.raises(
        StreamError, match=f"stream at stream offset {page_at}: ends before its END"
    ):
        read_stream(data[:page_at])
    with pytest.raises(StreamError, match=f"record at stream offset {page_at}: .*record header"):
        read_stream(data[: page_at + 3])


@settings(max_examples=60, deadline=None)
@given(
    records=st.lists(
        st.lists(
            st.tuples(st.integers(0, MEMORY_PAGES - 1), st.booleans()), min_size=1, max_size=40
        ),
        max_size=6,
    ),
    piece=st.sampled_from([None, 1, 5, 8, 100]),
)
def test_random_streams_round_trip(
    records: list[list[tuple[int, bool]]], piece: int | None
) -> None:
    """Any sequence of records reads back to the memory a page-by-page model expects: in a
    record, XALLOC pages zeroed first, then the data pages in order (a pfn listed both ways ends
    with its data, as libxc, whose XALLOC never clears a page)."""
    model = bytearray(b"\xaa" * MEMORY_PAGES * PAGE_SIZE)
    for entries in records:
        for pfn, zero in entries:
            if zero:
                model[pfn * PAGE_SIZE : (pfn + 1) * PAGE_SIZE] = bytes(PAGE_SIZE)
        for pfn, zero in entries:
            if not zero:
                model[pfn * PAGE_SIZE : (pfn + 1) * PAGE_SIZE] = page(pfn)
    data = stream(*(pages_record([p for p, _ in r], [z for _, z in r]) for r in records))
    events, memory = read_stream(data, piece=piece)
    assert memory == model
    assert sum(isinstance(e, Pages) for e in events) == len(records)


def test_a_refusal_stays() -> None:
    """After a refusal every call raises the same error: no half-read state is ever used."""
    reader = StreamReader(MEMORY_PAGES)
    with pytest.raises(StreamError) as first:
        reader.feed(b"\x00" * 24)
    for call in (reader.need, reader.end_of_input, reader.payload, lambda: reader.feed(b"x")):
        with pytest.raises(StreamError) as again:
            call()
        assert again.value is first.value
