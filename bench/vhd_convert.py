"""Benchmark: ``xfer vhd convert`` against ``qemu-img convert``, raw <-> VHD (dynamic).

Three raw disks (dense random data; sparse, 5% of its 2 MiB blocks holding data; wide, that
data over 32 times the virtual size), each converted to VHD and back by both tools, timed whole
with the peak RSS of each command, interleaved, after warm-up runs; then xfer's round trip and
its VHD are checked against the source. The targets: xfer twice qemu-img's throughput on the
dense disk, a cost that follows the data on the sparse and wide ones, a bounded RSS.
bench/README.md gives each command and how to read the figures. From the repository root::

    .venv/bin/python bench/vhd_convert.py              # 2 GiB disks, 5 runs: a few minutes
    .venv/bin/python bench/vhd_convert.py --quick      # 256 MiB disks: a fast smoke run
    .venv/bin/python bench/vhd_convert.py --size 4G --repeat 5 --dir /var/tmp
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    BLOCK,
    CHUNK,
    MIB,
    BenchError,
    Outcome,
    Runs,
    cache,
    check_space,
    find_tool,
    load,
    make_random,
    make_sparse,
    print_header,
    print_noisy,
    print_table,
    print_targets,
    progress,
    run,
    startup,
    terminated_as_exit,
    work_directory,
    xfer_command,
)

from migrate.cli.units import parse_size

SPARSE_FRACTION = 0.05
QUICK_SIZE = 256 * MIB
DEFAULT_SIZE = "2G"

RSS_TARGET_MIB = 100.0
RATIO_TARGET = 2.0
SPARSE_OVERHEAD = 0.1
"""The sparse/dense time target (net of start-up) is this plus the fraction holding data."""
WIDE = 32
"""The wide disk holds the sparse disk's data spread over this many times its virtual size."""
WIDE_TARGET = 1.5
"""Time may grow at most this much from the sparse disk to the wide one: it follows the data."""

QEMU_TO_VHD = shlex.split("qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on")
"""The peer's raw -> VHD command, as in the anchor; the source and output paths follow."""
QEMU_TO_RAW = shlex.split("qemu-img convert -f vpc -O raw")


@dataclass(kw_only=True)
class Result(Runs):
    """The timed runs of one command: their seconds and peak RSS, and the allocated size of
    its output after the last one."""

    rss_kib: list[int] = field(default_factory=list)
    allocated: int = 0

    @property
    def rss_mib(self) -> float:
        """The median peak RSS of the runs."""
        return statistics.median(self.rss_kib) / 1024


@dataclass(frozen=True)
class Row:
    """One line of the table: a disk, a direction, xfer and qemu-img."""

    disk: str
    direction: str
    size: int
    xfer: Result
    qemu: Result

    @property
    def ratio(self) -> float:
        """xfer throughput over qemu-img throughput, best runs (> 1: xfer is faster)."""
        return self.qemu.best / self.xfer.best


def disk_size(text: str) -> int:
    """``"2G"`` -> 2147483648: bytes, or K/M/G/T suffixes (powers of 1024), whole blocks."""
    try:
        size = parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if size <= 0 or size % BLOCK:
        raise argparse.ArgumentTypeError(f"size must be a positive multiple of 2 MiB: {text!r}")
    return size


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description="Time xfer vhd convert against qemu-img convert, raw <-> VHD (dynamic).",
    )
    parser.add_argument(
        "--size",
        type=disk_size,
        default=None,
        help=f"virtual size of each disk, a multiple of 2 MiB (default {DEFAULT_SIZE})",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run on {QUICK_SIZE // MIB} MiB disks"
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed runs per command; the best is kept"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed runs of each command before the timed ones"
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to make the temporary directory (/tmp)"
    )
    args = parser.parse_args(argv)
    if args.quick and args.size is not None:
        parser.error("--quick and --size exclude each other")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    args.size = QUICK_SIZE if args.quick else (args.size or disk_size(DEFAULT_SIZE))
    return args


# --- the disks -----------------------------------------------------------------------------


def sparse_count(size: int) -> int:
    """How many blocks of the sparse disk hold data: ``SPARSE_FRACTION`` of them."""
    return max(1, round(size // BLOCK * SPARSE_FRACTION))


def allocated(path: Path) -> int:
    """Bytes the file occupies on disk (``st_blocks * 512``)."""
    return path.stat().st_blocks * 512


def remove(*paths: Path) -> None:
    """Delete the files that exist among ``paths``."""
    for p in paths:
        p.unlink(missing_ok=True)


# --- running and timing --------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One tool's command for one conversion: reads ``src``, writes ``dst``."""

    tool: str
    argv: list[str]
    src: Path
    dst: Path


def measure_pair(
    label: str, commands: tuple[Command, Command], runs: tuple[int, int]
) -> tuple[Result, Result]:
    """Run the xfer and qemu-img commands, interleaved: ``runs`` = (warm-up, timed) per command.
    Before each run its output is removed, ``os.sync()`` called (earlier writeback must not
    bias it) and its input read into the cache. The outputs of the last runs are left in place
    for the next step and the checks."""
    warmup, repeat = runs
    results = (Result(), Result())
    for i in range(-warmup, repeat):
        for command, result in zip(commands, results, strict=True):
            remove(command.dst)
            os.sync()
            cache(command.src)
            done = run(command.argv)
            if i >= 0:
                result.seconds.append(done.seconds)
                result.rss_kib.append(done.peak_rss_kib)
            which = f"run {i + 1}/{repeat}" if i >= 0 else "warm-up"
            progress(
                f"  {label} {command.tool:<8} {which:>7}: {done.seconds:7.3f} s, "
                f"peak RSS {done.peak_rss_kib / 1024:6.1f} MiB"
            )
    for command, result in zip(commands, results, strict=True):
        result.allocated = allocated(command.dst)
    return results


# --- checks --------------------------------------------------------------------------------


def same_bytes(a: Path, b: Path) -> str | None:
    """None if the files hold the same bytes, else where they first differ."""
    size_a, size_b = a.stat().st_size, b.stat().st_size
    if size_a != size_b:
        return f"{a.name} is {size_a} bytes, {b.name} is {size_b}"
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        offset = 0
        while True:
            ca, cb = fa.read(CHUNK), fb.read(CHUNK)
            if ca != cb:
                at = offset + next(i for i, (x, y) in enumerate(zip(ca, cb, strict=True)) if x != y)
                return f"{a.name} and {b.name} differ at byte {at}"
            if not ca:
                return None
            offset += len(ca)


def qemu_compare(*args: str) -> str | None:
    """None if ``qemu-img compare ARGS`` finds the images identical (it skips holes), else
    what it says."""
    try:
        run(["qemu-img", "compare", *args])
    except BenchError as e:
        return str(e)
    return None


def verify(disk: str, raw: Path, xfer_vhd: Path, back: Path, qback: Path) -> list[str]:
    """The correctness checks of one disk; returns the failures (empty when all pass)."""
    failures = []

    def same_contents(a: Path, b: Path) -> str | None:
        if disk == "wide":
            return qemu_compare("-f", "raw", "-F", "raw", str(a), str(b))
        return same_bytes(a, b)

    problem = same_contents(raw, back)
    progress(f"  check {disk}: xfer round trip equals the source: {problem or 'yes'}")
    if problem:
        failures.append(f"{disk}: xfer round trip (raw -> vhd -> raw): {problem}")
    problem = same_contents(raw, qback)
    progress(f"  check {disk}: qemu-img round trip equals the source: {problem or 'yes'}")
    if problem:
        failures.append(f"{disk}: qemu-img round trip (raw -> vpc -> raw): {problem}")
    problem = qemu_compare("-f", "vpc", "-F", "raw", str(xfer_vhd), str(raw))
    progress(f"  check {disk}: qemu-img compare -f vpc -F raw xfer's VHD: {problem or 'same'}")
    if problem:
        failures.append(f"{disk}: qemu-img compare {xfer_vhd.name} {raw.name}: {problem}")
    return failures


# --- one disk ------------------------------------------------------------------------------


def bench_disk(
    disk: str, raw: Path, size: int, xfer: list[str], runs: tuple[int, int]
) -> tuple[list[Row], list[str]]:
    """Both directions for one disk, both tools, then the checks; the disk's files removed."""
    d = raw.parent
    xfer_vhd, qemu_vhd = d / f"{disk}.xfer.vhd", d / f"{disk}.qemu.vhd"
    back, qback = d / f"{disk}.back.raw", d / f"{disk}.qback.raw"
    try:
        to_vhd = measure_pair(
            f"{disk} raw->vhd",
            (
                Command("xfer", [*xfer, "vhd", "convert", str(raw), str(xfer_vhd)], raw, xfer_vhd),
                Command("qemu-img", [*QEMU_TO_VHD, str(raw), str(qemu_vhd)], raw, qemu_vhd),
            ),
            runs,
        )
        to_raw = measure_pair(
            f"{disk} vhd->raw",
            (
                Command(
                    "xfer", [*xfer, "vhd", "convert", str(xfer_vhd), str(back)], xfer_vhd, back
                ),
                Command("qemu-img", [*QEMU_TO_RAW, str(qemu_vhd), str(qback)], qemu_vhd, qback),
            ),
            runs,
        )
        failures = verify(disk, raw, xfer_vhd, back, qback)
    finally:
        remove(raw, xfer_vhd, qemu_vhd, back, qback)
    rows = [Row(disk, "raw->vhd", size, *to_vhd), Row(disk, "vhd->raw", size, *to_raw)]
    return rows, failures


# --- the report ----------------------------------------------------------------------------


def print_rows(rows: list[Row]) -> None:
    """The results, one line per disk and direction."""
    head = (
        "disk",
        "direction",
        "xfer s",
        "qemu s",
        "xfer med",
        "qemu med",
        "xfer MiB/s",
        "qemu MiB/s",
        "xfer/qemu",
        "xfer RSS MiB",
        "qemu RSS MiB",
        "xfer alloc MiB",
        "qemu alloc MiB",
    )
    lines = []
    for r in rows:
        mib = r.size / MIB
        lines.append(
            (
                r.disk,
                r.direction,
                f"{r.xfer.best:.3f}",
                f"{r.qemu.best:.3f}",
                f"{r.xfer.median:.3f}",
                f"{r.qemu.median:.3f}",
                f"{mib / r.xfer.best:.0f}",
                f"{mib / r.qemu.best:.0f}",
                f"{r.ratio:.2f}",
                f"{r.xfer.rss_mib:.1f}",
                f"{r.qemu.rss_mib:.1f}",
                f"{r.xfer.allocated / MIB:.1f}",
                f"{r.qemu.allocated / MIB:.1f}",
            )
        )
    print_table(head, lines, left={0, 1})


def summary(rows: list[Row], fraction: float, started: float) -> list[Outcome]:
    """The targets of the issue, judged on the best runs."""
    by = {(r.disk, r.direction): r for r in rows}
    out = []
    for direction in ("raw->vhd", "vhd->raw"):
        r = by[("dense", direction)]
        out.append(
            Outcome(
                f"dense {direction} ratio >= {RATIO_TARGET:.1f}",
                r.ratio >= RATIO_TARGET,
                f"{r.ratio:.2f} (xfer {r.xfer.best:.3f} s, qemu-img {r.qemu.best:.3f} s)",
            )
        )
    limit = SPARSE_OVERHEAD + fraction
    for direction in ("raw->vhd", "vhd->raw"):
        dense, sparse, wide = (by[(d, direction)] for d in ("dense", "sparse", "wide"))
        share = (sparse.xfer.best - started) / (dense.xfer.best - started)
        out.append(
            Outcome(
                f"sparse {direction}: xfer sparse/dense time net of start-up <= {limit:.2f} "
                f"({SPARSE_OVERHEAD} + data fraction {fraction:.3f})",
                share <= limit,
                f"{share:.3f} ({sparse.xfer.best:.3f} s / {dense.xfer.best:.3f} s, "
                f"less {started:.3f} s each)",
            )
        )
        growth = wide.xfer.best / sparse.xfer.best
        out.append(
            Outcome(
                f"sparse {direction}: same data, {WIDE}x the virtual size: xfer time "
                f"<= {WIDE_TARGET:.1f}x",
                growth <= WIDE_TARGET,
                f"{growth:.2f}x ({wide.xfer.best:.3f} s / {sparse.xfer.best:.3f} s; "
                f"qemu-img {wide.qemu.best / sparse.qemu.best:.2f}x)",
            )
        )
    peak = max(kib for r in rows for kib in r.xfer.rss_kib) / 1024
    out.append(
        Outcome(
            f"xfer peak RSS < {RSS_TARGET_MIB:.0f} MiB", peak < RSS_TARGET_MIB, f"{peak:.1f} MiB"
        )
    )
    return out


def print_failures(failures: list[str]) -> None:
    """The correctness checks: each failure, or that all passed."""
    print()
    print("correctness:")
    if failures:
        for f in failures:
            print(f"  FAIL  {f}")
    else:
        print("  PASS  round trips equal the sources; qemu-img compare accepts xfer's VHDs")


# --- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 whatever the targets say, 1 if a check or a command fails."""
    args = parse_args(argv)
    if find_tool("qemu-img") is None:
        print("vhd_convert: qemu-img not found (make deps installs it)", file=sys.stderr)
        return 1
    parent = args.dir or Path(tempfile.gettempdir())
    try:
        check_space(parent, 5 * args.size + 64 * MIB)  # dense: source, 2 VHDs, 2 raw copies
    except BenchError as e:
        print(f"vhd_convert: {e}", file=sys.stderr)
        return 1
    xfer = xfer_command()
    rows: list[Row] = []
    failures: list[str] = []
    count = sparse_count(args.size)
    fraction = count * BLOCK / args.size
    wide = args.size * WIDE
    with terminated_as_exit(), work_directory(parent, "vhd-bench-") as workdir:
        try:
            print_header(
                "vhd_convert benchmark: xfer vhd convert vs qemu-img convert (raw <-> dynamic VHD)",
                xfer,
                ("qemu-img",),
                workdir,
            )
            print(
                f"runs:     {args.size // MIB} MiB disks; {args.warmup} warm-up + {args.repeat} "
                "timed runs per command, best kept; before each: os.sync(), input read into "
                "the cache"
            )
            print(flush=True)
            for disk, size in (("dense", args.size), ("sparse", args.size), ("wide", wide)):
                raw = workdir / f"{disk}.raw"
                progress(f"making {disk} disk: {raw}")
                if disk == "dense":
                    make_random(raw, size)
                else:
                    make_sparse(raw, size, count)
                progress(f"  {allocated(raw) // MIB} MiB allocated of {size // MIB} MiB")
                disk_rows, disk_failures = bench_disk(
                    disk, raw, size, xfer, (args.warmup, args.repeat)
                )
                rows += disk_rows
                failures += disk_failures
            started = startup(xfer, args.repeat)
        except BenchError as e:
            print(f"vhd_convert: {e}", file=sys.stderr)
            return 1
    print(f"load at the end: {load()}")
    print(
        f"sparse disk: {count} of {args.size // BLOCK} blocks of 2 MiB hold data "
        f"(fraction {fraction:.3f}), spread evenly; wide disk: the same {count} blocks of data "
        f"spread over {WIDE}x the virtual size ({wide // MIB} MiB)"
    )
    print(f"xfer start-up (`xfer --help`, median): {started:.3f} s")
    print("times: best of the timed runs (med: their median); MiB/s on the virtual size from")
    print("the best; xfer/qemu = xfer throughput / qemu-img throughput, best against best;")
    print("RSS is the median peak; alloc is the output's st_blocks * 512 after the last run")
    print()
    print_rows(rows)
    print_noisy(
        [
            (f"{r.disk} {r.direction} {name}", result)
            for r in rows
            for name, result in (("xfer", r.xfer), ("qemu-img", r.qemu))
        ]
    )
    note = "--quick: start-up weighs heavily on small disks; judge targets on 2 GiB runs"
    print_targets(summary(rows, fraction, started), note if args.quick else None)
    print_failures(failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
