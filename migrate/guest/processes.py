"""The hypervisor on Linux processes: a domain is a guest process (:mod:`migrate.guest.program`)
over a shared ``memfd`` of its RAM and a one-page ``memfd`` register area.

The daemon creates both memfds, maps them shared (the domain's :attr:`~ProcessDomain.memory`
is the daemon's writable view) and passes them to the guest, which maps them too, registers
its RAM for the kernel's dirty log and reports ready. Pause is SIGSTOP (plus the block
backends quiesced), unpause SIGCONT; the throttle is a SIGSTOP/SIGCONT duty cycle. Every
domain task (reaper, block backends, throttle) runs in the nursery of
:meth:`ProcessHypervisor.serve`; a guest that dies is reaped and its domain released.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from pathlib import Path

import numpy as np
import trio

from migrate.guest import dirtylog, workloads
from migrate.guest.blockback import BlockBackend, open_disk
from migrate.guest.hypervisor import PAGE_SIZE, DirtyLogUnavailable, GuestError, GuestSpec

THROTTLE_PERIOD = 0.02
"""Seconds of one stop/run cycle of the throttle."""
READY_TIMEOUT = 60.0
"""Seconds a new guest has to map its memory and report ready."""
STOP_TIMEOUT = 10.0
"""Seconds a guest has to stop after SIGSTOP."""
_MAX_REPORT = 65536
_STOP_SPINS = 50
_ROOT = str(Path(__file__).resolve().parents[2])


class ProcessDomain:
    """A guest process and its memory. Made by :meth:`ProcessHypervisor.create`."""

    def __init__(
        self,
        hypervisor: ProcessHypervisor,
        spec: GuestSpec,
        workload: workloads.Workload,
        process: trio.Process,
        ram: tuple[int, mmap.mmap],
        regs: tuple[int, mmap.mmap],
        backends: list[BlockBackend],
        control: socket.socket,
        paused: bool,
    ) -> None:
        self._hypervisor = hypervisor
        self._control = control  # open while the domain is: its end closed tells the guest
        self._spec = spec
        self._workload = workload
        self._process = process
        self._ram_fd, self._ram = ram
        self._regs_fd, self._regs = regs
        self._view: memoryview | None = memoryview(self._ram)
        self._backends = backends
        self._paused = paused
        self._scopes: list[trio.CancelScope] = []
        self._exited = trio.Event()
        self._released = False
        self._log: dirtylog.DirtyLog | None = None
        self._wp_error: str | None = None
        self._scanned = False
        self._duty = 0.0
        self._throttling = False
        self._stat = os.open(f"/proc/{process.pid}/stat", os.O_RDONLY | os.O_CLOEXEC)

    @property
    def spec(self) -> GuestSpec:
        """What the domain was made from."""
        return self._spec

    @property
    def pid(self) -> int:
        """The guest process's pid."""
        return self._process.pid

    @property
    def memory(self) -> memoryview:
        """The daemon's writable shared mapping of the guest's RAM."""
        if self._view is None:
            raise GuestError(f"the domain of VM {self._spec.uuid} is destroyed")
        return self._view

    @property
    def paused(self) -> bool:
        """Whether the guest is paused (or created paused and not yet unpaused)."""
        return self._paused

    @property
    def exited(self) -> bool:
        """Whether the guest process is gone."""
        return self._exited.is_set()

    def _attach_log(self, report: dict[str, object]) -> None:
        if not report.get("wp"):
            self._wp_error = str(report.get("wp_error") or dirtylog.UNAVAILABLE)
            return
        start = report.get("start")
        if not isinstance(start, int):
            raise GuestError(f"the guest reported no RAM address: {report}")
        try:
            self._log = dirtylog.DirtyLog(self.pid, start, self._spec.memory // PAGE_SIZE)
        except OSError as e:
            raise GuestError(f"cannot open the dirty log of guest {self.pid}: {e}") from None

    def scan_dirty(self) -> np.ndarray:
        """Peek and clean the dirty log: ``(n, 2)`` int64 ``[start, end)`` page runs written
        since the previous scan; the first scan reports every page."""
        self._check_alive()
        if self._log is None:
            raise DirtyLogUnavailable(self._wp_error or dirtylog.UNAVAILABLE)
        try:
            runs = self._log.scan()
        except OSError as e:
            if self.exited or e.errno == errno.ESRCH:
                raise GuestError(f"the guest of VM {self._spec.uuid} exited") from None
            raise DirtyLogUnavailable(f"{dirtylog.UNAVAILABLE} ({e})") from None
        if not self._scanned:
            self._scanned = True
            return np.array([[0, self._spec.memory // PAGE_SIZE]], dtype=np.int64)
        return runs

    async def pause(self) -> None:
        """SIGSTOP, wait until the kernel shows the guest stopped, quiesce its disks."""
        self._check_alive()
        self._paused = True
        self._process.send_signal(signal.SIGSTOP)
        await self._wait_stopped()
        for backend in self._backends:
            await backend.quiesce()

    async def sync_disks(self) -> None:
        """Make every disk write the guest was told is done durable."""
        for backend in self._backends:
            await backend.sync()

    async def unpause(self) -> None:
        """SIGCONT (the throttle, if on, goes on stopping the guest part of the time)."""
        self._check_alive()
        self._paused = False
        self._process.send_signal(signal.SIGCONT)

    def set_throttle(self, duty: float) -> None:
        """Keep the guest stopped ``duty`` of each :data:`THROTTLE_PERIOD`; 0 turns it off.
        A pause wins over the throttle."""
        if not 0 <= duty < 1:
            raise GuestError(f"throttle duty {duty} is outside 0 .. <1")
        if duty:
            self._check_alive()
        self._duty = float(duty)
        if duty and not self._throttling:
            self._throttling = True
            self._hypervisor._start(self._throttle)

    async def _throttle(self) -> None:
        try:
            while self._duty and not self.exited:
                duty = self._duty
                if not self._paused:
                    self._process.send_signal(signal.SIGSTOP)
                await trio.sleep(duty * THROTTLE_PERIOD)
                if not self._paused and not self.exited:
                    self._process.send_signal(signal.SIGCONT)
                await trio.sleep((1 - duty) * THROTTLE_PERIOD)
        finally:
            self._throttling = False

    def cpu_state(self) -> bytes:
        """The register area (workload counters), read while the guest is paused."""
        self._check_alive()
        if not self._paused:
            raise GuestError(f"the CPU state of VM {self._spec.uuid} is read while it is paused")
        return bytes(self._regs)

    def set_cpu_state(self, state: bytes) -> None:
        """Load a register area taken by :meth:`cpu_state` from a domain of the same spec,
        before the first unpause. GuestError if it is not one."""
        self._check_alive()
        if not self._paused:
            raise GuestError(f"the CPU state of VM {self._spec.uuid} is loaded while it is paused")
        if len(state) != workloads.REGS_SIZE:
            raise GuestError(
                f"a CPU state of {len(state)} bytes; this guest's is {workloads.REGS_SIZE}"
            )
        words = np.frombuffer(state, dtype=np.uint64, count=4)
        expected = (
            workloads.REGS_MAGIC,
            workloads.VERSION,
            self._spec.memory // PAGE_SIZE,
            self._workload.fingerprint,
        )
        if int(words[0]) != 0 and tuple(int(w) for w in words) != expected:
            raise GuestError(
                "the CPU state is not that of a guest with "
                f"{self._spec.memory} bytes of RAM running {self._workload.spec!r}"
            )
        self._regs[:] = state

    async def destroy(self) -> None:
        """Kill the guest, reap it, free its memory, close its disks; idempotent."""
        with trio.CancelScope(shield=True):
            if self._process.returncode is None:
                self._process.kill()
                await self._process.wait()
            self._release()

    async def wait_exited(self) -> None:
        """Return when the guest process is gone (destroyed, or died)."""
        await self._exited.wait()

    def _check_alive(self) -> None:
        if self.exited or self._process.returncode is not None:
            raise GuestError(f"the guest of VM {self._spec.uuid} has exited")

    async def _wait_stopped(self) -> None:
        spins = 0
        with trio.move_on_after(STOP_TIMEOUT):
            while not self._stopped():
                self._check_alive()
                spins += 1
                await (trio.sleep(0) if spins < _STOP_SPINS else trio.sleep(0.0002))
            return
        raise GuestError(f"the guest of VM {self._spec.uuid} did not stop in {STOP_TIMEOUT} s")

    def _stopped(self) -> bool:
        try:
            stat = os.pread(self._stat, 512, 0)
        except OSError:
            raise GuestError(f"the guest of VM {self._spec.uuid} has exited") from None
        state = stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3]
        if state in (b"Z", b"X", b""):
            raise GuestError(f"the guest of VM {self._spec.uuid} has exited")
        return state in (b"T", b"t")

    async def _reap(self) -> None:
        await self._process.wait()
        self._release()

    async def _serve_disk(self, backend: BlockBackend) -> None:
        with trio.CancelScope() as scope, contextlib.suppress(OSError, trio.ClosedResourceError):
            self._scopes.append(scope)
            if not self._released:
                await backend.serve()

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        for scope in self._scopes:
            scope.cancel()
        for backend in self._backends:
            trio.lowlevel.notify_closing(backend.sock)
            backend.close()
        if self._log is not None:
            self._log.close()
        os.close(self._stat)
        self._control.close()
        view, self._view = self._view, None
        for mapping, fd in ((self._ram, self._ram_fd), (self._regs, self._regs_fd)):
            with contextlib.suppress(BufferError):  # views still held: freed with the last
                if view is not None and mapping is self._ram:
                    view.release()
                mapping.close()
            os.close(fd)
        self._hypervisor._forget(self)
        self._exited.set()


class ProcessHypervisor:
    """Domains as guest processes of this daemon. :meth:`serve` must run (in the daemon's
    nursery) for :meth:`create` to work."""

    def __init__(self, *, python: str = sys.executable) -> None:
        self._python = python
        self._domains: dict[str, ProcessDomain] = {}
        self._creating: set[str] = set()
        self._nursery: trio.Nursery | None = None
        self._support: tuple[str | None] | None = None

    def live_migration_support(self) -> str | None:
        """None when guests' writes can be tracked (probed once), else why not."""
        if self._support is None:
            self._support = (dirtylog.probe(),)
        return self._support[0]

    def domain(self, uuid: str) -> ProcessDomain | None:
        """The domain of VM ``uuid``, if it has one."""
        return self._domains.get(uuid)

    def domains(self) -> Iterable[ProcessDomain]:
        """Every domain."""
        return list(self._domains.values())

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the domains' tasks until cancelled, then destroy every domain."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                for domain in list(self._domains.values()):
                    await domain.destroy()

    async def create(self, spec: GuestSpec, *, paused: bool = False) -> ProcessDomain:
        """Start a guest process for ``spec`` with zero RAM; with ``paused`` it is stopped
        before it runs anything. GuestError when it cannot be made."""
        if self._nursery is None:
            raise GuestError("the hypervisor is not serving (run serve() first)")
        if spec.uuid in self._domains or spec.uuid in self._creating:
            raise GuestError(f"VM {spec.uuid} already has a domain")
        if spec.memory <= 0 or spec.memory % PAGE_SIZE:
            raise GuestError(f"memory {spec.memory} is not a positive multiple of {PAGE_SIZE}")
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if spec.memory > ram:
            raise GuestError(f"memory {spec.memory} exceeds this host's {ram} bytes of RAM")
        if spec.vcpus < 1:
            raise GuestError(f"vcpus {spec.vcpus} is less than 1")
        try:
            workload = workloads.parse(spec.workload, spec.memory)
        except workloads.WorkloadError as e:
            raise GuestError(str(e)) from None
        self._creating.add(spec.uuid)
        try:
            return await self._create(spec, workload, paused)
        finally:
            self._creating.discard(spec.uuid)

    async def _create(
        self, spec: GuestSpec, workload: workloads.Workload, paused: bool
    ) -> ProcessDomain:
        with contextlib.ExitStack() as undo:
            ram = _shared_memory(f"xfer-guest-{spec.uuid}", spec.memory, undo)
            regs = _shared_memory(f"xfer-regs-{spec.uuid}", workloads.REGS_SIZE, undo)
            control, control_child = socket.socketpair()
            undo.callback(control.close)
            backends, children = [], [control_child]
            undo.callback(_close_all, children)
            args = ["--ram", str(ram[0]), "--regs", str(regs[0])]
            for disk in spec.disks:
                fd, size = open_disk(disk)
                mine, theirs = socket.socketpair()
                children.append(theirs)
                backend = BlockBackend(disk.device, fd, size, mine)
                undo.callback(backend.close)
                backends.append(backend)
                args += ["--disk", f"{theirs.fileno()}:{size}"]
            fds = [ram[0], regs[0], *(child.fileno() for child in children)]
            process = await self._spawn(spec, workload, args, fds, children[0], paused)
            for child in children:  # the guest's ends: only the guest holds them now
                child.close()
            domain = None
            try:
                report = await _ready(process, control)
                domain = ProcessDomain(
                    self, spec, workload, process, ram, regs, backends, control, paused
                )
                domain._attach_log(report)
            except BaseException:
                if domain is not None:
                    os.close(domain._stat)
                with trio.CancelScope(shield=True):
                    process.kill()
                    await process.wait()
                raise
            undo.pop_all()
        self._domains[spec.uuid] = domain
        self._start(domain._reap)
        for backend in backends:
            self._start(partial(domain._serve_disk, backend))
        if paused:
            try:
                await domain._wait_stopped()
            except BaseException:
                await domain.destroy()
                raise
        return domain

    async def _spawn(
        self,
        spec: GuestSpec,
        workload: workloads.Workload,
        args: list[str],
        fds: list[int],
        control: socket.socket,
        paused: bool,
    ) -> trio.Process:
        command = [
            self._python,
            "-m",
            "migrate.guest.program",
            "--parent",
            str(os.getpid()),
            "--control",
            str(control.fileno()),
            "--memory",
            str(spec.memory),
            "--workload",
            workload.spec,
            *args,
        ]
        if paused:
            command.append("--paused")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
        # One thread, no BLAS pool: shown stopped in /proc/<pid>/stat is then stopped whole,
        # as the kernel's orphaned-group SIGHUP (has_stopped_jobs) needs.
        env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        try:
            return await trio.lowlevel.open_process(
                command,
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
                process_group=0,  # orphaned by the daemon's death: see migrate.guest.program
            )
        except OSError as e:
            raise GuestError(f"cannot start the guest program: {e}") from None

    def _start(self, task: Callable[[], Awaitable[object]]) -> None:
        if self._nursery is None:
            raise GuestError("the hypervisor is not serving (run serve() first)")
        self._nursery.start_soon(task)

    def _forget(self, domain: ProcessDomain) -> None:
        if self._domains.get(domain.spec.uuid) is domain:
            del self._domains[domain.spec.uuid]


def _close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def _shared_memory(name: str, size: int, undo: contextlib.ExitStack) -> tuple[int, mmap.mmap]:
    """A memfd of ``size`` zero bytes and the daemon's shared mapping of it."""
    try:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
    except OSError as e:
        raise GuestError(f"cannot create the guest's memory: {e.strerror}") from None
    undo.callback(os.close, fd)
    try:
        os.ftruncate(fd, size)
        mapping = mmap.mmap(fd, size)
    except OSError as e:
        raise GuestError(f"cannot allocate {size} bytes of guest memory: {e.strerror}") from None
    undo.callback(mapping.close)
    return fd, mapping


async def _ready(process: trio.Process, control: socket.socket) -> dict[str, object]:
    """The guest's ready report; GuestError if it fails or exits first."""
    sock = trio.socket.from_stdlib_socket(control)
    data = b""
    with trio.move_on_after(READY_TIMEOUT) as timer:
        while not data.endswith(b"\n") and len(data) < _MAX_REPORT:
            chunk = await sock.recv(_MAX_REPORT)
            if not chunk:
                break
            data += chunk
    if timer.cancelled_caught:
        raise GuestError(f"the guest program was not ready within {READY_TIMEOUT} s")
    if not data.endswith(b"\n"):
        status = await process.wait()
        raise GuestError(f"the guest program exited (status {status}) before it was ready")
    try:
        report = json.loads(data)
    except ValueError:
        raise GuestError(f"the guest program's report is not JSON: {data[:200]!r}") from None
    if not isinstance(report, dict):
        raise GuestError(f"the guest program's report is not an object: {data[:200]!r}")
    if "error" in report:
        raise GuestError(f"the guest program failed: {report['error']}")
    return report
