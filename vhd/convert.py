"""Conversions between raw files and VHD images: the source's format decided (a damaged VHD is
never taken for a raw disk), which blocks a VHD holds chosen, then planned and executed."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import numpy as np

from vhd.compare import differing_content
from vhd.disk import Disk, RawDisk
from vhd.errors import VhdError
from vhd.file import File
from vhd.format import (
    DEFAULT_BLOCK_SIZE,
    FOOTER_COOKIE,
    FOOTER_SIZE,
    HEADER_COOKIE,
    SECTOR,
    Footer,
    trailing_footer_offset,
)
from vhd.image import Image
from vhd.plan import (
    ParentRef,
    Plan,
    allocated_blocks,
    differing_blocks,
    parent_name,
    plan_raw,
    plan_vhd,
)
from vhd.transport import write_plan

FORMATS = ("raw", "vhd")


def _vhd_signs(path: str) -> tuple[bool, VhdError | None]:
    """Whether a valid VHD footer ends or starts the file at ``path``; if not, the first VHD
    structure it still shows where a VHD has one (a footer cookie whose footer is damaged, a
    dynamic header cookie at 512), as the error found there."""
    with File(path) as f:
        places = dict.fromkeys([trailing_footer_offset(f.size), 0] if f.size >= FOOTER_SIZE else [])
        footers = [(at, f.pread(FOOTER_SIZE, at)) for at in places]
        if any(not Footer.problems(raw, at) for at, raw in footers):
            return True, None
        for at, raw in footers:
            if raw[:8] == FOOTER_COOKIE:
                return False, Footer.problems(raw, at)[0]
        if f.size < FOOTER_SIZE and os.pread(f.fd, 8, 0) == FOOTER_COOKIE:
            too_short = f"file of {f.size} bytes is too short for a footer"
            return False, VhdError(too_short, field="footer", offset=0)
        if os.pread(f.fd, 8, SECTOR) == HEADER_COOKIE:
            return False, VhdError(
                "a dynamic header but no valid footer", field="header.cookie", offset=SECTOR
            )
    return False, None


def probe(path: str) -> str:
    """The format of ``path`` by its content: ``vhd`` when a valid footer ends or starts it,
    ``raw`` when nothing in it looks like a VHD.

    A file that shows VHD structures without a valid footer is a VhdError, not a raw disk:
    a guess must never read a damaged VHD as raw data (the risk qemu-img warns of when its
    probing falls back to raw).
    """
    valid, sign = _vhd_signs(path)
    if sign is not None:
        raise VhdError(
            f"looks like a damaged VHD ({sign.message}); "
            "pass --from raw to read it as a raw disk anyway",
            field=sign.field,
            offset=sign.offset,
            path=path,
        )
    return "vhd" if valid else "raw"


def source_format(path: str, declared: str | None = None) -> str:
    """How to read the source ``path``: as ``declared`` when given, as a VHD when its name
    ends in ``.vhd``, else as :func:`probe` finds."""
    if declared is not None:
        if declared not in FORMATS:
            raise VhdError(f"unknown source format {declared!r}: expected raw or vhd")
        return declared
    if path.lower().endswith(".vhd"):
        return "vhd"
    return probe(path)


@contextmanager
def open_disk(path: str, fmt: str | None = None) -> Iterator[Disk]:
    """Open ``path`` as a disk: a VHD with its chain, or a raw file (``fmt`` None: as
    :func:`source_format` decides)."""
    disk: Image | RawDisk = (
        Image.open(path) if source_format(path, fmt) == "vhd" else RawDisk.open(path)
    )
    try:
        yield disk
    finally:
        disk.close()


def delta_blocks(disk: Disk, base: Disk, block_size: int = DEFAULT_BLOCK_SIZE) -> np.ndarray:
    """The blocks a delta of ``disk`` over ``base`` must hold.

    When the two share chain members (a VDI and its snapshot), metadata decides, as vhd-tool
    does: every block allocated in a member only one side has (nothing is read). Otherwise
    (a raw disk, an unrelated chain) nothing proves a block shared: the blocks allocated on
    either side are read and only those whose content differs are kept.
    """
    mine, theirs = disk.layers(block_size), base.layers(block_size)
    if {key for key, _ in mine} & {key for key, _ in theirs}:
        return differing_blocks(disk, base, block_size)
    candidates = np.union1d(allocated_blocks(disk, block_size), allocated_blocks(base, block_size))
    return differing_content(disk, base, candidates, block_size)


def vhd_export_plan(disk: Disk, *, base: Image | None = None, name: str | None = None) -> Plan:
    """The one-pass VHD of ``disk``; relative to ``base``, a differencing VHD naming it ``name``
    and holding the blocks :func:`delta_blocks` finds.

    A raw disk's blocks are read first so that all-zero ones are left out.
    """
    if base is None:
        blocks = allocated_blocks(disk)
        if isinstance(disk, RawDisk):
            blocks = differing_content(disk, None, blocks)
        return plan_vhd(disk, blocks)
    if base.size != disk.size:
        raise VhdError(f"base is {base.size} bytes, disk is {disk.size}: sizes must match")
    ref = ParentRef.of(base.footer, base.file.mtime, name or os.path.basename(base.path))
    return plan_vhd(disk, delta_blocks(disk, base), parent=ref)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def write_output(plan: Plan, dst: str) -> int:
    """Execute ``plan`` into ``dst``: stdout for ``-``, an existing device or FIFO in place, and
    a regular file through a temporary file renamed over ``dst`` only once complete."""
    if dst == "-":
        return write_plan(plan, 1)
    if os.path.exists(dst) and not os.path.isfile(dst):
        fd = os.open(dst, os.O_WRONLY | os.O_CLOEXEC)
        try:
            return write_plan(plan, fd)
        finally:
            os.close(fd)
    folder, name = os.path.split(os.path.abspath(dst))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
    except OSError as e:
        raise VhdError(f"cannot create a file in {folder}: {e.strerror}", path=dst) from None
    try:
        written = write_plan(plan, fd)
        os.fchmod(fd, 0o644)
        os.replace(tmp, dst)
        return written
    except BaseException:
        os.unlink(tmp)
        raise
    finally:
        os.close(fd)


def convert(
    src: str,
    dst: str,
    to: str,
    *,
    base: str | None = None,
    src_format: str | None = None,
) -> int:
    """Convert ``src`` into ``dst`` (``-`` for stdout) as ``raw`` or ``vhd``; returns bytes written.

    ``src`` is read as ``src_format`` (raw or vhd; None: :func:`source_format` decides). With
    ``base`` (a VHD), ``dst`` is a differencing VHD of ``src`` whose parent is ``base``.
    ``dst`` is replaced only when the conversion succeeded.
    """
    if to not in FORMATS:
        raise VhdError(f"unknown output format {to!r}: expected raw or vhd")
    if base is not None and to != "vhd":
        raise VhdError("--base needs a VHD output")
    for other in (src, base):
        if other is not None and dst != "-" and _same_file(other, dst):
            raise VhdError(f"{dst} is also an input", path=dst)
    with ExitStack() as stack:
        disk = stack.enter_context(open_disk(src, src_format))
        if to == "raw":
            plan = plan_raw(disk)
        else:
            base_image = None
            if base is not None:
                if _vhd_signs(base) == (False, None):  # nothing of a VHD in it
                    raise VhdError("the base of a differencing VHD must itself be a VHD", path=base)
                base_image = stack.enter_context(Image.open(base))  # a damaged one says how
            name = parent_name(dst, base) if base is not None and dst != "-" else None
            plan = vhd_export_plan(disk, base=base_image, name=name)
        return write_output(plan, dst)
