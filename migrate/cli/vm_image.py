"""``xfer vm save`` and ``xfer vm restore``: a VM's suspend image (``XenSavedDomv2-``, its
metadata, memory as a libxc stream, End_of_image) to and from a file, over the host's
``GET /vm_save?vm=`` and ``PUT /vm_restore``.

Saving pauses the VM, streams its image and leaves it halted on the host; the image is
written as ``FILE.part``, checked whole (every record, by
:func:`~migrate.cli.saved_image.check_image`) and renamed into place. Restoring
sends the file and prints the uuid of the VM the host made of it, running.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import os
import re
import sys

import httpx

from migrate.cli.export_client import SequentialSink, receive_body
from migrate.cli.http_client import (
    ClientError,
    Target,
    failure,
    http_errors,
    one_line,
    reason,
    run_client,
)
from migrate.cli.import_client import send_file
from migrate.cli.saved_image import check_image
from migrate.formats.xapi import REF_PREFIX, VM_RESTORE_PATH, VM_SAVE_PATH

_UUID = re.compile(
    r"(?:" + re.escape(REF_PREFIX) + r")?([0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12})"
)


def save_command(args: argparse.Namespace) -> int:
    """``xfer vm save --host HOST --vm UUID -o FILE``."""
    return run_client(args, functools.partial(save, args=args), basic_auth=True)


async def save(client: httpx.AsyncClient, target: Target, args: argparse.Namespace) -> int:
    """Save ``args.vm`` of the target host into ``args.output``; prints ``sha256 HEX  FILE``."""
    url = target.host.url(VM_SAVE_PATH)
    output: str = args.output
    if output == "-" and os.isatty(sys.stdout.fileno()):
        raise ValueError("refusing to write an image to a terminal: give -o FILE or redirect")
    part = f"{output}.part"
    hasher = hashlib.sha256()
    if output == "-":
        sys.stdout.flush()
        fd = sys.stdout.fileno()
    else:
        # read too: its end is checked once written
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        async with (
            http_errors(url),
            client.stream("GET", url, params={"vm": args.vm}) as response,
        ):
            if response.status_code != 200:
                await response.aread()
                raise failure(response)
            length = response.headers.get("content-length")
            total = int(length) if length is not None else None
            try:
                moved = await receive_body(
                    response, SequentialSink(fd), hasher, total, 0, args.quiet
                )
            except httpx.HTTPError as e:
                raise ClientError(f"{url}: the image was cut ({reason(e)})") from None
            if total is not None and moved != total:
                raise ClientError(f"{url}: the image ended after {moved} of {total} bytes")
        if output != "-":
            _check(fd, output, url)
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(part, output)
    except BaseException:
        if output != "-":
            with contextlib.suppress(OSError):
                os.unlink(part)
        raise
    finally:
        if fd >= 0 and output != "-":
            os.close(fd)
    print(f"sha256 {hasher.hexdigest()}  {output}", file=sys.stderr if output == "-" else None)
    return 0


def _check(fd: int, name: str, url: str) -> None:
    """ClientError unless the file holds one whole, valid suspend image: an answer cut short
    (the host sends no Content-Length) or damaged is caught here."""
    try:
        check_image(fd, name)
    except ValueError as e:
        raise ClientError(f"{url}: the image is not whole ({e}); {name} not written") from None


def restore_command(args: argparse.Namespace) -> int:
    """``xfer vm restore --host HOST FILE``."""
    return run_client(args, functools.partial(restore, args=args), basic_auth=True)


async def restore(client: httpx.AsyncClient, target: Target, args: argparse.Namespace) -> int:
    """Send the image ``args.file`` to the target host; prints the restored VM's uuid."""
    url = target.host.url(VM_RESTORE_PATH)
    name: str = args.file
    if name == "-":
        fd = sys.stdin.fileno()
        if os.isatty(fd):
            raise ValueError("refusing to read an image from a terminal: give FILE or redirect")
    else:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        response, _ = await send_file(
            client,
            url,
            fd,
            name,
            params={},
            headers={"content-type": "application/octet-stream"},
            quiet=args.quiet,
        )
    finally:
        if name != "-":
            os.close(fd)
    if response.status_code != 200:
        raise failure(response)
    match = _UUID.fullmatch(response.text.strip())
    if not match:
        raise ClientError(f"{url}: the answer names no VM: {one_line(response.text)[:200]!r}")
    print(match.group(1).lower())
    return 0
