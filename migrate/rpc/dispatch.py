"""The XenAPI of one host: calls dispatched to the class modules, served over HTTP.

:class:`Api` checks what xapi checks before a call runs (the method exists, the parameter
count, the session) and turns any failure into an :class:`~migrate.rpc.codec.ApiError`;
:func:`register_rpc` serves it as XML-RPC on ``/``, ``/RPC2`` and ``/xmlrpc`` and as JSON-RPC on
``/jsonrpc``. Refs are ``OpaqueRef:<uuid>`` of the record.

Three kinds of call: plain ones run in a worker thread with :attr:`Api.lock` held (a
commit waits for the disk: its fsync took 0.5 ms here idle, 5 ms during an import, 120 ms
behind other writeback, time no connection should lose); coroutines (``event.from``,
``event.next``) take the lock themselves and wait for changes without it; ``Async.<name>``
(for the names a module lists as ``ASYNC``) stores a pending task and runs the call in the
nursery of :meth:`Api.serve_tasks`. After every call that moved the store's event clock, the
event waiters are woken.
"""

from __future__ import annotations

import inspect
import logging
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import trio

from migrate.http.exchange import Connection
from migrate.http.routing import Request, Router
from migrate.rpc import accessors, codec, event, host, network, pif, pool, session, sr, task, vdi
from migrate.rpc.codec import ApiError, ProtocolError
from migrate.state.store import NotFound, Store

log = logging.getLogger("xfer.rpc")

REF_PREFIX = "OpaqueRef:"
NULL_REF = "OpaqueRef:NULL"
MAX_BODY = 16 << 20
"""Largest request body accepted (bytes)."""
XMLRPC_PATHS = ("/", "/RPC2", "/xmlrpc")
JSONRPC_PATH = "/jsonrpc"

_MODULES = (session, host, pool, sr, vdi, network, pif, task, event)
T = TypeVar("T")
ASYNC_PREFIX = "Async."


@dataclass(frozen=True)
class _Method:
    function: Callable[..., Any]
    authenticated: bool
    required: int
    """Parameters on the wire, the session included, without those that have defaults."""
    accepted: int
    awaitable: bool = False
    """A coroutine function: it takes :attr:`Api.lock` itself, when it needs it."""
    task: str | None = None
    """For ``Async.<name>``: ``<name>``, run in a task."""


def _method(name: str, function: Callable[..., Any], unauthenticated: frozenset[str]) -> _Method:
    parameters = list(inspect.signature(function).parameters.values())[1:]  # after ``api``
    required = sum(1 for p in parameters if p.default is inspect.Parameter.empty)
    awaitable = inspect.iscoroutinefunction(function)
    return _Method(function, name not in unauthenticated, required, len(parameters), awaitable)


class Api:
    """The XenAPI of one host."""

    def __init__(self, store: Store, host_uuid: str) -> None:
        self.store = store
        self.host_uuid = host_uuid
        self.lock = trio.Lock()
        """Held by :meth:`run` around each call (event waits and queued tasks excepted), so
        that one call at a time uses the store, each from its worker thread. Other tasks that
        use the same store while the RPC is served must hold it too (the store is one SQLite
        connection) and call :meth:`notify` after a change: :meth:`store_call` does both."""
        self.verified = session.VerifiedCredentials()
        """Credentials verified in the last minute (HTTP Basic is not hashed every time)."""
        self.writing: dict[str, trio.Event] = {}
        """VDIs an import is writing, each with the event set when it ends: VDI.destroy and
        VDI.snapshot of them get VDI_IN_USE meanwhile, another import waits a little first."""
        self.events = event.EventState()
        """The event class's registrations and injections."""
        self._notified = store.generation()
        """The generation of the last change the waiters were told about."""
        self._changed = trio.Event()
        self._tasks: trio.Nursery | None = None
        self._methods: dict[str, _Method] = {}
        for module in _MODULES:
            unauthenticated: frozenset[str] = getattr(module, "UNAUTHENTICATED", frozenset())
            long_calls: frozenset[str] = getattr(module, "ASYNC", frozenset())
            for name, function in accessors.methods(module).items():
                method = _method(name, function, unauthenticated)
                self._methods[name] = method
                if name in long_calls:
                    self._methods[ASYNC_PREFIX + name] = replace(method, task=name)
        self._methods["system.listMethods"] = _method("system.listMethods", _list_methods, _SYSTEM)

    # Events and tasks

    def notify(self) -> None:
        """Wake the callers waiting for a change if the event clock moved since the last
        notification. Run after every call; whoever else changes the store while the RPC is
        served (holding :attr:`lock`) calls it after the change, in the trio thread."""
        generation = self.store.generation()
        if generation != self._notified:
            self._notified = generation
            self._changed.set()
            self._changed = trio.Event()

    async def store_call(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in a worker thread with :attr:`lock` held, the event waiters
        woken after: how trio code uses the store (a commit waits for the disk: 0.5 ms here
        idle, 5 ms during an import, 120 ms behind other writeback, time no connection should
        lose)."""
        async with self.lock:
            try:
                return await trio.to_thread.run_sync(function, *args)
            finally:
                self.notify()

    async def wait_for_change(self, generation: int, deadline: float) -> None:
        """Wait (not holding :attr:`lock`) until a change after ``generation`` was notified,
        or until ``deadline`` (trio time)."""
        with trio.move_on_at(deadline):
            while self._notified <= generation:
                await self._changed.wait()

    async def serve_tasks(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the calls of ``Async.<name>`` until cancelled: start it with
        ``await nursery.start(api.serve_tasks)`` before serving the RPC. Without it,
        ``Async.`` calls fail with INTERNAL_ERROR."""
        try:
            async with trio.open_nursery() as nursery:
                self._tasks = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._tasks = None

    # Dispatch

    def methods(self) -> list[str]:
        """Every method name served, sorted."""
        return sorted(self._methods)

    def _entry(self, method: str, params: list[Any]) -> _Method:
        entry = self._methods.get(method)
        if entry is None:
            raise ApiError("MESSAGE_METHOD_UNKNOWN", method)
        if not entry.required <= len(params) <= entry.accepted:
            expected = entry.required if len(params) < entry.required else entry.accepted
            raise ApiError("MESSAGE_PARAMETER_COUNT_MISMATCH", method, expected, len(params))
        return entry

    def _failed(self, method: str, params: list[Any], client: str | None, e: Exception) -> ApiError:
        """The ApiError a call's exception ends as, logged."""
        if isinstance(e, ApiError):
            if method == "session.login_with_password":
                log.info("failed login of %r from %s", params[0], client or "?")
            else:
                log.debug("%s from %s: %s", method, client or "?", e.description)
            return e
        log.error("%s from %s failed", method, client or "?", exc_info=e)
        return ApiError("INTERNAL_ERROR", f"{type(e).__name__}: {e}")

    def call(self, method: str, params: list[Any], client: str | None = None) -> Any:
        """The result of ``method(*params)`` for a plain (not a coroutine, not ``Async.``)
        method, :attr:`lock` being held; ApiError for every failure."""
        entry = self._entry(method, params)
        if entry.awaitable or entry.task is not None:
            raise ApiError("INTERNAL_ERROR", f"{method} must be awaited (Api.run)")
        try:
            if entry.authenticated:
                session.check(self, params[0])
            result = entry.function(self, *params)
        except Exception as e:
            raise self._failed(method, params, client, e) from None
        if method == "session.login_with_password":
            log.info("login of %r from %s", params[0], client or "?")
        return result

    async def run(self, method: str, params: list[Any], client: str | None = None) -> Any:
        """The result of ``method(*params)``, whatever kind of call: :attr:`lock` taken for
        as long as needed, the event waiters woken after a change; ApiError for every
        failure."""
        entry = self._entry(method, params)
        if entry.awaitable:
            async with self.lock:
                try:
                    if entry.authenticated:
                        session.check(self, params[0])
                except ApiError as e:
                    raise self._failed(method, params, client, e) from None
            coroutine: Awaitable[Any] = entry.function(self, *params)
            try:
                return await coroutine
            except Exception as e:
                raise self._failed(method, params, client, e) from None
        if entry.task is not None:
            return await self._start_task(entry.task, params, client)
        return await self.store_call(self.call, method, params, client)

    async def _start_task(self, name: str, params: list[Any], client: str | None) -> str:
        """``Async.<name>``: a pending task stored, ``name`` run in the tasks' nursery."""
        async with self.lock:
            nursery = self._tasks  # read with the lock: no checkpoint until start_soon
            try:
                session.check(self, params[0])
                if nursery is None:
                    raise ApiError("INTERNAL_ERROR", "Async calls are not served (serve_tasks)")
                uuid = task.start(self, params[0], ASYNC_PREFIX + name)
            except Exception as e:
                raise self._failed(ASYNC_PREFIX + name, params, client, e) from None
            finally:
                self.notify()
        nursery.start_soon(self._run_task, uuid, name, params, client)
        return self.ref(uuid)

    async def _run_task(self, uuid: str, name: str, params: list[Any], client: str | None) -> None:
        try:
            await self.store_call(self._task_call, uuid, name, params, client)
        except Exception:
            log.exception("task %s (%s) failed", uuid, name)

    def _task_call(self, uuid: str, name: str, params: list[Any], client: str | None) -> None:
        """The task ``uuid`` begun, its call ``name`` made, its outcome recorded; in a worker
        thread, :attr:`lock` held."""
        if not task.begin(self, uuid):
            return
        try:
            result = self.call(name, params, client)
        except ApiError as e:
            task.finish(self, uuid, error=e)
        else:
            task.finish(self, uuid, result=result)

    # Helpers for the class modules

    def ref(self, uuid: str) -> str:
        """The ref of the record ``uuid``."""
        return REF_PREFIX + uuid

    def uuid_of(self, cls: str, ref: Any) -> str:
        """The uuid a ref names, unchecked; HANDLE_INVALID when it is no ref at all."""
        if isinstance(ref, str) and ref.startswith(REF_PREFIX):
            uuid = ref[len(REF_PREFIX) :]
            try:
                if str(uuidlib.UUID(uuid)) == uuid:
                    return uuid
            except ValueError:
                pass
        raise ApiError("HANDLE_INVALID", cls, ref)

    def row(self, cls: str, ref: Any) -> dict[str, Any]:
        """The row of the record ``ref`` names; HANDLE_INVALID if there is none."""
        uuid = self.uuid_of(cls, ref)
        try:
            row = self.store.get(cls, uuid)
        except NotFound:
            raise ApiError("HANDLE_INVALID", cls, ref) from None
        if cls == "VDI" and row["state"] != "ready":
            raise ApiError("HANDLE_INVALID", cls, ref)
        return row

    def rows(self, cls: str) -> list[dict[str, Any]]:
        """The rows of every visible record of ``cls`` (VDIs: those ``ready``)."""
        if cls == "VDI":
            return self.store.all(cls, state="ready")
        return self.store.all(cls)

    def by_uuid(self, cls: str, uuid: Any) -> str:
        """The ref of the record ``uuid``; UUID_INVALID if there is none."""
        if isinstance(uuid, str):
            try:
                row = self.store.get(cls, uuid)
            except NotFound:
                row = None
            if row is not None and (cls != "VDI" or row["state"] == "ready"):
                return self.ref(uuid)
        raise ApiError("UUID_INVALID", cls, uuid)


def _list_methods(api: Api, session: Any = None) -> list[str]:
    """Every method name (a session, as the SDK passes one, is accepted and ignored)."""
    return api.methods()


_SYSTEM = frozenset({"system.listMethods"})


async def _run(api: Api, call: codec.Call, client: str | None) -> Any:
    return await api.run(call.method, call.params, client)


def register_rpc(router: Router, api: Api) -> None:
    """Serve ``api``: XML-RPC by POST on ``/``, ``/RPC2``, ``/xmlrpc``, JSON-RPC on
    ``/jsonrpc``. Malformed requests get the protocol's error with status 200."""

    async def xmlrpc(request: Request, conn: Connection) -> None:
        body = await conn.read_body(MAX_BODY)
        try:
            call = codec.decode_xmlrpc(body)
        except ProtocolError as e:
            answer = codec.encode_xmlrpc_protocol_error(e)
        else:
            try:
                answer = codec.encode_xmlrpc(await _run(api, call, request.client))
            except ApiError as e:
                answer = codec.encode_xmlrpc(error=e)
        await conn.respond(200, [("content-type", "text/xml")], answer)

    async def jsonrpc(request: Request, conn: Connection) -> None:
        body = await conn.read_body(MAX_BODY)
        try:
            call = codec.decode_jsonrpc(body)
        except ProtocolError as e:
            answer = codec.encode_jsonrpc(None, error=e)
        else:
            try:
                result = await _run(api, call, request.client)
                answer = codec.encode_jsonrpc(call.id, result)
            except ApiError as e:
                answer = codec.encode_jsonrpc(call.id, error=e)
        await conn.respond(200, [("content-type", "application/json")], answer)

    for path in XMLRPC_PATHS:
        router.add("POST", path, xmlrpc)
    router.add("POST", JSONRPC_PATH, jsonrpc)
