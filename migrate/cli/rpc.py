"""``xfer host info`` and ``xfer vdi list|create|destroy``: XenAPI clients of a host.

Each command logs in with ``--user``/``--password`` (default ``$XFER_USER``, else ``root``, and
``$XFER_PASSWORD``), makes its calls over JSON-RPC (:mod:`migrate.cli.rpc_client`) and logs out.
Failures are one line, ``xfer: error: CODE: params``, and exit status 1.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from migrate.cli.rpc_client import (
    TIMEOUT,
    ApiFailure,
    Client,
    ClientError,
    endpoint,
    ssl_context,
)
from migrate.cli.units import format_size, parse_size

DEFAULT_USER = "root"
NULL_REF = "OpaqueRef:NULL"


def client_options() -> argparse.ArgumentParser:
    """The options every command talking to a host takes: host, credentials, TLS."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--host",
        required=True,
        metavar="HOST",
        help="the host: IPv4, IPv6 (bracketed with a port, zoned link-local as fe80::1%%eth0), "
        "host:port, a name, or an http/https URL (default port 8080)",
    )
    common.add_argument("--user", help=f"user name (default: $XFER_USER, else {DEFAULT_USER})")
    common.add_argument("--password", help="password (default: $XFER_PASSWORD)")
    common.add_argument("--ca", metavar="FILE", help="verify an https host against FILE's CAs")
    common.add_argument(
        "--insecure", action="store_true", help="do not verify an https host's certificate"
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=TIMEOUT,
        metavar="SECONDS",
        help=f"connect and read timeout (default: {TIMEOUT:g})",
    )
    return common


def register(commands: Any) -> None:
    """Add ``host`` and ``vdi`` to ``commands``."""
    common = client_options()

    group = commands.add_parser("host", help="query a host over XenAPI")
    sub = group.add_subparsers(dest="host_command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "info", parents=[common], help="show the host's name, uuid, addresses and PIFs"
    )
    p.set_defaults(run=host_info)

    group = commands.add_parser("vdi", help="list, create and destroy a host's VDIs over XenAPI")
    sub = group.add_subparsers(dest="vdi_command", required=True, metavar="COMMAND")
    p = sub.add_parser("list", parents=[common], help="list the VDIs (uuid, name, size, SR)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=vdi_list)
    p = sub.add_parser("create", parents=[common], help="create an empty VDI; prints its uuid")
    p.add_argument("--size", required=True, type=parse_size, help="virtual size, e.g. 10G")
    p.add_argument("--sr", metavar="UUID", help="the SR (default: the pool's default SR)")
    p.add_argument("--name", default="", help="the VDI's name label")
    p.set_defaults(run=vdi_create)
    p = sub.add_parser("destroy", parents=[common], help="destroy a VDI and its file")
    p.add_argument("--vdi", required=True, metavar="UUID", help="the VDI's uuid")
    p.set_defaults(run=vdi_destroy)


Command = Callable[[Client, argparse.Namespace], int]


def credentials(args: argparse.Namespace) -> tuple[str, str]:
    """User and password from the options, else ``$XFER_USER``/``$XFER_PASSWORD``."""
    user = args.user or os.environ.get("XFER_USER") or DEFAULT_USER
    password = args.password if args.password is not None else os.environ.get("XFER_PASSWORD")
    if password is None:
        raise ValueError("no password: give --password or set XFER_PASSWORD")
    return user, password


def _session(command: Command) -> Callable[[argparse.Namespace], int]:
    """Run ``command`` with a logged-in client; ClientError as one error line, exit 1."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        user, password = credentials(args)
        _, url = endpoint(args.host)
        context = ssl_context(args.ca, args.insecure)
        try:
            with Client(url, context=context, timeout=args.timeout) as client:
                client.login(user, password)
                return command(client, args)
        except ClientError as e:
            print(f"xfer: error: {e}", file=sys.stderr)
            return 1

    return run


@_session
def host_info(client: Client, args: argparse.Namespace) -> int:
    """``xfer host info --host HOST``."""
    records: dict[str, dict[str, Any]] = client.call("host.get_all_records")
    pifs: dict[str, dict[str, Any]] = client.call("PIF.get_all_records")
    for ref, host in sorted(records.items(), key=lambda item: item[1].get("uuid", "")):
        own = [pifs[p] for p in host.get("PIFs", []) if p in pifs]
        own += [p for r, p in pifs.items() if p.get("host") == ref and p not in own]
        own.sort(key=lambda p: p.get("device", ""))
        print(f"name:                 {host.get('name_label', '')}")
        print(f"uuid:                 {host.get('uuid', '')}")
        print(f"address:              {host.get('address', '')}")
        print(f"primary address type: {_primary_address_type(host, own)}")
        print("PIFs:" if own else "PIFs:                 none")
        for pif in own:
            print(f"  {_pif_line(pif)}")
    return 0


def _primary_address_type(host: dict[str, Any], pifs: list[dict[str, Any]]) -> str:
    """The host's field if it has one, else its management PIF's, else the address family."""
    if host.get("primary_address_type"):
        return str(host["primary_address_type"])
    for pif in pifs:
        if pif.get("management") and pif.get("primary_address_type"):
            return str(pif["primary_address_type"])
    return "IPv6" if ":" in str(host.get("address", "")) else "IPv4"


def _pif_line(pif: dict[str, Any]) -> str:
    parts = [str(pif.get("device", "?")), str(pif.get("MAC", "")) or "-"]
    if pif.get("IP"):
        parts.append(f"IPv4 {pif['IP']}" + (f"/{pif['netmask']}" if pif.get("netmask") else ""))
    parts.extend(f"IPv6 {address}" for address in pif.get("IPv6", []))
    if pif.get("management"):
        parts.append("(management)")
    return "  ".join(parts)


@_session
def vdi_list(client: Client, args: argparse.Namespace) -> int:
    """``xfer vdi list --host HOST [--json]``."""
    vdis: dict[str, dict[str, Any]] = client.call("VDI.get_all_records")
    srs: dict[str, dict[str, Any]] = client.call("SR.get_all_records")
    rows = [
        {
            "uuid": vdi.get("uuid", ""),
            "name_label": vdi.get("name_label", ""),
            "virtual_size": int(vdi.get("virtual_size", 0)),
            "physical_utilisation": int(vdi.get("physical_utilisation", 0)),
            "SR": srs.get(vdi.get("SR", ""), {}).get("uuid", ""),
        }
        for vdi in vdis.values()
    ]
    rows.sort(key=lambda row: (row["SR"], row["name_label"], row["uuid"]))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [("UUID", "NAME", "SIZE", "SR")] + [
        (row["uuid"], row["name_label"], format_size(row["virtual_size"]), row["SR"])
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(3)]
    for uuid, name, size, sr in table:
        print(f"{uuid:<{widths[0]}}  {name:<{widths[1]}}  {size:>{widths[2]}}  {sr}")
    return 0


@_session
def vdi_create(client: Client, args: argparse.Namespace) -> int:
    """``xfer vdi create --host HOST --size SIZE [--sr UUID] [--name NAME]``: the new uuid."""
    sr = client.call("SR.get_by_uuid", args.sr) if args.sr else _default_sr(client)
    ref = client.call("VDI.create", {"SR": sr, "virtual_size": args.size, "name_label": args.name})
    print(client.call("VDI.get_uuid", ref))
    return 0


def _default_sr(client: Client) -> str:
    """The pool's ``default_SR``; on a server without the ``pool`` class (or without a
    default), the first SR in uuid order."""
    try:
        pools: dict[str, dict[str, Any]] = client.call("pool.get_all_records")
    except ApiFailure as e:
        if e.code != "MESSAGE_METHOD_UNKNOWN":
            raise
        pools = {}
    for pool in pools.values():
        default = pool.get("default_SR")
        if isinstance(default, str) and default and default != NULL_REF:
            return default
    srs: list[str] = client.call("SR.get_all")
    if not srs:
        raise ClientError("the host has no SR: give one with --sr")
    return min(srs, key=lambda ref: str(client.call("SR.get_uuid", ref)))


@_session
def vdi_destroy(client: Client, args: argparse.Namespace) -> int:
    """``xfer vdi destroy --host HOST --vdi UUID``: prints nothing on success."""
    client.call("VDI.destroy", client.call("VDI.get_by_uuid", args.vdi))
    return 0
