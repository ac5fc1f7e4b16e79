"""Pairing a migration's vm and mem connections (migrate.migration.rendezvous)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from migrate.migration.rendezvous import PairingError, Rendezvous


def stream() -> trio.abc.Stream:
    left, _ = trio.testing.memory_stream_pair()
    return left


async def test_memory_connection_paired_by_id_and_released() -> None:
    rendezvous = Rendezvous()
    s = stream()
    with rendezvous.expect("m1") as expected:
        assert rendezvous.waiting("m1")
        memory = rendezvous.deliver("m1", s, b"abc")
        got = await expected.wait(1.0)
        assert got is memory and got.stream is s and got.buffered == b"abc"
        assert not memory.done.is_set()
    assert memory.done.is_set()  # its handler may close it now
    assert not rendezvous.waiting("m1")


async def test_memory_connection_comes_later() -> None:
    rendezvous = Rendezvous()
    async with trio.open_nursery() as nursery:
        with rendezvous.expect("m1") as expected:

            async def later() -> None:
                await trio.sleep(0.05)
                memory = rendezvous.deliver("m1", stream(), b"")
                await memory.done.wait()

            nursery.start_soon(later)
            assert (await expected.wait(5.0)).buffered == b""


async def test_memory_connection_that_never_comes() -> None:
    rendezvous = Rendezvous()
    late = "memory connection of migration m1 did not come"
    with rendezvous.expect("m1") as expected, pytest.raises(PairingError, match=late):
        await expected.wait(0.05)


def test_refusals() -> None:
    rendezvous = Rendezvous()
    with pytest.raises(PairingError, match="no migration m1 waits"):
        rendezvous.deliver("m1", stream(), b"")
    with rendezvous.expect("m1"):
        with (
            pytest.raises(PairingError, match="m1 is being received already"),
            rendezvous.expect("m1"),
        ):
            pass
        rendezvous.deliver("m1", stream(), b"")
        with pytest.raises(PairingError, match="m1 has its memory connection already"):
            rendezvous.deliver("m1", stream(), b"")
    with pytest.raises(PairingError, match="no migration m1 waits"):
        rendezvous.deliver("m1", stream(), b"")
