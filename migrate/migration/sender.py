"""The source's side of a memory image: a domain's memory as a libxc v3 stream with pre-copy
rounds, then the CPU state, onto a migration connection.

Live: the first scan of the dirty log arms it; round 0 sends every page that is not all zero
(zero pages as XALLOC entries) among those the guest ever wrote (``Domain.populated``: RAM never
touched is zero at both ends and is not even read, which would make the kernel allocate it on
the source); each later round sends what the guest wrote during the one
before, the policy (:mod:`migrate.migration.policy`) deciding after each round whether to go
on (throttling the guest if it outruns the link) or to stop the guest and send the rest. Not
live: the guest is paused first and its memory sent once, like round 0. While the guest is
paused its disks are synced, beside the copy of what remains. Then TSC info, HVM
params, HVM_CONTEXT (the guest's register area) and END. The guest stays paused: the caller
resumes it on failure or destroys it once the destination runs it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from migrate.formats import libxc
from migrate.guest.hypervisor import Domain
from migrate.migration.channel import Channel
from migrate.migration.pages import PageSender, expand_runs, union_of_runs
from migrate.migration.policy import PAGE_SIZE, PolicyConfig, Round, decide
from migrate.nursery import open_nursery

HVM_PARAMS: tuple[tuple[int, int], ...] = ()
"""xfer's guests have no HVM parameters to carry (the record is sent, empty)."""


@dataclass
class SendReport:
    """What the sender did: rounds, why it stopped, when the guest was paused."""

    rounds: list[Round] = field(default_factory=list)
    stop_reason: str = ""
    paused_at: float | None = None
    """trio time of the pause (the downtime starts there)."""
    final_pages: int = 0
    bytes: int = 0


class MemorySender:
    """Sends ``domain``'s libxc stream on ``channel``; ``progress(fraction)`` and
    ``on_round(report)`` are called as it goes."""

    def __init__(
        self,
        domain: Domain,
        channel: Channel,
        config: PolicyConfig,
        *,
        live: bool,
        progress: Callable[[float], None] | None = None,
        on_round: Callable[[SendReport], None] | None = None,
        before_pause: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.domain = domain
        self.channel = channel
        self.config = config
        self.live = live
        self.report = SendReport()
        self._progress = progress
        self._on_round = on_round
        self._before_pause = before_pause
        """Awaited (once what is queued is sent) before the guest is paused: a migration
        waits there until the destination's domain exists, so that making it (a process
        started, its memory mapped) is never part of the downtime."""
        self.pages = domain.spec.memory // PAGE_SIZE
        self._estimate = float(domain.spec.memory)
        """Bytes the whole stream is expected to take (grows as rounds come)."""
        self.pages_out = PageSender(domain.memory, channel, self._sent)

    def _sent(self, sent: int) -> None:
        self.report.bytes = sent
        if self._progress is not None:
            self._progress(min(0.99, sent / max(self._estimate, sent, 1)))

    async def send(self, prefix: bytes = b"", suffix: bytes = b"") -> SendReport:
        """Send ``prefix`` (the suspend image's records before the stream), the stream up to
        END, then ``suffix`` (the records after it), the end in one send; the guest is left
        paused. The sender lets go of the guest's memory as it
        returns (or fails), so that destroying the domain unmaps it."""
        try:
            return await self._send(prefix, suffix)
        finally:
            self.pages_out.release()

    async def _send(self, prefix: bytes, suffix: bytes) -> SendReport:
        out = self.pages_out
        await out.send_bytes(prefix + libxc.image_header() + libxc.domain_header())
        await out.send_bytes(libxc.static_data_end())
        if not self.live:
            await self._pause()
            pages = expand_runs(self.domain.populated())
            await self._with_disks_synced(out.send_pages(pages, detect_zero=True))
            self.report.stop_reason = "not live: paused, memory sent once"
        else:
            await self._precopy()
        await out.send_bytes(
            libxc.tsc_info()
            + libxc.hvm_params(HVM_PARAMS)
            + libxc.hvm_context(self.domain.cpu_state())
            + libxc.end()
            + suffix
        )
        await out.flush()
        return self.report

    async def _precopy(self) -> None:
        domain, out, config = self.domain, self.pages_out, self.config
        domain.scan_dirty()  # arms the dirty log: every write from now on is in the next scan
        pfns, detect_zero, throttle = expand_runs(domain.populated()), True, 0.0
        while True:
            start = trio.current_time()
            size = await out.send_pages(pfns, detect_zero)
            await out.flush()
            dirty = domain.scan_dirty()
            seconds = trio.current_time() - start
            count = int((dirty[:, 1] - dirty[:, 0]).sum()) if len(dirty) else 0
            index = len(self.report.rounds)
            self.report.rounds.append(Round(index, len(pfns), size, seconds, count, throttle))
            decision = decide(self.report.rounds, count, self.pages, config)
            self._estimate = self.report.bytes + count * PAGE_SIZE
            if self._on_round is not None:
                self._on_round(self.report)
            if decision.stop:
                self.report.stop_reason = decision.reason
                break
            if decision.throttle != throttle:
                throttle = decision.throttle
                domain.set_throttle(throttle)
            pfns, detect_zero = expand_runs(dirty), False
        await self._pause()
        domain.set_throttle(0.0)
        # what the last round left, and what the guest wrote since, each page once
        final = union_of_runs(self.pages, dirty, domain.scan_dirty())
        self.report.final_pages = len(final)
        await self._with_disks_synced(out.send_pages(final, detect_zero=False))

    async def _with_disks_synced(self, copy: Awaitable[object]) -> None:
        """Await ``copy`` (the final copy, the guest paused) while the guest's disk writes
        are made durable: a host that attaches the same files (a shared SR) then finds
        every write the guest was told is done, whatever befalls this one."""
        async with open_nursery() as nursery:
            nursery.start_soon(self.domain.sync_disks)
            await copy

    async def _pause(self) -> None:
        if self._before_pause is not None:
            await self.pages_out.flush()
            await self._before_pause()
        await self.domain.pause()
        self.report.paused_at = trio.current_time()


def memory_digest(memory: memoryview) -> str:
    """sha256 of a guest's memory, hex (run in a thread: hashlib releases the GIL)."""
    return hashlib.sha256(memory).hexdigest()
