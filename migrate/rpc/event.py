"""XenAPI class ``event``: every change of every record, from the store's event clock.

A token is the store's generation as a decimal string: ``event.from`` answers the changes of
the records of the wanted classes after it (``mod`` with a snapshot, ``del`` for a tombstone;
``add`` only in the answer to the empty token, which is every current record), waiting up to
its timeout for one. ``event.register``/``event.next`` are the legacy interface: a session's
registered classes and the generation it has seen so far, kept in memory. ``event.inject``
moves a record to a new generation so that it shows up as ``mod``.

The waiting calls are coroutines: they read the store in database calls and wait for the
host's change feed (:mod:`migrate.host.changes`) holding nothing, so other calls go on
meanwhile. Subscriptions (``event.register``) are the feed's, read and written only inside
database calls.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from migrate.formats.xapi import ref
from migrate.host.changes import Subscription
from migrate.host.errors import (
    EVENT_FROM_TOKEN_PARSE_FAILURE,
    FIELD_TYPE_ERROR,
    HANDLE_INVALID,
    SESSION_NOT_REGISTERED,
    ApiError,
)
from migrate.host.services import HostServices
from migrate.rpc import host, network, pif, pool, refs, sr, task, vbd, vdi, vm
from migrate.state.store import NotFound

MAX_TIMEOUT = 600.0
"""Longest wait of one ``event.from`` (seconds), whatever its timeout."""
NEXT_WAIT = 30.0
"""Longest wait of one ``event.next``, after which it answers an empty list."""

RECORDS: dict[str, Callable[[HostServices, dict[str, Any]], dict[str, Any]]] = {
    "host": host.record,
    "network": network.record,
    "PIF": pif.record,
    "SR": sr.record,
    "VDI": vdi.record,
    "VM": vm.record,
    "VBD": vbd.record,
    "task": task.record,
}
"""Stored classes and how their rows become records."""
CLASSES = {name.lower(): name for name in (*RECORDS, "pool")}
"""Lower-case class name (as events carry it) -> XenAPI class."""


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
        raise ApiError(FIELD_TYPE_ERROR, "classes")
    if "*" in classes:
        return set(CLASSES.values())
    return {CLASSES[c.lower()] for c in classes if isinstance(c, str) and c.lower() in CLASSES}


def _token(token: Any) -> int | None:
    """The generation of a token; None for the empty token."""
    if token == "":
        return None
    if isinstance(token, str) and token.isascii() and token.isdigit():
        return int(token)
    raise ApiError(EVENT_FROM_TOKEN_PARSE_FAILURE, token)


def _timeout(timeout: Any) -> float:
    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        raise ApiError(FIELD_TYPE_ERROR, "timeout") from None
    if math.isnan(seconds):
        raise ApiError(FIELD_TYPE_ERROR, "timeout")
    return min(max(seconds, 0.0), MAX_TIMEOUT)


def _event(host: HostServices, change: _Change, operation: str) -> dict[str, Any] | None:
    """The event of one change; None for a VDI that is not ready (not visible)."""
    event: dict[str, Any] = {
        "id": change.generation,
        "timestamp": f"{time.time():.6f}",
        "class": change.cls.lower(),
        "operation": "del" if change.deleted else operation,
        "ref": ref(change.uuid),
    }
    if change.deleted:
        return event
    if change.cls == "pool":
        event["snapshot"] = pool.record(host)
        return event
    try:
        row = host.store.get_visible(change.cls, change.uuid)
    except NotFound:
        return None
    event["snapshot"] = RECORDS[change.cls](host, row)
    return event


def _pool_generation(host: HostServices) -> int:
    return host.db.changes.rowless.get("pool", 0)


def _changes(host: HostServices, classes: set[str], since: int) -> list[dict[str, Any]]:
    """The events of the records of ``classes`` changed after generation ``since``."""
    changes = [
        _Change(c.cls, c.uuid, c.generation, c.deleted)
        for c in host.store.changes_since(since)
        if c.cls in classes
    ]
    if "pool" in classes and _pool_generation(host) > since:
        changes.append(_Change("pool", pool.pool_uuid(host), _pool_generation(host), False))
        changes.sort(key=lambda c: c.generation)
    events = (_event(host, change, "mod") for change in changes)
    return [e for e in events if e is not None]


def _snapshot(host: HostServices, classes: set[str]) -> list[dict[str, Any]]:
    """An ``add`` event for every current record of ``classes``."""
    events: list[dict[str, Any]] = []
    for cls in sorted(classes):
        if cls == "pool":
            rows: list[dict[str, Any]] = [
                {"uuid": pool.pool_uuid(host), "generation": _pool_generation(host)}
            ]
        else:
            rows = host.store.all(cls)
        for row in rows:
            event = _event(host, _Change(cls, row["uuid"], row["generation"], False), "add")
            if event is not None:
                events.append(event)
    return events


def _counts(host: HostServices, classes: set[str]) -> dict[str, int]:
    """How many records of each class there are (``valid_ref_counts``)."""
    return {cls.lower(): 1 if cls == "pool" else host.store.count_visible(cls) for cls in classes}


def _read_from(
    host: HostServices, wanted: set[str], since: int | None
) -> tuple[int, list[dict[str, Any]], dict[str, int]]:
    """The generation, the events after ``since`` (every record for None) and the counts;
    inside a database call."""
    generation = host.store.generation()
    events = _snapshot(host, wanted) if since is None else _changes(host, wanted, since)
    return generation, events, _counts(host, wanted)


async def from_(
    host: HostServices, session: str, classes: Any, token: Any, timeout: Any
) -> dict[str, Any]:
    """The changes of the records of ``classes`` after ``token`` (every record for the empty
    token), waiting up to ``timeout`` seconds for one: ``{"events", "valid_ref_counts",
    "token"}``. The answer's token is where the next call goes on from."""
    wanted = _classes(classes)
    since = _token(token)
    deadline = trio.current_time() + _timeout(timeout)
    while True:
        generation, events, counts = await host.db.call(_read_from, host, wanted, since)
        if events or since is None or trio.current_time() >= deadline:
            return {
                "events": events,
                "valid_ref_counts": counts,
                "token": str(max(generation, since or 0)),
            }
        # nothing wanted changed up to ``generation``: wait (holding nothing) for more
        since = max(generation, since)
        await host.db.changes.wait(since, deadline)


def register(host: HostServices, session: str, classes: Any) -> None:
    """Add ``classes`` to those whose changes ``event.next`` reports to this session, from
    now on."""
    wanted = _classes(classes)
    subscriptions = host.db.changes.subscriptions
    for other in list(subscriptions):  # forget the sessions that are gone
        if host.store.session_activity(other) is None:
            del subscriptions[other]
    subscription = subscriptions.get(session)
    if subscription is None:
        subscriptions[session] = Subscription(wanted, host.store.generation())
    else:
        subscription.classes |= wanted


def unregister(host: HostServices, session: str, classes: Any) -> None:
    """Stop reporting ``classes`` to this session."""
    subscriptions = host.db.changes.subscriptions
    subscription = subscriptions.get(session)
    if subscription is None:
        return
    subscription.classes -= _classes(classes)
    if not subscription.classes:
        del subscriptions[session]


def _read_next(host: HostServices, session: str) -> tuple[list[dict[str, Any]], int]:
    """The subscription's events since it last read, moving it on; inside a database call."""
    subscription = host.db.changes.subscriptions.get(session)
    if subscription is None:
        raise ApiError(SESSION_NOT_REGISTERED, session)
    generation = host.store.generation()
    events = _changes(host, subscription.classes, subscription.generation)
    subscription.generation = max(generation, subscription.generation)
    return events, subscription.generation


async def next_(host: HostServices, session: str) -> list[dict[str, Any]]:
    """The changes of the registered classes since the last ``event.next`` (or the
    registration), waiting for one (an empty list after :data:`NEXT_WAIT` seconds)."""
    deadline = trio.current_time() + NEXT_WAIT
    while True:
        events, since = await host.db.call(_read_next, host, session)
        if events or trio.current_time() >= deadline:
            return events
        await host.db.changes.wait(since, deadline)


def inject(host: HostServices, session: str, cls: Any, record: Any) -> str:
    """Make the record ``record`` (a ref) of ``cls`` change (a ``mod`` event); the token of
    the change."""
    name = CLASSES.get(cls.lower()) if isinstance(cls, str) else None
    if name is None:
        raise ApiError(HANDLE_INVALID, cls, record)
    if name == "pool":
        pool.check(host, record)
        with host.store.change() as generation:
            host.db.changes.rowless["pool"] = generation
        return str(generation)
    return str(host.store.touch(name, refs.row(host.store, name, record)["uuid"]))


METHODS: dict[str, Callable[..., Any]] = {
    "event.from": from_,
    # ``from`` is a Python keyword: the XenAPI SDK's users call ``session.xenapi.event_from``
    "event_from": from_,
    "event.register": register,
    "event.unregister": unregister,
    "event.next": next_,
    "event.inject": inject,
}
