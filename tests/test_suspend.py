"""migrate.formats.suspend: the XenSavedDomv2 image around the libxc stream, and its refusals."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from migrate.formats import libxc, suspend
from migrate.formats.libxc import PAGE_SIZE, Pages, StreamError
from migrate.formats.suspend import (
    SIGNATURE,
    DeviceModel,
    EndOfImage,
    Event,
    ImageReader,
    Xenops,
    device_model_record,
    end_of_image,
    libxc_header,
    xenops_record,
)
from migrate.formats.xenops import Vbd, VmMetadata

VM = "0b1f5e4c-3f6a-4d8e-9c2b-7a1d2e3f4a5b"
PAGES = 16
METADATA = VmMetadata(
    VM,
    "vm",
    PAGES * PAGE_SIZE,
    1,
    "ledger",
    (Vbd("xvda", VM, VM),),
)
CONTEXT = b"registers"


def page(n: int) -> bytes:
    return bytes([n + 1]) * PAGE_SIZE


def libxc_stream(pfns: list[int] | None = None) -> bytes:
    pfns = [0, 1, 2, 5] if pfns is None else pfns
    zero = np.array([p == 2 for p in pfns], dtype=bool)
    header = libxc.page_data_header(np.array(pfns, dtype=np.uint64), zero)
    data = b"".join(page(p) for p, z in zip(pfns, zero, strict=True) if not z)
    return (
        libxc.image_header()
        + libxc.domain_header()
        + libxc.static_data_end()
        + header
        + data
        + libxc.hvm_params([(1, 2)])
        + libxc.hvm_context(CONTEXT)
        + libxc.end()
    )


def image(
    *,
    xenops: bytes | None = None,
    stream: bytes | None = None,
    device_model: bytes | None = b"qemu state",
    tail: bytes | None = None,
) -> bytes:
    return (
        SIGNATURE
        + (xenops_record(METADATA) if xenops is None else xenops)
        + libxc_header()
        + (libxc_stream() if stream is None else stream)
        + (device_model_record(device_model) if device_model is not None else b"")
        + (end_of_image() if tail is None else tail)
    )


def read_image(
    data: bytes, memory_pages: int | None = None, piece: int | None = None
) -> tuple[list[Event], bytearray]:
    """Drive an ImageReader as the receiver would: one loop for the whole image."""
    reader = ImageReader(memory_pages)
    events: list[Event] = []
    memory = bytearray()
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
        if isinstance(event, Xenops):
            memory = bytearray(event.metadata.memory)
        if isinstance(event, Pages):
            for start, stop in event.runs:
                size = (stop - start) * PAGE_SIZE
                if pos + size > len(data):
                    reader.end_of_input()
                memory[start * PAGE_SIZE : stop * PAGE_SIZE] = data[pos : pos + size]
                pos += size
            reader.payload_done()
            assert reader.offset == pos
    reader.feed(data[pos:])  # anything after the end is refused
    assert reader.done
    reader.end_of_input()
    return events, memory


def test_writers_byte_for_byte() -> None:
    assert SIGNATURE == b"XenSavedDomv2-\n" and len(SIGNATURE) == 15
    assert libxc_header() == struct.pack("<qq", 0xF0, 0)
    assert end_of_image() == struct.pack("<qq", 0xFFFF, 0)
    assert device_model_record(b"abc") == struct.pack("<qq", 0x0F00, 3) + b"abc"
    body = METADATA.to_json()
    assert xenops_record(METADATA) == struct.pack("<qq", 0x0F, len(body)) + body
    with pytest.raises(ValueError, match="16777216"):
        device_model_record(bytes((16 << 20) + 1))


@pytest.mark.parametrize("piece", [None, 1, 7, 4096])
@pytest.mark.parametrize("memory_pages", [None, PAGES])
def test_round_trip(piece: int | None, memory_pages: int | None) -> None:
    events, memory = read_image(image(), memory_pages, piece)
    assert events[0] == Xenops(METADATA)
    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "Xenops",
        "ImageHeader",
        "DomainHeader",
        "StaticDataEnd",
        "Pages",
        "HvmParams",
        "HvmContext",
        "End",
        "DeviceModel",
        "EndOfImage",
    ]
    assert events[-2] == DeviceModel(b"qemu state")
    assert events[-1] == EndOfImage()
    assert memory[: 2 * PAGE_SIZE] == page(0) + page(1)
    assert memory[2 * PAGE_SIZE : 3 * PAGE_SIZE] == bytes(PAGE_SIZE)
    assert memory[5 * PAGE_SIZE : 6 * PAGE_SIZE] == page(5)


def test_without_device_model_and_empty_device_model() -> None:
    events, _ = read_image(image(device_model=None))
    assert not any(isinstance(e, DeviceModel) for e in events)
    events, _ = read_image(image(device_model=b""))
    assert DeviceModel(b"") in events


def test_libxc_errors_carry_image_offsets() -> None:
    stream_at = len(SIGNATURE) + len(xenops_record(METADATA)) + 16
    bad = libxc_stream([0, PAGES])  # pfn 16 is beyond 16 pages
    with pytest.raises(StreamError) as e:
        read_image(image(stream=bad))
    page_data_at = stream_at + 24 + 16 + 8
    assert (e.value.record, e.value.offset) == ("PAGE_DATA", page_data_at)
    assert "entry 1: pfn 0x10 is beyond the guest's 16 pages" in str(e.value)


def test_memory_size_mismatch() -> None:
    with pytest.raises(StreamError, match="the VM has 16 pages of memory, the destination 32"):
        read_image(image(), memory_pages=32)


def header(rtype: int, length: int) -> bytes:
    return struct.pack("<qq", rtype, length)


XENOPS_AT = len(SIGNATURE)
LIBXC_AT = XENOPS_AT + len(xenops_record(METADATA))
AFTER_LIBXC = LIBXC_AT + 16 + len(libxc_stream())


@pytest.mark.parametrize(
    ("data", "record", "offset", "message"),
    [
        (b"XenSavedDomain\n" + image()[15:], "signature", 0, "is not"),
        (image(xenops=header(0x0F, 0)), "Xenops", XENOPS_AT, "length 0 is outside"),
        (
            image(xenops=header(0x0F, (1 << 20) + 1)),
            "Xenops",
            XENOPS_AT,
            "length 1048577 is outside 1..1048576",
        ),
        (image(xenops=header(0x0F, -1)), "Xenops", XENOPS_AT, "negative length -1"),
        (image(xenops=header(0x0F, 2) + b"{}"), "Xenops", XENOPS_AT, "lacks uuid"),
        (image(xenops=header(0x0F, 1) + b"\xff"), "Xenops", XENOPS_AT, "not JSON"),
        (SIGNATURE + libxc_header(), "Libxc", XENOPS_AT, "before the Xenops record"),
        (SIGNATURE + end_of_image(), "End_of_image", XENOPS_AT, "before the Xenops"),
        (
            SIGNATURE + xenops_record(METADATA) + xenops_record(METADATA),
            "Xenops",
            LIBXC_AT,
            "a second Xenops record",
        ),
        (
            SIGNATURE + xenops_record(METADATA) + end_of_image(),
            "End_of_image",
            LIBXC_AT,
            "before the Libxc record",
        ),
        (
            SIGNATURE + xenops_record(METADATA) + device_model_record(b"x"),
            "Qemu_trad",
            LIBXC_AT,
            "before the Libxc record",
        ),
        (
            SIGNATURE + xenops_record(METADATA) + header(0xF0, 8),
            "Libxc",
            LIBXC_AT,
            "length 8, expected 0",
        ),
        (
            image(device_model=None, tail=libxc_header()),
            "Libxc",
            AFTER_LIBXC,
            "a second Libxc record",
        ),
        (
            image(tail=device_model_record(b"y")),
            "Qemu_trad",
            AFTER_LIBXC + 16 + 10,
            "a second Qemu_trad record",
        ),
        (image(device_model=None, tail=header(0xFFFF, 1)), "End_of_image", AFTER_LIBXC, "length 1"),
        (
            image(device_model=None, tail=header(0x0F00, (16 << 20) + 1)),
            "Qemu_trad",
            AFTER_LIBXC,
            "exceeds the 16 MiB limit",
        ),
        (image(device_model=None, tail=header(0x0F10, 0)), "Demu", AFTER_LIBXC, "not supported"),
        (
            image(device_model=None, tail=header(0x0F11, 0)),
            "Varstored",
            AFTER_LIBXC,
            "not supported",
        ),
        (
            image(device_model=None, tail=header(0x1234, 0)),
            "record type 0x1234",
            AFTER_LIBXC,
            "unknown record type",
        ),
        (
            image(device_model=None, tail=header(-1, 0)),
            "record type -0x1",
            AFTER_LIBXC,
            "unknown record type",
        ),
        (image() + b"\x00", "End_of_image", len(image()) - 16, "1 bytes follow"),
    ],
)
def test_refusals(data: bytes, record: str, offset: int, message: str) -> None:
    for piece in (None, 1):
        with pytest.raises(StreamError) as e:
            read_image(data, piece=piece)
        assert (e.value.record, e.value.offset) == (record, offset), str(e.value)
        assert message in str(e.value)


def test_truncation_at_every_byte() -> None:
    small = image(stream=libxc_stream([0, 2]), device_model=b"dm")
    read_image(small)
    for cut in range(len(small)):
        with pytest.raises(StreamError) as e:
            read_image(small[:cut])
        assert "ends" in str(e.value), str(e.value)
        assert e.value.offset <= cut


def test_truncation_messages() -> None:
    with pytest.raises(
        StreamError, match="signature at stream offset 0: the image ends at offset 3"
    ):
        read_image(SIGNATURE[:3])
    with pytest.raises(StreamError, match=f"image at stream offset {LIBXC_AT}: ends before"):
        read_image(SIGNATURE + xenops_record(METADATA))
    with pytest.raises(StreamError, match=f"Xenops at stream offset {XENOPS_AT}: .* its body"):
        read_image(SIGNATURE + xenops_record(METADATA)[:20])
    with pytest.raises(StreamError, match=f"record at stream offset {LIBXC_AT}: .*record header"):
        read_image(SIGNATURE + xenops_record(METADATA) + b"\xf0")


def test_reader_usage() -> None:
    reader = ImageReader()
    with pytest.raises(RuntimeError, match="not inside the libxc stream"):
        reader.payload()
    with pytest.raises(RuntimeError, match="at most 15"):
        reader.feed(bytes(16))
    with pytest.raises(ValueError, match="positive"):
        ImageReader(0)
    assert suspend.RECORD_NAMES[0x0F00] == "Qemu_trad"


@pytest.mark.parametrize("bad", ["xenops", "libxc"])
def test_a_refusal_stays(bad: str) -> None:
    data = (
        image(xenops=struct.pack("<qq", 0x0F, 2) + b"{}")
        if bad == "xenops"
        else image(stream=libxc_stream([0, PAGES]))
    )
    reader = ImageReader()
    pos = 0
    with pytest.raises(StreamError) as first:
        while True:
            n = reader.need()
            event = reader.feed(data[pos : pos + n])
            pos += n
            if isinstance(event, Pages):
                pos += reader.payload()
                reader.payload_done()
    for call in (reader.need, reader.end_of_input, lambda: reader.feed(b"x")):
        with pytest.raises(StreamError) as again:
            call()
        assert again.value is first.value
