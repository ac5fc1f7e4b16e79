"""``xfer export`` and ``xfer import``: a VDI's contents over HTTP, as a client of the host's
``GET /export_raw_vdi`` and ``PUT /import_raw_vdi``.

The host, the credentials (``--user``/``--password``, ``$XFER_USER``/``$XFER_PASSWORD``) and
TLS (``--ca``/``--insecure``) are given as for the XenAPI commands (:mod:`migrate.cli.rpc`),
and connections go through the same transport (:mod:`migrate.cli.rpc_client`: every host form,
zoned link-local addresses, certificates checked against the bare address). httpx runs on trio
(``httpx.AsyncClient`` inside ``trio.run``).

The request authenticates with HTTP Basic rather than a JSON-RPC login and a ``session_id``:
one request instead of three (login, transfer, logout), no session left behind on the host
when the client is killed mid-transfer, and a wrong password still fails before any byte of
the disk has been written anywhere (``401`` is answered from the request head).

Bytes move in large pieces (:data:`CHUNK`) and are never all in memory. An import reads and
hashes the next piece in a worker thread while the current one is being sent. Measured with
2 GiB from the page cache to a sink on ``::1`` (2 CPUs): 1070 MiB/s reading and hashing in the
event loop, 1120 MiB/s in a worker thread without reading ahead, 1340 MiB/s reading ahead; the
ceiling is sha256 itself (about 1.8 GiB/s on one core), which must see every byte. An export
gathers what the connection delivers (read 256 KiB at a time, see
:data:`migrate.cli.rpc_client.READ_SIZE`) into batches, each written and hashed in two worker
threads at once while the next batch arrives (``aiter_raw(chunk_size)`` would copy every piece
once more to join it). Into a file it goes through :class:`~migrate.cli.diskfile.DiskFile`
(``O_DIRECT`` in 8 MiB pieces, all-zero 64 KiB units left as holes, so that the export of a
sparse disk is a sparse file): ``xfer export -o FILE`` of 2 GiB took 4.8-5.1 s through the
page cache and its final ``fsync``, against 1.8-2.0 s to stdout. It writes to ``FILE.part``
and renames it into place once the whole body arrived and is synced; a raw export that was
cut keeps its ``.part`` so that ``--resume`` asks only for the rest (``Range``).

On success the last line on stdout is ``sha256 HEX  FILE`` (the bytes that moved; the whole
file after ``--resume``), preceded for an import by ``vdi UUID``; an export to stdout prints
that line on stderr instead. A progress bar (bytes, rate, ETA) is drawn on stderr when it is a
terminal, unless ``--quiet``. Failures are one line: ``xfer: error: ...``, exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, cast

import httpx
import trio
from tqdm import tqdm

from migrate.addresses import Host
from migrate.cli.diskfile import DiskFile
from migrate.cli.rpc import client_options, credentials
from migrate.cli.rpc_client import (
    ClientError,
    async_transport,
    endpoint,
    one_line,
    request_extensions,
    ssl_context,
)
from migrate.nursery import open_nursery
from vhd.file import write_all

CHUNK = 8 << 20
"""The size of the pieces read from the file or the network and written out."""
EXPORT_PATH = "/export_raw_vdi"
IMPORT_PATH = "/import_raw_vdi"
FORMATS = ("raw", "vhd")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_UNSATISFIED_RANGE = re.compile(r"(?:bytes )?\*/(\d+)")  # the unit is required; tolerated
_BUFFERS = 3
"""Buffers an import's pieces rotate through: one being sent, one waiting, one being read."""
_MAX_PIECES = 512
"""At most this many pieces in one ``writev`` (IOV_MAX is 1024 on Linux)."""
_REF = re.compile(r"OpaqueRef:([0-9a-fA-F-]{36})")


def register(commands: Any) -> None:
    """Add ``export`` and ``import`` to ``commands``."""
    common = client_options()
    common.add_argument(
        "--format", choices=FORMATS, default="raw", help="raw disk bytes or a VHD (default: raw)"
    )
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    p = commands.add_parser(
        "export",
        parents=[common],
        help="download a VDI's contents (raw or VHD)",
        description="Download a VDI's contents; prints `sha256 HEX  FILE` at the end.",
    )
    p.add_argument("--vdi", required=True, metavar="UUID", help="the VDI to export")
    p.add_argument(
        "--base", metavar="UUID", help="VHD only: a differencing image of what changed since UUID"
    )
    p.add_argument(
        "-o",
        "--output",
        default="-",
        metavar="FILE",
        help="where to write (default: - for stdout); written as FILE.part, renamed at the end",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="raw only: continue a cut export from FILE.part instead of starting over",
    )
    p.set_defaults(run=_command(export))

    p = commands.add_parser(
        "import",
        parents=[common],
        help="upload a raw disk or a VHD into a VDI",
        description="Upload into a VDI; prints `vdi UUID` and `sha256 HEX  FILE` at the end.",
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--vdi", metavar="UUID", help="write into this existing VDI")
    target.add_argument("--sr", metavar="UUID", help="create a new VDI in this SR")
    p.add_argument("--name", help="the new VDI's name label (with --sr)")
    p.add_argument("file", metavar="FILE", help="the raw disk or VHD to send (- for stdin)")
    p.set_defaults(run=_command(import_))


Transfer = Callable[[httpx.AsyncClient, Host, argparse.Namespace], Awaitable[int]]


def _command(transfer: Transfer) -> Callable[[argparse.Namespace], int]:
    """``transfer`` run in ``trio.run`` with a client for the host; ClientError as one line."""

    def run(args: argparse.Namespace) -> int:
        user, password = credentials(args)
        host, _ = endpoint(args.host)
        context = ssl_context(args.ca, args.insecure)

        async def main() -> int:
            async with httpx.AsyncClient(
                transport=async_transport(context),
                auth=httpx.BasicAuth(user, password),
                timeout=args.timeout,
                trust_env=False,
            ) as client:
                return await transfer(client, host, args)

        try:
            return trio.run(main)
        except ClientError as e:
            print(f"xfer: error: {e}", file=sys.stderr)
            return 1

    return run


# Export


async def export(client: httpx.AsyncClient, host: Host, args: argparse.Namespace) -> int:
    """``xfer export --host HOST --vdi UUID [--format F] [--base UUID] [-o FILE] [--resume]``."""
    url = host.url(EXPORT_PATH)
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
            _http_errors(url),
            client.stream(
                "GET", url, params=params, headers=headers, extensions=request_extensions(url)
            ) as response,
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
                    sink = _Stdout(fd) if output == "-" else DiskFile(part, fd, offset)
                    moved = await _receive(response, sink, hasher, total, offset, args.quiet)
                if total is not None and offset + moved != total:
                    raise httpx.RemoteProtocolError(
                        f"the body ended after {offset + moved} of {total} bytes"
                    )
            except httpx.HTTPError as e:
                text = f"{url}: the transfer was cut ({_reason(e)})"
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
    raise _failure(response)


class Sink(Protocol):
    """Where an export's bytes go: :class:`~migrate.cli.diskfile.DiskFile` or :class:`_Stdout`."""

    def write(self, pieces: list[bytes]) -> None: ...

    def finish(self) -> None: ...


class _Stdout:
    """Standard output: every byte written in order, zeros included."""

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


async def _receive(
    response: httpx.Response,
    sink: Sink,
    hasher: Any,
    total: int | None,
    offset: int,
    quiet: bool,
) -> int:
    """Write the body through ``sink`` and hash it; the number of bytes. The pieces as they
    come off the connection are gathered into batches of :data:`CHUNK`; each batch is
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
        with _progress(total, offset, quiet) as bar:
            async with open_nursery(prefer=(KeyboardInterrupt, ClientError)) as nursery:
                nursery.start_soon(writer)
                async with send:
                    pieces: list[bytes] = []
                    have = 0
                    # no chunk_size: httpx would gather the pieces into one bytes by copying
                    async for data in response.aiter_raw():
                        pieces.append(data)
                        have += len(data)
                        if have >= CHUNK or len(pieces) >= _MAX_PIECES:
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
    while data := os.read(fd, CHUNK):
        hasher.update(data)
        length += len(data)
    return length


# Import


async def import_(client: httpx.AsyncClient, host: Host, args: argparse.Namespace) -> int:
    """``xfer import --host HOST (--vdi UUID | --sr UUID) [--format F] [--name N] FILE``."""
    url = host.url(IMPORT_PATH)
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
        info = os.fstat(fd)
        # a regular file goes with its length; a pipe (or stdin that is one) chunked
        size = info.st_size - os.lseek(fd, 0, os.SEEK_CUR) if stat.S_ISREG(info.st_mode) else None
        headers = {
            "content-type": "application/vhd"
            if args.format == "vhd"
            else "application/octet-stream"
        }
        if size is not None:
            headers["content-length"] = str(size)
        hasher = hashlib.sha256()
        send, receive = trio.open_memory_channel[memoryview](1)
        with _progress(size, 0, args.quiet) as bar:
            async with open_nursery(prefer=(KeyboardInterrupt, ClientError)) as nursery:
                nursery.start_soon(_read_ahead, fd, name, size, hasher, send)
                async with receive, _http_errors(url):
                    response = await client.put(
                        url,
                        params=params,
                        headers=headers,
                        # views of reused buffers: httpcore sends each before taking the next
                        content=cast(AsyncIterator[bytes], _pieces(receive, bar)),
                        extensions=request_extensions(url),
                    )
                # a reader still waiting on a pipe after the host answered early
                nursery.cancel_scope.cancel()
    finally:
        if name != "-":
            os.close(fd)
    if response.status_code != 200:
        raise _failure(response)
    match = _REF.fullmatch(response.text.strip())
    if match:
        uuid = match.group(1).lower()
    elif args.vdi:
        uuid = args.vdi
    else:
        raise ClientError(f"{url}: the answer names no VDI: {one_line(response.text)[:200]!r}")
    print(f"vdi {uuid}")
    print(f"sha256 {hasher.hexdigest()}  {name}")
    return 0


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
    buffers = [memoryview(bytearray(CHUNK)) for _ in range(_BUFFERS)]
    async with send:
        left = size
        turn = 0
        while left is None or left > 0:
            buffer = buffers[turn % _BUFFERS][: CHUNK if left is None else min(CHUNK, left)]
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


# Shared


def _progress(total: int | None, initial: int, quiet: bool) -> Any:
    """A tqdm bar on stderr (bytes, rate, ETA), disabled with ``quiet`` or without a terminal."""
    return tqdm(
        total=total,
        initial=initial,
        unit="iB",  # with unit_divisor 1024: "12.0M/24.0M [..., 216MiB/s]"
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=quiet or not sys.stderr.isatty(),
        dynamic_ncols=True,
        leave=True,
    )


def _failure(response: httpx.Response) -> ClientError:
    """The host's one-line message for a failed transfer (``404 Not Found: ...``)."""
    status = response.status_code
    try:
        line = one_line(response.content[:4096].decode("utf-8", "replace"))
    except httpx.ResponseNotRead:
        line = ""
    if not line:
        return ClientError(f"{status} {response.reason_phrase}")
    if not line.startswith(str(status)):
        return ClientError(f"{status} {response.reason_phrase}: {line}")
    return ClientError(line)


@contextlib.asynccontextmanager
async def _http_errors(url: str) -> AsyncIterator[None]:
    """httpx failures as one-line ClientErrors."""
    try:
        yield
    except httpx.TimeoutException:
        raise ClientError(f"{url}: timed out") from None
    except (httpx.ConnectError, httpx.UnsupportedProtocol) as e:
        raise ClientError(f"cannot reach {url}: {_reason(e)}") from None
    except httpx.HTTPError as e:
        raise ClientError(f"{url}: {_reason(e)}") from None


def _reason(error: BaseException) -> str:
    """The first non-empty message along ``error``'s causes, on one line: on trio a failed TLS
    handshake is an empty ConnectError caused by an empty BrokenResourceError caused by the
    ``ssl`` error that says what went wrong."""
    seen: BaseException | None = error
    while seen is not None:
        text = one_line(seen)
        if text:
            return text
        seen = seen.__cause__ or seen.__context__
    return type(error).__name__
