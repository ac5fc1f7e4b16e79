"""StagedImage and the importers feeding it: the exact bytes an import leaves, without HTTP.

Every finished image is read back with vhd.Image and, when it has no parent, with the real
``qemu-img convert``; the old file (and its chain) must stay byte-identical whatever happens.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import mmap
import os
import uuid as uuidlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import vhd
from migrate.formats.chunked import END, ChunkError, chunk_header
from migrate.state.store import Store
from migrate.storage import direct, snapshot, sr, staging
from migrate.storage.staging import StagedImage, StagingError
from migrate.transfer.decoders import ChunkedImporter, Importer, RawImporter, VhdImporter
from support import BLOCK, SIZE, MiB, make_dynamic, materialise, pattern, qemu_raw, read_all
from vhd import Image, StreamParser, VhdError
from vhd.format import DIFFERENCING, DYNAMIC, UNALLOCATED
from vhd.plan import allocated_blocks, plan_vhd

MakeImporter = Callable[[StagedImage], Importer]
Writes = Sequence[tuple[int, bytes]]

# Helpers


def applied(base: bytes, writes: Writes) -> bytes:
    """``base`` with ``writes`` applied in order."""
    out = bytearray(base)
    for offset, data in writes:
        out[offset : offset + len(data)] = data
    return bytes(out)


def chain_files(path: Path | str) -> list[str]:
    """The files of the image at ``path`` and of its parents."""
    with Image.open(str(path)) as image:
        return [member.path for member in image.chain()]


def digests(paths: Iterable[str]) -> dict[str, str]:
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def chunked(writes: Writes, *, end: bool = True) -> bytes:
    """A ``chunked=true`` body carrying ``writes`` in order (and the end marker)."""
    body = b"".join(chunk_header(offset, len(data)) + data for offset, data in writes)
    return body + (END if end else b"")


def stream_writes(stream: bytes) -> list[tuple[int, bytes]]:
    """What the parser says a VHD stream writes (its present sectors), in order."""
    parser = StreamParser()
    events = parser.feed(stream) + parser.close()
    return [(e.offset, bytes(e.data)) for e in events if isinstance(e, vhd.Data)]


def stream_of(path: Path, blocks: Sequence[int] | None = None, block_size: int = BLOCK) -> bytes:
    """A one-pass VHD stream (full bitmaps) of the image at ``path``: ``blocks`` of
    ``block_size`` or all its allocated ones."""
    with Image.open(str(path)) as image:
        chosen = allocated_blocks(image, block_size) if blocks is None else np.array(blocks)
        return materialise(plan_vhd(image, chosen, block_size=block_size))


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at ``cuts`` (empty pieces kept: an importer must take them too)."""
    bounds = [0, *sorted(min(max(c, 0), len(data)) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@contextlib.contextmanager
def staged_on(
    part: Path, old: Path | None, *, size: int | None = None, limit: int | None = None
) -> Iterator[StagedImage]:
    """A StagedImage at ``part`` over the image at ``old`` (None: a new VDI), closed after."""
    with contextlib.ExitStack() as stack:
        image = None if old is None else stack.enter_context(Image.open(str(old)))
        extra = {} if limit is None else {"limit": limit}
        staged = StagedImage(str(part), old=image, size=size, **extra)
        stack.callback(staged.close)
        yield staged


def aligned(data: bytes) -> memoryview:
    """``data`` in a page-aligned buffer, as the endpoint receives a body: pieces at aligned
    offsets then go ``O_DIRECT``, the others through the page cache."""
    buffer = mmap.mmap(-1, max(len(data), 1))
    buffer[: len(data)] = data
    return memoryview(buffer)[: len(data)]


def feed(importer: Importer, pieces: Iterable[bytes]) -> int | None:
    for piece in pieces:
        importer.feed(aligned(piece))
    return importer.close()


def run_import(
    make: MakeImporter,
    part: Path,
    pieces: Iterable[bytes],
    *,
    old: Path | None = None,
    size: int | None = None,
) -> int:
    """Import ``pieces`` over ``old`` into ``part`` and finish; the size finish returns. The
    old file and its chain must be byte-identical afterwards."""
    before = digests(chain_files(old)) if old is not None else {}
    with staged_on(part, old, size=size) as staged:
        result = staged.finish(feed(make(staged), pieces))
    assert digests(before) == before
    return result


def content(path: Path, qemu_img: str | None = None) -> bytes:
    """The finished image's disk as vhd.Image reads it; with ``qemu_img`` (images without a
    parent only) also structurally clean and identical to what qemu-img converts."""
    mine = read_all(path)
    if qemu_img is not None:
        assert vhd.check(str(path)) == []
        assert qemu_raw(qemu_img, path, path.with_name(path.name + ".raw")) == mine
    return mine


def allocated(path: Path) -> list[int]:
    """The blocks the image's own BAT allocates."""
    with Image.open(str(path), parents=False) as image:
        return np.flatnonzero(image.bat != UNALLOCATED).tolist()


# Sources, built once


@dataclass(frozen=True)
class Sources:
    old: Path
    """An 8 MiB dynamic image with data in every sector."""
    old_content: bytes
    streams: dict[str, bytes]
    """VHD streams: ``delta`` (partial bitmaps), ``full`` (full blocks, one all zeros),
    ``short`` (full blocks of a smaller disk ending mid-block), ``1m-halves`` (full 1 MiB
    blocks covering half a disk block each), ``fixed`` (a smaller fixed image), ``large``
    and ``large-fixed`` (twice the disk)."""
    disks: dict[str, bytes]
    """What the ``full``, ``short`` and ``fixed`` streams hold."""


def build_sources(tmp: Path) -> Sources:
    old = tmp / "old.vhd"
    make_dynamic(old, SIZE, [(0, pattern(SIZE, 1))])

    # a differencing image with partial bitmaps over a base with data, streamed as its bytes
    base, child = tmp / "base.vhd", tmp / "child.vhd"
    make_dynamic(base, SIZE, [(0, pattern(5 * MiB, 4))])
    vhd.create_differencing(str(child), str(base))
    with Image.open(str(child), writable=True) as image:
        image.write(7 * MiB, pattern(513, 5))
        image.write(1000, bytes(2000))
        image.write(BLOCK + 4096, pattern(4096, 6))

    # full blocks 0, 1 (all zeros) and 3; block 2 not in the stream
    full = tmp / "full.vhd"
    make_dynamic(full, SIZE, [(100, pattern(5000, 7)), (SIZE - 3000, pattern(3000, 8))])
    # a 5 MiB + 512 disk: its last block, cut by the size, is full yet ends mid-block
    short = tmp / "short.vhd"
    make_dynamic(short, 5 * MiB + 512, [(0, pattern(5 * MiB + 512, 9))])
    fixed = tmp / "fixed.vhd"
    vhd.create(str(fixed), 5 * MiB + 512, fixed=True)
    with Image.open(str(fixed), writable=True) as image:
        image.write(0, pattern(5 * MiB + 512, 12))
    large_fixed = tmp / "large-fixed.vhd"
    vhd.create(str(large_fixed), 2 * SIZE, fixed=True)
    large = tmp / "large.vhd"
    make_dynamic(large, 2 * SIZE, [(0, pattern(4096, 10))])

    streams = {
        "delta": child.read_bytes(),
        "full": stream_of(full, [0, 1, 3]),
        "short": stream_of(short),
        # full 1 MiB blocks 1 and 5: each the second half of a 2 MiB block of the disk
        "1m-halves": stream_of(full, [1, 5], block_size=MiB),
        "fixed": fixed.read_bytes(),
        "large": stream_of(large),
        "large-fixed": large_fixed.read_bytes(),
    }
    disks = {"full": read_all(full), "short": read_all(short), "fixed": read_all(fixed)}
    return Sources(old, read_all(old), streams, disks)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    return build_sources(tmp_path_factory.mktemp("staging-sources"))


def vhd_expected(sources: Sources, name: str) -> bytes:
    """The old disk with the present sectors of stream ``name`` written over it."""
    return applied(sources.old_content, stream_writes(sources.streams[name]))


# Raw imports


def test_raw_import_into_a_new_vdi(tmp_path: Path, qemu_img: str) -> None:
    length = 6 * BLOCK + 1000  # seven blocks, the last ending inside its second sector
    writes = [(BLOCK + 12345, pattern(777, 2)), (length - 300, pattern(300, 3))]
    body = applied(bytes(length), writes)
    part = tmp_path / "new.vhd"
    pieces = split(body, range(0, length, 4 * MiB))  # as the endpoint's 4 MiB buffer fills
    assert run_import(RawImporter, part, pieces) == 6 * BLOCK + 1024
    assert content(part, qemu_img) == body + bytes(24)
    assert allocated(part) == [1, 6]
    st = os.stat(part)
    assert st.st_blocks * 512 < st.st_size // 3, (st.st_blocks * 512, st.st_size)


@pytest.mark.parametrize(
    "body",
    [
        pattern(BLOCK + 3000, 2),  # ends inside a sector of block 1
        pattern(BLOCK, 2),  # ends on a block boundary
        pattern(1, 2),
        bytes(BLOCK + 3000),  # zeros: a whole block and a part of the next
    ],
    ids=["mid-block", "block-end", "one-byte", "zeros"],
)
def test_raw_import_shorter_than_the_vdi(
    sources: Sources, tmp_path: Path, qemu_img: str, body: bytes
) -> None:
    part = tmp_path / "new.vhd"
    assert run_import(RawImporter, part, [body], old=sources.old, size=SIZE) == SIZE
    got = content(part, qemu_img)
    assert got[: len(body)] == body
    assert got[len(body) :] == sources.old_content[len(body) :]


@pytest.mark.parametrize(
    ("fixed", "given"), [(1000, None), (None, 1000), (None, None)], ids=["vdi", "given", "written"]
)
def test_finish_returns_the_size_the_file_holds(
    tmp_path: Path, qemu_img: str, fixed: int | None, given: int | None
) -> None:
    """A size that is not a whole number of sectors is rounded up in the file: what finish
    returns (and the caller records) is the file's size, whoever chose the size."""
    part = tmp_path / "new.vhd"
    with staged_on(part, None, size=fixed) as staged:
        staged.write(990, aligned(b"0123456789"))
        size = staged.finish(given)
    assert size == 1024
    with Image.open(str(part)) as image:
        assert image.size == size
    assert content(part, qemu_img) == bytes(990) + b"0123456789" + bytes(24)


def direct_or_skip(staged: StagedImage) -> None:
    if staged._writer.direct_fd < 0:
        pytest.skip("the file system under the test's temporary directory refuses O_DIRECT")


def test_aligned_block_data_goes_direct(
    tmp_path: Path, qemu_img: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole blocks from an aligned buffer are written ``O_DIRECT``, unaligned pieces through
    the page cache, and where they overlap the later write wins."""
    to_direct: list[bool] = []
    pwrite = direct.pwrite_all

    def spy(fd: int, data: memoryview, offset: int) -> None:
        to_direct.append(fd == staged._writer.direct_fd)
        pwrite(fd, data, offset)

    monkeypatch.setattr(direct, "pwrite_all", spy)
    writes = [
        (0, pattern(2 * BLOCK, 1)),  # two whole blocks: direct
        (BLOCK + 100, pattern(1000, 2)),  # unaligned, inside block 1: page cache
        (BLOCK, pattern(4096, 3)),  # aligned, over the previous write: direct
        (BLOCK + 4000, pattern(200, 4)),  # unaligned again, across the direct write's end
    ]
    part = tmp_path / "new.vhd"
    with staged_on(part, None) as staged:
        direct_or_skip(staged)
        for offset, data in writes:
            staged.write(offset, aligned(data))
        written = list(to_direct)
        size = staged.finish()
    assert written == [True, True, False, True, False]
    assert content(part, qemu_img) == applied(bytes(size), writes)


def test_direct_write_refused_falls_back_to_the_page_cache(
    tmp_path: Path, qemu_img: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write the file system refuses ``O_DIRECT`` (here: an offset the disk cannot take,
    let through by a check made too lax) is written through the page cache, and so is
    everything after it."""
    monkeypatch.setattr(staging, "DIRECT_ALIGNMENT", 1)
    writes = [(0, pattern(BLOCK, 5)), (BLOCK + 3, pattern(BLOCK, 6)), (0, pattern(4096, 7))]
    part = tmp_path / "new.vhd"
    with staged_on(part, None) as staged:
        direct_or_skip(staged)
        for offset, data in writes:
            staged.write(offset, aligned(data))
        assert staged._writer.direct_fd == -1
        size = staged.finish()
    assert content(part, qemu_img) == applied(bytes(size), writes)


# Chunked imports


@pytest.mark.parametrize("onto", ["old", "new"])
def test_chunks_out_of_order(sources: Sources, tmp_path: Path, qemu_img: str, onto: str) -> None:
    writes = [
        (3 * BLOCK + 7, pattern(5000, 11)),
        (2 * BLOCK, bytes(BLOCK)),  # a whole block of zeros
        (100, pattern(300, 12)),
        (BLOCK - 50, pattern(200, 13)),  # across blocks 0 and 1
        (BLOCK - 100, bytes(60)),  # over part of the previous chunk
    ]
    part = tmp_path / "new.vhd"
    old, size = (sources.old, SIZE) if onto == "old" else (None, None)
    got_size = run_import(ChunkedImporter, part, [chunked(writes)], old=old, size=size)
    end = 3 * BLOCK + 7 + 5000
    assert got_size == (SIZE if onto == "old" else -(-end // 512) * 512)
    base = sources.old_content if onto == "old" else bytes(got_size)
    assert content(part, qemu_img) == applied(base, writes)
    # the zero block over old data needs no bytes: without a parent, a hole reads as zeros
    assert 2 not in allocated(part)


# Overlay on a snapshot's differencing child


def test_overlay_on_a_snapshot_child_keeps_its_parent(store: Store, sr_uuid: str) -> None:
    vdi = sr.create_vdi(store, sr_uuid, SIZE, "data")
    sr_dir = store.get("SR", sr_uuid)["path"]
    path = Path(sr.vdi_path(sr_dir, vdi))
    with Image.open(str(path), writable=True) as image:
        image.write(0, pattern(3 * BLOCK, 3))  # blocks 0-2, in what becomes the base
    snapshot.snapshot_vdi(store, vdi)
    with Image.open(str(path), writable=True) as image:
        image.write(BLOCK + 5000, pattern(3000, 4))  # a few sectors of the child
        image.write(3 * BLOCK + 100, pattern(700, 5))
    old_content = read_all(path)
    old_files = chain_files(path)
    assert len(old_files) == 2
    writes = [
        (2 * BLOCK, bytes(BLOCK)),  # zeros over a block only the base has
        (BLOCK + 100, pattern(1000, 6)),  # a part of a block both hold
    ]
    part = Path(sr.part_path(store, vdi))
    assert run_import(ChunkedImporter, part, [chunked(writes)], old=path, size=SIZE) == SIZE

    expected = applied(old_content, writes)
    with Image.open(str(part)) as new, Image.open(str(path)) as old:
        assert new.footer.disk_type == DIFFERENCING
        assert new.header is not None and old.header is not None
        assert new.header.parent_uuid == old.header.parent_uuid
        assert new.header.parent_name == old.header.parent_name
        assert new.header.parent_timestamp == old.header.parent_timestamp
        assert new.parent is not None and old.parent is not None
        assert os.path.samefile(new.parent.path, old.parent.path)
        assert new.footer.uuid != old.footer.uuid
        assert new.read(0, SIZE) == expected
    # block 0 only in the base reads through; the zeroed block 2 must hide the base's data
    assert allocated(part) == [1, 2, 3]
    assert expected[:BLOCK] == pattern(3 * BLOCK, 3)[:BLOCK]
    assert expected[2 * BLOCK : 3 * BLOCK] == bytes(BLOCK)

    base_digest = digests(old_files[1:])
    sr.publish_vdi(store, vdi)
    assert read_all(path) == expected
    assert digests(base_digest) == base_digest
    assert vhd.check(str(path)) == []


# VHD imports


def test_vhd_stream_with_partial_bitmaps_keeps_old_sectors(
    sources: Sources, tmp_path: Path, qemu_img: str
) -> None:
    part = tmp_path / "new.vhd"
    size = run_import(VhdImporter, part, [sources.streams["delta"]], old=sources.old, size=SIZE)
    assert size == SIZE
    expected = vhd_expected(sources, "delta")
    old = sources.old_content
    # the oracle itself: a few present sectors, the rest of each touched block old
    assert expected[7 * MiB : 7 * MiB + 513] == pattern(513, 5)
    assert expected[1000:3000] == bytes(2000)
    assert expected[7 * MiB + 1024 :] == old[7 * MiB + 1024 :]
    assert expected[4096 : BLOCK + 4096] == old[4096 : BLOCK + 4096]
    assert expected[2 * BLOCK : 7 * MiB] == old[2 * BLOCK : 7 * MiB]
    assert content(part, qemu_img) == expected


@pytest.mark.parametrize("name", ["full", "short", "1m-halves", "fixed"])
def test_vhd_stream_of_full_blocks_replaces_them(
    sources: Sources, tmp_path: Path, qemu_img: str, name: str
) -> None:
    part = tmp_path / "new.vhd"
    stream = sources.streams[name]
    pieces = split(stream, range(0, len(stream), MiB))  # data events start and end mid-block
    assert run_import(VhdImporter, part, pieces, old=sources.old, size=SIZE) == SIZE
    old = sources.old_content
    disk = sources.disks.get(name, sources.disks["full"])
    if name == "full":  # blocks 0, 1, 3 from the stream, zeros included; block 2 old
        expected = disk[: 2 * BLOCK] + old[2 * BLOCK : 3 * BLOCK] + disk[3 * BLOCK :]
    elif name == "1m-halves":  # 1-2 MiB and 5-6 MiB from the stream, the rest old
        halves = [(offset, disk[offset : offset + MiB]) for offset in (MiB, 5 * MiB)]
        expected = applied(old, halves)
    else:  # the stream's 5 MiB + 512, then the old content
        expected = disk + old[len(disk) :]
    assert content(part, qemu_img) == expected
    if name == "full":  # the all-zero full block over old data: no prefill, no bytes
        assert allocated(part) == [0, 2, 3]


@pytest.mark.parametrize("name", ["delta", "full", "short", "fixed"])
def test_vhd_stream_into_a_new_vdi(
    sources: Sources, tmp_path: Path, qemu_img: str, name: str
) -> None:
    stream = sources.streams[name]
    part = tmp_path / "new.vhd"
    got_size = run_import(VhdImporter, part, [stream])
    with Image.open(str(part)) as image:
        assert image.footer.disk_type == DYNAMIC and image.parent is None
    expected = applied(bytes(got_size), stream_writes(stream))
    assert got_size == (SIZE if name in ("delta", "full") else 5 * MiB + 512)
    assert content(part, qemu_img) == expected


# Refused imports leave nothing


def test_vhd_stream_larger_than_the_disk_is_refused_before_any_data(
    sources: Sources, tmp_path: Path
) -> None:
    part = tmp_path / "new.vhd"
    with staged_on(part, sources.old, size=SIZE) as staged:
        importer = VhdImporter(staged)
        with pytest.raises(StagingError, match=f"virtual size {2 * SIZE} .* {SIZE} bytes"):
            importer.feed(memoryview(sources.streams["large"]))
        assert staged.end == 0
        assert os.path.getsize(part) == 0


def test_vhd_stream_larger_than_a_new_vdi_limit_is_refused(
    sources: Sources, tmp_path: Path
) -> None:
    part = tmp_path / "new.vhd"
    with staged_on(part, None, limit=SIZE) as staged:
        with pytest.raises(StagingError, match=f"virtual size {2 * SIZE}"):
            VhdImporter(staged).feed(memoryview(sources.streams["large"]))
        assert staged.end == 0


@dataclass(frozen=True)
class Failure:
    make: MakeImporter
    pieces: Callable[[Sources], list[bytes]]
    error: type[Exception] | tuple[type[Exception], ...]
    match: str


FAILURES = {
    # a raw body straddling the end: refused whole, the message names where it starts
    "raw-across-the-end": Failure(
        RawImporter,
        lambda s: [pattern(SIZE - 10, 1), pattern(20, 2)],
        StagingError,
        f"data at {SIZE - 10} \\+ 20 bytes reaches past the disk's {SIZE} bytes",
    ),
    "raw-one-byte-too-many": Failure(
        RawImporter, lambda s: [pattern(SIZE, 1), b"x"], StagingError, f"data at {SIZE} "
    ),
    "chunk-past-the-end": Failure(
        ChunkedImporter,
        lambda s: [chunked([(BLOCK, pattern(100, 1)), (SIZE - 50, pattern(100, 2))])],
        StagingError,
        f"data at {SIZE - 50} \\+ 100 bytes",
    ),
    "chunked-without-end-marker": Failure(
        ChunkedImporter,
        lambda s: [chunked([(0, pattern(1000, 1))], end=False)],
        ChunkError,
        "without the end marker",
    ),
    "vhd-truncated": Failure(
        VhdImporter, lambda s: [s.streams["delta"][:-1000]], VhdError, "ends early"
    ),
    # a fixed image's size comes last: its data is refused where it passes the disk's end
    "fixed-too-large": Failure(
        VhdImporter,
        lambda s: [s.streams["large-fixed"]],
        (StagingError, VhdError),
        "past the disk|exceeds the limit",
    ),
    "vhd-too-large": Failure(
        VhdImporter, lambda s: [s.streams["large"]], StagingError, "virtual size"
    ),
}


@pytest.mark.parametrize("case", FAILURES.values(), ids=FAILURES.keys())
def test_failed_import_leaves_nothing(sources: Sources, tmp_path: Path, case: Failure) -> None:
    before = digests(chain_files(sources.old))
    part = tmp_path / "new.vhd"
    with staged_on(part, sources.old, size=SIZE) as staged:
        with pytest.raises(case.error, match=case.match):
            feed(case.make(staged), case.pieces(sources))
        staged.discard()
    assert not part.exists()
    assert digests(before) == before
    assert read_all(sources.old) == sources.old_content


# Any slicing gives the result of the whole


SLICING = settings(
    max_examples=20,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def cut_points(draw: st.DrawFn, length: int) -> list[int]:
    """Anywhere in the body, and in small steps over its first sectors (VHD metadata)."""
    anywhere = draw(st.lists(st.integers(0, length), max_size=12))
    early = draw(st.lists(st.integers(0, 4096), max_size=8))
    return anywhere + early


RAW_BODY = applied(
    bytes(2 * BLOCK + BLOCK // 2 + 700),
    [(BLOCK + 10, pattern(3000, 21)), (2 * BLOCK + 4096, pattern(100, 22))],
)
"""Block 0 zeros, block 1 partly data, block 2 ending mid-block: zeros, data, zeros."""


@pytest.fixture(scope="module")
def wholes(sources: Sources, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The disk each slicing case gives when its body is fed in one piece."""
    tmp = tmp_path_factory.mktemp("whole")
    out = {}
    for onto in (None, sources.old):
        part = tmp / f"raw-{onto is None}.vhd"
        run_import(RawImporter, part, [RAW_BODY], old=onto, size=None if onto is None else SIZE)
        out[f"raw-{onto is None}"] = read_all(part)
    for name in VHD_SLICED:
        part = tmp / f"{name}.vhd"
        run_import(VhdImporter, part, [sources.streams[name]], old=sources.old, size=SIZE)
        out[name] = read_all(part)
    return out


VHD_SLICED = ["delta", "full", "short", "1m-halves", "fixed"]


def sliced(
    sources: Sources, tmp: Path, make: MakeImporter, pieces: list[bytes], new: bool
) -> tuple[bytes, list[int]]:
    """The disk and the allocated blocks an import of ``pieces`` leaves (in a new VDI or over
    the old image)."""
    part = tmp / f"{uuidlib.uuid4()}.vhd"
    old, size = (None, None) if new else (sources.old, SIZE)
    try:
        run_import(make, part, pieces, old=old, size=size)
        return read_all(part), allocated(part)
    finally:
        part.unlink(missing_ok=True)


@pytest.mark.slow
@SLICING
@given(new=st.booleans(), data=st.data())
def test_raw_body_in_any_slicing(
    sources: Sources,
    wholes: dict[str, bytes],
    tmp_path_factory: pytest.TempPathFactory,
    new: bool,
    data: st.DataObject,
) -> None:
    cuts = data.draw(cut_points(len(RAW_BODY)), "cuts")
    tmp = tmp_path_factory.getbasetemp()
    got, _ = sliced(sources, tmp, RawImporter, split(RAW_BODY, cuts), new)
    assert got == wholes[f"raw-{new}"]


@pytest.mark.slow
@SLICING
@given(name=st.sampled_from(VHD_SLICED), data=st.data())
def test_vhd_stream_in_any_slicing(
    sources: Sources,
    wholes: dict[str, bytes],
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    data: st.DataObject,
) -> None:
    stream = sources.streams[name]
    cuts = data.draw(cut_points(len(stream)), "cuts")
    tmp = tmp_path_factory.getbasetemp()
    got, blocks = sliced(sources, tmp, VhdImporter, split(stream, cuts), False)
    assert got == wholes[name]
    assert got == vhd_expected(sources, name)
    if name == "full":  # however it arrives, the all-zero full block takes no old content
        assert blocks == [0, 2, 3]
