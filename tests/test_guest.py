"""Guest processes: the kernel's dirty log, pause, resume of a copy, throttle, destroy, death,
disks (real guest processes, real userfaultfd and PAGEMAP_SCAN; root here and in CI)."""

from __future__ import annotations

import hashlib
import mmap
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import trio

import vhd
from migrate.guest import dirtylog, workloads
from migrate.guest.hypervisor import (
    PAGE_SIZE,
    DirtyLogUnavailable,
    DiskAttachment,
    GuestError,
    GuestSpec,
)
from migrate.guest.processes import ProcessDomain, ProcessHypervisor
from migrate.guest.program import MAX_CATCH_UP
from migrate.guest.workloads import TERM_SLOTS, check_ledger, read_disk_ledger, read_ledger
from vhd.format import FOOTER_SIZE, Footer

MIB = 1 << 20
WAIT = 10.0


@pytest.fixture
async def hypervisor(nursery: trio.Nursery) -> ProcessHypervisor:
    """A hypervisor serving in the test's nursery (its domains destroyed at the end)."""
    hv = ProcessHypervisor()
    await nursery.start(hv.serve)
    return hv


def _pages(runs: np.ndarray) -> np.ndarray:
    """The page numbers of ``[start, end)`` runs."""
    if len(runs) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(start, end) for start, end in runs])


def _counter(domain: ProcessDomain, term: int = 0) -> int:
    return int(np.frombuffer(domain.cpu_state(), dtype=np.uint64)[TERM_SLOTS + term])


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


async def _until(predicate: Callable[[], bool], what: str) -> None:
    """Wait (polling) until ``predicate``; fails the test after WAIT seconds."""
    with trio.fail_after(WAIT):
        while not predicate():
            await trio.sleep(0.01)


def _with_disk(uuid: str, path: Path, workload: str = "idle") -> GuestSpec:
    return GuestSpec(uuid, 8 * MIB, workload=workload, disks=(DiskAttachment("xvda", str(path)),))


def test_dirty_log_in_one_process() -> None:
    """reference.md §8's check: two writes, a scan shows exactly them, the next nothing."""
    fd = os.memfd_create("test-dirtylog", os.MFD_CLOEXEC)
    os.ftruncate(fd, 1024 * PAGE_SIZE)
    mapping = mmap.mmap(fd, 1024 * PAGE_SIZE)
    start = dirtylog.mapping_address(mapping)
    uffd = dirtylog.register_wp_async(start, 1024 * PAGE_SIZE)
    log = dirtylog.DirtyLog(os.getpid(), start, 1024)
    try:
        log.scan()
        mapping[9 * PAGE_SIZE + 5] = 1
        mapping[500 * PAGE_SIZE] = 1
        mapping[501 * PAGE_SIZE + 4095] = 1
        assert log.scan().tolist() == [[9, 10], [500, 502]]
        assert log.scan().tolist() == []
    finally:
        log.close()
        os.close(uffd)
        os.close(fd)
    assert dirtylog.probe() is None


def test_dirty_log_full_vec(monkeypatch: pytest.MonkeyPatch) -> None:
    """More runs than the vec holds: the scan goes on from walk_end."""
    monkeypatch.setattr(dirtylog, "_VEC_REGIONS", 4)
    fd = os.memfd_create("test-dirtylog", os.MFD_CLOEXEC)
    os.ftruncate(fd, 64 * PAGE_SIZE)
    mapping = mmap.mmap(fd, 64 * PAGE_SIZE)
    start = dirtylog.mapping_address(mapping)
    uffd = dirtylog.register_wp_async(start, 64 * PAGE_SIZE)
    log = dirtylog.DirtyLog(os.getpid(), start, 64)
    try:
        log.scan()
        pages = [1, 3, 5, 7, 11, 12, 13, 20, 40, 63]
        for page in pages:
            mapping[page * PAGE_SIZE] = 1
        assert log.scan().tolist() == [[1, 2], [3, 4], [5, 6], [7, 8], [11, 14], [20, 21],
                                       [40, 41], [63, 64]]  # fmt: skip
    finally:
        log.close()
        os.close(uffd)
        os.close(fd)


def test_coalesce() -> None:
    runs = np.array([[0, 2], [2, 3], [5, 6], [6, 9], [10, 11]], dtype=np.int64)
    assert dirtylog.coalesce(runs).tolist() == [[0, 3], [5, 9], [10, 11]]


async def test_dirty_log_exact(hypervisor: ProcessHypervisor) -> None:
    """The guest's writes between two scans are exactly the pages the scan reports: the
    workload's writes are a function of its counter, so the test knows which they were."""
    memory = 64 * MIB
    pages = memory // PAGE_SIZE
    assert hypervisor.live_migration_support() is None
    domain = await hypervisor.create(GuestSpec(str(1), memory, workload="uniform:16M"))
    assert domain.scan_dirty().tolist() == [[0, pages]]  # the first: all
    await trio.sleep(0.2)
    await domain.pause()
    domain.scan_dirty()
    first = _counter(domain)
    first += _made(domain, first, pages)  # of a step stopped midway, before the scan
    await domain.unpause()
    await _until(lambda: _counter_running(domain) > first + 1000, "writes")
    await domain.pause()
    last = _counter(domain)
    last += _made(domain, last, pages)  # of a step stopped midway, after the scan
    page, _, _ = workloads.page_writes(TERM_SLOTS, first, last - first, pages)
    assert np.array_equal(_pages(domain.scan_dirty()), np.unique(page))
    assert domain.scan_dirty().tolist() == []  # cleaned, and the guest is stopped


def _made(domain: ProcessDomain, first: int, pages: int) -> int:
    """How many page writes from number ``first`` on are in memory although not committed:
    those of a step the guest was stopped in the middle of (a step writes in order; write
    ``k`` stores ``k + 1``, a value no other write stores)."""
    page, word, value = workloads.page_writes(TERM_SLOTS, first, 100_000, pages)
    ram = np.frombuffer(domain.memory, dtype=np.uint64)
    return int(np.argmin(ram[page * np.uint64(PAGE_SIZE // 8) + word] == value))


def _counter_running(domain: ProcessDomain, term: int = 0) -> int:
    """The counter of a running guest, read from the register area itself."""
    return int(np.frombuffer(domain._regs, dtype=np.uint64)[TERM_SLOTS + term])


async def test_pause_really_stops(hypervisor: ProcessHypervisor) -> None:
    domain = await hypervisor.create(GuestSpec("p", 16 * MIB, workload="uniform:64M+ledger"))
    assert not domain.paused
    domain.scan_dirty()
    await domain.pause()
    assert domain.paused and _state(domain.pid) == "T"
    domain.scan_dirty()
    digest = hashlib.sha256(domain.memory).digest()
    await trio.sleep(0.2)
    assert hashlib.sha256(domain.memory).digest() == digest
    assert domain.scan_dirty().tolist() == []
    await domain.unpause()
    assert not domain.paused
    await _until(lambda: hashlib.sha256(domain.memory).digest() != digest, "a write")


@pytest.mark.parametrize("with_disk", [False, True])
async def test_resume_of_a_copy(
    hypervisor: ProcessHypervisor, nursery: trio.Nursery, tmp_path: Path, with_disk: bool
) -> None:
    """Memory and CPU state copied into a domain created paused: its unpause continues the
    ledger with nothing lost or reordered, in RAM and on the (shared) disk, and the largest
    gap covers the time it was stopped."""
    disks: tuple[DiskAttachment, ...] = ()
    if with_disk:
        path = tmp_path / "disk.raw"
        path.write_bytes(bytes(4 * MIB))
        disks = (DiskAttachment("xvda", str(path)),)
    spec = GuestSpec("r", 32 * MIB, workload="hotset:8M:4M+ledger", disks=disks)
    source = await hypervisor.create(spec)
    await _until(lambda: _counter_running(source, 1) > 0, "the ledger")
    await trio.sleep(0.1)
    await source.pause()
    stopped = time.time_ns()
    at_pause = _counter(source, 1)
    peer = ProcessHypervisor()  # the destination host's
    await nursery.start(peer.serve)
    destination = await peer.create(spec, paused=True)
    assert destination.paused and _state(destination.pid) == "T"
    assert not any(destination.memory)  # created with zero RAM
    destination.memory[:] = source.memory
    destination.set_cpu_state(source.cpu_state())
    await source.destroy()
    await trio.sleep(0.05)
    resumed = time.time_ns()
    await destination.unpause()
    await _until(lambda: _counter_running(destination, 1) > at_pause + 50, "the ledger")
    await destination.pause()
    verdict = check_ledger(read_ledger(destination.memory))
    assert verdict.intact, verdict
    assert verdict.first <= at_pause < verdict.last
    assert verdict.max_gap >= (resumed - stopped) / 1e9
    if with_disk:
        on_disk = check_ledger(read_disk_ledger(path.read_bytes()))
        assert on_disk.intact, on_disk
        assert on_disk.last >= _counter(destination, 1)


async def test_created_paused_runs_nothing(hypervisor: ProcessHypervisor) -> None:
    domain = await hypervisor.create(GuestSpec("z", 4 * MIB, workload="ledger"), paused=True)
    await trio.sleep(0.1)
    assert _state(domain.pid) == "T" and not any(domain.memory)
    assert not any(domain.cpu_state())
    await domain.unpause()
    await _until(lambda: _counter_running(domain) > 10, "the ledger")
    await domain.pause()
    assert check_ledger(read_ledger(domain.memory)).intact


async def test_workload_rates(hypervisor: ProcessHypervisor) -> None:
    """Loose: the guest writes at most its rate (never catching up after stops), and at a
    fair part of it; the hot set stays in its first SIZE bytes."""
    rate = 16 * MIB
    domain = await hypervisor.create(
        GuestSpec("w", 64 * MIB, workload=f"hotset:{rate}:1M+uniform:{rate}")
    )
    domain.scan_dirty()
    begin, started = _counter_running(domain), time.monotonic()
    await trio.sleep(0.5)
    await domain.pause()
    elapsed = time.monotonic() - started
    written = (_counter(domain, 1) - begin) * PAGE_SIZE
    assert 0.2 * rate * elapsed < written <= 1.1 * rate * elapsed + 2 * PAGE_SIZE
    hot = _counter(domain, 0) * PAGE_SIZE
    assert 0.2 * rate * elapsed < hot <= 1.1 * rate * (elapsed + 0.5)
    page, _, _ = workloads.page_writes(TERM_SLOTS, 0, _counter(domain, 0), MIB // PAGE_SIZE)
    assert page.max() < MIB // PAGE_SIZE


async def test_no_catching_up_after_a_pause(hypervisor: ProcessHypervisor) -> None:
    """A vCPU that was stopped did no work: after a pause the guest writes at its rate from
    then on, not the writes it missed (or a throttle would not slow it)."""
    rate = 32 * MIB
    domain = await hypervisor.create(GuestSpec("n", 64 * MIB, workload=f"uniform:{rate}"))
    await trio.sleep(0.1)
    await domain.pause()
    before = _counter(domain)
    await trio.sleep(0.5)
    resumed = time.monotonic()
    await domain.unpause()
    await trio.sleep(0.1)
    await domain.pause()
    running = time.monotonic() - resumed
    written = (_counter(domain) - before) * PAGE_SIZE
    # the step under way at the pause may make up for lateness before it, no more
    assert written <= rate * (running + MAX_CATCH_UP + workloads.TICK) + PAGE_SIZE


async def test_throttle(hypervisor: ProcessHypervisor) -> None:
    """A throttled guest writes less than its rate; a pause wins over the throttle; off, the
    guest runs freely again."""
    rate = 32 * MIB
    domain = await hypervisor.create(GuestSpec("t", 64 * MIB, workload=f"uniform:{rate}"))
    for bad in (1.0, -0.1):
        with pytest.raises(GuestError, match="throttle duty"):
            domain.set_throttle(bad)
    domain.set_throttle(0.8)
    await trio.sleep(0.1)
    begin, started = _counter_running(domain), time.monotonic()
    await trio.sleep(0.5)
    written = (_counter_running(domain) - begin) * PAGE_SIZE
    assert written < 0.6 * rate * (time.monotonic() - started)
    await domain.pause()
    frozen = _counter(domain)
    await trio.sleep(0.1)
    assert _counter(domain) == frozen and _state(domain.pid) == "T"
    await domain.unpause()
    domain.set_throttle(0)
    await trio.sleep(0.1)
    states = set()
    for _ in range(20):
        states.add(_state(domain.pid))
        await trio.sleep(0.005)
    assert "T" not in states
    assert _counter_running(domain) > frozen


async def test_destroy_frees(hypervisor: ProcessHypervisor) -> None:
    uuid = "f0e1d2c3-0000-4000-8000-000000000001"
    domain = await hypervisor.create(GuestSpec(uuid, 8 * MIB, workload="uniform:1M"))
    pid = domain.pid
    assert hypervisor.domain(uuid) is domain and list(hypervisor.domains()) == [domain]
    assert f"xfer-guest-{uuid}" in _mapped()
    await domain.destroy()
    assert hypervisor.domain(uuid) is None and list(hypervisor.domains()) == []
    assert f"xfer-guest-{uuid}" not in _mapped() and f"xfer-guest-{uuid}" not in _open_fds()
    assert not Path(f"/proc/{pid}").exists()
    with trio.fail_after(1):
        await domain.wait_exited()
    await domain.destroy()  # idempotent
    with pytest.raises(GuestError, match="destroyed"):
        domain.memory  # noqa: B018
    with pytest.raises(GuestError, match="exited"):
        await domain.pause()


async def test_serve_end_destroys_domains() -> None:
    hv = ProcessHypervisor()
    async with trio.open_nursery() as nursery:
        await nursery.start(hv.serve)
        domain = await hv.create(GuestSpec("s", 4 * MIB))
        nursery.cancel_scope.cancel()
    assert domain.exited and not Path(f"/proc/{domain.pid}").exists()
    with pytest.raises(GuestError, match="not serving"):
        await hv.create(GuestSpec("s2", 4 * MIB))


async def test_killed_guest_noticed(hypervisor: ProcessHypervisor) -> None:
    domain = await hypervisor.create(GuestSpec("k", 4 * MIB, workload="ledger"))
    os.kill(domain.pid, signal.SIGKILL)
    with trio.fail_after(WAIT):
        await domain.wait_exited()
    assert domain.exited and hypervisor.domain("k") is None
    with pytest.raises(GuestError, match="exited"):
        domain.scan_dirty()
    with pytest.raises(GuestError, match="exited"):
        await domain.unpause()
    await domain.destroy()


async def test_guest_outlives_the_forking_thread(
    hypervisor: ProcessHypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trio forks in a worker thread that exits when idle: the guest must not die with it
    (as it would with PR_SET_PDEATHSIG)."""
    monkeypatch.setattr(trio._core._thread_cache, "IDLE_TIMEOUT", 0.1)
    domain = await hypervisor.create(GuestSpec("l", 4 * MIB))
    await trio.sleep(1)
    assert not domain.exited and _state(domain.pid) in "RS"
    assert "Threads:\t1\n" in Path(f"/proc/{domain.pid}/status").read_text()


_ORPHANING_DAEMON = """
import os, trio
from migrate.guest.hypervisor import GuestSpec
from migrate.guest.processes import ProcessHypervisor

async def main():
    hv = ProcessHypervisor()
    async with trio.open_nursery() as nursery:
        await nursery.start(hv.serve)
        running = await hv.create(GuestSpec("a", 4 << 20, workload="ledger"))
        created_paused = await hv.create(GuestSpec("b", 4 << 20), paused=True)
        paused = await hv.create(GuestSpec("c", 4 << 20, workload="uniform:1M"))
        await paused.pause()
        print(running.pid, created_paused.pid, paused.pid, flush=True)
        os._exit(0)

trio.run(main)
"""


async def test_guests_die_with_the_daemon() -> None:
    """A daemon killed without destroying its domains takes its guests along, running,
    created paused or paused."""
    daemon = await trio.run_process([sys.executable, "-c", _ORPHANING_DAEMON], capture_stdout=True)
    pids = [int(pid) for pid in daemon.stdout.split()]
    assert len(pids) == 3
    with trio.move_on_after(WAIT):
        while not all(_gone(pid) for pid in pids):
            await trio.sleep(0.01)
    assert all(_gone(pid) for pid in pids), {pid: _status(pid) for pid in pids}


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return "gone"


def _gone(pid: int) -> bool:
    try:
        return _state(pid) in "ZX"
    except FileNotFoundError:
        return True


async def test_create_refusals(hypervisor: ProcessHypervisor, tmp_path: Path) -> None:
    with pytest.raises(GuestError, match="'hotset:1M': expected hotset:RATE:SIZE"):
        await hypervisor.create(GuestSpec("a", 4 * MIB, workload="hotset:1M"))
    with pytest.raises(GuestError, match="memory 1000 is not a positive multiple"):
        await hypervisor.create(GuestSpec("a", 1000))
    with pytest.raises(GuestError, match="memory 1125899906842624 exceeds this host's"):
        await hypervisor.create(GuestSpec("a", 1 << 50))
    with pytest.raises(GuestError, match="vcpus 0"):
        await hypervisor.create(GuestSpec("a", 4 * MIB, vcpus=0))
    missing = DiskAttachment("xvda", str(tmp_path / "missing"))
    with pytest.raises(GuestError, match="disk xvda: cannot open"):
        await hypervisor.create(GuestSpec("a", 4 * MIB, disks=(missing,)))
    dynamic = tmp_path / "dynamic.vhd"
    vhd.create(str(dynamic), 4 * MIB)
    with pytest.raises(GuestError, match="is a dynamic VHD; guest disks must be raw"):
        await hypervisor.create(
            GuestSpec("a", 4 * MIB, disks=(DiskAttachment("xvdb", str(dynamic)),))
        )
    empty = tmp_path / "empty"
    empty.touch()
    with pytest.raises(GuestError, match="is empty"):
        await hypervisor.create(
            GuestSpec("a", 4 * MIB, disks=(DiskAttachment("xvdc", str(empty)),))
        )
    await hypervisor.create(GuestSpec("a", 4 * MIB))
    with pytest.raises(GuestError, match="already has a domain"):
        await hypervisor.create(GuestSpec("a", 4 * MIB))
    assert [d.spec.uuid for d in hypervisor.domains()] == ["a"]
    outcomes: list[object] = []

    async def make() -> None:
        try:
            outcomes.append(await hypervisor.create(GuestSpec("b", 4 * MIB)))
        except GuestError as e:
            outcomes.append(e)

    async with trio.open_nursery() as racing:  # the same uuid twice at once: one domain
        racing.start_soon(make)
        racing.start_soon(make)
    assert sorted(type(o).__name__ for o in outcomes) == ["GuestError", "ProcessDomain"]
    assert not [line for line in _mapped().splitlines() if "xfer-guest-a " in line][1:]


async def test_cpu_state_rules(hypervisor: ProcessHypervisor) -> None:
    domain = await hypervisor.create(GuestSpec("c", 4 * MIB, workload="uniform:1M"))
    with pytest.raises(GuestError, match="while it is paused"):
        domain.cpu_state()
    other = await hypervisor.create(GuestSpec("o", 4 * MIB, workload="uniform:2M"), paused=True)
    await domain.pause()
    state = domain.cpu_state()
    assert len(state) == workloads.REGS_SIZE
    with pytest.raises(GuestError, match="not that of a guest with 4194304 bytes of RAM"):
        other.set_cpu_state(state)
    with pytest.raises(GuestError, match="a CPU state of 3 bytes"):
        other.set_cpu_state(b"abc")
    await domain.unpause()
    with pytest.raises(GuestError, match="while it is paused"):
        domain.set_cpu_state(state)


async def test_dirty_log_unavailable_reported(hypervisor: ProcessHypervisor) -> None:
    """A guest that could not register (as on an older kernel) refuses scans clearly."""
    domain = await hypervisor.create(GuestSpec("u", 4 * MIB))
    domain._log = None
    domain._wp_error = dirtylog.UNAVAILABLE
    with pytest.raises(DirtyLogUnavailable, match="non-live migration still works"):
        domain.scan_dirty()


async def test_disk_writes_land_in_the_file(hypervisor: ProcessHypervisor, tmp_path: Path) -> None:
    """The ledger's records reach the raw file through the block backend, and each one the
    guest committed is there once it is paused; a fixed VHD is served as its data."""
    raw = tmp_path / "raw"
    raw.write_bytes(bytes(1 * MIB))
    fixed = tmp_path / "fixed.vhd"
    vhd.create(str(fixed), 1 * MIB, fixed=True)
    for path in (raw, fixed):
        spec = GuestSpec(
            path.name, 8 * MIB, workload="ledger", disks=(DiskAttachment("xvda", str(path)),)
        )
        domain = await hypervisor.create(spec)
        await _until(lambda: _counter_running(domain) > 200, "the ledger")  # noqa: B023
        await domain.pause()
        await domain.sync_disks()
        data = path.read_bytes()
        verdict = check_ledger(read_disk_ledger(data[: 1 * MIB]))
        assert verdict.intact and verdict.last >= _counter(domain) > 200
        assert verdict.records == verdict.last  # nothing wrapped yet: all of them
        if path is fixed:
            assert len(data) == 1 * MIB + FOOTER_SIZE
            assert not Footer.problems(data[-FOOTER_SIZE:], 1 * MIB)
        await domain.destroy()


async def test_two_disks(hypervisor: ProcessHypervisor, tmp_path: Path) -> None:
    """Each disk has its backend; the ledger writes to the first."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(bytes(1 * MIB))
    second.write_bytes(b"x" * MIB)
    disks = (DiskAttachment("xvda", str(first)), DiskAttachment("xvdb", str(second)))
    domain = await hypervisor.create(GuestSpec("2", 8 * MIB, workload="ledger", disks=disks))
    await _until(lambda: _counter_running(domain) > 20, "the ledger")
    await domain.pause()
    assert check_ledger(read_disk_ledger(first.read_bytes())).last >= _counter(domain)
    assert second.read_bytes() == b"x" * MIB
    await domain.destroy()


def _mapped() -> str:
    return Path("/proc/self/maps").read_text()


def _open_fds() -> str:
    links = []
    for name in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            continue
    return "\n".join(links)
