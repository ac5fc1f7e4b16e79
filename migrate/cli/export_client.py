"""``xfer export``: a VDI's contents from the host's ``GET /export_raw_vdi``, raw or VHD (a
delta with ``--base``), into a file or standard output.

The body is gathered into batches of :data:`BATCH`, each written and hashed in two worker
threads at once while the next one arrives. A file is written through
:class:`~migrate.cli.diskfile.DiskFile` (``O_DIRECT``, all-zero stretches left as holes) as
``FILE.part``, renamed into place once the whole body arrived and is synced; a raw export that
was cut keeps its ``.part`` so that ``--resume`` asks only for the rest (``Range``). The last
line is ``sha256 HEX  FILE`` of the whole file (on stderr when the disk went to stdout).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import os
import re
import sys
from typing import Any, Protocol

import httpx
import trio

from migrate.cli.diskfile import DiskFile
from migrate.cli.http_client import (
    ClientError,
    Target,
    failure,
    http_errors,
    reason,
    run_client,
)
from migrate.cli.progress import progress_bar
from migrate.formats.xapi import EXPORT_PATH
from migrate.nursery import open_nursery
from vhd.file import write_all

BATCH = 8 << 20
"""Bytes gathered off the connection before they are written and hashed."""
_MAX_PIECES = 512
"""At most this many pieces in one batch: one ``writev`` (IOV_MAX is 1024 on Linux)."""
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_UNSATISFIED_RANGE = re.compile(r"(?:bytes )?\*/(\d+)")  # the unit is required; tolerated


def export_command(args: argparse.Namespace) -> int:
    """``xfer export --host HOST --vdi UUID [--format F] [--base UUID] [-o FILE] [--resume]``."""

    return run_client(args, functools.partial(export, args=args), basic_auth=True)


async def export(client: httpx.AsyncClient, target: Target, args: argparse.Namespace) -> int:
    """Export ``args.vdi`` of the target host as the options say; the exit status."""
    url = target.host.url(EXPORT_PATH)
    output: str = args.output
    if args.base and args.format != "vhd":
        raise ValueError("--base needs --format vhd")
    if args.resume and output == "-":
        raise ValueError("--resume needs -o FILE")
    if args.resume and args.format != "raw":
        raise ValueError("--resume works on raw exports only")
    if output == "-" and os.isatty(sys.stdout.fileno()):
        raise ValueError("refusing to write a disk to a terminal: give -o FILE or redirect")
    params = {"vdi": args.vdi, "format": args.format}
    if args.base:
        params["base"] = args.base

    part = f"{output}.part"
    hasher = hashlib.sha256()
    offset = 0
    if output == "-":
        fd = sys.stdout.fileno()
        sys.stdout.flush()
    elif args.resume:
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        offset = await trio.to_thread.run_sync(_hash_file, fd, hasher)
    else:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    keep = bool(args.resume)  # a .part to resume from is never removed
    try:
        headers = {"range": f"bytes={offset}-"} if offset else {}
        async with (
            http_errors(url),
            client.stream("GET", url, params=params, headers=headers) as response,
        ):
            start, total = await _export_span(response, offset, url)
            if start == 0 and offset:
                # the host sent the whole disk rather than the rest: start the file over
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                hasher, offset = hashlib.sha256(), 0
            keep = output != "-" and args.format == "raw"
            try:
                moved = 0
                if total is None or offset < total:
                    # holes only in a file of ours, whose length is set at the end
                    sink = SequentialSink(fd) if output == "-" else DiskFile(part, fd, offset)
                    moved = await receive_body(response, sink, hasher, total, offset, args.quiet)
                if total is not None and offset + moved != total:
                    raise httpx.RemoteProtocolError(
                        f"the body ended after {offset + moved} of {total} bytes"
                    )
            except httpx.HTTPError as e:
                text = f"{url}: the transfer was cut ({reason(e)})"
                if keep:
                    text += f"; {part} is kept: run again with --resume for the rest"
                raise ClientError(text) from None
        if output != "-":
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(part, output)
    except BaseException:
        if output != "-" and not keep:
            with contextlib.suppress(OSError):
                os.unlink(part)
        raise
    finally:
        if fd >= 0 and output != "-":
            os.close(fd)
    print(f"sha256 {hasher.hexdigest()}  {output}", file=sys.stderr if output == "-" else None)
    return 0


async def _export_span(response: httpx.Response, offset: int, url: str) -> tuple[int, int | None]:
    """Where the body starts in the disk and the disk's whole length (None if unknown);
    ClientError with the host's line when the answer is not the body asked for."""
    status = response.status_code
    length = response.headers.get("content-length")
    if status == 200:
        return 0, int(length) if length is not None else None
    if status == 206 and offset:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
        if not match or int(match.group(1)) != offset:
            raise ClientError(f"{url}: the host answered a range the client did not ask for")
        return offset, int(match.group(3))
    if status == 416 and offset:
        match = _UNSATISFIED_RANGE.fullmatch(response.headers.get("content-range", "").strip())
        if match and int(match.group(1)) == offset:
            return offset, offset  # the partial file already holds the whole disk
        if match and int(match.group(1)) < offset:
            raise ClientError(
                f"{url}: the partial file is longer than the disk ({offset} > {match.group(1)})"
            )
    await response.aread()
    raise failure(response)


class Sink(Protocol):
    """Where a body's bytes go: :class:`~migrate.cli.diskfile.DiskFile` or
    :class:`SequentialSink`."""

    def write(self, pieces: list[bytes]) -> None: ...

    def finish(self) -> None: ...


class SequentialSink:
    """Standard output, or a file written from its start: every byte in order, zeros
    included."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, pieces: list[bytes]) -> None:
        """Write ``pieces`` with one ``writev`` (more on a short write)."""
        length = sum(len(piece) for piece in pieces)
        written = os.writev(self.fd, pieces) if pieces else 0
        if written < length:
            write_all(self.fd, b"".join(pieces)[written:])

    def finish(self) -> None:
        """Nothing is held."""


async def receive_body(
    response: httpx.Response,
    sink: Sink,
    hasher: Any,
    total: int | None,
    offset: int,
    quiet: bool,
) -> int:
    """Write the body through ``sink`` and hash it; the number of bytes. The pieces as they
    come off the connection are gathered into batches of :data:`BATCH`; each batch is
    written and hashed in two worker threads at once while the next one arrives. The sink is
    finished also when the body is cut, so that a file holds all the batches that came."""
    moved = 0
    send, receive = trio.open_memory_channel[list[bytes]](1)

    async def writer() -> None:
        nonlocal moved
        async with receive:
            async for pieces in receive:
                async with trio.open_nursery() as both:
                    both.start_soon(trio.to_thread.run_sync, _hash_pieces, hasher, pieces)
                    both.start_soon(trio.to_thread.run_sync, sink.write, pieces)
                moved += sum(len(piece) for piece in pieces)

    try:
        with progress_bar(total, offset, quiet) as bar:
            async with open_nursery(prefer=(KeyboardInterrupt, ClientError)) as nursery:
                nursery.start_soon(writer)
                async with send:
                    pieces: list[bytes] = []
                    have = 0
                    # no chunk_size: httpx would gather the pieces into one bytes by copying
                    async for data in response.aiter_raw():
                        pieces.append(data)
                        have += len(data)
                        if have >= BATCH or len(pieces) >= _MAX_PIECES:
                            await send.send(pieces)
                            bar.update(have)
                            pieces, have = [], 0
                    if pieces:
                        await send.send(pieces)
                        bar.update(have)
    finally:
        await trio.to_thread.run_sync(sink.finish)
    return moved


def _hash_pieces(hasher: Any, pieces: list[bytes]) -> None:
    for piece in pieces:
        hasher.update(piece)


def _hash_file(fd: int, hasher: Any) -> int:
    """Hash what ``fd`` holds from its start; its length. The offset is left at the end."""
    os.lseek(fd, 0, os.SEEK_SET)
    length = 0
    while data := os.read(fd, BATCH):
        hasher.update(data)
        length += len(data)
    return length
