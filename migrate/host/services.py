"""The host's services in one place: what the RPC face, the disk transfers and migration
share, each of them taking this and nothing of the others."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from migrate.formats.xapi import DEFAULT_PORT
from migrate.guest.hypervisor import Domain, Hypervisor
from migrate.host.claims import Claims
from migrate.host.database import Database
from migrate.host.migrations import Migrations
from migrate.host.operations import Operations
from migrate.host.sessions import Sessions
from migrate.host.tasks import Tasks
from migrate.host.threads import Threads
from migrate.state.store import NotFound, Store
from migrate.state.vms import LIVE, set_power_state


@dataclass
class HostServices:
    """One host: its uuid, state database, domains, tasks, claims on VDIs, sessions and
    threads; the migration operation once the daemon gives one."""

    uuid: str
    db: Database
    guests: Hypervisor
    """The domains of the VMs running here."""
    migrations: Migrations | None = None
    """Moving VMs to other hosts (:mod:`migrate.migration`); None: not offered."""
    scheme: str = "http"
    """How other hosts reach this one's daemon (the dest map of ``host.migrate_receive``)."""
    port: int = DEFAULT_PORT
    """The port other hosts reach this one's daemon on."""
    threads: Threads = field(default_factory=Threads)
    claims: Claims = field(default_factory=Claims)
    operations: Operations = field(default_factory=Operations)
    tasks: Tasks = field(init=False)
    sessions: Sessions = field(init=False)

    def __post_init__(self) -> None:
        self.tasks = Tasks(self.db)
        self.sessions = Sessions(self.db, self.threads)

    @classmethod
    def open(cls, store: Store, host_uuid: str, guests: Hypervisor) -> HostServices:
        """The services of the host ``host_uuid`` whose state is ``store`` (prepared) and
        whose domains are ``guests``."""
        return cls(host_uuid, Database(store), guests)

    def watch(self, domain: Domain, vdis: Sequence[str] = ()) -> None:
        """Once ``domain`` ends, however it ends, release the claims on ``vdis`` (the VDIs
        its disks are, claimed by its starter as ``claims.vm_holder(uuid)``)
        and, if it ended by itself (the guest died, or was killed) rather than by an
        operation on the VM (which records its own outcome), record the VM Halted. Call it
        once the VM is recorded live here."""
        self.tasks.spawn(self._when_gone, domain, tuple(vdis))

    async def _when_gone(self, domain: Domain, vdis: tuple[str, ...]) -> None:
        await domain.wait_exited()
        uuid = domain.spec.uuid
        with trio.CancelScope(shield=True):
            await domain.destroy()  # frees what the guest held: its disks first
        for vdi in vdis:
            self.claims.release_writer(vdi)
        if self.operations.current(uuid) is not None:
            return  # the operation that ended it records the outcome
        if self.guests.domain(uuid) not in (None, domain):
            return  # started again meanwhile

        def halt() -> None:
            try:
                row = self.store.get("VM", uuid)
            except NotFound:
                return
            if row["power_state"] in LIVE and row["resident_on"] == self.uuid:
                set_power_state(self.store, uuid, "Halted", None)

        await self.db.call(halt)

    @property
    def store(self) -> Store:
        """The state store, for code running inside a database call."""
        return self.db.store
