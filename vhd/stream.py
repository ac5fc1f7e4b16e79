"""The import parser: a VHD byte stream in, "these bytes belong at virtual offset X" out.

Sans-I/O, like h11: feed it any slicing of the stream and it returns events. It only moves
forward (blocks are visited in ascending physical order, everything between them skipped),
keeps constant memory (metadata only; data events are views of the fed chunks, valid until
the next call) and validates every field before using it.

A fixed VHD carries its footer last, so its data events come before the footer is seen: a
consumer stages what it receives and commits only after :class:`End`.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from vhd import bitmap
from vhd.bat import block_problems, meta_end, parse_bat, table_problems
from vhd.errors import VhdError
from vhd.format import (
    FIXED,
    FOOTER_SIZE,
    HEADER_SIZE,
    MAX_VIRTUAL_SIZE,
    SECTOR,
    UNALLOCATED,
    DynamicHeader,
    Footer,
)


@dataclass(frozen=True)
class Metadata:
    """The image's footer and, for dynamic and differencing images, its header and BAT."""

    footer: Footer
    header: DynamicHeader | None = None
    blocks: int = 0
    """How many blocks the stream carries."""


@dataclass(frozen=True)
class Data:
    """``data`` belongs at virtual ``offset``. A view into the fed chunk: consume it at once."""

    offset: int
    data: memoryview


@dataclass(frozen=True)
class Block:
    """The :class:`Data` events up to the next Block lie in virtual ``offset`` .. +``length``
    (one block of a dynamic or differencing image); ``full`` when every sector of it is present,
    so that a consumer overlaying old content knows whether any of that content shows through."""

    offset: int
    length: int
    full: bool


@dataclass(frozen=True)
class End:
    """The stream is complete and valid; ``footer`` is its trailing footer."""

    footer: Footer


Event = Metadata | Block | Data | End


@dataclass
class _Read:
    size: int
    what: str
    got: bytearray = field(default_factory=bytearray)


@dataclass
class _Skip:
    size: int


@dataclass
class _Pass:
    size: int
    offset: int


@dataclass
class _Tail:
    """Everything up to the end of the stream; the last 512 bytes go back to the logic.

    With ``offset`` set, the bytes before them are data from that virtual offset on.
    """

    offset: int | None
    kept: bytearray = field(default_factory=bytearray)


@dataclass
class _Emit:
    event: Event


_Request = _Read | _Skip | _Pass | _Tail | _Emit


class StreamParser:
    """Parse one VHD stream (fixed, dynamic or differencing) fed in arbitrary pieces."""

    def __init__(self, *, max_size: int = MAX_VIRTUAL_SIZE) -> None:
        self.max_size = max_size
        self.position = 0
        """Stream offset of the next byte to be fed."""
        self._logic = self._parse()
        self._request: _Request | None = None
        self._error: VhdError | None = None
        self._advance(None)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Consume ``data`` and return the events it completes."""
        if self._error is not None:
            raise self._error
        view = memoryview(data).cast("B")
        events: list[Event] = []
        try:
            self._drain(events)
            while view:
                if self._request is None:
                    raise VhdError("data after the end of the image", offset=self.position)
                view = self._consume(view, events)
                self._drain(events)
        except VhdError as e:
            self._error = e
            raise
        return events

    def close(self) -> list[Event]:
        """Signal the end of the stream; returns the last events or raises if incomplete."""
        if self._error is not None:
            raise self._error
        events: list[Event] = []
        request = self._request
        try:
            if isinstance(request, _Tail):
                if len(request.kept) < FOOTER_SIZE:
                    raise VhdError("stream ends early", field="footer", offset=self.position)
                self._advance(bytes(request.kept))
                self._drain(events)
            elif request is not None:
                what = request.what if isinstance(request, _Read) else "image data"
                raise VhdError("stream ends early", field=what, offset=self.position)
        except VhdError as e:
            self._error = e
            raise
        if self._request is not None:
            raise VhdError("stream ends early", offset=self.position)
        return events

    def _advance(self, value: bytes | None) -> None:
        try:
            self._request = self._logic.send(value)
        except StopIteration:
            self._request = None

    def _drain(self, events: list[Event]) -> None:
        """Run requests that need no input: emitted events and empty reads, skips, passes."""
        while True:
            r = self._request
            if isinstance(r, _Emit):
                events.append(r.event)
                self._advance(None)
            elif isinstance(r, _Read) and r.size == 0:
                self._advance(b"")
            elif isinstance(r, _Skip | _Pass) and r.size == 0:
                self._advance(None)
            else:
                return

    def _consume(self, view: memoryview, events: list[Event]) -> memoryview:
        r = self._request
        if isinstance(r, _Tail):
            self._tail(r, view, events)
            self.position += len(view)
            return view[len(view) :]
        assert isinstance(r, _Read | _Skip | _Pass)
        take = min(len(view), r.size - len(r.got) if isinstance(r, _Read) else r.size)
        chunk, rest = view[:take], view[take:]
        self.position += take
        if isinstance(r, _Read):
            r.got += chunk
            if len(r.got) == r.size:
                self._advance(bytes(r.got))
        elif isinstance(r, _Skip):
            r.size -= take
            if r.size == 0:
                self._advance(None)
        else:
            events.append(Data(r.offset, chunk))
            r.offset += take
            r.size -= take
            if r.size == 0:
                self._advance(None)
        return rest

    def _tail(self, r: _Tail, view: memoryview, events: list[Event]) -> None:
        """Keep the last 512 bytes seen; pass (or drop) everything before them."""
        excess = len(r.kept) + len(view) - FOOTER_SIZE
        if excess <= 0:
            r.kept += view
            return
        from_kept = min(len(r.kept), excess)
        from_view = excess - from_kept
        if r.offset is not None:
            if r.offset + excess > self.max_size:
                raise VhdError(
                    f"fixed image data exceeds the limit of {self.max_size} bytes",
                    field="data",
                    offset=self.position,
                )
            if from_kept:
                events.append(Data(r.offset, memoryview(bytes(r.kept[:from_kept]))))
            if from_view:
                events.append(Data(r.offset + from_kept, view[:from_view]))
            r.offset += excess
        del r.kept[:from_kept]
        r.kept += view[from_view:]

    def _parse(self) -> Generator[_Request, bytes | None, None]:
        first = yield _Read(FOOTER_SIZE, "footer copy")
        assert first is not None
        footer = None if Footer.problems(first, 0) else Footer.parse(first, 0)
        if footer is None or footer.disk_type == FIXED:
            yield from self._parse_fixed(first)
        else:
            yield from self._parse_dynamic(footer, first)

    def _parse_fixed(self, first: bytes) -> Generator[_Request, bytes | None, None]:
        yield _Emit(Data(0, memoryview(first)))
        last = yield _Tail(FOOTER_SIZE)
        assert last is not None
        at = self.position - FOOTER_SIZE
        footer = Footer.parse(last, at)
        if footer.disk_type != FIXED:
            raise VhdError(
                f"{footer.type_name} image whose footer copy at offset 0 is damaged: "
                f"{Footer.problems(first, 0)[0]}",
                field="footer.disk_type",
                offset=at + 60,
            )
        if footer.current_size != at:
            raise VhdError(
                f"fixed image carries {at} bytes of data, footer says {footer.current_size}",
                field="footer.current_size",
                offset=at + 48,
            )
        yield _Emit(Metadata(footer))
        yield _Emit(End(footer))

    def _parse_dynamic(
        self, footer: Footer, copy: bytes
    ) -> Generator[_Request, bytes | None, None]:
        size = footer.current_size
        if size > self.max_size:
            raise VhdError(
                f"virtual size {size} exceeds the limit of {self.max_size} bytes",
                field="footer.current_size",
                offset=48,
            )
        at = footer.data_offset
        yield _Skip(at - FOOTER_SIZE)
        raw = yield _Read(HEADER_SIZE, "header")
        assert raw is not None
        header = DynamicHeader.parse(raw, at)
        problems = table_problems(footer, header, None)
        if not problems and header.table_offset < at + HEADER_SIZE:
            problems.append(
                VhdError(
                    "BAT before the header cannot be read in one pass",
                    field="header.table_offset",
                    offset=at + 16,
                )
            )
        if problems:
            raise problems[0]
        yield _Skip(header.table_offset - self.position)
        table = yield _Read(header.max_table_entries * 4, "bat")
        assert table is not None
        bat = parse_bat(table)
        problems = block_problems(bat, header, meta_end(footer, header), None)
        if problems:
            raise problems[0]
        blocks = np.flatnonzero(bat != UNALLOCATED)
        order = blocks[np.argsort(bat[blocks], kind="stable")]
        yield _Emit(Metadata(footer, header, int(order.size)))
        bs, bitmap_size = header.block_size, header.bitmap_size
        sectors = bs // SECTOR
        for b in order.tolist():
            yield _Skip(int(bat[b]) * SECTOR - self.position)
            bits = yield _Read(bitmap_size, f"bitmap of block {b}")
            assert bits is not None
            start = b * bs
            valid = max(0, min(bs, size - start))
            present_runs = bitmap.runs(bits, 0, sectors)
            whole = -(-valid // SECTOR)
            full = bool(whole) and all(p for r, n, p in present_runs if r < whole)
            yield _Emit(Block(start, valid, full))
            for run, n, present in present_runs:
                lo, hi = run * SECTOR, (run + n) * SECTOR
                inside = max(0, min(hi, valid) - lo)
                if present and inside:
                    yield _Pass(inside, start + lo)
                    yield _Skip(hi - lo - inside)
                else:
                    yield _Skip(hi - lo)
        # the footer usually follows the last block: then the stream ends there, known before
        # the connection closes; otherwise (padding) it is the last 512 bytes of the stream
        last = yield _Read(FOOTER_SIZE, "footer")
        assert last is not None
        if last != copy:
            last = yield _Tail(None, bytearray(last))
            assert last is not None
        trailing = Footer.parse(last, self.position - FOOTER_SIZE)
        if last != copy:
            raise VhdError(
                "trailing footer differs from the copy at offset 0",
                field="footer",
                offset=self.position - FOOTER_SIZE,
            )
        yield _Emit(End(trailing))
