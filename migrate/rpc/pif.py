"""XenAPI class ``PIF``: this host's interfaces, their addresses and primary address type."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from migrate.addresses import AddressError, canonical
from migrate.interfaces import InterfaceAddress
from migrate.rpc.codec import ApiError
from migrate.state.pifs import pif_addresses

if TYPE_CHECKING:
    from migrate.rpc.dispatch import Api

CLASS = "PIF"
FIELDS = (
    "uuid device MAC network host IP netmask IPv6 primary_address_type management physical"
    " currently_attached other_config"
)
ADDRESS_TYPES = ("IPv4", "IPv6")


def _ipv4(addresses: list[InterfaceAddress]) -> InterfaceAddress | None:
    return next((a for a in addresses if a.family == "IPv4"), None)


def _ipv6(addresses: list[InterfaceAddress]) -> list[str]:
    """``addr/prefix`` of every IPv6 address but link-local ones (they need a zone)."""
    return [a.cidr for a in addresses if a.family == "IPv6" and not a.link_local]


def _host_address(api: Api, host_uuid: str) -> str | None:
    try:
        return canonical(str(api.store.get("host", host_uuid)["address"]))
    except (KeyError, AddressError):
        return None


def record(api: Api, row: dict[str, Any]) -> dict[str, Any]:
    """The XenAPI record of a PIF row."""
    addresses = pif_addresses(api.store, row["uuid"])
    ipv4 = _ipv4(addresses)
    netmask = str(ipaddress.IPv4Network(f"0.0.0.0/{ipv4.prefix_length}").netmask) if ipv4 else ""
    host_address = _host_address(api, row["host"])
    return {
        "uuid": row["uuid"],
        "device": row["device"],
        "MAC": row["mac"],
        "network": api.ref(row["network"]),
        "host": api.ref(row["host"]),
        "IP": ipv4.address if ipv4 else "",
        "netmask": netmask,
        "IPv6": _ipv6(addresses),
        "primary_address_type": row["primary_address_type"],
        "management": any(a.address == host_address for a in addresses),
        "physical": True,
        "currently_attached": True,
        "other_config": {},
    }


def set_primary_address_type(api: Api, session: str, self: str, value: str) -> None:
    """Choose a PIF's primary address family; INVALID_VALUE unless ``IPv4`` or ``IPv6``."""
    row = api.row("PIF", self)
    if value not in ADDRESS_TYPES:
        raise ApiError("INVALID_VALUE", "primary_address_type", value)
    api.store.update("PIF", row["uuid"], {"primary_address_type": value})


METHODS = {"PIF.set_primary_address_type": set_primary_address_type}
