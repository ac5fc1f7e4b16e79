"""The host's own record kept true: its address and primary family follow the live
interfaces, which are mirrored into networks and PIFs (:mod:`migrate.state.pifs`)."""

from __future__ import annotations

import ipaddress
import logging
import socket
import uuid as uuidlib
from collections.abc import Sequence

import trio

from migrate.addresses import Family
from migrate.host.database import Database
from migrate.interfaces import Interface, InterfaceError, read_interfaces
from migrate.state.pifs import sync_interfaces
from migrate.state.store import Store

log = logging.getLogger("xfer.host")

LOOPBACK: dict[Family, str] = {"IPv4": "127.0.0.1", "IPv6": "::1"}


def host_address(interfaces: Sequence[Interface], primary: Family) -> str:
    """The ``primary``-family address of the first non-loopback interface that has one,
    else the loopback address of that family."""
    for interface in interfaces:
        address = interface.address_for(primary)
        if address is not None and not ipaddress.ip_address(address).is_loopback:
            return address
    return LOOPBACK[primary]


def _refresh(store: Store, host_uuid: str, address: str, primary: Family) -> None:
    """Record the host's current address and primary family, if they changed."""
    fresh = {"address": address, "primary_address_type": primary}
    current = store.get("host", host_uuid)
    if any(current[name] != value for name, value in fresh.items()):
        store.update("host", host_uuid, fresh)
        log.info("host %s: address %s (%s)", host_uuid, address, primary)


def prepare_host(store: Store, primary: Family) -> str:
    """The host's record made (first start) or refreshed, its interfaces mirrored; its uuid.
    Before serving."""
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
            _refresh(store, host_uuid, address, primary)
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
    log.info("host %s: address %s (%s)", host_uuid, address, primary)
    if interfaces is not None:
        sync_interfaces(store, host_uuid, interfaces, primary)
    return host_uuid


async def watch_interfaces(
    db: Database,
    host_uuid: str,
    primary: Family,
    interval: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep the PIFs and the host's address true to the live interfaces while serving.

    Reads the addresses every ``interval`` seconds (static, SLAAC and DHCPv6 changes alike);
    when they changed, writes what differs in one database call (event watchers see it).
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

        def mirror(live: list[Interface]) -> None:
            sync_interfaces(db.store, host_uuid, live, primary)
            _refresh(db.store, host_uuid, host_address(live, primary), primary)

        await db.call(mirror, interfaces)
