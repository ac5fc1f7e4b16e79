"""The bodies an import takes, decoded as they arrive and written into a staged image.

Three bodies, one interface: raw bytes (written from offset 0), xapi's ``chunked=true``
framing (:mod:`migrate.formats.chunked`: offset/length chunks) and a VHD stream
(:class:`vhd.StreamParser`). Their data events are views of the fed buffers, written at their
virtual offsets into a :class:`~migrate.storage.staging.StagedImage`. Nothing of the VDI changes
here: the caller commits the staged image once :meth:`Importer.close` has validated the end
of the body.
"""

from __future__ import annotations

from typing import Protocol

import vhd
from migrate.formats import chunked
from migrate.storage.staging import StagedImage, StagingError
from vhd.format import MAX_VIRTUAL_SIZE


class Importer(Protocol):
    """A body decoder writing into a staged image."""

    done: bool
    """Whether the body's own end was seen (a VHD's footer, the end marker): what follows
    is not read (xapi stops there too, and Xen Orchestra cuts the connection there when it
    declared a length it could not know)."""

    def feed(self, data: memoryview) -> None:
        """Decode and write the next body bytes."""
        ...

    def close(self) -> int | None:
        """Check the body ended where it may; the virtual size it defines (None: the size
        follows the bytes written)."""
        ...


class RawImporter:
    """A raw body: its bytes in order from virtual offset 0."""

    done = False  # a raw body ends with its bytes

    def __init__(self, staged: StagedImage) -> None:
        self.staged = staged
        self.position = 0

    def feed(self, data: memoryview) -> None:
        """Write ``data`` next."""
        self.staged.write(self.position, data)
        self.position += len(data)

    def close(self) -> int | None:
        """Nothing to check: any length up to the disk's size is whole."""
        return None


class ChunkedImporter:
    """xapi's ``chunked=true`` body: offset/length chunks, then an end marker."""

    def __init__(self, staged: StagedImage) -> None:
        self.staged = staged
        # the staged image refuses what lies past the disk (413), not the framing (400)
        self.parser = chunked.ChunkParser(size_limit=MAX_VIRTUAL_SIZE)
        self.done = False

    def feed(self, data: memoryview) -> None:
        """Decode ``data`` and write the chunks' bytes."""
        for event in self.parser.feed(data):
            if isinstance(event, chunked.Data):
                self.staged.write(event.offset, event.data)
            else:
                self.done = True

    def close(self) -> int | None:
        """ChunkError unless the end marker came."""
        self.parser.close()
        return None


class VhdImporter:
    """A VHD stream (fixed, dynamic or differencing): its present sectors at their offsets."""

    def __init__(self, staged: StagedImage) -> None:
        self.staged = staged
        self.parser = vhd.StreamParser()  # the disk's own limit checked at Metadata (413)
        self.size: int | None = None
        self.done = False

    def feed(self, data: memoryview) -> None:
        """Decode ``data`` and write the image's data."""
        for event in self.parser.feed(data):
            self._apply(event)

    def _apply(self, event: vhd.stream.Event) -> None:
        if isinstance(event, vhd.Data):
            self.staged.write(event.offset, event.data)
        elif isinstance(event, vhd.Block):
            self.staged.announce(event.offset, event.length, event.full)
        elif isinstance(event, vhd.Metadata):
            size = event.footer.current_size
            if size > self.staged.limit:
                raise StagingError(
                    f"the image's virtual size {size} is larger than the disk's "
                    f"{self.staged.limit} bytes"
                )
            self.size = size
        elif isinstance(event, vhd.End):
            self.done = True

    def close(self) -> int | None:
        """VhdError unless the stream ended with its footer; the image's virtual size."""
        for event in self.parser.close():
            self._apply(event)
        return self.size


def importer(fmt: str, framed: bool, staged: StagedImage) -> Importer:
    """The decoder for a body of format ``fmt`` (raw or vhd), in xapi's chunked framing
    (``framed``) or not."""
    if framed:
        return ChunkedImporter(staged)
    if fmt == "vhd":
        return VhdImporter(staged)
    return RawImporter(staged)
