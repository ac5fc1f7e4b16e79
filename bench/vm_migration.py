"""Benchmark: live migration of a 1 GiB guest between two ``xfer serve`` daemons on ``::1``,
against one iperf3 TCP stream measured in the same run.

Two daemons, each its own process with its own state directory, driven through the XenAPI SDK
as xapi drives them: ``host.migrate_receive`` on the destination, ``Async.VM.migrate_send`` on
the source, the task polled until it ends; the figures come from the migration report (the
task's ``other_config`` key ``xfer_migration``) and, for the pause the guest saw, from the
ledger in the guest's memory, saved on the destination after the migration (``GET
/vm_save``). Figures, each with its floor and target (bench/README.md has the record):

1. the memory stream (round 0's bytes / its seconds) of an idle guest with random contents
   (workload ``fill``) vs one iperf3 stream: >= 0.9x;
2. the guest-observed pause of ``hotset:20M:64M+ledger`` (the largest gap between ledger
   timestamps from the migration's start on): <= 20 ms, median; the report's downtime beside;
3. that idle migration's total time <= 1.2x memory / the iperf3 rate;
4. a guest writing twice as fast as the link (``fill+uniform:2xRATE``) converges within 3x the
   idle time; rounds, throttle duty and the write rate reached;
5. each daemon's own memory (USS minus its guest-RAM memfd pages, /proc/PID/smaps) sampled
   every 50 ms during a migration: < 100 MiB.

From the repository root::

    .venv/bin/python bench/vm_migration.py            # 1 GiB guests, 5 runs: a few minutes
    .venv/bin/python bench/vm_migration.py --quick    # 256 MiB guests, 2 runs: a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import XenAPI  # type: ignore[import-untyped]
from common import (
    GIB,
    MIB,
    BenchError,
    check_space,
    find_tool,
    print_header,
    progress,
    terminated_as_exit,
    work_directory,
    xfer_command,
)
from vdi_harness import Deadline
from vdi_servers import Processes
from vm_hosts import (
    LEDGER_RUN,
    Fleet,
    Host,
    MemoryFloor,
    MemorySampler,
    Migrated,
    Pause,
    fsync_seconds,
    iperf3,
    ledger_pause,
    migrate,
    open_host,
    resumed_at,
    save,
    wait_filled,
)
from vm_report import MemoryRun, Results, print_report

from migrate.cli.units import parse_size

DEFAULT_MEMORY = "1G"
QUICK_MEMORY = 256 * MIB
DEFAULT_TIME_LIMIT = 1500.0
IPERF_SECONDS = 5
QUICK_IPERF_SECONDS = 2
HOTSET = "hotset:20M:64M+ledger"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description="Time xfer's live migration between two daemons on ::1 against iperf3.",
    )
    parser.add_argument(
        "--memory", default=None, help=f"guest RAM, K/M/G suffixes (default {DEFAULT_MEMORY})"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: {QUICK_MEMORY // MIB} MiB, 2 runs"
    )
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (default 5)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to make the temporary directory (/tmp)"
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=DEFAULT_TIME_LIMIT,
        help=f"seconds the whole benchmark may take (default {DEFAULT_TIME_LIMIT:.0f})",
    )
    args = parser.parse_args(argv)
    if args.quick and args.memory is not None:
        parser.error("--quick and --memory exclude each other")
    try:
        memory = QUICK_MEMORY if args.quick else parse_size(args.memory or DEFAULT_MEMORY)
    except ValueError as e:
        parser.error(str(e))
    if memory < 128 * MIB or memory % (2 * MIB):
        parser.error("--memory must be a multiple of 2 MiB, at least 128 MiB (the hot set: 64)")
    args.memory = memory
    args.runs = args.runs if args.runs is not None else (2 if args.quick else 5)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    args.iperf_seconds = QUICK_IPERF_SECONDS if args.quick else IPERF_SECONDS
    return args


# --- the run -------------------------------------------------------------------------------


@dataclass
class Bench:
    """The hosts and what the figures share."""

    args: argparse.Namespace
    workdir: Path
    procs: Processes
    deadline: Deadline
    fleet: Fleet
    results: Results
    a: Host
    b: Host

    def idle(self, sample: str = "") -> Migrated:
        """Figure 1 and 3's migration: a filled, then idle guest, A to B, removed after;
        with ``sample`` (what to call the run), the daemons' memory sampled meanwhile
        (figure 5)."""
        memory = self.args.memory
        vm = self.fleet.start(self.a, memory, "fill")
        self.results.fill_seconds.append(wait_filled(vm, memory, self.deadline.end))
        if sample:
            daemons = [("source", self.a.pid), ("destination", self.b.pid)]
            with MemorySampler(daemons) as sampler:
                done = migrate(vm, self.b, self.deadline, {})
            self.results.memory_runs.append(MemoryRun(sample, sampler.peaks, sampler.seconds))
        else:
            done = migrate(vm, self.b, self.deadline, {})
        self.fleet.remove(vm)
        sent = int(done.rounds[0]["bytes"])
        if sent < 0.99 * memory:
            raise BenchError(f"round 0 of the filled guest sent {sent} bytes of {memory}")
        return done

    def hot(self, index: int) -> tuple[Migrated, Pause]:
        """Figure 2's migration: the hot set and the ledger, saved on B after, its ledger read."""
        vm = self.fleet.start(self.a, self.args.memory, HOTSET)
        time.sleep(LEDGER_RUN)
        self.b.server.new_log()
        done = migrate(vm, self.b, self.deadline, {})
        resumed_ns = resumed_at(self.b.server, vm.uuid)
        time.sleep(0.2)  # the guest runs on B a little before it is saved
        image = self.workdir / f"hot-{index}.img"
        save(vm, image, self.deadline.left())
        pause = ledger_pause(image, done, resumed_ns)
        image.unlink()
        self.results.fsync += fsync_seconds(self.b.server.state)
        self.fleet.remove(vm)
        return done, pause

    def busy(self, rate: int) -> Migrated:
        """Figure 4's migration: RAM filled, then uniform writes at ``rate`` bytes/s."""
        memory = self.args.memory
        vm = self.fleet.start(self.a, memory, f"fill+uniform:{rate}")
        wait_filled(vm, memory, self.deadline.end)
        done = migrate(vm, self.b, self.deadline, {})
        self.fleet.remove(vm)
        return done


def bench(b: Bench) -> None:
    """The figures, interleaved run by run: iperf3, the idle, hot and busy migrations."""
    args, r = b.args, b.results
    progress("daemons' memory during an idle migration, the first")
    b.idle(sample="first")
    r.floor = MemoryFloor(args.memory)
    for i in range(args.runs):
        r.floor.measure()
        progress(
            f"  run {i + 1}/{args.runs}: numpy   first write {r.floor.fresh.seconds[-1]:.3f} s, "
            f"read {r.floor.read.seconds[-1]:.3f} s"
        )
        peer = iperf3(b.procs, b.workdir, args.iperf_seconds, b.deadline)
        r.iperf.append(peer)
        progress(f"  run {i + 1}/{args.runs}: iperf3 {peer.rate / MIB:7.0f} MiB/s")
        if i == 0:
            # twice the link, as measured by the first stream, for every run alike
            r.busy_rate = int(2 * peer.rate) // MIB * MIB
        done = b.idle()
        r.idle.append(done)
        progress(
            f"  run {i + 1}/{args.runs}: idle    total {done.total:6.3f} s, round 0 "
            f"{done.stream_rate / MIB:7.0f} MiB/s, downtime {1000 * done.report['downtime']:.1f} ms"
        )
        hot = b.hot(i)
        r.hot.append(hot)
        progress(
            f"  run {i + 1}/{args.runs}: hotset  guest pause {1000 * hot[1].gap:6.1f} ms, "
            f"downtime {1000 * hot[0].report['downtime']:.1f} ms, {len(hot[0].rounds)} rounds"
        )
        busy = b.busy(r.busy_rate)
        r.busy.append(busy)
        progress(
            f"  run {i + 1}/{args.runs}: busy    total {busy.total:6.3f} s, "
            f"{len(busy.rounds)} rounds, throttle {busy.throttle:.2f}"
        )
    progress("daemons' memory during an idle migration, after the others")
    b.idle(sample="after the others")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 whatever the targets say, 1 if a command or a check fails."""
    args = parse_args(argv)
    if find_tool("iperf3") is None:
        print("vm_migration: missing iperf3 (make bench installs it)")
        return 1
    parent = args.dir or Path(tempfile.gettempdir())
    need = 3 * args.memory // 8 + 256 * MIB  # the hot guests' saved images (mostly zero pages)
    try:
        free = check_space(parent, need)
    except BenchError as e:
        print(f"vm_migration: {e}")
        return 1
    if psutil.virtual_memory().available < 4 * args.memory + GIB:
        print(f"vm_migration: needs about {4 * args.memory // MIB + 1024} MiB of free memory")
        return 1
    procs = Processes()
    fleet = Fleet()
    results = Results(memory=args.memory)
    failure = None
    xfer = xfer_command()
    with terminated_as_exit(), work_directory(parent, "vm-bench-") as workdir:
        try:
            print_header(
                "vm_migration benchmark: xfer live migration between two daemons on ::1 "
                "vs one iperf3 stream",
                xfer,
                ("iperf3",),
                workdir,
            )
            print(
                f"runs:     {args.memory // MIB} MiB guests; {args.runs} runs per figure, "
                f"interleaved with iperf3 -t {args.iperf_seconds}; medians judged"
            )
            print(f"space:    {free // MIB} MiB free in {parent}")
            print(flush=True)
            deadline = Deadline(time.monotonic() + args.time_limit)
            a = open_host(procs, xfer, workdir, "host-a")
            b = open_host(procs, xfer, workdir, "host-b")
            progress(f"hosts: A {a.server.url} (pid {a.pid}), B {b.server.url} (pid {b.pid})")
            bench(Bench(args, workdir, procs, deadline, fleet, results, a, b))
        except BenchError as e:
            failure = str(e)
        except XenAPI.Failure as e:
            failure = f"XenAPI: {e.details}"
        except KeyboardInterrupt:
            failure = "interrupted"
        finally:
            try:
                with contextlib.suppress(Exception):
                    fleet.remove_all()
            finally:
                procs.stop_all()
                fleet.kill_leftovers()
    print_report(results, args.quick)
    if failure:
        print()
        print(f"FAILED: {failure}")
        progress(f"vm_migration: {failure}")
        return 130 if failure == "interrupted" else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
