"""A live migration's report as ``xfer migrate`` shows it: read from the JSON the source host
keeps in the task's ``other_config`` (key :data:`REPORT_KEY`), drawn as a table of pre-copy
rounds and a summary (downtime, total time, throughput, the memory digests' verdict).

Pure: values in, text out, so that every rendering is tested with data. The report is the
host's: a malformed one is a :class:`ReportError` naming the field, never a traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from migrate.cli.units import format_size

REPORT_KEY = "xfer_migration"
"""The key of the task's ``other_config`` that holds the report (JSON text)."""


PAGE_SIZE = 4096
"""Bytes of a guest page (the stop-and-copy is counted in pages)."""


class ReportError(ValueError):
    """The host's report is not as documented; the message names the field."""


@dataclass(frozen=True)
class Round:
    """One pre-copy round (the guest running)."""

    index: int
    pages: int
    bytes: int
    seconds: float
    dirty_rate: float
    """Bytes per second the guest wrote while the round was sent."""
    throttle: float
    """The guest's SIGSTOP duty cycle during the round, 0 to 1."""

    @property
    def send_rate(self) -> float | None:
        """Bytes per second the round went at (None for a round that took no time)."""
        return self.bytes / self.seconds if self.seconds > 0 else None


@dataclass(frozen=True)
class Report:
    """The rounds so far and, once the migration ended, how it went."""

    vm: str
    memory: int
    rounds: tuple[Round, ...]
    state: str
    """``running``, ``done`` or ``failed``."""
    stop_reason: str = ""
    final_pages: int | None = None
    """Pages sent in the stop-and-copy, the guest paused."""
    link_rate: float | None = None
    """Bytes per second the link carried over the rounds."""
    downtime: float | None = None
    """Seconds from the pause on the source to the unpause on the destination."""
    total: float | None = None
    throughput: float | None = None
    source_digest: str | None = None
    destination_digest: str | None = None
    """sha256 of the guest's RAM at the pause and before the resume (options verify=true)."""

    @property
    def sent(self) -> int:
        """Bytes of memory sent over all rounds."""
        return sum(r.bytes for r in self.rounds)

    @property
    def memory_identical(self) -> bool | None:
        """Whether the destination's RAM equals the source's at the pause; None when the
        migration did not compare them."""
        if self.source_digest is None or self.destination_digest is None:
            return None
        return self.source_digest == self.destination_digest


def parse_report(value: object) -> Report:
    """The report in ``value``: the JSON text of the task's ``other_config`` entry or its
    decoded object. Fields a running migration has not filled yet may be missing or null."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise ReportError(f"the migration report is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise ReportError("the migration report is not a JSON object")
    rounds = value.get("rounds", [])
    if not isinstance(rounds, list):
        raise ReportError("the migration report's rounds are not a list")
    digests = value.get("memory_digest") or {}
    if not isinstance(digests, dict):
        raise ReportError("the migration report's memory_digest is not an object")
    return Report(
        vm=_text(value, "vm"),
        memory=int(_number(value, "memory")),
        rounds=tuple(_round(r, i) for i, r in enumerate(rounds)),
        state=_text(value, "state") or "running",
        stop_reason=_text(value, "stop_reason"),
        final_pages=_whole(value, "final_pages"),
        link_rate=_optional(value, "link_rate"),
        downtime=_optional(value, "downtime"),
        total=_optional(value, "total"),
        throughput=_optional(value, "throughput"),
        source_digest=_text(digests, "source", "memory_digest.") or None,
        destination_digest=_text(digests, "destination", "memory_digest.") or None,
    )


def _round(value: object, position: int) -> Round:
    where = f"rounds[{position}]."
    if not isinstance(value, dict):
        raise ReportError(f"the migration report's rounds[{position}] is not an object")
    return Round(
        index=int(_number(value, "index", where, position)),
        pages=int(_number(value, "pages", where)),
        bytes=int(_number(value, "bytes", where)),
        seconds=float(_number(value, "seconds", where)),
        dirty_rate=float(_number(value, "dirty_rate", where)),
        throttle=float(_number(value, "throttle", where)),
    )


def _number(value: dict[str, Any], key: str, where: str = "", default: float = 0) -> float:
    """``value[key]``, a finite number >= 0 (``default`` when missing or null)."""
    item = _optional(value, key, where)
    return default if item is None else item


def _optional(value: dict[str, Any], key: str, where: str = "") -> float | None:
    """``value[key]``, a finite number >= 0, or None when missing or null."""
    item = value.get(key)
    if item is None:
        return None
    if isinstance(item, bool) or not isinstance(item, int | float) or not 0 <= item < float("inf"):
        raise ReportError(f"the migration report's {where}{key} is not a number >= 0: {item!r}")
    return item


def _whole(value: dict[str, Any], key: str) -> int | None:
    """``value[key]``, a whole number >= 0, or None when missing or null."""
    item = _optional(value, key)
    if item is not None and item != int(item):
        raise ReportError(f"the migration report's {key} is not a whole number: {item!r}")
    return None if item is None else int(item)


def _text(value: dict[str, Any], key: str, where: str = "") -> str:
    item = value.get(key)
    if item is None:
        return ""
    if not isinstance(item, str):
        raise ReportError(f"the migration report's {where}{key} is not a string: {item!r}")
    return item


# Rendering


def format_seconds(seconds: float) -> str:
    """``0.0123`` -> ``"12.3 ms"``, ``2.5`` -> ``"2.50 s"``."""
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def format_rate(rate: float | None) -> str:
    """Bytes per second as ``"812.4 MiB/s"``; ``"-"`` when unknown."""
    return "-" if rate is None else f"{format_size(rate)}/s"


def format_throttle(duty: float) -> str:
    """A duty cycle as a percentage: ``0.4`` -> ``"40%"``."""
    return f"{duty * 100:.0f}%"


COLUMNS = ("ROUND", "PAGES", "BYTES", "TIME", "SENT AT", "GUEST WRITES", "THROTTLE")


def rounds_table(report: Report) -> list[str]:
    """The pre-copy rounds as aligned lines under a heading."""
    rows = [COLUMNS] + [
        (
            str(r.index),
            f"{r.pages:,}",
            format_size(r.bytes),
            format_seconds(r.seconds),
            format_rate(r.send_rate),
            format_rate(r.dirty_rate),
            format_throttle(r.throttle),
        )
        for r in report.rounds
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(len(COLUMNS))]
    return ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]


def summary(report: Report) -> list[str]:
    """The lines after the table: how pre-copy ended, downtime, total time, throughput,
    and the memory verdict when the digests were taken."""
    lines = [f"vm:            {report.vm}", f"memory:        {format_size(report.memory)}"]
    sent = report.sent + (report.final_pages or 0) * PAGE_SIZE
    if report.memory:
        ratio = sent / report.memory
        share = f"{ratio:.2f}x memory" if ratio >= 1 else f"{ratio:.1%} of memory"
        lines.append(f"sent:          {format_size(sent)} ({share})")
    if report.link_rate:
        lines.append(f"link rate:     {format_rate(report.link_rate)} over the rounds")
    if report.final_pages is not None:
        final = f"{report.final_pages:,} pages ({format_size(report.final_pages * PAGE_SIZE)})"
        reason = f": {report.stop_reason}" if report.stop_reason else ""
        lines.append(f"stop-and-copy: {final} sent paused{reason}")
    elif report.stop_reason:
        lines.append(f"stop-and-copy: {report.stop_reason}")
    if report.downtime is not None:
        lines.append(
            f"downtime:      {format_seconds(report.downtime)} (paused on the source "
            "until running on the destination)"
        )
    if report.total is not None:
        lines.append(f"total time:    {format_seconds(report.total)}")
    if report.throughput is not None:
        lines.append(f"throughput:    {format_rate(report.throughput)}")
    verdict = memory_verdict(report)
    if verdict is not None:
        lines.append(f"memory check:  {verdict}")
    lines.append(f"state:         {report.state}")
    return lines


def memory_verdict(report: Report) -> str | None:
    """``identical at the pause (sha256 ...)`` or what differs; None without digests."""
    identical = report.memory_identical
    if identical is None:
        return None
    if identical:
        return f"identical at the pause (sha256 {report.source_digest})"
    return (
        f"DIFFERENT at the pause: source sha256 {report.source_digest}, "
        f"destination {report.destination_digest}"
    )


def render(report: Report) -> str:
    """The whole report: the rounds table, a blank line, the summary."""
    table = rounds_table(report) if report.rounds else ["no rounds"]
    return "\n".join([*table, "", *summary(report)]) + "\n"


def progress_note(report: Report) -> str:
    """One short line for a progress bar: the round running and how the guest behaves."""
    if not report.rounds:
        return "starting"
    last = report.rounds[-1]
    note = (
        f"round {last.index}: {format_size(report.sent)} sent, guest writes "
        f"{format_rate(last.dirty_rate)}"
    )
    if last.throttle:
        note += f", throttled {format_throttle(last.throttle)}"
    return note
