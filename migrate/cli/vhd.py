"""``xfer vhd``: inspect, check, create and convert VHD images."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from migrate.cli.units import format_size
from vhd import Image, check, convert, create, create_differencing
from vhd.errors import VhdError
from vhd.format import DIFFERENCING, unix_time

_EXTENSIONS = {".vhd": "vhd", ".raw": "raw", ".img": "raw", ".bin": "raw"}


def describe(image: Image) -> dict[str, Any]:
    """The metadata ``xfer vhd info`` shows, as plain JSON-ready values."""
    f = image.footer
    out: dict[str, Any] = {
        "file": image.path,
        "type": f.type_name,
        "virtual_size": f.current_size,
        "uuid": str(f.uuid),
        "creator": f"{f.creator_app.decode('latin-1').rstrip(chr(0))} "
        f"{f.creator_version >> 16}.{f.creator_version & 0xFFFF}",
        "timestamp": unix_time(f.timestamp),
        "geometry": {"cylinders": f.geometry[0], "heads": f.geometry[1], "sectors": f.geometry[2]},
        "file_size": image.file.size,
    }
    h = image.header
    if h is not None:
        out["block_size"] = h.block_size
        out["blocks"] = h.max_table_entries
        out["allocated_blocks"] = int(image.layers(h.block_size)[0][1].size)
    if f.disk_type == DIFFERENCING and h is not None:
        out["parent"] = {
            "uuid": str(h.parent_uuid),
            "name": h.parent_name,
            "locators": [loc.platform_name for loc in h.locators],
        }
        out["chain"] = [img.path for img in image.chain()]
    return out


def info(args: argparse.Namespace) -> int:
    """``xfer vhd info FILE [--json]``."""
    with Image.open(args.file) as image:
        d = describe(image)
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    rows = [
        ("type", d["type"]),
        ("virtual size", f"{d['virtual_size']} ({format_size(d['virtual_size'])})"),
        ("uuid", d["uuid"]),
        ("creator", d["creator"]),
        ("geometry", "{cylinders}/{heads}/{sectors}".format(**d["geometry"])),
        ("file size", f"{d['file_size']} ({format_size(d['file_size'])})"),
    ]
    if "block_size" in d:
        rows.append(("block size", format_size(d["block_size"])))
        rows.append(("blocks", f"{d['allocated_blocks']} of {d['blocks']} allocated"))
    if "parent" in d:
        rows.append(("parent", f"{d['parent']['name']} ({d['parent']['uuid']})"))
        rows.append(("chain", " -> ".join(d["chain"])))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def check_command(args: argparse.Namespace) -> int:
    """``xfer vhd check FILE``: exit 0 when clean, 1 with every problem listed."""
    problems = check(args.file)
    for p in problems:
        print(p)
    if not problems:
        print(f"{args.file}: no problems found")
    return 1 if problems else 0


def create_command(args: argparse.Namespace) -> int:
    """``xfer vhd create FILE --size SIZE [--fixed] [--parent PARENT]``."""
    if args.parent:
        if args.fixed:
            raise VhdError("--fixed and --parent exclude each other")
        create_differencing(args.file, args.parent)
        if args.size is not None:
            with Image.open(args.file) as image:
                if image.size != args.size:
                    os.unlink(args.file)
                    raise VhdError(f"--size {args.size} differs from the parent's {image.size}")
        return 0
    if args.size is None:
        raise VhdError("--size is required without --parent")
    create(args.file, args.size, fixed=args.fixed)
    return 0


def convert_command(args: argparse.Namespace) -> int:
    """``xfer vhd convert SRC DST [--from raw|vhd] [--to raw|vhd] [--base BASE]``."""
    to = args.to or ("vhd" if args.base else _EXTENSIONS.get(os.path.splitext(args.dst)[1].lower()))
    if to is None:
        raise VhdError(f"cannot tell the output format from {args.dst!r}: pass --to raw or vhd")
    if args.dst == "-" and sys.stdout.isatty():
        raise VhdError("refusing to write a disk image to a terminal")
    sys.stdout.flush()
    convert(args.src, args.dst, to, base=args.base, src_format=args.src_format)
    return 0
