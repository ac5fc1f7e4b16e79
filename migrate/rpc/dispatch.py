"""The XenAPI of one host: calls dispatched to the class modules, served over HTTP.

:class:`Dispatcher` checks what xapi checks before a call runs (the method exists, the
parameter count, the session) and turns any failure into an
:class:`~migrate.host.errors.ApiError`; :func:`register_rpc` serves it as XML-RPC on ``/``,
``/RPC2`` and ``/xmlrpc`` and as JSON-RPC on ``/jsonrpc``.

Three kinds of call: plain ones run as one database call (the session check included:
:class:`~migrate.host.database.Database`); coroutines (logging in, waiting for events,
cancelling a task) use the host's services themselves; ``Async.<name>`` (for the names a module
lists as ``ASYNC``) stores a pending task and runs the call as the host's task
(:class:`~migrate.host.tasks.Tasks`): a coroutine among them is told the task's uuid as
``task=`` if it takes one (to report progress; ``task.cancel`` cancels it).
"""

from __future__ import annotations

import inspect
import logging
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import trio

from migrate.formats.xapi import JSONRPC_PATH, XMLRPC_PATHS, ref
from migrate.host import sessions, tasks
from migrate.host.errors import (
    INTERNAL_ERROR,
    MESSAGE_METHOD_UNKNOWN,
    MESSAGE_PARAMETER_COUNT_MISMATCH,
    ApiError,
)
from migrate.host.services import HostServices
from migrate.http.exchange import Connection
from migrate.http.routing import Request, Router
from migrate.rpc import (
    accessors,
    codec,
    event,
    host,
    network,
    pif,
    pool,
    session,
    sr,
    task,
    vbd,
    vdi,
    vm,
)
from migrate.rpc.codec import Call, ProtocolError

log = logging.getLogger("xfer.rpc")

MAX_BODY = 16 << 20
"""Largest request body accepted (bytes)."""
PARSE_INLINE = 64 << 10
"""Bodies up to this size are decoded in the event loop; larger ones in a parsing thread (a
large body takes seconds to decode: a stall of every connection in the event loop)."""
ASYNC_PREFIX = "Async."
LOGIN = "session.login_with_password"
LIST_METHODS = "system.listMethods"

_MODULES = (session, host, pool, sr, vdi, vm, vbd, network, pif, task, event)


@dataclass(frozen=True)
class _Method:
    function: Callable[..., Any]
    authenticated: bool
    required: int
    """Parameters on the wire, the session included, without those that have defaults."""
    accepted: int
    awaitable: bool = False
    """A coroutine function: it uses the host's services itself."""
    wants_client: bool = False
    """It takes the caller's address as ``client=``."""
    wants_task: bool = False
    """A coroutine that takes the uuid of the task it runs as (``Async.``) as ``task=``."""
    task: str | None = None
    """For ``Async.<name>``: ``<name>``, run as a task."""


def _method(name: str, function: Callable[..., Any], unauthenticated: frozenset[str]) -> _Method:
    signature = inspect.signature(function).parameters.values()
    parameters = [p for p in list(signature)[1:] if p.kind is not p.KEYWORD_ONLY]  # after host
    required = sum(1 for p in parameters if p.default is inspect.Parameter.empty)
    return _Method(
        function,
        name not in unauthenticated,
        required,
        len(parameters),
        inspect.iscoroutinefunction(function),
        any(p.name == "client" and p.kind is p.KEYWORD_ONLY for p in signature),
        any(p.name == "task" and p.kind is p.KEYWORD_ONLY for p in signature),
    )


class Dispatcher:
    """The XenAPI of one host, over its services."""

    def __init__(self, host: HostServices) -> None:
        self.host = host
        self._methods: dict[str, _Method] = {}
        for module in _MODULES:
            unauthenticated: frozenset[str] = getattr(module, "UNAUTHENTICATED", frozenset())
            long_calls: frozenset[str] = getattr(module, "ASYNC", frozenset())
            for name, function in accessors.methods(module).items():
                method = _method(name, function, unauthenticated)
                self._methods[name] = method
                if name in long_calls:
                    self._methods[ASYNC_PREFIX + name] = replace(method, task=name)
        self._methods[LIST_METHODS] = _method(
            LIST_METHODS, self._list_methods, frozenset({LIST_METHODS})
        )

    def _list_methods(self, host: HostServices, session: Any = None) -> list[str]:
        """Every method name (a session, as the SDK passes one, is accepted and ignored)."""
        return self.methods()

    def methods(self) -> list[str]:
        """Every method name served, sorted."""
        return sorted(self._methods)

    def _entry(self, method: str, params: list[Any]) -> _Method:
        entry = self._methods.get(method)
        if entry is None:
            raise ApiError(MESSAGE_METHOD_UNKNOWN, method)
        if not entry.required <= len(params) <= entry.accepted:
            expected = entry.required if len(params) < entry.required else entry.accepted
            raise ApiError(MESSAGE_PARAMETER_COUNT_MISMATCH, method, expected, len(params))
        return entry

    def _failed(self, method: str, params: list[Any], client: str | None, e: Exception) -> ApiError:
        """The ApiError a call's exception ends as, logged."""
        if isinstance(e, ApiError):
            if method == LOGIN:
                log.info("failed login of %r from %s", params[0], client or "?")
            else:
                log.debug("%s from %s: %s", method, client or "?", e.description)
            return e
        log.error("%s from %s failed", method, client or "?", exc_info=e)
        return ApiError(INTERNAL_ERROR, f"{type(e).__name__}: {e}")

    def call(self, method: str, params: list[Any], client: str | None = None) -> Any:
        """The result of the plain (not a coroutine, not ``Async.``) ``method(*params)``;
        inside a database call. ApiError for every failure."""
        entry = self._entry(method, params)
        if entry.awaitable or entry.task is not None:
            raise ApiError(INTERNAL_ERROR, f"{method} must be awaited (Dispatcher.run)")
        try:
            if entry.authenticated:
                sessions.check(self.host.store, params[0])
            return entry.function(self.host, *params)
        except Exception as e:
            raise self._failed(method, params, client, e) from None

    async def run(self, method: str, params: list[Any], client: str | None = None) -> Any:
        """The result of ``method(*params)``, whatever kind of call; ApiError for every
        failure."""
        entry = self._entry(method, params)
        if entry.task is not None:
            return await self._start_task(entry.task, params, client)
        if not entry.awaitable:
            return await self.host.db.call(self.call, method, params, client)
        try:
            if entry.authenticated:
                await self.host.sessions.check(params[0])
            extra = {"client": client} if entry.wants_client else {}
            coroutine: Awaitable[Any] = entry.function(self.host, *params, **extra)
            result = await coroutine
        except Exception as e:
            raise self._failed(method, params, client, e) from None
        if method == LOGIN:
            log.info("login of %r from %s", params[0], client or "?")
        return result

    async def _start_task(self, name: str, params: list[Any], client: str | None) -> str:
        """``Async.<name>``: a pending task stored, ``name`` run as its work."""
        uuid = str(uuidlib.uuid4())

        def begin() -> None:  # inside a database call
            sessions.check(self.host.store, params[0])
            tasks.insert(self.host.store, uuid, params[0], ASYNC_PREFIX + name)

        try:
            if not self.host.tasks.serving:
                raise ApiError(INTERNAL_ERROR, "Async calls are not served (Tasks.serve)")
            await self.host.db.call(begin)
        except Exception as e:
            raise self._failed(ASYNC_PREFIX + name, params, client, e) from None
        entry = self._methods[name]
        if not entry.awaitable:
            self.host.tasks.start(uuid, lambda: self.call(name, params, client))
            return ref(uuid)

        async def work(task: str) -> Any:
            extra = {"task": task} if entry.wants_task else {}
            try:
                return await entry.function(self.host, *params, **extra)
            except Exception as e:
                raise self._failed(name, params, client, e) from None

        self.host.tasks.start_async(uuid, work)
        return ref(uuid)


async def _decode(host: HostServices, decode: Callable[[bytearray], Call], body: bytearray) -> Call:
    """``decode(body)``; a large body in a parsing thread, not in the event loop."""
    if len(body) <= PARSE_INLINE:
        return decode(body)
    return await trio.to_thread.run_sync(decode, body, limiter=host.threads.parsing)


def register_rpc(router: Router, dispatcher: Dispatcher) -> None:
    """Serve ``dispatcher``: XML-RPC by POST on ``/``, ``/RPC2``, ``/xmlrpc``, JSON-RPC on
    ``/jsonrpc``. Malformed requests get the protocol's error with status 200."""
    host_services = dispatcher.host

    async def xmlrpc(request: Request, conn: Connection) -> None:
        body = await conn.read_body(MAX_BODY)
        try:
            call = await _decode(host_services, codec.decode_xmlrpc, body)
        except ProtocolError as e:
            answer = codec.encode_xmlrpc_protocol_error(e)
        else:
            try:
                answer = codec.encode_xmlrpc(
                    await dispatcher.run(call.method, call.params, request.client)
                )
            except ApiError as e:
                answer = codec.encode_xmlrpc(error=e)
        await conn.respond(200, [("content-type", "text/xml")], answer)

    async def jsonrpc(request: Request, conn: Connection) -> None:
        body = await conn.read_body(MAX_BODY)
        try:
            call = await _decode(host_services, codec.decode_jsonrpc, body)
        except ProtocolError as e:
            answer = codec.encode_jsonrpc(None, error=e)
        else:
            try:
                result = await dispatcher.run(call.method, call.params, request.client)
                answer = codec.encode_jsonrpc(call.id, result)
            except ApiError as e:
                answer = codec.encode_jsonrpc(call.id, error=e)
        await conn.respond(200, [("content-type", "application/json")], answer)

    for path in XMLRPC_PATHS:
        router.add("POST", path, xmlrpc)
    router.add("POST", JSONRPC_PATH, jsonrpc)
