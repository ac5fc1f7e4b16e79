"""Exporting a VDI: its file planned as a raw or VHD stream, the plan sent over HTTP.

Planning reads metadata only (footers, BATs, bitmaps) and gives the exact length before the
first byte; sending executes the elements: literal bytes and zeros through h11, copies with
``os.sendfile`` on plain sockets (large buffered reads under TLS), see
:meth:`migrate.http.server.Connection.send_file`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass

import vhd
from migrate.http.exchange import Connection
from vhd.convert import vhd_export_plan

FORMATS = {"raw": "application/octet-stream", "vhd": "application/vhd"}
"""Export formats and their content types, as xapi sends them."""
_ZEROS = memoryview(bytes(1 << 20))


@dataclass
class Export:
    """An export ready to send: its plan and the open images it copies from."""

    plan: vhd.Plan
    content_type: str
    filename: str
    images: ExitStack
    rangeable: bool
    """Whether the same request gives the same bytes again (raw): byte ranges make sense."""


def open_export(vdi_uuid: str, path: str, fmt: str, base: tuple[str, str] | None = None) -> Export:
    """Plan the export of the VDI ``vdi_uuid`` whose file is ``path`` as ``fmt`` (raw or
    vhd); ``base`` (uuid, path) makes a VHD export a delta against that VDI (a raw export
    is whole whatever the base). Raises vhd.VhdError or OSError."""
    with ExitStack() as stack:
        image = stack.enter_context(vhd.Image.open(path))
        if fmt == "raw":
            plan = vhd.plan_raw(image)
        elif base is None:
            plan = vhd_export_plan(image)
        else:
            base_image = stack.enter_context(vhd.Image.open(base[1]))
            plan = vhd_export_plan(image, base=base_image, name=os.path.basename(base[1]))
        images = stack.pop_all()
    return Export(plan, FORMATS[fmt], f"{vdi_uuid}.{fmt}", images, fmt == "raw")


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def byte_range(header: str | None, total: int) -> tuple[int, int] | bool | None:
    """The one byte range (start, stop) a ``Range`` header asks of ``total`` bytes; None to
    send everything (no header, or one this server ignores: several ranges, other units,
    bad syntax); False when it cannot be satisfied (416)."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip().replace(" ", ""))
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)
        return (max(0, total - suffix), total) if suffix else False
    start = int(first)
    stop = min(total, int(last) + 1) if last else total
    if last and int(last) < start:
        return None
    return (start, stop) if start < total else False


async def send_elements(
    conn: Connection, elements: Iterable[vhd.Element], progress: Callable[[int], None]
) -> None:
    """Send ``elements`` as the body of ``conn``'s started response; ``progress`` gets each
    element's length once sent."""
    for e in elements:
        if isinstance(e, vhd.Copy):
            await conn.send_file(e.file.fileno(), e.offset, e.length)
        elif isinstance(e, vhd.Literal):
            await conn.send(e.data)
        else:
            left = e.length
            while left:
                n = min(left, len(_ZEROS))
                await conn.send(_ZEROS[:n])
                left -= n
        progress(e.length)
