"""The state database as trio code uses it: one call at a time, each in a worker thread of
its own, the change feed told after every call.

A commit waits for the disk (``synchronous=FULL``), up to a tenth of a second behind other
writeback: time no connection may lose, so no call runs in the event loop. The store is one
SQLite connection: calls run one at a time, in arrival order, on a capacity of their own
that no other kind of work can take (:mod:`migrate.host.threads`), so that a burst of bulk
I/O never delays a login or an RPC call. A call is atomic with respect to every other use of
the store: code that must read and then write runs as one call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import trio

from migrate.host.changes import Changes
from migrate.state.store import Store

T = TypeVar("T")


class Database:
    """The state ``store`` of one host, used from trio."""

    def __init__(self, store: Store) -> None:
        self.store = store
        """The store itself: only for code running inside :meth:`call` (or before serving)."""
        self.changes = Changes(store.generation())
        self._limiter = trio.CapacityLimiter(1)

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in the database's worker thread, after the calls queued before
        it; the change feed told of the generation it leaves. Not interrupted once started
        (cancellation waits for it)."""
        generation = 0

        def run() -> T:
            nonlocal generation
            try:
                return function(*args)
            finally:
                generation = self.store.generation()

        try:
            return await trio.to_thread.run_sync(run, limiter=self._limiter)
        finally:
            self.changes.announce(generation)
