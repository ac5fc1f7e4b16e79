"""The XenAPI task of one transfer: created (or the client's own adopted), its progress
written while bytes move, cancelled at once when the task is, its outcome recorded.

Progress goes to the store from a reporter beside the transfer, not from the data path:
every :data:`REPORT_EVERY` seconds, as a database call of its own. Cancellation is pushed: the
transfer's work runs in the cancel scope the host's tasks cancel on ``task.cancel``
(:meth:`migrate.host.tasks.Tasks.cancellable`).
"""

from __future__ import annotations

import contextlib
import logging
import uuid as uuidlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import trio

from migrate.formats.xapi import ref, ref_uuid
from migrate.host import tasks
from migrate.host.errors import INTERNAL_ERROR, ApiError
from migrate.host.services import HostServices
from migrate.http.errors import HTTPError
from migrate.nursery import open_nursery
from migrate.state.store import NotFound

log = logging.getLogger("xfer.transfer")

REPORT_EVERY = 0.5
"""Seconds between two progress reports."""


class TransferTask:
    """The task a transfer reports to; ``done`` counts bytes moved so far of ``total``.

    Made in trio from the request's ``task_id`` (None: a new task), then entered
    (:meth:`cancellable`) before its row is made or adopted (:meth:`open`, inside a database
    call), so that no ``task.cancel`` can come before the transfer hears of it."""

    def __init__(self, host: HostServices, task_id: str | None) -> None:
        self.host = host
        self.adopted = task_id
        uuid = str(uuidlib.uuid4()) if task_id is None else ref_uuid(task_id) or task_id
        self.uuid = uuid
        self.ref = ref(uuid)
        self.total = 0
        self.done = 0
        self.scope = trio.CancelScope()
        """Where the work runs: cancelled when the task is."""
        self.ended = False
        """Whether the outcome was recorded."""

    @contextlib.contextmanager
    def cancellable(self) -> Iterator[None]:
        """The task's cancellation reaches :attr:`scope` while in this block."""
        with self.host.tasks.cancellable(self.uuid) as scope:
            self.scope = scope
            yield

    def open(self, session: str, label: str) -> None:
        """Store the new pending task, or check the adopted one is pending; inside a database
        call. HTTPError 400 for a ``task_id`` that names no pending task."""
        store = self.host.store
        if self.adopted is None:
            tasks.insert(store, self.uuid, session, label)
            return
        try:
            status = store.get("task", self.uuid)["status"]
        except NotFound:
            raise HTTPError(400, f"task_id {self.adopted}: no such task") from None
        if status != "pending":
            raise HTTPError(400, f"task_id {self.adopted}: the task is {status}")

    @property
    def cancelled(self) -> bool:
        """Whether the task was cancelled while the work ran."""
        return self.scope.cancelled_caught

    def progress(self) -> float:
        """The fraction done, 0..1 (below 1 until the task ends)."""
        return min(0.99, self.done / self.total) if self.total else 0.0

    async def report(self) -> None:
        """Write the progress every :data:`REPORT_EVERY` seconds until cancelled."""
        while True:
            await trio.sleep(REPORT_EVERY)
            await self.host.db.call(tasks.set_progress, self.host.store, self.uuid, self.progress())

    @contextlib.asynccontextmanager
    async def watched(self) -> AsyncIterator[trio.Nursery]:
        """The transfer's work: in :attr:`scope`, with the reporter beside it, in a nursery
        whose failure comes out as itself (not an exception group)."""
        with self.scope:
            async with open_nursery() as nursery:
                nursery.start_soon(self.report)
                yield nursery
                nursery.cancel_scope.cancel()

    async def succeed(self, result: Any = "") -> None:
        """Record success with ``result``."""
        await self.host.db.call(tasks.finish, self.host.store, self.uuid, result)
        self.ended = True

    async def fail(self, code: str, *params: Any) -> None:
        """Record failure ``code`` with ``params`` (or cancellation, if it was cancelled)."""
        store = self.host.store
        if self.cancelled:
            await self.host.db.call(tasks.finish_cancelled, store, self.uuid)
        else:
            await self.host.db.call(tasks.finish, store, self.uuid, None, ApiError(code, *params))
        self.ended = True
        log.info("task %s: %s %s", self.uuid, code, " ".join(map(str, params)))

    async def failed(
        self,
        status: int,
        message: str,
        code: str,
        *params: Any,
        header: tuple[str, str] | None = None,
    ) -> HTTPError:
        """Record failure ``code`` with ``params``; the HTTPError that answers it (``status``,
        ``message``, the ``task-id`` header and ``header``)."""
        await self.fail(code, *params)
        headers = [("task-id", self.ref)] + ([header] if header else [])
        return HTTPError(status, message, headers)

    @contextlib.asynccontextmanager
    async def ends(self) -> AsyncIterator[TransferTask]:
        """The transfer's block: whatever escapes it unrecorded (a bug, the daemon stopping)
        still ends the task, as INTERNAL_ERROR, so that no client waits for it forever."""
        try:
            yield self
        except BaseException as e:
            if not self.ended:
                with trio.CancelScope(shield=True):
                    await self.fail(INTERNAL_ERROR, f"{type(e).__name__}: {e}")
            raise
        if not self.ended:
            await self.fail(INTERNAL_ERROR, "the transfer ended without an outcome")
