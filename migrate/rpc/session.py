"""XenAPI class ``session``: logging in with a password, logging out, the host of a session.

Logging in is a coroutine: the password check runs on the host's hashing threads and a client
whose logins failed waits before its next one (:mod:`migrate.host.sessions`); a session's ref
is ``OpaqueRef:<uuid>`` with a random uuid.
"""

from __future__ import annotations

from typing import Any

from migrate.formats.xapi import ref, ref_uuid
from migrate.host import sessions
from migrate.host.services import HostServices


async def login_with_password(
    host: HostServices,
    user: Any,
    password: Any,
    version: Any = "",
    originator: Any = "",
    *,
    client: str | None = None,
) -> str:
    """A new session for ``user``; SESSION_AUTHENTICATION_FAILED on wrong credentials."""
    return await host.sessions.login(user, password, originator, client)


def logout(host: HostServices, session: str) -> None:
    """End ``session``."""
    sessions.close_session(host.store, session)


def get_this_host(host: HostServices, session: str, this: str) -> str:
    """The host a session is on: this host."""
    if this != session:
        sessions.check(host.store, this)
    return ref(host.uuid)


def get_uuid(host: HostServices, session: str, this: str) -> str:
    """The uuid of a session."""
    sessions.check(host.store, this)
    return ref_uuid(this) or ""


METHODS = {
    "session.login_with_password": login_with_password,
    "session.logout": logout,
    "session.get_this_host": get_this_host,
    "session.get_uuid": get_uuid,
}
UNAUTHENTICATED = frozenset({"session.login_with_password"})
"""Calls that take no session."""
