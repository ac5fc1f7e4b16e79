"""``xfer serve`` as a real process: listeners, dual stack, signals, state kept across restarts."""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import uuid
import xmlrpc.client
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from migrate.addresses import parse_host
from migrate.host.identity import host_address
from migrate.interfaces import Interface, InterfaceAddress, read_interfaces
from migrate.net import listener_url, open_listeners
from migrate.state import credentials
from migrate.state.store import Store
from support import XFER, TimeoutTransport, wait_until_sync

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 15.0
"""Longest wait for the daemon to print its listeners."""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XFER_PASSWORD"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _read_lines(proc: subprocess.Popen[bytes], count: int, stderr: Path) -> list[str]:
    """The first ``count`` stdout lines of ``proc``, each awaited at most TIMEOUT seconds."""
    assert proc.stdout is not None
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while data.count(b"\n") < count:
            ready = selector.select(TIMEOUT)
            assert ready, f"nothing from xfer serve for {TIMEOUT} s: {data!r} {stderr.read_text()}"
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, f"xfer serve exited: {data!r} {stderr.read_text()}"
            data += chunk
    return data.decode().splitlines()[:count]


@contextmanager
def serving(
    tmp_path: Path,
    *args: str,
    count: int = 1,
    env: dict[str, str] | None = None,
    netns: str | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], list[str], Path]]:
    """A running ``xfer serve --state-dir TMP/state ARGS`` (inside the network namespace
    ``netns`` if given): the process, the URLs of its ``count`` listening lines and its stderr
    file; the process is always ended afterwards."""
    stderr = tmp_path / f"stderr-{uuid.uuid4().hex}"
    inside = ["ip", "netns", "exec", netns] if netns else []
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [*inside, *XFER, "serve", "--state-dir", str(tmp_path / "state"), *args],
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=ROOT,
            env={**_env(), **(env or {})},
        )
    try:
        lines = _read_lines(proc, count, stderr)
        assert all(line.startswith("listening on ") for line in lines), lines
        yield proc, [line.removeprefix("listening on ") for line in lines], stderr
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def port_of(url: str) -> int:
    """The port of a ``listening on`` URL."""
    match = re.fullmatch(r"http://.+:(\d+)/", url)
    assert match, url
    return int(match.group(1))


def http_status_line(address: str, port: int) -> str:
    """The status line the daemon answers a GET / with, over a fresh connection."""
    with socket.create_connection((address, port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: xfer\r\nConnection: close\r\n\r\n")
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0].decode()


def login(url: str, user: str, password: str) -> dict[str, object]:
    """The XML-RPC answer to ``session.login_with_password`` at ``url``."""
    proxy = xmlrpc.client.ServerProxy(url, transport=TimeoutTransport())
    result = proxy.session.login_with_password(user, password, "1.0", "test")
    assert isinstance(result, dict), result
    return result


def stop(proc: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> int:
    """Send ``signum`` and return the exit status (at most 10 s later)."""
    proc.send_signal(signum)
    return proc.wait(timeout=10)


# Listeners


def test_wildcard_is_dual_stack(tmp_path: Path) -> None:
    with serving(tmp_path, "--listen", "[::]:0", "--password", "pw") as (proc, urls, _):
        assert re.fullmatch(r"http://\[::\]:\d+/", urls[0]), urls
        port = port_of(urls[0])
        for address in ("::1", "127.0.0.1"):
            assert re.fullmatch(r"HTTP/1\.1 \d{3} .*", http_status_line(address, port))
        answer = login(f"http://[::1]:{port}/", "root", "pw")
        assert answer["Status"] == "Success", answer
        assert login(f"http://127.0.0.1:{port}/RPC2", "root", "bad")["Status"] == "Failure"
        assert stop(proc) == 0


def test_async_calls_run_in_the_daemon(tmp_path: Path) -> None:
    """The daemon runs ``Async.*`` calls: a task that ends in success with the VDI's ref."""
    with serving(tmp_path, "--listen", "[::1]:0", "--password", "pw") as (proc, urls, _):
        proxy = xmlrpc.client.ServerProxy(urls[0], transport=TimeoutTransport())
        session = login(urls[0], "root", "pw")["Value"]
        sr = proxy.SR.get_all(session)["Value"][0]
        record = {"SR": sr, "virtual_size": str(1 << 30), "name_label": "async"}
        task = proxy.Async.VDI.create(session, record)["Value"]
        wait_until_sync(
            lambda: proxy.task.get_status(session, task)["Value"] != "pending", what="the task"
        )
        assert proxy.task.get_status(session, task)["Value"] == "success"
        result = proxy.task.get_result(session, task)["Value"]
        vdis = proxy.VDI.get_all(session)["Value"]
        assert result == f"<value>{vdis[0]}</value>" and len(vdis) == 1
        assert stop(proc) == 0


def test_ipv6_only_refuses_ipv4(tmp_path: Path) -> None:
    args = ("--listen", "[::]:0", "--ipv6-only", "--password", "pw")
    with serving(tmp_path, *args) as (proc, urls, _):
        port = port_of(urls[0])
        assert http_status_line("::1", port).startswith("HTTP/1.1 ")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert stop(proc) == 0


def test_explicit_listeners(tmp_path: Path) -> None:
    args = ("--listen", "127.0.0.1:0", "--listen", "[::1]:0", "--password", "pw")
    with serving(tmp_path, *args, count=2) as (proc, urls, _):
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", urls[0]), urls
        assert re.fullmatch(r"http://\[::1\]:\d+/", urls[1]), urls
        assert http_status_line("127.0.0.1", port_of(urls[0])).startswith("HTTP/1.1 ")
        assert http_status_line("::1", port_of(urls[1])).startswith("HTTP/1.1 ")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port_of(urls[1])), timeout=5).close()
        assert stop(proc) == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_shut_down_cleanly(tmp_path: Path, signum: int) -> None:
    with serving(tmp_path, "--listen", "127.0.0.1:0", "--password", "pw") as (proc, urls, err):
        assert stop(proc, signum) == 0
        assert "Traceback" not in err.read_text()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port_of(urls[0])), timeout=5).close()


# Errors


@pytest.mark.parametrize(
    "value",
    [
        "[::1",
        "127.0.0.1:99999",
        "localhost:0",
        "fe80::1",
        "::1:8080x",
        "[::1]x",
        "[fe80::1%nosuch9]:0",
    ],
)
def test_bad_listen_is_one_error_line(tmp_path: Path, value: str) -> None:
    proc = subprocess.run(
        [*XFER, "serve", "--state-dir", str(tmp_path / "state"), "--listen", value],
        capture_output=True,
        timeout=30,
        cwd=ROOT,
        env=_env(),
        check=False,
    )
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert err.startswith("xfer: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "state").exists()


def test_address_in_use_is_one_error_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [*XFER, "serve", "--state-dir", str(tmp_path / "s"), "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            timeout=30,
            cwd=ROOT,
            env=_env(),
            check=False,
        )
    err = proc.stderr.decode().splitlines()
    assert proc.returncode == 1
    assert err[-1].startswith(f"xfer: error: cannot listen on 127.0.0.1:{port}: "), err
    assert "Traceback" not in proc.stderr.decode()


# State


@pytest.mark.slow
def test_restart_keeps_host_sr_and_password(tmp_path: Path) -> None:
    listen = ("--listen", "127.0.0.1:0")
    with serving(tmp_path, *listen) as (proc, _, err):
        assert stop(proc) == 0
    generated = re.findall(r"^generated password for root: (\S+)$", err.read_text(), re.M)
    assert len(generated) == 1

    db = str(tmp_path / "state" / "xfer.db")
    store = Store.open(db)
    try:
        (host,) = store.all("host")
        (sr,) = store.all("SR")
        assert sr["path"] == os.path.realpath(tmp_path / "state" / "sr") and sr["is_default"]
        assert host["primary_address_type"] == "IPv6"
        assert store.all("PIF", host=host["uuid"]), "interfaces not mirrored"
        assert credentials.verify(store.credential("root"), generated[0])
    finally:
        store.close()
    leftover = Path(sr["path"]) / f".{uuid.uuid4()}.vhd.part"
    leftover.write_bytes(b"partial")

    extra = tmp_path / "extra-sr"
    args = (*listen, "--sr", str(extra), "--primary-address-type", "ipv4")
    with serving(tmp_path, *args) as (proc, _, err):
        assert stop(proc) == 0
    assert "generated password" not in err.read_text()
    assert not leftover.exists()
    assert f"SR {sr['uuid']} at {sr['path']}: 1 repair(s)" in err.read_text()

    store = Store.open(db)
    try:
        (again,) = store.all("host")
        assert again["uuid"] == host["uuid"]
        assert again["primary_address_type"] == "IPv4"
        assert "." in again["address"]
        srs = {row["path"]: row for row in store.all("SR")}
        assert srs[sr["path"]]["uuid"] == sr["uuid"] and srs[sr["path"]]["is_default"]
        assert not srs[os.path.realpath(extra)]["is_default"]
        assert credentials.verify(store.credential("root"), generated[0])
    finally:
        store.close()

    with serving(tmp_path, *listen, "--password", "new") as (proc, _, err):
        assert stop(proc) == 0
    assert "generated password" not in err.read_text()
    store = Store.open(db)
    try:
        assert credentials.verify(store.credential("root"), "new")
        assert not credentials.verify(store.credential("root"), generated[0])
        assert [row["uuid"] for row in store.all("host")] == [host["uuid"]]
    finally:
        store.close()


def test_password_from_environment(tmp_path: Path) -> None:
    env = {"XFER_PASSWORD": "from-env"}
    with serving(tmp_path, "--listen", "127.0.0.1:0", env=env) as (proc, urls, err):
        assert login(urls[0], "root", "from-env")["Status"] == "Success"
        assert stop(proc) == 0
    assert "generated password" not in err.read_text()


# In process


async def test_open_listeners_ports_and_families() -> None:
    hosts = [
        parse_host("127.0.0.1:0", allow_port_zero=True),
        parse_host("[::1]:0", allow_port_zero=True),
    ]
    listeners = await open_listeners(hosts)
    try:
        assert [lst.socket.family for lst in listeners] == [socket.AF_INET, socket.AF_INET6]
        assert all(lst.socket.getsockname()[1] != 0 for lst in listeners)
        url = listener_url(hosts[1], listeners[1])
        assert url == f"http://[::1]:{listeners[1].socket.getsockname()[1]}/"
    finally:
        for listener in listeners:
            await listener.aclose()


async def test_link_local_listener_has_scope_id() -> None:
    found = [
        (i.name, a.address)
        for i in read_interfaces()
        for a in i.addresses
        if a.link_local and a.family == "IPv6"
    ]
    if not found:
        pytest.skip("no interface with an IPv6 link-local address")
    name, address = found[0]
    host = parse_host(f"[{address}%25{name}]:0", allow_port_zero=True)
    (listener,) = await open_listeners([host])
    try:
        assert listener.socket.getsockname()[3] == socket.if_nametoindex(name)
        assert listener_url(host, listener).startswith(f"http://[{address}%25{name}]:")
    finally:
        await listener.aclose()


def test_host_address_skips_loopback_and_link_local() -> None:
    lo = Interface(
        "lo",
        "00:00:00:00:00:00",
        (
            InterfaceAddress("127.0.0.1", 8, "IPv4", False),
            InterfaceAddress("::1", 128, "IPv6", False),
        ),
    )
    eth = Interface(
        "eth0",
        "52:54:00:00:00:01",
        (
            InterfaceAddress("fe80::1", 64, "IPv6", True),
            InterfaceAddress("2001:db8::5", 64, "IPv6", False),
        ),
    )
    assert host_address([lo, eth], "IPv6") == "2001:db8::5"
    assert host_address([lo, eth], "IPv4") == "127.0.0.1"
    assert host_address([], "IPv6") == "::1"
