"""A suspend image file (what ``xfer vm save`` writes): checked whole without its page data
(:func:`check_image`, how ``xfer vm save`` knows the image it got is complete), or read back
whole (:func:`read_saved_vm`): the VM's metadata, its RAM as it was at the save, and its CPU
state, so that the demo and the tests look into the guest's memory (its workload's ledger)
without running it.

The image is checked by :class:`migrate.formats.suspend.ImageReader` as a host checks it;
the RAM is an anonymous mapping (untouched pages cost nothing) with the page data read
straight into it.
"""

from __future__ import annotations

import io
import mmap
import os
from dataclasses import dataclass

from migrate.formats import libxc
from migrate.formats.suspend import ImageReader, Xenops
from migrate.formats.xenops import VmMetadata

PAGE_SIZE = libxc.PAGE_SIZE


@dataclass(frozen=True, eq=False)
class SavedVm:
    """A VM as its image holds it."""

    metadata: VmMetadata
    memory: mmap.mmap
    """The guest's RAM, ``metadata.memory`` bytes."""
    cpu_state: bytes
    """The HVM context record: the guest's register area."""


def check_image(fd: int, name: str) -> VmMetadata:
    """The metadata of the image ``fd`` holds from its start, every record checked but the
    page data skipped; :class:`~migrate.formats.libxc.StreamError` naming the record, offset
    and problem when it is not valid or ends early, ValueError if more follows its end."""
    reader = ImageReader()
    offset = 0
    size = os.fstat(fd).st_size
    while (n := reader.need()) > 0:
        data = os.pread(fd, n, offset)
        if not data:
            reader.end_of_input()  # raises: the image ends before End_of_image
        offset += len(data)
        if isinstance(reader.feed(data), libxc.Pages):
            offset += reader.payload()
            if offset > size:
                raise ValueError(f"{name}: the image ends at offset {size}, inside page data")
            reader.payload_done()
    if offset < size:
        raise ValueError(f"{name}: bytes follow the image's End_of_image at offset {offset}")
    assert reader.metadata is not None  # the reader insists on the Xenops record
    return reader.metadata


def read_saved_vm(path: str) -> SavedVm:
    """The VM in the image at ``path``; :class:`~migrate.formats.libxc.StreamError` (a
    ValueError) naming the record, offset and problem when the image is not valid or cut."""
    reader = ImageReader()
    memory: mmap.mmap | None = None
    cpu_state = b""
    with open(path, "rb", buffering=0) as f:
        while (n := reader.need()) > 0:
            data = f.read(n)
            if not data:
                reader.end_of_input()  # raises: the image ends before End_of_image
            event = reader.feed(data)
            if isinstance(event, Xenops):
                memory = _ram(event.metadata.memory, path)
            elif isinstance(event, libxc.Pages):
                assert memory is not None  # the reader checked the Xenops record came first
                view = memoryview(memory)
                for start, end in event.zero_runs.tolist():
                    view[start * PAGE_SIZE : end * PAGE_SIZE] = bytes((end - start) * PAGE_SIZE)
                for start, end in event.runs.tolist():
                    _read_exactly(f, view[start * PAGE_SIZE : end * PAGE_SIZE], path)
                view.release()
                reader.payload_done()
            elif isinstance(event, libxc.HvmContext):
                cpu_state = event.data
    assert reader.metadata is not None and memory is not None
    return SavedVm(reader.metadata, memory, cpu_state)


def _ram(size: int, path: str) -> mmap.mmap:
    """An anonymous mapping of ``size`` zero bytes; ValueError naming the image if the
    system cannot give it."""
    try:
        return mmap.mmap(-1, size)
    except OSError as e:
        raise ValueError(f"{path}: cannot map the guest's {size} bytes of RAM: {e}") from None


def _read_exactly(f: io.FileIO, view: memoryview, path: str) -> None:
    """Fill ``view`` from the file ``f``; ValueError if the file ends first."""
    have = 0
    while have < len(view):
        n = f.readinto(view[have:])
        if not n:
            raise ValueError(f"{path}: the image ends inside its page data")
        have += n
