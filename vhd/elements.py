"""Plan elements: literal bytes, a copy of N bytes of a file at an offset, or N zero bytes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from vhd.file import File


@dataclass(frozen=True, slots=True)
class Literal:
    """Bytes given in the plan itself (headers, tables, bitmaps)."""

    data: bytes

    @property
    def length(self) -> int:
        """Number of bytes."""
        return len(self.data)


@dataclass(frozen=True, slots=True)
class Copy:
    """``length`` bytes of ``file`` starting at ``offset``."""

    file: File
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Zeros:
    """``length`` zero bytes."""

    length: int


Element = Literal | Copy | Zeros


def coalesce(elements: Iterable[Element]) -> Iterator[Element]:
    """Merge adjacent zeros and copies that continue each other in the same file."""
    pending: Element | None = None
    for e in elements:
        if e.length == 0:
            continue
        if isinstance(pending, Zeros) and isinstance(e, Zeros):
            pending = Zeros(pending.length + e.length)
        elif (
            isinstance(pending, Copy)
            and isinstance(e, Copy)
            and e.file is pending.file
            and e.offset == pending.offset + pending.length
        ):
            pending = Copy(pending.file, pending.offset, pending.length + e.length)
        else:
            if pending is not None:
                yield pending
            pending = e
    if pending is not None:
        yield pending
