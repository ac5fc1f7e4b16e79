"""The source's side of a migration (``VM.migrate_send``), as xenopsd does it.

1. ``PUT <xenops>/migrate/vm/<id>`` with the cookies (``final_id``: the VM's uuid,
   ``memory_limit``, ``dbg``...); the destination answers a sync message once it is ready.
2. ``PUT <xenops>/migrate/mem/<id>``; the destination answers a sync message on it, the
   source acknowledges on the vm connection.
3. The suspend image on the mem connection: pre-copy rounds, the pause, the rest
   (:mod:`migrate.migration.sender`).
4. "Done" on the vm connection; the destination resumes the VM and answers. Only then is the
   source's copy destroyed and its record removed.

``<id>`` is a new uuid for each attempt. Any failure before step 4's answer leaves the VM
running here as before (the destination destroys its copy when a connection breaks). If the
vm connection breaks after "done" went, the source cannot tell whether the destination got
it: it asks (``GET <xenops>/migrate/outcome/<id>``, an xfer extension), and resumes its own
copy unless the destination says it runs the VM.

Progress (0..1) and the rounds report (JSON, in the task's ``other_config`` key
``xfer_migration``) are written every :data:`REPORT_EVERY` seconds and at the end.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
import uuid as uuidlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import trio

from migrate.formats import suspend, xenops
from migrate.formats.xapi import ref
from migrate.formats.xenops import REPORT_KEY, VmMetadata
from migrate.guest.hypervisor import Domain
from migrate.host import tasks
from migrate.host.errors import INVALID_VALUE, VM_MIGRATE_FAILED, ApiError
from migrate.host.services import HostServices
from migrate.migration.channel import Channel, ChannelError, RemoteError
from migrate.migration.connect import Destination, DestinationError
from migrate.migration.policy import PolicyConfig, PolicyError, Round, link_rate
from migrate.migration.sender import MemorySender, SendReport, memory_digest
from migrate.nursery import open_nursery
from migrate.state import vms
from migrate.state.store import NotFound

log = logging.getLogger("xfer.migration")

REPORT_EVERY = 0.5
"""Seconds between two writes of progress and report."""
OUTCOME_PATH = "/migrate/outcome/"
"""Below the xenops path: what became of a receive (an xfer extension)."""
OUTCOME_TRIES = 3
"""Times the outcome is asked before the source gives up and resumes its copy."""
CREATE_TIMEOUT = 60.0
"""Seconds the source waits, before it pauses the guest, for the destination's word that
the VM's domain exists (a process started and its memory mapped)."""
DONE_TIMEOUT = 60.0
"""Seconds the destination has to resume the VM and say so."""
COOKIE_POWER = "xfer_power_state"
"""Cookie: the state the VM resumes in on the destination (Running or Paused)."""
COOKIE_VERIFY = "xfer_verify"
"""Cookie: the destination digests the memory before resuming it."""
ACCEPTED = {"force", "copy", "max_downtime", "max_rounds", "verify", "live"}
"""Options of ``VM.migrate_send`` xfer reads or accepts."""


@dataclass(frozen=True)
class Options:
    """``VM.migrate_send``'s ``live`` and options, checked."""

    live: bool
    policy: PolicyConfig
    verify: bool

    @classmethod
    def parse(cls, live: bool, options: Mapping[str, str]) -> Options:
        """ApiError INVALID_VALUE naming an option xfer refuses."""
        if options.get("compress", "false").lower() not in ("false", "0", ""):
            raise ApiError(INVALID_VALUE, "compress", "compressed migration is not supported")
        verify = options.get("verify", "false").lower()
        if verify not in ("true", "false"):
            raise ApiError(INVALID_VALUE, "verify", f"{verify!r}: expected true or false")
        try:
            policy = PolicyConfig.from_options(options)
        except PolicyError as e:
            raise ApiError(INVALID_VALUE, "options", str(e)) from None
        return cls(live, policy, verify == "true")


def report_json(
    vm: str,
    memory: int,
    sent: SendReport,
    *,
    state: str,
    total: float,
    downtime: float | None,
    digests: Mapping[str, str] | None = None,
) -> str:
    """The migration report (task ``other_config`` key :data:`REPORT_KEY`) as JSON."""

    def round_json(r: Round) -> dict[str, Any]:
        return {
            "index": r.index,
            "pages": r.pages,
            "bytes": r.bytes,
            "seconds": r.seconds,
            "dirty_rate": r.dirty_rate,
            "throttle": r.throttle,
        }

    report: dict[str, Any] = {
        "vm": vm,
        "memory": memory,
        "rounds": [round_json(r) for r in sent.rounds],
        "stop_reason": sent.stop_reason,
        "downtime": downtime,
        "total": total,
        "throughput": sent.bytes / total if total > 0 else 0.0,
        "link_rate": link_rate(sent.rounds),
        "final_pages": sent.final_pages,
        "state": state,
    }
    if digests is not None:
        report["memory_digest"] = dict(digests)
    return json.dumps(report)


class Migration:
    """One attempt to move VM ``vm`` (uuid) to ``dest``, reported on ``task`` (a uuid)."""

    def __init__(
        self,
        host: HostServices,
        vm: str,
        dest: Mapping[str, str],
        options: Options,
        task: str | None,
        context: ssl.SSLContext | None,
    ) -> None:
        self.host = host
        self.vm = vm
        try:
            self.dest = Destination.from_map(dest)
        except DestinationError as e:
            raise ApiError(INVALID_VALUE, "dest", str(e)) from None
        self.dest_host = dest.get("host", "")
        self.options = options
        self.task = task
        self.context = context
        self.id = str(uuidlib.uuid4())
        self.report = SendReport()
        self.state = "running"
        self.started = time.monotonic()
        self.downtime: float | None = None
        self.resumed_at: float | None = None
        """trio time the destination's word that it runs the VM arrived (the downtime's end)."""
        self.digests: dict[str, str] | None = None
        self.progress = 0.0
        self.memory = 0

    def failed(self, why: str) -> ApiError:
        """VM_MIGRATE_FAILED as xapi reports it: vm, source host, destination host, why."""
        return ApiError(VM_MIGRATE_FAILED, ref(self.vm), ref(self.host.uuid), self.dest_host, why)

    async def run(self) -> str:
        """Migrate; the VM's ref on the destination. ApiError (the VM running here as
        before) on failure; cancellation likewise leaves it here."""
        domain, metadata, power = await self._prepare()
        self.memory = metadata.memory
        async with open_nursery() as nursery:
            nursery.start_soon(self._reporter)
            try:
                result = await self._migrate(domain, metadata, power)
            except BaseException:
                self.state = "failed"
                raise
            finally:
                nursery.cancel_scope.cancel()
                with trio.CancelScope(shield=True):
                    await self._publish()
        return result

    async def check(self) -> None:
        """ApiError unless the VM can move (its state, disks and domain)."""
        await self._prepare()

    async def _prepare(self) -> tuple[Domain, VmMetadata, str]:
        """The VM's domain, metadata and power state, checked to be movable."""
        row, vbds = await self.host.db.call(_vm_and_vbds, self.host, self.vm)
        if row["power_state"] not in vms.LIVE:
            raise self.failed(f"the VM is {row['power_state']}")
        for vbd in vbds:
            if not vbd.shared:
                raise self.failed(
                    f"the VM's disk {vbd.device} is VDI {vbd.vdi} on SR {vbd.sr}, which other"
                    " hosts do not share: xfer migrates VMs whose disks are on shared SRs"
                    " (storage migration is issue 11)"
                )
        domain = self.host.guests.domain(self.vm)
        if domain is None:
            raise self.failed("the VM has no domain on this host")
        metadata = VmMetadata(
            self.vm,
            row["name_label"],
            int(row["memory"]),
            int(row["vcpus"]),
            row["workload"],
            tuple(xenops.Vbd(vbd.device, vbd.vdi, vbd.sr) for vbd in vbds),
        )
        return domain, metadata, row["power_state"]

    async def _migrate(self, domain: Domain, metadata: VmMetadata, power: str) -> str:
        cookies = {
            xenops.COOKIE_FINAL_ID: self.vm,
            xenops.COOKIE_DBG: f"xfer-migrate-{self.id}",
            COOKIE_POWER: power,
            COOKIE_VERIFY: "true" if self.options.verify else "false",
        }
        vm_cookies = {**cookies, xenops.COOKIE_MEMORY_LIMIT: str(metadata.memory)}
        vm_ch: Channel | None = None
        mem_ch: Channel | None = None
        done_sent = False
        try:
            vm_path = xenops.migrate_vm_path(self.id, self.dest.base)
            vm_ch = await self.dest.open("vm", vm_path, vm_cookies, self.context)
            await vm_ch.recv_sync("the destination preparing the VM")
            mem_path = xenops.migrate_mem_path(self.id, self.dest.base)
            mem_ch = await self.dest.open("mem", mem_path, cookies, self.context)
            await mem_ch.recv_sync("the destination taking the memory connection")
            await vm_ch.send_sync()
            await self._send_image(domain, metadata, vm_ch, mem_ch)
            await vm_ch.send_sync()  # done: the destination resumes the VM when it has this
            done_sent = True
            async with open_nursery() as nursery:
                if self.options.verify:  # while the destination digests its copy
                    nursery.start_soon(self._digest_source, domain)
                await vm_ch.recv_sync("the destination resuming the VM", DONE_TIMEOUT)
                self.resumed_at = trio.current_time()
        except BaseException as e:
            if done_sent:
                with trio.CancelScope(shield=True):
                    if await self._ask_outcome():
                        return await self._committed(domain)
            await self._resume(domain, power)
            if isinstance(e, ChannelError | OSError):
                raise self.failed(str(e)) from None
            raise
        finally:
            for channel in (vm_ch, mem_ch):
                if channel is not None:
                    await channel.aclose()
        return await self._committed(domain)

    async def _send_image(
        self, domain: Domain, metadata: VmMetadata, vm_ch: Channel, mem_ch: Channel
    ) -> None:
        created = False

        async def domain_created() -> None:
            nonlocal created
            await vm_ch.recv_sync("the destination creating the VM's domain", CREATE_TIMEOUT)
            created = True

        sender = MemorySender(
            domain,
            mem_ch,
            self.options.policy,
            live=self.options.live,
            progress=self._set_progress,
            before_pause=domain_created,
        )
        self.report = sender.report
        prefix = suspend.SIGNATURE + suspend.xenops_record(metadata) + suspend.libxc_header()
        try:
            await sender.send(prefix, suspend.end_of_image())
        except ChannelError as e:
            # the destination may have said why it stopped reading
            try:
                if not created:  # its word that the domain exists comes first
                    await vm_ch.recv_sync("the destination creating the VM's domain", 2.0)
                await vm_ch.recv_sync("the destination receiving the memory", 2.0)
            except RemoteError as reason:
                raise reason from None
            except ChannelError:
                pass
            raise e from None

    async def _digest_source(self, domain: Domain) -> None:
        """sha256 of the source's memory as it was at the pause (the guest stays paused here
        until destroyed or resumed), taken beside the destination's own digest rather than
        before "done", so that the two are not both in the downtime."""
        digest = await trio.to_thread.run_sync(memory_digest, domain.memory)
        self.digests = {**(self.digests or {}), "source": digest}

    def _set_progress(self, fraction: float) -> None:
        self.progress = fraction

    async def _resume(self, domain: Domain, power: str) -> None:
        """Put the source's copy back as it was (shielded: also on cancellation)."""
        with trio.CancelScope(shield=True):
            try:
                domain.set_throttle(0.0)
                if power == "Running" and domain.paused:
                    await domain.unpause()
            except Exception:
                log.exception("migration %s: VM %s could not be resumed here", self.id, self.vm)

    async def _ask_outcome(self) -> bool:
        """Whether the destination runs the VM (after "done" went and its answer did not
        come). Asked a few times; a destination that cannot be reached does not run it
        (a host that went away took its guests with it)."""
        for attempt in range(OUTCOME_TRIES):
            answer = await self._outcome()
            if answer is not None:
                return answer.get("state") == "committed"
            await trio.sleep(0.5 * (attempt + 1))
        return False

    async def _outcome(self) -> dict[str, Any] | None:
        """The destination's word on this receive (its digest noted), None if not had."""
        path = f"{self.dest.base}{OUTCOME_PATH}{self.id}"
        try:
            answer = await self.dest.get_json(path, self.context)
        except (ChannelError, OSError) as e:
            log.warning("migration %s: outcome not known (%s)", self.id, e)
            return None
        if not isinstance(answer, dict):
            return None
        if self.digests is not None and answer.get("digest"):
            self.digests["destination"] = str(answer["digest"])
        return answer

    async def _committed(self, domain: Domain) -> str:
        """The destination runs the VM: the source's copy destroyed, its record removed."""
        with trio.CancelScope(shield=True):
            paused_at = self.report.paused_at
            if paused_at is not None:
                self.downtime = (self.resumed_at or trio.current_time()) - paused_at
            if self.digests is not None and "destination" not in self.digests:
                await self._outcome()
            await domain.destroy()
            await self.host.db.call(_forget, self.host, self.vm)
            self.state = "done"
            self.progress = 1.0
        log.info(
            "migration %s: VM %s moved, downtime %.1f ms",
            self.id,
            self.vm,
            1000 * (self.downtime or 0.0),
        )
        return ref(self.vm)

    async def _reporter(self) -> None:
        while True:
            await trio.sleep(REPORT_EVERY)
            await self._publish()

    async def _publish(self) -> None:
        if self.task is None:
            return
        total = time.monotonic() - self.started
        text = report_json(
            self.vm,
            self.memory,
            self.report,
            state=self.state,
            total=total,
            downtime=self.downtime,
            digests=self.digests,
        )
        store = self.host.store

        def write() -> None:
            with store.change():
                tasks.set_other_config(store, self.task or "", REPORT_KEY, text)
                tasks.set_progress(store, self.task or "", min(self.progress, 0.99))

        await self.host.db.call(write)


@dataclass(frozen=True)
class _Disk:
    """A disk of the VM to move: its device, VDI, the VDI's SR and whether that is shared."""

    device: str
    vdi: str
    sr: str
    shared: bool


def _vm_and_vbds(host: HostServices, vm: str) -> tuple[dict[str, Any], list[_Disk]]:
    store = host.store
    try:
        row = store.get("VM", vm)
    except NotFound:
        raise ApiError(VM_MIGRATE_FAILED, ref(vm), ref(host.uuid), "", "no such VM") from None
    disks = []
    for vbd in vms.vbds(store, vm):
        sr = store.get("SR", store.get("VDI", vbd["vdi"])["sr"])
        disks.append(_Disk(vbd["device"], vbd["vdi"], sr["uuid"], bool(sr["shared"])))
    return row, disks


def _forget(host: HostServices, vm: str) -> None:
    """The VM left this host: its record and its VBDs removed (its VDIs stay: they are on
    SRs the destination shares; the domain's claims on them ended with it)."""
    vms.delete_vm(host.store, vm)
