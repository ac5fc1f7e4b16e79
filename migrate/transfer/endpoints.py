"""xapi's VDI transfer endpoints: ``GET /export_raw_vdi`` and ``PUT /import_raw_vdi``.

Both authenticate as xapi does (:mod:`migrate.transfer.auth`), run as a XenAPI task whose
progress moves while bytes do, and answer errors with a status and one line naming what is
wrong. Beyond xapi: exports carry an exact Content-Length and honour ``Range`` (raw), imports
take HTTP chunked bodies and create a VDI from a VHD as well as from raw bytes.

An import writes a staged image beside the VDI and puts it in place only when the whole body
arrived and validated; whatever goes wrong before (a cut connection, a malformed VHD, a body
larger than the VDI, a full disk, the task cancelled) the VDI stays as it was, the task fails
with the reason, and the client gets 400, 413, 507 or 409. One import per VDI at a time: a
second writer waits up to :data:`CLAIM_WAIT` for the first to end, then gets 409
``VDI_IN_USE``; exports meanwhile read the old content.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

import vhd
from migrate.http.errors import HTTPError
from migrate.http.exchange import Connection
from migrate.http.routing import Request, Router
from migrate.rpc.codec import ApiError
from migrate.storage import sr as storage
from migrate.storage.staging import StagedImage, StagingError, disk_full
from migrate.transfer import auth, chunks, export
from migrate.transfer.importer import BUFFER_SIZE, importer, receive_body
from migrate.transfer.task import TransferTask
from vhd.format import MAX_VIRTUAL_SIZE

if TYPE_CHECKING:
    from migrate.rpc.dispatch import Api

log = logging.getLogger("xfer.transfer")

EXPORT_PATH = "/export_raw_vdi"
IMPORT_PATH = "/import_raw_vdi"
UNKNOWN_LENGTH = 2 * MAX_VIRTUAL_SIZE
"""A VHD body declared longer than this cannot be one: the client does not know its length
(Xen Orchestra declares 1 PiB and cuts the connection after the data)."""
FIRST_PIECE = 64 << 10
"""Bytes of a VHD body decoded before whole buffers: its footer, header and the BAT of a
disk up to 512 GiB."""
CLAIM_WAIT = 2.0
"""Seconds an import waits for another one into the same VDI to end before 409: Xen
Orchestra sends its data right after closing its empty probe, which ends as it sees the close."""
FLUSH_EVERY = 256 << 20
"""Bytes an import receives between two background syncs of its staged image."""


def _format(request: Request) -> str:
    fmt = auth.param(request, "format") or "raw"
    if fmt not in export.FORMATS:
        raise HTTPError(400, f"format={fmt}: expected raw or vhd")
    return fmt


def _row(api: Api, cls: str, name: str, value: str) -> dict[str, Any]:
    """The row parameter ``name`` names by uuid or ref; HTTPError 404 if there is none."""
    ref = value if value.startswith("OpaqueRef:") else api.ref(value)
    try:
        return api.row(cls, ref)
    except ApiError:
        raise HTTPError(404, f"{name}={value}: no such {cls}") from None


def _vdi_file(api: Api, row: dict[str, Any]) -> str:
    return storage.vdi_path(api.store.get("SR", row["sr"])["path"], row["uuid"])


@contextlib.asynccontextmanager
async def _watched(job: TransferTask) -> AsyncIterator[trio.Nursery]:
    """A nursery for the transfer's work, the task's reporter running beside it (it cancels
    the work once the task is cancelled). An exception of the work comes out as itself, not
    wrapped in the nursery's exception group."""
    try:
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as scope:
                nursery.start_soon(job.report, scope)
                yield nursery
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def export_vdi(api: Api, request: Request, conn: Connection) -> None:
    """``GET /export_raw_vdi?vdi=&format=raw|vhd[&base=]``: the VDI as raw bytes or a VHD."""
    fmt = _format(request)
    vdi_param = auth.param(request, "vdi")
    if not vdi_param:
        raise HTTPError(400, "parameter vdi missing")
    base_param = auth.param(request, "base")
    task_id = auth.param(request, "task_id")
    async with auth.authenticated(api, request) as session:
        uuid, path, base, job = await api.store_call(
            _begin_export, api, session, vdi_param, base_param if fmt == "vhd" else None, task_id
        )
        async with job.ends():
            try:
                # opening and planning read the image's metadata (a BAT of MiBs for a large
                # disk): not in the event loop
                plan = await trio.to_thread.run_sync(export.open_export, uuid, path, fmt, base)
            except (vhd.VhdError, OSError) as e:
                status = 404 if isinstance(e, FileNotFoundError) else 500
                raise await _failed(job, status, str(e), "VDI_IO_ERROR", str(e)) from None
            try:
                await _send_export(conn, request, plan, job)
            finally:
                # the last reference to a file an import replaced meanwhile may go here:
                # freeing its blocks takes a while, so not in the event loop
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(plan.images.close)


def _begin_export(
    api: Api, session: str, vdi_param: str, base_param: str | None, task_id: str | None
) -> tuple[str, str, tuple[str, str] | None, TransferTask]:
    """The VDI's uuid and file, the base's (uuid, file) if any, and the export's task; in a
    worker thread, the RPC lock held. HTTPError for a VDI or base that is not there, or a base
    of another size."""
    row = _row(api, "VDI", "vdi", vdi_param)
    base = None
    if base_param:
        base_row = _row(api, "VDI", "base", base_param)
        if base_row["virtual_size"] != row["virtual_size"]:
            raise HTTPError(
                400,
                f"base={base_param}: {base_row['virtual_size']} bytes, the VDI "
                f"{row['virtual_size']}: a delta needs disks of the same size",
            )
        base = (base_row["uuid"], _vdi_file(api, base_row))
    job = TransferTask.open(api, session, f"export_raw_vdi {row['uuid']}", task_id)
    return row["uuid"], _vdi_file(api, row), base, job


async def _send_export(
    conn: Connection, request: Request, plan: export.Export, job: TransferTask
) -> None:
    total = plan.plan.length
    window = export.byte_range(request.header("range"), total) if plan.rangeable else None
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
        raise await _failed(
            job,
            416,
            message,
            "INVALID_VALUE",
            "range",
            request.header("range"),
            header=unsatisfiable,
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
        async with _watched(job):
            await conn.start_response(206 if isinstance(window, tuple) else 200, headers)
            await export.send_elements(conn, elements, sent)
            await conn.end()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, vhd.VhdError) as e:
        message = f"export stopped after {job.done} bytes: {e}"
        raise await _failed(job, 500, message, "VDI_IO_ERROR", message) from None
    if job.cancelled:
        message = f"task {job.ref} cancelled after {job.done} bytes"
        raise await _failed(job, 409, message, "TASK_CANCELLED", job.ref)
    await job.succeed()


async def _failed(
    job: TransferTask,
    status: int,
    message: str,
    code: str,
    *params: Any,
    header: tuple[str, str] | None = None,
) -> HTTPError:
    """Record the task's failure ``code`` with ``params``; the HTTPError that answers it
    (``status``, ``message``, the ``task-id`` header and ``header``)."""
    await job.fail(code, *params)
    headers = [("task-id", job.ref)] + ([header] if header else [])
    return HTTPError(status, message, headers)


@dataclass
class _Target:
    """What an import writes: an existing VDI, or a new one in an SR."""

    vdi: str
    sr: str
    created: bool
    size: int | None
    path: str
    part: str


async def import_vdi(api: Api, request: Request, conn: Connection) -> None:
    """``PUT /import_raw_vdi?vdi=|sr_id=&format=raw|vhd[&chunked=true]``: the body into a VDI
    (``vdi``) or a new VDI (``sr_id``), atomically; answers the VDI's ref."""
    fmt = _format(request)
    vdi_param, sr_param = auth.param(request, "vdi"), auth.param(request, "sr_id")
    if bool(vdi_param) == bool(sr_param):
        raise HTTPError(400, "give exactly one of the parameters vdi and sr_id")
    chunked = (auth.param(request, "chunked") or "").lower() == "true"
    if chunked and fmt != "raw":
        raise HTTPError(400, "chunked=true takes format=raw only")
    name = auth.param(request, "name_label") or ""
    task_id = auth.param(request, "task_id")
    async with auth.authenticated(api, request) as session:
        if vdi_param:
            await _wait_for_writer(api, vdi_param)
        target, job = await api.store_call(
            _begin_import, api, session, vdi_param, sr_param, name, task_id
        )
        try:
            async with job.ends():
                await _import(api, conn, fmt, chunked, target, job)
        finally:
            with trio.CancelScope(shield=True):
                await api.store_call(_release, api, target)
                _wake_writers(api, target)


async def _wait_for_writer(api: Api, vdi_param: str) -> None:
    """Wait up to :data:`CLAIM_WAIT` for an import writing the VDI ``vdi_param`` to end."""
    with trio.move_on_after(CLAIM_WAIT):
        while True:
            async with api.lock:
                writer = api.writing.get(_row(api, "VDI", "vdi", vdi_param)["uuid"])
            if writer is None:
                return
            await writer.wait()


def _begin_import(
    api: Api,
    session: str,
    vdi_param: str | None,
    sr_param: str | None,
    name: str,
    task_id: str | None,
) -> tuple[_Target, TransferTask]:
    """The import's target, claimed, and its task; in a worker thread, the RPC lock held."""
    target = _claim(api, vdi_param, sr_param, name)
    try:
        return target, TransferTask.open(api, session, f"import_raw_vdi {target.vdi}", task_id)
    except BaseException:
        _release(api, target)
        del api.writing[target.vdi]  # (its event new: nobody can be waiting on it yet)
        raise


def _claim(api: Api, vdi_param: str | None, sr_param: str | None, name: str) -> _Target:
    """The import's target, marked as being written (HTTPError 409 if it already is); a new
    VDI's row recorded as ``creating``. The RPC lock held."""
    if vdi_param:
        row = _row(api, "VDI", "vdi", vdi_param)
        if row["uuid"] in api.writing:
            raise HTTPError(409, f"VDI_IN_USE: VDI {row['uuid']} is being written by an import")
        if api.store.all("VDI", parent=row["uuid"]) or not row["managed"]:
            raise HTTPError(409, f"VDI_IN_USE: VDI {row['uuid']} is the base of other VDIs")
        uuid, created, size = row["uuid"], False, int(row["virtual_size"])
    else:
        assert sr_param is not None
        sr_row = _row(api, "SR", "sr_id", sr_param)
        uuid, created, size = storage.begin_vdi(api.store, sr_row["uuid"], name), True, None
    api.writing[uuid] = trio.Event()
    row = api.store.get("VDI", uuid)
    path, part = _vdi_file(api, row), storage.part_path(api.store, uuid)
    return _Target(uuid, row["sr"], created, size, path, part)


def _release(api: Api, target: _Target) -> None:
    """The store's side of an import's end: a new VDI that was not published removed. The
    RPC lock held."""
    with contextlib.suppress(KeyError):
        if api.store.get("VDI", target.vdi)["state"] == "creating":
            storage.abandon_vdi(api.store, target.vdi)


def _wake_writers(api: Api, target: _Target) -> None:
    """The target no longer being written: an import waiting for it goes on (in trio)."""
    with contextlib.suppress(KeyError):
        api.writing.pop(target.vdi).set()


async def _import(
    api: Api, conn: Connection, fmt: str, chunked: bool, target: _Target, job: TransferTask
) -> None:
    """Receive the body into a staged image, publish it and answer the VDI's ref; on any
    failure the task fails, the staged file goes and HTTPError answers why."""
    length = conn.content_length
    raw_body = not chunked and fmt == "raw"
    if raw_body and target.size is not None and length is not None and length > target.size:
        message = f"body of {length} bytes larger than the VDI's {target.size}"
        raise await _failed(job, 413, message, "VDI_TOO_SMALL", api.ref(target.vdi), message)
    if target.created and raw_body and length is not None:
        target.size = -(-length // 512) * 512  # a new VDI as large as the raw body
    job.total = length or target.size or 0
    answer = [("content-type", "text/plain"), ("task-id", job.ref)]
    unknown_length = fmt == "vhd" and length is not None and length > UNKNOWN_LENGTH
    if unknown_length:
        # xapi's way, which Xen Orchestra relies on when it cannot know the length: 200 at
        # once (its first, empty request only probes for a redirection), the outcome on the
        # task; the body ends at the VHD's footer, the connection is then closed
        job.total = target.size or 0
        await conn.start_response(200, answer)
    with contextlib.ExitStack() as stack:

        def stage() -> StagedImage:  # reads the old image's metadata: in a worker thread
            old = None if target.created else stack.enter_context(vhd.Image.open(target.path))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target.part)  # a leftover of an interrupted import
            return StagedImage(target.part, old=old, size=target.size)

        try:
            staged = await trio.to_thread.run_sync(stage)
        except (vhd.VhdError, OSError) as e:
            message = f"cannot stage an import: {e}"
            raise await _failed(job, 500, message, "VDI_IO_ERROR", message) from None
        stack.callback(staged.discard)
        decoder = importer(fmt, chunked, staged)
        failure: HTTPError | None = None
        started = trio.current_time()

        async def fill(buffer: memoryview) -> int:
            try:
                return await conn.receive_into(buffer)
            except HTTPError as e:
                if not (unknown_length and e.status == 400):
                    raise
                return 0  # the client's way of ending such a body: the VHD must be whole

        def wrote(n: int) -> None:
            job.done += n
            flusher.wrote(n)

        try:
            async with _watched(job) as nursery:
                flusher = _FlushBehind(nursery, staged)
                # a VHD's head decoded first: a malformed one is answered before the body is
                # sent (raw bodies keep whole buffers, aligned with the blocks)
                first = FIRST_PIECE if fmt == "vhd" else BUFFER_SIZE
                await receive_body(nursery, fill, decoder, first, wrote)
                # an empty body leaves an existing VDI as it is, whatever the format (Xen
                # Orchestra probes for redirections with one before sending the data)
                size = decoder.close() if job.done or target.created else None
                if target.created and staged.end == 0 and fmt == "raw":
                    raise HTTPError(400, "empty body: a new VDI needs at least one byte")
                received = trio.current_time()
                publish = target.created or staged.changed  # else the VDI stays as it is
                if publish:
                    size = await trio.to_thread.run_sync(staged.finish, size)
                finished = trio.current_time()
            if job.cancelled:
                message = f"task {job.ref} cancelled after {job.done} bytes"
                failure = await _failed(job, 409, message, "TASK_CANCELLED", job.ref)
        except HTTPError as e:  # the body cut, stalled, badly framed or empty
            failure = await _failed(job, e.status, e.message, "IMPORT_ERROR", e.message)
        except (vhd.VhdError, chunks.ChunkError) as e:
            message = f"malformed {fmt} body: {e}"
            failure = await _failed(job, 400, message, "IMPORT_ERROR", message)
        except StagingError as e:
            failure = await _failed(job, 413, str(e), "VDI_TOO_SMALL", api.ref(target.vdi), str(e))
        except OSError as e:
            if not disk_full(e):
                await job.fail("VDI_IO_ERROR", f"after {job.done} bytes: {e}")
                raise
            message = f"the SR is full: {e.strerror} after {job.done} bytes"
            failure = await _failed(job, 507, message, "SR_FULL", api.ref(target.sr), message)
        if failure is not None:
            raise failure
        staged.close()

        def commit() -> None:  # in a worker thread, the RPC lock held
            if publish:  # not for a body that wrote nothing (Xen Orchestra's empty probe)
                storage.publish_vdi(api.store, target.vdi, size)
                staged.published()
            else:
                staged.discard()
            _release(api, target)

        await api.store_call(commit)
        # before the answer, the staged path cleared: the client may write the VDI again
        _wake_writers(api, target)
        await job.succeed(api.ref(target.vdi))
        body = f"{api.ref(target.vdi)}\n".encode()
        if conn.status is None:
            await conn.respond(200, answer, body)
        else:
            await conn.send(body)
        log.info(
            "VDI %s imported: %d bytes received in %.2f s, image finished in %.2f s",
            target.vdi,
            job.done,
            received - started,
            finished - received,
        )
        # the old file's last reference goes: freeing its blocks takes a while (0.5 s for
        # 2 GiB here), in a worker thread so that other requests go on meanwhile
        await trio.to_thread.run_sync(stack.close)


class _FlushBehind:
    """Writeback of a staged image started while its body still arrives (an ``fdatasync``
    in a worker thread after every :data:`FLUSH_EVERY` bytes, one at a time), so that the
    final sync before publishing finds little left to write."""

    def __init__(self, nursery: trio.Nursery, staged: StagedImage) -> None:
        self.nursery = nursery
        self.staged = staged
        self.pending = 0
        self.running = False

    def wrote(self, n: int) -> None:
        """Count ``n`` more bytes written; start a sync if enough are pending."""
        self.pending += n
        if self.pending >= FLUSH_EVERY and not self.running:
            self.pending = 0
            self.running = True
            self.nursery.start_soon(self._sync)

    async def _sync(self) -> None:
        try:
            await trio.to_thread.run_sync(self.staged.sync_data)
        finally:
            self.running = False


def register_transfers(router: Router, api: Api) -> None:
    """Serve ``GET /export_raw_vdi`` and ``PUT /import_raw_vdi`` for ``api``'s host."""

    async def get(request: Request, conn: Connection) -> None:
        await export_vdi(api, request, conn)

    async def put(request: Request, conn: Connection) -> None:
        await import_vdi(api, request, conn)

    router.add("GET", EXPORT_PATH, get)
    router.add("PUT", IMPORT_PATH, put)
