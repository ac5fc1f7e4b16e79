"""``xfer import``: a raw disk or a VHD, from a file or standard input, into a VDI through the
host's ``PUT /import_raw_vdi`` (an existing VDI, or a new one in an SR).

A regular file is sent with its length, a pipe chunked. The file is read and hashed in pieces
of :data:`PIECE` in a worker thread, the next piece while the current one is being sent,
through a few reused buffers. On success it prints ``vdi UUID``, then ``sha256 HEX  FILE`` of
the bytes sent.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import re
import stat
import sys
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import trio

from migrate.cli.http_client import (
    ClientError,
    Target,
    failure,
    http_errors,
    one_line,
    run_client,
)
from migrate.cli.progress import progress_bar
from migrate.formats.xapi import FORMATS, IMPORT_PATH, REF_PREFIX
from migrate.nursery import open_nursery

PIECE = 8 << 20
"""Bytes read from the file, hashed and sent at a time."""
_BUFFERS = 3
"""Buffers the pieces rotate through: one being sent, one waiting, one being read."""
_REF = re.compile(re.escape(REF_PREFIX) + r"([0-9a-fA-F-]{36})")


def import_command(args: argparse.Namespace) -> int:
    """``xfer import --host HOST (--vdi UUID | --sr UUID) [--format F] [--name N] FILE``."""

    return run_client(args, functools.partial(import_, args=args), basic_auth=True)


async def import_(client: httpx.AsyncClient, target: Target, args: argparse.Namespace) -> int:
    """Import ``args.file`` into the target host as the options say; the exit status."""
    url = target.host.url(IMPORT_PATH)
    if args.name is not None and args.sr is None:
        raise ValueError("--name needs --sr (it names the new VDI)")
    params = {"format": args.format}
    if args.vdi:
        params["vdi"] = args.vdi
    else:
        params["sr_id"] = args.sr
        if args.name is not None:
            params["name_label"] = args.name
    name: str = args.file
    if name == "-":
        fd = sys.stdin.fileno()
        if os.isatty(fd):
            raise ValueError("refusing to read a disk from a terminal: give FILE or redirect")
    else:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        headers = {"content-type": FORMATS[args.format]}
        response, digest = await send_file(
            client, url, fd, name, params=params, headers=headers, quiet=args.quiet
        )
    finally:
        if name != "-":
            os.close(fd)
    if response.status_code != 200:
        raise failure(response)
    match = _REF.fullmatch(response.text.strip())
    if match:
        uuid = match.group(1).lower()
    elif args.vdi:
        uuid = args.vdi
    else:
        raise ClientError(f"{url}: the answer names no VDI: {one_line(response.text)[:200]!r}")
    print(f"vdi {uuid}")
    print(f"sha256 {digest}  {name}")
    return 0


async def send_file(
    client: httpx.AsyncClient,
    url: str,
    fd: int,
    name: str,
    *,
    params: dict[str, str],
    headers: dict[str, str],
    quiet: bool,
) -> tuple[httpx.Response, str]:
    """``PUT url`` with what ``fd`` holds from its offset as the body (a regular file with its
    length, a pipe chunked), read ahead and hashed in a worker thread, a progress bar drawn
    unless ``quiet``: the host's answer (its body read) and the sha256 of the bytes sent.
    ``name`` names the file in errors."""
    info = os.fstat(fd)
    # a regular file goes with its length; a pipe (or stdin that is one) chunked
    size = info.st_size - os.lseek(fd, 0, os.SEEK_CUR) if stat.S_ISREG(info.st_mode) else None
    if size is not None:
        headers = {**headers, "content-length": str(size)}
    hasher = hashlib.sha256()
    send, receive = trio.open_memory_channel[memoryview](1)
    with progress_bar(size, 0, quiet) as bar:
        async with open_nursery(prefer=(KeyboardInterrupt, ClientError)) as nursery:
            nursery.start_soon(_read_ahead, fd, name, size, hasher, send)
            async with receive, http_errors(url):
                response = await client.put(
                    url,
                    params=params,
                    headers=headers,
                    # views of reused buffers: httpcore sends each before taking the next
                    content=cast(AsyncIterator[bytes], _pieces(receive, bar)),
                )
            # a reader still waiting on a pipe after the host answered early
            nursery.cancel_scope.cancel()
    return response, hasher.hexdigest()


async def _read_ahead(
    fd: int,
    name: str,
    size: int | None,
    hasher: Any,
    send: trio.MemorySendChannel[memoryview],
) -> None:
    """Read ``fd`` (``size`` bytes, or to its end) in pieces, each read and hashed in a worker
    thread while the one before is being sent; stops quietly when the request is over.

    The pieces rotate through :data:`_BUFFERS` reused buffers (no fresh memory to fault in for
    every piece): a buffer is filled again only once the piece it held has been sent, as the
    channel holds one piece and the request takes the next only after sending the last."""
    buffers = [memoryview(bytearray(PIECE)) for _ in range(_BUFFERS)]
    async with send:
        left = size
        turn = 0
        while left is None or left > 0:
            buffer = buffers[turn % _BUFFERS][: PIECE if left is None else min(PIECE, left)]
            turn += 1
            n = await trio.to_thread.run_sync(
                _read_piece, fd, buffer, hasher, abandon_on_cancel=True
            )
            if not n:
                if left:
                    raise ValueError(f"{name}: the file became shorter while it was being sent")
                return
            if left is not None:
                left -= n
            try:
                await send.send(buffer[:n])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the request ended (the host answered early, or failed)


def _read_piece(fd: int, buffer: memoryview, hasher: Any) -> int:
    """Fill ``buffer`` from ``fd`` (less only at the end: pipes are read until it is full)
    and hash what was read; how many bytes."""
    have = 0
    while have < len(buffer):
        n = os.readv(fd, [buffer[have:]])
        if not n:
            break
        have += n
    hasher.update(buffer[:have])
    return have


async def _pieces(
    receive: trio.MemoryReceiveChannel[memoryview], bar: Any
) -> AsyncIterator[memoryview]:
    async for data in receive:
        bar.update(len(data))
        yield data
