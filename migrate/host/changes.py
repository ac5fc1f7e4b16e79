"""The host's change feed: which generation of the state the waiters were last told about,
waiting for a newer one, and where each event subscriber stands.

Every change of the state database advances its event clock (the generation,
:meth:`migrate.state.store.Store.change`); :class:`~migrate.host.database.Database` announces
each new generation here after the call that made it, in trio, and whoever waits for a change
(``event.from``, ``event.next``) wakes up without holding anything meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio


@dataclass
class Subscription:
    """A session's ``event.register`` classes and the generation it has seen so far."""

    classes: set[str]
    generation: int


class Changes:
    """The change feed of one host, starting at ``generation``."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        """The last generation announced."""
        self._changed = trio.Event()
        self.subscriptions: dict[str, Subscription] = {}
        """Sessions following the feed with ``event.next``, by session ref."""
        self.rowless: dict[str, int] = {}
        """Records with no row of their own (the pool), by class: the generation of their
        last injected change."""

    def announce(self, generation: int) -> None:
        """Wake the waiters if ``generation`` is newer than the last announced (in trio)."""
        if generation > self.generation:
            self.generation = generation
            self._changed.set()
            self._changed = trio.Event()

    async def wait(self, since: int, deadline: float) -> None:
        """Wait until a generation after ``since`` is announced, or until ``deadline``
        (trio time)."""
        with trio.move_on_at(deadline):
            while self.generation <= since:
                await self._changed.wait()
