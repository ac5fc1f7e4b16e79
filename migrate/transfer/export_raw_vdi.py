"""xapi's ``GET /export_raw_vdi``: a VDI's content as raw bytes or a VHD, planned then sent.

Authenticated as xapi does (:mod:`migrate.host.http_auth`), run as a XenAPI task whose
progress moves while bytes do. Planning reads metadata only (footers, BATs, bitmaps) and gives
the exact length before the first byte; sending executes the elements: literal bytes and zeros
through h11, copies with ``os.sendfile`` on plain sockets (large buffered reads under TLS).
Beyond xapi: an exact Content-Length, and one ``Range`` of a raw export. A VHD export with
``base`` is a differencing VHD of what changed since that VDI.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass

import trio

import vhd
from migrate.formats.xapi import EXPORT_PATH, FORMATS
from migrate.host import http_auth
from migrate.host.errors import INVALID_VALUE, TASK_CANCELLED, VDI_IO_ERROR
from migrate.host.services import HostServices
from migrate.http.errors import HTTPError
from migrate.http.exchange import Connection
from migrate.http.routing import Request, Router, param
from migrate.transfer.params import disk_format, lookup, vdi_file
from migrate.transfer.task import TransferTask
from vhd.convert import vhd_export_plan
from vhd.file import File
from vhd.transport import ZEROS, dispatch

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_DIGITS = 19
"""Significant digits of the largest position taken as a number; larger ones are past any
disk (range numbers have no limit in RFC 9110, Python's int() has one)."""


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


def byte_range(header: str | None, total: int) -> tuple[int, int] | bool | None:
    """The one byte range (start, stop) a ``Range`` header asks of ``total`` bytes; None to
    send everything (no header, or one this server ignores: several ranges, other units,
    bad syntax); False when it cannot be satisfied (416)."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip().replace(" ", ""))
    if match is None:
        return None
    first, last = (_position(text, total) if text else None for text in match.groups())
    if first is None:
        if last is None:
            return None
        return (max(0, total - last), total) if last else False
    stop = min(total, last + 1) if last is not None else total
    if last is not None and last < first:
        return None
    return (first, stop) if first < total else False


def _position(digits: str, total: int) -> int:
    """A range position, at most ``total`` (larger ones mean the same)."""
    significant = digits.lstrip("0")
    return total if len(significant) > _DIGITS else min(total, int(significant or "0"))


class ResponseSink:
    """The body of ``conn``'s started response as a sink of plan elements
    (:func:`vhd.transport.dispatch`): copies by ``send_file``, literals and zeros through h11."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def literal(self, data: bytes) -> None:
        """Send ``data``."""
        await self.conn.send(data)

    async def copy(self, file: File, offset: int, length: int) -> None:
        """Send the file's bytes (``sendfile`` on a plain socket)."""
        await self.conn.send_file(file.fileno(), offset, length)

    async def zeros(self, length: int) -> None:
        """Send ``length`` zeros from the shared zero buffer."""
        while length:
            n = min(length, len(ZEROS))
            await self.conn.send(ZEROS[:n])
            length -= n


async def send_elements(
    conn: Connection, elements: Iterable[vhd.Element], progress: Callable[[int], None]
) -> None:
    """Send ``elements`` as the body of ``conn``'s started response; ``progress`` gets each
    element's length once sent."""
    for length, sent in dispatch(elements, ResponseSink(conn)):
        await sent
        progress(length)


async def export_vdi(host: HostServices, request: Request, conn: Connection) -> None:
    """``GET /export_raw_vdi?vdi=&format=raw|vhd[&base=]``: the VDI as raw bytes or a VHD."""
    fmt = disk_format(request)
    vdi_param = param(request, "vdi")
    if not vdi_param:
        raise HTTPError(400, "parameter vdi missing")
    base_param = param(request, "base") if fmt == "vhd" else None
    job = TransferTask(host, param(request, "task_id"))
    async with http_auth.authenticated(host, request) as session:
        with job.cancellable():
            uuid, path, base = await host.db.call(_begin, host, job, session, vdi_param, base_param)
            async with job.ends():
                try:
                    # opening and planning read the image's metadata (a BAT of MiBs for a
                    # large disk): not in the event loop
                    plan = await trio.to_thread.run_sync(
                        open_export, uuid, path, fmt, base, limiter=host.threads.bulk
                    )
                except (vhd.VhdError, OSError) as e:
                    status = 404 if isinstance(e, FileNotFoundError) else 500
                    raise await job.failed(status, str(e), VDI_IO_ERROR, str(e)) from None
                try:
                    await _send(conn, request, plan, job)
                finally:
                    # the last reference to a file an import replaced meanwhile may go here:
                    # freeing its blocks takes a while, so not in the event loop
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(plan.images.close, limiter=host.threads.bulk)


def _begin(
    host: HostServices,
    job: TransferTask,
    session: str,
    vdi_param: str,
    base_param: str | None,
) -> tuple[str, str, tuple[str, str] | None]:
    """The VDI's uuid and file and the base's (uuid, file) if any, the export's task opened;
    inside a database call. HTTPError for a VDI or base that is not there, or a base of
    another size."""
    store = host.store
    row = lookup(store, "VDI", "vdi", vdi_param)
    base = None
    if base_param:
        base_row = lookup(store, "VDI", "base", base_param)
        if base_row["virtual_size"] != row["virtual_size"]:
            raise HTTPError(
                400,
                f"base={base_param}: {base_row['virtual_size']} bytes, the VDI "
                f"{row['virtual_size']}: a delta needs disks of the same size",
            )
        base = (base_row["uuid"], vdi_file(store, base_row))
    job.open(session, f"export_raw_vdi {row['uuid']}")
    return row["uuid"], vdi_file(store, row), base


async def _send(conn: Connection, request: Request, plan: Export, job: TransferTask) -> None:
    total = plan.plan.length
    window = byte_range(request.header("range"), total) if plan.rangeable else None
    headers = [
        ("content-type", plan.content_type),
        ("content-disposition", f'attachment; filename="{plan.filename}"'),
        ("task-id", job.ref),
    ]
    if plan.rangeable:
        headers.append(("accept-ranges", "bytes"))
    if window is False:
        message = f"range not within {total} bytes"
        unsatisfiable = ("content-range", f"bytes */{total}")
        range_header = request.header("range")
        raise await job.failed(
            416, message, INVALID_VALUE, "range", range_header, header=unsatisfiable
        )
    start, stop = window if isinstance(window, tuple) else (0, total)
    headers.append(("content-length", str(stop - start)))
    if isinstance(window, tuple):
        headers.append(("content-range", f"bytes {start}-{stop - 1}/{total}"))
    job.total = stop - start
    elements = plan.plan.window(start, stop) if isinstance(window, tuple) else iter(plan.plan)

    def sent(n: int) -> None:
        job.done += n

    try:
        async with job.watched():
            await conn.start_response(206 if isinstance(window, tuple) else 200, headers)
            await send_elements(conn, elements, sent)
            await conn.end()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, vhd.VhdError) as e:
        message = f"export stopped after {job.done} bytes: {e}"
        raise await job.failed(500, message, VDI_IO_ERROR, message) from None
    if job.cancelled:
        message = f"task {job.ref} cancelled after {job.done} bytes"
        raise await job.failed(409, message, TASK_CANCELLED, job.ref)
    await job.succeed()


def register(router: Router, host: HostServices) -> None:
    """Serve ``GET /export_raw_vdi`` for ``host``."""

    async def get(request: Request, conn: Connection) -> None:
        await export_vdi(host, request, conn)

    router.add("GET", EXPORT_PATH, get)
