"""Pairing a migration's two connections on the destination: the ``vm`` connection (the
handshake) waits, by migration id and for a bounded time, for the ``mem`` connection that
carries the memory image; the handler of the ``mem`` connection hands its stream over and
keeps it open until the receiver is done with it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import trio


class PairingError(Exception):
    """A connection of a migration could not be paired; the message says why."""


@dataclass
class MemoryConnection:
    """The raw stream of a ``mem`` connection and the bytes received past its head."""

    stream: trio.abc.Stream
    buffered: bytes
    done: trio.Event = field(default_factory=trio.Event)
    """Set when the receiver is done with the stream (its handler may then close it)."""


class Expected:
    """One migration waiting for its memory connection."""

    def __init__(self, id: str) -> None:
        self.id = id
        self.memory: MemoryConnection | None = None
        self._arrived = trio.Event()

    async def wait(self, timeout: float) -> MemoryConnection:
        """The memory connection, once it comes; PairingError after ``timeout`` seconds."""
        with trio.move_on_after(timeout):
            await self._arrived.wait()
        if self.memory is None:
            raise PairingError(
                f"the memory connection of migration {self.id} did not come within {timeout:g} s"
            )
        return self.memory

    def _deliver(self, memory: MemoryConnection) -> None:
        self.memory = memory
        self._arrived.set()


class Rendezvous:
    """The migrations of one host that wait for their memory connections, by id."""

    def __init__(self) -> None:
        self._expected: dict[str, Expected] = {}

    @contextmanager
    def expect(self, id: str) -> Iterator[Expected]:
        """Wait for the memory connection of migration ``id`` while in this block; on the way
        out, a memory connection that came is released (its handler closes it).
        PairingError if migration ``id`` is being received already."""
        if id in self._expected:
            raise PairingError(f"migration {id} is being received already")
        expected = self._expected[id] = Expected(id)
        try:
            yield expected
        finally:
            del self._expected[id]
            if expected.memory is not None:
                expected.memory.done.set()

    def deliver(self, id: str, stream: trio.abc.Stream, buffered: bytes) -> MemoryConnection:
        """Hand the memory connection of migration ``id`` to its receiver; wait on the
        result's ``done`` before closing ``stream``. PairingError if no migration ``id`` waits
        or it has its memory connection already."""
        expected = self._expected.get(id)
        if expected is None:
            raise PairingError(f"no migration {id} waits for its memory connection")
        if expected.memory is not None:
            raise PairingError(f"migration {id} has its memory connection already")
        memory = MemoryConnection(stream, buffered)
        expected._deliver(memory)
        return memory

    def waiting(self, id: str) -> bool:
        """Whether migration ``id`` waits for (or has) its memory connection."""
        return id in self._expected
