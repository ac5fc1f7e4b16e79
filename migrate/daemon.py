"""The host daemon behind ``xfer serve``: state at start-up, listeners, serving, clean shutdown.

Start-up (in a worker thread, the database being plain synchronous code): the host record is
created once and its address refreshed, the live interfaces mirrored into PIFs, the default SR
created on first start and every SR reconciled, the ``root`` password set or generated. Then
one listening socket per address (by default ``[::]:8080``, dual-stack), a ``listening on
<URL>`` line for each on stdout, and HTTP served until SIGINT or SIGTERM. With a TLS
certificate and key every accepted connection is wrapped in TLS
(:class:`~migrate.http.tls.TLSStream`) before the HTTP server sees it, and the lines show
``https://`` URLs.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from migrate.addresses import Family, Host
from migrate.http.limits import Limits
from migrate.http.routing import Router, client_address
from migrate.http.server import serve, serve_connection
from migrate.http.tls import TLSStream
from migrate.interfaces import Interface, InterfaceError, read_interfaces
from migrate.rpc.dispatch import Api, register_rpc
from migrate.state.pifs import sync_interfaces
from migrate.state.store import Store
from migrate.storage.sr import ensure_sr, reconcile
from migrate.transfer.endpoints import register_transfers

log = logging.getLogger("xfer.daemon")

DEFAULT_PORT = 8080
WILDCARD = Host("::", "IPv6", DEFAULT_PORT)
"""The default listener: every IPv6 address and, dual-stack, every IPv4 address."""
USER = "root"
"""The one user the daemon knows."""
DATABASE = "xfer.db"
INTERFACE_POLL = 5.0
"""Default seconds between two readings of the interfaces' addresses."""
LOOPBACK: dict[Family, str] = {"IPv4": "127.0.0.1", "IPv6": "::1"}


class ListenError(OSError):
    """A listening socket could not be set up; the message names the address and why."""


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
    limits: Limits = field(default_factory=Limits)
    tls_cert: str | None = None
    """PEM certificate (chain) file: when set with :attr:`tls_key`, every listener speaks
    HTTPS (TLS 1.2 or later)."""
    tls_key: str | None = None
    """PEM private key file of :attr:`tls_cert`."""
    interface_poll: float = INTERFACE_POLL
    """Seconds between two readings of the interfaces' addresses."""


async def watch_interfaces(
    api: Api,
    primary: Family,
    interval: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep the PIFs and the host's address true to the live interfaces while serving.

    Reads the addresses every ``interval`` seconds (static, SLAAC and DHCPv6 changes alike);
    when they changed, writes what differs under the RPC lock and wakes event watchers.
    """
    task_status.started()
    last: list[Interface] | None = None
    while True:
        await trio.sleep(interval)
        try:
            interfaces = await trio.to_thread.run_sync(read_interfaces)
        except InterfaceError as e:
            log.warning("interfaces not mirrored: %s", e)
            continue
        if interfaces == last:
            continue
        last = interfaces
        async with api.lock:
            sync_interfaces(api.store, api.host_uuid, interfaces, primary)
            _refresh_host(api.store, api.host_uuid, host_address(interfaces, primary), primary)
        api.notify()


def _refresh_host(store: Store, host_uuid: str, address: str, primary: Family) -> None:
    """Record the host's current address and primary family, if they changed."""
    fresh = {"address": address, "primary_address_type": primary}
    current = store.get("host", host_uuid)
    if any(current[name] != value for name, value in fresh.items()):
        store.update("host", host_uuid, fresh)
        log.info("host %s: address %s (%s)", host_uuid, address, primary)


def default_state_dir() -> str:
    """``$XDG_DATA_HOME/xfer``, or ``~/.local/share/xfer`` when that is unset or relative."""
    base = os.environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "xfer")


def host_address(interfaces: Sequence[Interface], primary: Family) -> str:
    """The ``primary``-family address of the first non-loopback interface that has one,
    else the loopback address of that family."""
    for interface in interfaces:
        address = interface.address_for(primary)
        if address is not None and not ipaddress.ip_address(address).is_loopback:
            return address
    return LOOPBACK[primary]


def prepare_state(store: Store, config: DaemonConfig) -> str:
    """Bring the state database up to date for this start; the host's uuid (synchronous)."""
    primary = config.primary_address_type
    try:
        interfaces: list[Interface] | None = read_interfaces()
    except InterfaceError as e:
        log.warning("interfaces not mirrored: %s", e)
        interfaces = None
    address = host_address(interfaces or [], primary)
    with store.change():
        hosts = store.all("host")
        if hosts:
            host_uuid = str(hosts[0]["uuid"])
            _refresh_host(store, host_uuid, address, primary)
        else:
            host_uuid = str(uuidlib.uuid4())
            store.insert(
                "host",
                {
                    "uuid": host_uuid,
                    "name_label": socket.gethostname(),
                    "address": address,
                    "primary_address_type": primary,
                },
            )
            log.info("created host %s", host_uuid)
            sr_path = os.path.join(config.state_dir, "sr")
            ensure_sr(store, sr_path, "Local storage", default=True)
    log.info("host %s: address %s (%s)", host_uuid, address, primary)
    if interfaces is not None:
        sync_interfaces(store, host_uuid, interfaces, primary)
    for path in config.srs:
        real = os.path.realpath(path)
        ensure_sr(store, real, f"Local storage at {real}")
    for sr in store.all("SR"):
        repairs = reconcile(store, sr["uuid"])
        log.info("SR %s at %s: %d repair(s)", sr["uuid"], sr["path"], len(repairs))
    _set_password(store, config.password)
    return host_uuid


def _set_password(store: Store, password: str | None) -> None:
    if password is not None:
        store.set_password(USER, password)
        log.info("password for %s set", USER)
    elif not store.has_password(USER):
        generated = secrets.token_urlsafe(18)
        store.set_password(USER, generated)
        print(f"generated password for {USER}: {generated}", file=sys.stderr, flush=True)


async def open_listeners(
    hosts: Sequence[Host], *, ipv6_only: bool = False, backlog: int = 128
) -> list[trio.SocketListener]:
    """A bound, listening socket for each of ``hosts`` (IPv4 or IPv6 addresses, a link-local
    one bound with its zone's scope id). The IPv6 wildcard ``::`` is dual-stack unless
    ``ipv6_only``; other IPv6 addresses are IPv6 only. ListenError if any cannot be opened
    (those already opened are closed)."""
    listeners: list[trio.SocketListener] = []
    try:
        for host in hosts:
            listeners.append(await _listen(host, ipv6_only=ipv6_only, backlog=backlog))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


async def _listen(host: Host, *, ipv6_only: bool, backlog: int) -> trio.SocketListener:
    port = DEFAULT_PORT if host.port is None else host.port
    where = host.host_port(port)
    if host.family is None:
        raise ListenError(f"cannot listen on {where}: an IP address is needed, not a name")
    bare = host.address.partition("%")[0]
    sockaddr: tuple[str, int] | tuple[str, int, int, int]
    if host.family == "IPv6":
        family = socket.AF_INET6
        sockaddr = (bare, port, 0, _scope_id(host.zone, where) if host.zone else 0)
    else:
        family = socket.AF_INET
        sockaddr = (bare, port)
    sock = trio.socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            v6only = ipv6_only or bare != "::"
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        await sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise ListenError(f"cannot listen on {where}: {e.strerror or e}") from None
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


def _scope_id(zone: str, where: str) -> int:
    if zone.isdigit():
        return int(zone)
    try:
        return socket.if_nametoindex(zone)
    except OSError:
        raise ListenError(f"cannot listen on {where}: no interface {zone!r}") from None


def listener_url(host: Host, listener: trio.SocketListener, scheme: str = "http") -> str:
    """The ``http://`` (or ``scheme``) URL of ``listener``, bound for ``host``, with the port
    it really has."""
    port = listener.socket.getsockname()[1]
    return Host(host.address, host.family).url(scheme=scheme, port=port)


class TlsError(ValueError):
    """The TLS certificate or key cannot be used; the message says which and why."""


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for ``cert`` and ``key`` (PEM files), TLS 1.2 or later."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as e:
        raise TlsError(f"TLS certificate or key: {e.strerror}: {e.filename}") from None
    except (ssl.SSLError, OSError) as e:
        raise TlsError(f"cannot use TLS certificate {cert} with key {key}: {e}") from None
    return context


async def serve_tls(
    router: Router,
    listeners: list[trio.SocketListener],
    context: ssl.SSLContext,
    limits: Limits,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """:func:`~migrate.http.server.serve`, each accepted connection wrapped in TLS (server
    side). A handshake that fails or takes longer than ``limits.header_timeout`` closes the
    connection; the others are not affected."""

    async def handle(stream: trio.SocketStream) -> None:
        try:
            client = client_address(stream.socket.getpeername())
        except OSError:
            client = None
        tls = TLSStream(stream, context)
        handshake_ok = False
        with trio.move_on_after(limits.header_timeout):
            try:
                await tls.do_handshake()
                handshake_ok = True
            except Exception as e:  # whatever the peer sent, only this connection ends
                cause = e.__cause__ or e
                log.debug("TLS handshake with %s failed: %s", client or "?", cause)
        if not handshake_ok:
            await trio.aclose_forcefully(stream)
            return
        await serve_connection(tls, router, limits, client=client)

    await trio.serve_listeners(handle, listeners, task_status=task_status)


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
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        listeners = await open_listeners(config.listen, ipv6_only=config.ipv6_only)
        try:
            os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
            store = Store.open(os.path.join(config.state_dir, DATABASE))
            try:
                host_uuid = await trio.to_thread.run_sync(prepare_state, store, config)
                api = Api(store, host_uuid)
                router = Router()
                register_rpc(router, api)  # XenAPI over XML-RPC and JSON-RPC
                register_transfers(router, api)  # VDI export and import
                for host, listener in zip(config.listen, listeners, strict=True):
                    print(f"listening on {listener_url(host, listener, scheme)}", flush=True)
                async with trio.open_nursery() as nursery:
                    await nursery.start(api.serve_tasks)  # runs the Async.* calls
                    await nursery.start(
                        watch_interfaces, api, config.primary_address_type, config.interface_poll
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
