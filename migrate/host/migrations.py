"""What the RPC face asks of the migration operation, without importing it: the daemon gives
:class:`HostServices` an implementation (:mod:`migrate.migration`), so that the RPC and the
operations stand side by side on the host core."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class Migrations(Protocol):
    """Moving a VM to another host (xapi's ``VM.migrate_send`` and its check)."""

    async def assert_can_migrate(
        self, session: str, vm: str, dest: Mapping[str, str], live: bool, options: Mapping[str, str]
    ) -> None:
        """Return if VM ``vm`` (uuid) can move to ``dest`` (the map of
        ``host.migrate_receive``); ApiError naming what stands in the way."""
        ...

    async def migrate_send(
        self,
        session: str,
        vm: str,
        dest: Mapping[str, str],
        live: bool,
        options: Mapping[str, str],
        task: str | None = None,
    ) -> str:
        """Move VM ``vm`` (uuid) to ``dest``; the VM's ref on the destination. ``task``:
        the uuid of the task that reports its progress and rounds and whose cancellation
        stops it. On any failure, ApiError, and the VM runs on this host as before."""
        ...
