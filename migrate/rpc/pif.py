"""XenAPI class ``PIF``: this host's interfaces, their addresses and primary address type."""

from __future__ import annotations

import ipaddress
from typing import Any

from migrate.addresses import AddressError, Family, canonical
from migrate.formats.xapi import ref
from migrate.host.errors import INVALID_VALUE, ApiError
from migrate.host.services import HostServices
from migrate.interfaces import InterfaceAddress
from migrate.rpc import refs
from migrate.state.pifs import pif_addresses

CLASS = "PIF"
FIELDS = (
    "uuid device MAC network host IP netmask IPv6 primary_address_type management physical"
    " currently_attached other_config"
)
ADDRESS_TYPES: tuple[Family, ...] = ("IPv4", "IPv6")


def _ipv4(addresses: list[InterfaceAddress]) -> InterfaceAddress | None:
    return next((a for a in addresses if a.family == "IPv4"), None)


def _ipv6(addresses: list[InterfaceAddress]) -> list[str]:
    """``addr/prefix`` of every IPv6 address but link-local ones (they need a zone)."""
    return [a.cidr for a in addresses if a.family == "IPv6" and not a.link_local]


def _host_address(host: HostServices, host_uuid: str) -> str | None:
    try:
        return canonical(str(host.store.get("host", host_uuid)["address"]))
    except (KeyError, AddressError):
        return None


def record(host: HostServices, row: dict[str, Any]) -> dict[str, Any]:
    """The XenAPI record of a PIF row."""
    addresses = pif_addresses(host.store, row["uuid"])
    ipv4 = _ipv4(addresses)
    netmask = str(ipaddress.IPv4Network(f"0.0.0.0/{ipv4.prefix_length}").netmask) if ipv4 else ""
    host_address = _host_address(host, row["host"])
    return {
        "uuid": row["uuid"],
        "device": row["device"],
        "MAC": row["mac"],
        "network": ref(row["network"]),
        "host": ref(row["host"]),
        "IP": ipv4.address if ipv4 else "",
        "netmask": netmask,
        "IPv6": _ipv6(addresses),
        "primary_address_type": row["primary_address_type"],
        "management": any(a.address == host_address for a in addresses),
        "physical": True,
        "currently_attached": True,
        "other_config": {},
    }


def set_primary_address_type(host: HostServices, session: str, self: str, value: str) -> None:
    """Choose a PIF's primary address family; INVALID_VALUE unless ``IPv4`` or ``IPv6``."""
    row = refs.row(host.store, "PIF", self)
    if value not in ADDRESS_TYPES:
        raise ApiError(INVALID_VALUE, "primary_address_type", value)
    host.store.update("PIF", row["uuid"], {"primary_address_type": value})


METHODS = {"PIF.set_primary_address_type": set_primary_address_type}
