"""VHD on-disk structures: footer, dynamic disk header, parent locators, batmap header.

Pure: bytes in, validated values out, and back. Every check names the field and its absolute
offset. Layouts follow Microsoft's VHD specification as Xen, qemu and blktap use it.
"""

from __future__ import annotations

import dataclasses
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from construct import Array, Bytes, Int8ub, Int16ub, Int32ub, Int64ub, Struct

from vhd.errors import VhdError

SECTOR = 512
FOOTER_SIZE = 512
HEADER_SIZE = 1024
DEFAULT_BLOCK_SIZE = 2 << 20
MAX_VIRTUAL_SIZE = 2040 << 30
"""The largest disk VHD can describe (xapi's VDI_TOO_LARGE limit)."""
MIN_BLOCK_SIZE = SECTOR
MAX_BLOCK_SIZE = 256 << 20
MAX_TABLE_ENTRIES = 1 << 22
"""Bound on the BAT length we accept: 16 MiB of table, 2040 GiB at 512 KiB blocks."""
UNALLOCATED = 0xFFFFFFFF
NO_OFFSET = 0xFFFFFFFFFFFFFFFF

FOOTER_COOKIE = b"conectix"
HEADER_COOKIE = b"cxsparse"
BATMAP_COOKIE = b"tdbatmap"
VERSION = 0x00010000
FEATURES_RESERVED = 0x00000002

FIXED, DYNAMIC, DIFFERENCING = 2, 3, 4
DISK_TYPE_NAMES = {FIXED: "fixed", DYNAMIC: "dynamic", DIFFERENCING: "differencing"}

CREATOR_APP = b"tap\0"
"""Xen's own creator code (blktap, XenServer): qemu-img then trusts current size over CHS."""
CREATOR_VERSION = 0x00010001
"""Below blktap's 1.2, which would promise a batmap after the BAT."""
CREATOR_OS = 0

VHD_EPOCH = 946684800
"""2000-01-01 00:00:00 UTC as a Unix timestamp: VHD timestamps count from here."""

PLATFORM_W2RU = 0x57327275
PLATFORM_W2KU = 0x57326B75
PLATFORM_MACX = 0x4D616358
PLATFORM_NAMES = {
    PLATFORM_W2RU: "W2ru",
    PLATFORM_W2KU: "W2ku",
    PLATFORM_MACX: "MacX",
    0x4D616320: "Mac ",
    0x57693272: "Wi2r",
    0x5769326B: "Wi2k",
}
LOCATOR_COUNT = 8
NIL_UUID = uuidlib.UUID(int=0)
MAX_LOCATOR_LENGTH = 64 << 10


def _offsets(struct: Any) -> dict[str, int]:
    """Byte offset of every field of a fixed-size construct Struct."""
    offsets, pos = {}, 0
    for sub in struct.subcons:
        offsets[sub.name] = pos
        pos += sub.sizeof()
    return offsets


FOOTER_STRUCT = Struct(
    "cookie" / Bytes(8),
    "features" / Int32ub,
    "version" / Int32ub,
    "data_offset" / Int64ub,
    "timestamp" / Int32ub,
    "creator_app" / Bytes(4),
    "creator_version" / Int32ub,
    "creator_os" / Int32ub,
    "original_size" / Int64ub,
    "current_size" / Int64ub,
    "cylinders" / Int16ub,
    "heads" / Int8ub,
    "sectors_per_track" / Int8ub,
    "disk_type" / Int32ub,
    "checksum" / Int32ub,
    "uuid" / Bytes(16),
    "saved_state" / Int8ub,
    "reserved" / Bytes(427),
)
LOCATOR_STRUCT = Struct(
    "platform_code" / Int32ub,
    "data_space" / Int32ub,
    "data_length" / Int32ub,
    "reserved" / Int32ub,
    "data_offset" / Int64ub,
)
HEADER_STRUCT = Struct(
    "cookie" / Bytes(8),
    "data_offset" / Int64ub,
    "table_offset" / Int64ub,
    "version" / Int32ub,
    "max_table_entries" / Int32ub,
    "block_size" / Int32ub,
    "checksum" / Int32ub,
    "parent_uuid" / Bytes(16),
    "parent_timestamp" / Int32ub,
    "reserved1" / Int32ub,
    "parent_name" / Bytes(512),
    "locators" / Array(LOCATOR_COUNT, LOCATOR_STRUCT),
    "reserved2" / Bytes(256),
)
BATMAP_STRUCT = Struct(
    "cookie" / Bytes(8),
    "map_offset" / Int64ub,
    "map_size" / Int32ub,
    "version" / Int32ub,
    "checksum" / Int32ub,
    "marker" / Int8ub,
    "reserved" / Bytes(483),
)
FOOTER_OFFSETS = _offsets(FOOTER_STRUCT)
HEADER_OFFSETS = _offsets(HEADER_STRUCT)
LOCATORS_OFFSET = HEADER_OFFSETS["locators"]
LOCATOR_SIZE = LOCATOR_STRUCT.sizeof()
assert FOOTER_STRUCT.sizeof() == FOOTER_SIZE and HEADER_STRUCT.sizeof() == HEADER_SIZE


def checksum(data: bytes | bytearray, field_offset: int) -> int:
    """One's complement of the byte sum of ``data``, the 4-byte checksum field taken as zero."""
    total = sum(data) - sum(data[field_offset : field_offset + 4])
    return ~total & 0xFFFFFFFF


def geometry(size: int) -> tuple[int, int, int]:
    """CHS geometry (cylinders, heads, sectors per track) for ``size`` bytes, per the spec."""
    total = min(size // SECTOR, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cyl_heads = total // spt
    else:
        spt = 17
        cyl_heads = total // spt
        heads = max((cyl_heads + 1023) // 1024, 4)
        if cyl_heads >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cyl_heads = total // spt
        if cyl_heads >= heads * 1024:
            spt, heads = 63, 16
            cyl_heads = total // spt
    return cyl_heads // heads, heads, spt


def vhd_timestamp(unix_time: float | None = None) -> int:
    """A VHD timestamp (seconds since 2000-01-01 UTC) for a Unix time, default now."""
    now = time.time() if unix_time is None else unix_time
    return max(0, int(now) - VHD_EPOCH) & 0xFFFFFFFF


def unix_time(timestamp: int) -> int:
    """The Unix time of a VHD timestamp."""
    return timestamp + VHD_EPOCH


def _collector(
    what: str, base: int, offsets: dict[str, int], found: list[VhdError]
) -> Callable[[str, str], None]:
    """A ``fail(field, message)`` that records an error naming ``what.field`` and its offset."""

    def fail(field: str, message: str) -> None:
        found.append(VhdError(message, field=f"{what}.{field}", offset=base + offsets[field]))

    return fail


def _envelope_valid(
    raw: bytes, c: Any, cookie: bytes, offsets: dict[str, int], fail: Callable[[str, str], None]
) -> bool:
    """Cookie, checksum and major version, which footer and header share; False when the
    cookie is wrong (nothing else of the structure is worth reading then)."""
    if c.cookie != cookie:
        fail("cookie", f"expected {cookie!r}, found {c.cookie!r}")
        return False
    expected = checksum(raw, offsets["checksum"])
    if c.checksum != expected:
        fail("checksum", f"stored {c.checksum:#010x}, computed {expected:#010x}")
    if c.version >> 16 != 1:
        fail("version", f"unsupported version {c.version:#010x}")
    return True


@dataclass(frozen=True)
class Footer:
    """The 512-byte VHD footer (also copied at offset 0 of dynamic and differencing images)."""

    disk_type: int
    current_size: int
    uuid: uuidlib.UUID
    data_offset: int = NO_OFFSET
    original_size: int = -1
    timestamp: int = 0
    creator_app: bytes = CREATOR_APP
    creator_version: int = CREATOR_VERSION
    creator_os: int = CREATOR_OS
    features: int = FEATURES_RESERVED
    version: int = VERSION
    geometry: tuple[int, int, int] = (0, 0, 0)
    saved_state: int = 0
    hidden: int = 0
    checksum: int = 0

    NAME: ClassVar[str] = "footer"

    @classmethod
    def new(
        cls, disk_type: int, size: int, *, uuid: uuidlib.UUID | None = None, data_offset: int = 0
    ) -> Footer:
        """A fresh footer for a disk of ``size`` bytes."""
        return cls(
            disk_type=disk_type,
            current_size=size,
            original_size=size,
            uuid=uuid or uuidlib.uuid4(),
            data_offset=NO_OFFSET if disk_type == FIXED else data_offset,
            timestamp=vhd_timestamp(),
            geometry=geometry(size),
        )

    @property
    def type_name(self) -> str:
        """``fixed``, ``dynamic`` or ``differencing``."""
        return DISK_TYPE_NAMES.get(self.disk_type, f"type {self.disk_type}")

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview, offset: int = 0) -> Footer:
        """Parse and validate a footer read at absolute ``offset``."""
        raw = bytes(data)
        if len(raw) != FOOTER_SIZE:
            raise VhdError(
                f"truncated: {len(raw)} of {FOOTER_SIZE} bytes", field="footer", offset=offset
            )
        c = FOOTER_STRUCT.parse(raw)
        problems = cls.problems(raw, offset)
        if problems:
            raise problems[0]
        return cls(
            disk_type=c.disk_type,
            current_size=c.current_size,
            uuid=uuidlib.UUID(bytes=c.uuid),
            data_offset=c.data_offset,
            original_size=c.original_size,
            timestamp=c.timestamp,
            creator_app=c.creator_app,
            creator_version=c.creator_version,
            creator_os=c.creator_os,
            features=c.features,
            version=c.version,
            geometry=(c.cylinders, c.heads, c.sectors_per_track),
            saved_state=c.saved_state,
            hidden=c.reserved[0],
            checksum=c.checksum,
        )

    @staticmethod
    def problems(raw: bytes, offset: int = 0) -> list[VhdError]:
        """Every problem of the 512 footer bytes ``raw`` read at ``offset``."""
        c = FOOTER_STRUCT.parse(raw)
        found: list[VhdError] = []
        fail = _collector("footer", offset, FOOTER_OFFSETS, found)
        if not _envelope_valid(raw, c, FOOTER_COOKIE, FOOTER_OFFSETS, fail):
            return found
        if c.disk_type not in DISK_TYPE_NAMES:
            fail("disk_type", f"unknown disk type {c.disk_type}")
        if c.current_size > MAX_VIRTUAL_SIZE:
            fail("current_size", f"{c.current_size} bytes exceeds the 2040 GiB VHD limit")
        if c.disk_type == FIXED:
            if c.current_size % SECTOR:
                fail("current_size", f"{c.current_size} is not a multiple of {SECTOR}")
        elif c.data_offset == NO_OFFSET or c.data_offset % SECTOR or c.data_offset < SECTOR:
            fail("data_offset", f"{c.data_offset:#x} is not a dynamic header offset")
        return found

    def build(self) -> bytes:
        """The 512 bytes of this footer, checksum computed."""
        cylinders, heads, spt = self.geometry
        raw = bytearray(
            FOOTER_STRUCT.build(
                dict(
                    cookie=FOOTER_COOKIE,
                    features=self.features,
                    version=self.version,
                    data_offset=self.data_offset,
                    timestamp=self.timestamp,
                    creator_app=self.creator_app,
                    creator_version=self.creator_version,
                    creator_os=self.creator_os,
                    original_size=self.original_size
                    if self.original_size >= 0
                    else self.current_size,
                    current_size=self.current_size,
                    cylinders=cylinders,
                    heads=heads,
                    sectors_per_track=spt,
                    disk_type=self.disk_type,
                    checksum=0,
                    uuid=self.uuid.bytes,
                    saved_state=self.saved_state,
                    reserved=bytes([self.hidden]) + bytes(426),
                )
            )
        )
        pos = FOOTER_OFFSETS["checksum"]
        raw[pos : pos + 4] = checksum(raw, pos).to_bytes(4, "big")
        return bytes(raw)

    def replace(self, **changes: Any) -> Footer:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ParentLocator:
    """One parent locator entry: where a differencing image records its parent's path."""

    platform_code: int
    data_space: int
    data_length: int
    data_offset: int

    @property
    def platform_name(self) -> str:
        """The four-character platform code, e.g. ``MacX``."""
        return PLATFORM_NAMES.get(self.platform_code, f"{self.platform_code:#010x}")

    @property
    def space_bytes(self) -> int:
        """Room reserved for the data in bytes (values under 512 are taken as sectors)."""
        return self.data_space * SECTOR if self.data_space < SECTOR else self.data_space

    def decode(self, data: bytes) -> str | None:
        """The path this locator holds, or None for platforms that carry no path."""
        if self.platform_code in (PLATFORM_W2RU, PLATFORM_W2KU):
            return data.decode("utf-16-le", "replace").rstrip("\0").replace("\\", "/")
        if self.platform_code == PLATFORM_MACX:
            text = data.decode("utf-8", "replace").rstrip("\0")
            return text.removeprefix("file://")
        return None


@dataclass(frozen=True)
class DynamicHeader:
    """The 1024-byte dynamic disk header of dynamic and differencing images."""

    table_offset: int
    max_table_entries: int
    block_size: int = DEFAULT_BLOCK_SIZE
    parent_uuid: uuidlib.UUID = NIL_UUID
    parent_timestamp: int = 0
    parent_name: str = ""
    locators: tuple[ParentLocator, ...] = ()
    version: int = VERSION
    checksum: int = 0

    @property
    def bitmap_size(self) -> int:
        """Bytes of the sector bitmap before each block's data, a whole number of sectors."""
        bits_bytes = -(-self.block_size // SECTOR // 8)
        return -(-bits_bytes // SECTOR) * SECTOR

    @property
    def table_size(self) -> int:
        """Bytes the BAT occupies, padded to a sector."""
        return -(-self.max_table_entries * 4 // SECTOR) * SECTOR

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview, offset: int) -> DynamicHeader:
        """Parse and validate a dynamic header read at absolute ``offset``."""
        raw = bytes(data)
        if len(raw) != HEADER_SIZE:
            raise VhdError(
                f"truncated: {len(raw)} of {HEADER_SIZE} bytes", field="header", offset=offset
            )
        c = HEADER_STRUCT.parse(raw)
        problems = cls.problems(raw, offset)
        if problems:
            raise problems[0]
        locators = tuple(
            ParentLocator(e.platform_code, e.data_space, e.data_length, e.data_offset)
            for e in c.locators
            if e.platform_code != 0
        )
        name = c.parent_name.decode("utf-16-be", "replace").split("\0", 1)[0]
        return cls(
            table_offset=c.table_offset,
            max_table_entries=c.max_table_entries,
            block_size=c.block_size,
            parent_uuid=uuidlib.UUID(bytes=c.parent_uuid),
            parent_timestamp=c.parent_timestamp,
            parent_name=name,
            locators=locators,
            version=c.version,
            checksum=c.checksum,
        )

    @staticmethod
    def problems(raw: bytes, offset: int) -> list[VhdError]:
        """Every problem of the 1024 header bytes ``raw`` read at ``offset``."""
        c = HEADER_STRUCT.parse(raw)
        found: list[VhdError] = []
        fail = _collector("header", offset, HEADER_OFFSETS, found)
        if not _envelope_valid(raw, c, HEADER_COOKIE, HEADER_OFFSETS, fail):
            return found
        if c.data_offset != NO_OFFSET:
            fail("data_offset", f"must be {NO_OFFSET:#x}, found {c.data_offset:#x}")
        bs = c.block_size
        if not MIN_BLOCK_SIZE <= bs <= MAX_BLOCK_SIZE or bs & (bs - 1):
            fail("block_size", f"{bs} is not a power of two from 512 bytes to 256 MiB")
        if not 0 < c.max_table_entries <= MAX_TABLE_ENTRIES:
            fail(
                "max_table_entries",
                f"{c.max_table_entries} entries is outside 1..{MAX_TABLE_ENTRIES}",
            )
        if c.table_offset % SECTOR or c.table_offset < SECTOR:
            fail("table_offset", f"{c.table_offset:#x} is not a sector offset past 512")
        for i, e in enumerate(c.locators):
            if e.platform_code and e.data_length > MAX_LOCATOR_LENGTH:
                found.append(
                    VhdError(
                        f"data length {e.data_length} exceeds {MAX_LOCATOR_LENGTH}",
                        field=f"header.locators[{i}].data_length",
                        offset=offset + LOCATORS_OFFSET + i * LOCATOR_SIZE + 8,
                    )
                )
        return found

    def build(self) -> bytes:
        """The 1024 bytes of this header, checksum computed."""
        name = self.parent_name.encode("utf-16-be")[:512]
        entries = [
            dict(
                platform_code=loc.platform_code,
                data_space=loc.data_space,
                data_length=loc.data_length,
                reserved=0,
                data_offset=loc.data_offset,
            )
            for loc in self.locators
        ]
        entries += [
            dict(platform_code=0, data_space=0, data_length=0, reserved=0, data_offset=0)
        ] * (LOCATOR_COUNT - len(entries))
        raw = bytearray(
            HEADER_STRUCT.build(
                dict(
                    cookie=HEADER_COOKIE,
                    data_offset=NO_OFFSET,
                    table_offset=self.table_offset,
                    version=self.version,
                    max_table_entries=self.max_table_entries,
                    block_size=self.block_size,
                    checksum=0,
                    parent_uuid=self.parent_uuid.bytes,
                    parent_timestamp=self.parent_timestamp,
                    reserved1=0,
                    parent_name=name.ljust(512, b"\0"),
                    locators=entries,
                    reserved2=bytes(256),
                )
            )
        )
        pos = HEADER_OFFSETS["checksum"]
        raw[pos : pos + 4] = checksum(raw, pos).to_bytes(4, "big")
        return bytes(raw)

    def replace(self, **changes: Any) -> DynamicHeader:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


DATA_ALIGNMENT = 4096
"""Blocks xfer places have their data start on a 4 KiB boundary (page-aligned writes)."""


def block_position(free: int, bitmap_size: int) -> int:
    """Where a new block's bitmap goes, at or after ``free``: its data then starts 4 KiB-aligned."""
    return -(-(free + bitmap_size) // DATA_ALIGNMENT) * DATA_ALIGNMENT - bitmap_size


def block_slot(block_size: int, bitmap_size: int) -> int:
    """Room one block takes in images xfer lays out: bitmap and data, padded to keep alignment."""
    stride = bitmap_size + block_size
    if block_size % DATA_ALIGNMENT:
        return stride
    return -(-stride // DATA_ALIGNMENT) * DATA_ALIGNMENT


def trailing_footer_offset(file_size: int) -> int:
    """Where the trailing footer of a file of ``file_size`` bytes starts (its last sector)."""
    return (file_size - FOOTER_SIZE) // SECTOR * SECTOR


def table_entries(size: int, block_size: int) -> int:
    """How many BAT entries a disk of ``size`` bytes needs."""
    return max(1, -(-size // block_size))


def batmap_at(data: bytes) -> tuple[int, int] | None:
    """blktap's batmap header in ``data``: (map offset, map size in bytes), or None if absent."""
    if len(data) != SECTOR or data[:8] != BATMAP_COOKIE:
        return None
    c = BATMAP_STRUCT.parse(data)
    return c.map_offset, c.map_size * SECTOR
