"""migrate.formats.destmap: the dest map of host.migrate_receive, over IPv4, IPv6 and dual
stack, with each primary address type and with a migration network apart from management."""

from __future__ import annotations

import pytest

from migrate.formats.destmap import KEYS, NoMigrationAddress, dest_map, migration_address

SESSION = "OpaqueRef:0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
HOST = "OpaqueRef:5e0e0b5c-8a8f-4d1b-9c53-1f4a6f6f0001"

IPV4 = ["192.0.2.10/24"]
IPV6 = ["fe80::10/64", "2001:db8::10/64", "2001:db8::11/64"]
DUAL = ["192.0.2.10/24", "fe80::10/64", "2001:db8::10/64"]


def build(address: str, *, master: str = "192.0.2.1", scheme: str = "http", port: int = 8080):
    return dest_map(address, scheme=scheme, port=port, session=SESSION, host=HOST, master=master)


def test_ipv4() -> None:
    address = migration_address(IPV4, "IPv4")
    assert address == "192.0.2.10"
    assert build(address, master=address) == {
        "xenops": f"http://192.0.2.10:8080/services/xenops?session_id={SESSION}",
        "SM": f"http://192.0.2.10:8080/services/SM?session_id={SESSION}",
        "master": "http://192.0.2.10:8080/",
        "session_id": SESSION,
        "host": HOST,
    }


def test_ipv6_first_global_address_in_brackets_without_prefix() -> None:
    address = migration_address(IPV6, "IPv6")
    assert address == "2001:db8::10"  # the link-local one before it is never offered
    result = build(address, master=address, scheme="https", port=8443)
    assert result["xenops"] == f"https://[2001:db8::10]:8443/services/xenops?session_id={SESSION}"
    assert result["SM"] == f"https://[2001:db8::10]:8443/services/SM?session_id={SESSION}"
    assert result["master"] == "https://[2001:db8::10]:8443/"
    assert set(result) == set(KEYS)


@pytest.mark.parametrize(
    ("primary", "expected", "in_url"),
    [("IPv4", "192.0.2.10", "192.0.2.10"), ("IPv6", "2001:db8::10", "[2001:db8::10]")],
)
def test_dual_stack_follows_the_primary_address_type(
    primary: str, expected: str, in_url: str
) -> None:
    address = migration_address(DUAL, primary)  # type: ignore[arg-type]
    assert address == expected
    assert build(address)["xenops"].startswith(f"http://{in_url}:8080/services/xenops?")


def test_separate_migration_network() -> None:
    """The service URLs are on the migration network's address, the master on management."""
    management = migration_address(DUAL, "IPv6")
    migration = migration_address(["fe80::20/64", "2001:db8:1::20/64"], "IPv6")
    result = build(migration, master=management)
    assert result["xenops"] == f"http://[2001:db8:1::20]:8080/services/xenops?session_id={SESSION}"
    assert result["SM"].startswith("http://[2001:db8:1::20]:8080/")
    assert result["master"] == "http://[2001:db8::10]:8080/"


def test_canonical_forms_default_ports_and_loopback() -> None:
    assert migration_address(["2001:DB8:0:0::0:1/64"], "IPv6") == "2001:db8::1"
    assert migration_address(["::1/128"], "IPv6") == "::1"  # two hosts on one machine
    assert migration_address(["127.0.0.1/8"], "IPv4") == "127.0.0.1"
    assert migration_address(["2001:db8::5"], "IPv6") == "2001:db8::5"  # bare, no prefix
    assert build("::1", master="::1", port=80)["xenops"].startswith("http://[::1]/services/")
    assert build("::1", master="::1", scheme="https", port=443)["master"] == "https://[::1]/"


@pytest.mark.parametrize(
    ("addresses", "primary", "message"),
    [
        (["fe80::10/64"], "IPv6", "no IPv6 address that is not link-local"),
        (["169.254.7.1/16"], "IPv4", "no IPv4 address that is not link-local"),
        (IPV4, "IPv6", "(addresses: 192.0.2.10)"),
        (IPV6, "IPv4", "fe80::10, 2001:db8::10, 2001:db8::11"),
        ([], "IPv4", "(addresses: none)"),
        (["not-an-address"], "IPv4", "'not-an-address' is not an IP address"),
    ],
)
def test_no_address_to_offer(addresses: list[str], primary: str, message: str) -> None:
    with pytest.raises(NoMigrationAddress, match=message.replace("(", r"\(").replace(")", r"\)")):
        migration_address(addresses, primary)  # type: ignore[arg-type]
