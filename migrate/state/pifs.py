"""Mirroring the live interfaces into networks, PIFs and their addresses.

One PIF per interface of this host and one network per interface name; a record is written
(and so shows as an event) only when something about it changed, so calling
:func:`sync_interfaces` whenever addresses may have changed (static, SLAAC, DHCPv6) is cheap.
"""

from __future__ import annotations

import uuid as uuidlib

from migrate.addresses import Family
from migrate.interfaces import Interface, InterfaceAddress
from migrate.state.store import Store


def pif_addresses(store: Store, pif: str) -> list[InterfaceAddress]:
    """The addresses recorded for a PIF, in the kernel's order."""
    rows = store.db.execute(
        "SELECT address, prefix_length, family, link_local FROM pif_address WHERE pif = ? "
        "ORDER BY rowid",
        (pif,),
    )
    return [
        InterfaceAddress(r["address"], r["prefix_length"], r["family"], bool(r["link_local"]))
        for r in rows
    ]


def _store_addresses(store: Store, pif: str, addresses: tuple[InterfaceAddress, ...]) -> None:
    store.db.execute("DELETE FROM pif_address WHERE pif = ?", (pif,))
    store.db.executemany(
        "INSERT INTO pif_address (pif, address, prefix_length, family, link_local) "
        "VALUES (?, ?, ?, ?, ?)",
        [(pif, a.address, a.prefix_length, a.family, int(a.link_local)) for a in addresses],
    )


def sync_interfaces(
    store: Store, host: str, interfaces: list[Interface], primary: Family = "IPv6"
) -> None:
    """Make ``host``'s PIFs mirror ``interfaces`` (new PIFs take ``primary``), in one change."""
    with store.change():
        live = {i.name for i in interfaces}
        for record in store.all("PIF", host=host):
            if record["device"] not in live:
                store.delete("PIF", record["uuid"])
        for interface in interfaces:
            networks = store.all("network", bridge=interface.name)
            if networks:
                network = networks[0]["uuid"]
            else:
                network = str(uuidlib.uuid4())
                store.insert(
                    "network",
                    {
                        "uuid": network,
                        "name_label": f"Network on {interface.name}",
                        "bridge": interface.name,
                    },
                )
            pifs = store.all("PIF", host=host, device=interface.name)
            if not pifs:
                pif = str(uuidlib.uuid4())
                store.insert(
                    "PIF",
                    {
                        "uuid": pif,
                        "host": host,
                        "network": network,
                        "device": interface.name,
                        "mac": interface.mac,
                        "primary_address_type": primary,
                    },
                )
                _store_addresses(store, pif, interface.addresses)
                continue
            pif = pifs[0]["uuid"]
            same = tuple(pif_addresses(store, pif)) == interface.addresses
            if same and pifs[0]["mac"] == interface.mac:
                continue
            store.update("PIF", pif, {"mac": interface.mac})
            _store_addresses(store, pif, interface.addresses)
