"""Constants and helpers shared by the test modules (the fixtures are in conftest.py)."""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import pty
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import XenAPI

import vhd
from migrate.interfaces import Interface
from migrate.state.pifs import sync_interfaces
from migrate.state.store import Store
from migrate.storage.sr import ensure_sr
from vhd import Copy, Element, Image, Literal, Zeros

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
SECTOR = 512
BLOCK = 2 * MiB
"""The default block size of dynamic images."""
SIZE = 8 * MiB
"""The virtual size of most test disks: four default blocks."""
BAT_OFFSET = 1536
"""Where vhd.create and xfer put the BAT: after the footer copy and the dynamic header."""

XFER = [sys.executable, "-m", "migrate.cli.main"]
"""The ``xfer`` command line."""
ROOT = Path(__file__).resolve().parents[1]
"""The repository (the working directory of ``xfer`` subprocesses)."""
PASSWORD = "secret"
"""root's password on the daemons the ``daemon`` fixture starts."""
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

Xfer = Callable[..., subprocess.CompletedProcess[bytes]]
"""The ``xfer`` fixture: runs ``xfer ARGS...`` and returns the completed process."""

Writes = Iterable[tuple[int, bytes]]
"""(offset, data) pairs written to a disk."""

HOST = "5e0e0b5c-8a8f-4d1b-9c53-1f4a6f6f0001"
"""The uuid of the host row of the XenAPI test stores."""
TIMEOUT = 30
"""How long, in seconds, one synchronous SDK call may take (see :func:`in_thread`)."""

T = TypeVar("T")


# Content


def pattern(length: int, seed: int) -> bytes:
    """``length`` pseudo-random bytes, never all zero when long enough."""
    return random.Random(seed).randbytes(length)


def disk_content(size: int, writes: Writes) -> bytes:
    """The content of a ``size``-byte disk of zeros after ``writes``."""
    content = bytearray(size)
    for offset, data in writes:
        content[offset : offset + len(data)] = data
    return bytes(content)


def materialise(elements: Iterable[Element]) -> bytes:
    """The bytes a sequence of plan elements stands for."""
    out = bytearray()
    for e in elements:
        if isinstance(e, Literal):
            out += e.data
        elif isinstance(e, Copy):
            data = os.pread(e.file.fileno(), e.length, e.offset)
            assert len(data) == e.length, "copy reaches past the end of its file"
            out += data
        else:
            assert isinstance(e, Zeros)
            out += bytes(e.length)
    return bytes(out)


# Files and images


def write_raw(path: Path, size: int, writes: Writes) -> None:
    """A sparse raw disk of ``size`` bytes at ``path`` holding ``writes``."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in writes:
            f.seek(offset)
            f.write(data)


def patch(path: Path, offset: int, data: bytes) -> None:
    """Overwrite bytes of a file in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def make_dynamic(path: Path, size: int, writes: Writes) -> None:
    """A dynamic image made with the library, ``writes`` applied."""
    vhd.create(str(path), size)
    with Image.open(str(path), writable=True) as image:
        for offset, data in writes:
            image.write(offset, data)


def read_all(path: Path | str) -> bytes:
    """The whole disk as vhd.Image reads it (through its parent chain)."""
    with Image.open(str(path)) as image:
        return image.read(0, image.size)


def bat_of(path: Path) -> list[int]:
    """The image's BAT entries (its parents are not opened)."""
    with Image.open(str(path), parents=False) as image:
        return [int(e) for e in image.bat]


# Processes


def ok(
    proc: subprocess.CompletedProcess[bytes], *, quiet: bool = True
) -> subprocess.CompletedProcess[bytes]:
    """``proc`` after asserting it exited 0 and wrote nothing on stderr; with ``quiet=False``,
    only that its stderr holds no traceback."""
    assert proc.returncode == 0, proc.stderr.decode()
    if quiet:
        assert proc.stderr == b""
    else:
        assert b"Traceback" not in proc.stderr
    return proc


def info_json(xfer: Xfer, path: Path, *, quiet: bool = True) -> dict[str, object]:
    """``xfer vhd info --json``, run as :func:`ok` checks it."""
    info: dict[str, object] = json.loads(
        ok(xfer("vhd", "info", "--json", str(path)), quiet=quiet).stdout
    )
    return info


def run(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """Run ``cmd``; fail the test with its stderr if it does not exit 0."""
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}: {proc.stderr.decode()}"
    return proc


def qemu_raw(qemu_img: str, path: Path, out: Path) -> bytes:
    """The whole disk of the VHD at ``path`` as qemu-img converts it to raw (at ``out``)."""
    run(qemu_img, "convert", "-f", "vpc", "-O", "raw", str(path), str(out))
    return out.read_bytes()


def qemu_convert_to_vpc(qemu_img: str, src: Path, dst: Path, subformat: str) -> None:
    """``qemu-img convert`` the raw disk ``src`` to a VHD of ``subformat`` (dynamic or fixed)."""
    options = ["-f", "raw", "-O", "vpc", "-o", f"subformat={subformat}"]
    run(qemu_img, "convert", *options, str(src), str(dst))


# XenAPI


def host_store(
    tmp_path: Path,
    *,
    host: str = HOST,
    name_label: str,
    address: str = "::1",
    interfaces: Sequence[Interface] = (),
) -> Store:
    """A store in ``tmp_path`` with one IPv6 host row (and its ``interfaces``), a default SR
    in ``tmp_path / "sr"`` and the password ``pw`` for root; the caller closes it."""
    store = Store.open(str(tmp_path / "state.db"))
    store.insert(
        "host",
        {
            "uuid": host,
            "name_label": name_label,
            "address": address,
            "primary_address_type": "IPv6",
        },
    )
    if interfaces:
        sync_interfaces(store, host, list(interfaces))
    ensure_sr(store, str(tmp_path / "sr"), "Local storage", default=True)
    store.set_password("root", "pw")
    return store


# Waiting for something to happen


def _looks(condition: Callable[[], T], timeout: float, what: str) -> Generator[float, None, T]:
    """Look at ``condition()`` until it is true and return its value; yields the pause to
    make between two looks (5 ms, doubling up to 100 ms). Fails the test after ``timeout``
    seconds, naming ``what`` it waited for. The one definition of polling in the tests:
    :func:`wait_until` (trio) and :func:`wait_until_sync` (threads) only pause."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout} s waiting for {what}")
        yield pause
        pause = min(2 * pause, 0.1)
    return value


async def wait_until(condition: Callable[[], T], *, timeout: float = TIMEOUT, what: str) -> T:
    """In trio: wait until ``condition()`` is true and return its value, failing the test
    after ``timeout`` seconds naming ``what`` (see :func:`_looks`)."""
    looks = _looks(condition, timeout, what)
    while True:
        try:
            pause = next(looks)
        except StopIteration as met:
            return met.value
        await trio.sleep(pause)


def wait_until_sync(condition: Callable[[], T], *, timeout: float = TIMEOUT, what: str) -> T:
    """Outside trio (a test's own thread, the SDK's worker thread): :func:`wait_until`,
    sleeping between the looks."""
    looks = _looks(condition, timeout, what)
    while True:
        try:
            pause = next(looks)
        except StopIteration as met:
            return met.value
        time.sleep(pause)


async def in_thread(fn: Callable[[], T]) -> T:
    """Run the synchronous SDK in a worker thread, bounded in time."""
    with trio.fail_after(TIMEOUT):
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


def close(session: Any) -> None:
    """Log the SDK ``session`` out and close its connection."""
    session.xenapi.session.logout()
    session("close")()


def failure(fn: Callable[[], object]) -> list[str]:
    """The ErrorDescription of the XenAPI.Failure ``fn`` raises."""
    with pytest.raises(XenAPI.Failure) as info:
        fn()
    return list(info.value.details)


# Network namespaces


def ip(*args: str) -> None:
    """``ip ARGS`` (iproute2), failing the test if it fails."""
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextmanager
def network_namespace(prefix: str) -> Iterator[str]:
    """A fresh network namespace (named ``prefix`` and this process's id) with its loopback
    up, removed afterwards; the test is skipped where namespaces cannot be made."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create a network namespace (CI runs as root)")
    name = f"{prefix}-{os.getpid()}"
    try:
        ip("netns", "add", name)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot create a network namespace here: {e.stderr.decode().strip()}")
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        ip("netns", "del", name)


# A running xfer serve


def xfer_env(**extra: str) -> dict[str, str]:
    """The environment of an ``xfer`` subprocess: no credentials inherited, ``extra`` added."""
    env = {k: v for k, v in os.environ.items() if k not in ("XFER_USER", "XFER_PASSWORD")}
    return {**env, **extra}


def xfer_run(
    *args: str, input: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``xfer ARGS`` in a subprocess (stdout and stderr are pipes, so no progress bar)."""
    return subprocess.run(
        [*XFER, *args],
        input=input,
        capture_output=True,
        timeout=120,
        cwd=ROOT,
        env=env or xfer_env(),
        check=False,
    )


def xfer_ok(*args: str, input: bytes | None = None) -> str:
    """The stdout of a successful ``xfer ARGS`` (that printed nothing on stderr)."""
    proc = xfer_run(*args, input=input)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b"", proc.stderr.decode()
    return proc.stdout.decode()


def with_tty_stderr(*args: str) -> tuple[int, bytes, bytes]:
    """``xfer ARGS`` with stderr on a pseudo-terminal: exit status, stdout, what the terminal
    got."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        [*XFER, *args], stdout=subprocess.PIPE, stderr=slave, cwd=ROOT, env=xfer_env()
    )
    os.close(slave)  # the terminal's other end is then the child's alone: EIO once it exits
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other end closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    return proc.wait(timeout=10), out, seen


def one_error_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    """The one ``xfer: error:`` line of a failed run, without the prefix."""
    err = proc.stderr.decode()
    assert proc.returncode == 1, (proc.returncode, proc.stdout, err)
    assert err.startswith("xfer: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err.removeprefix("xfer: error: ").rstrip("\n")


class TimeoutTransport(xmlrpc.client.Transport):
    """An XML-RPC transport whose connections time out (after TIMEOUT seconds)."""

    def make_connection(self, host: str | tuple[str, dict[str, str]]) -> http.client.HTTPConnection:
        conn = super().make_connection(host)
        conn.timeout = TIMEOUT
        return conn


@dataclass
class Daemon:
    """A running ``xfer serve --listen [::]:0`` (IPv6 and IPv4 clients alike): its port, the
    uuid of its default SR, its state directory and a session of root, through which the
    tests set up VDIs over XML-RPC (the ``xfer vdi`` commands have tests of their own)."""

    port: int
    sr: str
    state: Path
    session: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def sr_dir(self) -> Path:
        """The default SR's directory."""
        return self.state / "sr"

    def url(self, path: str = "/", address: str = "::1") -> str:
        """``http://ADDRESS:PORT/PATH`` (IPv6 addresses in brackets)."""
        host = f"[{address}]" if ":" in address else address
        return f"http://{host}:{self.port}{path}"

    def auth(self, address: str = "::1", password: str = PASSWORD) -> tuple[str, ...]:
        """``--host`` and ``--password`` for the ``xfer`` client commands."""
        host = f"[{address}]" if ":" in address else address
        return ("--host", f"{host}:{self.port}", "--password", password)

    def rpc(self, method: str, *params: Any) -> Any:
        """The value of the XML-RPC call ``method(session, PARAMS...)``, checked to succeed."""
        with xmlrpc.client.ServerProxy(self.url(), transport=TimeoutTransport()) as proxy:
            answer = getattr(proxy, method)(self.session, *params)
        assert answer["Status"] == "Success", (method, params, answer)
        return answer["Value"]

    def create(self, size: int = SIZE) -> str:
        """A new VDI of ``size`` bytes in the default SR; its uuid."""
        sr = self.rpc("SR.get_by_uuid", self.sr)
        ref = self.rpc("VDI.create", {"SR": sr, "virtual_size": str(size), "name_label": ""})
        uuid: str = self.rpc("VDI.get_uuid", ref)
        return uuid

    def vdis(self) -> dict[str, dict[str, Any]]:
        """The VDIs' records by uuid (``virtual_size`` in a string, as XenAPI has it)."""
        records: dict[str, dict[str, Any]] = self.rpc("VDI.get_all_records")
        return {record["uuid"]: record for record in records.values()}


@contextmanager
def running_daemon(tmp: Path, *args: str) -> Iterator[Daemon]:
    """``xfer serve --listen [::]:0 --password PASSWORD ARGS`` with its state in ``tmp``,
    stopped (and checked to exit 0) afterwards."""
    from test_serve import serving, stop  # test_serve imports this module

    with serving(tmp, "--listen", "[::]:0", "--password", PASSWORD, *args) as (proc, urls, _):
        match = re.fullmatch(r"http://\[::\]:(\d+)/", urls[0])
        assert match, urls
        daemon = Daemon(int(match.group(1)), "", tmp / "state", "")
        with xmlrpc.client.ServerProxy(daemon.url(), transport=TimeoutTransport()) as proxy:
            login = proxy.session.login_with_password("root", PASSWORD, "1.0", "tests")
        assert login["Status"] == "Success", login
        daemon.session = login["Value"]
        (pool,) = daemon.rpc("pool.get_all")
        daemon.sr = daemon.rpc("SR.get_uuid", daemon.rpc("pool.get_default_SR", pool))
        daemon.process = proc
        yield daemon
        if proc.poll() is None:  # (a test may have killed it)
            assert stop(proc) == 0


# A network fault


@dataclass
class Relayed:
    """One connection through a :class:`CuttingProxy`: the first bytes each way, and how
    many went each way in all."""

    request: bytearray
    response: bytearray
    request_total: int = 0
    response_total: int = 0


class CuttingProxy:
    """A TCP relay on loopback in front of a real server, with no HTTP of its own: each
    connection accepted on ``address`` (port :attr:`port`, chosen by the system) is joined to
    ``[target]:target_port`` and bytes are relayed both ways. With ``cut``, both sides are
    closed once ``cut`` bytes of the server's answer (its head included) went through: a
    connection cut in the middle of a body; with ``cut_request`` likewise once that many bytes
    the client sent went through. ``only``: the index of the one connection (in the order
    they were accepted) the cuts apply to. With ``hold``, that connection's client direction
    stops once ``hold`` bytes went through (:attr:`holding` set) until :attr:`release` is
    set. The first ``keep`` bytes each way are recorded
    (:attr:`connections`), so a test reads the request and response heads off the wire.

    A context manager: on exit the listener and every connection are closed and the relay's
    threads checked to have ended. Every connection has a timeout, so no thread outlives a stuck
    peer by more than ``timeout`` seconds."""

    def __init__(
        self,
        target_port: int,
        *,
        address: str = "::1",
        target: str = "::1",
        cut: int | None = None,
        cut_request: int | None = None,
        only: int | None = None,
        hold: int | None = None,
        timeout: float = 30.0,
        keep: int = 64 * KiB,
    ) -> None:
        self.target = (target, target_port)
        self.cut = cut
        self.cut_request = cut_request
        self.only = only
        self.hold = hold
        self.holding = threading.Event()
        self.release = threading.Event()
        self.timeout = timeout
        self.keep = keep
        self.connections: list[Relayed] = []
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._listener = socket.create_server((address, 0), family=family)
        self.port: int = self._listener.getsockname()[1]
        self.host = f"[{address}]:{self.port}" if ":" in address else f"{address}:{self.port}"
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._start(self._accept)

    def auth(self, password: str = PASSWORD) -> tuple[str, ...]:
        """``--host`` (this relay) and ``--password`` for the ``xfer`` client commands."""
        return ("--host", self.host, "--password", password)

    def __enter__(self) -> CuttingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        _shut(self._listener)  # wakes the accept loop, which ends
        self._threads[0].join()
        self._listener.close()
        for thread in self._relays():  # connections whose client is gone end by themselves
            thread.join(timeout=5)
        with self._lock:
            for sock in self._sockets:
                _shut(sock)
        wait_until_sync(
            lambda: not any(t.is_alive() for t in self._relays()),
            timeout=self.timeout,
            what="the relay threads to end",
        )
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def _relays(self) -> list[threading.Thread]:
        """The threads relaying connections (all but the accept loop's)."""
        with self._lock:
            return self._threads[1:]

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # the listener shut down
                return
            client.settimeout(self.timeout)
            with self._lock:
                self._sockets.append(client)
            self._start(self._connection, client)

    def _connection(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.target, timeout=self.timeout)
        except OSError:
            _shut(client)
            return
        relayed = Relayed(bytearray(), bytearray())
        with self._lock:
            self._sockets.append(server)
            cutting = self.only is None or self.only == len(self.connections)
            self.connections.append(relayed)
        cut, cut_request = (self.cut, self.cut_request) if cutting else (None, None)
        hold = self.hold if cutting else None
        self._start(self._pump, client, server, relayed, True, cut_request, hold)
        self._pump(server, client, relayed, False, cut, None)

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        relayed: Relayed,
        request: bool,
        cut: int | None,
        hold: int | None,
    ) -> None:
        """Relay ``src`` to ``dst`` until ``src`` ends (then half-close ``dst``), a socket
        fails or times out (then close both), or ``cut`` bytes went through (close both);
        after ``hold`` bytes, wait for :attr:`release`."""
        record = relayed.request if request else relayed.response
        moved = 0
        try:
            while True:
                if hold is not None and moved >= hold:
                    self.holding.set()
                    self.release.wait(self.timeout)
                    hold = None
                size = 256 * KiB if hold is None else max(1, min(256 * KiB, hold - moved))
                data = src.recv(size)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                if cut is not None and moved + len(data) >= cut:
                    data = data[: cut - moved]
                record += data[: max(0, self.keep - len(record))]
                dst.sendall(data)
                moved += len(data)
                if request:
                    relayed.request_total = moved
                else:
                    relayed.response_total = moved
                if cut is not None and moved >= cut:
                    _shut(src)
                    _shut(dst)
                    return
        except OSError:
            _shut(src)
            _shut(dst)


def _shut(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def http_head(data: bytes) -> tuple[str, dict[str, str]]:
    """The first line and the header fields (names in lower case) of an HTTP message."""
    head, sep, _ = bytes(data).partition(b"\r\n\r\n")
    assert sep, f"no complete head in {bytes(data[:200])!r}"
    first, *lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return first, fields
