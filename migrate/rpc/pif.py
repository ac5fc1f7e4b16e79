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


def get_all(api: Api, session: str) -> list[str]:
    """Every PIF's ref."""
    return [api.ref(row["uuid"]) for row in api.store.all("PIF")]


def get_all_records(api: Api, session: str) -> dict[str, dict[str, Any]]:
    """Every PIF's record by ref."""
    return {api.ref(row["uuid"]): record(api, row) for row in api.store.all("PIF")}


def get_record(api: Api, session: str, self: str) -> dict[str, Any]:
    """One PIF's record."""
    return record(api, api.row("PIF", self))


def get_by_uuid(api: Api, session: str, uuid: str) -> str:
    """The ref of the PIF ``uuid``."""
    return api.by_uuid("PIF", uuid)


def get_uuid(api: Api, session: str, self: str) -> str:
    """A PIF's uuid."""
    return str(api.row("PIF", self)["uuid"])


def get_device(api: Api, session: str, self: str) -> str:
    """A PIF's interface name."""
    return str(api.row("PIF", self)["device"])


def get_IP(api: Api, session: str, self: str) -> str:
    """A PIF's first IPv4 address, bare; ``""`` if it has none."""
    ipv4 = _ipv4(pif_addresses(api.store, api.row("PIF", self)["uuid"]))
    return ipv4.address if ipv4 else ""


def get_IPv6(api: Api, session: str, self: str) -> list[str]:
    """A PIF's IPv6 addresses as ``addr/prefix`` (link-local ones left out)."""
    return _ipv6(pif_addresses(api.store, api.row("PIF", self)["uuid"]))


def get_network(api: Api, session: str, self: str) -> str:
    """The network a PIF is on."""
    return api.ref(api.row("PIF", self)["network"])


def get_host(api: Api, session: str, self: str) -> str:
    """The host a PIF belongs to."""
    return api.ref(api.row("PIF", self)["host"])


def get_primary_address_type(api: Api, session: str, self: str) -> str:
    """Which family a PIF's primary address is: ``IPv4`` or ``IPv6``."""
    return str(api.row("PIF", self)["primary_address_type"])


def set_primary_address_type(api: Api, session: str, self: str, value: str) -> None:
    """Choose a PIF's primary address family; INVALID_VALUE unless ``IPv4`` or ``IPv6``."""
    row = api.row("PIF", self)
    if value not in ADDRESS_TYPES:
        raise ApiError("INVALID_VALUE", "primary_address_type", value)
    api.store.update("PIF", row["uuid"], {"primary_address_type": value})


METHODS = {
    "PIF.get_all": get_all,
    "PIF.get_all_records": get_all_records,
    "PIF.get_record": get_record,
    "PIF.get_by_uuid": get_by_uuid,
    "PIF.get_uuid": get_uuid,
    "PIF.get_device": get_device,
    "PIF.get_IP": get_IP,
    "PIF.get_IPv6": get_IPv6,
    "PIF.get_network": get_network,
    "PIF.get_host": get_host,
    "PIF.get_primary_address_type": get_primary_address_type,
    "PIF.set_primary_address_type": set_primary_address_type,
}
