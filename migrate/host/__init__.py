"""The host's services, shared by everything that acts on the host: the RPC face, the disk
transfers and migration (see :class:`migrate.host.services.HostServices`)."""
