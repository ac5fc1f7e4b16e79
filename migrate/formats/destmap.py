"""The dest map of ``host.migrate_receive``, pure: where a source host sends a VM.

xapi answers ``{"xenops", "SM", "master", "session_id", "host"}``: the two service URLs are
built on the destination's address on the network the migration uses (a migration network
apart from management, where the host has one), of that interface's *primary address type*:
its IPv4 address, or its first IPv6 address that is not link-local, without the prefix length,
in brackets inside the URL. A link-local address is never offered (it names no interface on
the source); loopback is (two hosts on one machine).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from migrate.addresses import Family, parse_host

XENOPS_SERVICE = "/services/xenops"
"""Where a destination takes a VM's memory (``<xenops>/migrate/vm|mem/<id>``)."""
SM_SERVICE = "/services/SM"
"""Where a destination takes a VM's disks (storage migration)."""
KEYS = ("xenops", "SM", "master", "session_id", "host")
"""The keys of a dest map."""


class NoMigrationAddress(ValueError):
    """The interface has no address of its primary type that another host can reach."""


def migration_address(addresses: Sequence[str], primary: Family) -> str:
    """The address to offer among an interface's ``addresses`` (bare or ``addr/prefix``, in
    the kernel's order): the first of family ``primary`` that is not link-local, canonical
    and without its prefix length. NoMigrationAddress naming what there is when none fits."""
    seen = []
    for text in addresses:
        try:
            address = ipaddress.ip_interface(text).ip
        except ValueError:
            raise NoMigrationAddress(f"{text!r} is not an IP address") from None
        family: Family = "IPv6" if address.version == 6 else "IPv4"
        if family == primary and not address.is_link_local:
            return str(address)
        seen.append(str(address))
    have = ", ".join(seen) or "none"
    raise NoMigrationAddress(
        f"no {primary} address that is not link-local to offer (addresses: {have})"
    )


def dest_map(
    address: str, *, scheme: str, port: int, session: str, host: str, master: str
) -> dict[str, str]:
    """The dest map for a destination reached at ``address`` (bare, as
    :func:`migration_address` gives it) over ``scheme`` on ``port``; ``session``: the ref of
    the session made for the source, ``host``: the destination host's ref, ``master``: the
    address of its pool's master (its management address)."""
    where = parse_host(address)
    query = f"?session_id={session}"
    return {
        "xenops": where.url(XENOPS_SERVICE + query, scheme=scheme, port=port),
        "SM": where.url(SM_SERVICE + query, scheme=scheme, port=port),
        "master": parse_host(master).url("/", scheme=scheme, port=port),
        "session_id": session,
        "host": host,
    }
