"""migrate.interfaces and migrate.state.pifs: live addresses mirrored into PIFs."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from migrate.interfaces import (
    Interface,
    InterfaceAddress,
    InterfaceError,
    parse_ip_json,
    read_interfaces,
)
from migrate.state.pifs import pif_addresses, sync_interfaces
from migrate.state.store import Store

IP_JSON = json.dumps(
    [
        {
            "ifname": "lo",
            "address": "00:00:00:00:00:00",
            "addr_info": [
                {"family": "inet", "local": "127.0.0.1", "prefixlen": 8},
                {"family": "inet6", "local": "::1", "prefixlen": 128},
            ],
        },
        {
            "ifname": "eth0",
            "address": "02:fc:00:00:00:01",
            "addr_info": [
                {"family": "inet6", "local": "2001:DB8:0::10", "prefixlen": 64},
                {"family": "inet6", "local": "fe80::fc:ff:fe00:1", "prefixlen": 64},
                {"family": "inet", "local": "192.0.2.2", "prefixlen": 24},
            ],
        },
        {"ifname": "eth1", "address": "02:fc:00:00:00:02", "addr_info": []},
    ]
)


def test_parse_ip_json_canonical_and_flagged() -> None:
    lo, eth0, eth1 = parse_ip_json(IP_JSON)
    assert lo.addresses == (
        InterfaceAddress("127.0.0.1", 8, "IPv4", False),
        InterfaceAddress("::1", 128, "IPv6", False),
    )
    assert [a.cidr for a in eth0.addresses] == [
        "2001:db8::10/64",
        "fe80::fc:ff:fe00:1/64",
        "192.0.2.2/24",
    ]
    assert [a.link_local for a in eth0.addresses] == [False, True, False]
    assert eth0.address_for("IPv6") == "2001:db8::10"
    assert eth0.address_for("IPv4") == "192.0.2.2"
    assert eth1.addresses == () and eth1.address_for("IPv6") is None


def test_link_local_is_never_offered() -> None:
    only_link_local = Interface(
        "eth0", "02:00:00:00:00:01", (InterfaceAddress("fe80::1", 64, "IPv6", True),)
    )
    assert only_link_local.address_for("IPv6") is None


def test_garbage_is_an_interface_error() -> None:
    with pytest.raises(InterfaceError, match="not JSON"):
        parse_ip_json("<html>")


def test_this_machine_has_loopback_in_both_families() -> None:
    lo = next(i for i in read_interfaces() if i.name == "lo")
    assert {(a.address, a.family) for a in lo.addresses} >= {("127.0.0.1", "IPv4"), ("::1", "IPv6")}


def make_host(store: Store) -> str:
    host = str(uuid.uuid4())
    store.insert(
        "host",
        {"uuid": host, "name_label": "h", "address": "::1", "primary_address_type": "IPv6"},
    )
    return host


def test_sync_writes_only_what_changed(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "x.db"))
    host = make_host(store)
    interfaces = parse_ip_json(IP_JSON)
    sync_interfaces(store, host, interfaces)
    pifs = {p["device"]: p for p in store.all("PIF", host=host)}
    assert set(pifs) == {"lo", "eth0", "eth1"}
    assert {n["bridge"] for n in store.all("network")} == {"lo", "eth0", "eth1"}
    assert pif_addresses(store, pifs["eth0"]["uuid"]) == list(interfaces[1].addresses)
    assert pifs["eth0"]["primary_address_type"] == "IPv6"

    settled = store.generation()
    sync_interfaces(store, host, interfaces)
    assert store.changes_since(settled) == []

    # SLAAC gives eth1 an address; eth0 goes away
    eth1 = Interface(
        "eth1", "02:fc:00:00:00:02", (InterfaceAddress("2001:db8:1::5", 64, "IPv6", False),)
    )
    sync_interfaces(store, host, [interfaces[0], eth1])
    changes = {(c.cls, c.uuid, c.deleted) for c in store.changes_since(settled)}
    assert changes == {("PIF", pifs["eth1"]["uuid"], False), ("PIF", pifs["eth0"]["uuid"], True)}
    assert [a.cidr for a in pif_addresses(store, pifs["eth1"]["uuid"])] == ["2001:db8:1::5/64"]
    assert pif_addresses(store, pifs["eth0"]["uuid"]) == []
