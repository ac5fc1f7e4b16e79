"""vhd.check: structural validation that reports every problem at once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import vhd
from support import (
    BAT_OFFSET,
    BLOCK,
    SIZE,
    MiB,
    Xfer,
    bat_of,
    make_dynamic,
    patch,
    qemu_convert_to_vpc,
    run,
    write_raw,
)
from vhd import Image, Problem, VhdError
from vhd.format import Footer, ParentLocator, checksum


def where(problems: list[Problem]) -> list[tuple[str | None, int | None]]:
    return [(p.field, p.offset) for p in problems]


def refooter(raw: bytes, **changes: object) -> bytes:
    return Footer.parse(raw).replace(**changes).build()


def dynamic_with_blocks(path: Path, blocks: list[int]) -> None:
    make_dynamic(path, SIZE, [(b * BLOCK + 100, b"data %d" % b) for b in blocks])


def set_bat(path: Path, entries: dict[int, int]) -> None:
    for b, value in entries.items():
        patch(path, BAT_OFFSET + 4 * b, value.to_bytes(4, "big"))


def three_problems(path: Path) -> list[int]:
    """A dynamic image with blocks 0 and 1 in which the footer copy's checksum no longer
    matches, block 1 overlaps block 0 and block 2 is past the end; returns the BAT before."""
    dynamic_with_blocks(path, [0, 1])
    bat = bat_of(path)
    patch(path, 100, b"\x01")
    set_bat(path, {1: bat[0] + 1, 2: 0x00FFFFFF})
    return bat


def empty_chain(tmp_path: Path) -> tuple[Path, Path]:
    """An empty dynamic ``base.vhd`` and a differencing ``child.vhd`` over it."""
    base = tmp_path / "base.vhd"
    vhd.create(str(base), SIZE)
    child = tmp_path / "child.vhd"
    vhd.create_differencing(str(child), str(base))
    return base, child


# Clean images


def test_clean_images_made_here(tmp_path: Path) -> None:
    dyn = tmp_path / "dyn.vhd"
    dynamic_with_blocks(dyn, [3, 0])
    fixed = tmp_path / "fixed.vhd"
    vhd.create(str(fixed), SIZE, fixed=True)
    with Image.open(str(fixed), writable=True) as image:
        image.write(1234, b"fixed")
    empty = tmp_path / "empty.vhd"
    vhd.create(str(empty), 3 * MiB + 512)
    child = tmp_path / "child.vhd"
    vhd.create_differencing(str(child), str(dyn))
    with Image.open(str(child), writable=True) as image:
        image.write(BLOCK + 7, b"child")
    grandchild = tmp_path / "grandchild.vhd"
    vhd.create_differencing(str(grandchild), str(child))
    for path in (dyn, fixed, empty, child, grandchild):
        assert vhd.check(str(path)) == [], path


@pytest.mark.slow
def test_clean_images_made_by_xfer(tmp_path: Path, xfer: Xfer) -> None:
    raw = tmp_path / "disk.raw"
    write_raw(raw, SIZE, [(3 * MiB, b"raw data" * 100)])
    steps = [
        ("vhd", "create", str(tmp_path / "x-dyn.vhd"), "--size", "8M"),
        ("vhd", "create", str(tmp_path / "x-fixed.vhd"), "--size", "8M", "--fixed"),
        ("vhd", "convert", str(raw), str(tmp_path / "x-conv.vhd")),
        ("vhd", "create", str(tmp_path / "x-child.vhd"), "--parent", str(tmp_path / "x-conv.vhd")),
        ("vhd", "convert", str(raw), str(tmp_path / "x-delta.vhd"), "--base",
         str(tmp_path / "x-dyn.vhd")),
    ]  # fmt: skip
    for args in steps:
        done = xfer(*args)
        assert done.returncode == 0, done.stderr.decode()
    for name in ("x-dyn", "x-fixed", "x-conv", "x-child", "x-delta"):
        path = tmp_path / f"{name}.vhd"
        assert vhd.check(str(path)) == [], name
        done = xfer("vhd", "check", str(path))
        assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    with Image.open(str(tmp_path / "x-delta.vhd")) as image:
        assert image.read(3 * MiB, 800) == b"raw data" * 100


def test_clean_images_made_by_qemu(tmp_path: Path, qemu_img: str) -> None:
    raw = tmp_path / "disk.raw"
    write_raw(raw, SIZE, [(5 * MiB, b"q" * 70_000)])
    made = []
    for sub in ("dynamic", "fixed"):
        created = tmp_path / f"q-{sub}.vhd"
        run(qemu_img, "create", "-q", "-f", "vpc", "-o", f"subformat={sub}", str(created), "8M")
        converted = tmp_path / f"qc-{sub}.vhd"
        qemu_convert_to_vpc(qemu_img, raw, converted, sub)
        made += [created, converted]
    forced = tmp_path / "q-forced.vhd"
    run(qemu_img, "create", "-q", "-f", "vpc", "-o", "force_size=on", str(forced), "10M")
    made.append(forced)
    for path in made:
        assert vhd.check(str(path)) == [], path


# Damage


def test_every_problem_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.vhd"
    first, second, _, _ = three_problems(path)
    assert second != first + 1
    problems = vhd.check(str(path))
    assert len(problems) >= 3
    found = where(problems)
    assert ("footer.checksum", 64) in found
    assert ("bat[1]", BAT_OFFSET + 4) in found
    assert ("bat[2]", BAT_OFFSET + 8) in found
    for p in problems:
        assert isinstance(p, VhdError)
        assert p.field is not None and p.offset is not None
        assert p.path == str(path)
        assert str(p).startswith(f"{path}, {p.field}, offset {p.offset}: ")


def test_many_misplaced_entries_are_summarised(tmp_path: Path) -> None:
    path = tmp_path / "bad.vhd"
    vhd.create(str(path), 200 * MiB)  # 100 BAT entries
    patch(path, BAT_OFFSET, b"".join((0x00F00000 + i).to_bytes(4, "big") for i in range(100)))
    problems = vhd.check(str(path))
    # 100 entries past the end, 99 overlapping their neighbour: at least 20 of each kind are
    # listed one by one, the rest counted in a last summary
    listed = [p for p in problems if p.field and p.field.startswith("bat[")]
    assert len([p for p in listed if "outside" in p.message]) >= 20
    assert len([p for p in listed if "overlaps" in p.message]) >= 20
    assert problems[-1].field == "bat"
    assert problems[-1].offset == BAT_OFFSET
    assert f"{100 + 99 - len(listed)} more" in problems[-1].message


def test_footer_copy_differs(tmp_path: Path) -> None:
    path = tmp_path / "d.vhd"
    dynamic_with_blocks(path, [1])
    copy = path.read_bytes()[:512]
    patch(path, 0, refooter(copy, timestamp=42))
    problems = vhd.check(str(path))
    assert where(problems) == [("footer copy", 0)]
    assert "differs" in problems[0].message


def test_trailing_footer_damaged_copy_intact(tmp_path: Path) -> None:
    path = tmp_path / "d.vhd"
    dynamic_with_blocks(path, [1])
    end = path.stat().st_size - 512
    patch(path, end, b"garbage!")
    assert where(vhd.check(str(path))) == [("footer.cookie", end)]


def test_trailing_footer_points_past_the_end(tmp_path: Path) -> None:
    path = tmp_path / "d.vhd"
    dynamic_with_blocks(path, [1])
    raw = path.read_bytes()
    end = len(raw) - 512
    patch(path, end, refooter(raw[end:], data_offset=512 * 100_000))
    problems = vhd.check(str(path))
    assert ("footer copy", 0) in where(problems)
    # the bad value is the trailing footer's, not the copy's (which still says 512)
    assert ("footer.data_offset", end + 16) in where(problems)


def test_both_footers_damaged(tmp_path: Path) -> None:
    path = tmp_path / "d.vhd"
    dynamic_with_blocks(path, [1])
    end = path.stat().st_size - 512
    patch(path, end + 60, (9).to_bytes(4, "big"))
    patch(path, 0, b"notavhd!")
    found = where(vhd.check(str(path)))
    assert ("footer.checksum", end + 64) in found
    assert ("footer.cookie", 0) in found


def test_header_problems_all_listed(tmp_path: Path) -> None:
    path = tmp_path / "d.vhd"
    vhd.create(str(path), SIZE)
    header = bytearray(path.read_bytes()[512:1536])
    header[32:36] = (3 * MiB).to_bytes(4, "big")
    header[8:16] = bytes(8)
    patch(path, 512, bytes(header))  # checksum left stale too
    assert where(vhd.check(str(path))) == [
        ("header.checksum", 512 + 36),
        ("header.data_offset", 512 + 8),
        ("header.block_size", 512 + 32),
    ]


def test_bat_too_short_for_the_disk(tmp_path: Path) -> None:
    path = tmp_path / "d.vhd"
    vhd.create(str(path), SIZE)
    header = bytearray(path.read_bytes()[512:1536])
    header[28:32] = (2).to_bytes(4, "big")
    header[36:40] = checksum(header, 36).to_bytes(4, "big")
    patch(path, 512, bytes(header))
    assert where(vhd.check(str(path))) == [("header.max_table_entries", 512 + 28)]


def test_locator_past_the_end(tmp_path: Path) -> None:
    _, child = empty_chain(tmp_path)
    with Image.open(str(child), parents=False) as image:
        assert image.header is not None
        header = image.header
        moved = ParentLocator(header.locators[1].platform_code, 512, 20, 10 * MiB)
        new = header.replace(locators=(header.locators[0], moved)).build()
    patch(child, 512, new)
    assert where(vhd.check(str(child))) == [("header.locators[1]", 10 * MiB)]


def test_missing_parent(tmp_path: Path) -> None:
    base, child = empty_chain(tmp_path)
    assert vhd.check(str(child)) == []
    os.unlink(base)
    problems = vhd.check(str(child))
    assert where(problems) == [("header.parent_name", 512 + 64)]
    assert problems[0].path == str(child)


def test_parent_with_another_uuid(tmp_path: Path) -> None:
    base, child = empty_chain(tmp_path)
    os.unlink(base)
    vhd.create(str(base), SIZE)
    assert where(vhd.check(str(child))) == [("header.parent_uuid", 512 + 40)]


def test_damaged_parent_is_reported(tmp_path: Path) -> None:
    base, child = empty_chain(tmp_path)
    patch(base, 512, b"xxxxxxxx")  # the parent's dynamic header cookie
    problems = vhd.check(str(child))
    assert where(problems) == [("header.cookie", 512)]
    assert problems[0].path == str(base)


def test_fixed_image_shorter_than_its_footer_says(tmp_path: Path) -> None:
    path = tmp_path / "f.vhd"
    vhd.create(str(path), SIZE, fixed=True)
    raw = path.read_bytes()
    path.write_bytes(raw[: 4 * MiB] + raw[-512:])
    assert where(vhd.check(str(path))) == [("footer.current_size", 4 * MiB + 48)]


def test_not_an_image(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"x" * 100)
    assert where(vhd.check(str(short))) == [("footer", None)]
    raw = tmp_path / "raw"
    raw.write_bytes(bytes(4096))
    found = where(vhd.check(str(raw)))
    assert ("footer.cookie", 3584) in found
    with pytest.raises(VhdError) as info:
        vhd.check(str(tmp_path / "nothing.vhd"))
    assert info.value.path == str(tmp_path / "nothing.vhd")


def test_check_command_lists_problems(tmp_path: Path, xfer: Xfer) -> None:
    path = tmp_path / "bad.vhd"
    three_problems(path)
    done = xfer("vhd", "check", str(path))
    assert done.returncode == 1
    lines = done.stdout.decode().splitlines()
    assert len(lines) == len(vhd.check(str(path))) >= 3
    assert any("bat[2]" in line for line in lines)


@pytest.mark.parametrize("blocks", [[0], [0, 1, 2, 3]])
def test_clean_after_writes(tmp_path: Path, blocks: list[int]) -> None:
    path = tmp_path / "d.vhd"
    dynamic_with_blocks(path, blocks)
    assert vhd.check(str(path)) == []
