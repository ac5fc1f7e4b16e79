"""The host's services in one place: what the RPC face, the disk transfers and migration
share, each of them taking this and nothing of the others."""

from __future__ import annotations

from dataclasses import dataclass, field

from migrate.host.claims import Claims
from migrate.host.database import Database
from migrate.host.sessions import Sessions
from migrate.host.tasks import Tasks
from migrate.host.threads import Threads
from migrate.state.store import Store


@dataclass
class HostServices:
    """One host: its uuid, state database, tasks, claims on VDIs, sessions and threads."""

    uuid: str
    db: Database
    threads: Threads = field(default_factory=Threads)
    claims: Claims = field(default_factory=Claims)
    tasks: Tasks = field(init=False)
    sessions: Sessions = field(init=False)

    def __post_init__(self) -> None:
        self.tasks = Tasks(self.db)
        self.sessions = Sessions(self.db, self.threads)

    @classmethod
    def open(cls, store: Store, host_uuid: str) -> HostServices:
        """The services of the host ``host_uuid`` whose state is ``store`` (prepared)."""
        return cls(host_uuid, Database(store))

    @property
    def store(self) -> Store:
        """The state store, for code running inside a database call."""
        return self.db.store
