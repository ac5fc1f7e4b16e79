"""migrate.addresses: every form of host text, parsed and printed back, in one table."""

from __future__ import annotations

import socket
import urllib.parse

import pytest

from migrate import addresses
from migrate.addresses import (
    AddressError,
    Host,
    canonical,
    parse_family,
    parse_host,
    parse_url_host,
    sockaddr_host_port,
)

# input, canonical address, family (None: a name), port, URL form, host:port form
# (port 80 where none is given)
TABLE = [
    ("192.0.2.1", "192.0.2.1", "IPv4", None, "http://192.0.2.1/", "192.0.2.1:80"),
    ("192.0.2.1:8080", "192.0.2.1", "IPv4", 8080, "http://192.0.2.1:8080/", "192.0.2.1:8080"),
    ("2001:db8::1", "2001:db8::1", "IPv6", None, "http://[2001:db8::1]/", "[2001:db8::1]:80"),
    (
        "2001:0DB8:0000:0000:0000:0000:0000:0001",
        "2001:db8::1",
        "IPv6",
        None,
        "http://[2001:db8::1]/",
        "[2001:db8::1]:80",
    ),
    (
        "2001:db8:0:0:1:0:0:1",
        "2001:db8::1:0:0:1",
        "IPv6",
        None,
        "http://[2001:db8::1:0:0:1]/",
        "[2001:db8::1:0:0:1]:80",
    ),
    (
        "[2001:db8::1]:8443",
        "2001:db8::1",
        "IPv6",
        8443,
        "http://[2001:db8::1]:8443/",
        "[2001:db8::1]:8443",
    ),
    ("[::1]", "::1", "IPv6", None, "http://[::1]/", "[::1]:80"),
    ("fe80::1%eth0", "fe80::1%eth0", "IPv6", None, "http://[fe80::1%25eth0]/", "[fe80::1%eth0]:80"),
    (
        "[fe80::1%25eth0]:80",
        "fe80::1%eth0",
        "IPv6",
        80,
        "http://[fe80::1%25eth0]/",
        "[fe80::1%eth0]:80",
    ),
    (
        "[fe80::a%eth0]:81",
        "fe80::a%eth0",
        "IPv6",
        81,
        "http://[fe80::a%25eth0]:81/",
        "[fe80::a%eth0]:81",
    ),
    ("::ffff:192.0.2.1", "192.0.2.1", "IPv4", None, "http://192.0.2.1/", "192.0.2.1:80"),
    ("[::ffff:192.0.2.1]:81", "192.0.2.1", "IPv4", 81, "http://192.0.2.1:81/", "192.0.2.1:81"),
    (
        "host.example.com",
        "host.example.com",
        None,
        None,
        "http://host.example.com/",
        "host.example.com:80",
    ),
    (
        "Host.Example.COM.",
        "host.example.com",
        None,
        None,
        "http://host.example.com/",
        "host.example.com:80",
    ),
    ("xcp-ng-1:8080", "xcp-ng-1", None, 8080, "http://xcp-ng-1:8080/", "xcp-ng-1:8080"),
    (
        "http://[2001:db8::1]:8443/RPC2",
        "2001:db8::1",
        "IPv6",
        8443,
        "http://[2001:db8::1]:8443/",
        "[2001:db8::1]:8443",
    ),
    (
        "http://[fe80::1%25eth0]/",
        "fe80::1%eth0",
        "IPv6",
        None,
        "http://[fe80::1%25eth0]/",
        "[fe80::1%eth0]:80",
    ),
    ("https://192.0.2.1/", "192.0.2.1", "IPv4", None, "https://192.0.2.1/", "192.0.2.1:443"),
    (
        "https://[2001:db8::2]:443",
        "2001:db8::2",
        "IPv6",
        443,
        "https://[2001:db8::2]/",
        "[2001:db8::2]:443",
    ),
    (
        "HTTP://root@Host.Example/x?y",
        "host.example",
        None,
        None,
        "http://host.example/",
        "host.example:80",
    ),
    ("  192.0.2.7  ", "192.0.2.7", "IPv4", None, "http://192.0.2.7/", "192.0.2.7:80"),
]


@pytest.mark.parametrize(("text", "address", "family", "port", "url", "host_port"), TABLE)
def test_every_form_both_directions(
    text: str, address: str, family: str | None, port: int | None, url: str, host_port: str
) -> None:
    host = parse_host(text)
    assert (host.address, host.family, host.port) == (address, family, port)
    assert host.url() == url
    default = 443 if url.startswith("https") else 80
    assert host.host_port(None if port is not None or host.scheme else default) == host_port
    assert canonical(text) == address
    # and back: each printed form parses to the same host
    again = parse_host(url)
    assert (again.address, again.family, again.effective_port()) == (
        address,
        family,
        port or default,
    )
    back = parse_host(host_port)
    assert (back.address, back.family, back.port) == (
        address,
        family,
        int(host_port.rpartition(":")[2]),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fe80::1", "link-local address fe80::1 needs a zone"),
        ("[fe80::1]:80", "needs a zone"),
        ("http://[fe80::1]/", "needs a zone"),
        ("2001:db8::1%eth0", "zone only makes sense on a link-local"),
        ("fe80::1%eth 0", "invalid zone"),
        ("[2001:db8::1", "missing ']'"),
        ("[2001:db8::1]x", "unexpected 'x'"),
        ("[192.0.2.1]:80", "invalid IPv6 address"),
        ("2001:db8::g", "invalid IPv6 address"),
        ("192.0.2.1:99999", "port 99999 out of range"),
        ("192.0.2.1:0", "port 0 out of range"),
        ("192.0.2.1:http", "invalid port 'http'"),
        ("ftp://host/", "unsupported URL scheme 'ftp'"),
        ("http://2001:db8::1/", "needs brackets"),
        ("a..b", "invalid host name"),
        ("-bad.example", "invalid host name"),
        ("1.2.3", "invalid host name or address"),
        ("256.1.1.1", "invalid host name or address"),
        ("x" * 64 + ".example", "invalid host name"),
        ("", "empty host"),
    ],
)
def test_bad_host_text_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(AddressError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_host(text)


def test_port_zero_is_allowed_for_listening() -> None:
    assert parse_host("[::]:0", allow_port_zero=True).port == 0


def test_link_local_and_zone() -> None:
    host = parse_host("fe80::1%eth0")
    assert host.link_local and host.zone == "eth0"
    assert not parse_host("2001:db8::1").link_local
    assert parse_host("2001:db8::1").zone is None
    assert str(parse_host("[2001:DB8::1]")) == "2001:db8::1"


def test_equal_addresses_compare_equal() -> None:
    forms = ["2001:db8::1", "2001:DB8:0::1", "[2001:db8:0:0::1]", "http://[2001:db8::0:1]/"]
    assert {parse_host(f).address for f in forms} == {"2001:db8::1"}
    assert parse_host("::ffff:10.0.0.1").address == parse_host("10.0.0.1").address


def test_url_options() -> None:
    host = parse_host("2001:db8::1")
    assert host.url("/export_raw_vdi?vdi=x", port=8080) == (
        "http://[2001:db8::1]:8080/export_raw_vdi?vdi=x"
    )
    assert host.url(scheme="https", port=443) == "https://[2001:db8::1]/"
    assert host.with_port(8443).host_port() == "[2001:db8::1]:8443"
    with pytest.raises(AddressError, match="no port"):
        host.host_port()
    with pytest.raises(AddressError, match="scheme"):
        host.url(scheme="ftp")
    assert Host("192.0.2.1", "IPv4").url() == "http://192.0.2.1/"


@pytest.mark.parametrize(("text", "address", "family", "port", "url", "host_port"), TABLE)
def test_the_host_of_each_url_as_http_libraries_give_it(
    text: str, address: str, family: str | None, port: int | None, url: str, host_port: str
) -> None:
    """The URL's host without brackets, a zone still ``%25``-encoded, parses to the host."""
    given = urllib.parse.urlsplit(url).hostname
    assert given is not None
    host = parse_url_host(given)
    assert (host.address, host.family, host.port) == (address, family, None)


def test_url_host_forms() -> None:
    assert parse_url_host("fe80::1%25eth0").address == "fe80::1%eth0"
    assert parse_url_host("fe80::1%25eth0").bare == "fe80::1"
    assert parse_url_host("[fe80::1%25eth0]").address == "fe80::1%eth0"
    assert parse_url_host("xen1.example").bare == "xen1.example"
    with pytest.raises(AddressError, match="needs a zone"):
        parse_url_host("fe80::1")


def test_sockaddr_host_port() -> None:
    assert sockaddr_host_port(("192.0.2.1", 80)) == "192.0.2.1:80"
    assert sockaddr_host_port(("2001:db8::1", 443, 0, 0)) == "[2001:db8::1]:443"
    assert sockaddr_host_port(("fe80::1%eth0", 8080, 0, 2)) == "[fe80::1%eth0]:8080"
    # as getaddrinfo gives them
    ((*_, v6),) = socket.getaddrinfo("::1", 9, socket.AF_INET6, socket.SOCK_STREAM)
    assert sockaddr_host_port(v6) == "[::1]:9"


@pytest.mark.parametrize(
    ("text", "family"), [("IPv4", "IPv4"), ("ipv4", "IPv4"), ("IPV6", "IPv6"), (" ipv6 ", "IPv6")]
)
def test_family_names(text: str, family: str) -> None:
    assert parse_family(text) == family


@pytest.mark.parametrize("text", ["", "4", "inet6", "IPv5"])
def test_unknown_family_is_a_clear_error(text: str) -> None:
    with pytest.raises(AddressError, match="expected IPv4 or IPv6"):
        parse_family(text)


def test_unzoned_ip() -> None:
    """An address as interfaces and sockets report it, zone dropped, link-local kept."""
    assert str(addresses.unzoned_ip("fe80::1%eth0")) == "fe80::1"
    assert str(addresses.unzoned_ip("2001:DB8::1")) == "2001:db8::1"
    assert str(addresses.unzoned_ip("192.0.2.1")) == "192.0.2.1"
    with pytest.raises(ValueError):
        addresses.unzoned_ip("host.example")


def test_client_network() -> None:
    """A client, for counting what it holds: an IPv4 address, or the /64 of an IPv6 one."""
    assert addresses.client_network("192.0.2.7") == "192.0.2.7"
    assert addresses.client_network("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert addresses.client_network("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert addresses.client_network("fe80::1%eth0") == "fe80::/64"
    assert addresses.client_network(None) == "?"
