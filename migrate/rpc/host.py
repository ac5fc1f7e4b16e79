"""XenAPI class ``host``: this host, its address, its PIFs and VMs, and the receiving end of
a migration (``host.migrate_receive``)."""

from __future__ import annotations

from typing import Any

from migrate.formats.destmap import NoMigrationAddress, dest_map, migration_address
from migrate.formats.xapi import DEFAULT_USER, ref
from migrate.host import sessions
from migrate.host.errors import HOST_CANNOT_ATTACH_NETWORK, INTERFACE_HAS_NO_IP, ApiError
from migrate.host.services import HostServices
from migrate.rpc import refs
from migrate.rpc.values import api_map
from migrate.state.pifs import pif_addresses
from migrate.state.vms import resident_vms

CLASS = "host"
FIELDS = (
    "uuid name_label name_description hostname address enabled PIFs PBDs resident_VMs"
    " API_version_major API_version_minor API_version_vendor other_config"
)
API_VERSION_MAJOR = 2
API_VERSION_MINOR = 21


def record(host: HostServices, row: dict[str, Any]) -> dict[str, Any]:
    """The XenAPI record of a host row."""
    return {
        "uuid": row["uuid"],
        "name_label": row["name_label"],
        "name_description": "",
        "hostname": row["name_label"],
        "address": row["address"],
        "enabled": True,
        "PIFs": [ref(p["uuid"]) for p in host.store.all("PIF", host=row["uuid"])],
        "PBDs": [],
        "resident_VMs": [ref(vm["uuid"]) for vm in resident_vms(host.store, row["uuid"])],
        "API_version_major": API_VERSION_MAJOR,
        "API_version_minor": API_VERSION_MINOR,
        "API_version_vendor": "xfer",
        "other_config": {},
    }


def migrate_receive(
    host: HostServices, session: str, self: str, network: str, options: Any
) -> dict[str, str]:
    """Prepare this host to receive a VM over ``network``: the dest map a source's
    ``VM.migrate_send`` takes (:mod:`migrate.formats.destmap`), with a new session on this
    host. HOST_CANNOT_ATTACH_NETWORK when this host has no PIF on ``network``,
    INTERFACE_HAS_NO_IP when that PIF has no usable address of its primary type."""
    host_row = refs.row(host.store, "host", self)
    network_row = refs.row(host.store, "network", network)
    api_map(options, "options")
    pifs = host.store.all("PIF", host=host_row["uuid"], network=network_row["uuid"])
    if not pifs:
        raise ApiError(HOST_CANNOT_ATTACH_NETWORK, self, network)
    pif = pifs[0]
    addresses = [a.address for a in pif_addresses(host.store, pif["uuid"])]
    try:
        address = migration_address(addresses, pif["primary_address_type"])
    except NoMigrationAddress as e:
        raise ApiError(INTERFACE_HAS_NO_IP, ref(pif["uuid"]), str(e)) from None
    return dest_map(
        address,
        scheme=host.scheme,
        port=host.port,
        session=sessions.open_session(host.store, DEFAULT_USER, "host.migrate_receive"),
        host=ref(host_row["uuid"]),
        master=host_row["address"],
    )


METHODS = {"host.migrate_receive": migrate_receive}
