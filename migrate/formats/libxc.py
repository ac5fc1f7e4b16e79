"""Xen's libxc migration stream, version 3, for an x86 HVM guest: writers and a sans-I/O reader.

The stream (Xen's ``docs/specs/libxc-migration-stream.pandoc``, ``xg_sr_stream_format.h``) is
an image header (24 bytes, big-endian), a domain header (16 bytes), then records, all
little-endian: type u32, body length u32, body, zero padding to 8 bytes. xfer writes and reads
STATIC_DATA_END, PAGE_DATA, X86_TSC_INFO, HVM_PARAMS, HVM_CONTEXT and END.

Writers return ``bytes``. A PAGE_DATA record is written as its header only
(:func:`page_data_header`): the caller sends the 4096 bytes of each page that is not XALLOC
itself, straight from the guest's memory, in entry order.

The reader never reads ahead and never buffers page data, so that the I/O layer can receive
pages straight into the guest's memory::

    reader = StreamReader(memory_pages)
    while (n := reader.need()) > 0:          # 0 once END has been read
        event = reader.feed(await receive_at_most(n))   # 1..n bytes; None until a unit completes
        if isinstance(event, Pages):
            for start, end in event.zero_runs:   # XALLOC pages first: they hold zeros
                memory[start * PAGE : end * PAGE] = zeros
            for start, end in event.runs:    # then the data pages, in payload order
                await recv_into_exactly(memory[start * PAGE : end * PAGE])
            reader.payload_done()            # after ``reader.payload()`` bytes were consumed
        elif isinstance(event, HvmContext): ...
    # on EOF before that (page data included): reader.end_of_input() raises StreamError

Stricter than libxc, since both ends are xfer: version 3 only; reserved fields, reserved pfn
bits and padding must be zero; BROKEN and XTAB pages are refused (a process guest has
neither); CPUID/MSR policies, checkpoints and PV records are refused. As the format allows,
unknown *optional* records (bit 31 of the type) are skipped.

Every refusal is a :class:`StreamError` naming the record, its offset in the stream and what
is wrong. No allocation is sized by a field of the stream: ``need()`` is at most
:data:`MAX_NEED`, and a record body is kept only as its bytes arrive.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import numpy.typing as npt

__all__ = [
    "DOMAIN_HEADER_SIZE",
    "HVM_CONTEXT_MAX",
    "HVM_PARAMS_MAX",
    "IMAGE_HEADER_SIZE",
    "MAX_NEED",
    "PAGE_DATA_MAX",
    "PAGE_SIZE",
    "REC_LENGTH_MAX",
    "DomainHeader",
    "End",
    "Event",
    "HvmContext",
    "HvmParams",
    "ImageHeader",
    "Pages",
    "StaticDataEnd",
    "StreamError",
    "StreamReader",
    "TscInfo",
    "domain_header",
    "end",
    "hvm_context",
    "hvm_params",
    "image_header",
    "page_data_header",
    "page_runs",
    "static_data_end",
    "tsc_info",
]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

# Image header (big-endian whatever the options say).
_IMAGE_HEADER = struct.Struct(">QIIHHI")
IMAGE_HEADER_SIZE = _IMAGE_HEADER.size
IHDR_MARKER = 0xFFFFFFFFFFFFFFFF
IHDR_ID = 0x58454E46  # "XENF"
VERSION = 3
IHDR_OPT_BIG_ENDIAN = 1 << 0

# Domain header.
_DOMAIN_HEADER = struct.Struct("<IHHII")
DOMAIN_HEADER_SIZE = _DOMAIN_HEADER.size
DHDR_TYPE_X86_PV = 1
DHDR_TYPE_X86_HVM = 2
XEN_MAJOR = 4
XEN_MINOR = 17
"""The Xen version xfer's domain header names (the fields are informational)."""

# Records.
_RECORD_HEADER = struct.Struct("<II")
RECORD_HEADER_SIZE = _RECORD_HEADER.size
REC_ALIGN = 8
REC_LENGTH_MAX = 128 << 20
"""libxc's receiver refuses record bodies longer than this (128 MiB)."""
REC_TYPE_OPTIONAL = 0x80000000

REC_END = 0x00
REC_PAGE_DATA = 0x01
REC_X86_TSC_INFO = 0x08
REC_HVM_CONTEXT = 0x09
REC_HVM_PARAMS = 0x0A
REC_STATIC_DATA_END = 0x10

RECORD_NAMES = {
    0x00: "END",
    0x01: "PAGE_DATA",
    0x02: "X86_PV_INFO",
    0x03: "X86_PV_P2M_FRAMES",
    0x04: "X86_PV_VCPU_BASIC",
    0x05: "X86_PV_VCPU_EXTENDED",
    0x06: "X86_PV_VCPU_XSAVE",
    0x07: "SHARED_INFO",
    0x08: "X86_TSC_INFO",
    0x09: "HVM_CONTEXT",
    0x0A: "HVM_PARAMS",
    0x0B: "TOOLSTACK",
    0x0C: "X86_PV_VCPU_MSRS",
    0x0D: "VERIFY",
    0x0E: "CHECKPOINT",
    0x0F: "CHECKPOINT_DIRTY_PFN_LIST",
    0x10: "STATIC_DATA_END",
    0x11: "X86_CPUID_POLICY",
    0x12: "X86_MSR_POLICY",
}
"""Every record type of version 3, by number (for messages)."""

_UNSUPPORTED = {
    **dict.fromkeys((0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x0C), "a PV-only record"),
    0x0B: "obsolete (Xen 4.5's toolstack blob)",
    0x0D: "verify mode is not supported",
    0x0E: "checkpointed streams (Remus, COLO) are not supported",
    0x0F: "checkpointed streams (Remus, COLO) are not supported",
    0x11: "xfer's guests have no CPUID policy",
    0x12: "xfer's guests have no MSR policy",
}
"""Record types of the format that an xfer HVM stream never carries, and why."""

# PAGE_DATA.
_PAGE_HEADER = struct.Struct("<II")
PAGE_DATA_MAX = 1024
"""Most pages in one PAGE_DATA record, as libxc sends them."""
PFN_MASK = 0x000F_FFFF_FFFF_FFFF
"""Bits 51-0 of a pfn entry: the pfn."""
PFN_RESERVED_MASK = 0x0FF0_0000_0000_0000
"""Bits 59-52 of a pfn entry: reserved, zero."""
TYPE_SHIFT = 60
TYPE_NOTAB = 0x0
TYPE_BROKEN = 0xD
TYPE_XALLOC = 0xE
TYPE_XTAB = 0xF

_DATA_TYPES = np.zeros(16, dtype=bool)
_DATA_TYPES[[0, 1, 2, 3, 4, 9, 10, 11, 12]] = True
"""Page types followed by 4096 bytes of data: normal pages and page tables (pinned or not)."""
_VALID_TYPES = _DATA_TYPES.copy()
_VALID_TYPES[TYPE_XALLOC] = True
"""Page types xfer accepts: those with data, and XALLOC (allocate, contents zero)."""
_TYPE_PROBLEMS = {
    **dict.fromkeys(range(5, 9), "is invalid"),
    TYPE_BROKEN: "(BROKEN) is not supported: a process guest has no broken pages",
    TYPE_XTAB: "(XTAB, an invalid page) is not supported",
}

_TSC_INFO = struct.Struct("<IIQII")
_HVM_PARAMS_HEADER = struct.Struct("<II")
HVM_PARAMS_MAX = 1024
"""Most HVM parameters in one record accepted (Xen defines fewer than 64)."""
HVM_CONTEXT_MAX = 16 << 20
"""Largest HVM_CONTEXT accepted: a bound on what one record makes the receiver hold."""

MAX_NEED = 1 << 20
"""The most bytes :meth:`StreamReader.need` ever asks for at once."""


def _record(rtype: int, body: bytes = b"") -> bytes:
    if len(body) > REC_LENGTH_MAX:
        raise ValueError(f"{RECORD_NAMES[rtype]} body of {len(body)} bytes exceeds 128 MiB")
    return _RECORD_HEADER.pack(rtype, len(body)) + body + bytes(-len(body) % REC_ALIGN)


def image_header() -> bytes:
    """The 24-byte image header: marker, "XENF", version 3, little-endian records."""
    return _IMAGE_HEADER.pack(IHDR_MARKER, IHDR_ID, VERSION, 0, 0, 0)


def domain_header(xen_major: int = XEN_MAJOR, xen_minor: int = XEN_MINOR) -> bytes:
    """The 16-byte domain header of an x86 HVM guest with 4 KiB pages."""
    return _DOMAIN_HEADER.pack(DHDR_TYPE_X86_HVM, PAGE_SHIFT, 0, xen_major, xen_minor)


def static_data_end() -> bytes:
    """The STATIC_DATA_END record: every record that must precede the pages came."""
    return _record(REC_STATIC_DATA_END)


def tsc_info(mode: int = 0, khz: int = 0, nsec: int = 0, incarnation: int = 0) -> bytes:
    """An X86_TSC_INFO record (24-byte body)."""
    return _record(REC_X86_TSC_INFO, _TSC_INFO.pack(mode, khz, nsec, incarnation, 0))


def hvm_params(params: Iterable[tuple[int, int]]) -> bytes:
    """An HVM_PARAMS record of (index, value) pairs."""
    table = np.array(list(params), dtype="<u8").reshape(-1, 2)
    if len(table) > HVM_PARAMS_MAX:
        raise ValueError(f"{len(table)} HVM parameters exceed {HVM_PARAMS_MAX}")
    return _record(REC_HVM_PARAMS, _HVM_PARAMS_HEADER.pack(len(table), 0) + table.tobytes())


def hvm_context(data: bytes) -> bytes:
    """An HVM_CONTEXT record carrying the CPU state ``data`` (opaque, not empty)."""
    if not data:
        raise ValueError("HVM_CONTEXT must not be empty")
    if len(data) > HVM_CONTEXT_MAX:
        raise ValueError(f"HVM_CONTEXT of {len(data)} bytes exceeds {HVM_CONTEXT_MAX}")
    return _record(REC_HVM_CONTEXT, bytes(data))


def end() -> bytes:
    """The END record: the last of the stream."""
    return _record(REC_END)


def page_data_header(pfns: npt.ArrayLike, zero: npt.NDArray[np.bool_] | None = None) -> bytes:
    """The header of a PAGE_DATA record for ``pfns`` (1 to 1024 of them, in the order sent).

    ``zero[i]`` marks pfn ``i`` as all-zero: it goes as XALLOC and carries no data. The record
    header, count, reserved word and pfn entries are returned; the caller then sends 4096
    bytes for each page not marked zero, in the order of ``pfns``.
    """
    pfn_array = np.asarray(pfns)
    if pfn_array.ndim != 1 or not 1 <= len(pfn_array) <= PAGE_DATA_MAX:
        raise ValueError(
            f"a PAGE_DATA record holds 1 to {PAGE_DATA_MAX} pfns, not shape {pfn_array.shape}"
        )
    if pfn_array.dtype.kind not in "ui":
        raise ValueError(f"pfns must be integers, not {pfn_array.dtype}")
    if (pfn_array.dtype.kind == "i" and pfn_array.min() < 0) or pfn_array.max() > PFN_MASK:
        raise ValueError("a pfn is outside 0..2**52-1")
    entries = pfn_array.astype("<u8")
    count = len(entries)
    data_pages = count
    if zero is not None:
        zero_array = np.asarray(zero, dtype=bool)
        if zero_array.shape != entries.shape:
            raise ValueError(f"zero has shape {zero_array.shape}, pfns {entries.shape}")
        entries |= zero_array.astype("<u8") * np.uint64(TYPE_XALLOC << TYPE_SHIFT)
        data_pages -= int(np.count_nonzero(zero_array))
    length = _PAGE_HEADER.size + 8 * count + PAGE_SIZE * data_pages
    return (
        _RECORD_HEADER.pack(REC_PAGE_DATA, length) + _PAGE_HEADER.pack(count, 0) + entries.tobytes()
    )


def page_runs(pfns: npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
    """``pfns`` (below 2**63) in order as (k, 2) int64 ``[start, end)`` runs, neighbours
    ``p, p + 1`` merged."""
    p = np.asarray(pfns)
    p = p.view(np.int64) if p.dtype == np.uint64 else p.astype(np.int64, copy=False)
    if len(p) == 0:
        return np.empty((0, 2), dtype=np.int64)
    breaks = np.flatnonzero(p[1:] - p[:-1] != 1)
    if len(breaks) == 0:  # one run, as a whole round's ascending pages mostly are
        return np.array([[p[0], p[-1] + 1]], dtype=np.int64)
    runs = np.empty((len(breaks) + 1, 2), dtype=np.int64)
    runs[0, 0] = p[0]
    runs[1:, 0] = p[breaks + 1]
    runs[:-1, 1] = p[breaks] + 1
    runs[-1, 1] = p[-1] + 1
    return runs


class StreamError(ValueError):
    """The stream is malformed: ``record`` names what was being read, ``offset`` where it began."""

    def __init__(self, record: str, offset: int, problem: str) -> None:
        super().__init__(f"{record} at stream offset {offset}: {problem}")
        self.record = record
        self.offset = offset
        self.problem = problem


@dataclass(frozen=True)
class ImageHeader:
    """The image header was valid (``version`` 3)."""

    version: int


@dataclass(frozen=True)
class DomainHeader:
    """The domain header: an x86 HVM guest with 4 KiB pages, saved on Xen major.minor."""

    xen_major: int
    xen_minor: int


@dataclass(frozen=True)
class StaticDataEnd:
    """STATIC_DATA_END: the pages may follow."""


@dataclass(frozen=True, eq=False)
class Pages:
    """A PAGE_DATA record's entries; ``payload`` bytes of page data follow, not fed.

    ``pfns`` (uint64) and ``types`` (uint8) are the entries in record order; ``data`` marks
    the entries that carry 4096 bytes; ``runs`` are their pfns as (k, 2) int64 ``[start, end)``
    runs in the order their data follows (so ``runs`` cover exactly ``payload`` bytes);
    ``zero_runs`` likewise for the XALLOC pages, whose memory the receiver zeroes *before*
    receiving the data: a pfn listed both ways in one record ends with its data, as in libxc
    (where XALLOC only allocates).
    """

    pfns: npt.NDArray[np.uint64]
    types: npt.NDArray[np.uint8]
    data: npt.NDArray[np.bool_]
    runs: npt.NDArray[np.int64]
    zero_runs: npt.NDArray[np.int64]
    payload: int

    @property
    def data_pfns(self) -> npt.NDArray[np.uint64]:
        """The pfns whose data follows, in order."""
        return self.pfns[self.data]

    @property
    def zero_pfns(self) -> npt.NDArray[np.uint64]:
        """The XALLOC pfns (contents zero), in record order."""
        return self.pfns[~self.data]


@dataclass(frozen=True)
class TscInfo:
    """X86_TSC_INFO: the guest's TSC mode, frequency, elapsed time and incarnation."""

    mode: int
    khz: int
    nsec: int
    incarnation: int


@dataclass(frozen=True)
class HvmParams:
    """HVM_PARAMS: (index, value) pairs."""

    params: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class HvmContext:
    """HVM_CONTEXT: the CPU state, opaque."""

    data: bytes


@dataclass(frozen=True)
class End:
    """END: the stream is complete."""


Event = ImageHeader | DomainHeader | StaticDataEnd | Pages | TscInfo | HvmParams | HvmContext | End

# Reader states: which unit the bytes fed next belong to.
_IMAGE = "image header"
_DOMAIN = "domain header"
_RECORD = "record header"
_BODY = "body"
_COUNT = "page count"
_PAGE_ENTRIES = "pfn entries"
_PAYLOAD = "page data"
_SKIP = "skipped body"
_DONE = "done"

_TAIL = (REC_X86_TSC_INFO, REC_HVM_PARAMS, REC_HVM_CONTEXT)
"""The CPU state records: after the pages, each at most once, in any order."""


class StreamReader:
    """Read one libxc v3 x86 HVM stream into a guest of ``memory_pages`` pages, incrementally.

    ``offset`` is the stream offset of the first byte, for messages (the stream's position in
    an enclosing suspend image).
    """

    def __init__(self, memory_pages: int, *, offset: int = 0) -> None:
        if memory_pages <= 0:
            raise ValueError(f"memory_pages {memory_pages} must be positive")
        self.memory_pages = memory_pages
        self.offset = offset
        """Stream offset of the next byte (page data included once ``payload_done``)."""
        self._state = _IMAGE
        self._remaining = IMAGE_HEADER_SIZE
        self._buf = bytearray()
        self._unit_offset = offset
        """Offset of the unit being read: a header, or the record being read."""
        self._rtype = 0
        self._length = 0
        self._count = 0
        self._payload = 0
        self._seen: set[int] = set()
        self._error: StreamError | None = None

    # -- the I/O layer's side --------------------------------------------------------------

    def need(self) -> int:
        """Bytes to feed next (at most :data:`MAX_NEED`); 0 once END was read."""
        self._check()
        if self._state == _PAYLOAD:
            raise RuntimeError("page data pending: consume payload() bytes, then payload_done()")
        if self._state == _DONE:
            return 0
        return min(self._remaining, MAX_NEED)

    def feed(self, data: bytes | bytearray | memoryview) -> Event | None:
        """Take 1 to ``need()`` bytes; the event they complete, else None."""
        self._check()
        if self._state == _DONE:
            if len(data):
                self._fail(
                    "END", self._unit_offset, f"{len(data)} bytes follow at offset {self.offset}"
                )
            return None
        limit = self.need()
        if len(data) > limit:
            raise RuntimeError(f"fed {len(data)} bytes; the reader needs at most {limit}")
        if not len(data):
            return None
        if self._state != _SKIP:
            self._buf += data
        self._remaining -= len(data)
        self.offset += len(data)
        if self._remaining:
            return None
        return self._complete()  # a refusal stays: _fail keeps the error for later calls

    def payload(self) -> int:
        """Bytes of page data the caller must consume itself after a :class:`Pages` event."""
        self._check()
        if self._state != _PAYLOAD:
            raise RuntimeError("no page data pending")
        return self._payload

    def payload_done(self) -> None:
        """The caller consumed the :meth:`payload` bytes (possibly 0); records continue."""
        self._check()
        if self._state != _PAYLOAD:
            raise RuntimeError("no page data pending")
        self.offset += self._payload
        self._payload = 0
        self._expect(_RECORD, RECORD_HEADER_SIZE)

    @property
    def done(self) -> bool:
        """END was read."""
        return self._state == _DONE

    def end_of_input(self) -> None:
        """The input ended: a :class:`StreamError` unless END was read."""
        self._check()
        if self._state == _DONE:
            return
        if self._state in (_IMAGE, _DOMAIN):
            self._fail(self._state, self._unit_offset, self._truncated(self._state))
        if self._state == _RECORD and not self._buf:
            self._fail("stream", self.offset, "ends before its END record")
        name = "record" if self._state == _RECORD else self._name(self._rtype)
        self._fail(name, self._unit_offset, self._truncated(self._state))

    # -- parsing -----------------------------------------------------------------------------

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _fail(self, record: str, offset: int, problem: str) -> NoReturn:
        self._error = StreamError(record, offset, problem)
        raise self._error

    def _truncated(self, unit: str) -> str:
        if unit == _PAYLOAD:
            return (
                f"the stream ends inside its {self._payload} bytes of page data "
                f"from offset {self.offset}"
            )
        return f"the stream ends at offset {self.offset}, inside its {unit}"

    @staticmethod
    def _name(rtype: int) -> str:
        return RECORD_NAMES.get(rtype) or f"record type {rtype:#x}"

    def _expect(self, state: str, size: int) -> None:
        self._state = state
        self._remaining = size
        self._buf = bytearray()
        if state == _RECORD:
            self._unit_offset = self.offset

    def _complete(self) -> Event | None:
        buf = bytes(self._buf)
        state = self._state
        if state == _IMAGE:
            return self._image_header(buf)
        if state == _DOMAIN:
            return self._domain_header(buf)
        if state == _RECORD:
            return self._record_header(buf)
        if state == _COUNT:
            self._page_count(buf)
            return None
        if state == _PAGE_ENTRIES:
            return self._page_entries(buf)
        if state == _SKIP:
            self._expect(_RECORD, RECORD_HEADER_SIZE)
            return None
        return self._body(buf)

    def _image_header(self, buf: bytes) -> Event:
        marker, ident, version, options, res1, res2 = _IMAGE_HEADER.unpack(buf)
        where = (_IMAGE, self._unit_offset)
        if marker != IHDR_MARKER:
            self._fail(*where, f"marker {marker:#018x}, expected {IHDR_MARKER:#018x}")
        if ident != IHDR_ID:
            self._fail(*where, f"id {ident:#010x}, expected {IHDR_ID:#010x} ('XENF')")
        if version != VERSION:
            self._fail(*where, f"version {version}: xfer reads version {VERSION} only")
        if options & IHDR_OPT_BIG_ENDIAN:
            self._fail(*where, "big-endian records are not supported")
        if options:
            self._fail(*where, f"reserved option bits set ({options:#06x})")
        if res1 or res2:
            self._fail(*where, "reserved fields are not zero")
        self._unit_offset = self.offset
        self._expect(_DOMAIN, DOMAIN_HEADER_SIZE)
        return ImageHeader(version)

    def _domain_header(self, buf: bytes) -> Event:
        gtype, page_shift, res, major, minor = _DOMAIN_HEADER.unpack(buf)
        where = (_DOMAIN, self._unit_offset)
        if gtype != DHDR_TYPE_X86_HVM:
            kind = {1: "x86 PV", 3: "x86 PVH", 4: "ARM"}.get(gtype, "unknown")
            self._fail(*where, f"guest type {gtype} ({kind}): xfer reads x86 HVM (2) only")
        if page_shift != PAGE_SHIFT:
            self._fail(*where, f"page shift {page_shift}, expected {PAGE_SHIFT}")
        if res:
            self._fail(*where, "reserved field is not zero")
        self._expect(_RECORD, RECORD_HEADER_SIZE)
        return DomainHeader(major, minor)

    def _record_header(self, buf: bytes) -> Event | None:
        rtype, length = _RECORD_HEADER.unpack(buf)
        self._rtype, self._length = rtype, length
        name = self._name(rtype)
        where = (name, self._unit_offset)
        if length > REC_LENGTH_MAX:
            self._fail(*where, f"body of {length} bytes exceeds the 128 MiB limit")
        padded = length + (-length % REC_ALIGN)
        if rtype not in RECORD_NAMES:
            if rtype & REC_TYPE_OPTIONAL:  # the format lets a reader skip optional records
                self._expect(_SKIP, padded)
                if not padded:
                    self._expect(_RECORD, RECORD_HEADER_SIZE)
                return None
            self._fail(*where, "unknown record type")
        if rtype in _UNSUPPORTED:
            self._fail(*where, f"not part of an xfer x86 HVM stream: {_UNSUPPORTED[rtype]}")
        seen = self._seen
        if rtype == REC_STATIC_DATA_END:
            if rtype in seen:
                self._fail(*where, "a second STATIC_DATA_END")
        elif REC_STATIC_DATA_END not in seen:
            self._fail(*where, "before STATIC_DATA_END")
        if rtype == REC_PAGE_DATA:
            tail = [self._name(t) for t in _TAIL if t in seen]
            if tail:
                self._fail(*where, f"after {tail[0]}: the pages must precede the CPU state")
            if length < _PAGE_HEADER.size:
                self._fail(*where, f"body of {length} bytes has no room for the page count")
            self._expect(_COUNT, _PAGE_HEADER.size)
            return None
        if rtype in _TAIL and rtype in seen:
            self._fail(*where, f"a second {name}")
        if rtype == REC_END and REC_HVM_CONTEXT not in seen:
            self._fail(*where, "before HVM_CONTEXT: the stream carries no CPU state")
        expected = {REC_END: 0, REC_STATIC_DATA_END: 0, REC_X86_TSC_INFO: _TSC_INFO.size}
        if rtype in expected and length != expected[rtype]:
            self._fail(*where, f"body of {length} bytes, expected {expected[rtype]}")
        if rtype == REC_HVM_CONTEXT and not 0 < length <= HVM_CONTEXT_MAX:
            problem = f"body of {length} bytes exceeds {HVM_CONTEXT_MAX}" if length else "empty"
            self._fail(*where, problem)
        if rtype == REC_HVM_PARAMS and (
            length < _HVM_PARAMS_HEADER.size or (length - _HVM_PARAMS_HEADER.size) % 16
        ):
            self._fail(*where, f"body of {length} bytes is not 8 + 16 bytes per parameter")
        if rtype == REC_HVM_PARAMS and length > _HVM_PARAMS_HEADER.size + 16 * HVM_PARAMS_MAX:
            self._fail(*where, f"body of {length} bytes holds over {HVM_PARAMS_MAX} parameters")
        seen.add(rtype)
        if padded == 0:
            return self._body(b"")
        self._expect(_BODY, padded)
        return None

    def _body(self, buf: bytes) -> Event:
        rtype, length = self._rtype, self._length
        where = (self._name(rtype), self._unit_offset)
        if any(buf[length:]):
            self._fail(*where, "padding after the body is not zero")
        body = buf[:length]
        event: Event
        if rtype == REC_END:
            self._state = _DONE
            return End()
        if rtype == REC_STATIC_DATA_END:
            event = StaticDataEnd()
        elif rtype == REC_X86_TSC_INFO:
            mode, khz, nsec, incarnation, res = _TSC_INFO.unpack(body)
            if res:
                self._fail(*where, "reserved field is not zero")
            event = TscInfo(mode, khz, nsec, incarnation)
        elif rtype == REC_HVM_PARAMS:
            count, res = _HVM_PARAMS_HEADER.unpack_from(body)
            if res:
                self._fail(*where, "reserved field is not zero")
            if count != (length - _HVM_PARAMS_HEADER.size) // 16:
                self._fail(*where, f"count {count} does not match its body of {length} bytes")
            table = np.frombuffer(body, dtype="<u8", offset=_HVM_PARAMS_HEADER.size)
            event = HvmParams(tuple((int(i), int(v)) for i, v in table.reshape(-1, 2).tolist()))
        else:  # HVM_CONTEXT
            event = HvmContext(body)
        self._expect(_RECORD, RECORD_HEADER_SIZE)
        return event

    def _page_count(self, buf: bytes) -> None:
        count, res = _PAGE_HEADER.unpack(buf)
        where = ("PAGE_DATA", self._unit_offset)
        if not 1 <= count <= PAGE_DATA_MAX:
            self._fail(*where, f"count {count} is outside 1..{PAGE_DATA_MAX}")
        if res:
            self._fail(*where, "reserved field is not zero")
        if self._length < _PAGE_HEADER.size + 8 * count:
            self._fail(*where, f"body of {self._length} bytes is too short for {count} pfns")
        self._count = count
        self._expect(_PAGE_ENTRIES, 8 * count)

    def _refuse_entries(
        self,
        entries: npt.NDArray[np.uint64],
        types: npt.NDArray[np.uint8],
        pfns: npt.NDArray[np.uint64],
        invalid: npt.NDArray[np.bool_],
        reserved: npt.NDArray[np.bool_],
        beyond: npt.NDArray[np.bool_],
    ) -> NoReturn:
        """Name the first bad entry: an invalid type, then reserved bits, then a pfn too high."""
        where = ("PAGE_DATA", self._unit_offset)
        if invalid.any():
            i = int(np.argmax(invalid))
            problem = _TYPE_PROBLEMS.get(int(types[i]), "is invalid")
            self._fail(*where, f"entry {i}: page type {int(types[i]):#x} {problem}")
        if reserved.any():
            i = int(np.argmax(reserved))
            self._fail(*where, f"entry {i}: reserved bits 59-52 are set ({int(entries[i]):#x})")
        i = int(np.argmax(beyond))
        self._fail(
            *where,
            f"entry {i}: pfn {int(pfns[i]):#x} is beyond the guest's {self.memory_pages} pages",
        )

    def _page_entries(self, buf: bytes) -> Event:
        where = ("PAGE_DATA", self._unit_offset)
        entries = np.frombuffer(buf, dtype="<u8")
        pfns = entries & np.uint64(PFN_MASK)
        high = entries >> np.uint64(52)  # type and reserved bits
        types = (high >> np.uint64(8)).astype(np.uint8)
        data = high == 0
        zero = high == np.uint64(TYPE_XALLOC << 8)
        if not ((data | zero).all() and int(pfns.max()) < self.memory_pages):
            # Not only normal and XALLOC pages within memory: the full checks.
            invalid = ~_VALID_TYPES[types]
            reserved = (high & np.uint64(0xFF)) != 0
            beyond = pfns >= np.uint64(self.memory_pages)
            if (invalid | reserved | beyond).any():
                self._refuse_entries(entries, types, pfns, invalid, reserved, beyond)
            data = _DATA_TYPES[types]
            zero = ~data
        data_pages = int(np.count_nonzero(data))
        expected = _PAGE_HEADER.size + 8 * self._count + PAGE_SIZE * data_pages
        if self._length != expected:
            self._fail(
                *where,
                f"body of {self._length} bytes, expected {expected} for {self._count} pfns "
                f"of which {data_pages} carry data",
            )
        self._state = _PAYLOAD
        self._buf = bytearray()
        self._payload = PAGE_SIZE * data_pages
        return Pages(
            pfns=pfns,
            types=types,
            data=data,
            runs=page_runs(pfns[data]),
            zero_runs=page_runs(pfns[zero]),
            payload=self._payload,
        )
