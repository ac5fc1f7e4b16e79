"""The XenAPI task of one transfer: created (or the client's own adopted), its progress
reported while bytes move, cancellation observed, the outcome recorded.

Progress goes to the store from a reporter task beside the transfer, not from the data path:
every :data:`REPORT_EVERY` seconds it takes the RPC lock, writes the fraction done (in a worker
thread: the commit's fsync waited up to 120 ms here behind other writeback, time every other
connection would lose) and wakes event watchers; when it finds the task ``cancelling`` it
cancels the transfer's scope.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import trio

from migrate.http.errors import HTTPError
from migrate.rpc import task as tasks
from migrate.rpc.codec import ApiError

if TYPE_CHECKING:
    from migrate.rpc.dispatch import Api

log = logging.getLogger("xfer.transfer")

REPORT_EVERY = 0.5
"""Seconds between two progress reports."""


class TransferTask:
    """The task a transfer reports to; ``done`` counts bytes moved so far of ``total``."""

    def __init__(self, api: Api, uuid: str) -> None:
        self.api = api
        self.uuid = uuid
        self.ref = api.ref(uuid)
        self.total = 0
        self.done = 0
        self.cancelled = False
        """Whether the task was cancelled while the transfer ran."""
        self.ended = False
        """Whether the outcome was recorded."""

    @classmethod
    def open(cls, api: Api, session: str, label: str, task_id: str | None) -> TransferTask:
        """A new pending task, or the client's ``task_id`` (it must be pending); the RPC lock
        held. HTTPError 400 for a task_id that names no pending task."""
        if task_id is None:
            return cls(api, tasks.start(api, session, label))
        try:
            row = api.row("task", task_id)
        except ApiError:
            raise HTTPError(400, f"task_id {task_id}: no such task") from None
        if row["status"] != "pending":
            raise HTTPError(400, f"task_id {task_id}: the task is {row['status']}")
        return cls(api, row["uuid"])

    def progress(self) -> float:
        """The fraction done, 0..1 (below 1 until the task ends)."""
        return min(0.99, self.done / self.total) if self.total else 0.0

    async def report(self, scope: trio.CancelScope) -> None:
        """Report progress until cancelled; cancel ``scope`` once the task is cancelled."""
        while True:
            await trio.sleep(REPORT_EVERY)
            status = await self.api.store_call(
                tasks.set_progress, self.api, self.uuid, self.progress()
            )
            if status == "cancelling":
                self.cancelled = True
                scope.cancel()
                return

    async def succeed(self, result: Any = "") -> None:
        """Record success with ``result``."""
        await self.api.store_call(tasks.finish, self.api, self.uuid, result)
        self.ended = True

    async def fail(self, code: str, *params: Any) -> None:
        """Record failure ``code`` with ``params`` (or cancellation, if it was cancelled)."""
        if self.cancelled:
            await self.api.store_call(tasks.finish_cancelled, self.api, self.uuid)
        else:
            await self.api.store_call(
                tasks.finish, self.api, self.uuid, None, ApiError(code, *params)
            )
        self.ended = True
        log.info("task %s: %s %s", self.uuid, code, " ".join(map(str, params)))

    @contextlib.asynccontextmanager
    async def ends(self) -> AsyncIterator[TransferTask]:
        """The transfer's block: whatever escapes it unrecorded (a bug, the daemon stopping)
        still ends the task, as INTERNAL_ERROR, so that no client waits for it forever."""
        try:
            yield self
        except BaseException as e:
            if not self.ended:
                with trio.CancelScope(shield=True):
                    await self.fail("INTERNAL_ERROR", f"{type(e).__name__}: {e}")
            raise
        if not self.ended:
            await self.fail("INTERNAL_ERROR", "the transfer ended without an outcome")
