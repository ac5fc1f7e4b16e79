"""xenopsd's suspend image around the libxc stream: writers and a sans-I/O reader.

The image (xenopsd's ``suspend_image.ml``) is the signature ``XenSavedDomv2-\\n``, then records,
each a 16-byte header (type int64 LE, length int64 LE) and a body of that length, unpadded:

- Xenops (0x000f): the VM's metadata, here JSON (:class:`~migrate.formats.xenops.VmMetadata`);
  xenopsd itself writes an S-expression of its own record there.
- Libxc (0x00f0), length 0: the libxc stream (:mod:`migrate.formats.libxc`) follows and ends
  at its END record.
- Qemu_trad (0x0f00): the device model's state, opaque, at most 16 MiB (optional).
- End_of_image (0xffff), length 0.

xfer writes and reads them in that order. :class:`ImageReader` reads a whole image with the
libxc reader composed inside it, so that the I/O layer drives one reader for the whole mem
connection, page data received straight into guest memory as for a bare libxc stream::

    reader = ImageReader()                     # or ImageReader(memory_pages) to insist on it
    while (n := reader.need()) > 0:            # 0 once End_of_image has been read
        event = reader.feed(await receive_at_most(n))
        if isinstance(event, Xenops): prepare_domain(event.metadata)
        elif isinstance(event, libxc.Pages):
            ...zero event.zero_runs, then receive reader.payload() bytes into event.runs...
            reader.payload_done()
        elif isinstance(event, DeviceModel): ...
    # EOF before that: reader.end_of_input() raises StreamError

Refusals are :class:`~migrate.formats.libxc.StreamError`, naming the record, its offset in
the image and what is wrong; the libxc reader's offsets are offsets in the image too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NoReturn

from migrate.formats import libxc
from migrate.formats.libxc import StreamError
from migrate.formats.xenops import METADATA_MAX, MetadataError, VmMetadata

__all__ = [
    "DEVICE_MODEL_MAX",
    "SIGNATURE",
    "DeviceModel",
    "EndOfImage",
    "Event",
    "ImageReader",
    "StreamError",
    "Xenops",
    "device_model_record",
    "end_of_image",
    "libxc_header",
    "xenops_record",
]

SIGNATURE = b"XenSavedDomv2-\n"
"""The first bytes of a suspend image."""

_HEADER = struct.Struct("<qq")
HEADER_SIZE = _HEADER.size

XENOPS = 0x000F
LIBXC = 0x00F0
QEMU_TRAD = 0x0F00
"""The device model's state (xenopsd's Qemu_trad record)."""
END_OF_IMAGE = 0xFFFF

RECORD_NAMES = {
    XENOPS: "Xenops",
    LIBXC: "Libxc",
    0x00F1: "Libxl",
    0x00F2: "Libxc_legacy",
    QEMU_TRAD: "Qemu_trad",
    0x0F01: "Qemu_xen",
    0x0F10: "Demu",
    0x0F11: "Varstored",
    0x0F12: "Swtpm0",
    0x0F13: "Swtpm",
    END_OF_IMAGE: "End_of_image",
}
"""Every record type xenopsd knows, by number (for messages)."""

DEVICE_MODEL_MAX = 16 << 20
"""Largest device-model state accepted (bytes)."""

_BODY_CHUNK = 1 << 20
"""The most bytes of a record body asked for at once."""


def _header(rtype: int, length: int) -> bytes:
    return _HEADER.pack(rtype, length)


def xenops_record(metadata: VmMetadata) -> bytes:
    """The Xenops record carrying ``metadata`` as JSON."""
    body = metadata.to_json()
    if len(body) > METADATA_MAX:
        raise ValueError(f"metadata of {len(body)} bytes exceeds {METADATA_MAX}")
    return _header(XENOPS, len(body)) + body


def libxc_header() -> bytes:
    """The Libxc record header: the libxc stream follows it."""
    return _header(LIBXC, 0)


def device_model_record(data: bytes) -> bytes:
    """The device model's state record (Qemu_trad), at most 16 MiB."""
    if len(data) > DEVICE_MODEL_MAX:
        raise ValueError(f"device-model state of {len(data)} bytes exceeds {DEVICE_MODEL_MAX}")
    return _header(QEMU_TRAD, len(data)) + bytes(data)


def end_of_image() -> bytes:
    """The End_of_image record: the last of the image."""
    return _header(END_OF_IMAGE, 0)


@dataclass(frozen=True)
class Xenops:
    """The Xenops record: the VM's metadata."""

    metadata: VmMetadata


@dataclass(frozen=True)
class DeviceModel:
    """The device model's state, opaque."""

    data: bytes


@dataclass(frozen=True)
class EndOfImage:
    """End_of_image: the image is complete."""


Event = Xenops | DeviceModel | EndOfImage | libxc.Event

_SIGNATURE = "signature"
_RECORD = "record header"
_BODY = "body"
_LIBXC = "libxc stream"
_DONE = "done"


class ImageReader:
    """Read one suspend image incrementally; the libxc stream inside through a
    :class:`~migrate.formats.libxc.StreamReader` for a guest of ``memory_pages`` pages (when
    None, the size the Xenops record gives; when given, the Xenops record must agree)."""

    def __init__(self, memory_pages: int | None = None) -> None:
        if memory_pages is not None and memory_pages <= 0:
            raise ValueError(f"memory_pages {memory_pages} must be positive")
        self.memory_pages = memory_pages
        self._offset = 0
        self.metadata: VmMetadata | None = None
        """The Xenops record's metadata, once read."""
        self._state = _SIGNATURE
        self._remaining = len(SIGNATURE)
        self._buf = bytearray()
        self._record_offset = 0
        self._rtype = 0
        self._length = 0
        self._seen: set[int] = set()
        self._libxc: libxc.StreamReader | None = None
        self._error: StreamError | None = None

    # -- the I/O layer's side --------------------------------------------------------------

    def need(self) -> int:
        """Bytes to feed next (at most 1 MiB); 0 once End_of_image was read."""
        self._check()
        if self._state == _LIBXC:
            return self._inner().need()
        if self._state == _DONE:
            return 0
        return min(self._remaining, _BODY_CHUNK)

    def feed(self, data: bytes | bytearray | memoryview) -> Event | None:
        """Take 1 to ``need()`` bytes; the event they complete, else None."""
        self._check()
        if self._state == _LIBXC:
            return self._feed_libxc(data)
        if self._state == _DONE:
            if len(data):
                self._fail(
                    "End_of_image",
                    self._record_offset,
                    f"{len(data)} bytes follow at offset {self.offset}",
                )
            return None
        limit = self.need()
        if len(data) > limit:
            raise RuntimeError(f"fed {len(data)} bytes; the reader needs at most {limit}")
        if not len(data):
            return None
        self._buf += data
        self._remaining -= len(data)
        self._offset += len(data)
        if self._remaining:
            return None
        return self._complete(bytes(self._buf))

    def payload(self) -> int:
        """Bytes of page data the caller must consume itself after a ``Pages`` event."""
        self._check()
        return self._inner().payload()

    def payload_done(self) -> None:
        """The caller consumed the :meth:`payload` bytes."""
        self._check()
        self._inner().payload_done()

    @property
    def offset(self) -> int:
        """Image offset of the next byte (page data counted once ``payload_done``)."""
        if self._state == _LIBXC:
            return self._inner().offset
        return self._offset

    @property
    def done(self) -> bool:
        """End_of_image was read."""
        return self._state == _DONE

    def end_of_input(self) -> None:
        """The input ended: a :class:`StreamError` unless End_of_image was read."""
        self._check()
        if self._state == _DONE:
            return
        if self._state == _LIBXC:
            self._inner().end_of_input()  # raises: the libxc stream is not at its END
        if self._state == _SIGNATURE:
            self._fail("signature", 0, f"the image ends at offset {self.offset}")
        if self._state == _RECORD and not self._buf:
            self._fail("image", self.offset, "ends before its End_of_image record")
        name = "record" if self._state == _RECORD else self._name(self._rtype)
        self._fail(
            name,
            self._record_offset,
            f"the image ends at offset {self.offset}, inside its {self._state}",
        )

    # -- parsing -----------------------------------------------------------------------------

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _fail(self, record: str, offset: int, problem: str) -> NoReturn:
        """Refuse; the error stays (the libxc reader inside keeps its own likewise)."""
        self._error = StreamError(record, offset, problem)
        raise self._error

    @staticmethod
    def _name(rtype: int) -> str:
        return RECORD_NAMES.get(rtype, f"record type {rtype:#x}")

    def _inner(self) -> libxc.StreamReader:
        if self._libxc is None:
            raise RuntimeError("no page data pending: not inside the libxc stream")
        return self._libxc

    def _expect(self, state: str, size: int) -> None:
        self._state = state
        self._remaining = size
        self._buf = bytearray()
        if state == _RECORD:
            self._record_offset = self._offset

    def _feed_libxc(self, data: bytes | bytearray | memoryview) -> Event | None:
        inner = self._inner()
        event = inner.feed(data)
        if isinstance(event, libxc.End):
            self._offset = inner.offset
            self._expect(_RECORD, HEADER_SIZE)
        return event

    def _complete(self, buf: bytes) -> Event | None:
        if self._state == _SIGNATURE:
            if buf != SIGNATURE:
                self._fail("signature", 0, f"{buf!r} is not {SIGNATURE!r}")
            self._expect(_RECORD, HEADER_SIZE)
            return None
        if self._state == _RECORD:
            return self._record_header(buf)
        return self._body(buf)

    def _record_header(self, buf: bytes) -> Event | None:
        rtype, length = _HEADER.unpack(buf)
        self._rtype, self._length = rtype, length
        name = self._name(rtype)
        where = (name, self._record_offset)
        if rtype not in RECORD_NAMES:
            self._fail(*where, "unknown record type")
        if rtype not in (XENOPS, LIBXC, QEMU_TRAD, END_OF_IMAGE):
            self._fail(*where, "not supported by xfer")
        if length < 0:
            self._fail(*where, f"negative length {length}")
        seen = self._seen
        if rtype in seen:
            self._fail(*where, f"a second {name} record")
        if rtype != XENOPS and XENOPS not in seen:
            self._fail(*where, "before the Xenops record")
        if rtype in (QEMU_TRAD, END_OF_IMAGE) and LIBXC not in seen:
            self._fail(*where, "before the Libxc record")
        if rtype == XENOPS:
            if not 0 < length <= METADATA_MAX:
                self._fail(*where, f"length {length} is outside 1..{METADATA_MAX}")
        elif rtype in (LIBXC, END_OF_IMAGE):
            if length:
                self._fail(*where, f"length {length}, expected 0")
        elif length > DEVICE_MODEL_MAX:
            self._fail(*where, f"length {length} exceeds the 16 MiB limit")
        seen.add(rtype)
        if rtype == LIBXC:
            metadata = self.metadata
            assert metadata is not None  # the Xenops record came first
            self._libxc = libxc.StreamReader(metadata.memory_pages, offset=self._offset)
            self._state = _LIBXC
            return None
        if rtype == END_OF_IMAGE:
            self._state = _DONE
            return EndOfImage()
        if length == 0:
            return self._body(b"")
        self._expect(_BODY, length)
        return None

    def _body(self, body: bytes) -> Event:
        where = (self._name(self._rtype), self._record_offset)
        event: Event
        if self._rtype == XENOPS:
            try:
                metadata = VmMetadata.from_json(body)
            except MetadataError as e:
                self._fail(*where, str(e))
            if self.memory_pages is not None and metadata.memory_pages != self.memory_pages:
                self._fail(
                    *where,
                    f"the VM has {metadata.memory_pages} pages of memory, "
                    f"the destination {self.memory_pages}",
                )
            self.metadata = metadata
            event = Xenops(metadata)
        else:
            event = DeviceModel(body)
        self._expect(_RECORD, HEADER_SIZE)
        return event
