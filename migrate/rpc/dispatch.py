"""The XenAPI of one host: calls dispatched to the class modules, served over HTTP.

:class:`Api` checks what xapi checks before a call runs (the method exists, the parameter
count, the session) and turns any failure into an :class:`~migrate.rpc.codec.ApiError`;
:func:`register_rpc` serves it as XML-RPC on ``/``, ``/RPC2`` and ``/xmlrpc`` and as JSON-RPC on
``/jsonrpc``. Refs are ``OpaqueRef:<uuid>`` of the record.
"""

from __future__ import annotations

import inspect
import logging
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import trio

from migrate.http.server import Connection, Request, Router
from migrate.rpc import codec, host, network, pif, session, sr, task, vdi
from migrate.rpc.codec import ApiError, ProtocolError
from migrate.state.store import NotFound, Store

log = logging.getLogger("xfer.rpc")

REF_PREFIX = "OpaqueRef:"
NULL_REF = "OpaqueRef:NULL"
MAX_BODY = 16 << 20
"""Largest request body accepted (bytes)."""
XMLRPC_PATHS = ("/", "/RPC2", "/xmlrpc")
JSONRPC_PATH = "/jsonrpc"

_MODULES = (session, host, sr, vdi, network, pif, task)


@dataclass(frozen=True)
class _Method:
    function: Callable[..., Any]
    authenticated: bool
    blocking: bool
    required: int
    """Parameters on the wire, the session included, without those that have defaults."""
    accepted: int


def _method(name: str, function: Callable[..., Any], unauthenticated: frozenset[str]) -> _Method:
    parameters = list(inspect.signature(function).parameters.values())[1:]  # after ``api``
    required = sum(1 for p in parameters if p.default is inspect.Parameter.empty)
    return _Method(function, name not in unauthenticated, False, required, len(parameters))


class Api:
    """The XenAPI of one host."""

    def __init__(self, store: Store, host_uuid: str) -> None:
        self.store = store
        self.host_uuid = host_uuid
        self.lock = trio.Lock()
        """Held by :func:`register_rpc` around each call, so that one call at a time uses the
        store, also when a blocking call runs in a worker thread. Other tasks that use the same
        store while the RPC is served must hold it too (the store is one SQLite connection)."""
        self._methods: dict[str, _Method] = {}
        for module in _MODULES:
            unauthenticated: frozenset[str] = getattr(module, "UNAUTHENTICATED", frozenset())
            blocking: frozenset[str] = getattr(module, "BLOCKING", frozenset())
            for name, function in module.METHODS.items():
                method = _method(name, function, unauthenticated)
                self._methods[name] = replace(method, blocking=name in blocking)
        self._methods["system.listMethods"] = _method("system.listMethods", _list_methods, _SYSTEM)

    # Dispatch

    def methods(self) -> list[str]:
        """Every method name served, sorted."""
        return sorted(self._methods)

    def blocking(self, method: str) -> bool:
        """Whether ``method`` does file I/O or heavy work (run it in a worker thread)."""
        entry = self._methods.get(method)
        return entry is not None and entry.blocking

    def call(self, method: str, params: list[Any], client: str | None = None) -> Any:
        """The result of ``method(*params)``; ApiError for every failure."""
        entry = self._methods.get(method)
        if entry is None:
            raise ApiError("MESSAGE_METHOD_UNKNOWN", method)
        if not entry.required <= len(params) <= entry.accepted:
            expected = entry.required if len(params) < entry.required else entry.accepted
            raise ApiError("MESSAGE_PARAMETER_COUNT_MISMATCH", method, expected, len(params))
        try:
            if entry.authenticated:
                session.check(self, params[0])
            result = entry.function(self, *params)
        except ApiError as e:
            if method == "session.login_with_password":
                log.info("failed login of %r from %s", params[0], client or "?")
            else:
                log.debug("%s from %s: %s", method, client or "?", e.description)
            raise
        except Exception as e:
            log.exception("%s from %s failed", method, client or "?")
            raise ApiError("INTERNAL_ERROR", f"{type(e).__name__}: {e}") from None
        if method == "session.login_with_password":
            log.info("login of %r from %s", params[0], client or "?")
        return result

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


def _list_methods(api: Api) -> list[str]:
    return api.methods()


_SYSTEM = frozenset({"system.listMethods"})


async def _run(api: Api, call: codec.Call, client: str | None) -> Any:
    async with api.lock:
        if api.blocking(call.method):
            return await trio.to_thread.run_sync(api.call, call.method, call.params, client)
        return api.call(call.method, call.params, client)


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
