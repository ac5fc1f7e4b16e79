"""The memory all connections together may hold in request bodies read whole:
:class:`BodyMemory`, a byte budget reserved before a body's bytes are kept and released when
its handler ends, so that many large bodies sent at once (before their calls are
authenticated) cannot take the daemon's memory."""

from __future__ import annotations

import trio

from migrate.http.errors import RETRY_AFTER, HTTPError


class BodyMemory:
    """``size`` bytes to share; :meth:`reserve` waits up to ``wait`` seconds for room."""

    def __init__(self, size: int, wait: float) -> None:
        self.size = size
        self.wait = wait
        self.used = 0
        self._released = trio.Event()
        """Set (and replaced) whenever bytes are released: waiters look again."""

    async def reserve(self, count: int) -> None:
        """Take ``count`` bytes. HTTPError 503 (with ``Retry-After``) when there is no room
        within ``wait`` seconds, 413 when ``count`` is more than the whole budget."""
        if count > self.size:
            raise HTTPError(413, f"request body larger than the {self.size} bytes held for bodies")
        with trio.move_on_after(self.wait):
            while self.used + count > self.size:
                await self._released.wait()
        if self.used + count > self.size:
            raise HTTPError(
                503,
                f"the server holds {self.used} bytes of request bodies: retry later",
                [("retry-after", str(RETRY_AFTER))],
            )
        self.used += count

    def release(self, count: int) -> None:
        """Give back ``count`` reserved bytes."""
        self.used -= count
        self._released.set()
        self._released = trio.Event()
