"""migrate.formats.chunked: xapi's chunked=true import framing, fed in arbitrary slicings."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migrate.formats.chunked import (
    END,
    HEADER_SIZE,
    ChunkError,
    ChunkParser,
    Data,
    End,
    Event,
    chunk_header,
)
from support import KiB, MiB, pattern

SIZE = MiB

CHUNKS: list[tuple[int, bytes]] = [
    (0, pattern(4 * KiB, 1)),
    (SIZE - 64 * KiB, pattern(64 * KiB, 2)),  # up to the very end of the disk
    (4096, b""),  # zero-length at a non-zero offset: a chunk that writes nothing
    (512, pattern(1, 3)),
    (0, pattern(7, 4)),  # offset 0 with data is a chunk, not the end marker
    (100_000, pattern(20_000, 5)),
]


def body(chunks: Iterable[tuple[int, bytes]], *, end: bool = True) -> bytes:
    out = b"".join(chunk_header(offset, len(data)) + data for offset, data in chunks)
    return out + END if end else out


BODY = body(CHUNKS)


def writes(events: Sequence[Event]) -> list[tuple[int, bytes]]:
    """The events' data merged into (offset, bytes) runs, one per contiguous run, End checked."""
    assert events, "no events"
    assert isinstance(events[-1], End)
    assert not any(isinstance(e, End) for e in events[:-1])
    runs: list[tuple[int, bytearray]] = []
    for e in events[:-1]:
        assert isinstance(e, Data)
        assert len(e.data) > 0, "empty Data event"
        if runs and runs[-1][0] + len(runs[-1][1]) == e.offset:
            runs[-1][1].extend(e.data)
        else:
            runs.append((e.offset, bytearray(e.data)))
    return [(offset, bytes(data)) for offset, data in runs]


EXPECTED = [(offset, data) for offset, data in CHUNKS if data]


def parse(pieces: Sequence[bytes], size_limit: int = SIZE) -> list[Event]:
    parser = ChunkParser(size_limit=size_limit)
    events: list[Event] = []
    for piece in pieces:
        new = parser.feed(piece)
        assert all(isinstance(e, End) or e.data.obj is piece for e in new)
        events += new
    events += parser.close()
    assert parser.position == sum(len(p) for p in pieces)
    return events


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def errors_of(pieces: Iterable[bytes], size_limit: int = SIZE) -> ChunkError:
    parser = ChunkParser(size_limit=size_limit)
    with pytest.raises(ChunkError) as info:
        for piece in pieces:
            parser.feed(piece)
        parser.close()
    # the parser stays failed
    with pytest.raises(ChunkError):
        parser.close()
    return info.value


# Wire format


def test_header_layout_is_xapis() -> None:
    # cstruct {offset: uint64_t; len: uint32_t} [@@little_endian], no padding
    assert HEADER_SIZE == 12
    assert chunk_header(0x0102030405060708, 0x0A0B0C0D) == bytes.fromhex(
        "0807060504030201" + "0d0c0b0a"
    )
    assert struct.unpack("<QI", chunk_header(SIZE, 512)) == (SIZE, 512)
    assert bytes(12) == END


def test_chunk_header_ranges() -> None:
    assert chunk_header(0, 1) == struct.pack("<QI", 0, 1)
    assert chunk_header(5, 0) == struct.pack("<QI", 5, 0)
    assert chunk_header((1 << 64) - 1, (1 << 32) - 1) == b"\xff" * 12
    with pytest.raises(ValueError, match="end marker"):
        chunk_header(0, 0)
    for offset, length in [(-1, 1), (1 << 64, 1), (0, -1), (0, 1 << 32)]:
        with pytest.raises(ValueError):
            chunk_header(offset, length)


# Round trips


def test_whole() -> None:
    parser = ChunkParser(size_limit=SIZE)
    events = parser.feed(BODY)
    assert parser.position == len(BODY)
    assert parser.close() == []
    assert writes(events) == EXPECTED
    # one Data per non-empty chunk when fed whole: O(chunks) events
    assert sum(isinstance(e, Data) for e in events) == len(EXPECTED)


def test_byte_by_byte() -> None:
    small = body([(0, pattern(40, 1)), (3, b""), (SIZE - 5, pattern(5, 2)), (77, pattern(13, 3))])
    pieces = [small[i : i + 1] for i in range(len(small))]
    assert writes(parse(pieces)) == [
        (0, pattern(40, 1)),
        (SIZE - 5, pattern(5, 2)),
        (77, pattern(13, 3)),
    ]


def test_end_only() -> None:
    parser = ChunkParser(size_limit=0)
    assert parser.feed(END) == [End()]
    assert parser.feed(b"") == []
    assert parser.close() == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(BODY)), max_size=40))
def test_any_slicing(cuts: list[int]) -> None:
    pieces = split(BODY, cuts)
    assert b"".join(pieces) == BODY
    assert writes(parse(pieces)) == EXPECTED


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=4096), st.binary(max_size=300)),
        max_size=8,
    ),
    st.data(),
)
def test_any_body_any_slicing(chunks: list[tuple[int, bytes]], draw: st.DataObject) -> None:
    chunks = [(offset, data) for offset, data in chunks if offset or data]
    stream = body(chunks)
    cuts = draw.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=20))
    whole = parse([stream], size_limit=8192)
    sliced = parse(split(stream, cuts), size_limit=8192)
    assert writes(sliced) == writes(whole)
    assert writes(whole) == writes(
        [*(Data(offset, memoryview(data)) for offset, data in chunks if data), End()]
    )


# Views, not copies


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_data_is_a_view_of_the_fed_buffer(kind: type[bytes] | type[bytearray]) -> None:
    buffer = kind(BODY)
    events = ChunkParser(size_limit=SIZE).feed(buffer)
    data = [e for e in events if isinstance(e, Data)]
    assert data
    for e in data:
        assert e.data.obj is buffer
        assert e.data.readonly == (kind is bytes)


def test_view_of_a_memoryview_keeps_the_buffer() -> None:
    buffer = bytearray(BODY)
    events = ChunkParser(size_limit=SIZE).feed(memoryview(buffer)[:])
    first = events[0]
    assert isinstance(first, Data)
    assert first.data.obj is buffer
    buffer[HEADER_SIZE] ^= 0xFF  # a view sees the change, a copy would not
    assert first.data[0] == buffer[HEADER_SIZE]


def test_payload_split_across_feeds_is_views_of_each_feed() -> None:
    data = pattern(1000, 9)
    stream = chunk_header(10, len(data)) + data + END
    a, b = stream[:500], stream[500:]
    parser = ChunkParser(size_limit=SIZE)
    first, second = parser.feed(a), parser.feed(b)
    assert first == [Data(10, memoryview(data)[: 500 - HEADER_SIZE])]
    assert isinstance(first[0], Data) and first[0].data.obj is a
    assert isinstance(second[0], Data) and second[0].data.obj is b
    assert second[0].offset == 10 + 500 - HEADER_SIZE
    assert second[-1] == End()


# Errors: each names what is wrong and the stream offset


def test_truncated_header() -> None:
    stream = body(CHUNKS[:1], end=False) + chunk_header(8, 8)[:5]
    error = errors_of(split(stream, [3, len(stream) - 2]))
    start = len(stream) - 5
    assert error.offset == start
    assert f"chunk at stream offset {start}" in str(error)
    assert "inside the header (5 of 12 bytes)" in str(error)
    assert f"ends at stream offset {len(stream)}" in str(error)


def test_truncated_payload() -> None:
    first = body(CHUNKS[:1], end=False)
    stream = first + chunk_header(8, 100) + bytes(60)
    error = errors_of([stream])
    assert error.offset == len(first)
    assert f"chunk at stream offset {len(first)}" in str(error)
    assert "after 60 of its 100 data bytes" in str(error)


def test_missing_end_marker() -> None:
    stream = body(CHUNKS, end=False)
    error = errors_of([stream])
    assert error.offset == len(stream)
    assert str(error) == f"body ends at stream offset {len(stream)} without the end marker"
    assert errors_of([]).offset == 0


def test_end_marker_truncated() -> None:
    stream = body(CHUNKS, end=False)
    error = errors_of([stream + END[:11]])
    assert error.offset == len(stream)
    assert "inside the header (11 of 12 bytes)" in str(error)


@pytest.mark.parametrize(
    ("offset", "length"),
    [(SIZE, 65536), (SIZE - 65535, 65536), (SIZE + 1, 0), ((1 << 64) - 1, (1 << 32) - 1)],
)
def test_chunk_past_size_limit(offset: int, length: int) -> None:
    first = body(CHUNKS[:1], end=False)
    stream = first + chunk_header(offset, length)  # no data needed: refused at the header
    for pieces in ([stream], split(stream, [len(first) + 4])):
        error = errors_of(pieces)
        assert error.offset == len(first)
        assert str(error) == (
            f"chunk at stream offset {len(first)}: data at {offset} + {length} bytes "
            f"reaches past the disk's {SIZE} bytes"
        )


def test_chunk_exactly_at_the_limit() -> None:
    stream = body([(SIZE - 3, b"abc"), (SIZE, b"")])
    assert writes(parse([stream])) == [(SIZE - 3, b"abc")]


def test_data_after_end() -> None:
    stream = body(CHUNKS)
    for pieces in ([stream + b"x"], [stream, b"xyz"], [*split(stream, [len(stream) - 3]), b"!"]):
        error = errors_of(pieces)
        assert error.offset == len(stream)
        assert f"at stream offset {len(stream)} after the end marker" in str(error)


def test_feed_after_error_raises_again() -> None:
    parser = ChunkParser(size_limit=10)
    with pytest.raises(ChunkError):
        parser.feed(chunk_header(8, 8))
    with pytest.raises(ChunkError, match="reaches past"):
        parser.feed(END)


def test_negative_size_limit() -> None:
    with pytest.raises(ValueError, match="negative"):
        ChunkParser(size_limit=-1)


# Cost


def test_cost_is_per_chunk_not_per_byte() -> None:
    big = bytearray(64 * MiB)
    big[:12] = chunk_header(0, len(big) - 2 * HEADER_SIZE)
    big[-12:] = END
    parser = ChunkParser(size_limit=len(big))
    events = parser.feed(big)
    assert len(events) == 2
    assert isinstance(events[0], Data) and events[0].data.obj is big
    assert len(events[0].data) == len(big) - 2 * HEADER_SIZE
    assert events[1] == End()
