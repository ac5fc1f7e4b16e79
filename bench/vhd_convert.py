"""Benchmark: ``xfer vhd convert`` against ``qemu-img convert``, raw <-> VHD (dynamic).

What it measures, mirroring the peer anchor ``/work/shared/anchors/qemu_img.sh``:

* three raw disks in a fresh temporary directory: *dense* (``--size``, default 2 GiB, random
  data throughout), *sparse* (the same size, a sparse file where 5% of the 2 MiB blocks, spread
  evenly, hold random data) and *wide* (the sparse disk's data spread over 32 times the virtual
  size: whether the cost follows the data or the virtual size);
* for each disk, four commands, each run as a subprocess:

  - raw -> vhd, xfer:     ``xfer vhd convert X.raw X.xfer.vhd``
  - raw -> vhd, qemu-img: ``qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on
    X.raw X.qemu.vhd``
  - vhd -> raw, xfer:     ``xfer vhd convert X.xfer.vhd X.back.raw``
  - vhd -> raw, qemu-img: ``qemu-img convert -f vpc -O raw X.qemu.vhd X.qback.raw``

  Each is timed with ``time.perf_counter`` (the whole process: start-up included) and its
  peak RSS read from ``os.wait4`` (``ru_maxrss``). Every measurement is repeated ``--repeat``
  times (default 5; xfer and qemu-img runs interleaved) after ``--warmup`` untimed runs
  (default 1); the best run is what the ratios and targets use (noise on a shared VM only
  ever adds time: its page-cache writes vary several-fold from run to run) and the median is
  printed beside it. Outputs are removed before each run and
  ``os.sync()`` is called before each timed command, so earlier writeback does not bias it.
  Nothing is dropped from the page cache: the command's input is read once before the timer
  starts so that it is cached (as it would be right after being written, whatever reclaim did
  meanwhile), and neither tool syncs its output, so these are page-cache throughputs;
* xfer's start-up (``xfer --help``: interpreter and imports), which the sparse targets
  subtract;
* correctness, once per disk: xfer's round trip (raw -> vhd -> raw) equals the source, and
  ``qemu-img compare -f vpc -F raw X.xfer.vhd X.raw`` succeeds.

It prints the machine and command line, a table (throughput on the virtual size, the ratio
xfer/qemu-img of throughputs, peak RSS, allocated size of each output) and the targets as
PASS/FAIL. The exit status is 0 whatever the targets say (it is a report), 1 if a correctness
check or a command fails.

Run from the repository root::

    .venv/bin/python bench/vhd_convert.py              # 2 GiB disks, 3 repeats: a couple of minutes
    .venv/bin/python bench/vhd_convert.py --quick      # 256 MiB disks: a fast smoke run
    .venv/bin/python bench/vhd_convert.py --size 4G --repeat 5 --dir /var/tmp

The warm-up is there because the first write of a few GiB into fresh page cache can cost
several times a later one (on a VM whose memory the host backs lazily); ``--warmup 0``
keeps every run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import cache, xfer_command

from migrate.cli.units import parse_size

MIB = 1 << 20
BLOCK = 2 * MIB
"""Granularity of the sparse disk's data: the VHD default block size."""
CHUNK = 4 * MIB
"""Write and compare buffer size."""
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
NOISY = 1.25
"""Timed runs of one command further apart than this ratio are listed after the table."""

QEMU_TO_VHD = shlex.split("qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on")
"""The peer's raw -> VHD command, as in the anchor; the source and output paths follow."""
QEMU_TO_RAW = shlex.split("qemu-img convert -f vpc -O raw")
ROOT = Path(__file__).resolve().parent.parent


class BenchError(Exception):
    """A command failed or a result is wrong: the run cannot be trusted."""


@dataclass(frozen=True)
class Sample:
    """One run of one command."""

    seconds: float
    rss_kib: int


@dataclass(frozen=True)
class Result:
    """The best and median of the repeats of one command, and the allocated size of its output."""

    seconds: float
    """The best timed run: noise on a shared VM only ever adds time."""
    median: float
    rss_mib: float
    allocated: int
    samples: tuple[Sample, ...]


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
        """xfer throughput over qemu-img throughput (> 1: xfer is faster)."""
        return self.qemu.seconds / self.xfer.seconds


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


# --- the machine ---------------------------------------------------------------------------


def qemu_img_version() -> str:
    """The first line of ``qemu-img --version``."""
    out = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0].strip()


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or the machine type."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def file_system(path: Path) -> str:
    """The type of the file system ``path`` lives on, from /proc/self/mounts."""
    target, best, kind = str(path.resolve()), "", "?"
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount = fields[1].replace("\\040", " ")
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, kind = mount, fields[2]
    except OSError:
        pass
    return kind


def print_header(args: argparse.Namespace, workdir: Path, xfer: list[str]) -> None:
    """The machine, the versions and the command line."""
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print("vhd_convert benchmark: xfer vhd convert vs qemu-img convert (raw <-> dynamic VHD)")
    print(f"command:  {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine:  nproc {nproc}, {cpu_model()}, Linux {platform.release()}")
    print(f"python:   {platform.python_version()} ({sys.executable})")
    print(f"qemu-img: {qemu_img_version()}")
    print(f"xfer:     {shlex.join(xfer)}")
    print(f"dir:      {workdir} ({file_system(workdir)})")
    print(f"load:     {load()} at the start (other work on the machine skews the timings)")
    print(
        f"runs:     {args.size // MIB} MiB disks; {args.warmup} warm-up + {args.repeat} timed "
        "runs per command, best kept; before each: os.sync(), input read into the cache"
    )
    print(flush=True)


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def progress(text: str) -> None:
    """A progress line on stderr, so stdout holds only the report."""
    print(text, file=sys.stderr, flush=True)


# --- the disks -----------------------------------------------------------------------------


def make_dense(path: Path, size: int) -> None:
    """A raw disk of ``size`` random bytes."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(CHUNK, left)
            f.write(os.urandom(n))
            left -= n


def sparse_blocks(size: int, count: int) -> list[int]:
    """``count`` 2 MiB blocks of a disk of ``size``, spread evenly: where the data goes."""
    total = size // BLOCK
    return [i * total // count for i in range(count)]


def sparse_count(size: int) -> int:
    """How many blocks of the sparse disk hold data: ``SPARSE_FRACTION`` of them."""
    return max(1, round(size // BLOCK * SPARSE_FRACTION))


def make_sparse(path: Path, size: int, count: int) -> float:
    """A sparse raw disk of ``size`` with random data in ``count`` blocks spread evenly;
    returns the fraction of the disk that holds data."""
    blocks = sparse_blocks(size, count)
    with open(path, "wb") as f:
        f.truncate(size)
        for b in blocks:
            f.seek(b * BLOCK)
            f.write(os.urandom(BLOCK))
    return len(blocks) * BLOCK / size


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


def run_once(command: Command, log: Path) -> Sample:
    """Run ``command`` once, timed: its output removed, everything synced, its input cached."""
    remove(command.dst)
    os.sync()
    cache(command.src)
    with open(log, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            command.argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=ROOT
        )
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait
    if proc.returncode != 0:
        text = log.read_text(errors="replace").strip()
        raise BenchError(f"{shlex.join(command.argv)} exited with {proc.returncode}: {text}")
    return Sample(seconds, usage.ru_maxrss)  # ru_maxrss: KiB on Linux


def measure_pair(
    label: str, commands: tuple[Command, Command], runs: tuple[int, int]
) -> tuple[Result, Result]:
    """Run the xfer and qemu-img commands, interleaved: ``runs`` = (warm-up, timed) per command.

    Returns the medians of the timed runs. The outputs of the last runs are left in place for
    the next step and the checks.
    """
    warmup, repeat = runs
    log = commands[0].dst.with_suffix(".log")
    timed: tuple[list[Sample], list[Sample]] = ([], [])
    for i in range(-warmup, repeat):
        for command, samples in zip(commands, timed, strict=True):
            s = run_once(command, log)
            if i >= 0:
                samples.append(s)
            which = f"run {i + 1}/{repeat}" if i >= 0 else "warm-up"
            progress(
                f"  {label} {command.tool:<8} {which:>7}: {s.seconds:7.3f} s, "
                f"peak RSS {s.rss_kib / 1024:6.1f} MiB"
            )
    remove(log)
    results = tuple(
        Result(
            seconds=min(s.seconds for s in samples),
            median=statistics.median(s.seconds for s in samples),
            rss_mib=statistics.median(s.rss_kib for s in samples) / 1024,
            allocated=allocated(command.dst),
            samples=tuple(samples),
        )
        for command, samples in zip(commands, timed, strict=True)
    )
    return results[0], results[1]


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


def qemu_same(a: Path, b: Path) -> str | None:
    """None if ``qemu-img compare`` finds the raw files identical (it skips holes)."""
    out = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "raw", str(a), str(b)],
        capture_output=True,
        text=True,
    )
    return None if out.returncode == 0 else (out.stdout + out.stderr).strip()


def verify(disk: str, raw: Path, xfer_vhd: Path, back: Path, qback: Path) -> list[str]:
    """The correctness checks of one disk; returns the failures (empty when all pass)."""
    failures = []
    same_contents = qemu_same if disk == "wide" else same_bytes
    problem = same_contents(raw, back)
    progress(f"  check {disk}: xfer round trip equals the source: {problem or 'yes'}")
    if problem:
        failures.append(f"{disk}: xfer round trip (raw -> vhd -> raw): {problem}")
    problem = same_contents(raw, qback)
    progress(f"  check {disk}: qemu-img round trip equals the source: {problem or 'yes'}")
    if problem:
        failures.append(f"{disk}: qemu-img round trip (raw -> vpc -> raw): {problem}")
    cmd = ["qemu-img", "compare", "-f", "vpc", "-F", "raw", str(xfer_vhd), str(raw)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    text = (out.stdout + out.stderr).strip().replace("\n", "; ")
    progress(f"  check {disk}: {shlex.join(cmd[:6])} ... -> {out.returncode}: {text}")
    if out.returncode != 0:
        failures.append(f"{disk}: qemu-img compare {xfer_vhd.name} {raw.name}: {text}")
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


def print_table(rows: list[Row]) -> None:
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
    lines = [head]
    for r in rows:
        mib = r.size / MIB
        lines.append(
            (
                r.disk,
                r.direction,
                f"{r.xfer.seconds:.3f}",
                f"{r.qemu.seconds:.3f}",
                f"{r.xfer.median:.3f}",
                f"{r.qemu.median:.3f}",
                f"{mib / r.xfer.seconds:.0f}",
                f"{mib / r.qemu.seconds:.0f}",
                f"{r.ratio:.2f}",
                f"{r.xfer.rss_mib:.1f}",
                f"{r.qemu.rss_mib:.1f}",
                f"{r.xfer.allocated / MIB:.1f}",
                f"{r.qemu.allocated / MIB:.1f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for n, line in enumerate(lines):
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print()


def print_spread(rows: list[Row], limit: float = NOISY) -> None:
    """The measurements whose timed runs differ by more than ``limit`` (slowest / fastest)."""
    noisy = [
        f"{r.disk} {r.direction} {name}: "
        + ", ".join(f"{s.seconds:.3f}" for s in result.samples)
        + " s"
        for r in rows
        for name, result in (("xfer", r.xfer), ("qemu-img", r.qemu))
        if max(s.seconds for s in result.samples) > limit * min(s.seconds for s in result.samples)
    ]
    if noisy:
        print(f"noisy (slowest timed run > {limit:.2f} x fastest):")
        for line in noisy:
            print(f"  {line}")
        print()


def startup(xfer: list[str], repeat: int) -> float:
    """Median seconds of ``xfer --help``: the interpreter and imports every xfer run pays."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([*xfer, "--help"], stdout=subprocess.DEVNULL, check=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def summary(rows: list[Row], fraction: float, started: float) -> list[tuple[str, bool, str]]:
    """The targets of the issue: (target, met, measured value)."""
    by = {(r.disk, r.direction): r for r in rows}
    out = []
    for direction in ("raw->vhd", "vhd->raw"):
        r = by[("dense", direction)]
        out.append(
            (
                f"dense {direction} ratio >= {RATIO_TARGET:.1f}",
                r.ratio >= RATIO_TARGET,
                f"{r.ratio:.2f} (xfer {r.xfer.seconds:.3f} s, qemu-img {r.qemu.seconds:.3f} s)",
            )
        )
    limit = SPARSE_OVERHEAD + fraction
    for direction in ("raw->vhd", "vhd->raw"):
        dense, sparse, wide = (by[(d, direction)] for d in ("dense", "sparse", "wide"))
        share = (sparse.xfer.seconds - started) / (dense.xfer.seconds - started)
        out.append(
            (
                f"sparse {direction}: xfer sparse/dense time net of start-up <= {limit:.2f} "
                f"({SPARSE_OVERHEAD} + data fraction {fraction:.3f})",
                share <= limit,
                f"{share:.3f} ({sparse.xfer.seconds:.3f} s / {dense.xfer.seconds:.3f} s, "
                f"less {started:.3f} s each)",
            )
        )
        growth = wide.xfer.seconds / sparse.xfer.seconds
        out.append(
            (
                f"sparse {direction}: same data, {WIDE}x the virtual size: xfer time "
                f"<= {WIDE_TARGET:.1f}x",
                growth <= WIDE_TARGET,
                f"{growth:.2f}x ({wide.xfer.seconds:.3f} s / {sparse.xfer.seconds:.3f} s; "
                f"qemu-img {wide.qemu.seconds / sparse.qemu.seconds:.2f}x)",
            )
        )
    peak = max(s.rss_kib for r in rows for s in r.xfer.samples) / 1024
    out.append(
        (f"xfer peak RSS < {RSS_TARGET_MIB:.0f} MiB", peak < RSS_TARGET_MIB, f"{peak:.1f} MiB")
    )
    return out


def print_summary(targets: list[tuple[str, bool, str]], failures: list[str], quick: bool) -> None:
    """The targets as PASS/FAIL, then the correctness checks."""
    print("targets:")
    width = max(len(name) for name, _, _ in targets)
    for name, met, value in targets:
        print(f"  {'PASS' if met else 'FAIL'}  {name:<{width}}  measured {value}")
    if quick:
        print("  (--quick: start-up weighs heavily on small disks; judge targets on 2 GiB runs)")
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
    if shutil.which("qemu-img") is None:
        print("vhd_convert: qemu-img not found (make deps installs it)", file=sys.stderr)
        return 1
    parent = args.dir or Path("/tmp")
    need = 5 * args.size + 64 * MIB  # dense: source, two VHDs and two raw copies at once
    free = shutil.disk_usage(parent).free
    if free < need:
        print(
            f"vhd_convert: {parent} has {free // MIB} MiB free, needs {need // MIB} MiB",
            file=sys.stderr,
        )
        return 1
    xfer = xfer_command()
    workdir = Path(tempfile.mkdtemp(prefix="vhd-bench-", dir=parent))
    rows: list[Row] = []
    failures: list[str] = []
    try:
        print_header(args, workdir, xfer)
        count = sparse_count(args.size)
        fraction = count * BLOCK / args.size
        wide = args.size * WIDE
        for disk, size in (("dense", args.size), ("sparse", args.size), ("wide", wide)):
            raw = workdir / f"{disk}.raw"
            progress(f"making {disk} disk: {raw}")
            if disk == "dense":
                make_dense(raw, size)
            else:
                make_sparse(raw, size, count)
            progress(f"  {allocated(raw) // MIB} MiB allocated of {size // MIB} MiB")
            disk_rows, disk_failures = bench_disk(disk, raw, size, xfer, (args.warmup, args.repeat))
            rows += disk_rows
            failures += disk_failures
        started = startup(xfer, args.repeat)
    except BenchError as e:
        print(f"vhd_convert: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
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
    print_table(rows)
    print_spread(rows)
    print_summary(summary(rows, fraction, started), failures, args.quick)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
