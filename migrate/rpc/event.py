"""XenAPI class ``event``: every change of every record, from the store's event clock.

A token is the store's generation as a decimal string: ``event.from`` answers the changes of
the records of the wanted classes after it (``mod`` with a snapshot, ``del`` for a tombstone;
``add`` only in the answer to the empty token, which is every current record), waiting up to
its timeout for one. ``event.register``/``event.next`` are the legacy interface: a session's
registered classes and the generation it has seen so far, kept in memory. ``event.inject``
moves a record to a new generation so that it shows up as ``mod``.

The waiting calls are coroutines: they hold :attr:`Api.lock` only to read the store and wait
for :meth:`Api.wait_for_change` without it, so other calls go on meanwhile.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from migrate.rpc import host, network, pif, pool, sr, task, vdi
from migrate.rpc.codec import ApiError
from migrate.state.store import TABLES, NotFound

if TYPE_CHECKING:
    from migrate.rpc.dispatch import Api

MAX_TIMEOUT = 600.0
"""Longest wait of one ``event.from`` (seconds), whatever its timeout."""
NEXT_WAIT = 30.0
"""Longest wait of one ``event.next``, after which it answers an empty list."""

RECORDS: dict[str, Callable[[Api, dict[str, Any]], dict[str, Any]]] = {
    "host": host.record,
    "network": network.record,
    "PIF": pif.record,
    "SR": sr.record,
    "VDI": vdi.record,
    "task": task.record,
}
"""Stored classes and how their rows become records."""
CLASSES = {name.lower(): name for name in (*RECORDS, "pool")}
"""Lower-case class name (as events carry it) -> XenAPI class."""


@dataclass
class Registration:
    """A session's ``event.register`` classes and the generation ``event.next`` reached."""

    classes: set[str]
    generation: int


@dataclass
class EventState:
    """What the event class keeps in memory: registrations and injections into the pool
    (which has no row of its own)."""

    registrations: dict[str, Registration] = field(default_factory=dict)
    pool_generation: int = 0
    """Generation of the last ``event.inject`` of the pool."""


@dataclass(frozen=True)
class _Change:
    cls: str
    uuid: str
    generation: int
    deleted: bool


def _classes(classes: Any) -> set[str]:
    """The XenAPI classes a list of (any case) names or ``*`` asks for; unknown names are
    left out, as xapi does."""
    if not isinstance(classes, list):
        raise ApiError("FIELD_TYPE_ERROR", "classes")
    if "*" in classes:
        return set(CLASSES.values())
    return {CLASSES[c.lower()] for c in classes if isinstance(c, str) and c.lower() in CLASSES}


def _token(token: Any) -> int | None:
    """The generation of a token; None for the empty token."""
    if token == "":
        return None
    if isinstance(token, str) and token.isascii() and token.isdigit():
        return int(token)
    raise ApiError("EVENT_FROM_TOKEN_PARSE_FAILURE", token)


def _timeout(timeout: Any) -> float:
    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        raise ApiError("FIELD_TYPE_ERROR", "timeout") from None
    if math.isnan(seconds):
        raise ApiError("FIELD_TYPE_ERROR", "timeout")
    return min(max(seconds, 0.0), MAX_TIMEOUT)


def _event(api: Api, change: _Change, operation: str) -> dict[str, Any] | None:
    """The event of one change; None for a VDI that is not ready (not visible)."""
    event: dict[str, Any] = {
        "id": change.generation,
        "timestamp": f"{time.time():.6f}",
        "class": change.cls.lower(),
        "operation": "del" if change.deleted else operation,
        "ref": api.ref(change.uuid),
    }
    if change.deleted:
        return event
    if change.cls == "pool":
        event["snapshot"] = pool.record(api)
        return event
    try:
        row = api.store.get(change.cls, change.uuid)
    except NotFound:
        return None
    if change.cls == "VDI" and row["state"] != "ready":
        return None
    event["snapshot"] = RECORDS[change.cls](api, row)
    return event


def _changes(api: Api, classes: set[str], since: int) -> list[dict[str, Any]]:
    """The events of the records of ``classes`` changed after generation ``since``."""
    changes = [
        _Change(c.cls, c.uuid, c.generation, c.deleted)
        for c in api.store.changes_since(since)
        if c.cls in classes
    ]
    if "pool" in classes and api.events.pool_generation > since:
        changes.append(_Change("pool", pool.pool_uuid(api), api.events.pool_generation, False))
        changes.sort(key=lambda c: c.generation)
    events = (_event(api, change, "mod") for change in changes)
    return [e for e in events if e is not None]


def _snapshot(api: Api, classes: set[str]) -> list[dict[str, Any]]:
    """An ``add`` event for every current record of ``classes``."""
    events: list[dict[str, Any]] = []
    for cls in sorted(classes):
        if cls == "pool":
            rows: list[dict[str, Any]] = [
                {"uuid": pool.pool_uuid(api), "generation": api.events.pool_generation}
            ]
        else:
            rows = api.store.all(cls)
        for row in rows:
            event = _event(api, _Change(cls, row["uuid"], row["generation"], False), "add")
            if event is not None:
                events.append(event)
    return events


def _counts(api: Api, classes: set[str]) -> dict[str, int]:
    """How many records of each class there are (``valid_ref_counts``)."""
    counts = {}
    for cls in classes:
        if cls == "pool":
            counts["pool"] = 1
        else:
            where = {"state": "ready"} if cls == "VDI" else {}
            table = TABLES[cls]
            clause = " AND ".join(f"{name} = ?" for name in where) or "1"
            row = api.store.db.execute(
                f"SELECT count(*) FROM {table} WHERE {clause}", list(where.values())
            ).fetchone()
            counts[cls.lower()] = int(row[0])
    return counts


async def from_(api: Api, session: str, classes: Any, token: Any, timeout: Any) -> dict[str, Any]:
    """The changes of the records of ``classes`` after ``token`` (every record for the empty
    token), waiting up to ``timeout`` seconds for one: ``{"events", "valid_ref_counts",
    "token"}``. The answer's token is where the next call goes on from."""
    wanted = _classes(classes)
    since = _token(token)
    deadline = trio.current_time() + _timeout(timeout)
    while True:
        async with api.lock:
            generation = api.store.generation()
            events = _snapshot(api, wanted) if since is None else _changes(api, wanted, since)
            if events or since is None or trio.current_time() >= deadline:
                return {
                    "events": events,
                    "valid_ref_counts": _counts(api, wanted),
                    "token": str(max(generation, since or 0)),
                }
        # nothing wanted changed up to ``generation``: wait (without the lock) for more
        since = max(generation, since)
        await api.wait_for_change(since, deadline)


def register(api: Api, session: str, classes: Any) -> None:
    """Add ``classes`` to those whose changes ``event.next`` reports to this session, from
    now on."""
    wanted = _classes(classes)
    registrations = api.events.registrations
    for ref in list(registrations):  # forget the sessions that are gone
        if api.store.db.execute("SELECT 1 FROM session WHERE ref = ?", (ref,)).fetchone() is None:
            del registrations[ref]
    registration = registrations.get(session)
    if registration is None:
        registrations[session] = Registration(wanted, api.store.generation())
    else:
        registration.classes |= wanted


def unregister(api: Api, session: str, classes: Any) -> None:
    """Stop reporting ``classes`` to this session."""
    registration = api.events.registrations.get(session)
    if registration is None:
        return
    registration.classes -= _classes(classes)
    if not registration.classes:
        del api.events.registrations[session]


async def next_(api: Api, session: str) -> list[dict[str, Any]]:
    """The changes of the registered classes since the last ``event.next`` (or the
    registration), waiting for one (an empty list after :data:`NEXT_WAIT` seconds)."""
    deadline = trio.current_time() + NEXT_WAIT
    while True:
        async with api.lock:
            registration = api.events.registrations.get(session)
            if registration is None:
                raise ApiError("SESSION_NOT_REGISTERED", session)
            generation = api.store.generation()
            events = _changes(api, registration.classes, registration.generation)
            registration.generation = max(generation, registration.generation)
            if events or trio.current_time() >= deadline:
                return events
            since = registration.generation
        await api.wait_for_change(since, deadline)


def inject(api: Api, session: str, cls: Any, ref: Any) -> str:
    """Make the record ``ref`` of ``cls`` change (a ``mod`` event); the token of the change."""
    name = CLASSES.get(cls.lower()) if isinstance(cls, str) else None
    if name is None:
        raise ApiError("HANDLE_INVALID", cls, ref)
    if name == "pool":
        pool.check(api, ref)
        uuid = pool.pool_uuid(api)
    else:
        uuid = str(api.row(name, ref)["uuid"])
    with api.store.change() as generation:
        if name == "pool":
            api.events.pool_generation = generation
        else:
            api.store.db.execute(
                f"UPDATE {TABLES[name]} SET generation = ? WHERE uuid = ?", (generation, uuid)
            )
    return str(generation)


METHODS: dict[str, Callable[..., Any]] = {
    "event.from": from_,
    # ``from`` is a Python keyword: the XenAPI SDK's users call ``session.xenapi.event_from``
    "event_from": from_,
    "event.register": register,
    "event.unregister": unregister,
    "event.next": next_,
    "event.inject": inject,
}
