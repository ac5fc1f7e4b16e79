"""The harness of the VDI transfer benchmark: its time bound, contenders run interleaved, and
the report (figures, notes, ratio targets judged on medians) printed even after a failure."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from common import (
    COMMAND_CAP,
    MIB,
    BenchError,
    Outcome,
    Runs,
    load,
    print_noisy,
    print_table,
    print_targets,
    progress,
)


@dataclass
class Deadline:
    """The whole benchmark's time bound (``--time-limit``)."""

    end: float

    def left(self) -> float:
        """Seconds a command may still take; BenchError once the bound has passed."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise BenchError("--time-limit reached: the benchmark stopped here")
        return min(left, COMMAND_CAP)


@dataclass(kw_only=True)
class Figure(Runs):
    """The timed runs of one contender of a figure."""

    name: str
    command: str
    size: int
    """Bytes moved per run (for throughput)."""

    @property
    def mib_s(self) -> float:
        """Throughput of the best run."""
        return self.size / MIB / self.best


@dataclass
class Contender:
    """One side of a figure: its runs and how to run it once (returns seconds)."""

    figure: Figure
    once: Callable[[], float]


def interleave(label: str, contenders: list[Contender], runs: int) -> None:
    """Run the contenders in turn, ``runs`` rounds, each after ``os.sync()`` (earlier imports
    leave GiBs of dirty pages), so that drifting load weighs on all of them alike."""
    for i in range(runs):
        for c in contenders:
            os.sync()
            seconds = c.once()
            c.figure.seconds.append(seconds)
            progress(
                f"  {label}: {c.figure.name:<22} run {i + 1}/{runs}: {seconds:7.3f} s "
                f"({c.figure.size / MIB / seconds:7.0f} MiB/s)"
            )


@dataclass
class Report:
    """Everything measured so far (printed even if a later step fails)."""

    figures: list[tuple[str, Figure]] = field(default_factory=list)
    targets: list[Outcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def ratio_target(
    report: Report, name: str, xfer: Figure, peer: Figure, limit: float, *, by_time: bool = False
) -> None:
    """Record a ratio target on the median runs (a best run can be an outlier too):
    throughput xfer/peer >= limit, or time xfer/peer <= limit; the best runs' ratio beside."""
    if by_time:
        r, best = xfer.median / peer.median, xfer.best / peer.best
        met = r <= limit
        text = f"{name}: time {xfer.name} / {peer.name} <= {limit:.2f}"
    else:
        r = (xfer.size / xfer.median) / (peer.size / peer.median)
        best = (xfer.size / xfer.best) / (peer.size / peer.best)
        met = r >= limit
        text = f"{name}: throughput {xfer.name} / {peer.name} >= {limit:.2f}"
    value = (
        f"{r:.2f} on medians, {best:.2f} on best runs ({xfer.name} {xfer.median:.3f} s, "
        f"{peer.name} {peer.median:.3f} s)"
    )
    report.targets.append(Outcome(text, met, value))


def print_report(report: Report, quick: bool) -> None:
    """The commands, the table of figures, the noisy ones, the notes and the targets."""
    if not report.figures and not report.targets:
        return
    print("commands:")
    for label, f in report.figures:
        print(f"  {label}, {f.name}: {f.command}")
    print()
    print(f"load at the end: {load()}")
    print("MiB/s: bytes moved / wall time of the client command (start-up included), best run")
    print()
    print_table(
        ("figure", "contender", "best s", "median s", "MiB/s", "runs s"),
        [
            (
                label,
                f.name,
                f"{f.best:.3f}",
                f"{f.median:.3f}",
                f"{f.mib_s:.0f}",
                " ".join(f"{x:.3f}" for x in f.seconds),
            )
            for label, f in report.figures
        ],
        left={0, 1, 5},
    )
    print_noisy([(f"{label} {f.name}", f) for label, f in report.figures])
    if report.notes:
        print("notes:")
        for line in report.notes:
            print(f"  {line}")
        print()
    if report.targets:
        note = "--quick: start-up weighs heavily on small transfers; judge on full runs"
        print_targets(report.targets, note if quick else None)
