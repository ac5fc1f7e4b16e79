"""The host daemon behind ``xfer serve``: the one place that composes the parts.

Start-up (in a worker thread, the database being plain synchronous code) brings the state up
to date (:mod:`migrate.host.startup`). Then one listening socket per address (by default
``[::]:8080``, dual-stack), a ``listening on <URL>`` line for each on stdout, and, until
SIGINT or SIGTERM, the host's services with the RPC face, the disk transfers and migration
(xenopsd's connections, VM save and restore, :mod:`migrate.migration`) served over
HTTP (or HTTPS, given a certificate and key) beside the interface watcher and the VMs'
guests (:mod:`migrate.guest.processes`; a log line says whether this kernel allows live
migration). Other hosts are told the first listener's port (``host.migrate_receive``).
"""

from __future__ import annotations

import logging
import os
import resource
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from migrate.addresses import Family, Host
from migrate.formats.xapi import DEFAULT_PORT
from migrate.guest.processes import ProcessHypervisor
from migrate.host.identity import watch_interfaces
from migrate.host.services import HostServices
from migrate.host.startup import prepare_state
from migrate.http.limits import Limits
from migrate.http.routing import Router
from migrate.http.server import serve, serve_tls
from migrate.http.tls import TlsError, server_ssl_context
from migrate.migration.service import MigrationService
from migrate.net import listener_url, open_listeners
from migrate.rpc.dispatch import Dispatcher, register_rpc
from migrate.state.store import Store
from migrate.transfer import export_raw_vdi, import_raw_vdi

log = logging.getLogger("xfer.daemon")

WILDCARD = Host("::", "IPv6", DEFAULT_PORT)
"""The default listener: every IPv6 address and, dual-stack, every IPv4 address."""
DATABASE = "xfer.db"
INTERFACE_POLL = 5.0
"""Default seconds between two readings of the interfaces' addresses."""


@dataclass(frozen=True)
class DaemonConfig:
    """What ``xfer serve`` was asked to do."""

    state_dir: str
    listen: Sequence[Host] = (WILDCARD,)
    """Addresses to listen on; a host without a port gets :data:`DEFAULT_PORT`, port 0 a
    free one."""
    ipv6_only: bool = False
    """Whether the IPv6 wildcard ``::`` refuses IPv4 clients (IPV6_V6ONLY)."""
    primary_address_type: Family = "IPv6"
    password: str | None = None
    """The ``root`` password to store; None keeps the stored one (or generates one)."""
    srs: Sequence[str] = ()
    """SR directories to add besides the default one."""
    shared_srs: Sequence[str] = ()
    """SR directories other hosts attach too (:func:`migrate.storage.sr.ensure_sr`)."""
    limits: Limits = field(default_factory=Limits)
    tls_cert: str | None = None
    """PEM certificate (chain) file: when set with :attr:`tls_key`, every listener speaks
    HTTPS (TLS 1.2 or later)."""
    tls_key: str | None = None
    """PEM private key file of :attr:`tls_cert`."""
    interface_poll: float = INTERFACE_POLL
    """Seconds between two readings of the interfaces' addresses."""


def default_state_dir() -> str:
    """``$XDG_DATA_HOME/xfer``, or ``~/.local/share/xfer`` when that is unset or relative."""
    base = os.environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "xfer")


def raise_fd_limit() -> int:
    """Raise the soft limit of open descriptors to the hard limit (every connection holds one;
    services often start with 1024); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warning("open files limit left at %d: %s", soft, e)
            return soft
    return hard


async def run_daemon(
    config: DaemonConfig,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the host daemon until SIGINT or SIGTERM. The sockets are bound before the state
    is touched; the ``listening on <URL>`` lines are printed once the state is ready, then
    ``task_status.started`` gets the listeners. Listeners and Store are closed on the way out."""
    context = None
    if config.tls_cert is not None or config.tls_key is not None:
        if config.tls_cert is None or config.tls_key is None:
            raise TlsError("TLS needs both a certificate and a key")
        context = server_ssl_context(config.tls_cert, config.tls_key)
    scheme = "http" if context is None else "https"
    raise_fd_limit()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        listeners = await open_listeners(config.listen, ipv6_only=config.ipv6_only)
        try:
            os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
            store = Store.open(os.path.join(config.state_dir, DATABASE))
            try:
                host_uuid = await trio.to_thread.run_sync(
                    prepare_state,
                    store,
                    config.state_dir,
                    config.primary_address_type,
                    config.password,
                    config.srs,
                    config.shared_srs,
                )
                guests = ProcessHypervisor()
                host = HostServices.open(store, host_uuid, guests)
                host.scheme = scheme
                host.port = listeners[0].socket.getsockname()[1]
                refusal = guests.live_migration_support()
                if refusal is None:
                    log.info("live migration available (kernel dirty tracking)")
                else:
                    log.warning("live migration unavailable on this kernel: %s", refusal)
                router = Router()
                register_rpc(router, Dispatcher(host))  # XenAPI over XML-RPC and JSON-RPC
                export_raw_vdi.register(router, host)
                import_raw_vdi.register(router, host)
                migrations = MigrationService(host)
                migrations.register(router)  # xenopsd's migration paths, VM save/restore
                host.migrations = migrations
                for where, listener in zip(config.listen, listeners, strict=True):
                    print(f"listening on {listener_url(where, listener, scheme)}", flush=True)
                async with trio.open_nursery() as nursery:
                    await nursery.start(guests.serve)  # the VMs' domains
                    await nursery.start(host.tasks.serve)  # runs the Async.* calls
                    await nursery.start(
                        watch_interfaces,
                        host.db,
                        host_uuid,
                        config.primary_address_type,
                        config.interface_poll,
                    )
                    if context is None:
                        await nursery.start(serve, router, listeners, config.limits)
                    else:
                        await nursery.start(serve_tls, router, listeners, context, config.limits)
                    task_status.started(listeners)
                    async for signum in signals:
                        log.info("%s: shutting down", signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()
                        break
            finally:
                store.close()
        finally:
            for listener in listeners:
                listener.socket.close()
