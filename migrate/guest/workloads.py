"""What a guest runs: workload specs, their numpy steps, and the ledger's reader.

A spec is terms joined by ``+``: ``idle``; ``uniform:RATE`` (random pages over all RAM at
RATE bytes/s); ``hotset:RATE:SIZE`` (random pages within the first SIZE bytes); ``ledger``
(a sequence-numbered, CLOCK_REALTIME-stamped record per tick into a ring in RAM and, when the
guest has a disk, onto the disk); ``fill`` (pseudo-random contents over all RAM once, then
nothing: a guest without zero pages). Sizes and rates take binary K/M/G/T suffixes.

All of a workload's state lives in the guest's memory: the counters in the register area
(the "CPU context", :data:`REGS_SIZE` bytes), the ledger's ring in RAM. Each step reads its
counter, does work that depends only on it (so doing it twice is harmless), then commits the
new counter with one 8-byte store: a guest stopped at any instant and resumed elsewhere over
the same memory continues exactly. Pure: numpy only, no I/O (the disk is a callable).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

PAGE_SIZE = 4096
WORDS_PER_PAGE = PAGE_SIZE // 8
REGS_SIZE = PAGE_SIZE
"""Bytes of the register area."""

REGS_MAGIC = int.from_bytes(b"XFERREGS", "little")
LEDGER_MAGIC = int.from_bytes(b"XFERLEDG", "little")
VERSION = 1
RECORD_SIZE = 32
"""A ledger record: seq, CLOCK_REALTIME ns, check word, zero (four u64, little-endian)."""

MAX_RATE = 64 << 30
MAX_RING_PAGES = 512  # 65536 records: a minute at one record per millisecond
MAX_DISK_LEDGER = 2 << 20
TICK = 0.001
"""Seconds between steps of a workload that writes (the ledger's resolution)."""
IDLE_TICK = 0.05

TERM_SLOTS = 8
"""Register words 0..7 are magic, version, RAM pages, fingerprint; word ``TERM_SLOTS + i``
is the counter of term ``i`` (pages written so far, or the ledger's last seq)."""
_MAX_TERMS = REGS_SIZE // 8 - TERM_SLOTS
_U64 = np.uint64


class WorkloadError(ValueError):
    """A workload spec that cannot run; the message names the term and what is wrong."""


class LedgerError(ValueError):
    """Memory or a disk image that holds no ledger."""


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64 of a uint64 array (wrapping arithmetic): the workloads' hash."""
    x = x + _U64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def _check_words(seq: np.ndarray, time_ns: np.ndarray) -> np.ndarray:
    return _splitmix(seq ^ _splitmix(time_ns ^ _U64(LEDGER_MAGIC)))


_SIZE = re.compile(r"([0-9]+)([KMGT]?)", re.IGNORECASE)
_SHIFTS = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}


def parse_size(text: str) -> int:
    """``text`` as bytes: digits with an optional binary K/M/G/T suffix; ValueError if not."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size (digits with an optional K, M, G or T)")
    return int(match.group(1)) << _SHIFTS[match.group(2).upper()]


@dataclass(frozen=True)
class Uniform:
    """Writes random pages over RAM (the ledger's excepted) at ``rate`` bytes/s."""

    rate: int


@dataclass(frozen=True)
class Hotset:
    """Writes random pages within the first ``size`` bytes of RAM at ``rate`` bytes/s."""

    rate: int
    size: int


@dataclass(frozen=True)
class Ledger:
    """Appends a record per tick to the ring in RAM (and to the first disk)."""


@dataclass(frozen=True)
class Fill:
    """Fills the RAM the workloads may write with pseudo-random data, :data:`FILL_CHUNK`
    bytes a step, then does nothing."""


FILL_CHUNK = 16 << 20

Term = Uniform | Hotset | Ledger | Fill


@dataclass(frozen=True)
class LedgerLayout:
    """Where the ledger lives in RAM of a given size: a header page then the ring, at the
    end of RAM (the other workloads write below ``header_page``)."""

    header_page: int
    capacity: int
    """Records in the ring."""

    @classmethod
    def of(cls, memory: int) -> LedgerLayout:
        """The layout for ``memory`` bytes of RAM; LedgerError if it is too small."""
        pages = memory // PAGE_SIZE
        ring_pages = max(1, min(MAX_RING_PAGES, pages // 8))
        if pages < ring_pages + 2:
            raise LedgerError(f"{memory} bytes of RAM are too few for a ledger (3 pages at least)")
        return cls(pages - ring_pages - 1, ring_pages * PAGE_SIZE // RECORD_SIZE)


@dataclass(frozen=True)
class Workload:
    """A parsed spec for RAM of ``memory`` bytes: its terms, and the pages the page-writing
    terms may use (``free_pages``: all RAM but the ledger's)."""

    spec: str
    memory: int
    terms: tuple[Term, ...]
    free_pages: int
    ledger: LedgerLayout | None

    @property
    def tick(self) -> float:
        """Seconds between steps."""
        return TICK if self.terms else IDLE_TICK

    @property
    def fingerprint(self) -> int:
        """A digest of the spec and RAM size, kept in the register area so that a register
        area is never run under another workload."""
        return zlib.crc32(f"{self.spec}/{self.memory}".encode())

    @property
    def rate(self) -> int:
        """Bytes/s the page-writing terms write in total."""
        return sum(t.rate for t in self.terms if isinstance(t, Uniform | Hotset))


def parse(spec: str, memory: int) -> Workload:
    """The workload ``spec`` for RAM of ``memory`` bytes; WorkloadError naming the bad term."""
    if memory <= 0 or memory % PAGE_SIZE:
        raise WorkloadError(f"RAM of {memory} bytes is not a positive multiple of {PAGE_SIZE}")
    words = [t.strip() for t in spec.split("+")]
    if not spec.strip() or not all(words):
        raise WorkloadError(
            f"workload {spec!r}: an empty term (expected e.g. hotset:20M:64M+ledger)"
        )
    if len(words) > _MAX_TERMS:
        raise WorkloadError(f"workload {spec!r}: more than {_MAX_TERMS} terms")
    terms: list[Term] = []
    ledger = None
    for word in words:
        name, *args = word.split(":")
        name = name.lower()
        try:
            if name == "idle":
                _arity(args, 0, "idle")
            elif name == "ledger":
                _arity(args, 0, "ledger")
                if ledger is not None:
                    raise ValueError("ledger appears twice")
                ledger = LedgerLayout.of(memory)
                terms.append(Ledger())
            elif name == "fill":
                _arity(args, 0, "fill")
                terms.append(Fill())
            elif name == "uniform":
                _arity(args, 1, "uniform:RATE")
                terms.append(Uniform(_rate(args[0])))
            elif name == "hotset":
                _arity(args, 2, "hotset:RATE:SIZE")
                size = parse_size(args[1])
                if size < PAGE_SIZE:
                    raise ValueError(f"SIZE {args[1]} is less than a page ({PAGE_SIZE} bytes)")
                terms.append(Hotset(_rate(args[0]), size))
            else:
                raise ValueError(
                    "unknown workload (idle, uniform:RATE, hotset:RATE:SIZE, ledger, fill)"
                )
        except ValueError as e:
            raise WorkloadError(f"workload term {word!r}: {e}") from None
    free_pages = ledger.header_page if ledger else memory // PAGE_SIZE
    for term in terms:
        if isinstance(term, Hotset) and term.size // PAGE_SIZE > free_pages:
            raise WorkloadError(
                f"workload term 'hotset:...:{term.size}': SIZE exceeds the "
                f"{free_pages * PAGE_SIZE} bytes of RAM the workloads may write"
            )
    canonical = "+".join(words) if terms else "idle"
    return Workload(canonical, memory, tuple(terms), free_pages, ledger)


def _arity(args: list[str], count: int, form: str) -> None:
    if len(args) != count:
        raise ValueError(f"expected {form}")


def _rate(text: str) -> int:
    rate = parse_size(text)
    if not 0 < rate <= MAX_RATE:
        raise ValueError(f"RATE {text} is outside 1 byte/s .. 64G/s")
    return rate


DiskWrite = Callable[[int, bytes], None]
"""Writes bytes at an offset of the guest's first disk, returning once it is acknowledged."""


class Machine:
    """A workload running over RAM and a register area (uint64 views of the guest's
    mappings), with the first disk if there is one. Every method is a step of the
    read-counter, idempotent work, one-store commit discipline."""

    def __init__(
        self,
        workload: Workload,
        ram: np.ndarray,
        regs: np.ndarray,
        disk: DiskWrite | None = None,
        disk_size: int = 0,
    ) -> None:
        self.workload = workload
        self.ram = ram
        self.regs = regs
        self.disk = disk
        self.disk_capacity = min(disk_size, MAX_DISK_LEDGER) // RECORD_SIZE
        self._credit = [0.0] * len(workload.terms)

    def boot(self) -> None:
        """Initialise a zero register area (a new guest), or check that a loaded one belongs
        to this workload (a resumed one); WorkloadError if it does not."""
        regs = self.regs
        wl = self.workload
        if int(regs[0]) == 0:
            regs[TERM_SLOTS : TERM_SLOTS + len(wl.terms)] = 0
            regs[1:4] = (VERSION, wl.memory // PAGE_SIZE, wl.fingerprint)
            if wl.ledger is not None:
                at = wl.ledger.header_page * WORDS_PER_PAGE
                self.ram[at : at + 4] = (LEDGER_MAGIC, VERSION, wl.ledger.capacity, RECORD_SIZE)
            regs[0] = REGS_MAGIC
        elif int(regs[0]) != REGS_MAGIC or int(regs[1]) != VERSION:
            raise WorkloadError("the register area is not one of this guest program's")
        elif int(regs[2]) != wl.memory // PAGE_SIZE or int(regs[3]) != wl.fingerprint:
            raise WorkloadError(f"the register area belongs to another workload than {wl.spec!r}")

    def step(self, seconds: float, now_ns: int) -> None:
        """One tick: ``seconds`` since the previous (the page writers' pace), ``now_ns`` the
        ledger's timestamp."""
        for index, term in enumerate(self.workload.terms):
            slot = TERM_SLOTS + index
            if isinstance(term, Ledger):
                self._ledger(slot, now_ns)
                continue
            if isinstance(term, Fill):
                self._fill(slot)
                continue
            credit = self._credit[index] + term.rate * seconds
            count = int(credit // PAGE_SIZE)
            self._credit[index] = credit - count * PAGE_SIZE
            if count:
                pages = self.workload.free_pages
                if isinstance(term, Hotset):
                    pages = term.size // PAGE_SIZE
                self._write_pages(slot, count, pages)

    def _write_pages(self, slot: int, count: int, pages: int) -> None:
        first = int(self.regs[slot])
        page, word, value = page_writes(slot, first, count, pages)
        self.ram[page * _U64(WORDS_PER_PAGE) + word] = value
        self.regs[slot] = first + count

    def _fill(self, slot: int) -> None:
        chunk = int(self.regs[slot])
        words = FILL_CHUNK // 8
        end = self.workload.free_pages * WORDS_PER_PAGE
        if chunk * words >= end:
            return
        part = self.ram[chunk * words : min((chunk + 1) * words, end)]
        np.random.Generator(np.random.SFC64(chunk)).random(out=part.view(np.float64))
        self.regs[slot] = chunk + 1

    def _ledger(self, slot: int, now_ns: int) -> None:
        layout = self.workload.ledger
        assert layout is not None
        seq = int(self.regs[slot]) + 1
        record = np.array([seq, now_ns, 0, 0], dtype=np.uint64)
        record[2] = _check_words(record[:1], record[1:2])[0]
        ring = (layout.header_page + 1) * WORDS_PER_PAGE
        at = ring + (seq % layout.capacity) * 4
        self.ram[at : at + 4] = record
        if self.disk is not None and self.disk_capacity:
            self.disk((seq % self.disk_capacity) * RECORD_SIZE, record.tobytes())
        self.regs[slot] = seq


def page_writes(slot: int, first: int, count: int, pages: int) -> tuple[np.ndarray, ...]:
    """The writes number ``first`` .. ``first+count-1`` of the page writer in register slot
    ``slot`` over ``pages`` pages: (page, word in page, value) arrays. A pure function of
    the write numbers, which is what makes a step idempotent (and a test able to predict
    exactly which pages a guest wrote)."""
    k = np.arange(first, first + count, dtype=np.uint64)
    h = _splitmix(k ^ _U64(slot << 56))
    return h % _U64(pages), (h >> _U64(32)) % _U64(WORDS_PER_PAGE), k + _U64(1)


def _ring_records(ring: np.ndarray) -> np.ndarray:
    """(n, 2) int64 [seq, time_ns] of a ring's valid records, oldest first."""
    valid = (ring[:, 0] != 0) & (ring[:, 2] == _check_words(ring[:, 0], ring[:, 1]))
    if not valid.any():
        return np.zeros((0, 2), dtype=np.int64)
    newest = int(np.argmax(np.where(valid, ring[:, 0], _U64(0))))
    order = np.roll(np.arange(len(ring)), -(newest + 1))
    kept = order[valid[order]]
    return ring[kept, :2].astype(np.int64)


def read_ledger(memory: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """The ledger records in a guest's RAM image, oldest first: ``(n, 2)`` int64
    ``[seq, time_ns]``. LedgerError when the RAM holds no ledger."""
    words = np.frombuffer(memory, dtype=np.uint64)
    layout = LedgerLayout.of(len(words) * 8)
    at = layout.header_page * WORDS_PER_PAGE
    header = (LEDGER_MAGIC, VERSION, layout.capacity, RECORD_SIZE)
    if tuple(int(w) for w in words[at : at + 4]) != header:
        raise LedgerError("no ledger header in this RAM (the guest ran no ledger workload)")
    ring = words[at + WORDS_PER_PAGE : at + WORDS_PER_PAGE + layout.capacity * 4]
    return _ring_records(ring.reshape(-1, 4))


def read_disk_ledger(image: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """The ledger records on a guest's (raw) disk image, oldest first, as
    :func:`read_ledger` returns them."""
    data = np.frombuffer(image, dtype=np.uint8)
    capacity = min(len(data), MAX_DISK_LEDGER) // RECORD_SIZE
    words = data[: capacity * RECORD_SIZE]
    return _ring_records(words.view(np.uint64).reshape(-1, 4))


@dataclass(frozen=True)
class LedgerVerdict:
    """What a ledger shows: records, seq range, writes lost (seq gaps), records out of
    order (seq or time going back), and the largest gap between consecutive timestamps
    (the longest the guest was stopped, as it saw it)."""

    records: int
    first: int
    last: int
    lost: int
    reordered: int
    max_gap: float

    @property
    def intact(self) -> bool:
        """Records present, none lost, none reordered."""
        return self.records > 0 and self.lost == 0 and self.reordered == 0

    def __str__(self) -> str:
        state = "intact" if self.intact else "BROKEN"
        return (
            f"ledger {state}: {self.records} records, seq {self.first}..{self.last}, "
            f"{self.lost} lost, {self.reordered} reordered, largest gap "
            f"{self.max_gap * 1000:.1f} ms"
        )


def check_ledger(records: np.ndarray) -> LedgerVerdict:
    """The verdict on records as :func:`read_ledger` returns them."""
    if len(records) == 0:
        return LedgerVerdict(0, 0, 0, 0, 0, 0.0)
    seq = records[:, 0]
    times = records[:, 1]
    steps = np.diff(seq)
    gaps = np.diff(times)
    return LedgerVerdict(
        records=len(records),
        first=int(seq[0]),
        last=int(seq[-1]),
        lost=int(np.sum(steps[steps > 1] - 1)),
        reordered=int(np.sum(steps < 1) + np.sum(gaps < 0)),
        max_gap=float(gaps.max()) / 1e9 if len(gaps) else 0.0,
    )
