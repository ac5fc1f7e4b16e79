"""Who may use the host's HTTP endpoints (disk transfers, VM save and restore, migration),
as xapi decides it.

A request names its session with ``session_id`` in the query or in a cookie; or it carries
``Authorization: Basic`` credentials, for which a temporary session is logged in (and out again
when the request ends) through the host's sessions (:mod:`migrate.host.sessions`: failed
logins slow their sender down, credentials verified in the last minute are not hashed again).
Anything else is answered 401 with ``WWW-Authenticate: Basic``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from migrate.host.errors import ApiError
from migrate.host.services import HostServices
from migrate.http.errors import HTTPError
from migrate.http.routing import Request, param

REALM = "xapi"
CHALLENGE = ("www-authenticate", f'Basic realm="{REALM}"')


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
async def authenticated(host: HostServices, request: Request) -> AsyncIterator[str]:
    """The session ref the request acts in, for the duration of the block; HTTPError 401 if
    it has none that is valid. A session made from Basic credentials ends with the block."""
    session_id = param(request, "session_id")
    if session_id is not None:
        try:
            await host.sessions.check(session_id)
        except ApiError:
            raise _unauthorized("session_id is not a valid session") from None
        yield session_id
        return
    credentials = _basic(request)
    if credentials is None:
        raise _unauthorized("authentication needed: session_id, or Basic credentials")
    user, password = credentials
    try:
        session = await host.sessions.login(user, password, "http", request.client)
    except ApiError:
        raise _unauthorized(f"wrong user name or password for {user!r}") from None
    try:
        yield session
    finally:
        with trio.CancelScope(shield=True):
            await host.sessions.logout(session)
