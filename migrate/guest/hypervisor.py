"""The hypervisor interface: what the host, the RPC face and migration need of a VM's domain.

Small enough that a real Xen backend could implement it later (libxenctrl's domain create,
log-dirty peek-and-clean, pause, unpause, destroy, HVM context get/set). The backend here is
:mod:`migrate.guest.processes`: a domain is a guest process over a shared ``memfd``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import trio

PAGE_SIZE = 4096
"""Bytes of one guest page (the libxc stream's page_shift 12)."""


class GuestError(Exception):
    """A domain could not be created or driven; the message says what and why."""


class DirtyLogUnavailable(GuestError):
    """This kernel cannot track a guest's writes: live migration needs it, non-live
    migration (the guest paused for the whole copy) does not."""


@dataclass(frozen=True)
class DiskAttachment:
    """One disk of a guest: the raw file its block backend serves, as device ``device``."""

    device: str
    path: str


@dataclass(frozen=True)
class GuestSpec:
    """What a domain is made from: the VM's uuid, RAM size, vCPUs, workload and disks."""

    uuid: str
    memory: int
    """RAM in bytes, a positive multiple of :data:`PAGE_SIZE`."""
    vcpus: int = 1
    workload: str = "idle"
    """The program the guest runs (:mod:`migrate.guest.workloads`)."""
    disks: tuple[DiskAttachment, ...] = ()


class Domain(Protocol):
    """One running (or paused) guest."""

    @property
    def spec(self) -> GuestSpec:
        """What the domain was made from."""
        ...

    @property
    def memory(self) -> memoryview:
        """The host's writable shared mapping of the guest's RAM (``spec.memory`` bytes)."""
        ...

    @property
    def paused(self) -> bool:
        """Whether the guest is stopped (paused, or waiting for its first unpause)."""
        ...

    def scan_dirty(self) -> np.ndarray:
        """Peek and clean the dirty log: the runs of pages written since the last scan, an
        ``(n, 2)`` int64 array of ``[start, end)`` page numbers, ascending. The first scan
        reports every page. DirtyLogUnavailable when the kernel cannot track writes."""
        ...

    async def pause(self) -> None:
        """Stop the guest; returns once it is stopped and every disk write it was told is
        done has reached its file (seen by every reader of the file on this host). Not
        durable yet: that is :meth:`sync_disks`, which costs milliseconds a pause cannot."""
        ...

    async def sync_disks(self) -> None:
        """Make every disk write the guest was told is done durable (``fdatasync``)."""
        ...

    async def unpause(self) -> None:
        """Let the guest run (the first unpause of a domain created paused starts it)."""
        ...

    def set_throttle(self, duty: float) -> None:
        """Keep the running guest stopped for ``duty`` (0 to <1) of the time, 0 for never:
        auto-converge's brake on a guest that writes faster than the link carries."""
        ...

    def cpu_state(self) -> bytes:
        """The guest's register area (its CPU context), read while it is paused."""
        ...

    def set_cpu_state(self, state: bytes) -> None:
        """Load the register area (a paused domain's, before its first unpause)."""
        ...

    async def destroy(self) -> None:
        """Kill the guest and free its memory and disks; idempotent."""
        ...

    async def wait_exited(self) -> None:
        """Return when the guest process is gone (destroyed, or died)."""
        ...


class Hypervisor(Protocol):
    """The domains of one host."""

    def live_migration_support(self) -> str | None:
        """None when the guests' writes can be tracked, else why not (for the error of
        ``xfer serve`` and ``VM.migrate_send``)."""
        ...

    async def create(self, spec: GuestSpec, *, paused: bool = False) -> Domain:
        """A new domain for ``spec``, its RAM zero. ``paused``: created stopped, its
        memory mapped, as Xen creates a migration's destination, so that resuming is only
        a signal. GuestError when it cannot be made (the message says why)."""
        ...

    def domain(self, uuid: str) -> Domain | None:
        """The domain of VM ``uuid``, if it has one."""
        ...

    def domains(self) -> Iterable[Domain]:
        """Every domain."""
        ...

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the domains' own tasks (block backends, throttles, reaping) until cancelled,
        then destroy every domain."""
        ...
