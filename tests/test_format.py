"""vhd.format: CHS geometry, checksums, footer and dynamic header structures, timestamps."""

from __future__ import annotations

import datetime
import time
import uuid as uuidlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support import SECTOR, GiB
from vhd.errors import VhdError
from vhd.format import (
    DIFFERENCING,
    DYNAMIC,
    FIXED,
    MAX_TABLE_ENTRIES,
    MAX_VIRTUAL_SIZE,
    NO_OFFSET,
    PLATFORM_MACX,
    PLATFORM_W2KU,
    PLATFORM_W2RU,
    VHD_EPOCH,
    DynamicHeader,
    Footer,
    ParentLocator,
    checksum,
    geometry,
    table_entries,
    unix_time,
    vhd_timestamp,
)

# Absolute offsets of the fields inside the structures (VHD specification).
F_COOKIE, F_VERSION, F_DATA_OFFSET, F_TIMESTAMP = 0, 12, 16, 24
F_CURRENT_SIZE, F_DISK_TYPE, F_CHECKSUM = 48, 60, 64
H_COOKIE, H_DATA_OFFSET, H_TABLE_OFFSET, H_VERSION = 0, 8, 16, 24
H_MAX_ENTRIES, H_BLOCK_SIZE, H_CHECKSUM, H_LOCATORS = 28, 32, 36, 576


def be32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def be64(value: int) -> bytes:
    return value.to_bytes(8, "big")


def patch(raw: bytes, offset: int, value: bytes, checksum_at: int | None) -> bytes:
    """``raw`` with ``value`` written at ``offset`` and, unless None, the checksum redone."""
    out = bytearray(raw)
    out[offset : offset + len(value)] = value
    if checksum_at is not None:
        out[checksum_at : checksum_at + 4] = be32(checksum(out, checksum_at))
    return bytes(out)


def raises_at(data: bytes, parse_offset: int, kind: str) -> VhdError:
    """The VhdError that parsing ``data`` (a footer or header) read at ``parse_offset`` raises."""
    with pytest.raises(VhdError) as info:
        if kind == "footer":
            Footer.parse(data, parse_offset)
        else:
            DynamicHeader.parse(data, parse_offset)
    return info.value


# CHS geometry


GEOMETRY_TABLE = [
    # (sectors, (cylinders, heads, sectors per track)), computed with the spec algorithm
    (0, (0, 4, 17)),
    (1, (0, 4, 17)),
    (17, (0, 4, 17)),
    (2048, (30, 4, 17)),  # 1 MiB: heads rounded up to 4
    (16384, (240, 4, 17)),  # 8 MiB
    (40960, (602, 4, 17)),  # 20 MiB: 3 heads would do, 4 is the minimum
    (69631, (1023, 4, 17)),
    (69632, (140, 16, 31)),  # cylinders*heads reaches heads*1024 with 4 heads: 31 spt
    (81920, (963, 5, 17)),  # 40 MiB: 5 heads
    (87039, (1023, 5, 17)),
    (87040, (175, 16, 31)),  # exactly 5*1024 cylinder-heads: 31 spt
    (278527, (1023, 16, 17)),  # last size with 17 spt
    (278528, (561, 16, 31)),  # first with 31 spt at 16 heads
    (507903, (1023, 16, 31)),  # last with 31 spt
    (507904, (503, 16, 63)),  # first with 63 spt
    (2097152, (2080, 16, 63)),  # 1 GiB, the well-known 2080/16/63
    (66059279, (65534, 16, 63)),  # last below 65535*16*63
    (66059280, (16191, 16, 255)),  # 65535*16*63 sectors: 255 spt
    (267382799, (65534, 16, 255)),
    (267382800, (65535, 16, 255)),  # the largest geometry, about 127.5 GiB
    (267382800 + 1, (65535, 16, 255)),
    (128 * GiB // SECTOR, (65535, 16, 255)),
    (MAX_VIRTUAL_SIZE // SECTOR, (65535, 16, 255)),
]


@pytest.mark.parametrize(("sectors", "expected"), GEOMETRY_TABLE)
def test_geometry_table(sectors: int, expected: tuple[int, int, int]) -> None:
    assert geometry(sectors * SECTOR) == expected


def test_geometry_ignores_a_partial_sector() -> None:
    assert geometry(2048 * SECTOR + 511) == (30, 4, 17)


@given(st.integers(0, 65535 * 16 * 255 - 1))
def test_geometry_never_exceeds_the_size(sectors: int) -> None:
    cylinders, heads, spt = geometry(sectors * SECTOR)
    assert cylinders * heads * spt <= sectors
    assert spt in (17, 31, 63, 255)
    assert 4 <= heads <= 16
    assert cylinders <= 65535


def test_new_footer_carries_the_geometry() -> None:
    footer = Footer.new(DYNAMIC, GiB, data_offset=512)
    assert footer.geometry == (2080, 16, 63)
    parsed = Footer.parse(footer.build())
    assert parsed.geometry == (2080, 16, 63)


# Checksum


def test_checksum_of_known_bytes() -> None:
    data = bytes(range(16))
    # 0+1+...+15 = 120; without bytes 4..7 (4+5+6+7 = 22): 98
    assert checksum(data, 4) == (~98) & 0xFFFFFFFF == 0xFFFFFF9D


def test_checksum_ignores_the_field_itself() -> None:
    data = bytearray(64)
    data[10] = 200
    first = checksum(data, 20)
    data[20:24] = b"\xff\xff\xff\xff"
    assert checksum(data, 20) == first == (~200) & 0xFFFFFFFF


def test_checksum_of_zeros_is_all_ones() -> None:
    assert checksum(bytes(512), 64) == 0xFFFFFFFF


def test_checksum_of_all_ones_footer() -> None:
    # 508 counted bytes of 0xff: 508 * 255 = 129540
    assert checksum(b"\xff" * 512, 64) == (~129540) & 0xFFFFFFFF


def test_built_structures_store_their_checksum() -> None:
    raw = Footer.new(FIXED, 10 << 20).build()
    assert int.from_bytes(raw[64:68], "big") == checksum(raw, 64)
    assert int.from_bytes(raw[64:68], "big") == (~(sum(raw) - sum(raw[64:68]))) & 0xFFFFFFFF
    head = DynamicHeader(table_offset=1536, max_table_entries=5).build()
    assert int.from_bytes(head[36:40], "big") == checksum(head, 36)


# Footer


def test_footer_build_layout() -> None:
    u = uuidlib.UUID("12345678-1234-5678-1234-567812345678")
    footer = Footer.new(DYNAMIC, 8 << 20, uuid=u, data_offset=512).replace(timestamp=1234)
    raw = footer.build()
    assert len(raw) == 512
    assert raw[0:8] == b"conectix"
    assert raw[8:12] == be32(2)
    assert raw[12:16] == be32(0x00010000)
    assert raw[16:24] == be64(512)
    assert raw[24:28] == be32(1234)
    assert raw[28:32] == b"tap\0"
    assert raw[40:48] == be64(8 << 20)
    assert raw[48:56] == be64(8 << 20)
    assert raw[56:60] == (240).to_bytes(2, "big") + bytes([4, 17])
    assert raw[60:64] == be32(3)
    assert raw[68:84] == u.bytes
    assert raw[84:] == bytes(428)


def test_new_fixed_footer_has_no_data_offset() -> None:
    footer = Footer.new(FIXED, 1 << 20, data_offset=512)
    assert footer.data_offset == NO_OFFSET
    assert Footer.parse(footer.build()).data_offset == NO_OFFSET


@pytest.mark.parametrize("disk_type", [FIXED, DYNAMIC, DIFFERENCING])
def test_footer_round_trip(disk_type: int) -> None:
    footer = Footer.new(disk_type, 100 << 20, data_offset=512).replace(
        original_size=50 << 20,
        timestamp=0x12345678,
        creator_app=b"qemu",
        creator_version=0x00050003,
        creator_os=0x5769326B,
        features=3,
        saved_state=1,
        hidden=1,
    )
    parsed = Footer.parse(footer.build(), 4096)
    assert parsed == footer.replace(checksum=parsed.checksum)
    assert parsed.checksum == checksum(footer.build(), 64)
    assert parsed.build() == footer.build()


@given(
    size=st.integers(1, MAX_VIRTUAL_SIZE // SECTOR).map(lambda s: s * SECTOR),
    timestamp=st.integers(0, 0xFFFFFFFF),
    hidden=st.integers(0, 255),
    uuid_int=st.integers(0, (1 << 128) - 1),
)
def test_footer_round_trip_any(size: int, timestamp: int, hidden: int, uuid_int: int) -> None:
    footer = Footer.new(DYNAMIC, size, data_offset=512, uuid=uuidlib.UUID(int=uuid_int))
    footer = footer.replace(timestamp=timestamp, hidden=hidden)
    parsed = Footer.parse(footer.build())
    assert parsed == footer.replace(checksum=parsed.checksum)


def test_footer_type_names() -> None:
    assert Footer.new(FIXED, 512).type_name == "fixed"
    assert Footer.new(DYNAMIC, 512).type_name == "dynamic"
    assert Footer.new(DIFFERENCING, 512).type_name == "differencing"
    assert Footer.new(DYNAMIC, 512).replace(disk_type=7).type_name == "type 7"


GOOD_FOOTER = Footer.new(DYNAMIC, 8 << 20, data_offset=512).build()
FIXED_FOOTER = Footer.new(FIXED, 8 << 20).build()


@pytest.mark.parametrize("at", [0, 512, 8 << 20])
def test_footer_wrong_cookie(at: int) -> None:
    e = raises_at(patch(GOOD_FOOTER, 0, b"conectiy", 64), at, "footer")
    assert (e.field, e.offset) == ("footer.cookie", at + F_COOKIE)


@pytest.mark.parametrize("at", [0, 4096])
def test_footer_bad_checksum(at: int) -> None:
    bad = patch(GOOD_FOOTER, 100, b"\x01", None)
    e = raises_at(bad, at, "footer")
    assert (e.field, e.offset) == ("footer.checksum", at + F_CHECKSUM)
    stored = int.from_bytes(bad[64:68], "big")
    assert f"{stored:#010x}" in e.message
    assert f"{checksum(bad, 64):#010x}" in e.message


def test_footer_bad_version() -> None:
    e = raises_at(patch(GOOD_FOOTER, F_VERSION, be32(0x00020000), 64), 1024, "footer")
    assert (e.field, e.offset) == ("footer.version", 1024 + F_VERSION)


def test_footer_minor_version_accepted() -> None:
    assert Footer.parse(patch(GOOD_FOOTER, F_VERSION, be32(0x00010005), 64)).version == 0x10005


@pytest.mark.parametrize("disk_type", [0, 1, 5, 6, 0xFFFFFFFF])
def test_footer_unknown_disk_type(disk_type: int) -> None:
    e = raises_at(patch(GOOD_FOOTER, F_DISK_TYPE, be32(disk_type), 64), 2048, "footer")
    assert (e.field, e.offset) == ("footer.disk_type", 2048 + F_DISK_TYPE)
    assert str(disk_type) in e.message


@pytest.mark.parametrize("raw", [GOOD_FOOTER, FIXED_FOOTER])
def test_footer_size_above_2040_gib(raw: bytes) -> None:
    e = raises_at(patch(raw, F_CURRENT_SIZE, be64(MAX_VIRTUAL_SIZE + SECTOR), 64), 512, "footer")
    assert (e.field, e.offset) == ("footer.current_size", 512 + F_CURRENT_SIZE)


def test_footer_size_of_2040_gib_accepted() -> None:
    raw = patch(GOOD_FOOTER, F_CURRENT_SIZE, be64(MAX_VIRTUAL_SIZE), 64)
    assert Footer.parse(raw).current_size == 2040 * GiB


def test_fixed_footer_size_not_a_sector_multiple() -> None:
    e = raises_at(patch(FIXED_FOOTER, F_CURRENT_SIZE, be64((1 << 20) + 100), 64), 0, "footer")
    assert (e.field, e.offset) == ("footer.current_size", F_CURRENT_SIZE)


@pytest.mark.parametrize("data_offset", [NO_OFFSET, 0, 100, 513])
def test_dynamic_footer_bad_data_offset(data_offset: int) -> None:
    e = raises_at(patch(GOOD_FOOTER, F_DATA_OFFSET, be64(data_offset), 64), 512, "footer")
    assert (e.field, e.offset) == ("footer.data_offset", 512 + F_DATA_OFFSET)


def test_footer_truncated() -> None:
    e = raises_at(GOOD_FOOTER[:511], 77, "footer")
    assert (e.field, e.offset) == ("footer", 77)


def test_footer_problems_lists_every_problem() -> None:
    raw = patch(GOOD_FOOTER, F_VERSION, be32(0x00030000), None)
    raw = patch(raw, F_DISK_TYPE, be32(9), None)
    fields = [p.field for p in Footer.problems(raw, 0)]
    assert fields == ["footer.checksum", "footer.version", "footer.disk_type"]


def test_footer_problems_stop_at_a_wrong_cookie() -> None:
    raw = patch(b"\0" * 512, F_VERSION, be32(0x00030000), None)
    assert [p.field for p in Footer.problems(raw, 0)] == ["footer.cookie"]


# Dynamic header


def header_with_parent() -> DynamicHeader:
    return DynamicHeader(
        table_offset=1536,
        max_table_entries=4096,
        block_size=2 << 20,
        parent_uuid=uuidlib.UUID("0f0e0d0c-0b0a-0908-0706-050403020100"),
        parent_timestamp=777,
        parent_name="dir/parent é.vhd",
        locators=(
            ParentLocator(PLATFORM_MACX, 512, 30, 1536 + 16384),
            ParentLocator(PLATFORM_W2RU, 512, 40, 1536 + 16384 + 512),
            ParentLocator(PLATFORM_W2KU, 1, 60, 1536 + 16384 + 1024),
        ),
    )


def test_header_round_trip() -> None:
    header = header_with_parent()
    raw = header.build()
    assert len(raw) == 1024
    parsed = DynamicHeader.parse(raw, 512)
    assert parsed == header.replace(checksum=parsed.checksum)
    assert parsed.build() == raw


def test_header_build_layout() -> None:
    header = header_with_parent()
    raw = header.build()
    assert raw[0:8] == b"cxsparse"
    assert raw[8:16] == b"\xff" * 8
    assert raw[16:24] == be64(1536)
    assert raw[24:28] == be32(0x00010000)
    assert raw[28:32] == be32(4096)
    assert raw[32:36] == be32(2 << 20)
    assert raw[40:56] == header.parent_uuid.bytes
    assert raw[56:60] == be32(777)
    assert raw[64:576] == "dir/parent é.vhd".encode("utf-16-be").ljust(512, b"\0")
    assert raw[576:600] == be32(PLATFORM_MACX) + be32(512) + be32(30) + be32(0) + be64(17920)
    assert raw[576 + 3 * 24 : 768] == bytes(5 * 24)


@pytest.mark.slow
@given(
    entries=st.integers(1, MAX_TABLE_ENTRIES),
    shift=st.integers(9, 28),
    name=st.text(st.characters(codec="utf-16", exclude_characters="\0"), max_size=128),
    parent_ts=st.integers(0, 0xFFFFFFFF),
)
def test_header_round_trip_any(entries: int, shift: int, name: str, parent_ts: int) -> None:
    header = DynamicHeader(
        table_offset=1536,
        max_table_entries=entries,
        block_size=1 << shift,
        parent_name=name,
        parent_timestamp=parent_ts,
        parent_uuid=uuidlib.uuid4(),
    )
    parsed = DynamicHeader.parse(header.build(), 512)
    assert parsed == header.replace(checksum=parsed.checksum)


@pytest.mark.parametrize(
    ("block_size", "bitmap_size"),
    [(512, 512), (2 << 20, 512), (4 << 20, 1024), (8 << 20, 2048), (256 << 20, 64 << 10)],
)
def test_header_bitmap_size(block_size: int, bitmap_size: int) -> None:
    assert DynamicHeader(1536, 1, block_size).bitmap_size == bitmap_size


@pytest.mark.parametrize(("entries", "table_size"), [(1, 512), (128, 512), (129, 1024)])
def test_header_table_size(entries: int, table_size: int) -> None:
    assert DynamicHeader(1536, entries).table_size == table_size


def test_table_entries() -> None:
    assert table_entries(1, 2 << 20) == 1
    assert table_entries(2 << 20, 2 << 20) == 1
    assert table_entries((2 << 20) + 512, 2 << 20) == 2
    assert table_entries(2040 * GiB, 2 << 20) == 1044480


GOOD_HEADER = header_with_parent().build()


@pytest.mark.parametrize("at", [512, 1024])
def test_header_wrong_cookie(at: int) -> None:
    e = raises_at(patch(GOOD_HEADER, 0, b"cxsparsf", 36), at, "header")
    assert (e.field, e.offset) == ("header.cookie", at + H_COOKIE)


def test_header_bad_checksum() -> None:
    e = raises_at(patch(GOOD_HEADER, 900, b"\x07", None), 512, "header")
    assert (e.field, e.offset) == ("header.checksum", 512 + H_CHECKSUM)


@pytest.mark.parametrize("data_offset", [0, 512, NO_OFFSET - 1, 0x00FFFFFFFFFFFFFF])
def test_header_data_offset_not_all_ones(data_offset: int) -> None:
    e = raises_at(patch(GOOD_HEADER, H_DATA_OFFSET, be64(data_offset), 36), 512, "header")
    assert (e.field, e.offset) == ("header.data_offset", 512 + H_DATA_OFFSET)


def test_header_bad_version() -> None:
    e = raises_at(patch(GOOD_HEADER, H_VERSION, be32(0x00000001), 36), 512, "header")
    assert (e.field, e.offset) == ("header.version", 512 + H_VERSION)


@pytest.mark.parametrize("block_size", [0, 256, 1000, 3 << 20, (2 << 20) + 512, 512 << 20])
def test_header_block_size_not_a_power_of_two_in_range(block_size: int) -> None:
    e = raises_at(patch(GOOD_HEADER, H_BLOCK_SIZE, be32(block_size), 36), 512, "header")
    assert (e.field, e.offset) == ("header.block_size", 512 + H_BLOCK_SIZE)


@pytest.mark.parametrize("block_size", [512, 4096, 2 << 20, 256 << 20])
def test_header_block_sizes_accepted(block_size: int) -> None:
    raw = patch(GOOD_HEADER, H_BLOCK_SIZE, be32(block_size), 36)
    assert DynamicHeader.parse(raw, 512).block_size == block_size


@pytest.mark.parametrize("entries", [0, MAX_TABLE_ENTRIES + 1, 0xFFFFFFFF])
def test_header_absurd_max_table_entries(entries: int) -> None:
    e = raises_at(patch(GOOD_HEADER, H_MAX_ENTRIES, be32(entries), 36), 512, "header")
    assert (e.field, e.offset) == ("header.max_table_entries", 512 + H_MAX_ENTRIES)


def test_header_max_table_entries_at_the_bound_accepted() -> None:
    raw = patch(GOOD_HEADER, H_MAX_ENTRIES, be32(MAX_TABLE_ENTRIES), 36)
    assert DynamicHeader.parse(raw, 512).max_table_entries == MAX_TABLE_ENTRIES


@pytest.mark.parametrize("table_offset", [0, 100, 1537])
def test_header_bad_table_offset(table_offset: int) -> None:
    e = raises_at(patch(GOOD_HEADER, H_TABLE_OFFSET, be64(table_offset), 36), 512, "header")
    assert (e.field, e.offset) == ("header.table_offset", 512 + H_TABLE_OFFSET)


@pytest.mark.parametrize("slot", [0, 2])
def test_header_locator_data_length_too_big(slot: int) -> None:
    at = H_LOCATORS + slot * 24 + 8
    e = raises_at(patch(GOOD_HEADER, at, be32((64 << 10) + 1), 36), 512, "header")
    assert e.field == f"header.locators[{slot}].data_length"
    assert e.offset == 512 + at


def test_header_unused_locator_slot_is_not_checked() -> None:
    # slot 5 has platform code 0: its data length is ignored
    raw = patch(GOOD_HEADER, H_LOCATORS + 5 * 24 + 8, be32(0xFFFFFFFF), 36)
    assert len(DynamicHeader.parse(raw, 512).locators) == 3


def test_header_truncated() -> None:
    e = raises_at(GOOD_HEADER[:1000], 512, "header")
    assert (e.field, e.offset) == ("header", 512)


def test_header_problems_lists_every_problem() -> None:
    raw = patch(GOOD_HEADER, H_BLOCK_SIZE, be32(3 << 20), None)
    raw = patch(raw, H_MAX_ENTRIES, be32(0), None)
    raw = patch(raw, H_DATA_OFFSET, be64(0), None)
    problems = DynamicHeader.problems(raw, 1024)
    assert [(p.field, p.offset) for p in problems] == [
        ("header.checksum", 1024 + H_CHECKSUM),
        ("header.data_offset", 1024 + H_DATA_OFFSET),
        ("header.block_size", 1024 + H_BLOCK_SIZE),
        ("header.max_table_entries", 1024 + H_MAX_ENTRIES),
    ]


# Parent locators


def test_locator_decoding() -> None:
    macx = ParentLocator(PLATFORM_MACX, 512, 0, 0)
    assert macx.decode(b"file://./base.vhd\0\0") == "./base.vhd"
    w2ru = ParentLocator(PLATFORM_W2RU, 512, 0, 0)
    assert w2ru.decode(".\\sub\\base.vhd".encode("utf-16-le")) == "./sub/base.vhd"
    w2ku = ParentLocator(PLATFORM_W2KU, 512, 0, 0)
    assert w2ku.decode("C:\\x\\y.vhd".encode("utf-16-le")) == "C:/x/y.vhd"
    assert ParentLocator(0x4D616320, 512, 0, 0).decode(b"alias") is None


def test_locator_space_in_sectors_or_bytes() -> None:
    assert ParentLocator(PLATFORM_MACX, 1, 0, 0).space_bytes == 512
    assert ParentLocator(PLATFORM_MACX, 2, 0, 0).space_bytes == 1024
    assert ParentLocator(PLATFORM_MACX, 512, 0, 0).space_bytes == 512
    assert ParentLocator(PLATFORM_MACX, 4096, 0, 0).space_bytes == 4096
    assert ParentLocator(PLATFORM_W2RU, 1, 0, 0).platform_name == "W2ru"


# Timestamps


def test_vhd_epoch_is_2000_01_01_utc() -> None:
    epoch = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
    assert epoch.timestamp() == VHD_EPOCH == 946684800


@pytest.mark.parametrize(
    ("unix", "expected"),
    [
        (946684800, 0),
        (946684800.999, 0),
        (946684801, 1),
        (946684800 + 86400, 86400),
        (946684799, 0),  # before the epoch: clamped to 0
        (0, 0),
        (
            datetime.datetime(2024, 2, 29, 12, 0, tzinfo=datetime.UTC).timestamp(),
            762523200,
        ),
    ],
)
def test_vhd_timestamp(unix: float, expected: int) -> None:
    assert vhd_timestamp(unix) == expected


def test_unix_time() -> None:
    assert unix_time(0) == 946684800
    assert unix_time(1) == 946684801
    assert (
        unix_time(762523200) == datetime.datetime(2024, 2, 29, 12, tzinfo=datetime.UTC).timestamp()
    )


@given(st.integers(0, 0xFFFFFFFF))
def test_timestamp_round_trip(ts: int) -> None:
    assert vhd_timestamp(unix_time(ts)) == ts


def test_vhd_timestamp_defaults_to_now() -> None:
    before = int(time.time()) - VHD_EPOCH
    now = vhd_timestamp()
    after = int(time.time()) - VHD_EPOCH
    assert before <= now <= after


def test_new_footer_is_timestamped_now() -> None:
    before = int(time.time()) - VHD_EPOCH
    footer = Footer.new(DYNAMIC, 1 << 20, data_offset=512)
    assert before <= footer.timestamp <= int(time.time()) - VHD_EPOCH


# VhdError


def test_vhd_error_str_message_only() -> None:
    assert str(VhdError("broken")) == "broken"


def test_vhd_error_str_with_everything() -> None:
    e = VhdError("bad checksum", field="footer.checksum", offset=64, path="/x/a.vhd")
    assert str(e) == "/x/a.vhd, footer.checksum, offset 64: bad checksum"
    assert (e.message, e.field, e.offset, e.path) == (
        "bad checksum",
        "footer.checksum",
        64,
        "/x/a.vhd",
    )


def test_vhd_error_str_with_offset_zero() -> None:
    assert str(VhdError("m", offset=0)) == "offset 0: m"
    assert str(VhdError("m", field="footer")) == "footer: m"
    assert str(VhdError("m", path="p")) == "p: m"
    assert str(VhdError("m", field="f", offset=3)) == "f, offset 3: m"


def test_vhd_error_at_fills_only_a_missing_path() -> None:
    e = VhdError("m", field="f")
    assert e.at("first") is e
    assert e.at("second").path == "first"
    assert str(e) == "first, f: m"


def test_parse_errors_print_field_and_offset() -> None:
    e = raises_at(patch(GOOD_FOOTER, 0, b"XXXXXXXX", None), 1536, "footer")
    assert str(e).startswith("footer.cookie, offset 1536: ")
    assert "b'XXXXXXXX'" in str(e)
