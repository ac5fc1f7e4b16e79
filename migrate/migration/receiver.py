"""The destination's side of a memory image: a suspend image read off a migration connection
into a new domain, created paused when the VM's metadata arrives, before the first page.

The reader of :mod:`migrate.formats.suspend` says how many bytes it needs next, never more:
headers and small records are read into a small buffer, page data straight into the domain's
memory (:class:`~migrate.migration.pages.PageReceiver`). Every check of the stream (record
sizes and order, pfns within the guest's memory) is the reader's; a bad image is a
StreamError naming the record and its offset.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from migrate.formats import libxc, suspend
from migrate.formats.libxc import StreamError
from migrate.formats.xenops import VmMetadata
from migrate.guest.hypervisor import Domain
from migrate.migration.channel import Channel, ChannelError
from migrate.migration.pages import PageReceiver

SCRATCH = 1 << 20
"""Bytes of the buffer headers and small records are read into."""


class ImageError(Exception):
    """The image could not be received: malformed, or its connection failed."""


class MemoryReceiver:
    """Reads one suspend image from ``channel``; ``create(metadata)`` makes the paused domain
    (``memory_pages``, when given, is what the image's VM must have). :attr:`domain` is the
    domain once made, for the caller to destroy on failure."""

    def __init__(
        self,
        channel: Channel,
        create: Callable[[VmMetadata], Awaitable[Domain]],
        memory_pages: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.channel = channel
        self.create = create
        self.reader = suspend.ImageReader(memory_pages)
        self.domain: Domain | None = None
        self.metadata: VmMetadata | None = None
        self.progress = progress

    async def receive(self) -> tuple[Domain, VmMetadata]:
        """Receive the whole image; the domain (paused, its memory and CPU state loaded) and
        the VM's metadata. ImageError (or the create callback's error) on failure."""
        reader, channel = self.reader, self.channel
        scratch = memoryview(bytearray(SCRATCH))
        pages: PageReceiver | None = None
        try:
            while (n := reader.need()) > 0:
                got = await channel.recv_into(scratch[:n])
                event = reader.feed(scratch[:got])
                if event is None:
                    continue
                if isinstance(event, suspend.Xenops):
                    self.metadata = event.metadata
                    self.domain = await self.create(event.metadata)
                    pages = PageReceiver(self.domain.memory, channel)
                elif isinstance(event, libxc.Pages):
                    assert pages is not None  # the reader wants the Xenops record first
                    await pages.receive(event)
                    reader.payload_done()
                    if self.progress is not None:
                        self.progress(channel.received)
                elif isinstance(event, libxc.HvmContext):
                    assert self.domain is not None
                    self.domain.set_cpu_state(event.data)
        except ChannelError as e:
            raise ImageError(f"memory image cut at offset {reader.offset}: {e}") from None
        except StreamError as e:
            raise ImageError(f"bad memory image: {e}") from None
        finally:
            if pages is not None:
                pages.release()
        assert self.domain is not None and self.metadata is not None
        return self.domain, self.metadata
