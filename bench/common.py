"""What both benchmarks share: the machine and tools they describe, commands run and timed
whole, best and median runs, the report's table and targets, the working directory and the
page cache. Written once so that both benchmarks measure and report in the same way."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

try:
    import psutil
except ImportError:
    sys.exit("bench: psutil is not installed (`make bench` installs the `bench` extra)")

MIB = 1 << 20
GIB = 1 << 30
BLOCK = 2 * MIB
"""The VHD block size: the granularity of the sparse files' data."""
CHUNK = 4 * MIB
"""The buffer for making, caching and reading the benchmarks' files."""
COMMAND_CAP = 600.0
"""No single command may take longer than this (seconds), whatever else bounds it."""
NOISY = 1.25
"""Runs of one command further apart than this (slowest / fastest) are listed as noisy."""
ROOT = Path(__file__).resolve().parent.parent
"""The repository: where every command runs."""


class BenchError(Exception):
    """A command failed, a check failed or time ran out: the run cannot be trusted."""


def progress(text: str) -> None:
    """A progress line on stderr, so stdout holds only the report."""
    print(text, file=sys.stderr, flush=True)


# --- the machine and its tools -------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model name, or the machine type (psutil has no model name: /proc/cpuinfo)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{x:.2f}" for x in psutil.getloadavg())


def file_system(path: Path) -> str:
    """The type of the file system ``path`` lives on: the longest mount point holding it."""
    target, best, kind = str(path.resolve()), "", "?"
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, part.fstype
    return kind


def find_tool(name: str) -> str | None:
    """Where the program ``name`` is: on PATH, else in /usr/sbin or /sbin (nginx lives there,
    outside a user's PATH); None if it is not installed."""
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/sbin"):
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return None


def tool(name: str) -> str:
    """The path of the program ``name``; BenchError if it is not installed."""
    found = find_tool(name)
    if found is None:
        raise BenchError(f"{name} is not installed (make bench installs it)")
    return found


VERSION_ARGS = {"nginx": ["-v"], "socat": ["-V"], "openssl": ["version"]}
"""How each tool prints its version, where it is not ``--version``."""


def tool_version(name: str) -> str:
    """The line of the tool's version output that names a version (else its first line)."""
    path = find_tool(name)
    if path is None:
        return "not found"
    argv = [path, *VERSION_ARGS.get(name, ["--version"])]
    try:
        p = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    lines = [x.strip() for x in (p.stdout + p.stderr).splitlines() if x.strip()]
    return next((x for x in lines if "version" in x.lower()), lines[0] if lines else "?")


def print_header(title: str, xfer: list[str], tools: Sequence[str], workdir: Path) -> None:
    """The report's first lines: what it compares, the command line, the machine, the
    versions, the working directory and the load (other work on the machine skews timings)."""
    print(title)
    print(f"command:  {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"machine:  nproc {len(os.sched_getaffinity(0))}, {cpu_model()}, Linux {platform.release()}"
    )
    print(f"python:   {platform.python_version()} ({sys.executable})")
    print(f"xfer:     {shlex.join(xfer)}")
    for name in tools:
        print(f"{name + ':':<9} {tool_version(name)}")
    print(f"dir:      {workdir} ({file_system(workdir)})")
    print(f"load:     {load()} at the start (other work on the machine skews the timings)")


def xfer_command() -> list[str]:
    """How to run xfer: the venv's entry point next to this interpreter, else ``-m``."""
    script = Path(sys.executable).parent / "xfer"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "migrate.cli.main"]


# --- commands ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Completed:
    """A command that exited 0: its wall seconds (start-up included), stdout and peak RSS."""

    seconds: float
    stdout: str
    peak_rss_kib: int


def run(
    argv: Sequence[str], timeout: float = COMMAND_CAP, env: dict[str, str] | None = None
) -> Completed:
    """Run ``argv`` from the repository to its end, timed whole with ``time.perf_counter``,
    its peak RSS as GNU time reports it. BenchError if it fails, or if it outlives ``timeout``
    (it is killed then); it is killed too if this process is interrupted meanwhile.

    The peak RSS ``os.wait4`` reports for a child of this process counts the pages the child
    shared with it before ``exec`` (a ``true`` started from a Python of 200 MiB reported
    211 MiB): GNU time, a small process, starts the command and reports its own child's."""
    command = shlex.join(argv)
    limit = min(timeout, COMMAND_CAP)
    killed = threading.Event()
    timing = shutil.which("time", path="/usr/bin:/bin")
    if timing is None:
        raise BenchError("GNU time (/usr/bin/time) is missing: `make bench` installs it")
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile() as peak,
    ):
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(
                [timing, "-f", "%M", "-o", peak.name, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=ROOT,
                env=env,
                start_new_session=True,  # killed as a group: time and the command
            )
        except OSError as e:
            raise BenchError(f"{command}: {e.strerror}") from None

        def kill_group() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        def kill() -> None:
            killed.set()
            kill_group()

        timer = threading.Timer(limit, kill)
        try:
            timer.start()
            _, status, _ = os.wait4(proc.pid, 0)
        except BaseException:
            kill_group()
            proc.wait()
            raise
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
        report = peak.read().decode(errors="replace").split()
    if killed.is_set():
        raise BenchError(f"{command} did not finish in {limit:.1f} s (killed)")
    if proc.returncode != 0:
        said = (stderr.strip() or stdout.strip())[-800:]
        raise BenchError(f"{command} exited with {proc.returncode}" + (f": {said}" if said else ""))
    if not report or not report[-1].isdigit():
        raise BenchError(f"{command}: GNU time reported no peak RSS ({' '.join(report)!r})")
    return Completed(seconds, stdout, int(report[-1]))  # %M: KiB


def startup(xfer: list[str], times: int) -> float:
    """Median seconds of ``xfer --help``: the interpreter and imports every xfer run pays."""
    return statistics.median(run([*xfer, "--help"]).seconds for _ in range(times))


@contextlib.contextmanager
def terminated_as_exit() -> Iterator[None]:
    """SIGTERM and SIGHUP raise SystemExit, so that ``finally`` blocks stop what was started
    and remove the working directory."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


# --- files ---------------------------------------------------------------------------------


def check_space(parent: Path, need: int) -> int:
    """The bytes free in ``parent``; BenchError if it is not a directory or has less than
    ``need``."""
    try:
        if not parent.is_dir():
            raise BenchError(f"{parent} is not a directory (--dir)")
        free = shutil.disk_usage(parent).free
    except OSError as e:
        raise BenchError(f"{parent}: {e.strerror} (--dir)") from None
    if free < need:
        raise BenchError(
            f"{parent} has {free // MIB} MiB free, the run needs {need // MIB} MiB "
            "(use --dir elsewhere, a smaller --size, or --quick)"
        )
    return free


@contextlib.contextmanager
def work_directory(parent: Path, prefix: str) -> Iterator[Path]:
    """A new directory in ``parent``, removed with everything in it on the way out."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_random(path: Path, size: int) -> str:
    """A file of ``size`` random bytes; its sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            data = os.urandom(min(CHUNK, left))
            digest.update(data)
            f.write(data)
            left -= len(data)
    return digest.hexdigest()


def make_sparse(path: Path, size: int, count: int) -> None:
    """A sparse file of ``size`` bytes with random data in ``count`` blocks of 2 MiB spread
    evenly over it, holes elsewhere."""
    total = size // BLOCK
    with open(path, "wb") as f:
        f.truncate(size)
        for i in range(count):
            f.seek(i * total // count * BLOCK)
            f.write(os.urandom(BLOCK))


def cache(*paths: Path) -> None:
    """Read the data extents of ``paths``, so that the timed command finds them cached.

    Nothing is dropped from the page cache: this only undoes the eviction of files left idle
    (memory pressure, or a proactive reclaimer such as DAMON on VMs).
    """
    buffer = bytearray(CHUNK)
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            size, pos = os.fstat(fd).st_size, 0
            while pos < size:
                try:
                    pos = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError:  # ENXIO: no data past pos
                    break
                end = os.lseek(fd, pos, os.SEEK_HOLE)
                while pos < end:
                    n = os.preadv(fd, [buffer], pos)
                    if n <= 0:
                        break
                    pos += n
        finally:
            os.close(fd)


# --- runs and the report -------------------------------------------------------------------


@dataclass
class Runs:
    """The seconds of each timed run of one command."""

    seconds: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        """The fastest run: noise only ever adds time."""
        return min(self.seconds)

    @property
    def median(self) -> float:
        """The median run: what the targets of vdi_transfer judge."""
        return statistics.median(self.seconds)

    @property
    def noisy(self) -> bool:
        """Whether the slowest run took more than ``NOISY`` times the fastest."""
        return max(self.seconds) > NOISY * min(self.seconds)


@dataclass(frozen=True)
class Outcome:
    """A target: what it asks, whether it was met and what was measured."""

    name: str
    met: bool
    value: str


def print_table(head: Sequence[str], rows: Sequence[Sequence[str]], left: set[int]) -> None:
    """``rows`` under ``head`` in columns as wide as their widest cell, the columns ``left``
    aligned left and the others right (numbers)."""
    lines = [head, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for n, line in enumerate(lines):
        cells = [
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print()


def print_noisy(runs: Sequence[tuple[str, Runs]]) -> None:
    """The commands whose runs spread more than ``NOISY``, each with every run's seconds."""
    noisy = [(label, r) for label, r in runs if r.noisy]
    if noisy:
        print(f"noisy (slowest run > {NOISY:.2f} x fastest):")
        for label, r in noisy:
            print(f"  {label}: " + ", ".join(f"{x:.3f}" for x in r.seconds))
        print()


def print_targets(targets: Sequence[Outcome], quick_note: str | None) -> None:
    """The targets as PASS/FAIL with what was measured; ``quick_note`` after them, if any."""
    print("targets:")
    width = max(len(t.name) for t in targets)
    for t in targets:
        print(f"  {'PASS' if t.met else 'FAIL'}  {t.name:<{width}}  measured {t.value}")
    if quick_note:
        print(f"  ({quick_note})")
