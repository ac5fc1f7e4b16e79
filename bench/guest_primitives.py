"""Benchmark: the guest primitives live migration's downtime is built on, on a 1 GiB guest.

The dirty log's scan (first, clean, after a 64 MiB hot set written at 20 MiB/s for 100 ms,
after ~5000 scattered writes), pause (SIGSTOP until stopped, disk quiesced: the ledger
writes to a raw disk) and unpause, and the ledger's resolution: its median and largest gap
when nothing stops it, and the gap it shows for a 10 ms pause. Targets: a scan of 1 GiB
within 10 ms, a pause within 5 ms (median), the ledger ticking every ~1 ms. From the
repository root::

    .venv/bin/python bench/guest_primitives.py
    .venv/bin/python bench/guest_primitives.py --memory 256M --dir /var/tmp
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import trio
from common import Outcome, print_header, print_table, print_targets, progress, work_directory

from migrate.guest.hypervisor import DiskAttachment, GuestSpec
from migrate.guest.processes import ProcessDomain, ProcessHypervisor
from migrate.guest.workloads import check_ledger, parse_size, read_ledger

ROUNDS = 20


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


async def _scans(domain: ProcessDomain, pause: float) -> tuple[list[float], list[int]]:
    """Seconds and regions of ROUNDS scans, each after ``pause`` seconds of the workload."""
    seconds, regions = [], []
    for _ in range(ROUNDS):
        await trio.sleep(pause)
        start = time.perf_counter()
        runs = domain.scan_dirty()
        seconds.append(time.perf_counter() - start)
        regions.append(len(runs))
    return seconds, regions


async def measure(memory: int, workdir: Path) -> list[list[str]]:
    """The figures, one table row each (what, median, max, note)."""
    rows = []
    hv = ProcessHypervisor()
    async with trio.open_nursery() as nursery:
        await nursery.start(hv.serve)
        disk = workdir / "disk.raw"
        disk.write_bytes(bytes(4 << 20))
        hot = await hv.create(
            GuestSpec(
                "hot",
                memory,
                workload="hotset:20M:64M+ledger",
                disks=(DiskAttachment("xvda", str(disk)),),
            )
        )
        start = time.perf_counter()
        hot.scan_dirty()
        rows.append(["scan, first (all pages)", _ms(time.perf_counter() - start), "", ""])
        hot.set_throttle(0)
        await hot.pause()
        hot.scan_dirty()
        clean, _ = await _scans(hot, 0.0)
        rows.append(["scan, nothing written", _ms(statistics.median(clean)), _ms(max(clean)), ""])
        await hot.unpause()
        progress("scans of the hot set")
        hot.scan_dirty()
        seconds, regions = await _scans(hot, 0.1)
        note = f"{statistics.median(regions):.0f} runs"
        rows.append(["scan, 100 ms of hotset:20M:64M", _ms(statistics.median(seconds)),
                     _ms(max(seconds)), note])  # fmt: skip
        progress("scans of scattered writes")
        wide = await hv.create(GuestSpec("wide", memory, workload="uniform:200M"))
        wide.scan_dirty()
        seconds, regions = await _scans(wide, 0.1)
        note = f"{statistics.median(regions):.0f} runs"
        rows.append(["scan, 100 ms of uniform:200M", _ms(statistics.median(seconds)),
                     _ms(max(seconds)), note])  # fmt: skip
        await wide.destroy()
        progress("pause and unpause")
        pauses, unpauses = [], []
        for _ in range(50):
            await trio.sleep(0.02)
            start = time.perf_counter()
            await hot.pause()
            pauses.append(time.perf_counter() - start)
            start = time.perf_counter()
            await hot.unpause()
            unpauses.append(time.perf_counter() - start)
        rows.append(["pause (stopped, disk quiesced)", _ms(statistics.median(pauses)),
                     _ms(max(pauses)), "ledger on a raw disk"])  # fmt: skip
        rows.append(["unpause", _ms(statistics.median(unpauses)), _ms(max(unpauses)), ""])
        progress("the ledger's resolution")
        await trio.sleep(2)
        await hot.pause()
        records = read_ledger(hot.memory)[-2000:]
        gaps = np.diff(records[:, 1]) / 1e9
        rows.append(["ledger gap, running", _ms(float(np.median(gaps))), _ms(float(gaps.max())),
                     f"last {len(records)} records"])  # fmt: skip
        await hot.unpause()
        await trio.sleep(0.5)
        await hot.pause()
        stopped = time.perf_counter()
        await trio.sleep(0.01)
        await hot.unpause()
        held = time.perf_counter() - stopped
        await trio.sleep(0.2)
        await hot.pause()
        verdict = check_ledger(read_ledger(hot.memory)[-500:])
        rows.append(["ledger gap, a 10 ms pause", "", _ms(verdict.max_gap),
                     f"stopped {_ms(held)} ms as the daemon saw it"])  # fmt: skip
        nursery.cancel_scope.cancel()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory", default="1G", help="guest RAM (default 1G)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp"), help="for the guest's disk")
    args = parser.parse_args()
    memory = parse_size(args.memory)
    with work_directory(args.dir, "xfer-bench-guest-") as workdir:
        print_header(f"guest primitives, {args.memory} guest", [], [], workdir)
        print()
        rows = trio.run(measure, memory, workdir)
    print_table(["figure", "median ms", "max ms", "note"], rows, {0, 3})
    scan_max = max(float(row[2]) for row in rows[1:4])
    pause_median = float(rows[4][1])
    tick = float(rows[6][1])
    print_targets(
        [
            Outcome("a scan of the guest's RAM <= 10 ms (max)", scan_max <= 10, f"{scan_max} ms"),
            Outcome("pause <= 5 ms (median)", pause_median <= 5, f"{pause_median} ms"),
            Outcome("the ledger ticks every ~1 ms (median)", tick <= 1.5, f"{tick} ms"),
        ],
        None,
    )


if __name__ == "__main__":
    main()
