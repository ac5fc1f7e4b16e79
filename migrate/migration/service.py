"""The migration operation of a host: what ``host.migrations`` offers the RPC face
(``VM.migrate_send`` and its check) and the HTTP paths it serves (xenopsd's migration
connections, VM save and restore)."""

from __future__ import annotations

import ssl
from collections.abc import Mapping

from migrate.host.services import HostServices
from migrate.http.routing import Router
from migrate.migration import saving
from migrate.migration.incoming import Incoming
from migrate.migration.outgoing import Migration, Options


class MigrationService:
    """Migration for ``host`` (implements :class:`migrate.host.migrations.Migrations`);
    ``context``: the TLS client context for ``https`` destinations (default: unverified,
    :func:`migrate.migration.connect.client_ssl_context`)."""

    def __init__(self, host: HostServices, context: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.context = context
        self.incoming = Incoming(host)

    def register(self, router: Router) -> None:
        """Serve the migration connections, the receives' outcomes, and VM save/restore."""
        self.incoming.register(router)
        saving.register(router, self.host)

    async def assert_can_migrate(
        self, session: str, vm: str, dest: Mapping[str, str], live: bool, options: Mapping[str, str]
    ) -> None:
        """Return if VM ``vm`` could move to ``dest``: the options, the dest map and the VM
        checked (ApiError naming what stands in the way)."""
        migration = Migration(self.host, vm, dest, Options.parse(live, options), None, None)
        await migration.check()

    async def migrate_send(
        self,
        session: str,
        vm: str,
        dest: Mapping[str, str],
        live: bool,
        options: Mapping[str, str],
        task: str | None = None,
    ) -> str:
        """Move VM ``vm`` to ``dest`` (see :mod:`migrate.migration.outgoing`); its ref there."""
        options_ = Options.parse(live, options)
        return await Migration(self.host, vm, dest, options_, task, self.context).run()
