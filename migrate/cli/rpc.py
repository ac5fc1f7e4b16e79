"""``xfer host info`` and ``xfer vdi list|create|destroy``: XenAPI clients of a host.

Each command logs in with ``--user``/``--password`` (default ``$XFER_USER``, else ``root``, and
``$XFER_PASSWORD``), makes its calls over JSON-RPC (:mod:`migrate.cli.rpc_client`) and logs out.
Failures are one line, ``xfer: error: CODE: params``, and exit status 1.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from migrate.addresses import AddressError, parse_host
from migrate.cli.http_client import ClientError, Target, run_client
from migrate.cli.rpc_client import ApiFailure, Session, open_session
from migrate.cli.units import format_size
from migrate.formats.xapi import NULL_REF

Command = Callable[[Session, argparse.Namespace], Awaitable[int]]


def session_command(command: Command) -> Callable[[argparse.Namespace], int]:
    """Run ``command`` in trio with a session on the host, logged out at the end."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        async def work(client: httpx.AsyncClient, target: Target) -> int:
            async with open_session(client, target) as session:
                return await command(session, args)

        return run_client(args, work)

    return run


@session_command
async def host_info(session: Session, args: argparse.Namespace) -> int:
    """``xfer host info --host HOST``."""
    records: dict[str, dict[str, Any]] = await session.call("host.get_all_records")
    pifs: dict[str, dict[str, Any]] = await session.call("PIF.get_all_records")
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
    try:
        family = parse_host(str(host.get("address", ""))).family
    except AddressError:
        family = None
    return family or "unknown"


def _pif_line(pif: dict[str, Any]) -> str:
    parts = [str(pif.get("device", "?")), str(pif.get("MAC", "")) or "-"]
    if pif.get("IP"):
        parts.append(f"IPv4 {pif['IP']}" + (f"/{pif['netmask']}" if pif.get("netmask") else ""))
    parts.extend(f"IPv6 {address}" for address in pif.get("IPv6", []))
    if pif.get("management"):
        parts.append("(management)")
    return "  ".join(parts)


@session_command
async def vdi_list(session: Session, args: argparse.Namespace) -> int:
    """``xfer vdi list --host HOST [--json]``."""
    vdis: dict[str, dict[str, Any]] = await session.call("VDI.get_all_records")
    srs: dict[str, dict[str, Any]] = await session.call("SR.get_all_records")
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


@session_command
async def vdi_create(session: Session, args: argparse.Namespace) -> int:
    """``xfer vdi create --host HOST --size SIZE [--sr UUID] [--name NAME]``: the new uuid."""
    sr = await session.call("SR.get_by_uuid", args.sr) if args.sr else await default_sr(session)
    ref = await session.call(
        "VDI.create", {"SR": sr, "virtual_size": args.size, "name_label": args.name}
    )
    print(await session.call("VDI.get_uuid", ref))
    return 0


async def default_sr(session: Session) -> str:
    """The pool's ``default_SR``; on a server without the ``pool`` class (or without a
    default), the first SR in uuid order."""
    try:
        pools: dict[str, dict[str, Any]] = await session.call("pool.get_all_records")
    except ApiFailure as e:
        if e.code != "MESSAGE_METHOD_UNKNOWN":
            raise
        pools = {}
    for pool in pools.values():
        default = pool.get("default_SR")
        if isinstance(default, str) and default and default != NULL_REF:
            return default
    srs: list[str] = await session.call("SR.get_all")
    if not srs:
        raise ClientError("the host has no SR: give one with --sr")
    uuids = {ref: str(await session.call("SR.get_uuid", ref)) for ref in srs}
    return min(srs, key=uuids.__getitem__)


@session_command
async def vdi_destroy(session: Session, args: argparse.Namespace) -> int:
    """``xfer vdi destroy --host HOST --vdi UUID``: prints nothing on success."""
    await session.call("VDI.destroy", await session.call("VDI.get_by_uuid", args.vdi))
    return 0
