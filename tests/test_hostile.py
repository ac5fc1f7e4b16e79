"""A real ``xfer serve`` driven as hostile or broken clients would: what they hold, what the
others still get, and what a crash leaves behind. Clients are raw trio sockets and httpx on
loopback, many bound to their own 127.0.0.x address (the whole 127/8 is local on Linux)."""

from __future__ import annotations

import itertools
import resource
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import trio

from migrate.storage.sr import PART_SUFFIX
from support import PASSWORD, TIMEOUT, wait_until
from test_serve import port_of, serving

pytestmark = pytest.mark.slow

LIVENESS = 10.0
"""Seconds an answer may take while the daemon is under attack before the test calls it
stopped (before the fixes, these answers waited for the attackers' timeouts, 30 s and more)."""


@dataclass
class Host:
    """A running daemon's port and the session ``login`` opened on it."""

    port: int
    session: str = ""

    def url(self, path: str = "/jsonrpc") -> str:
        return f"http://[::1]:{self.port}{path}"


@contextmanager
def daemon(tmp_path: Path, *args: str) -> Iterator[tuple[Host, Any]]:
    with serving(tmp_path, "--listen", "[::]:0", "--password", PASSWORD, *args) as (proc, urls, _):
        yield Host(port_of(urls[0].replace("[::]", "[::1]"))), proc


@asynccontextmanager
async def rpc_client(source: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client whose connections come from the local address ``source`` (plain HTTP:
    no certificates loaded, so that many clients cost the test little)."""
    transport = httpx.AsyncHTTPTransport(local_address=source, verify=False) if source else None
    # (a client of its own for each call would load the system's certificates each time)
    async with httpx.AsyncClient(transport=transport, timeout=LIVENESS, verify=False) as client:
        yield client


async def call(
    host: Host,
    method: str,
    *params: Any,
    source: str | None = None,
    client: httpx.AsyncClient | None = None,
) -> tuple[Any, Any]:
    """One JSON-RPC call (from the local address ``source``, through ``client`` if given);
    its result and its error."""
    if client is None:
        async with rpc_client(source) as fresh:
            return await call(host, method, *params, source=source, client=fresh)
    body = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}
    address = f"http://{source}:{host.port}/jsonrpc" if source else host.url()
    answer = (await client.post(address, json=body)).json()
    return answer.get("result"), answer.get("error")


async def login(
    host: Host,
    password: str = PASSWORD,
    source: str | None = None,
    client: httpx.AsyncClient | None = None,
) -> Any:
    result, error = await call(
        host,
        "session.login_with_password",
        "root",
        password,
        "1.0",
        "t",
        source=source,
        client=client,
    )
    return result if error is None else error


async def connect(port: int, source: str = "::1") -> trio.SocketStream:
    """A TCP connection to the daemon from the local address ``source``."""
    family = trio.socket.AF_INET6 if ":" in source else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    await sock.bind((source, 0))
    await sock.connect(("::1" if ":" in source else "127.0.0.1", port))
    return trio.SocketStream(sock)


@asynccontextmanager
async def trickling_uploads(
    host: Host, sr: str, count: int, source: str = "127.0.0.2"
) -> AsyncIterator[list[trio.SocketStream]]:
    """``count`` authenticated imports into new VDIs that sent their head and 4 KiB of a
    64 MiB body, then nothing."""
    streams = []
    try:
        for _ in range(count):
            stream = await connect(host.port, source)
            streams.append(stream)
            head = (
                f"PUT /import_raw_vdi?sr_id={sr}&session_id={host.session} HTTP/1.1\r\n"
                f"Host: xfer\r\nContent-Length: {64 << 20}\r\n\r\n"
            )
            await stream.send_all(head.encode() + bytes(range(256)) * 16)
        yield streams
    finally:
        for stream in streams:
            await trio.aclose_forcefully(stream)


def staged(tmp_path: Path) -> int:
    """How many imports the daemon serving state in ``tmp_path`` is staging (each has its
    task, its claim, and receives)."""
    return sum(1 for p in (tmp_path / "state" / "sr").iterdir() if p.name.endswith(PART_SUFFIX))


async def export_4k(host: Host, vdi: str) -> bytes:
    async with rpc_client() as client:
        answer = await client.get(
            host.url(f"/export_raw_vdi?vdi={vdi}&format=raw"), auth=("root", PASSWORD)
        )
    assert answer.status_code == 200, answer.text
    return answer.content


async def small_vdi(host: Host) -> tuple[str, str]:
    """The uuids of the default SR and of a new 4 KiB VDI in it."""
    (sr,), _ = await call(host, "SR.get_all", host.session)
    ref, error = await call(
        host, "VDI.create", host.session, {"SR": sr, "virtual_size": 4096, "name_label": "4k"}
    )
    assert error is None, error
    vdi, _ = await call(host, "VDI.get_uuid", host.session, ref)
    sr_uuid, _ = await call(host, "SR.get_uuid", host.session, sr)
    return sr_uuid, vdi


async def test_trickling_uploads_hold_no_thread(tmp_path: Path) -> None:
    """Sixty authenticated uploads that sent a little and then nothing: logins, RPC calls
    and exports still answer. Each upload once held one of trio's 40 default worker threads
    for its whole body, and store calls queued behind them."""
    with daemon(tmp_path) as (host, _):
        host.session = await login(host)
        sr, vdi = await small_vdi(host)
        async with trickling_uploads(host, sr, 60):
            await wait_until(lambda: staged(tmp_path) == 60, what="60 uploads staged")
            with trio.fail_after(LIVENESS):
                assert str(await login(host)).startswith("OpaqueRef:")
                result, error = await call(host, "VDI.get_all", host.session)
                assert error is None and len(result) >= 1
                assert await export_4k(host, vdi) == bytes(4096)


async def test_failed_logins_slow_their_sender_down(tmp_path: Path) -> None:
    """One client guessing passwords as fast as it can gets a few answers at once, then
    each one later than the one before; a client elsewhere logs in meanwhile."""
    with daemon(tmp_path) as (host, _):
        failures: list[float] = []

        async def guess() -> None:
            while True:
                error = await login(host, "guess", source="127.0.0.3")
                assert error["message"] == "SESSION_AUTHENTICATION_FAILED", error
                failures.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(guess)
            await wait_until(lambda: len(failures) >= 5, timeout=LIVENESS * 3, what="failures")
            assert str(await login(host)).startswith("OpaqueRef:")  # from ::1
            nursery.cancel_scope.cancel()
        gaps = [b - a for a, b in itertools.pairwise(failures)]
        # the free failures, then waits of 0.5, 1, 2 s: each at least as long as the wait
        assert gaps[2] >= 0.5 and gaps[3] >= 1.0, gaps


async def test_a_crash_leaves_no_task_pending(tmp_path: Path) -> None:
    """kill -9 during an import: after the restart the import's task has failed, saying
    why, and cannot be cancelled; the new VDI it was writing is gone."""
    with daemon(tmp_path) as (host, proc):
        host.session = await login(host)
        sr, _ = await small_vdi(host)
        async with trickling_uploads(host, sr, 1):
            await wait_until(lambda: staged(tmp_path) == 1, what="the upload staged")
            tasks, _ = await call(host, "task.get_all_records", host.session)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=TIMEOUT)
    (ref, record), *_ = tasks.items()
    assert record["status"] == "pending" and record["name_label"].startswith("import_raw_vdi")
    with daemon(tmp_path) as (host, _):
        host.session = await login(host)
        record, _ = await call(host, "task.get_record", host.session, ref)
        assert record["status"] == "failure"
        assert record["error_info"][0] == "INTERNAL_ERROR"
        assert "stopped while the task ran" in record["error_info"][1]
        assert record["progress"] == 1.0
        _, error = await call(host, "task.cancel", host.session, ref)
        assert error["message"] == "OPERATION_NOT_ALLOWED", error
        vdis, _ = await call(host, "VDI.get_all_records", host.session)
        assert [v["name_label"] for v in vdis.values()] == ["4k"]


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if max(soft, hard) < needed:
        pytest.skip(f"{needed} descriptors needed, the hard limit is {hard}")


@pytest.mark.slow
async def test_targets_under_attack(tmp_path: Path) -> None:
    """200 slow authenticated uploads, 1000 idle unauthenticated connections and 16 clients
    guessing passwords, all at once (each kind from addresses of its own, within the
    per-client cap): a login, an RPC call and a 4 KiB export each answer within 1 s, and the
    daemon stays under 300 MiB."""
    _raise_fd_limit(2000)
    with daemon(tmp_path) as (host, proc):
        host.session = await login(host)
        sr, vdi = await small_vdi(host)
        answered: list[str] = []
        idle: list[trio.SocketStream] = []
        async with trio.open_nursery() as attack:

            async def guess(source: str) -> None:
                async with rpc_client(source) as client:
                    while True:
                        await login(host, "guess", source=source, client=client)
                        answered.append(source)

            async def upload(source: str) -> None:
                async with trickling_uploads(host, sr, 1, source) as (stream,):
                    while True:  # 4 KiB a second, above the minimum body rate
                        await trio.sleep(1)
                        await stream.send_all(bytes(4096))

            for i in range(16):
                attack.start_soon(guess, f"127.0.0.{30 + i}")
            for i in range(200):
                attack.start_soon(upload, f"127.0.0.{20 + i % 2}")
            try:
                for i in range(1000):
                    idle.append(await connect(host.port, f"127.0.0.{10 + i % 5}"))
                # the guessers met their delays, the uploads are under way
                await wait_until(lambda: len(answered) >= 48, timeout=60, what="guesses")
                for _ in range(3):
                    with trio.fail_after(1.0):
                        assert str(await login(host)).startswith("OpaqueRef:")
                    with trio.fail_after(1.0):
                        assert (await call(host, "VDI.get_all", host.session))[1] is None
                    with trio.fail_after(1.0):
                        assert await export_4k(host, vdi) == bytes(4096)
                rss = psutil.Process(proc.pid).memory_info().rss
                assert rss < 300 << 20, f"the daemon holds {rss >> 20} MiB"
            finally:
                for stream in idle:
                    await trio.aclose_forcefully(stream)
                attack.cancel_scope.cancel()


def test_the_daemon_raises_its_open_files_limit(tmp_path: Path) -> None:
    """Started with a soft limit of 1024 descriptors (a common default for services), the
    daemon raises it to the hard limit: every connection holds one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= 1024:
        pytest.skip(f"the hard limit of open files is {hard}: nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        with daemon(tmp_path) as (_, proc):
            assert psutil.Process(proc.pid).rlimit(psutil.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
