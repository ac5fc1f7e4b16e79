"""The destination's side of a migration: xenopsd's ``migrate/vm`` and ``migrate/mem``
connections, and what became of each receive.

The vm connection (``PUT <xenops>/migrate/vm/<id>``, authenticated by its session) is taken
off HTTP and answered with sync messages: ready; then, once the mem connection of the same id
came (:mod:`migrate.migration.rendezvous`) and the source acknowledged it, the suspend image
is read off the mem connection into a domain created paused when the VM's metadata arrives
(:mod:`migrate.migration.receiver`). When the source says it is done, the VM is recorded
here and resumed, and the source told so: the receive is then *committed*. Any failure before
that destroys the domain and leaves no record: the receive is *aborted*, and the source,
told (if it still listens), resumes its copy. ``GET <xenops>/migrate/outcome/<id>`` (an xfer
extension) answers, once the receive is decided, which it was: the source asks when its
connection broke after it said done.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field

import trio

from migrate.formats import xenops
from migrate.formats.xenops import VmMetadata
from migrate.guest.hypervisor import PAGE_SIZE, DiskAttachment, Domain, GuestError, GuestSpec
from migrate.host import http_auth
from migrate.host.claims import vm_holder
from migrate.host.errors import ApiError
from migrate.host.services import HostServices
from migrate.http.errors import HTTPError
from migrate.http.exchange import Connection
from migrate.http.routing import Request, Router, param
from migrate.migration.channel import Channel, ChannelError
from migrate.migration.outgoing import COOKIE_POWER, COOKIE_VERIFY, OUTCOME_PATH
from migrate.migration.receiver import ImageError, MemoryReceiver
from migrate.migration.rendezvous import Expected, MemoryConnection, PairingError, Rendezvous
from migrate.migration.sender import memory_digest
from migrate.nursery import open_nursery
from migrate.state import vms
from migrate.state.store import NotFound
from migrate.state.vms import device_name
from migrate.storage.reconcile import introduce
from migrate.storage.sr import vdi_path

log = logging.getLogger("xfer.migration")

PAIR_TIMEOUT = 30.0
"""Seconds the vm connection waits for its mem connection."""
DONE_TIMEOUT = 60.0
"""Seconds the source has, once the image is in, to say it is done."""
OUTCOME_WAIT = 60.0
"""Seconds an outcome question waits for the receive to be decided."""
TEARDOWN_WAIT = 5.0
"""Seconds a receive waits for an earlier one of the same VM to end."""
OUTCOMES_KEPT = 256
"""Decided receives remembered (the oldest forgotten first)."""
CLAIM_WAIT = 5.0
"""Seconds a receive waits for the domain of the VM's earlier stay here to release its disks."""
MAX_DISKS = 26
"""Disk devices a VM may have (``0`` to ``25``: ``xvda`` to ``xvdz``)."""


class Refused(Exception):
    """The destination will not take the VM; the message says why (sent to the source)."""


@dataclass
class Outcome:
    """A receive: ``receiving`` until ``decided``, then ``committed`` or ``aborted``."""

    state: str = "receiving"
    digest: str = ""
    error: str = ""
    decided: trio.Event = field(default_factory=trio.Event)

    def decide(self, state: str, *, digest: str = "", error: str = "") -> None:
        """Record the end of the receive (once)."""
        if not self.decided.is_set():
            self.state, self.digest, self.error = state, digest, error
            self.decided.set()


class Incoming:
    """The receives of one host."""

    def __init__(self, host: HostServices) -> None:
        self.host = host
        self.rendezvous = Rendezvous()
        self.outcomes: OrderedDict[str, Outcome] = OrderedDict()

    def register(self, router: Router) -> None:
        """Route xenopsd's migration paths to this host's receives."""
        router.add_prefix("PUT", xenops.XENOPS_PATH + "/migrate/vm", self.vm)
        router.add_prefix("PUT", xenops.XENOPS_PATH + "/migrate/mem", self.mem)
        router.add_prefix("GET", xenops.XENOPS_PATH + OUTCOME_PATH.rstrip("/"), self.outcome)

    # the vm connection

    async def vm(self, request: Request, conn: Connection) -> None:
        """``PUT .../migrate/vm/<id>``: receive a VM (see the module's description)."""
        id = _migration_id(request, "vm")
        async with http_auth.authenticated(self.host, request):
            final_id = param(request, xenops.COOKIE_FINAL_ID)
            if final_id is None or not _is_uuid(final_id):
                raise HTTPError(400, f"{xenops.COOKIE_FINAL_ID} must be the VM's uuid")
            limit = param(request, xenops.COOKIE_MEMORY_LIMIT) or ""
            if not limit.isdigit() or not 0 < int(limit) <= 1 << 50 or int(limit) % PAGE_SIZE:
                raise HTTPError(400, f"{xenops.COOKIE_MEMORY_LIMIT} {limit!r}: bytes, pages")
            power = param(request, COOKIE_POWER) or "Running"
            if power not in ("Running", "Paused"):
                raise HTTPError(400, f"{COOKIE_POWER} {power!r}: Running or Paused")
            verify = param(request, COOKIE_VERIFY) == "true"
            if id in self.outcomes:
                raise HTTPError(409, f"migration {id} was received already")
            outcome = self.outcomes[id] = Outcome()
            self._forget_old()
            stream, buffered = conn.detach()
            channel = Channel(stream, "vm", buffered)
            try:
                await self._receive(id, final_id, int(limit), power, verify, channel, outcome)
            finally:
                outcome.decide("aborted", error="the receive ended")

    async def _receive(
        self,
        id: str,
        final_id: str,
        limit: int,
        power: str,
        verify: bool,
        channel: Channel,
        outcome: Outcome,
    ) -> None:
        host = self.host
        receiver: MemoryReceiver | None = None
        recorded = False
        claimed: list[str] = []
        try:
            await _turn(host, final_id)
            with (
                self.rendezvous.expect(id) as expected,
                host.operations.exclusive(final_id, "migrate_receive"),
            ):
                await self._check(final_id, limit)
                await channel.send_sync()
                memory = await _memory_or_gone(expected, channel)
                mem = Channel(memory.stream, "mem", memory.buffered)
                await mem.send_sync()  # here, once the vm connection is no longer watched
                await channel.recv_sync("the source acknowledging the memory connection")

                async def create(metadata: VmMetadata) -> Domain:
                    domain = await self._create(final_id, metadata, claimed)
                    await channel.send_sync()  # it exists: the source may stop its copy
                    return domain

                receiver = MemoryReceiver(mem, create, limit // PAGE_SIZE)
                domain, metadata = await receiver.receive()
                await channel.recv_sync("the source finishing the image", DONE_TIMEOUT)
                digest = ""
                if verify:
                    digest = await trio.to_thread.run_sync(memory_digest, domain.memory)
                # resumed first, recorded next: the database's commit is not in the pause.
                # Should the record fail, the domain is destroyed and the source resumes
                # its copy (what ran here is discarded; its disk writes, if any, are in the
                # shared files, as a guest's writes before a crash are).
                if power == "Running":
                    await domain.unpause()
                recorded = True
                await host.db.call(_record, host, metadata, power)
                outcome.decide("committed", digest=digest)
            host.watch(domain, claimed)
            log.info("migration %s: VM %s received and %s", id, final_id, power.lower())
            with contextlib.suppress(ChannelError):
                await channel.send_sync()
        except BaseException as e:
            why = _reason(e)
            outcome.decide("aborted", error=why)
            log.info("migration %s: VM %s not received: %s", id, final_id, why)
            with trio.CancelScope(shield=True):
                if receiver is not None and receiver.domain is not None:
                    await receiver.domain.destroy()
                for vdi in claimed:
                    host.claims.release_writer(vdi)
                if recorded:
                    await host.db.call(_unrecord, host, final_id)
                with trio.move_on_after(1.0), contextlib.suppress(ChannelError):
                    await channel.send_sync(why)
            if not isinstance(e, Exception):
                raise
        finally:
            await channel.aclose()

    async def _check(self, vm: str, limit: int) -> None:
        """Refused unless VM ``vm`` is new to this host and its memory fits."""
        if self.host.guests.domain(vm) is not None:
            raise Refused(f"VM {vm} already runs on this host")
        if await self.host.db.call(_exists, self.host, vm):
            raise Refused(f"VM {vm} already exists on this host")
        used = sum(domain.spec.memory for domain in self.host.guests.domains())
        available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") - used
        if limit > available:
            raise Refused(f"the VM needs {limit} bytes of memory, this host has {available}")

    async def _create(self, vm: str, metadata: VmMetadata, claimed: list[str]) -> Domain:
        """The VM's domain, created paused, its disks (on SRs shared with the source: the
        same files) attached and claimed for it; the claimed VDIs are added to ``claimed``."""
        if metadata.uuid != vm:
            raise Refused(f"the image is of VM {metadata.uuid}, not {vm}")
        disks = await self.host.db.call(_shared_disks, self.host, metadata)
        holder = vm_holder(vm)
        for vbd in metadata.vbds:
            # the domain of an earlier stay here may still be letting go of its disks
            await self.host.claims.wait_for_writer(vbd.vdi, CLAIM_WAIT)
            if not self.host.claims.claim_writer(vbd.vdi, holder):
                user = self.host.claims.holder(vbd.vdi) or "a writer"
                raise Refused(f"the VM's VDI {vbd.vdi} is in use on this host by {user}")
            claimed.append(vbd.vdi)
        spec = GuestSpec(
            metadata.uuid, metadata.memory, metadata.vcpus, metadata.workload, tuple(disks)
        )
        try:
            return await self.host.guests.create(spec, paused=True)
        except GuestError as e:
            raise Refused(f"the VM's domain cannot be made: {e}") from None

    def _forget_old(self) -> None:
        while len(self.outcomes) > OUTCOMES_KEPT:
            oldest = next(iter(self.outcomes))
            if not self.outcomes[oldest].decided.is_set():
                break
            del self.outcomes[oldest]

    # the mem connection

    async def mem(self, request: Request, conn: Connection) -> None:
        """``PUT .../migrate/mem/<id>``: the memory image of a receive that waits for it."""
        id = _migration_id(request, "mem")
        async with http_auth.authenticated(self.host, request):
            if not self.rendezvous.waiting(id):
                raise HTTPError(404, f"no migration {id} waits for its memory connection")
            stream, buffered = conn.detach()
            try:
                memory = self.rendezvous.deliver(id, stream, buffered)
            except PairingError as e:
                log.info("migration %s: %s", id, e)
                return
            await memory.done.wait()  # the receive answers and reads it

    # what became of a receive

    async def outcome(self, request: Request, conn: Connection) -> None:
        """``GET .../migrate/outcome/<id>``: JSON ``{"state", "digest", "error"}`` once the
        receive is decided (or after :data:`OUTCOME_WAIT` s, still ``receiving``)."""
        id = _migration_id(request, "outcome")
        async with http_auth.authenticated(self.host, request):
            outcome = self.outcomes.get(id)
            if outcome is None:
                raise HTTPError(404, f"no migration {id} was received here")
            with trio.move_on_after(OUTCOME_WAIT):
                await outcome.decided.wait()
            body = {"state": outcome.state, "digest": outcome.digest, "error": outcome.error}
            headers = [("content-type", "application/json"), ("connection", "close")]
            await conn.respond(200, headers, json.dumps(body).encode())


async def _memory_or_gone(expected: Expected, channel: Channel) -> MemoryConnection:
    """The memory connection, while the vm connection is watched: the source says nothing
    before the pairing, so anything on it (its end, above all) ends the receive."""
    memory: MemoryConnection | None = None
    async with open_nursery() as nursery:

        async def pair() -> None:
            nonlocal memory
            memory = await expected.wait(PAIR_TIMEOUT)
            nursery.cancel_scope.cancel()

        nursery.start_soon(pair)
        await channel.recv_exactly(1)
        raise Refused("the source sent bytes out of turn on the vm connection")
    assert memory is not None
    return memory


async def _turn(host: HostServices, vm: str) -> None:
    """Wait (a little) for an earlier receive of VM ``vm`` to finish tearing down."""
    with trio.move_on_after(TEARDOWN_WAIT):
        while host.operations.current(vm) == "migrate_receive":
            await trio.sleep(0.01)


def _migration_id(request: Request, kind: str) -> str:
    """The ``<id>`` of ``.../migrate/<kind>/<id>``; HTTPError 404 unless it is a uuid."""
    prefix = f"{xenops.XENOPS_PATH}/migrate/{kind}/"
    id = request.path[len(prefix) :].rstrip("/") if request.path.startswith(prefix) else ""
    if not _is_uuid(id):
        raise HTTPError(404, f"no resource at {request.path}: the migration id is a uuid")
    return id


def _is_uuid(text: str) -> bool:
    try:
        return xenops.migrate_vm_path(text) is not None
    except ValueError:
        return False


def _reason(e: BaseException) -> str:
    if isinstance(e, Refused | ChannelError | ImageError | PairingError | GuestError):
        return str(e)
    if isinstance(e, ApiError):
        return " ".join(e.description)
    if isinstance(e, trio.Cancelled):
        return "the destination stopped"
    return f"{type(e).__name__}: {e}"


def _exists(host: HostServices, vm: str) -> bool:
    try:
        host.store.get("VM", vm)
    except NotFound:
        return False
    return True


def _shared_disks(host: HostServices, metadata: VmMetadata) -> list[DiskAttachment]:
    """The disks of the VM ``metadata`` describes, each a VDI of an SR this host shares with
    the source (a VDI this host has not recorded yet is introduced from its file, as
    ``SR.scan`` would); Refused naming the disk, VDI and SR otherwise."""
    store = host.store
    disks = []
    for vbd in metadata.vbds:
        what = f"the VM's disk {vbd.device} (VDI {vbd.vdi} on SR {vbd.sr})"
        if not vbd.device.isdigit() or int(vbd.device) >= MAX_DISKS:
            raise Refused(f"{what}: the device must be a number below {MAX_DISKS}")
        try:
            sr = store.get("SR", vbd.sr)
        except NotFound:
            raise Refused(
                f"{what}: this host does not have that SR (storage migration is issue 11)"
            ) from None
        if not sr["shared"]:
            raise Refused(f"{what}: that SR is not shared on this host")
        try:
            vdi = store.get("VDI", vbd.vdi)
        except NotFound:
            why = introduce(store, vbd.sr, vbd.vdi)
            if why is not None:
                raise Refused(f"{what}: {why}") from None
            vdi = store.get("VDI", vbd.vdi)
        if vdi["sr"] != vbd.sr or vdi["state"] != "ready":
            raise Refused(f"{what}: here that VDI is {vdi['state']} on SR {vdi['sr']}")
        disks.append(DiskAttachment(device_name(vbd.device), vdi_path(sr["path"], vbd.vdi)))
    return disks


def _record(host: HostServices, metadata: VmMetadata, power: str) -> None:
    """Record the received VM here, live, with its VBDs."""
    store = host.store
    with store.change():
        store.insert(
            "VM",
            {
                "uuid": metadata.uuid,
                "name_label": metadata.name_label,
                "memory": metadata.memory,
                "vcpus": metadata.vcpus,
                "workload": metadata.workload,
                "power_state": power,
                "resident_on": host.uuid,
            },
        )
        for vbd in metadata.vbds:
            vms.insert_vbd(store, metadata.uuid, vbd.vdi, vbd.device, "RW")


def _unrecord(host: HostServices, vm: str) -> None:
    with contextlib.suppress(NotFound):
        vms.delete_vm(host.store, vm)
