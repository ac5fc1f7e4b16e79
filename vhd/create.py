"""Creating empty fixed, dynamic and differencing images."""

from __future__ import annotations

import os
import uuid as uuidlib

import numpy as np

from vhd.disk import RawDisk
from vhd.errors import VhdError
from vhd.format import DEFAULT_BLOCK_SIZE, MAX_VIRTUAL_SIZE, SECTOR
from vhd.image import Image
from vhd.plan import ParentRef, Plan, parent_name, plan_fixed, plan_vhd
from vhd.transport import write_plan

NO_BLOCKS = np.zeros(0, dtype=np.int64)


def _write_new(path: str, plan: Plan) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise VhdError(e.strerror or str(e), path=path) from e
    try:
        write_plan(plan, fd)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)


def _check_size(size: int) -> None:
    if not 0 < size <= MAX_VIRTUAL_SIZE:
        raise VhdError(f"size {size} is outside 1 byte .. 2040 GiB")
    if size % SECTOR:
        raise VhdError(f"size {size} is not a multiple of {SECTOR}")


def create(
    path: str,
    size: int,
    *,
    fixed: bool = False,
    block_size: int = DEFAULT_BLOCK_SIZE,
    uuid: uuidlib.UUID | None = None,
) -> None:
    """Create a new empty image of ``size`` bytes: dynamic (sparse) by default, or fixed."""
    _check_size(size)
    empty = RawDisk(None, size)
    if fixed:
        _write_new(path, plan_fixed(empty, uuid=uuid))
    else:
        _write_new(path, plan_vhd(empty, NO_BLOCKS, block_size=block_size, uuid=uuid))


def create_differencing(path: str, parent: str, *, uuid: uuidlib.UUID | None = None) -> None:
    """Create an empty differencing image over ``parent`` (named relative to ``path``)."""
    with Image.open(parent) as p:
        ref = ParentRef.of(p.footer, p.file.mtime, parent_name(path, parent))
        block_size = p.header.block_size if p.header else DEFAULT_BLOCK_SIZE
        empty = RawDisk(None, p.size)
        _write_new(path, plan_vhd(empty, NO_BLOCKS, parent=ref, block_size=block_size, uuid=uuid))
