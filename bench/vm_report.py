"""The migration benchmark's results and report: each figure beside its peer or floor, what
limits it (measured in the same run), the noisy runs and the targets as PASS/FAIL."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from common import MIB, Outcome, Runs, load, print_noisy, print_table, print_targets
from vm_hosts import LEDGER_RUN, SETTLE, Iperf, MemoryFloor, MemoryPeak, Migrated, Pause

STREAM_TARGET = 0.9
PAUSE_TARGET = 0.020
IDLE_TARGET = 1.2
CONVERGE_TARGET = 3.0
USS_TARGET_MIB = 100.0
BUSY_CORE = 0.85
"""A process using more than this share of one CPU during a migration is its bound."""


@dataclass
class MemoryRun:
    """A migration during which the daemons' memory was sampled."""

    label: str
    peaks: list[MemoryPeak]
    seconds: list[float]
    """How long each sample took."""


@dataclass
class Results:
    """Everything measured so far (printed even if a later step fails)."""

    memory: int
    iperf: list[Iperf] = field(default_factory=list)
    floor: MemoryFloor | None = None
    idle: list[Migrated] = field(default_factory=list)
    hot: list[tuple[Migrated, Pause]] = field(default_factory=list)
    busy: list[Migrated] = field(default_factory=list)
    busy_rate: int = 0
    """Bytes/s the busy guest was asked to write."""
    memory_runs: list[MemoryRun] = field(default_factory=list)
    fill_seconds: list[float] = field(default_factory=list)
    fsync: list[float] = field(default_factory=list)
    """Seconds of fsynced 4 KiB appends in the destination's state directory."""


def median(values: Sequence[float]) -> float:
    """The median, as a float."""
    return float(statistics.median(values))


def ms(seconds: float) -> str:
    """Milliseconds, one decimal."""
    return f"{1000 * seconds:.1f}"


def mib_s(rate: float) -> str:
    """MiB/s, no decimal."""
    return f"{rate / MIB:.0f}"


def secs(seconds: float) -> str:
    """Seconds, three decimals."""
    return f"{seconds:.3f}"


def each(values: Sequence[float], fmt: Callable[[float], str], unit: str = "") -> str:
    """Every run's value, formatted."""
    return " ".join(fmt(v) for v in values) + (f" {unit}" if unit else "")


def print_report(r: Results, quick: bool) -> None:
    """The table of figures with their peers and floors, the noisy runs, the notes on what
    limits each figure, and the targets."""
    if not r.iperf or not r.idle:
        return
    link = median([p.rate for p in r.iperf])
    stream = median([m.stream_rate for m in r.idle])
    idle = median([m.total for m in r.idle])
    ideal = r.memory / link
    print(f"load at the end: {load()}")
    print()
    rows = [
        ["1 memory stream (round 0)", f"{mib_s(stream)} MiB/s", f"{stream / link:.2f}x iperf3",
         each([m.stream_rate for m in r.idle], mib_s, "MiB/s")],
        ["  peer: iperf3, one stream", f"{mib_s(link)} MiB/s", "",
         each([p.rate for p in r.iperf], mib_s, "MiB/s")],
    ]  # fmt: skip
    if r.floor is not None:
        fresh = r.floor.size / r.floor.fresh.median
        read = r.floor.size / r.floor.read.median
        zero = r.floor.size / r.floor.zero.median
        rows += [
            ["  floor: first write to new RAM", f"{mib_s(fresh)} MiB/s",
             f"{fresh / link:.2f}x iperf3", each(r.floor.fresh.seconds, secs, "s")],
            ["  floor: numpy reads the RAM", f"{mib_s(read)} MiB/s", f"{read / link:.1f}x iperf3",
             each(r.floor.read.seconds, secs, "s")],
            ["  zero-page detection alone", f"{mib_s(zero)} MiB/s", "one word a page",
             each(r.floor.zero.seconds, secs, "s")],
        ]  # fmt: skip
    rows += [
        ["3 idle migration, total", f"{secs(idle)} s", f"{idle / ideal:.2f}x memory/iperf3",
         each([m.total for m in r.idle], secs, "s")],
        ["  floor: memory / iperf3", f"{secs(ideal)} s", "", ""],
        ["  client's wall time", f"{secs(median([m.wall for m in r.idle]))} s", "",
         each([m.wall for m in r.idle], secs, "s")],
    ]  # fmt: skip
    if r.hot:
        pauses = [p.gap for _, p in r.hot]
        downtimes = [m.downtime for m, _ in r.hot]
        final = median([m.final_pages for m, _ in r.hot])
        rows += [
            ["2 guest-observed pause", f"{ms(median(pauses))} ms", "largest ledger gap",
             each(pauses, ms, "ms")],
            ["  downtime (report)", f"{ms(median(downtimes))} ms", "SIGSTOP A -> SIGCONT B",
             each(downtimes, ms, "ms")],
            ["  floor: final pages / iperf3", f"{ms(final * 4096 / link)} ms",
             f"{final:.0f} pages (median)", ""],
            ["  stage: one fsync in B's state dir", f"{ms(median(r.fsync or [0.0]))} ms",
             f"max {ms(max(r.fsync or [0.0]))} ms: a commit of B's database", ""],
        ]  # fmt: skip
    if r.busy:
        busy = median([m.total for m in r.busy])
        rows += [
            ["4 busy guest, total", f"{secs(busy)} s", f"{busy / idle:.2f}x idle",
             each([m.total for m in r.busy], secs, "s")],
            ["  rounds", f"{median([len(m.rounds) for m in r.busy]):.0f}", "",
             each([len(m.rounds) for m in r.busy], lambda v: f"{v:.0f}")],
            ["  throttle duty reached", f"{median([m.throttle for m in r.busy]):.2f}", "",
             each([m.throttle for m in r.busy], lambda v: f"{v:.2f}")],
        ]  # fmt: skip
    for name in ("source", "destination"):
        peaks = [p for run in r.memory_runs for p in run.peaks if p.name == name]
        if peaks:
            worst = max(peaks, key=lambda p: p.peak.own)
            rows.append(
                [f"5 {name} daemon's own memory", f"{worst.peak.own / MIB:.1f} MiB",
                 f"USS {worst.peak.uss / MIB:.0f} - guest RAM {worst.peak.guest / MIB:.0f} MiB",
                 "; ".join(f"{run.label} {p.peak.own / MIB:.1f} (before {p.before.own / MIB:.1f})"
                           for run in r.memory_runs for p in run.peaks if p.name == name)
                 + " MiB"]
            )  # fmt: skip
    print_table(("figure", "median", "ratio / note", "runs"), rows, left={0, 2, 3})
    noisy = [
        ("1 round 0 seconds", Runs([float(m.rounds[0]["seconds"]) for m in r.idle])),
        ("iperf3 seconds per memory size", Runs([r.memory / p.rate for p in r.iperf])),
        ("3 idle total", Runs([m.total for m in r.idle])),
    ]
    if r.floor is not None:
        noisy.append(("floor: first write to new RAM", r.floor.fresh))
    if r.hot:
        noisy.append(("2 guest pause", Runs([p.gap for _, p in r.hot])))
    if r.busy:
        noisy.append(("4 busy total", Runs([m.total for m in r.busy])))
    print_noisy(noisy)
    print_notes(r, link)
    print_targets(targets(r, link), "--quick: small guests, few runs" if quick else None)


def targets(r: Results, link: float) -> list[Outcome]:
    """The targets judged on the medians."""
    stream = median([m.stream_rate for m in r.idle])
    idle = median([m.total for m in r.idle])
    ideal = r.memory / link
    out = [
        Outcome(f"1 memory stream >= {STREAM_TARGET}x iperf3", stream >= STREAM_TARGET * link,
                f"{stream / link:.2f}x ({mib_s(stream)} / {mib_s(link)} MiB/s)"),
        Outcome(f"3 idle total <= {IDLE_TARGET}x memory / iperf3", idle <= IDLE_TARGET * ideal,
                f"{idle / ideal:.2f}x ({secs(idle)} / {secs(ideal)} s)"),
    ]  # fmt: skip
    if r.hot:
        pause = median([p.gap for _, p in r.hot])
        downtime = median([m.downtime for m, _ in r.hot])
        out.insert(1, Outcome(
            f"2 guest-observed pause <= {ms(PAUSE_TARGET)} ms (median)", pause <= PAUSE_TARGET,
            f"{ms(pause)} ms; downtime {ms(downtime)} ms"))  # fmt: skip
    if r.busy:
        busy = median([m.total for m in r.busy])
        out.append(Outcome(f"4 busy total <= {CONVERGE_TARGET:.0f}x idle",
                           busy <= CONVERGE_TARGET * idle,
                           f"{busy / idle:.2f}x ({secs(busy)} / {secs(idle)} s)"))  # fmt: skip
    peaks = [p for run in r.memory_runs for p in run.peaks]
    if peaks:
        worst: dict[str, float] = {}
        for p in peaks:
            worst[p.name] = max(worst.get(p.name, 0.0), p.peak.own / MIB)
        each_peak = ", ".join(f"{name} {mib:.1f} MiB" for name, mib in worst.items())
        out.append(Outcome(f"5 each daemon's own memory < {USS_TARGET_MIB:.0f} MiB",
                           max(worst.values()) < USS_TARGET_MIB, each_peak))  # fmt: skip
    return out


def bound(runs: Sequence[Migrated]) -> str:
    """What the scheduler's account of the daemons during ``runs`` says limits them (medians):
    waiting for a CPU, one daemon's own CPU, or neither (blocked on something else)."""
    total = median([m.total for m in runs])
    waited = {
        "source": median([m.source.waited for m in runs]),
        "destination": median([m.destination.waited for m in runs]),
    }
    ran = {
        "source": median([m.source.ran for m in runs]),
        "destination": median([m.destination.ran for m in runs]),
    }
    busy = median([m.busy_cpus for m in runs])
    cpus = os.cpu_count() or 1
    who = max(waited, key=lambda k: waited[k])
    if waited[who] > 0.25 * total:
        return (
            f"CPU contention: the {who} daemon waited {waited[who] / total:.0%} of the time for "
            f"a CPU while runnable; the machine was busy {busy:.2f} of {cpus} CPUs (other work "
            "and the guests): the figure measures the machine's load as much as xfer"
        )
    who = max(ran, key=lambda k: ran[k])
    if ran[who] > BUSY_CORE * total:
        return f"the {who} daemon's CPU: it ran {ran[who] / total:.0%} of the time (one event loop)"
    return (
        f"neither daemon busy all the time (source {ran['source'] / total:.0%}, destination "
        f"{ran['destination'] / total:.0%}) nor waiting for a CPU: the two hand the stream over "
        "between their event loops and I/O threads, each stage waiting on the other"
    )


def sched_line(runs: Sequence[Migrated]) -> str:
    """Each run's scheduler account of both daemons, as fractions of its total time."""
    return "; ".join(
        f"A ran {m.source.ran / m.total:.2f} waited {m.source.waited / m.total:.2f}, "
        f"B ran {m.destination.ran / m.total:.2f} waited {m.destination.waited / m.total:.2f}, "
        f"machine {m.busy_cpus:.2f} CPUs"
        for m in runs
    )


def print_notes(r: Results, link: float) -> None:
    """What limits each figure, measured in the same run."""
    notes = []
    notes.append(
        "1/3 the daemons during each idle migration (fractions of its total; A source, B "
        f"destination): {sched_line(r.idle)}; iperf3's own CPU (sender/receiver % of one): "
        + " ".join(f"{p.sender_cpu:.0f}/{p.receiver_cpu:.0f}" for p in r.iperf)
    )
    notes.append(f"1/3 limited by: {bound(r.idle)}")
    if r.floor is not None:
        notes.append(
            f"1/3 CPU seconds per idle migration (medians): source "
            f"{secs(median([m.source.ran for m in r.idle]))}, destination "
            f"{secs(median([m.destination.ran for m in r.idle]))}; numpy's first write to new RAM "
            f"of that size takes {secs(r.floor.fresh.median)} by itself (the destination "
            "allocates every page it receives)"
        )
    if r.floor is not None:
        floors = {
            "one iperf3 stream": link,
            "numpy's first write to new RAM (the destination's page allocation)": r.floor.size
            / r.floor.fresh.median,
            "numpy reading the RAM (the source's read)": r.floor.size / r.floor.read.median,
        }
        lowest = min(floors, key=lambda k: floors[k])
        stream = median([m.stream_rate for m in r.idle])
        notes.append(
            f"1/3 the lowest floor is {lowest}: {mib_s(floors[lowest])} MiB/s; the stream "
            f"reaches {stream / floors[lowest]:.2f}x it"
        )
    first = [float(m.rounds[0]["seconds"]) for m in r.idle]
    rest = [m.total - f for m, f in zip(r.idle, first, strict=True)]
    notes.append(
        "3 idle total = round 0 + the rest (later rounds, final copy, resume, destroy), "
        f"medians {secs(median(first))} + {secs(median(rest))} s; "
        f"rounds {each([len(m.rounds) for m in r.idle], lambda v: f'{v:.0f}')}; downtime "
        f"{each([m.downtime for m in r.idle], ms, 'ms')}"
    )  # fmt: skip
    if r.fill_seconds:
        notes.append(
            f"fill: seconds from VM.start until the guest had touched all its RAM (+ {SETTLE} s): "
            + each(r.fill_seconds, lambda v: f"{v:.2f}")
        )
    if r.hot:
        notes.append(
            "2 the gap of the stop-and-copy (the largest ending within 20 ms of B's resume "
            "log line): "
            + each([p.at_pause for _, p in r.hot], ms, "ms")
            + "; when the largest gap began, from the migration's start: "
            + each([p.gap_at for _, p in r.hot], lambda v: f"{v:.2f}", "s")
            + f"; largest gap in the {LEDGER_RUN:.0f} s before the migration (none running): "
            + each([p.before for _, p in r.hot], ms, "ms")
        )
        notes.append(
            "2 rounds " + each([len(m.rounds) for m, _ in r.hot], lambda v: f"{v:.0f}")
            + "; final pages " + each([m.final_pages for m, _ in r.hot], lambda v: f"{v:.0f}")
            + f"; the daemons: {sched_line([m for m, _ in r.hot])}"
        )  # fmt: skip
    if r.busy:
        reached = [m.unthrottled_dirty_rate for m in r.busy]
        notes.append(
            f"4 the guest was asked to write {mib_s(r.busy_rate)} MiB/s (2x the first iperf3 "
            f"run; 2x the median is {mib_s(2 * link)}); it dirtied, in unthrottled rounds, "
            + each(reached, mib_s, "MiB/s")
            + " of distinct pages: what it reached"
        )
        notes.append(f"4 limited by: {bound(r.busy)}")
        for m in r.busy:
            notes.append(
                "4 rounds (pages, s, dirty MiB/s, throttle): "
                + "; ".join(
                    f"{x['pages']} {float(x['seconds']):.3f} {mib_s(float(x['dirty_rate']))} "
                    f"{float(x['throttle']):.2f}"
                    for x in m.rounds
                )
                + f"; stop: {m.report['stop_reason']}; then {m.final_pages} pages paused, "
                f"downtime {ms(m.downtime)} ms"
            )
    for run in r.memory_runs:
        notes.append(
            f"5 {run.label}: one sample (smaps of both daemons) took {ms(median(run.seconds))} "
            f"ms median, {ms(max(run.seconds))} ms at most; before it the daemons mapped "
            "(the source's VM about to move is one mapping; any other is of a VM gone) "
            + ", ".join(
                f"{p.name} {p.before.mappings} guest RAM mapping(s), {p.before.guest / MIB:.0f} "
                "MiB resident"
                for p in run.peaks
            )
        )
    print("notes:")
    for line in notes:
        print(f"  {line}")
    print()
