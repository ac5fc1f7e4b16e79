"""Malformed images: every way in (Image.open and read, check, StreamParser) either works or
ends in a VhdError naming the field or offset at fault; never another exception, a hang or a
memory blow-up.

Real images (xfer and qemu-img made, a few MiB) are mutated: random bytes in their metadata,
4-byte fields set to extreme values (checksums fixed up or not), truncation.
"""

from __future__ import annotations

import os
import random
import resource
import signal
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vhd
from support import BAT_OFFSET, BLOCK, KiB, MiB, Xfer, bat_of, make_dynamic, patch, run
from vhd import VhdError

TIME_LIMIT = 5.0
"""No single operation on one example may take longer (seconds)."""
MEMORY_LIMIT = 200 * MiB
"""Nor grow the process's peak memory by more."""
SMALL_DISK = 64 * MiB
"""Disks up to this size are read whole with Image.read; larger ones extent by extent."""

FOOTER_CHECKSUM, HEADER_CHECKSUM = 64, 36
EXTREMES = [0, 1, 0x1FF, 0x200, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]
SETTINGS = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

T = TypeVar("T")


# Samples: real images, made once per session


@dataclass(frozen=True)
class Sample:
    """A pristine image: its bytes and the byte ranges of its metadata."""

    name: str
    data: bytes
    kind: str
    regions: dict[str, tuple[int, int]]
    """Metadata regions by name: (start, length)."""
    header_at: int | None

    @property
    def footer_at(self) -> int:
        """Offset of the trailing footer."""
        return len(self.data) - 512


@dataclass(frozen=True)
class Corpus:
    """The samples, and the directory mutants are written to (next to the child's parent)."""

    folder: Path
    samples: dict[str, Sample]

    def mutant_path(self) -> Path:
        """Where a mutant goes: beside ``base.vhd`` so that a child finds its parent."""
        return self.folder / "mutant.vhd"


def _sample(name: str, path: Path) -> Sample:
    data = path.read_bytes()
    with vhd.Image.open(str(path), parents=False) as image:
        kind = image.footer.type_name
        regions = {"footer": (len(data) - 512, 512)}
        header_at = None
        if image.header is not None:
            h = image.header
            header_at = image.footer.data_offset
            regions["footer copy"] = (0, 512)
            regions["header"] = (header_at, 1024)
            regions["bat"] = (h.table_offset, h.table_size)
            entries = sorted(int(e) for e in image.bat if e != 0xFFFFFFFF)
            for i, sector in enumerate(entries[:2]):
                regions[f"bitmap {i}"] = (sector * 512, h.bitmap_size)
            for i, loc in enumerate(h.locators):
                regions[f"locator {i}"] = (loc.data_offset, loc.data_length)
    return Sample(name, data, kind, regions, header_at)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory, qemu_img: str, qemu_io: str) -> Corpus:
    """An xfer dynamic image, an xfer differencing image over it, qemu-img dynamic and fixed."""
    folder = tmp_path_factory.mktemp("corpus")
    rng = random.Random(2024)
    base, child = folder / "base.vhd", folder / "child.vhd"
    vhd.create(str(base), 5 * MiB)
    with vhd.Image.open(str(base), writable=True) as image:
        image.write(100, rng.randbytes(3000))
        image.write(BLOCK + 7, rng.randbytes(100))
    vhd.create_differencing(str(child), str(base))
    with vhd.Image.open(str(child), writable=True) as image:
        image.write(1000, rng.randbytes(700))  # partial sectors: a partial bitmap
        image.write(2 * BLOCK + 512, rng.randbytes(4096))

    qdyn, qfix = folder / "qemu-dynamic.vhd", folder / "qemu-fixed.vhd"
    run(qemu_img, "create", "-q", "-f", "vpc", str(qdyn), "4M", timeout=60)
    writes = ["-c", "write -P 0x5a 512 70000", "-c", "write -P 0xa5 3000000 5000"]
    run(qemu_io, "-f", "vpc", *writes, str(qdyn), timeout=60)
    run(qemu_img, "create", "-q", "-f", "vpc", "-o", "subformat=fixed", str(qfix), "3M", timeout=60)
    run(qemu_io, "-f", "vpc", "-c", "write -P 0x3c 1000 9000", str(qfix), timeout=60)

    samples = {
        name: _sample(name, path)
        for name, path in [
            ("xfer dynamic", base),
            ("xfer differencing", child),
            ("qemu dynamic", qdyn),
            ("qemu fixed", qfix),
        ]
    }
    assert samples["xfer differencing"].kind == "differencing"
    assert samples["qemu fixed"].kind == "fixed"
    assert all(len(s.data) < 8 * MiB for s in samples.values())
    return Corpus(folder, samples)


NAMES = ["xfer dynamic", "xfer differencing", "qemu dynamic", "qemu fixed"]


# Bounded operations


class _Hang(BaseException):
    """Raised from SIGALRM inside an operation that ran too long."""


def _max_rss() -> int:
    """Peak resident set size of this process in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KiB


@contextmanager
def _time_limit(seconds: float, what: str) -> Iterator[None]:
    """Bound one operation with SIGALRM, then give the timer back to the test's own timeout
    (pytest-timeout's, which uses the same signal) with what is left of it."""

    def on_alarm(signum: int, frame: object) -> None:
        raise _Hang(what)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _Hang:
        raise AssertionError(f"{what} took longer than {seconds} s") from None
    finally:
        left, _ = signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (seconds - left), 0.001))


def names_where(e: VhdError) -> bool:
    """Whether the error's text names the field or the offset at fault."""
    text = str(e)
    return (e.field is not None and e.field in text) or (
        e.offset is not None and f"offset {e.offset}" in text
    )


@dataclass
class Outcome:
    """What one operation did: its result, or the VhdError it raised."""

    result: Any = None
    error: VhdError | None = None


def bounded(op: Callable[[], T], what: str, limit: float = TIME_LIMIT) -> Outcome:
    """Run ``op`` under the time limit; VhdError is an outcome, any other exception fails."""
    before = _max_rss()
    outcome = Outcome()
    with _time_limit(limit, what):
        try:
            outcome.result = op()
        except VhdError as raised:
            outcome.error = raised
    grown = _max_rss() - before
    assert grown < MEMORY_LIMIT, f"{what} grew the peak memory by {grown >> 20} MiB"
    error = outcome.error
    if error is not None:
        assert names_where(error), f"{what}: {error!r} names neither a field nor an offset"
    return outcome


def read_disk(path: Path) -> bytes | None:
    """Open the image (and its chain) and read all of it: the bytes of a small disk, else
    None after walking every extent and reading every copy."""
    with vhd.Image.open(str(path)) as image:
        if image.size <= SMALL_DISK:
            out = bytearray()
            for offset in range(0, image.size, 4 * MiB):
                out += image.read(offset, min(4 * MiB, image.size - offset))
            assert len(out) == image.size
            return bytes(out)
        total = 0
        for e in image.extents(0, image.size):
            if isinstance(e, vhd.Copy):
                for at in range(0, e.length, 4 * MiB):
                    e.file.pread(min(4 * MiB, e.length - at), e.offset + at)
            total += e.length
        assert total == image.size
        return None


def run_check(path: Path) -> list[vhd.Problem]:
    """vhd.check, asserting every problem names its field or offset."""
    problems = vhd.check(str(path))
    for p in problems:
        assert isinstance(p, VhdError)
        assert names_where(p), f"check problem names neither a field nor an offset: {p}"
    return problems


def parse_stream(data: bytes, chunk: int) -> bytes | None:
    """Feed ``data`` to a StreamParser in ``chunk``-byte pieces, then close it; the disk the
    Data events describe when it is small, else None."""
    parser = vhd.StreamParser()
    events: list[Any] = []
    pieces: list[tuple[int, bytes]] = []

    def take(new: list[Any]) -> None:
        for e in new:
            if isinstance(e, vhd.Data):
                pieces.append((e.offset, bytes(e.data)))
            else:
                events.append(e)

    for start in range(0, len(data), chunk):
        take(parser.feed(data[start : start + chunk]))
    take(parser.close())
    assert isinstance(events[-1], vhd.End)
    size = events[-1].footer.current_size
    if size > SMALL_DISK:
        return None
    disk = bytearray(size)
    for offset, piece in pieces:
        assert offset + len(piece) <= size
        disk[offset : offset + len(piece)] = piece
    return bytes(disk)


@dataclass
class Report:
    """The three outcomes for one mutant."""

    opened: Outcome
    checked: Outcome
    streamed: Outcome


def exercise(corpus: Corpus, sample: Sample, mutant: bytes, chunk: int) -> Report:
    """Run every way in on ``mutant`` and check they agree with each other."""
    path = corpus.mutant_path()
    path.write_bytes(mutant)
    opened = bounded(lambda: read_disk(path), "Image.open and read")
    checked = bounded(lambda: run_check(path), "check")
    streamed = bounded(lambda: parse_stream(mutant, chunk), "StreamParser")

    if mutant == sample.data:
        assert opened.error is None and checked.result == [] and streamed.error is None
    # check finds every problem opening the image runs into, and a clean check opens.
    if opened.error is not None:
        assert checked.error is not None or checked.result, (
            f"Image.open fails ({opened.error}) but check finds nothing"
        )
    if checked.error is None and checked.result == []:
        assert opened.error is None, f"check is clean but Image.open fails: {opened.error}"
    # What the stream carries is what the image reads as (a child's stream lacks its parent).
    if (
        opened.error is None
        and streamed.error is None
        and opened.result is not None
        and streamed.result is not None
        and sample.kind != "differencing"
    ):
        assert streamed.result == opened.result
    return Report(opened, checked, streamed)


# Mutations


def fix_checksums(data: bytearray, sample: Sample) -> None:
    """Recompute the checksums of the footers and the header wherever their cookie is intact."""
    for at in {0, sample.footer_at}:
        if data[at : at + 8] == b"conectix":
            _fix(data, at, 512, FOOTER_CHECKSUM)
    header = sample.header_at
    if header is not None and data[header : header + 8] == b"cxsparse":
        _fix(data, header, 1024, HEADER_CHECKSUM)


def _fix(data: bytearray, at: int, size: int, field: int) -> None:
    data[at + field : at + field + 4] = bytes(4)
    total = sum(data[at : at + size])
    data[at + field : at + field + 4] = struct.pack(">I", ~total & 0xFFFFFFFF)


CHUNKS = st.sampled_from([512, 4099, 65536, 1 << 20, 1 << 30])


@pytest.mark.slow
@settings(SETTINGS, max_examples=80)
@given(data=st.data(), name=st.sampled_from(NAMES), fix=st.booleans(), chunk=CHUNKS)
def test_random_bytes_in_metadata(
    corpus: Corpus, data: st.DataObject, name: str, fix: bool, chunk: int
) -> None:
    sample = corpus.samples[name]
    region = data.draw(st.sampled_from(sorted(sample.regions)), label="region")
    start, length = sample.regions[region]
    mutant = bytearray(sample.data)
    count = data.draw(st.integers(1, 8), label="count")
    for _ in range(count):
        at = start + data.draw(st.integers(0, length - 1), label="position")
        mutant[at] = data.draw(st.integers(0, 255), label="value")
    if fix:
        fix_checksums(mutant, sample)
    exercise(corpus, sample, bytes(mutant), chunk)


def _field_offsets(sample: Sample) -> list[tuple[str, int]]:
    """Every 4-byte aligned field position: (structure, absolute offset)."""
    fields = [("footer", sample.footer_at + k) for k in range(0, 88, 4)]
    if sample.header_at is not None:
        fields += [("footer copy", k) for k in range(0, 88, 4)]
        fields += [("header", sample.header_at + k) for k in range(0, 768, 4)]
    return fields


@pytest.mark.slow
@settings(SETTINGS, max_examples=100)
@given(data=st.data(), name=st.sampled_from(NAMES), fix=st.booleans(), chunk=CHUNKS)
def test_extreme_field_values(
    corpus: Corpus, data: st.DataObject, name: str, fix: bool, chunk: int
) -> None:
    sample = corpus.samples[name]
    mutant = bytearray(sample.data)
    fields = _field_offsets(sample)
    for _ in range(data.draw(st.integers(1, 2), label="fields")):
        structure, at = data.draw(st.sampled_from(fields), label="field")
        value = struct.pack(">I", data.draw(st.sampled_from(EXTREMES), label="value"))
        mutant[at : at + 4] = value
        both = sample.header_at is not None and structure.startswith("footer")
        if both and data.draw(st.booleans(), label="both footers"):
            other = at - sample.footer_at if structure == "footer" else at + sample.footer_at
            mutant[other : other + 4] = value
    if fix:
        fix_checksums(mutant, sample)
    exercise(corpus, sample, bytes(mutant), chunk)


@settings(SETTINGS, max_examples=80)
@given(data=st.data(), name=st.sampled_from(NAMES), chunk=CHUNKS)
def test_truncated(corpus: Corpus, data: st.DataObject, name: str, chunk: int) -> None:
    sample = corpus.samples[name]
    # Cut anywhere, with extra weight on the start and on the metadata's edges.
    edges = sorted({0, 1, 511, 512, 513, 1535, 1536, 2047, 2048, len(sample.data) - 1})
    length = data.draw(
        st.one_of(st.integers(0, len(sample.data) - 1), st.sampled_from(edges)), label="length"
    )
    got = exercise(corpus, sample, sample.data[:length], chunk)
    # A cut stream always ends early (or misses its trailing footer), and check notices.
    assert got.streamed.error is not None
    assert got.checked.error is not None or got.checked.result


# Deterministic corruptions, each with the field it must name


def _dynamic(tmp: Path, name: str = "disk.vhd") -> Path:
    """A 10 MiB xfer dynamic image with blocks 0 and 1 holding data."""
    path = tmp / name
    make_dynamic(path, 10 * MiB, [(5, b"zero" * 100), (BLOCK + 5, b"one!" * 100)])
    return path


def _fixed(tmp: Path) -> Path:
    path = tmp / "fixed.vhd"
    vhd.create(str(path), 3 * MiB, fixed=True)
    with vhd.Image.open(str(path), writable=True) as image:
        image.write(1000, b"fixed" * 100)
    return path


def _patch_footers(path: Path, at: int, data: bytes) -> None:
    """Overwrite bytes at ``at`` inside the footer, in both copies."""
    patch(path, path.stat().st_size - 512 + at, data)
    patch(path, at, data)


def _refix(path: Path) -> None:
    """Recompute the checksums of both footers and the header."""
    data = bytearray(path.read_bytes())
    for at in (0, len(data) - 512):
        _fix(data, at, 512, FOOTER_CHECKSUM)
    if data[512:520] == b"cxsparse":
        _fix(data, 512, 1024, HEADER_CHECKSUM)
    path.write_bytes(data)


def _truncated_in_block(tmp: Path) -> Path:
    path = _dynamic(tmp)
    os.truncate(path, bat_of(path)[1] * 512 + 512 + MiB)
    return path


def _truncated_short(tmp: Path) -> Path:
    path = _dynamic(tmp)
    os.truncate(path, 300)
    return path


def _truncated_in_header(tmp: Path) -> Path:
    path = _dynamic(tmp)
    os.truncate(path, 1000)
    return path


def _fixed_bad_cookie(tmp: Path) -> Path:
    path = _fixed(tmp)
    patch(path, 3 * MiB, b"connetix")
    return path


def _dynamic_bad_cookies(tmp: Path) -> Path:
    path = _dynamic(tmp)
    _patch_footers(path, 0, b"CONECTIX")
    return path


def _footer_bad_checksum(tmp: Path) -> Path:
    path = _dynamic(tmp)
    _patch_footers(path, 300, b"\x01")  # reserved bytes: only the checksum catches it
    return path


def _header_bad_checksum(tmp: Path) -> Path:
    path = _dynamic(tmp)
    patch(path, 512 + 900, b"\x01")
    return path


def _bat_past_end(tmp: Path) -> Path:
    path = _dynamic(tmp)
    patch(path, BAT_OFFSET, struct.pack(">I", 0x00FFFFF0))
    return path


def _bat_overlap(tmp: Path) -> Path:
    path = _dynamic(tmp)
    patch(path, BAT_OFFSET + 4, struct.pack(">I", bat_of(path)[0] + 1))
    return path


def _absurd_table_entries(tmp: Path) -> Path:
    path = _dynamic(tmp)
    patch(path, 512 + 28, struct.pack(">I", 0xFFFFFFFF))
    _refix(path)
    return path


def _absurd_size_dynamic(tmp: Path) -> Path:
    path = _dynamic(tmp)
    _patch_footers(path, 48, struct.pack(">Q", 1 << 63))
    _refix(path)
    return path


def _absurd_size_fixed(tmp: Path) -> Path:
    path = _fixed(tmp)
    patch(path, 3 * MiB + 48, struct.pack(">Q", 1 << 63))
    _refix(path)
    return path


def _parent_loop(tmp: Path) -> Path:
    """child -> base.vhd -> child: base.vhd replaced by a child of child with base's uuid."""
    base = _dynamic(tmp, "base.vhd")
    child = tmp / "child.vhd"
    vhd.create_differencing(str(child), str(base))
    with vhd.Image.open(str(base)) as image:
        base_uuid = image.footer.uuid
    loop = tmp / "loop.vhd"
    vhd.create_differencing(str(loop), str(child), uuid=base_uuid)
    os.replace(loop, base)
    return child


def _missing_parent(tmp: Path) -> Path:
    base = _dynamic(tmp, "base.vhd")
    child = tmp / "child.vhd"
    vhd.create_differencing(str(child), str(base))
    base.unlink()
    return child


@dataclass(frozen=True)
class Case:
    """A corruption, the field Image.open must name and the offset, when it has one."""

    make: Callable[[Path], Path]
    field: str
    offset: Callable[[Path], int] | None = None
    words: str = ""
    streams: bool = True
    """Whether StreamParser must reject the bytes too (not for parent problems)."""


def _end(minus: int) -> Callable[[Path], int]:
    return lambda path: path.stat().st_size - minus


CASES = {
    "truncated in a block": Case(_truncated_in_block, "bat[1]", lambda _: 1540, "outside"),
    "truncated to 300 bytes": Case(_truncated_short, "footer", None, "too short"),
    "truncated in the header": Case(_truncated_in_header, "footer.data_offset", None, "past"),
    "fixed, wrong cookie": Case(_fixed_bad_cookie, "footer.cookie", _end(512), "connetix"),
    "dynamic, wrong cookies": Case(_dynamic_bad_cookies, "footer.cookie", _end(512)),
    "bad footer checksum": Case(_footer_bad_checksum, "footer.checksum", _end(512 - 64)),
    "bad header checksum": Case(_header_bad_checksum, "header.checksum", lambda _: 548),
    "BAT entry past the end": Case(_bat_past_end, "bat[0]", lambda _: 1536, "outside"),
    "BAT entries overlapping": Case(_bat_overlap, "bat[1]", lambda _: 1540, "overlaps block 0"),
    "absurd max_table_entries": Case(
        _absurd_table_entries, "header.max_table_entries", lambda _: 540, "4294967295"
    ),
    "absurd current_size, dynamic": Case(
        _absurd_size_dynamic, "footer.current_size", _end(512 - 48), "2040 GiB"
    ),
    "absurd current_size, fixed": Case(
        _absurd_size_fixed, "footer.current_size", _end(512 - 48), "2040 GiB"
    ),
    "parent loop": Case(_parent_loop, "header.parent_name", None, "loop", streams=False),
    "missing parent": Case(
        _missing_parent, "header.parent_name", lambda _: 512 + 64, "not found", streams=False
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_corruption_is_named(tmp_path: Path, case: Case) -> None:
    path = case.make(tmp_path)
    with pytest.raises(VhdError) as raised:
        read_disk(path)
    e = raised.value
    assert e.field == case.field, str(e)
    assert case.field in str(e)
    assert case.words in str(e)
    if case.offset is not None:
        assert e.offset == case.offset(path), str(e)
        assert f"offset {e.offset}" in str(e)

    try:
        problems = run_check(path)
    except VhdError as err:
        problems = [err]
    assert problems, "check finds nothing"
    assert case.field in {p.field for p in problems}, [str(p) for p in problems]

    data = path.read_bytes()
    if case.streams:
        with pytest.raises(VhdError) as streamed:
            parse_stream(data, 65536)
        assert names_where(streamed.value), str(streamed.value)
    else:
        assert parse_stream(data, 65536) is not None  # the stream alone is well formed


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_corruption_cli(tmp_path: Path, xfer: Xfer, case: Case) -> None:
    path = case.make(tmp_path)
    info = xfer("vhd", "info", str(path))
    err = info.stderr.decode()
    assert info.returncode == 1, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("xfer: error: ")
    assert case.field in lines[0]
    assert info.stdout == b""

    checked = xfer("vhd", "check", str(path))
    out, err = checked.stdout.decode(), checked.stderr.decode()
    assert checked.returncode == 1, out + err
    assert "Traceback" not in err
    if err:
        assert len(err.splitlines()) == 1 and err.startswith("xfer: error: "), err
    listed = out.splitlines() + err.splitlines()
    assert any(case.field in line for line in listed), listed
    assert "no problems" not in out


def test_trailing_footer_damage_is_tolerated_but_checked(tmp_path: Path) -> None:
    """A dynamic image whose trailing footer is bad opens through its copy; check says why."""
    path = _dynamic(tmp_path)
    content = read_disk(path)
    size = path.stat().st_size
    patch(path, size - 512 + 48, struct.pack(">Q", 1 << 63))
    data = bytearray(path.read_bytes())
    _fix(data, size - 512, 512, FOOTER_CHECKSUM)
    path.write_bytes(data)
    assert read_disk(path) == content
    problems = run_check(path)
    assert [(p.field, p.offset) for p in problems] == [("footer.current_size", size - 512 + 48)]
    with pytest.raises(VhdError) as raised:
        parse_stream(bytes(data), 4096)
    assert raised.value.field == "footer.current_size"


def test_harness_catches_hangs_and_foreign_errors() -> None:
    """The bounds above can fail: a hang, another exception, an error naming nothing."""

    def spin() -> None:
        while True:
            pass

    def unnamed() -> None:
        raise VhdError("something is wrong")

    def named() -> None:
        raise VhdError("bad", field="header.cookie", offset=512)

    with pytest.raises(AssertionError, match="took longer"):
        bounded(spin, "spin", limit=0.05)
    with pytest.raises(ValueError):
        bounded(lambda: int("x"), "int")
    with pytest.raises(AssertionError, match="names neither"):
        bounded(unnamed, "unnamed")
    error = bounded(named, "named").error
    assert error is not None and error.field == "header.cookie"
    assert bounded(lambda: 42, "answer").result == 42


def test_samples_are_clean(corpus: Corpus) -> None:
    """The pristine samples open, check clean and stream to the same disk they read as."""
    for name in NAMES:
        sample = corpus.samples[name]
        got = exercise(corpus, sample, sample.data, 4099)
        assert got.opened.error is None and got.checked.result == []
        assert got.streamed.error is None
        assert got.opened.result is not None and any(got.opened.result)
