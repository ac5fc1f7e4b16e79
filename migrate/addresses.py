"""Host text as people type it, and the canonical forms xfer stores, compares and prints.

Pure: no resolution, no sockets. Accepts an IPv4 or IPv6 address (bare, bracketed, with a zone
as ``%eth0`` or, inside brackets and URLs, ``%25eth0`` per RFC 6874), ``host:port`` and
``[v6]:port`` text, a host name, or an http/https URL. Produces the canonical bare address
(RFC 5952, IPv4-mapped IPv6 shown as IPv4), the URL form and the ``host:port`` form.
A link-local IPv6 address without a zone is an error: it names no interface.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Any, Literal

Family = Literal["IPv4", "IPv6"]
"""An address family as XenAPI names it (``primary_address_type``), and everywhere else."""
FAMILIES: tuple[Family, ...] = ("IPv4", "IPv6")

DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_ZONE = re.compile(r"[A-Za-z0-9._~-]+")
_LINK_LOCAL = ipaddress.IPv6Network("fe80::/10")


class AddressError(ValueError):
    """Host text that is not a usable address, host name or URL; the message says why."""


@dataclass(frozen=True)
class Host:
    """A parsed host: canonical ``address``, optional ``port`` and URL ``scheme``."""

    address: str
    """Canonical bare form: IPv4 dotted quad, RFC 5952 IPv6 (``%zone`` appended), or a
    lower-case host name without a trailing dot. What is stored and compared."""
    family: Family | None
    """The address family of an address; None for a host name."""
    port: int | None = None
    scheme: str | None = None

    @property
    def zone(self) -> str | None:
        """The zone (interface) of a link-local IPv6 address."""
        return self.address.partition("%")[2] or None if self.family == "IPv6" else None

    @property
    def bare(self) -> str:
        """The address without its zone (what certificates and ``getaddrinfo``'s host name
        part see)."""
        return self.address.partition("%")[0]

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The address as an ``ipaddress`` object (None for a host name)."""
        return None if self.family is None else ipaddress.ip_address(self.address)

    @property
    def link_local(self) -> bool:
        """True for IPv6 link-local addresses (which cannot be offered to other hosts)."""
        return self.family == "IPv6" and ipaddress.IPv6Address(self.address) in _LINK_LOCAL

    def with_port(self, port: int) -> Host:
        """The same host with ``port``."""
        return replace(self, port=_check_port(port, "port"))

    def host_port(self, port: int | None = None) -> str:
        """``192.0.2.1:80``, ``[2001:db8::1]:443``, ``[fe80::1%eth0]:80``, ``name:80``."""
        return _host_port(self.address, self.effective_port(port))

    def url(self, path: str = "/", *, scheme: str | None = None, port: int | None = None) -> str:
        """``http://[2001:db8::1]:8443/``: brackets for IPv6, ``%25`` before a zone (RFC 6874),
        the scheme's default port left out."""
        scheme = scheme or self.scheme or "http"
        if scheme not in DEFAULT_PORTS:
            raise AddressError(f"unsupported URL scheme {scheme!r}: expected http or https")
        port = port if port is not None else self.port
        if self.family == "IPv6":
            bare, _, zone = self.address.partition("%")
            host = f"[{bare}%25{zone}]" if zone else f"[{bare}]"
        else:
            host = self.address
        netloc = host if port in (None, DEFAULT_PORTS[scheme]) else f"{host}:{port}"
        return f"{scheme}://{netloc}{path}"

    def effective_port(self, port: int | None = None) -> int:
        """``port`` if given, else the parsed port, else the URL scheme's default."""
        if port is not None:
            return port
        if self.port is not None:
            return self.port
        if self.scheme is not None:
            return DEFAULT_PORTS[self.scheme]
        raise AddressError(f"no port given for {self.address}")

    def __str__(self) -> str:
        return self.address


def parse_host(text: str, *, allow_port_zero: bool = False) -> Host:
    """Parse anything a user may type as a host; raises AddressError naming what is wrong."""
    raw = text.strip()
    if not raw:
        raise AddressError("empty host")
    if "://" in raw:
        return _parse_url(raw, allow_port_zero)
    if raw.startswith("["):
        host, port = _split_bracketed(raw, raw)
        return _literal(host, port, None, raw, allow_port_zero, in_brackets=True)
    if raw.count(":") >= 2:  # a bare IPv6 address: it cannot carry a port without brackets
        return _literal(raw, None, None, raw, allow_port_zero, in_brackets=False)
    host, sep, port = raw.partition(":")
    return _literal(host, port if sep else None, None, raw, allow_port_zero, in_brackets=False)


def parse_url_host(text: str) -> Host:
    """The host of a URL as HTTP libraries hand it over: without brackets, a zone still
    ``%25``-encoded (``fe80::1%25eth0``), no port."""
    return parse_host(f"[{text}]" if ":" in text and not text.startswith("[") else text)


def sockaddr_host_port(sockaddr: tuple[Any, ...]) -> str:
    """A socket address (as the ``socket`` module gives it) as ``host:port`` text:
    ``192.0.2.1:80``, ``[2001:db8::1]:80``, ``[fe80::1%eth0]:80``. Not validated: it names
    what a socket was given or reported."""
    return _host_port(str(sockaddr[0]), int(sockaddr[1]))


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def parse_family(text: str) -> Family:
    """``IPv4`` or ``IPv6``, from that text in any case; AddressError otherwise."""
    for family in FAMILIES:
        if text.strip().lower() == family.lower():
            return family
    raise AddressError(f"unknown address family {text!r}: expected IPv4 or IPv6")


def _parse_url(raw: str, allow_port_zero: bool) -> Host:
    scheme, _, rest = raw.partition("://")
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise AddressError(f"unsupported URL scheme {scheme!r} in {raw!r}: expected http or https")
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in netloc:
        netloc = netloc.rpartition("@")[2]  # user information is not part of the host
    if netloc.startswith("["):
        host, port = _split_bracketed(netloc, raw)
        return _literal(host, port, scheme, raw, allow_port_zero, in_brackets=True)
    if netloc.count(":") >= 2:
        raise AddressError(f"IPv6 address in a URL needs brackets: {raw!r}")
    host, sep, port = netloc.partition(":")
    return _literal(host, port if sep else None, scheme, raw, allow_port_zero, in_brackets=False)


def _split_bracketed(text: str, raw: str) -> tuple[str, str | None]:
    close = text.find("]")
    if close < 0:
        raise AddressError(f"missing ']' in {raw!r}")
    inside, after = text[1:close], text[close + 1 :]
    if after and not after.startswith(":"):
        raise AddressError(f"unexpected {after!r} after ']' in {raw!r}")
    return inside, after[1:] if after else None


def _literal(
    host: str,
    port: str | None,
    scheme: str | None,
    raw: str,
    allow_port_zero: bool,
    *,
    in_brackets: bool,
) -> Host:
    number = None if port is None else _check_port(_port_number(port, raw), raw, allow_port_zero)
    if in_brackets or ":" in host:
        address = _ipv6(host, raw, percent_encoded=in_brackets)
        return Host(address, "IPv6" if ":" in address else "IPv4", number, scheme)
    try:
        return Host(str(ipaddress.IPv4Address(host)), "IPv4", number, scheme)
    except ipaddress.AddressValueError:
        pass
    return Host(_host_name(host, raw), None, number, scheme)


def _ipv6(text: str, raw: str, *, percent_encoded: bool) -> str:
    """Canonical text of an IPv6 literal, or the IPv4 of an IPv4-mapped one."""
    bare, percent, zone = text.partition("%")
    if percent_encoded and zone.startswith("25") and len(zone) > 2:
        zone = zone[2:]  # RFC 6874: "%25" is the percent sign; a bare "%" is accepted too
    if percent and not _ZONE.fullmatch(zone):
        raise AddressError(f"invalid zone {zone!r} in {raw!r}")
    try:
        address = ipaddress.IPv6Address(bare)
    except ipaddress.AddressValueError as e:
        raise AddressError(f"invalid IPv6 address {bare!r} in {raw!r}: {e}") from None
    if address.ipv4_mapped is not None and not zone:
        return str(address.ipv4_mapped)
    canonical = address.compressed
    if address in _LINK_LOCAL and not zone:
        raise AddressError(
            f"link-local address {canonical} needs a zone naming the interface, "
            f"e.g. {canonical}%eth0"
        )
    if zone and not (address in _LINK_LOCAL or address.is_multicast):
        raise AddressError(f"a zone only makes sense on a link-local address: {raw!r}")
    return f"{canonical}%{zone}" if zone else canonical


def _host_name(text: str, raw: str) -> str:
    name = text.rstrip(".")
    try:
        ascii_name = name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise AddressError(f"invalid host name {text!r} in {raw!r}") from None
    labels = ascii_name.split(".")
    if (
        not ascii_name
        or len(ascii_name) > 253
        or not all(_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise AddressError(f"invalid host name or address {text!r} in {raw!r}")
    return ascii_name


def _port_number(text: str, raw: str) -> int:
    if not text.isdigit():
        raise AddressError(f"invalid port {text!r} in {raw!r}")
    return int(text)


def _check_port(port: int, raw: str, allow_zero: bool = False) -> int:
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise AddressError(f"port {port} out of range in {raw!r}")
    return port


def unzoned_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IP address ``text`` names, its zone dropped: an address as an interface or a socket
    reports it, link-local ones without their zone included. ValueError if it is none."""
    return ipaddress.ip_address(text.partition("%")[0])


def client_network(address: str | None) -> str:
    """Who a client is, for counting what it holds: its address, or its /64 for IPv6 (one
    host is given a whole /64, and may speak from any address in it); ``?`` when unknown."""
    if address is None:
        return "?"
    try:
        ip = unzoned_ip(address)
    except ValueError:
        return address
    if ip.version == 6:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def canonical(text: str) -> str:
    """The canonical bare form of an address or host name (no port, no brackets)."""
    return parse_host(text).address
