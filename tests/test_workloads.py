"""Workload specs, the workloads' steps over plain numpy memory, and the ledger's reader and
verdict (pure: no guest process)."""

from __future__ import annotations

import numpy as np
import pytest

from migrate.guest import workloads
from migrate.guest.workloads import (
    PAGE_SIZE,
    REGS_SIZE,
    TERM_SLOTS,
    Hotset,
    Ledger,
    LedgerError,
    LedgerLayout,
    Machine,
    Uniform,
    WorkloadError,
    check_ledger,
    parse,
    read_disk_ledger,
    read_ledger,
)

MIB = 1 << 20


def test_parse_terms() -> None:
    wl = parse("hotset:20M:64M+ledger", 256 * MIB)
    assert wl.terms == (Hotset(20 * MIB, 64 * MIB), Ledger())
    assert wl.ledger == LedgerLayout.of(256 * MIB)
    assert wl.free_pages == wl.ledger.header_page
    assert wl.tick == workloads.TICK
    assert parse("uniform:1g", 4 * MIB).terms == (Uniform(1 << 30),)
    assert parse("UNIFORM:4096", 4 * MIB).terms == (Uniform(4096),)
    idle = parse("idle", 4 * MIB)
    assert idle.terms == () and idle.free_pages == 1024 and idle.tick == workloads.IDLE_TICK
    assert parse(" idle + uniform:1K ", 4 * MIB).terms == (Uniform(1024),)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "an empty term"),
        ("idle+", "an empty term"),
        ("bogus", "'bogus': unknown workload"),
        ("fill:1", "'fill:1': expected fill"),
        ("idle:3", "'idle:3': expected idle"),
        ("uniform", "'uniform': expected uniform:RATE"),
        ("uniform:abc", "'uniform:abc': 'abc' is not a size"),
        ("uniform:0", "'uniform:0': RATE 0 is outside"),
        ("uniform:1T", "'uniform:1T': RATE 1T is outside"),
        ("hotset:1M", "'hotset:1M': expected hotset:RATE:SIZE"),
        ("hotset:1M:100", "SIZE 100 is less than a page"),
        ("hotset:1M:2G", "SIZE exceeds the 67108864 bytes"),
        ("ledger+ledger", "'ledger': ledger appears twice"),
        ("hotset:1M:64M+ledger", "SIZE exceeds"),
    ],
)
def test_bad_specs_refused(spec: str, message: str) -> None:
    with pytest.raises(WorkloadError, match="workload") as caught:
        parse(spec, 64 * MIB)
    assert message in str(caught.value)


def test_ledger_needs_room() -> None:
    with pytest.raises(WorkloadError, match="too few for a ledger"):
        parse("ledger", 2 * PAGE_SIZE)
    with pytest.raises(WorkloadError, match="not a positive multiple"):
        parse("idle", 1000)


def _machine(spec: str, memory: int, disk: bytearray | None = None) -> Machine:
    ram = np.zeros(memory // 8, dtype=np.uint64)
    regs = np.zeros(REGS_SIZE // 8, dtype=np.uint64)

    def write(offset: int, data: bytes) -> None:
        assert disk is not None
        disk[offset : offset + len(data)] = data

    machine = Machine(parse(spec, memory), ram, regs, write if disk is not None else None,
                      len(disk) if disk is not None else 0)  # fmt: skip
    machine.boot()
    return machine


def test_steps_are_idempotent() -> None:
    """A step done twice from the same committed counter writes the same memory: what makes
    a stop at any instant, then a resume of the same memory elsewhere, correct."""
    machine = _machine("uniform:4M+hotset:4M:64K", 4 * MIB)
    machine.step(0.01, 0)
    regs, ram = machine.regs.copy(), machine.ram.copy()
    machine.step(0.01, 0)
    once = machine.ram.copy()
    assert int(machine.regs[TERM_SLOTS]) == 2 * (4 * MIB // 100 // PAGE_SIZE)
    machine.regs[:] = regs  # stopped after the writes, before the commit
    machine.step(0.01, 0)
    assert np.array_equal(machine.ram, once)
    machine.regs[:], machine.ram[:] = regs, ram  # stopped before the step
    machine.step(0.01, 0)
    assert np.array_equal(machine.ram, once)


def test_writes_where_and_how_much() -> None:
    memory = 16 * MIB
    machine = _machine("hotset:40M:256K+uniform:40M", memory)
    for _ in range(100):
        machine.step(0.001, 0)
    pages = machine.ram.reshape(-1, PAGE_SIZE // 8).any(axis=1)
    assert int(machine.regs[TERM_SLOTS]) == int(machine.regs[TERM_SLOTS + 1]) == 1024
    hot, slot = 256 * 1024 // PAGE_SIZE, TERM_SLOTS
    page, _, _ = workloads.page_writes(slot, 0, 1024, hot)
    assert page.max() < hot
    assert pages[:hot].all()  # 1024 writes over 64 pages hit every one
    spread, _, _ = workloads.page_writes(slot + 1, 0, 1024, memory // PAGE_SIZE)
    expected = np.union1d(np.arange(hot), spread)
    assert np.array_equal(np.flatnonzero(pages), expected)


def test_catch_up_is_bounded_by_the_step() -> None:
    machine = _machine("uniform:1G", 64 * MIB)
    machine.step(0.002, 0)
    assert int(machine.regs[TERM_SLOTS]) == (1 << 30) * 2 // 1000 // PAGE_SIZE


def test_fill() -> None:
    """Every page the workloads may write gets non-zero, repeatable contents; the ledger's
    pages are left to the ledger."""
    memory = 40 * MIB
    machine = _machine("fill+ledger", memory)
    for n in range(1, 5):
        machine.step(0.001, n)
    first = machine.ram.copy()
    free = machine.workload.free_pages
    assert machine.ram.reshape(-1, PAGE_SIZE // 8)[:free].all(axis=1).all()
    assert int(machine.regs[TERM_SLOTS]) == 3  # 16 + 16 + 8 MiB, minus the ledger's
    machine.regs[TERM_SLOTS] = 1
    machine.ram[:] = first
    machine.ram[: free * PAGE_SIZE // 8] = 0
    for n in range(5, 9):
        machine.step(0.001, n)
    assert np.array_equal(machine.ram[: 16 * MIB // 8], np.zeros(16 * MIB // 8, np.uint64))
    assert np.array_equal(
        machine.ram[16 * MIB // 8 : free * 512], first[16 * MIB // 8 : free * 512]
    )
    assert check_ledger(read_ledger(machine.ram)).last == 8


def test_ledger_ring_wraps_and_reads_back() -> None:
    memory = 64 * 1024
    machine = _machine("ledger", memory)
    capacity = LedgerLayout.of(memory).capacity
    assert capacity == 256
    for n in range(1, 1001):
        machine.step(0.001, n * 1_000_000)
    records = read_ledger(machine.ram)
    assert records.shape == (capacity, 2)
    assert records[0].tolist() == [1001 - capacity, (1001 - capacity) * 1_000_000]
    assert records[-1].tolist() == [1000, 1000 * 1_000_000]
    verdict = check_ledger(records)
    assert verdict.intact and verdict.max_gap == pytest.approx(0.001)
    assert "intact" in str(verdict)


def test_ledger_damage_detected() -> None:
    memory = 64 * 1024
    machine = _machine("ledger", memory)
    for n in range(1, 101):
        machine.step(0.001, n * 1_000_000)
    ring = (LedgerLayout.of(memory).header_page + 1) * PAGE_SIZE // 8
    lost = machine.ram.copy()
    lost[ring + 50 * 4 : ring + 51 * 4] = 0  # record 50 never written
    assert check_ledger(read_ledger(lost)).lost == 1
    stale = machine.ram.copy()
    stale[ring + 60 * 4 : ring + 61 * 4] = stale[ring + 40 * 4 : ring + 41 * 4]  # reordered
    verdict = check_ledger(read_ledger(stale))
    assert verdict.reordered and not verdict.intact
    forged = machine.ram.copy()
    forged[ring + 70 * 4 + 1] += 1  # a timestamp that its check word does not match
    assert check_ledger(read_ledger(forged)).lost == 1


def test_ledger_gap_measures_a_stop() -> None:
    machine = _machine("ledger", 64 * 1024)
    times = [1, 2, 3, 20, 21]
    for t in times:
        machine.step(0.001, t * 1_000_000)
    assert check_ledger(read_ledger(machine.ram)).max_gap == pytest.approx(0.017)


def test_disk_ledger() -> None:
    disk = bytearray(64 * 1024)
    machine = _machine("ledger+uniform:1M", 1 * MIB, disk)
    for n in range(1, 3000):
        machine.step(0.001, n * 1000)
    on_disk = read_disk_ledger(disk)
    assert len(on_disk) == len(disk) // workloads.RECORD_SIZE
    assert check_ledger(on_disk).intact and on_disk[-1, 0] == 2999
    assert np.array_equal(on_disk[-100:], read_ledger(machine.ram)[-100:])


def test_no_ledger() -> None:
    with pytest.raises(LedgerError, match="no ledger header"):
        read_ledger(bytes(1 * MIB))
    assert len(read_disk_ledger(bytes(4096))) == 0
    assert check_ledger(np.zeros((0, 2), dtype=np.int64)).intact is False


def test_register_area_checked() -> None:
    machine = _machine("uniform:1M", 1 * MIB)
    other = Machine(parse("uniform:2M", 1 * MIB), machine.ram, machine.regs.copy())
    with pytest.raises(WorkloadError, match="another workload"):
        other.boot()
    machine.regs[0] = 12345
    with pytest.raises(WorkloadError, match="not one of this guest program's"):
        machine.boot()
