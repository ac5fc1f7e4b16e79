"""The host's network interfaces and their addresses, as iproute2 reports them.

``ip -json address show`` is read rather than ioctls: it reports every IPv4 and IPv6 address
with its prefix length whatever assigned it (static, SLAAC, DHCPv6), and its JSON is stable.
Addresses are kept in canonical form (:mod:`migrate.addresses`), link-local ones flagged.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

from migrate.addresses import Family, unzoned_ip


@dataclass(frozen=True)
class InterfaceAddress:
    """One address of an interface: canonical text (no zone), prefix length, family."""

    address: str
    prefix_length: int
    family: Family
    link_local: bool

    @property
    def cidr(self) -> str:
        """``2001:db8::1/64``, as XenAPI's PIF.IPv6 lists addresses."""
        return f"{self.address}/{self.prefix_length}"


@dataclass(frozen=True)
class Interface:
    """A live network interface: name, MAC and addresses in the order the kernel lists them."""

    name: str
    mac: str
    addresses: tuple[InterfaceAddress, ...]

    def address_for(self, primary: Family) -> str | None:
        """The address other hosts should use for ``primary``: the first IPv4, or the first
        IPv6 that is not link-local (a link-local address is never offered to other hosts)."""
        for a in self.addresses:
            if a.family == primary and not a.link_local:
                return a.address
        return None


class InterfaceError(RuntimeError):
    """The interface list could not be read or understood."""


def parse_ip_json(text: str) -> list[Interface]:
    """Interfaces from the output of ``ip -json address show`` (pure)."""
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as e:
        raise InterfaceError(f"ip -json address: not JSON: {e}") from None
    interfaces = []
    for entry in entries:
        addresses = []
        for info in entry.get("addr_info", []):
            family = {"inet": "IPv4", "inet6": "IPv6"}.get(info.get("family", ""))
            if family is None or "local" not in info:
                continue
            ip = unzoned_ip(info["local"])
            addresses.append(
                InterfaceAddress(
                    str(ip),
                    int(info.get("prefixlen", 128 if family == "IPv6" else 32)),
                    "IPv4" if family == "IPv4" else "IPv6",
                    ip.is_link_local,
                )
            )
        interfaces.append(Interface(entry["ifname"], entry.get("address", ""), tuple(addresses)))
    return interfaces


def read_interfaces() -> list[Interface]:
    """The live interfaces of this machine (runs ``ip -json address show``)."""
    try:
        out = subprocess.run(
            ["ip", "-json", "address", "show"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise InterfaceError(f"cannot list interfaces with iproute2's ip: {e}") from None
    return parse_ip_json(out)
