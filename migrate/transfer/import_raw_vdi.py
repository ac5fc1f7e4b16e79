"""xapi's ``PUT /import_raw_vdi``: a request body into a VDI, or into a new one, atomically.

Authenticated as xapi does (:mod:`migrate.host.http_auth`), run as a XenAPI task whose
progress moves while bytes do. The body is written into a staged image beside the VDI, put in
place only when the whole body arrived and validated; whatever goes wrong before (a cut
connection, a malformed VHD, a body larger than the VDI, a full disk, the task cancelled) the
VDI stays as it was and :func:`failure` says how that is answered. One import per VDI at a
time: a second writer waits up to :data:`CLAIM_WAIT` for the first to end, then gets 409
``VDI_IN_USE``; exports meanwhile read the old content. A snapshot is a point in time delta
backups rely on: it is never written. Beyond xapi: HTTP chunked bodies, and a new VDI from a
VHD as well as from raw bytes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import trio

import vhd
from migrate.formats.chunked import ChunkError
from migrate.formats.xapi import IMPORT_PATH, ref
from migrate.host import http_auth, tasks
from migrate.host.claims import IMPORT
from migrate.host.errors import (
    IMPORT_ERROR,
    OPERATION_NOT_ALLOWED,
    SR_FULL,
    TASK_CANCELLED,
    VDI_IN_USE,
    VDI_IO_ERROR,
    VDI_TOO_SMALL,
    ApiError,
)
from migrate.host.services import HostServices
from migrate.http.errors import HTTPError
from migrate.http.exchange import Connection
from migrate.http.routing import Request, Router, param
from migrate.state.store import NotFound, Store
from migrate.storage import sr as storage
from migrate.storage.staging import StagedImage, StagingError, disk_full
from migrate.transfer.decoders import importer
from migrate.transfer.params import disk_format, lookup, vdi_file
from migrate.transfer.receive import BUFFER_SIZE, receive_body
from migrate.transfer.task import TransferTask
from vhd.format import MAX_VIRTUAL_SIZE

log = logging.getLogger("xfer.transfer")

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


@dataclass
class Target:
    """What an import writes: an existing VDI, or a new one in an SR."""

    vdi: str
    sr: str
    created: bool
    size: int | None
    path: str
    part: str


@dataclass(frozen=True)
class Failure:
    """How a failed import is answered: the HTTP status and line, the task's error."""

    status: int
    message: str
    code: str
    params: tuple[str, ...]


def failure(error: Exception, fmt: str, target: Target, done: int) -> Failure | None:
    """The answer to an import that failed with ``error`` after ``done`` bytes; None for
    what neither the client nor the disk caused (a bug: it propagates as a 500)."""
    match error:
        case HTTPError():  # the body cut, stalled, badly framed or empty
            return Failure(error.status, error.message, IMPORT_ERROR, (error.message,))
        case vhd.VhdError() | ChunkError():
            message = f"malformed {fmt} body: {error}"
            return Failure(400, message, IMPORT_ERROR, (message,))
        case StagingError():  # data past the disk's end
            return Failure(413, str(error), VDI_TOO_SMALL, (ref(target.vdi), str(error)))
        case OSError() if disk_full(error):
            message = f"the SR is full: {error.strerror} after {done} bytes"
            return Failure(507, message, SR_FULL, (ref(target.sr), message))
        case OSError():
            message = f"writing the VDI failed after {done} bytes: {error}"
            return Failure(500, message, VDI_IO_ERROR, (message,))
    return None


async def import_vdi(host: HostServices, request: Request, conn: Connection) -> None:
    """``PUT /import_raw_vdi?vdi=|sr_id=&format=raw|vhd[&chunked=true]``: the body into a VDI
    (``vdi``) or a new VDI (``sr_id``), atomically; answers the VDI's ref."""
    fmt = disk_format(request)
    vdi_param, sr_param = param(request, "vdi"), param(request, "sr_id")
    if bool(vdi_param) == bool(sr_param):
        raise HTTPError(400, "give exactly one of the parameters vdi and sr_id")
    framed = (param(request, "chunked") or "").lower() == "true"
    if framed and fmt != "raw":
        raise HTTPError(400, "chunked=true takes format=raw only")
    name = param(request, "name_label") or ""
    job = TransferTask(host, param(request, "task_id"))
    async with http_auth.authenticated(host, request) as session:
        if vdi_param:
            vdi = await host.db.call(lookup, host.store, "VDI", "vdi", vdi_param)
            await host.claims.wait_for_writer(vdi["uuid"], CLAIM_WAIT)
        with job.cancellable():
            target = await host.db.call(_begin, host, job, session, vdi_param, sr_param, name)
            try:
                async with job.ends():
                    await _import(host, conn, fmt, framed, target, job)
            finally:
                with trio.CancelScope(shield=True):
                    await host.db.call(_abandon, host.store, target)
                    host.claims.release_writer(target.vdi)


def _begin(
    host: HostServices,
    job: TransferTask,
    session: str,
    vdi_param: str | None,
    sr_param: str | None,
    name: str,
) -> Target:
    """The import's target, its task opened, the VDI claimed for this writer; inside a
    database call. HTTPError 404 for no such VDI or SR, 409 for a VDI that must not be written
    (a snapshot, a base of others) or that another import writes (the task then failed)."""
    store = host.store
    if vdi_param:
        row = lookup(store, "VDI", "vdi", vdi_param)
        if row["is_a_snapshot"]:
            raise HTTPError(
                409,
                f"{OPERATION_NOT_ALLOWED}: VDI {row['uuid']} is a snapshot, a point in time "
                "that stays as it was taken: import into the VDI it is a snapshot of, or a "
                "new VDI (sr_id)",
            )
        if store.all("VDI", parent=row["uuid"]) or not row["managed"]:
            raise HTTPError(409, f"{VDI_IN_USE}: VDI {row['uuid']} is the base of other VDIs")
        uuid, created, size = row["uuid"], False, int(row["virtual_size"])
    else:
        assert sr_param is not None
        sr_row = lookup(store, "SR", "sr_id", sr_param)
        uuid, created, size = storage.begin_vdi(store, sr_row["uuid"], name), True, None
    try:
        job.open(session, f"import_raw_vdi {uuid}")
    except BaseException:
        if created:  # the new VDI's row goes again
            storage.abandon_vdi(store, uuid)
        raise
    if not host.claims.claim_writer(uuid):
        holder = host.claims.holder(uuid) or "a writer that just ended"
        message = f"VDI {uuid} is being written by {'an import' if holder == IMPORT else holder}"
        tasks.finish(store, job.uuid, error=ApiError(VDI_IN_USE, ref(uuid), message))
        raise HTTPError(409, f"{VDI_IN_USE}: {message}", [("task-id", job.ref)])
    row = store.get("VDI", uuid)
    path, part = vdi_file(store, row), storage.part_path(store, uuid)
    return Target(uuid, row["sr"], created, size, path, part)


def _abandon(store: Store, target: Target) -> None:
    """The store's side of an import's end: a new VDI that was not published removed."""
    with contextlib.suppress(NotFound):
        if store.get("VDI", target.vdi)["state"] == "creating":
            storage.abandon_vdi(store, target.vdi)


async def _import(
    host: HostServices,
    conn: Connection,
    fmt: str,
    framed: bool,
    target: Target,
    job: TransferTask,
) -> None:
    """Receive the body into a staged image, publish it and answer the VDI's ref; on any
    failure the task fails, the staged file goes and HTTPError answers why."""
    length = conn.content_length
    raw_body = not framed and fmt == "raw"
    if raw_body and target.size is not None and length is not None and length > target.size:
        message = f"body of {length} bytes larger than the VDI's {target.size}"
        raise await job.failed(413, message, VDI_TOO_SMALL, ref(target.vdi), message)
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
            staged = await trio.to_thread.run_sync(stage, limiter=host.threads.bulk)
        except (vhd.VhdError, OSError) as e:
            message = f"cannot stage an import: {e}"
            raise await job.failed(500, message, VDI_IO_ERROR, message) from None
        stack.callback(staged.discard)
        decoder = importer(fmt, framed, staged)
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
            async with job.watched() as nursery:
                flusher = _FlushBehind(nursery, staged, host.threads.bulk)
                # a VHD's head decoded first: a malformed one is answered before the body is
                # sent (raw bodies keep whole buffers, aligned with the blocks)
                first = FIRST_PIECE if fmt == "vhd" else BUFFER_SIZE
                await receive_body(nursery, fill, decoder, first, wrote, host.threads.bulk)
                # an empty body leaves an existing VDI as it is, whatever the format (Xen
                # Orchestra probes for redirections with one before sending the data)
                size = decoder.close() if job.done or target.created else None
                if target.created and staged.end == 0 and fmt == "raw":
                    raise HTTPError(400, "empty body: a new VDI needs at least one byte")
                received = trio.current_time()
                publish = target.created or staged.changed  # else the VDI stays as it is
                if publish:
                    size = await trio.to_thread.run_sync(
                        staged.finish, size, limiter=host.threads.bulk
                    )
                finished = trio.current_time()
        except Exception as e:
            answer_failure = failure(e, fmt, target, job.done)
            if answer_failure is None:
                raise
            if answer_failure.status == 500:
                log.error("import into VDI %s: %s", target.vdi, answer_failure.message)
            raise await job.failed(
                answer_failure.status,
                answer_failure.message,
                answer_failure.code,
                *answer_failure.params,
            ) from None
        if job.cancelled:
            message = f"task {job.ref} cancelled after {job.done} bytes"
            raise await job.failed(409, message, TASK_CANCELLED, job.ref)
        staged.close()

        def commit() -> None:  # inside a database call
            if publish:  # not for a body that wrote nothing (Xen Orchestra's empty probe)
                storage.publish_vdi(host.store, target.vdi, size)
                staged.published()
            else:
                staged.discard()

        await host.db.call(commit)
        # before the answer, the claim released: the client may write the VDI again
        host.claims.release_writer(target.vdi)
        await job.succeed(ref(target.vdi))
        body = f"{ref(target.vdi)}\n".encode()
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
        # the old file's last reference goes: freeing its blocks takes a while (a second for
        # 2 GiB here), in a worker thread so that other requests go on meanwhile
        await trio.to_thread.run_sync(stack.close, limiter=host.threads.bulk)


class _FlushBehind:
    """Writeback of a staged image started while its body still arrives (an ``fdatasync``
    in a worker thread after every :data:`FLUSH_EVERY` bytes, one at a time), so that the
    final sync before publishing finds little left to write."""

    def __init__(
        self, nursery: trio.Nursery, staged: StagedImage, limiter: trio.CapacityLimiter
    ) -> None:
        self.nursery = nursery
        self.staged = staged
        self.limiter = limiter
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
            await trio.to_thread.run_sync(self.staged.sync_data, limiter=self.limiter)
        finally:
            self.running = False


def register(router: Router, host: HostServices) -> None:
    """Serve ``PUT /import_raw_vdi`` for ``host``."""

    async def put(request: Request, conn: Connection) -> None:
        await import_vdi(host, request, conn)

    router.add("PUT", IMPORT_PATH, put)
