"""XenAPI class ``session``: logging in with a password, logging out, the host of a session.

Sessions live in the ``session`` table (no generation: they are not event-visible records);
a session's ref is ``OpaqueRef:<uuid>`` with a random uuid.
"""

from __future__ import annotations

import hmac
import secrets
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
VERIFIED_FOR = 60.0
"""Seconds credentials found right are taken again without the password hash."""
VERIFIED_MAX = 256
"""Credentials remembered at most (all forgotten when more come)."""


class VerifiedCredentials:
    """Credentials found right in the last :data:`VERIFIED_FOR` seconds, so that clients
    sending them with every request (HTTP Basic) are not made to wait for the password hash
    each time; kept as keyed digests, never as passwords."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._until: dict[bytes, float] = {}

    def _digest(self, user: str, password: str) -> bytes:
        return hmac.digest(self._key, f"{user}\0{password}".encode(), "sha256")

    def recent(self, user: str, password: str) -> bool:
        """Whether ``user`` and ``password`` were verified in the last minute."""
        return self._until.get(self._digest(user, password), 0.0) > time.monotonic()

    def remember(self, user: str, password: str) -> None:
        """Note that ``user`` and ``password`` were just verified."""
        if len(self._until) >= VERIFIED_MAX:
            self._until.clear()
        self._until[self._digest(user, password)] = time.monotonic() + VERIFIED_FOR


def login_with_password(
    api: Api, user: Any, password: Any, version: Any = "", originator: Any = ""
) -> str:
    """A new session for ``user``; SESSION_AUTHENTICATION_FAILED on wrong credentials."""
    if not isinstance(user, str) or not isinstance(password, str):
        raise ApiError("SESSION_AUTHENTICATION_FAILED", user, "Authentication failure")
    if not api.store.check_password(user, password):
        raise ApiError("SESSION_AUTHENTICATION_FAILED", user, "Authentication failure")
    return open_session(api, user, originator)


def open_session(api: Api, user: str, originator: Any = "") -> str:
    """A new session for ``user``, whose credentials the caller has checked; its ref."""
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
