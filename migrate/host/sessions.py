"""Sessions and authentication: logging in with a password (XenAPI and HTTP Basic alike),
checking a session, logging out.

A password check is a PBKDF2 hash: a tenth of a second of CPU and more. It runs in a worker
thread of its own kind (:mod:`migrate.host.threads`), never inside a database call, so that
wrong passwords do not queue every other call behind them. Failed logins slow their sender
down: after :data:`FREE_FAILURES` failures from a client, each attempt from it waits twice as
long as the one before, up to :data:`MAX_DELAY`, and one client has one attempt in progress at
a time. A client is its address, or its /64 for IPv6 (``addresses.client_network``).
Credentials verified in the last minute are not hashed again (HTTP Basic sends them with every
request).
"""

from __future__ import annotations

import hmac
import secrets
import time
import uuid as uuidlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import trio

from migrate.addresses import client_network
from migrate.formats.xapi import ref
from migrate.host.database import Database
from migrate.host.errors import SESSION_AUTHENTICATION_FAILED, SESSION_INVALID, ApiError
from migrate.host.threads import Threads
from migrate.state import credentials
from migrate.state.store import Store

TOUCH_EVERY = 60.0
"""Seconds between two writes of a session's activity (not one write per call)."""
IDLE_LIMIT = 24 * 3600.0
"""Seconds of inactivity after which a session is invalid (and removed at the next login)."""
VERIFIED_FOR = 60.0
"""Seconds credentials found right are taken again without the password hash."""
VERIFIED_MAX = 256
"""Credentials remembered at most (all forgotten when more come)."""
FREE_FAILURES = 2
"""Failed logins of a client before its attempts are delayed."""
FIRST_DELAY = 0.5
MAX_DELAY = 30.0
"""Longest wait imposed on a client's next attempt (seconds)."""
FORGET_AFTER = 600.0
"""Seconds after its last failure that a client's failures are forgotten."""
CLIENTS_MAX = 10_000
"""Clients whose failures are remembered at most (the oldest forgotten first)."""


# Rows (inside a database call)


def open_session(store: Store, user: str, originator: Any = "") -> str:
    """A new session for ``user``, whose credentials the caller has checked; its ref."""
    session_uuid = str(uuidlib.uuid4())
    session_ref = ref(session_uuid)
    now = time.time()
    with store.change():
        store.close_sessions_before(now - IDLE_LIMIT)
        store.open_session(session_ref, session_uuid, user, str(originator or ""), now)
    return session_ref


def check(store: Store, session: Any) -> None:
    """SESSION_INVALID unless ``session`` is a live session's ref; notes its activity."""
    last = store.session_activity(session) if isinstance(session, str) else None
    now = time.time()
    if last is None or now - last > IDLE_LIMIT:
        raise ApiError(SESSION_INVALID, session)
    if now - last > TOUCH_EVERY:
        store.touch_session(session, now)


def close_session(store: Store, session: str) -> None:
    """End ``session``."""
    with store.change():
        store.close_session(session)


# Memory


class VerifiedCredentials:
    """Credentials found right in the last :data:`VERIFIED_FOR` seconds, kept as keyed
    digests, never as passwords."""

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


@dataclass
class _Failures:
    count: int
    last: float
    turn: trio.Lock


class LoginThrottle:
    """Failed logins by client, and the wait each client's next attempt owes."""

    def __init__(self) -> None:
        self._clients: OrderedDict[str, _Failures] = OrderedDict()

    def _entry(self, key: str) -> _Failures:
        now = trio.current_time()
        entry = self._clients.get(key)
        if entry is None or (now - entry.last > FORGET_AFTER and not entry.turn.locked()):
            entry = _Failures(0, now, trio.Lock())
            self._clients[key] = entry
            while len(self._clients) > CLIENTS_MAX:
                self._clients.popitem(last=False)
        self._clients.move_to_end(key)
        return entry

    def delay(self, key: str) -> float:
        """Seconds the next attempt from ``key`` waits."""
        entry = self._clients.get(key)
        if entry is None or entry.count < FREE_FAILURES:
            return 0.0
        return min(MAX_DELAY, FIRST_DELAY * 2 ** (entry.count - FREE_FAILURES))

    def turn(self, key: str) -> trio.Lock:
        """The lock one attempt of ``key`` holds at a time."""
        return self._entry(key).turn

    def failed(self, key: str) -> None:
        """Count a failed attempt of ``key``."""
        entry = self._entry(key)
        entry.count += 1
        entry.last = trio.current_time()

    def succeeded(self, key: str) -> None:
        """Forget ``key``'s failures."""
        entry = self._entry(key)
        entry.count = 0


class Sessions:
    """Logging in and out, and checking sessions, on one host."""

    def __init__(self, db: Database, threads: Threads) -> None:
        self.db = db
        self.threads = threads
        self.verified = VerifiedCredentials()
        self.throttle = LoginThrottle()

    async def login(self, user: Any, password: Any, originator: Any, client: str | None) -> str:
        """A new session for ``user``; SESSION_AUTHENTICATION_FAILED on wrong credentials
        (after the wait the client's earlier failures impose)."""
        if not isinstance(user, str) or not isinstance(password, str):
            raise ApiError(SESSION_AUTHENTICATION_FAILED, user, "Authentication failure")
        key = client_network(client)
        async with self.throttle.turn(key):
            await trio.sleep(self.throttle.delay(key))
            if not await self._verify(user, password):
                self.throttle.failed(key)
                raise ApiError(SESSION_AUTHENTICATION_FAILED, user, "Authentication failure")
            self.throttle.succeeded(key)
        return await self.db.call(open_session, self.db.store, user, originator)

    async def _verify(self, user: str, password: str) -> bool:
        if self.verified.recent(user, password):
            return True
        credential = await self.db.call(self.db.store.credential, user)
        right = await trio.to_thread.run_sync(
            credentials.verify, credential, password, limiter=self.threads.hashing
        )
        if right:
            self.verified.remember(user, password)
        return bool(right)

    async def check(self, session: Any) -> None:
        """SESSION_INVALID unless ``session`` is live."""
        await self.db.call(check, self.db.store, session)

    async def logout(self, session: str) -> None:
        """End ``session``."""
        await self.db.call(close_session, self.db.store, session)
