"""``xfer serve``: run the host daemon (see :mod:`migrate.daemon`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import trio

from migrate.addresses import parse_host
from migrate.interfaces import InterfaceError
from migrate.state.schema import SchemaError


def serve_command(args: argparse.Namespace) -> int:
    """``xfer serve [--listen ADDR]... [--ipv6-only] [--primary-address-type ipv4|ipv6]
    [--state-dir DIR] [--sr DIR]... [--shared-sr DIR]... [--password PW]
    [--tls-cert FILE --tls-key FILE]``; 0 after a clean shutdown."""
    # imported here so that the other commands do not load the daemon and the RPC classes
    from migrate.daemon import WILDCARD, DaemonConfig, default_state_dir, run_daemon
    from migrate.storage.sr import SrIdentityError

    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.interface_poll is not None and not args.interface_poll > 0:
        raise ValueError("--interface-poll must be a positive number of seconds")
    listen = [parse_host(text, allow_port_zero=True) for text in args.listen or []]
    for host in listen:
        if host.family is None:
            raise ValueError(f"--listen {host.address}: an IPv4 or IPv6 address is needed")
    password = args.password if args.password is not None else os.environ.get("XFER_PASSWORD")
    if password == "":
        raise ValueError("the password must not be empty")
    config = DaemonConfig(
        state_dir=os.path.abspath(args.state_dir or default_state_dir()),
        listen=tuple(listen) or (WILDCARD,),
        ipv6_only=args.ipv6_only,
        primary_address_type=args.primary_address_type,
        password=password,
        srs=tuple(args.sr),
        shared_srs=tuple(args.shared_sr),
        tls_cert=args.tls_cert and os.path.abspath(args.tls_cert),
        tls_key=args.tls_key and os.path.abspath(args.tls_key),
        **({} if args.interface_poll is None else {"interface_poll": args.interface_poll}),
    )
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s"
    )
    try:
        trio.run(run_daemon, config)
    except (SchemaError, InterfaceError, SrIdentityError) as e:
        raise ValueError(str(e)) from None
    return 0
