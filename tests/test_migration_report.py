"""The migration report as ``xfer migrate`` reads and draws it: parsing the host's JSON,
refusing a malformed one by field, the rounds table, the summary and the progress note."""

from __future__ import annotations

import json
from typing import Any

import pytest

from migrate.cli.migration_report import (
    COLUMNS,
    Report,
    ReportError,
    format_rate,
    format_seconds,
    memory_verdict,
    parse_report,
    progress_note,
    render,
    rounds_table,
    summary,
)

MiB = 1 << 20
VM = "0b6d3c8e-7d2a-4c1e-9f7b-2a1d5c4e3f21"
DIGEST = "ab" * 32


def report(**changes: Any) -> dict[str, Any]:
    """A finished report of a 256 MiB guest: three pre-copy rounds, then 12 pages paused."""
    value: dict[str, Any] = {
        "vm": VM,
        "memory": 256 * MiB,
        "rounds": [
            {
                "index": 0,
                "pages": 65536,
                "bytes": 256 * MiB,
                "seconds": 0.5,
                "dirty_rate": 2 * MiB,
                "throttle": 0,
            },
            {
                "index": 1,
                "pages": 256,
                "bytes": MiB,
                "seconds": 0.002,
                "dirty_rate": 1.5 * MiB,
                "throttle": 0.2,
            },
            {
                "index": 2,
                "pages": 12,
                "bytes": 12 * 4096,
                "seconds": 0.0001,
                "dirty_rate": 0,
                "throttle": 0,
            },
        ],
        "stop_reason": "the rest fits the 20 ms downtime",
        "final_pages": 12,
        "link_rate": 514.0 * MiB,
        "downtime": 0.0042,
        "total": 0.75,
        "throughput": 343.7 * MiB,
        "state": "done",
        "memory_digest": {"source": DIGEST, "destination": DIGEST},
    }
    value.update(changes)
    return value


def test_parse_a_finished_report_from_json_text() -> None:
    parsed = parse_report(json.dumps(report()))
    assert parsed.vm == VM and parsed.memory == 256 * MiB and parsed.state == "done"
    assert [r.index for r in parsed.rounds] == [0, 1, 2]
    assert parsed.rounds[1].pages == 256 and parsed.rounds[1].throttle == 0.2
    assert parsed.rounds[0].send_rate == 512 * MiB
    assert parsed.sent == 257 * MiB + 12 * 4096
    assert parsed.downtime == 0.0042 and parsed.total == 0.75
    assert parsed.memory_identical is True
    assert parse_report(report()) == parsed  # the decoded object reads the same


def test_a_running_report_may_lack_what_is_not_known_yet() -> None:
    parsed = parse_report({"vm": VM, "memory": 4096, "rounds": [], "state": "running"})
    assert parsed == Report(vm=VM, memory=4096, rounds=(), state="running")
    assert parsed.memory_identical is None
    assert progress_note(parsed) == "starting"
    nulls = parse_report(report(downtime=None, total=None, throughput=None, memory_digest=None))
    assert nulls.downtime is None and nulls.memory_identical is None
    bare = summary(parse_report(report(final_pages=None, link_rate=None, memory=1024 * MiB)))
    assert "stop-and-copy: the rest fits the 20 ms downtime" in bare
    assert "sent:          257.0 MiB (25.1% of memory)" in bare
    assert not [line for line in bare if line.startswith("link rate")]
    assert parse_report({}).state == "running"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        (report(rounds={"0": {}}), "rounds are not a list"),
        (report(rounds=[7]), r"rounds\[0\] is not an object"),
        (report(rounds=[{"index": 0, "pages": "12"}]), r"rounds\[0\]\.pages is not a number"),
        (report(rounds=[{"index": 0, "bytes": -1}]), r"rounds\[0\]\.bytes is not a number >= 0"),
        (report(rounds=[{"index": 0, "seconds": True}]), r"rounds\[0\]\.seconds"),
        (report(downtime="fast"), "downtime is not a number"),
        (report(memory=float("nan")), "memory is not a number"),
        (report(final_pages=1.5), "final_pages is not a whole number"),
        (report(link_rate=[]), "link_rate is not a number"),
        (report(vm=12), "vm is not a string"),
        (report(memory_digest=["a", "b"]), "memory_digest is not an object"),
        (report(memory_digest={"source": 1}), r"memory_digest\.source is not a string"),
    ],
)
def test_malformed_reports_are_refused_naming_the_field(value: object, message: str) -> None:
    with pytest.raises(ReportError, match=message):
        parse_report(value)


def test_rounds_table_is_aligned() -> None:
    lines = rounds_table(parse_report(report()))
    assert len(lines) == 4
    assert lines[0].split() == [
        "ROUND",
        "PAGES",
        "BYTES",
        "TIME",
        "SENT",
        "AT",
        "GUEST",
        "WRITES",
        "THROTTLE",
    ]
    assert len({len(line) for line in lines}) == 1  # right-aligned columns
    first = lines[1].split()
    assert first == [
        "0",
        "65,536",
        "256.0",
        "MiB",
        "500.0",
        "ms",
        "512.0",
        "MiB/s",
        "2.0",
        "MiB/s",
        "0%",
    ]
    assert lines[2].split()[-1] == "20%"
    assert lines[3].split()[:2] == ["2", "12"]
    assert len(COLUMNS) == 7


def test_summary_and_verdicts() -> None:
    lines = summary(parse_report(report()))
    text = "\n".join(lines)
    assert f"vm:            {VM}" in lines
    assert "sent:          257.1 MiB (1.00x memory)" in lines
    assert "link rate:     514.0 MiB/s over the rounds" in lines
    assert (
        "stop-and-copy: 12 pages (48.0 KiB) sent paused: the rest fits the 20 ms downtime" in lines
    )
    assert "downtime:      4.2 ms" in text
    assert "total time:    750.0 ms" in lines
    assert "throughput:    343.7 MiB/s" in lines
    assert f"memory check:  identical at the pause (sha256 {DIGEST})" in lines
    differ = parse_report(report(memory_digest={"source": DIGEST, "destination": "cd" * 32}))
    verdict = memory_verdict(differ)
    assert verdict is not None and verdict.startswith("DIFFERENT at the pause")
    assert memory_verdict(parse_report(report(memory_digest={"source": DIGEST}))) is None


def test_render_puts_the_table_then_the_summary() -> None:
    parsed = parse_report(report())
    text = render(parsed)
    assert text.endswith("state:         done\n")
    table, rest = text.split("\n\n")
    assert table.splitlines() == rounds_table(parsed)
    assert rest.splitlines() == summary(parsed)
    assert render(parse_report({"vm": VM})).startswith("no rounds\n\n")


def test_progress_note_and_units() -> None:
    note = progress_note(parse_report(report()))
    assert note == "round 2: 257.0 MiB sent, guest writes 0 B/s"
    throttled = parse_report(report(rounds=report()["rounds"][:2], state="running"))
    assert progress_note(throttled) == (
        "round 1: 257.0 MiB sent, guest writes 1.5 MiB/s, throttled 20%"
    )
    assert format_seconds(0.0123) == "12.3 ms" and format_seconds(2.5) == "2.50 s"
    assert format_rate(None) == "-" and format_rate(3 * MiB) == "3.0 MiB/s"
