"""Structural validation of an image file that reports every problem found, not the first."""

from __future__ import annotations

import numpy as np

from vhd.bat import block_problems, meta_end, parse_bat, table_problems
from vhd.errors import VhdError
from vhd.file import File
from vhd.format import (
    DIFFERENCING,
    FIXED,
    FOOTER_SIZE,
    HEADER_SIZE,
    SECTOR,
    UNALLOCATED,
    DynamicHeader,
    Footer,
    batmap_at,
    trailing_footer_offset,
)
from vhd.image import Image

Problem = VhdError
"""A problem is reported as the error it would raise: message, field, offset."""


def check(path: str) -> list[Problem]:
    """Every structural problem of the image at ``path`` (and its parent chain); [] if clean.

    Checks cookies, checksums, versions, sizes against the 2040 GiB limit, the footer copy,
    the header, the BAT's place and each entry (inside the file, not overlapping), parent
    locators and the parent chain. A file that cannot be opened raises VhdError.
    """
    with File(path) as file:
        return [p.at(path) for p in _check(file)]


def _check(file: File) -> list[Problem]:
    if file.size < FOOTER_SIZE:
        return [VhdError(f"file of {file.size} bytes is too short for a footer", field="footer")]
    end = trailing_footer_offset(file.size)
    trailing = file.pread(FOOTER_SIZE, end)
    problems = Footer.problems(trailing, end)
    footer = None if problems else Footer.parse(trailing, end)
    if footer is not None and footer.disk_type == FIXED:
        if footer.current_size > end:
            problems.append(
                VhdError(
                    f"fixed image holds {end} bytes of data, footer says {footer.current_size}",
                    field="footer.current_size",
                    offset=end + 48,
                )
            )
        return problems
    copy = file.pread(FOOTER_SIZE, 0)
    copy_problems = Footer.problems(copy, 0)
    problems += copy_problems
    limit, footer_at = (end, end) if footer is not None else (file.size, 0)
    if footer is None:
        if copy_problems:
            return problems
        footer = Footer.parse(copy, 0)
    elif not copy_problems and copy != trailing:
        problems.append(VhdError("differs from the trailing footer", field="footer copy", offset=0))
    problems += _check_dynamic(file, footer, footer_at, limit)
    if not problems and footer.disk_type == DIFFERENCING:
        try:
            Image.open(file.path).close()
        except VhdError as e:
            problems.append(e)
    return problems


def _check_dynamic(file: File, footer: Footer, footer_at: int, limit: int) -> list[Problem]:
    at = footer.data_offset
    if at + HEADER_SIZE > limit:
        return [
            VhdError(
                f"dynamic header at {at} lies past the end of the image",
                field="footer.data_offset",
                offset=footer_at + 16,
            )
        ]
    raw = file.pread(HEADER_SIZE, at)
    problems = DynamicHeader.problems(raw, at)
    if problems:
        return problems
    header = DynamicHeader.parse(raw, at)
    problems = table_problems(footer, header, limit)
    if problems:
        return problems
    bat = parse_bat(file.pread(header.max_table_entries * 4, header.table_offset, field="bat"))
    first_block = meta_end(footer, header)
    if footer.creator_app == b"tap\0" and footer.creator_version >= 0x00010002:
        batmap = batmap_at(file.pread(SECTOR, header.table_offset + header.table_size))
        if batmap is not None:
            first_block = max(first_block, batmap[0] + batmap[1])
    problems += block_problems(bat, header, first_block, limit)
    problems += _check_locators(file, header, bat, limit)
    return problems


def _check_locators(
    file: File, header: DynamicHeader, bat: np.ndarray, limit: int
) -> list[Problem]:
    problems = []
    blocks = bat[bat != UNALLOCATED].astype(np.int64) * SECTOR
    stride = header.bitmap_size + header.block_size
    for i, loc in enumerate(header.locators):
        where = f"header.locators[{i}]"
        start, stop = loc.data_offset, loc.data_offset + loc.data_length
        if stop > limit:
            problems.append(
                VhdError(f"data {start}..{stop} lies past the end", field=where, offset=start)
            )
        elif np.any((blocks < stop) & (blocks + stride > start)):
            problems.append(
                VhdError(f"data {start}..{stop} overlaps a block", field=where, offset=start)
            )
    return problems
