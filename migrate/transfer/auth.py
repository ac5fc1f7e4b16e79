"""Who may use the HTTP transfer endpoints, as xapi decides it.

A request names its session with ``session_id`` in the query or in a cookie; or it carries
``Authorization: Basic`` credentials, for which a temporary session is logged in (and out again
when the transfer ends); credentials verified in the last minute are not hashed again.
Anything else is answered 401 with ``WWW-Authenticate: Basic``.
xapi also lets every query parameter come as a cookie: :func:`param` looks in both.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING

import trio

from migrate.http.errors import HTTPError
from migrate.http.routing import Request
from migrate.rpc import session as sessions
from migrate.rpc.codec import ApiError

if TYPE_CHECKING:
    from migrate.rpc.dispatch import Api

REALM = "xapi"
CHALLENGE = ("www-authenticate", f'Basic realm="{REALM}"')


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


def _unauthorized(message: str) -> HTTPError:
    return HTTPError(401, message, [CHALLENGE])


def _basic(request: Request) -> tuple[str, str] | None:
    header = request.header("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        raise _unauthorized(f"authorization scheme {scheme!r} not supported: use Basic")
    try:
        text = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _unauthorized("malformed Basic credentials") from None
    user, colon, password = text.partition(":")
    if not colon:
        raise _unauthorized("malformed Basic credentials: no ':' between user and password")
    return user, password


@asynccontextmanager
async def authenticated(api: Api, request: Request) -> AsyncIterator[str]:
    """The session ref the request acts in, for the duration of the block; HTTPError 401 if
    it has none that is valid. A session made from Basic credentials ends with the block."""
    session_id = param(request, "session_id")
    if session_id is not None:
        try:
            await api.store_call(sessions.check, api, session_id)
        except ApiError:
            raise _unauthorized("session_id is not a valid session") from None
        yield session_id
        return
    credentials = _basic(request)
    if credentials is None:
        raise _unauthorized("authentication needed: session_id, or Basic credentials")
    user, password = credentials
    try:
        ref = await api.store_call(_log_in, api, user, password)
    except ApiError:
        raise _unauthorized(f"wrong user name or password for {user!r}") from None
    try:
        yield ref
    finally:
        with trio.CancelScope(shield=True):
            await api.store_call(sessions.logout, api, ref)


def _log_in(api: Api, user: str, password: str) -> str:
    """A temporary session for Basic credentials (not hashed again when verified in the last
    minute); ApiError for wrong ones. In a worker thread, the RPC lock held."""
    if api.verified.recent(user, password):
        return sessions.open_session(api, user, "http")
    ref = sessions.login_with_password(api, user, password, "", "http")
    api.verified.remember(user, password)
    return ref
