"""Tasks: the progress and outcome of long operations, and their cancellation.

A task is a ``task`` row (pending, then success, failure or cancelled; cancelling in
between); the functions here that take a :class:`Store` run inside a database call.
:class:`Tasks` holds what lives in memory: the cancel scope of each running operation, so that
``task.cancel`` reaches the operation at once (pushed, not polled), and the nursery where
``Async.*`` calls run. As in xapi, a finished task's progress is 1.0 whatever the outcome.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import trio

from migrate.formats.xmlrpc import encode_value
from migrate.host.database import Database
from migrate.host.errors import INTERNAL_ERROR, OPERATION_NOT_ALLOWED, ApiError
from migrate.state.store import NotFound, Store

log = logging.getLogger("xfer.tasks")

UNFINISHED = ("pending", "cancelling")
"""Statuses of a task whose outcome is not known yet."""


# Rows (inside a database call)


def insert(store: Store, uuid: str, session: str, name_label: str) -> None:
    """Store the new pending task ``uuid``."""
    store.insert(
        "task",
        {
            "uuid": uuid,
            "name_label": name_label,
            "session": session,
            "status": "pending",
            "progress": 0.0,
            "result": "",
            "error_info": "",
            "created": time.time(),
            "finished": None,
        },
    )


def begin(store: Store, uuid: str) -> bool:
    """Whether the task's work may start: False (and the task ``cancelled``) once it is
    being cancelled, False when it was destroyed meanwhile."""
    try:
        status = store.get("task", uuid)["status"]
    except NotFound:
        return False
    if status == "cancelling":
        finish_cancelled(store, uuid)
    return bool(status == "pending")


def finish(store: Store, uuid: str, result: Any = None, error: ApiError | None = None) -> None:
    """Record the outcome of a task (it may have been destroyed meanwhile): ``result`` as
    xapi stores it (an XML-RPC value), or ``error``."""
    fields: dict[str, Any] = {"progress": 1.0, "finished": time.time()}
    if error is not None:
        fields.update(status="failure", error_info=json.dumps(error.description))
    else:
        fields.update(status="success", result=encode_value(result))
    with contextlib.suppress(NotFound):
        store.update("task", uuid, fields)


def finish_cancelled(store: Store, uuid: str) -> None:
    """Record that a task's work stopped because the task was cancelled."""
    with contextlib.suppress(NotFound):
        store.update(
            "task",
            uuid,
            {"status": "cancelled", "progress": 1.0, "finished": time.time(), "error_info": "[]"},
        )


def set_progress(store: Store, uuid: str, progress: float) -> None:
    """Record a pending task's progress (0..1); nothing if it ended or was destroyed."""
    with contextlib.suppress(NotFound):
        row = store.get("task", uuid)
        if row["status"] == "pending" and abs(row["progress"] - progress) >= 0.001:
            store.update("task", uuid, {"progress": progress})


def set_other_config(store: Store, uuid: str, key: str, value: str) -> None:
    """Set one key of a task's ``other_config`` (a JSON map of strings: migration keeps its
    rounds report there); nothing if the task was destroyed."""
    with contextlib.suppress(NotFound), store.change():
        other_config = other_config_of(store.get("task", uuid))
        other_config[key] = value
        store.update("task", uuid, {"other_config": json.dumps(other_config)})


def other_config_of(row: dict[str, Any]) -> dict[str, str]:
    """The ``other_config`` map of a task row."""
    value = json.loads(row["other_config"] or "{}")
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def request_cancel(store: Store, uuid: str) -> bool:
    """Mark a pending task ``cancelling``; whether it was pending (False: already cancelling
    or cancelled). OPERATION_NOT_ALLOWED for a task that ended otherwise."""
    row = store.get("task", uuid)
    if row["status"] in ("cancelling", "cancelled"):
        return False
    if row["status"] != "pending":
        raise ApiError(OPERATION_NOT_ALLOWED, f"task {uuid} is {row['status']}")
    store.update("task", uuid, {"status": "cancelling"})
    return True


def fail_unfinished(store: Store) -> list[str]:
    """End as failed every task an earlier run of the host left unfinished (its work died
    with that run); their uuids. Run at start, before serving."""
    error = ApiError(INTERNAL_ERROR, "the host stopped while the task ran; it was not finished")
    uuids = [row["uuid"] for status in UNFINISHED for row in store.all("task", status=status)]
    with store.change():
        for uuid in uuids:
            finish(store, uuid, error=error)
    return uuids


# What lives in memory


class Tasks:
    """The running operations of one host and the nursery of its ``Async.*`` calls."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._scopes: dict[str, set[trio.CancelScope]] = {}
        self._nursery: trio.Nursery | None = None

    @contextlib.contextmanager
    def cancellable(self, uuid: str) -> Iterator[trio.CancelScope]:
        """A cancel scope, not entered, that the cancellation of task ``uuid`` cancels while
        in this block: enter the block before the task can be cancelled (before its row is
        made or adopted), and the scope where the task's work runs."""
        scope = trio.CancelScope()
        self._scopes.setdefault(uuid, set()).add(scope)
        try:
            yield scope
        finally:
            scopes = self._scopes[uuid]
            scopes.discard(scope)
            if not scopes:
                del self._scopes[uuid]

    async def cancel(self, uuid: str) -> None:
        """``task.cancel``: the task's operation cancelled, and the task ``cancelling`` until
        the operation records that it stopped. An operation still waiting for its turn never
        runs; one already inside a database call ends as it would have."""
        for scope in self._scopes.get(uuid, ()):
            scope.cancel()
        await self.db.call(request_cancel, self.db.store, uuid)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the ``Async.*`` calls until cancelled; without it they fail INTERNAL_ERROR."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    @property
    def serving(self) -> bool:
        """Whether :meth:`serve` runs (``Async.*`` calls can start)."""
        return self._nursery is not None

    def start(self, uuid: str, call: Callable[[], Any]) -> None:
        """Run ``call`` (a database call: it runs inside one) as the work of the pending task
        ``uuid``, its outcome recorded; ApiError INTERNAL_ERROR when tasks are not served."""
        if self._nursery is None:
            raise ApiError(INTERNAL_ERROR, "Async calls are not served (Tasks.serve)")
        self._nursery.start_soon(self._run, uuid, call)

    def spawn(self, work: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run ``work(*args)`` in the background, beside the ``Async.*`` calls (a domain's
        watcher); its exceptions are logged. ApiError INTERNAL_ERROR when tasks are not
        served."""
        if self._nursery is None:
            raise ApiError(INTERNAL_ERROR, "background work is not served (Tasks.serve)")
        self._nursery.start_soon(self._background, work, args)

    async def _background(
        self, work: Callable[..., Awaitable[None]], args: tuple[Any, ...]
    ) -> None:
        try:
            await work(*args)
        except Exception:
            log.exception("background work %s failed", getattr(work, "__name__", work))

    def start_async(self, uuid: str, work: Callable[[str], Awaitable[Any]]) -> None:
        """Run the coroutine ``work(uuid)`` as the work of the pending task ``uuid``, its
        outcome recorded (ApiError as a failure, any other exception as INTERNAL_ERROR) and
        ``task.cancel`` cancelling it; ApiError INTERNAL_ERROR when tasks are not served."""
        if self._nursery is None:
            raise ApiError(INTERNAL_ERROR, "Async calls are not served (Tasks.serve)")
        self._nursery.start_soon(self._run_async, uuid, work)

    async def _run_async(self, uuid: str, work: Callable[[str], Awaitable[Any]]) -> None:
        outcome: tuple[Any, ApiError | None] | None = None
        with self.cancellable(uuid) as scope, scope:
            if not await self.db.call(begin, self.db.store, uuid):
                return
            try:
                outcome = (await work(uuid), None)
            except ApiError as e:
                outcome = (None, e)
            except Exception as e:
                log.exception("task %s failed", uuid)
                outcome = (None, ApiError(INTERNAL_ERROR, f"{type(e).__name__}: {e}"))
        with trio.CancelScope(shield=True):
            if scope.cancel_called and (outcome is None or outcome[1] is not None):
                await self.db.call(finish_cancelled, self.db.store, uuid)
            elif outcome is not None:
                await self.db.call(finish, self.db.store, uuid, *outcome)

    async def _run(self, uuid: str, call: Callable[[], Any]) -> None:
        with self.cancellable(uuid) as scope, scope:
            try:
                await self.db.call(self._call, uuid, call)
            except Exception:
                log.exception("task %s failed", uuid)
        if scope.cancelled_caught:  # cancelled while it waited for its turn
            with trio.CancelScope(shield=True):
                await self.db.call(finish_cancelled, self.db.store, uuid)

    def _call(self, uuid: str, call: Callable[[], Any]) -> None:
        if not begin(self.db.store, uuid):
            return
        try:
            result = call()
        except ApiError as e:
            finish(self.db.store, uuid, error=e)
        else:
            finish(self.db.store, uuid, result=result)
