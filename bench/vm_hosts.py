"""What the migration benchmark starts and measures on ``::1``: the two hosts (``xfer serve``
daemons driven through the XenAPI SDK), the VMs made on them, one migration and its report,
the ledger of a guest saved after it, the daemons' own memory and CPU, and the peer and floors
(one iperf3 stream; numpy reading a guest's RAM). Everything started is stopped by its pid."""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import mmap
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import XenAPI  # type: ignore[import-untyped]
from common import MIB, BenchError, Runs, run
from vdi_harness import Deadline
from vdi_servers import PASSWORD, Processes, XferServer, free_port, start_iperf3, start_xfer

from migrate.cli.saved_image import read_saved_vm
from migrate.guest.workloads import LedgerError, check_ledger, read_ledger
from migrate.migration.pages import page_words, zero_pages

NETWORK_DEVICE = "lo"
"""The PIF whose network the migrations go over: the daemons' address on it is ``::1``."""
LEDGER_RUN = 2.0
"""Seconds the ledger guest runs before the migration (its ring holds a minute)."""
SETTLE = 0.5
"""Seconds a filled guest is left to finish its last 16 MiB step before it is migrated."""
FILL_TIMEOUT = 120.0
"""Longest wait for a guest to have written all of its RAM."""
TASK_POLL = 0.1
"""Seconds between two task.get_status calls (each is a request the source daemon serves)."""
NEAR_RESUME = 20_000_000
"""Nanoseconds around the destination's resume in which the gap of the stop-and-copy ends."""
SAMPLE_INTERVAL = 0.05
"""Seconds between two samples of the daemons' memory."""


# --- the daemons' memory -------------------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    """One look at a daemon's memory (bytes), from one read of /proc/PID/smaps."""

    uss: int
    """Private pages (clean + dirty) of every mapping: psutil's USS."""
    guest: int
    """Of those, the pages of memfd mappings: guests' RAM and register areas, which the daemon
    maps shared with its guests (a page only the daemon has mapped, as the destination's
    before the guest resumes, or one of a guest that is gone, is private to it)."""
    mappings: int
    """The guest RAM mappings (``/memfd:xfer-guest-*``) the daemon has."""

    @property
    def own(self) -> int:
        """The daemon's own memory: USS without guest RAM."""
        return self.uss - self.guest


def memory_of(pid: int) -> Memory:
    """A look at process ``pid``'s memory."""
    uss = guest = mappings = 0
    memfd = False
    with open(f"/proc/{pid}/smaps", "rb") as f:
        for line in f:
            if line.startswith((b"Private_Clean:", b"Private_Dirty:")):
                kib = int(line.split()[1]) * 1024
                uss += kib
                if memfd:
                    guest += kib
            elif not line[:1].isupper():  # a mapping's header line: "start-end perms ..."
                memfd = b"/memfd:" in line
                mappings += b"/memfd:xfer-guest-" in line
    return Memory(uss, guest, mappings)


@dataclass
class MemoryPeak:
    """One daemon during one sampled migration: the look before it and the sample of the
    highest own memory."""

    name: str
    pid: int
    before: Memory
    peak: Memory = Memory(0, 0, 0)
    samples: int = 0


class MemorySampler:
    """Samples the daemons' memory every :data:`SAMPLE_INTERVAL` in a thread."""

    def __init__(self, daemons: list[tuple[str, int]]) -> None:
        self.peaks = [MemoryPeak(name, pid, memory_of(pid)) for name, pid in daemons]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.seconds: list[float] = []
        """How long each sample (one smaps read per daemon) took."""

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            for peak in self.peaks:
                try:
                    now = memory_of(peak.pid)
                except (OSError, ValueError):
                    continue
                peak.samples += 1
                if now.own > peak.peak.own:
                    peak.peak = now
            self.seconds.append(time.perf_counter() - start)
            self._stop.wait(SAMPLE_INTERVAL)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class Sched:
    """A process's CPU over an interval (seconds): what its threads ran (user + system, the
    threads that ended included) and what they waited for a CPU while runnable (the
    scheduler's account, /proc/PID/task/TID/schedstat: a thread that ended meanwhile is
    missing from it, so this is a lower bound)."""

    ran: float
    waited: float


@dataclass(frozen=True)
class SchedMark:
    """The account of a process at one instant, to subtract from a later one."""

    cpu: float
    waited: dict[int, int]
    """Nanoseconds each live thread has waited for a CPU."""

    def since(self, earlier: SchedMark) -> Sched:
        """The interval from ``earlier`` to this mark."""
        waited = sum(ns - earlier.waited.get(tid, 0) for tid, ns in self.waited.items())
        return Sched(self.cpu - earlier.cpu, waited / 1e9)


def busy_seconds(times: Any) -> float:
    """CPU seconds the machine spent on anything but idling (psutil.cpu_times())."""
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def sched(pid: int) -> SchedMark:
    """The scheduler's account of process ``pid`` now."""
    times = psutil.Process(pid).cpu_times()
    waited = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            waited[int(task.name)] = int((task / "schedstat").read_text().split()[1])
    return SchedMark(float(times.user + times.system), waited)


# --- the hosts -----------------------------------------------------------------------------


@dataclass
class Host:
    """A daemon and a XenAPI session on it."""

    name: str
    server: XferServer
    session: Any
    ref: str
    network: str

    @property
    def x(self) -> Any:
        """The session's ``xenapi`` proxy."""
        return self.session.xenapi

    @property
    def pid(self) -> int:
        """The daemon's pid."""
        return int(self.server.proc.pid)


def open_host(procs: Processes, xfer: list[str], workdir: Path, name: str) -> Host:
    """``xfer serve --listen [::1]:0`` in its own state directory, logged in through the
    XenAPI SDK; its host ref and the network of its loopback PIF."""
    server = start_xfer(procs, xfer, workdir, name)
    session = XenAPI.Session(server.url + "/")
    session.xenapi.login_with_password("root", PASSWORD, "1.0", "xfer-bench")
    x = session.xenapi
    (host,) = x.host.get_all()
    for pif in x.PIF.get_all():
        if x.PIF.get_device(pif) == NETWORK_DEVICE:
            return Host(name, server, session, host, x.PIF.get_network(pif))
    raise BenchError(f"{name}: the daemon has no PIF on {NETWORK_DEVICE}")


def guest_process(host: Host) -> psutil.Process:
    """The daemon's guest process (the benchmark runs one VM at a time on a host)."""
    for child in psutil.Process(host.pid).children():
        with contextlib.suppress(psutil.Error):
            if "migrate.guest.program" in child.cmdline():
                return child
    raise BenchError(f"{host.name}: no guest process under the daemon")


@dataclass
class Vm:
    """A VM the benchmark made: its ref, where it is, and the guest processes seen."""

    ref: str
    host: Host
    workload: str

    @property
    def uuid(self) -> str:
        """The VM's uuid."""
        return str(self.ref).removeprefix("OpaqueRef:")


class Fleet:
    """The VMs made and the guest processes seen, so that everything is gone at the end."""

    def __init__(self) -> None:
        self.vms: list[Vm] = []
        self.guests: set[int] = set()

    def start(self, host: Host, memory: int, workload: str) -> Vm:
        """A VM of ``memory`` bytes running ``workload`` on ``host``."""
        record = {
            "name_label": f"bench {workload}",
            "memory_static_max": str(memory),
            "VCPUs_max": "1",
            "other_config": {"xfer_workload": workload},
        }
        vm = Vm(host.x.VM.create(record), host, workload)
        self.vms.append(vm)
        host.x.VM.start(vm.ref, False, False)
        self.guests.add(guest_process(host).pid)
        return vm

    def remove(self, vm: Vm) -> None:
        """Shut the VM down (if it runs) and destroy it where it is."""
        x = vm.host.x
        if x.VM.get_power_state(vm.ref) != "Halted":
            x.VM.hard_shutdown(vm.ref)
        x.VM.destroy(vm.ref)
        self.vms.remove(vm)

    def remove_all(self) -> None:
        """Every VM still there removed, then any guest process still alive killed (by pid):
        the daemons' ends kill theirs, this is for a daemon that could not."""
        for vm in list(self.vms):
            with contextlib.suppress(Exception):
                self.remove(vm)

    def kill_leftovers(self) -> None:
        """Kill the guest processes seen that outlived their daemons."""
        for pid in self.guests:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                if "migrate.guest.program" in process.cmdline():
                    process.send_signal(signal.SIGKILL)


def wait_filled(vm: Vm, memory: int, deadline: float) -> float:
    """Wait until the guest has touched all of its RAM (its RSS, the memfd's pages it maps,
    reaches the memory size), then :data:`SETTLE` more; seconds waited."""
    start = time.monotonic()
    process = guest_process(vm.host)
    while process.memory_info().rss < memory:
        if time.monotonic() > min(deadline, start + FILL_TIMEOUT):
            raise BenchError(f"the {vm.workload} guest did not fill its RAM in time")
        time.sleep(0.05)
    time.sleep(SETTLE)
    return time.monotonic() - start


# --- a migration ---------------------------------------------------------------------------


@dataclass
class Migrated:
    """One migration: the report, wall seconds seen by the client, CPU seconds of each
    daemon during it, and the wall-clock (ns) window it ran in."""

    report: dict[str, Any]
    wall: float
    source: Sched
    """The source daemon's CPU during the migration."""
    destination: Sched
    busy_cpus: float
    """CPUs the whole machine kept busy on average meanwhile (all processes)."""
    started_ns: int
    ended_ns: int

    @property
    def rounds(self) -> list[dict[str, Any]]:
        """The pre-copy rounds."""
        return list(self.report["rounds"])

    @property
    def total(self) -> float:
        """Seconds the source took, start to the destination running the VM."""
        return float(self.report["total"])

    @property
    def stream_rate(self) -> float:
        """Bytes/s of round 0 (every non-zero page)."""
        first = self.rounds[0]
        return float(first["bytes"]) / float(first["seconds"])

    @property
    def throttle(self) -> float:
        """The highest throttle duty of the rounds."""
        return max(float(r["throttle"]) for r in self.rounds)

    @property
    def downtime(self) -> float:
        """Seconds from the source's SIGSTOP to the destination's word that it runs the VM."""
        return float(self.report["downtime"])

    @property
    def final_pages(self) -> int:
        """Pages sent after the pause."""
        return int(self.report["final_pages"])

    @property
    def unthrottled_dirty_rate(self) -> float:
        """The highest rate (bytes/s of distinct pages) the guest dirtied memory at in a
        round where it was not throttled."""
        return max(float(r["dirty_rate"]) for r in self.rounds if float(r["throttle"]) == 0.0)


def migrate(vm: Vm, dest: Host, deadline: Deadline, options: dict[str, str]) -> Migrated:
    """``Async.VM.migrate_send`` of ``vm`` to ``dest``, polled to its end; BenchError on a
    failure. ``vm.host`` becomes ``dest``."""
    source = vm.host
    receive = dest.x.host.migrate_receive(dest.ref, dest.network, {})
    before_a, before_b = sched(source.pid), sched(dest.pid)
    machine = psutil.cpu_times()
    started_ns = time.time_ns()
    start = time.perf_counter()
    task = source.x.Async.VM.migrate_send(vm.ref, receive, True, {}, {}, options)
    limit = time.monotonic() + deadline.left()
    while (status := source.x.task.get_status(task)) in ("pending", "cancelling"):
        if time.monotonic() > limit:
            source.x.task.cancel(task)
            raise BenchError(f"the migration of the {vm.workload} guest did not end in time")
        time.sleep(TASK_POLL)
    wall = time.perf_counter() - start
    ended_ns = time.time_ns()
    cpu_a, cpu_b = sched(source.pid).since(before_a), sched(dest.pid).since(before_b)
    busy = busy_seconds(psutil.cpu_times()) - busy_seconds(machine)
    record = source.x.task.get_record(task)
    source.x.task.destroy(task)
    if status != "success":
        raise BenchError(f"migration of the {vm.workload} guest: {status} {record['error_info']}")
    vm.host = dest
    report = json.loads(record["other_config"]["xfer_migration"])
    if report.get("state") != "done" or not report.get("rounds"):
        raise BenchError(f"migration of the {vm.workload} guest: report {report}")
    return Migrated(report, wall, cpu_a, cpu_b, busy / wall, started_ns, ended_ns)


def save(vm: Vm, path: Path, timeout: float) -> None:
    """``GET /vm_save`` of ``vm`` where it runs, into ``path`` (the VM is Halted after)."""
    server = vm.host.server
    port = int(server.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("::1", port, timeout=timeout)
    try:
        conn.request("GET", f"/vm_save?vm={vm.uuid}&session_id={vm.host.session._session}")
        response = conn.getresponse()
        if response.status != 200:
            raise BenchError(f"vm_save: HTTP {response.status}: {response.read()[:300]!r}")
        with open(path, "wb") as f:
            while chunk := response.read(8 * MIB):
                f.write(chunk)
    finally:
        conn.close()


@dataclass
class Pause:
    """What the ledger shows of one migration (seconds)."""

    gap: float
    """The largest gap between consecutive timestamps while the migration ran: what the guest
    saw at its worst (the record before the start and the one after the end included)."""
    gap_at: float
    """When that gap began, from the migration's start."""
    at_pause: float
    """The gap of the stop-and-copy: the largest one ending within :data:`NEAR_RESUME` of the
    instant the destination resumed the guest (its log line, just after SIGCONT)."""
    before: float
    """The largest gap before the migration (the guest's stalls without a migration)."""


def resumed_at(server: XferServer, vm: str) -> int:
    """When (ns since the epoch) the daemon ``server`` logged that it resumed the received VM
    ``vm``, read from the log lines written since the last look; BenchError if none says so."""
    for line in server.new_log().splitlines():
        if f"VM {vm} received and running" in line:
            stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return int(stamp.timestamp() * 1e9)  # the daemon logs local time, as this reads it
    raise BenchError(f"{server.log.name}: no line says VM {vm} was received and running")


def ledger_pause(image: Path, done: Migrated, resumed_ns: int) -> Pause:
    """The ledger of a saved image and what it shows of the migration ``done``; BenchError
    unless it is intact and holds records from before and after the migration."""
    try:
        records = read_ledger(memoryview(read_saved_vm(str(image)).memory))
    except (LedgerError, ValueError) as e:
        raise BenchError(f"the ledger in {image.name}: {e}") from None
    verdict = check_ledger(records)
    if not verdict.intact:
        raise BenchError(f"the ledger after the migration: {verdict}")
    times = records[:, 1]
    first = int(np.searchsorted(times, done.started_ns))
    last = int(np.searchsorted(times, done.ended_ns))
    if first == 0 or last >= len(times):
        raise BenchError("the ledger holds no records from before and after the migration")
    window = times[first - 1 : last + 1]
    gaps = np.diff(window)
    worst = int(np.argmax(gaps))
    ends = window[1:]
    close = np.flatnonzero(np.abs(ends - resumed_ns) <= NEAR_RESUME)
    if len(close):
        near = int(close[np.argmax(gaps[close])])
    else:
        near = int(np.argmin(np.abs(ends - resumed_ns)))
    before = float(np.diff(times[:first]).max()) if first > 1 else 0.0
    return Pause(
        gap=float(gaps[worst]) / 1e9,
        gap_at=float(window[worst] - done.started_ns) / 1e9,
        at_pause=float(gaps[near]) / 1e9,
        before=before / 1e9,
    )


def fsync_seconds(directory: Path, times: int = 3) -> list[float]:
    """Seconds of each of ``times`` 4 KiB appends to a file in ``directory``, each fsynced:
    what a database commit costs at least there (the daemons' SQLite runs WAL with
    ``synchronous=FULL``: one fsync of the log per commit)."""
    path = directory / "bench-fsync"
    seconds = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(times):
            start = time.perf_counter()
            os.write(fd, bytes(4096))
            os.fsync(fd)
            seconds.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    return seconds


# --- the peer and floors -------------------------------------------------------------------


@dataclass
class Iperf:
    """One iperf3 run: bytes/s received and the CPU use of both ends (percent of one CPU)."""

    rate: float
    sender_cpu: float
    receiver_cpu: float


def iperf3(procs: Processes, workdir: Path, seconds: int, deadline: Deadline) -> Iperf:
    """One TCP stream over ::1 for ``seconds`` (as ../shared/anchors/loopback.sh)."""
    port = free_port()
    server = start_iperf3(procs, workdir, port)
    try:
        argv = ["iperf3", "-c", "::1", "-p", str(port), "-t", str(seconds), "-J"]
        done = run(argv, deadline.left())
    finally:
        procs.stop(server)
    end = json.loads(done.stdout)["end"]
    cpu = end.get("cpu_utilization_percent", {})
    return Iperf(
        float(end["sum_received"]["bits_per_second"]) / 8,
        float(cpu.get("host_total", 0.0)),
        float(cpu.get("remote_total", 0.0)),
    )


@dataclass
class MemoryFloor:
    """The memory floors of a migration of ``size`` bytes of RAM, timed by numpy: the first
    write to a new memfd of that size (what the destination's receive pays, page by page, on
    top of the copy: the kernel allocates and clears each page at its first touch), one read
    of all of it (what the source's send reads), and the sender's zero-page detection (one
    word a page) over it."""

    size: int
    fresh: Runs = field(default_factory=Runs)
    read: Runs = field(default_factory=Runs)
    zero: Runs = field(default_factory=Runs)

    def measure(self) -> None:
        """One run of each, on a new memfd (as a new guest's RAM) freed afterwards."""
        fd = os.memfd_create("bench-floor", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, self.size)
            with mmap.mmap(fd, self.size) as mapping:
                view = memoryview(mapping)
                words = np.frombuffer(view, dtype=np.uint64)
                start = time.perf_counter()
                words.fill(0x0123456789ABCDEF)
                self.fresh.seconds.append(time.perf_counter() - start)
                start = time.perf_counter()
                np.bitwise_or.reduce(words)
                self.read.seconds.append(time.perf_counter() - start)
                pages = page_words(view)
                pfns = np.arange(len(pages), dtype=np.int64)
                start = time.perf_counter()
                for first in range(0, len(pfns), 1024):  # as the sender: a record at a time
                    zero_pages(pages, pfns[first : first + 1024])
                self.zero.seconds.append(time.perf_counter() - start)
                del words, pages
                view.release()
        finally:
            os.close(fd)
