"""Migration under faults: either connection cut at random byte positions, each way, by a
relay in front of the destination (support.CuttingProxy), and the destination daemon killed
mid-stream. Each time exactly one copy of the VM runs: the source's, unless the cut came
after the destination resumed it (the source then learns so and lets its copy go); nothing
of it is left elsewhere; and a retry succeeds. The VM goes back and forth between the two
daemons, each retry moving it to the other."""

from __future__ import annotations

import random
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from support import CuttingProxy, Daemon, running_daemon, wait_until_sync
from test_migration import MEMORY, dest_map, migrate, start_vm

WORKLOAD = "uniform:4M+ledger"
CUTS = 10
"""Random cut positions per connection and direction of bulk data."""
HOLD = 256 << 10
"""Bytes of the memory image through before the destination is killed."""


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Daemon]]:
    with (
        running_daemon(tmp_path_factory.mktemp("a")) as a,
        running_daemon(tmp_path_factory.mktemp("b")) as b,
    ):
        yield a, b


def through(dest: dict[str, str], proxy: CuttingProxy) -> dict[str, str]:
    """The dest map with its xenops URL on the relay."""
    base, _, rest = dest["xenops"].partition("/services/")
    host = base.rsplit(":", 1)[0]
    return {**dest, "xenops": f"{host}:{proxy.port}/services/{rest}"}


def where(vm: str, a: Daemon, b: Daemon) -> list[tuple[Daemon, str]]:
    """The daemons that know the VM, with its power state there."""
    return [(d, d.rpc("VM.get_power_state", vm)) for d in (a, b) if vm in d.rpc("VM.get_all")]


def settle(vm: str, a: Daemon, b: Daemon) -> list[tuple[Daemon, str]]:
    """:func:`where`, once the destination has finished cleaning up (its domain gone)."""
    return wait_until_sync(
        lambda: (found := where(vm, a, b)) and len(found) == 1 and found,
        what=f"VM {vm} to be known on one host only",
    )


class Pingpong:
    """The VM and the host it runs on now."""

    def __init__(self, a: Daemon, b: Daemon) -> None:
        self.a, self.b = a, b
        self.vm = start_vm(a, WORKLOAD, MEMORY)
        self.here, self.there = a, b

    def attempt(self, **proxy: Any) -> dict[str, Any]:
        """A migration through a relay with ``proxy``'s faults; then the checks, and the
        retry (which always moves the VM to the other host)."""
        with CuttingProxy(self.there.port, **proxy) as relay:
            task = migrate(self.here, self.vm, through(dest_map(self.there), relay))
        found = settle(self.vm, self.a, self.b)
        ((holder, state),) = found
        assert state == "Running", (proxy, task)
        if task["status"] == "success":  # the cut came after the destination resumed it
            assert holder is self.there, (proxy, task)
            self.here, self.there = self.there, self.here
        else:
            assert holder is self.here, (proxy, task)
            assert task["error_info"][0] == "VM_MIGRATE_FAILED", task
        # a retry, without faults, moves it across
        retry = migrate(self.here, self.vm, dest_map(self.there))
        assert retry["status"] == "success", retry["error_info"]
        self.here, self.there = self.there, self.here
        return task

    def sizes(self) -> tuple[int, int, int, int]:
        """Bytes of a whole migration: vm and mem connections, each way."""
        with CuttingProxy(self.there.port) as relay:
            task = migrate(self.here, self.vm, through(dest_map(self.there), relay))
            assert task["status"] == "success", task["error_info"]
            vm, mem = relay.connections[:2]
        self.here, self.there = self.there, self.here
        return vm.request_total, vm.response_total, mem.request_total, mem.response_total


def test_cuts_on_every_connection_and_direction(hosts: tuple[Daemon, Daemon]) -> None:
    a, b = hosts
    game = Pingpong(a, b)
    vm_out, vm_back, mem_out, mem_back = game.sizes()
    assert vm_back == 4 and mem_back == 2  # sync messages only
    rng = random.Random(10)
    failed = 0
    # the vm connection: anywhere in its head and sync messages, and each byte back
    for position in [*rng.sample(range(vm_out), min(CUTS, vm_out)), vm_out - 1]:
        failed += game.attempt(cut_request=position, only=0)["status"] == "failure"
    for position in range(vm_back):
        game.attempt(cut=position, only=0)
    # the mem connection: random bytes of the image, and its one sync message
    for position in sorted(rng.sample(range(mem_out), CUTS)):
        failed += game.attempt(cut_request=position, only=1)["status"] == "failure"
    for position in range(mem_back):
        failed += game.attempt(cut=position, only=1)["status"] == "failure"
    assert failed == CUTS + 1 + CUTS + mem_back  # every cut before "done" arrived failed
    a.rpc("VM.hard_shutdown", game.vm) if game.here is a else b.rpc("VM.hard_shutdown", game.vm)


def test_destination_killed_mid_stream(tmp_path_factory: pytest.TempPathFactory) -> None:
    state = tmp_path_factory.mktemp("doomed")
    with running_daemon(tmp_path_factory.mktemp("source")) as source:
        vm = start_vm(source, WORKLOAD, MEMORY)
        with running_daemon(state) as doomed:
            dest = dest_map(doomed)
            with CuttingProxy(doomed.port, hold=HOLD, only=1) as relay:
                outcome: dict[str, Any] = {}
                thread = threading.Thread(
                    target=lambda: outcome.update(migrate(source, vm, through(dest, relay)))
                )
                thread.start()
                assert relay.holding.wait(60), "the memory stream never got going"
                assert doomed.process is not None
                doomed.process.send_signal(signal.SIGKILL)
                doomed.process.wait(10)
                relay.release.set()
                thread.join(120)
            assert outcome["status"] == "failure"
            assert outcome["error_info"][0] == "VM_MIGRATE_FAILED"
        assert source.rpc("VM.get_power_state", vm) == "Running"
        # the destination, started again, has nothing of it; a retry succeeds
        with running_daemon(state) as again:
            assert vm not in again.rpc("VM.get_all")
            task = migrate(source, vm, dest_map(again))
            assert task["status"] == "success", task["error_info"]
            assert again.rpc("VM.get_power_state", vm) == "Running"
            again.rpc("VM.hard_shutdown", vm)
