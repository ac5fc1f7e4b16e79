"""XenAPI class ``session``: logging in with a password, logging out, the host of a session.

Sessions live in the ``session`` table (no generation: they are not event-visible records);
a session's ref is ``OpaqueRef:<uuid>`` with a random uuid.
"""

from __future__ import annotations

import time
import uuid as uuidlib
from typing import TYPE_CHECKING, Any

from migrate.rpc.codec import ApiError

if TYPE_CHECKING:
    from migrate.rpc.dispatch import Api

TOUCH_EVERY = 60.0
"""Seconds between two writes of a session's ``last_active`` (not one write per call)."""
IDLE_LIMIT = 24 * 3600.0
"""Seconds of inactivity after which a session is invalid (and removed at the next login)."""


def login_with_password(
    api: Api, user: Any, password: Any, version: Any = "", originator: Any = ""
) -> str:
    """A new session for ``user``; SESSION_AUTHENTICATION_FAILED on wrong credentials."""
    if not isinstance(user, str) or not isinstance(password, str):
        raise ApiError("SESSION_AUTHENTICATION_FAILED", user, "Authentication failure")
    if not api.store.check_password(user, password):
        raise ApiError("SESSION_AUTHENTICATION_FAILED", user, "Authentication failure")
    session_uuid = str(uuidlib.uuid4())
    ref = api.ref(session_uuid)
    now = time.time()
    with api.store.change():
        api.store.db.execute("DELETE FROM session WHERE last_active < ?", (now - IDLE_LIMIT,))
        api.store.db.execute(
            "INSERT INTO session (ref, uuid, user, originator, created, last_active) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (ref, session_uuid, user, str(originator or ""), now, now),
        )
    return ref


def check(api: Api, ref: Any) -> None:
    """SESSION_INVALID unless ``ref`` is a live session; notes its activity."""
    row = None
    if isinstance(ref, str):
        row = api.store.db.execute(
            "SELECT last_active FROM session WHERE ref = ?", (ref,)
        ).fetchone()
    now = time.time()
    if row is None or now - row["last_active"] > IDLE_LIMIT:
        raise ApiError("SESSION_INVALID", ref)
    if now - row["last_active"] > TOUCH_EVERY:
        api.store.db.execute("UPDATE session SET last_active = ? WHERE ref = ?", (now, ref))


def logout(api: Api, session: str) -> None:
    """End ``session``."""
    with api.store.change():
        api.store.db.execute("DELETE FROM session WHERE ref = ?", (session,))


def get_this_host(api: Api, session: str, this: str) -> str:
    """The host a session is on: this host."""
    if this != session:
        check(api, this)
    return api.ref(api.host_uuid)


def get_uuid(api: Api, session: str, this: str) -> str:
    """The uuid of a session."""
    check(api, this)
    return this.removeprefix("OpaqueRef:")


METHODS = {
    "session.login_with_password": login_with_password,
    "session.logout": logout,
    "session.get_this_host": get_this_host,
    "session.get_uuid": get_uuid,
}
UNAUTHENTICATED = frozenset({"session.login_with_password"})
"""Calls that take no session."""
BLOCKING = frozenset({"session.login_with_password"})
"""Calls run in a worker thread (PBKDF2 takes a tenth of a second)."""
