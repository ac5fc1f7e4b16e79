"""Requests and where they go: the :class:`Request` head handlers see (target split into a
decoded path and query, the client's canonical address) and the :class:`Router` that picks a
handler by method and path, answering 404 for an unknown path and 405 with ``Allow`` for a
method the path does not take."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

import h11
import trio

from migrate.addresses import AddressError, parse_host
from migrate.http.errors import HTTPError

if TYPE_CHECKING:
    from migrate.http.exchange import Connection

Handler = Callable[["Request", "Connection"], Awaitable[None]]
"""``async def handler(request, conn) -> None``; it answers through ``conn``."""


@dataclass(frozen=True)
class Request:
    """A request head: ``path`` percent-decoded, ``query`` as lists, header names lower case."""

    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: list[tuple[str, str]]
    client: str | None = None
    """The peer's canonical address (IPv4-mapped IPv6 shown as IPv4), None if unknown."""
    http_version: str = "1.1"

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (any case), repeated fields joined with ``, ``."""
        key = name.lower()
        values = [value for field, value in self.headers if field == key]
        return ", ".join(values) if values else None

    @classmethod
    def from_h11(cls, event: h11.Request, client: str | None = None) -> Request:
        """The request h11 parsed, its bytes decoded as Latin-1 (never fails)."""
        target = event.target.decode("latin-1")
        path, query = split_target(target)
        return cls(
            method=event.method.decode("latin-1"),
            target=target,
            path=path,
            query=query,
            headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers],
            client=client,
            http_version=event.http_version.decode("latin-1"),
        )


def split_target(target: str) -> tuple[str, dict[str, list[str]]]:
    """The percent-decoded path and the query parameters of a request target."""
    if target.startswith("/"):
        raw_path, _, raw_query = target.partition("?")
    elif target == "*":
        return "*", {}
    else:  # absolute form, ``http://host/path?query``
        parts = urlsplit(target)
        raw_path, raw_query = parts.path or "/", parts.query
    return unquote(raw_path, errors="replace"), parse_qs(raw_query, keep_blank_values=True)


def client_address(sockaddr: object) -> str | None:
    """The canonical text of a peer's socket address (``::ffff:a.b.c.d`` becomes ``a.b.c.d``)."""
    if not (isinstance(sockaddr, tuple) and sockaddr and isinstance(sockaddr[0], str)):
        return None
    try:
        return parse_host(sockaddr[0]).address
    except AddressError:
        return sockaddr[0]


def peer_address(stream: trio.SocketStream) -> str | None:
    """The canonical address of the peer of ``stream`` (:func:`client_address`), None if the
    socket cannot tell."""
    try:
        return client_address(stream.socket.getpeername())
    except OSError:
        return None


def cookies(request: Request) -> dict[str, str]:
    """The request's cookies by name (malformed ones ignored)."""
    jar: SimpleCookie = SimpleCookie()
    for field, value in request.headers:
        if field == "cookie":
            try:
                jar.load(value)
            except CookieError:
                continue
    return {name: morsel.value for name, morsel in jar.items()}


def param(request: Request, name: str) -> str | None:
    """Parameter ``name`` from the query, else from a cookie; HTTPError 400 if repeated."""
    values = request.query.get(name)
    if values:
        if len(set(values)) > 1:
            raise HTTPError(400, f"parameter {name} given {len(values)} times")
        return values[0]
    return cookies(request).get(name)


class Router:
    """Handlers by method and path; a trailing slash is ignored and HEAD falls back to GET.
    A path is routed as itself, else as the longest prefix routed with :meth:`add_prefix`
    that it continues (``/a/b`` under ``/a``)."""

    def __init__(self) -> None:
        self._routes: dict[str, dict[str, Handler]] = {}
        self._prefixes: dict[str, dict[str, Handler]] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        """Route ``method path`` to ``handler``."""
        self._routes.setdefault(_route_path(path), {})[method.upper()] = handler

    def add_prefix(self, method: str, prefix: str, handler: Handler) -> None:
        """Route ``method`` on every path below ``prefix`` (``prefix/anything``) to
        ``handler``, which reads the rest of the path from the request."""
        self._prefixes.setdefault(_route_path(prefix), {})[method.upper()] = handler

    def _handlers(self, path: str) -> dict[str, Handler] | None:
        routed = _route_path(path)
        handlers = self._routes.get(routed)
        if handlers is not None:
            return handlers
        below = [p for p in self._prefixes if routed.startswith(p.rstrip("/") + "/")]
        return self._prefixes[max(below, key=len)] if below else None

    def allowed(self, path: str) -> list[str]:
        """The methods ``path`` answers, sorted (HEAD included wherever GET is)."""
        methods = set(self._handlers(path) or {})
        if "GET" in methods:
            methods.add("HEAD")
        return sorted(methods)

    def resolve(self, method: str, path: str) -> Handler:
        """The handler for a request; HTTPError 404 for an unknown path, 405 with ``Allow``."""
        handlers = self._handlers(path)
        if handlers is None:
            raise HTTPError(404, f"no resource at {path}")
        handler = handlers.get(method) or (handlers.get("GET") if method == "HEAD" else None)
        if handler is None:
            allow = ", ".join(self.allowed(path))
            raise HTTPError(405, f"{method} not allowed on {path}", [("allow", allow)])
        return handler


def _route_path(path: str) -> str:
    return path.rstrip("/") or "/"
