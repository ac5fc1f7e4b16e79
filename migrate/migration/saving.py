"""A VM's suspend image to and from an HTTP client: ``GET /vm_save?vm=<uuid|ref>`` pauses the
VM, streams its image (the same as a migration's, not live) and, once all of it went, destroys
the domain (the VM Halted); ``PUT /vm_restore`` reads an image into a new domain and runs it.

Authenticated as the disk transfers are (``session_id``, or Basic). A save answers 200 with
the image as the body, ended by the close of the connection: it goes straight from the
guest's memory to the socket. A failure before its end resumes the VM, and the truncated body
is refused by any reader (the image ends with End_of_image).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import trio

from migrate.formats import suspend
from migrate.formats.xapi import ref, ref_uuid
from migrate.formats.xenops import VmMetadata
from migrate.guest.hypervisor import Domain, GuestError, GuestSpec
from migrate.host import http_auth
from migrate.host.services import HostServices
from migrate.http.errors import HTTPError
from migrate.http.exchange import Connection
from migrate.http.routing import Request, Router, param
from migrate.migration.channel import Channel, ChannelError
from migrate.migration.policy import PolicyConfig
from migrate.migration.receiver import ImageError, MemoryReceiver
from migrate.migration.sender import MemorySender
from migrate.state import vms
from migrate.state.store import NotFound

log = logging.getLogger("xfer.migration")

SAVE_PATH = "/vm_save"
RESTORE_PATH = "/vm_restore"
CONTENT_TYPE = "application/octet-stream"


def register(router: Router, host: HostServices) -> None:
    """Serve ``GET /vm_save`` and ``PUT /vm_restore`` for ``host``."""

    async def save(request: Request, conn: Connection) -> None:
        await vm_save(host, request, conn)

    async def restore(request: Request, conn: Connection) -> None:
        await vm_restore(host, request, conn)

    router.add("GET", SAVE_PATH, save)
    router.add("PUT", RESTORE_PATH, restore)


def _row(host: HostServices, vm: str) -> dict[str, Any]:
    try:
        return host.store.get("VM", vm)
    except NotFound:
        raise HTTPError(404, f"no VM {vm}") from None


async def vm_save(host: HostServices, request: Request, conn: Connection) -> None:
    """``GET /vm_save?vm=``: the VM's suspend image; the VM Halted once it all went."""
    async with http_auth.authenticated(host, request):
        given = param(request, "vm")
        if not given:
            raise HTTPError(400, "vm is needed: the VM's uuid or ref")
        vm = ref_uuid(given) or given
        _not_busy(host, vm)
        with host.operations.exclusive(vm, "vm_save"):
            row = await host.db.call(_row, host, vm)
            domain = host.guests.domain(vm)
            if row["power_state"] not in vms.LIVE or domain is None:
                raise HTTPError(409, f"VM {vm} is {row['power_state'].lower()}: not running")
            metadata = VmMetadata(
                vm, row["name_label"], int(row["memory"]), int(row["vcpus"]), row["workload"]
            )
            await _save(host, conn, domain, metadata, row["power_state"])


def _not_busy(host: HostServices, vm: str) -> None:
    """HTTPError 409 while another operation holds VM ``vm``."""
    busy = host.operations.current(vm)
    if busy is not None:
        raise HTTPError(409, f"VM {vm} is busy: {busy}")


async def _save(
    host: HostServices, conn: Connection, domain: Domain, metadata: VmMetadata, power: str
) -> None:
    stream, _ = conn.detach()
    channel = Channel(stream, "save")
    head = (
        "HTTP/1.1 200 OK\r\n"
        f"content-type: {CONTENT_TYPE}\r\n"
        f'content-disposition: attachment; filename="{metadata.uuid}.xensave"\r\n'
        "connection: close\r\n\r\n"
    )
    prefix = suspend.SIGNATURE + suspend.xenops_record(metadata) + suspend.libxc_header()
    sender = MemorySender(domain, channel, PolicyConfig(), live=False)
    try:
        await channel.send([head.encode("latin-1")])
        await sender.send(prefix, suspend.end_of_image())
    except BaseException as e:
        with trio.CancelScope(shield=True):
            if power == "Running" and domain.paused:
                with contextlib.suppress(GuestError):
                    await domain.unpause()
            await channel.aclose()
        log.info("saving VM %s failed: %s", metadata.uuid, e)
        if isinstance(e, ChannelError):
            return
        raise
    with trio.CancelScope(shield=True):  # recorded before the client sees the end
        await domain.destroy()
        await host.db.call(vms.set_power_state, host.store, metadata.uuid, "Halted", None)
        await channel.aclose()
    log.info("VM %s saved (%d bytes)", metadata.uuid, sender.report.bytes)


class _Body(trio.abc.Stream):
    """A request body as a stream to receive from (the server frames and times it)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        buffer = bytearray(max_bytes or 65536)
        n = await self.conn.receive_into(memoryview(buffer))
        return bytes(buffer[:n])

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        raise RuntimeError("a request body is received, not sent")

    async def wait_send_all_might_not_block(self) -> None:
        raise RuntimeError("a request body is received, not sent")

    async def aclose(self) -> None:
        return None


async def vm_restore(host: HostServices, request: Request, conn: Connection) -> None:
    """``PUT /vm_restore``: a suspend image in the body becomes a running VM; answers its
    ref. 400 for a bad image, 409 when the VM runs already."""
    async with http_auth.authenticated(host, request):
        receiver: MemoryReceiver | None = None
        held: contextlib.ExitStack = contextlib.ExitStack()

        async def create(metadata: VmMetadata) -> Domain:
            _not_busy(host, metadata.uuid)
            held.enter_context(host.operations.exclusive(metadata.uuid, "vm_restore"))
            await host.db.call(_may_restore, host, metadata.uuid)
            if metadata.vbds:
                raise HTTPError(400, "the image's VM has disks; xfer restores VMs without disks")
            spec = GuestSpec(metadata.uuid, metadata.memory, metadata.vcpus, metadata.workload)
            try:
                return await host.guests.create(spec, paused=True)
            except GuestError as e:
                raise HTTPError(503, f"the VM's domain cannot be made: {e}") from None

        with held:
            try:
                receiver = MemoryReceiver(Channel(_Body(conn), "restore"), create)
                domain, metadata = await receiver.receive()
                await host.db.call(_restored, host, metadata)
                await domain.unpause()
            except BaseException as e:
                with trio.CancelScope(shield=True):
                    if receiver is not None and receiver.domain is not None:
                        await receiver.domain.destroy()
                        await host.db.call(_halted, host, receiver.domain.spec.uuid)
                if isinstance(e, ImageError):
                    raise HTTPError(400, str(e)) from None
                raise
        host.watch(domain)
        body = ref(metadata.uuid).encode()
        await conn.respond(200, [("content-type", "text/plain")], body)


def _may_restore(host: HostServices, vm: str) -> None:
    try:
        row = host.store.get("VM", vm)
    except NotFound:
        return
    if row["power_state"] in vms.LIVE:
        raise HTTPError(409, f"VM {vm} is {row['power_state'].lower()} already")


def _restored(host: HostServices, metadata: VmMetadata) -> None:
    """The VM recorded Running here: its row made, or updated from the image."""
    store = host.store
    fields = {
        "name_label": metadata.name_label,
        "memory": metadata.memory,
        "vcpus": metadata.vcpus,
        "workload": metadata.workload,
        "power_state": "Running",
        "resident_on": host.uuid,
    }
    with store.change():
        try:
            store.get("VM", metadata.uuid)
        except NotFound:
            store.insert("VM", {"uuid": metadata.uuid, **fields})
        else:
            store.update("VM", metadata.uuid, fields)


def _halted(host: HostServices, vm: str) -> None:
    with contextlib.suppress(NotFound):
        row = host.store.get("VM", vm)
        if row["power_state"] in vms.LIVE and row["resident_on"] == host.uuid:
            vms.set_power_state(host.store, vm, "Halted", None)
