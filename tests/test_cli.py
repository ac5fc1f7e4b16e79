"""The ``xfer vhd`` command line: info, check, create, convert, sizes and error reporting."""

from __future__ import annotations

import os
import pty
import random
import struct
import subprocess
from pathlib import Path

import pytest

import vhd
from migrate.cli.units import parse_size
from support import (
    BAT_OFFSET,
    BLOCK,
    XFER,
    GiB,
    KiB,
    MiB,
    TiB,
    Xfer,
    bat_of,
    disk_content,
    info_json,
    make_dynamic,
    ok,
    patch,
)

# Helpers


def error_line(proc: subprocess.CompletedProcess[bytes], *fragments: str) -> str:
    """The one ``xfer: error:`` line of a failed run; asserts it holds every fragment."""
    err, out = proc.stderr.decode(), proc.stdout.decode()
    assert "Traceback" not in err
    assert proc.returncode == 1, (proc.returncode, err, out)
    lines = err.splitlines()
    assert len(lines) == 1, f"stderr {err!r}, stdout {out!r}"
    assert lines[0].startswith("xfer: error: "), err
    for fragment in fragments:
        assert fragment in lines[0]
    assert proc.stdout == b""
    return lines[0]


def usage_error(proc: subprocess.CompletedProcess[bytes], *fragments: str) -> str:
    """argparse's usage error: exit 2, usage then one ``error:`` line."""
    err = proc.stderr.decode()
    assert "Traceback" not in err
    assert proc.returncode == 2, (proc.returncode, err)
    lines = err.splitlines()
    assert lines[0].startswith("usage: xfer"), err
    assert ": error: " in lines[-1], err
    for fragment in fragments:
        assert fragment in lines[-1]
    assert proc.stdout == b""
    return lines[-1]


def info_rows(proc: subprocess.CompletedProcess[bytes]) -> dict[str, str]:
    """``xfer vhd info``'s text output as {key: value}: keys and values are separated by 2+
    spaces and values are aligned in one column."""
    rows: dict[str, str] = {}
    lines = ok(proc).stdout.decode().splitlines()
    column = {len(line) - len(line[line.index("  ") :].lstrip()) for line in lines}
    assert len(column) == 1, f"values are not aligned: {lines}"
    for line in lines:
        key, value = line.split("  ", 1)
        rows[key.strip()] = value.strip()
    return rows


@pytest.fixture
def four_blocks(tmp_path: Path) -> Path:
    """A 10 MiB dynamic image with blocks 0..3 allocated (block 4 empty)."""
    path = tmp_path / "four.vhd"
    make_dynamic(path, 10 * MiB, [(b * BLOCK + 5, b"x" * 10) for b in range(4)])
    return path


# info


def test_info_text_dynamic(tmp_path: Path, xfer: Xfer) -> None:
    path = tmp_path / "disk.vhd"
    ok(xfer("vhd", "create", str(path), "--size", "10M"))
    with vhd.Image.open(str(path), writable=True) as image:
        image.write(BLOCK * 3 + 1, b"data")
        uuid = str(image.footer.uuid)
    rows = info_rows(xfer("vhd", "info", str(path)))
    assert rows["type"] == "dynamic"
    assert rows["virtual size"] == "10485760 (10.0 MiB)"
    assert rows["uuid"] == uuid
    assert rows["block size"] == "2.0 MiB"
    assert rows["blocks"] == "1 of 5 allocated"
    assert rows["geometry"] == "301/4/17"
    assert rows["file size"].split()[0] == str(path.stat().st_size)
    assert "parent" not in rows


def test_info_json_dynamic(four_blocks: Path, xfer: Xfer) -> None:
    d = info_json(xfer, four_blocks)
    assert d["type"] == "dynamic"
    assert d["virtual_size"] == 10 * MiB
    assert d["block_size"] == BLOCK
    assert d["blocks"] == 5
    assert d["allocated_blocks"] == 4
    assert d["file_size"] == four_blocks.stat().st_size
    assert "parent" not in d


@pytest.mark.slow
def test_info_json_fixed(tmp_path: Path, xfer: Xfer) -> None:
    path = tmp_path / "fixed.vhd"
    ok(xfer("vhd", "create", str(path), "--size", "3M", "--fixed"))
    d = info_json(xfer, path)
    assert d["type"] == "fixed"
    assert d["virtual_size"] == 3 * MiB
    assert d["file_size"] == 3 * MiB + 512
    assert "block_size" not in d
    assert "parent" not in d
    rows = info_rows(xfer("vhd", "info", str(path)))
    assert rows["type"] == "fixed"
    assert rows["virtual size"] == "3145728 (3.0 MiB)"


@pytest.mark.slow
def test_info_differencing(tmp_path: Path, xfer: Xfer) -> None:
    base, child = tmp_path / "base.vhd", tmp_path / "child.vhd"
    make_dynamic(base, 6 * MiB, [(0, b"base")])
    ok(xfer("vhd", "create", str(child), "--parent", str(base)))
    with vhd.Image.open(str(child), writable=True) as image:
        image.write(BLOCK * 2 + 512, b"child" * 200)
    with vhd.Image.open(str(base)) as image:
        base_uuid = str(image.footer.uuid)

    d = info_json(xfer, child)
    assert d["type"] == "differencing"
    assert d["virtual_size"] == 6 * MiB
    assert d["block_size"] == BLOCK
    assert d["allocated_blocks"] == 1
    parent = d["parent"]
    assert isinstance(parent, dict)
    assert parent["uuid"] == base_uuid
    assert parent["name"] == "base.vhd"
    assert parent["locators"]
    assert d["chain"] == [str(child), str(base)]

    rows = info_rows(xfer("vhd", "info", str(child)))
    assert rows["type"] == "differencing"
    assert rows["parent"] == f"base.vhd ({base_uuid})"
    assert rows["chain"] == f"{child} -> {base}"
    assert rows["blocks"] == "1 of 3 allocated"


# check


@pytest.mark.parametrize("kind", ["dynamic", "fixed", "differencing"])
def test_check_clean(tmp_path: Path, xfer: Xfer, kind: str) -> None:
    path = tmp_path / "disk.vhd"
    if kind == "differencing":
        base = tmp_path / "base.vhd"
        make_dynamic(base, 4 * MiB, [(7, b"base")])
        ok(xfer("vhd", "create", str(path), "--parent", str(base)))
    else:
        ok(xfer("vhd", "create", str(path), "--size", "4M", *(["--fixed"] * (kind == "fixed"))))
    with vhd.Image.open(str(path), writable=True) as image:
        image.write(BLOCK - 1, b"across")
    proc = ok(xfer("vhd", "check", str(path)))
    assert proc.stdout.decode().splitlines() == [f"{path}: no problems found"]


def test_check_lists_every_problem_one_per_line(four_blocks: Path, xfer: Xfer) -> None:
    entries = bat_of(four_blocks)
    patch(four_blocks, BAT_OFFSET, struct.pack(">I", 0x00FFFFF0))  # block 0 past the end
    patch(four_blocks, BAT_OFFSET + 8, struct.pack(">I", entries[1] + 1))  # 2 overlaps 1
    patch(four_blocks, 100, b"\x55")  # the footer copy's checksum no longer matches
    proc = xfer("vhd", "check", str(four_blocks))
    assert proc.returncode == 1
    assert b"Traceback" not in proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 3, lines
    assert all(line.startswith(f"{four_blocks}, ") for line in lines)
    by_field = {line.split(", ")[1]: line for line in lines}
    assert set(by_field) == {"footer.checksum", "bat[0]", "bat[2]"}
    assert "offset 64:" in by_field["footer.checksum"]
    assert f"offset {BAT_OFFSET}:" in by_field["bat[0]"]
    assert f"offset {BAT_OFFSET + 8}:" in by_field["bat[2]"]
    assert "overlaps block 1" in by_field["bat[2]"]
    assert "no problems" not in proc.stdout.decode()
    # info stops at the first problem, as one error line naming it.
    error_line(xfer("vhd", "info", str(four_blocks)), "bat[0]", f"offset {BAT_OFFSET}")


def test_check_missing_file_is_an_error(tmp_path: Path, xfer: Xfer) -> None:
    missing = tmp_path / "missing.vhd"
    error_line(xfer("vhd", "check", str(missing)), str(missing), "No such file")


# create


def test_create_existing_file_is_an_error(tmp_path: Path, xfer: Xfer) -> None:
    path = tmp_path / "disk.vhd"
    path.write_bytes(b"precious")
    error_line(xfer("vhd", "create", str(path), "--size", "1M"), str(path), "exists")
    assert path.read_bytes() == b"precious"


def test_create_without_size(tmp_path: Path, xfer: Xfer) -> None:
    path = tmp_path / "disk.vhd"
    error_line(xfer("vhd", "create", str(path)), "--size")
    assert not path.exists()


@pytest.mark.parametrize("text", ["1.5G", "G", "-1", "10X", "1e3", "ten", "0x10", ""])
def test_create_bad_size_text_is_a_usage_error(tmp_path: Path, xfer: Xfer, text: str) -> None:
    path = tmp_path / "disk.vhd"
    usage_error(xfer("vhd", "create", str(path), "--size", text), "--size", repr(text))
    assert not path.exists()


@pytest.mark.parametrize(
    ("size", "fragment"),
    [
        ("1000", "multiple of 512"),
        ("513", "multiple of 512"),
        ("0", "outside"),
        ("3T", "2040 GiB"),
        ("1M1", None),
    ],
)
def test_create_bad_size_value(tmp_path: Path, xfer: Xfer, size: str, fragment: str | None) -> None:
    path = tmp_path / "disk.vhd"
    proc = xfer("vhd", "create", str(path), "--size", size, "--fixed")
    if fragment is None:
        usage_error(proc, "--size")
    else:
        error_line(proc, fragment)
    assert not path.exists()


@pytest.mark.slow
def test_create_differencing_errors(tmp_path: Path, xfer: Xfer) -> None:
    base = tmp_path / "base.vhd"
    make_dynamic(base, 4 * MiB, [])
    child = tmp_path / "child.vhd"
    error_line(xfer("vhd", "create", str(child), "--parent", str(base), "--fixed"), "--fixed")
    assert not child.exists()
    error_line(xfer("vhd", "create", str(child), "--parent", str(base), "--size", "8M"), "8388608")
    assert not child.exists()
    missing = tmp_path / "missing.vhd"
    error_line(xfer("vhd", "create", str(child), "--parent", str(missing)), str(missing))
    assert not child.exists()
    ok(xfer("vhd", "create", str(child), "--parent", str(base), "--size", "4M"))
    assert info_json(xfer, child)["type"] == "differencing"


@pytest.mark.parametrize(
    ("text", "size"),
    [("4K", 4 * KiB), ("4k", 4 * KiB), ("3M", 3 * MiB), ("2MiB", 2 * MiB), ("1g", GiB)],
)
def test_create_size_suffixes(tmp_path: Path, xfer: Xfer, text: str, size: int) -> None:
    path = tmp_path / "disk.vhd"
    ok(xfer("vhd", "create", str(path), "--size", text))
    assert info_json(xfer, path)["virtual_size"] == size


# parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("512", 512),
        ("123456789", 123456789),
        ("4K", 4 * KiB),
        ("4k", 4 * KiB),
        ("2M", 2 * MiB),
        ("2m", 2 * MiB),
        ("10G", 10 * GiB),
        ("10g", 10 * GiB),
        ("1T", TiB),
        ("2t", 2 * TiB),
        ("10MiB", 10 * MiB),
        ("10mib", 10 * MiB),
        ("10MIB", 10 * MiB),
        ("7GiB", 7 * GiB),
        ("3KB", 3 * KiB),
        ("512B", 512),
        (" 5M ", 5 * MiB),
        ("5 M", 5 * MiB),
        ("2040G", 2040 * GiB),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text", ["", " ", "1.5G", "1,5G", "G", "MiB", "-1", "+1", "10X", "10P", "1e3", "0x10", "5 MB B"]
)
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size") as e:
        parse_size(text)
    assert repr(text) in str(e.value)


# convert


@pytest.fixture
def content_vhd(tmp_path: Path) -> tuple[Path, bytes]:
    """A 5 MiB + 1 sector dynamic image with data in a few places, and its contents."""
    size = 5 * MiB + 512
    rng = random.Random(3)
    writes = [(17, rng.randbytes(1000)), (BLOCK - 4, rng.randbytes(8)), (size - 3, b"end")]
    path = tmp_path / "src.vhd"
    make_dynamic(path, size, writes)
    return path, disk_content(size, writes)


def test_convert_to_stdout_raw(content_vhd: tuple[Path, bytes], xfer: Xfer) -> None:
    src, content = content_vhd
    proc = ok(xfer("vhd", "convert", str(src), "-", "--to", "raw"))
    assert len(proc.stdout) == len(content)
    assert proc.stdout == content


def test_convert_to_stdout_vhd(content_vhd: tuple[Path, bytes], xfer: Xfer) -> None:
    src, content = content_vhd
    proc = ok(xfer("vhd", "convert", str(src), "-", "--to", "vhd"))
    disk = bytearray(len(content))
    parser = vhd.StreamParser()
    events = parser.feed(proc.stdout) + parser.close()
    for e in events:
        if isinstance(e, vhd.Data):
            disk[e.offset : e.offset + len(e.data)] = e.data
    assert isinstance(events[-1], vhd.End)
    assert events[-1].footer.current_size == len(content)
    assert disk == content


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("out.raw", "raw"), ("out.img", "raw"), ("out.bin", "raw"), ("out.vhd", "vhd"),
     ("OUT.VHD", "vhd"), ("out.Raw", "raw")],
)  # fmt: skip
def test_convert_format_from_extension(
    content_vhd: tuple[Path, bytes], xfer: Xfer, tmp_path: Path, name: str, fmt: str
) -> None:
    src, content = content_vhd
    dst = tmp_path / name
    ok(xfer("vhd", "convert", str(src), str(dst)))
    assert vhd.probe(str(dst)) == fmt
    if fmt == "raw":
        assert dst.read_bytes() == content
    else:
        with vhd.Image.open(str(dst)) as image:
            assert image.read(0, image.size) == content


def test_convert_explicit_to_overrides_extension(
    content_vhd: tuple[Path, bytes], xfer: Xfer, tmp_path: Path
) -> None:
    src, content = content_vhd
    dst = tmp_path / "really-raw.vhd"
    ok(xfer("vhd", "convert", str(src), str(dst), "--to", "raw"))
    assert dst.read_bytes() == content


@pytest.mark.parametrize("name", ["out.qcow2", "out", "out.vhdx"])
def test_convert_unknown_extension_is_an_error(
    content_vhd: tuple[Path, bytes], xfer: Xfer, tmp_path: Path, name: str
) -> None:
    src, content = content_vhd
    dst = tmp_path / name
    error_line(xfer("vhd", "convert", str(src), str(dst)), name, "--to")
    assert not dst.exists()
    assert os.listdir(tmp_path) == ["src.vhd"]
    ok(xfer("vhd", "convert", str(src), str(dst), "--to", "raw"))
    assert dst.read_bytes() == content


def test_convert_refuses_a_terminal(content_vhd: tuple[Path, bytes]) -> None:
    src, _ = content_vhd
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [*XFER, "vhd", "convert", str(src), "-", "--to", "raw"],
            stdout=slave,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    finally:
        os.close(slave)
        os.close(master)
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("xfer: error: ")
    assert "terminal" in lines[0]


# convert: the source's format


def damaged(path: Path, *places: int) -> Path:
    """``path`` with the checksum of the footers at ``places`` (byte offsets) zeroed."""
    for at in places:
        patch(path, at + 64, bytes(4))
    return path


def dynamic_image(path: Path) -> Path:
    """A 4 MiB dynamic image at ``path`` with a few bytes in block 1."""
    make_dynamic(path, 4 * MiB, [(BLOCK + 7, b"data")])
    return path


def footer_at_end(path: Path) -> int:
    return path.stat().st_size - 512


def test_probe_finds_vhds_and_raw_disks(tmp_path: Path) -> None:
    image = dynamic_image(tmp_path / "image.img")
    assert vhd.probe(str(image)) == "vhd"
    trailing_broken = dynamic_image(tmp_path / "trailing.img")
    damaged(trailing_broken, footer_at_end(trailing_broken))
    assert vhd.probe(str(trailing_broken)) == "vhd"  # the copy at 0 is valid
    copy_broken = dynamic_image(tmp_path / "copy.img")
    assert vhd.probe(str(damaged(copy_broken, 0))) == "vhd"  # the footer at the end is valid
    fixed = tmp_path / "fixed.img"
    vhd.create(str(fixed), 4 * MiB, fixed=True)
    assert vhd.probe(str(fixed)) == "vhd"
    for name, data in [
        ("random.img", random.Random(1).randbytes(3 * MiB + 17)),
        ("text.img", b"the word conectix, not where a VHD has it\n" * 100),
        ("tiny.img", b"x"),
        ("empty.img", b""),
    ]:
        (tmp_path / name).write_bytes(data)
        assert vhd.probe(str(tmp_path / name)) == "raw", name


def test_probe_refuses_what_looks_like_a_damaged_vhd(tmp_path: Path) -> None:
    both = dynamic_image(tmp_path / "both.img")
    end = footer_at_end(both)
    fixed = tmp_path / "fixed.img"
    vhd.create(str(fixed), 4 * MiB, fixed=True)
    header_only = tmp_path / "header.img"
    header_only.write_bytes(bytes(512) + b"cxsparse" + bytes(MiB))
    short = tmp_path / "short.img"
    short.write_bytes(b"conectix" + bytes(100))
    cases = [
        (damaged(both, 0, end), "footer.checksum", end + 64),
        (damaged(fixed, footer_at_end(fixed)), "footer.checksum", footer_at_end(fixed) + 64),
        (header_only, "header.cookie", 512),
        (short, "footer", 0),
    ]
    for path, field, offset in cases:
        with pytest.raises(vhd.VhdError) as info:
            vhd.probe(str(path))
        assert (info.value.field, info.value.offset, info.value.path) == (field, offset, str(path))
        assert "damaged VHD" in str(info.value) and "--from raw" in str(info.value)


@pytest.mark.slow
def test_convert_never_reads_a_damaged_vhd_as_raw(tmp_path: Path, xfer: Xfer) -> None:
    garbage = tmp_path / "garbage.vhd"
    garbage.write_bytes(random.Random(2).randbytes(3 * MiB))
    out = tmp_path / "out.raw"
    error_line(xfer("vhd", "convert", str(garbage), str(out)), str(garbage), "footer.cookie")
    broken = damaged(dynamic_image(tmp_path / "broken.img"), 0)
    damaged(broken, footer_at_end(broken))
    error_line(
        xfer("vhd", "convert", str(broken), str(out)), str(broken), "damaged VHD", "--from raw"
    )
    assert sorted(os.listdir(tmp_path)) == ["broken.img", "garbage.vhd"]
    # --from raw reads either as the bytes it holds
    for src in (garbage, broken):
        ok(xfer("vhd", "convert", "--from", "raw", str(src), str(out)))
        assert out.read_bytes() == src.read_bytes()


@pytest.mark.slow
def test_convert_from_overrides_name_and_content(
    content_vhd: tuple[Path, bytes], xfer: Xfer, tmp_path: Path
) -> None:
    src, content = content_vhd
    renamed = tmp_path / "disk.img"
    renamed.write_bytes(src.read_bytes())
    out = tmp_path / "out.raw"
    ok(xfer("vhd", "convert", "--from", "vhd", str(renamed), str(out)))
    assert out.read_bytes() == content
    ok(xfer("vhd", "convert", "--from", "raw", str(src), str(out)))
    assert out.read_bytes() == src.read_bytes()  # the image file itself, as a raw disk
    raw = tmp_path / "plain.img"
    raw.write_bytes(content)
    error_line(xfer("vhd", "convert", "--from", "vhd", str(raw), str(out)), str(raw), "footer")
    usage_error(xfer("vhd", "convert", "--from", "qcow2", str(raw), str(out)), "--from")
    help_text = ok(xfer("vhd", "convert", "--help")).stdout.decode()
    assert "--from" in help_text and "damaged VHD" in help_text


# Errors: one line on stderr, never a traceback


@pytest.mark.slow
def test_errors_are_one_line(content_vhd: tuple[Path, bytes], xfer: Xfer, tmp_path: Path) -> None:
    src, _ = content_vhd
    missing = tmp_path / "missing.vhd"
    error_line(xfer("vhd", "info", str(missing)), str(missing), "No such file")
    error_line(xfer("vhd", "convert", str(missing), str(tmp_path / "o.raw")), str(missing))
    error_line(xfer("vhd", "info", str(tmp_path)), str(tmp_path), "not a regular file")

    text = tmp_path / "notes.txt"
    text.write_bytes(b"not\na\nvhd\n" * 100)
    error_line(xfer("vhd", "info", str(text)), str(text), "footer.cookie", "offset")
    short = tmp_path / "short.vhd"
    short.write_bytes(b"conectix")
    error_line(xfer("vhd", "info", str(short)), str(short), "footer")

    error_line(xfer("vhd", "convert", str(src), str(src)), "also an input")
    error_line(
        xfer(
            "vhd", "convert", str(src), str(tmp_path / "o.raw"), "--base", str(src), "--to", "raw"
        ),
        "--base",
    )
    raw = tmp_path / "base.raw"
    raw.write_bytes(bytes(4096))
    error_line(
        xfer("vhd", "convert", str(src), str(tmp_path / "d.vhd"), "--base", str(raw)),
        str(raw),
    )
    assert not (tmp_path / "o.raw").exists()
    assert not (tmp_path / "d.vhd").exists()

    usage_error(xfer("vhd", "convert", str(src), "x", "--to", "qcow2"), "--to")
    usage_error(xfer("vhd", "frobnicate"))
    usage_error(xfer("vhd"))
    usage_error(xfer())
    usage_error(xfer("vhd", "info"))


def test_convert_into_missing_directory_names_the_destination(
    content_vhd: tuple[Path, bytes], xfer: Xfer, tmp_path: Path
) -> None:
    src, _ = content_vhd
    dst = tmp_path / "no" / "such" / "dir" / "out.raw"
    line = error_line(xfer("vhd", "convert", str(src), str(dst)), str(dst.parent))
    assert ".part" not in line, f"names an internal temporary file: {line}"
    assert not dst.parent.exists()


def test_convert_failure_keeps_the_existing_destination(
    tmp_path: Path, xfer: Xfer, four_blocks: Path
) -> None:
    dst = tmp_path / "keep.raw"
    dst.write_bytes(b"old contents")
    patch(four_blocks, BAT_OFFSET, struct.pack(">I", 0x00FFFFF0))
    error_line(xfer("vhd", "convert", str(four_blocks), str(dst)), "bat[0]")
    assert dst.read_bytes() == b"old contents"
    assert sorted(os.listdir(tmp_path)) == ["four.vhd", "keep.raw"]


@pytest.mark.parametrize("command", ["info", "check"])
def test_fifo_is_an_error_not_a_hang(tmp_path: Path, command: str) -> None:
    fifo = tmp_path / "pipe.vhd"
    os.mkfifo(fifo)
    try:
        proc = subprocess.run(
            [*XFER, "vhd", command, str(fifo)], capture_output=True, timeout=5, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"xfer vhd {command} on a FIFO with no writer hangs in open()")
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "Traceback" not in err
    assert err.startswith("xfer: error: ") or proc.stdout.decode().startswith(str(fifo))
